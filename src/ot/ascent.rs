//! Refining the max-sliced direction by projected gradient ascent on the unit sphere.

use burn::tensor::Tensor;

use super::OtError;
use super::coupling::QuantileCoupling;
use super::sliced::{costs_along, host_values};
use crate::kernels::projection::project;

/// Gradient-ascent refinement of the best random direction (beyond the paper and POT, which only
/// take the max over random directions).
///
/// Each step follows the cost's gradient projected on the sphere's tangent space, along a great
/// circle, with a backtracking step angle; a step is kept only if it increases `W_p^p`, so the
/// refined cost is never below the best random direction's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ascent {
    /// The number of gradient steps.
    pub steps: usize,
    /// The first step's angle in radians; it doubles after a successful step and halves on a failed
    /// one.
    pub initial_angle: f64,
}

impl Ascent {
    /// `steps` gradient steps starting with a 0.1 rad step angle.
    pub fn new(steps: usize) -> Self {
        Self {
            steps,
            initial_angle: 0.1,
        }
    }
}

/// Why a refinement ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AscentStop {
    /// Every step asked for was taken.
    AllSteps,
    /// No step angle (after halving it repeatedly) increased the cost: a local maximum.
    NoImprovement,
    /// The gradient along the sphere vanished or was not finite.
    FlatGradient,
}

/// What a refinement did: the steps actually taken and why it stopped.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct AscentOutcome {
    /// Steps that increased the cost.
    pub steps_taken: usize,
    /// Why it stopped.
    pub stopped: AscentStop,
}

/// How many times a step's angle is halved before the ascent stops.
const MAX_BACKTRACKS: usize = 12;

/// Refines `start` (`[d, 1]`, unit norm, with `W_p^p = start_cost`) and returns the best direction
/// found, its cost, and what the ascent did. `x` and `y` carry no gradient tracking.
pub(crate) fn refine_direction(
    x: &Tensor<2>,
    y: &Tensor<2>,
    start: Tensor<2>,
    start_cost: f64,
    coupling: &QuantileCoupling,
    p: f64,
    ascent: &Ascent,
) -> Result<(Tensor<2>, f64, AscentOutcome), OtError> {
    let cost_of = |direction: Tensor<2>| -> Result<(Tensor<1>, f64), OtError> {
        let cost = costs_along(
            project(x.clone(), direction.clone()),
            project(y.clone(), direction),
            coupling,
            p,
        );
        let value = host_values(cost.clone())?[0];
        Ok((cost, value))
    };
    let (mut best, mut best_cost) = (start, start_cost);
    let mut angle = ascent.initial_angle;
    let mut outcome = AscentOutcome {
        steps_taken: 0,
        stopped: AscentStop::AllSteps,
    };
    for _ in 0..ascent.steps {
        let tracked = best.clone().autodiff().require_grad();
        let (cost, _) = cost_of(tracked.clone())?;
        let gradient = tracked
            .grad(&cost.backward())
            .ok_or_else(|| OtError::Backend("no gradient for the direction".into()))?;
        let along = (gradient.clone() * best.clone()).sum();
        let tangent = gradient - best.clone() * along.unsqueeze::<2>();
        let tangent_norm = host_values(tangent.clone().square().sum().sqrt())?[0];
        if !(tangent_norm > 0.0 && tangent_norm.is_finite()) {
            outcome.stopped = AscentStop::FlatGradient;
            break;
        }
        let unit_tangent = tangent.div_scalar(tangent_norm);
        let mut improved = false;
        for _ in 0..MAX_BACKTRACKS {
            let step =
                best.clone().mul_scalar(angle.cos()) + unit_tangent.clone().mul_scalar(angle.sin());
            let candidate = step.clone() / step.square().sum().sqrt().unsqueeze::<2>();
            let (_, candidate_cost) = cost_of(candidate.clone())?;
            if candidate_cost > best_cost {
                (best, best_cost) = (candidate, candidate_cost);
                angle = (angle * 2.0).min(std::f64::consts::FRAC_PI_2);
                improved = true;
                break;
            }
            angle /= 2.0;
        }
        if !improved {
            outcome.stopped = AscentStop::NoImprovement;
            break;
        }
        outcome.steps_taken += 1;
    }
    Ok((best, best_cost, outcome))
}
