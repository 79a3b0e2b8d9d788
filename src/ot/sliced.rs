//! Sliced and max-sliced Wasserstein distances.

use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use super::ascent::{Ascent, AscentOutcome, refine_direction};
use super::coupling::QuantileCoupling;
use super::{Directions, OtError};
use crate::kernels::projection::{copy_column, project, project_known};

/// Below this value of `W_p^p`, the root's slope is held at its value here instead of growing without
/// bound: the distance keeps its exact value, and a block that is already an identity (cost 0, whose
/// cost gradient is 0) gets gradient 0 instead of NaN.
pub const ROOT_EPSILON: f64 = 1e-10;

/// A sliced Wasserstein distance and what it was made of.
#[derive(Clone, Debug)]
pub struct SlicedDistance {
    /// `SW_p` as a one-element tensor, differentiable with respect to both clouds.
    pub value: Tensor<1>,
    /// `SW_p` as a number.
    pub distance: f64,
    /// `W_p^p` along each direction, in the directions' order.
    pub per_direction: Vec<f64>,
}

/// A max-sliced Wasserstein distance and where it was attained.
#[derive(Clone, Debug)]
pub struct MaxSlicedDistance {
    /// `MSW_p` as a one-element tensor, differentiable with respect to both clouds. Only the winning
    /// direction carries gradient, so the backward pass costs two rank-1 updates.
    pub value: Tensor<1>,
    /// `MSW_p^p` (the cost along `direction`) as a one-element tensor, differentiable like
    /// `value`.
    pub value_pow_p: Tensor<1>,
    /// `MSW_p` as a number.
    pub distance: f64,
    /// `W_p^p` along each of the given directions, in their order.
    pub per_direction: Vec<f64>,
    /// Index of the given direction with the largest `W_p^p`.
    pub argmax: usize,
    /// The unit direction the distance is measured along, `[d]`: the arg-max direction, or its
    /// refinement when [`Ascent`] was asked for.
    pub direction: Tensor<1>,
    /// `W_p^p` along `direction`; never less than `per_direction[argmax]`.
    pub cost: f64,
    /// What the gradient ascent did, when it was asked for.
    pub ascent: Option<AscentOutcome>,
}

/// Flattens a batch of features `[n, …]` into a point cloud `[n, d]`: each sample is one point.
/// A 1-D tensor of `n` values becomes `n` points on the line.
pub fn point_cloud<const D: usize>(features: Tensor<D>) -> Tensor<2> {
    let dims = features.dims();
    let per_sample: usize = dims[1..].iter().product();
    features.reshape([dims[0], per_sample])
}

/// The sliced Wasserstein distance `SW_p(x, y) = (mean_θ W_p^p(θ))^(1/p)` over the given directions.
///
/// `x` is `[n, d]`, `y` is `[m, d]` (`n` and `m` may differ; both clouds carry uniform weights), and
/// both must have the same element type (f32 or f64). Gradients flow to both clouds.
pub fn sliced_wasserstein(
    x: Tensor<2>,
    y: Tensor<2>,
    directions: &Directions,
    p: f64,
) -> Result<SlicedDistance, OtError> {
    let coupling = validate(&x, &y, directions, p)?;
    let columns = directions.to_matching(&x.device(), x.dtype());
    let scales = directions.scales();
    let (x_projected, y_projected) = (
        project_on(x, columns.clone(), scales),
        project_on(y, columns, scales),
    );
    let per_direction = host_costs(x_projected.clone(), y_projected.clone(), None, &coupling, p)?;
    let mean_cost = costs_along(x_projected, y_projected, &coupling, p).mean();
    let mean_value = per_direction.iter().sum::<f64>() / per_direction.len() as f64;
    Ok(SlicedDistance {
        distance: root(mean_value, p),
        value: guarded_root(mean_cost, mean_value, p),
        per_direction,
    })
}

/// The max-sliced Wasserstein distance `MSW_p(x, y) = (max_θ W_p^p(θ))^(1/p)` over the given
/// directions, optionally refined by gradient ascent on the sphere.
///
/// The costs of all directions are computed without recording a graph; only the winning direction is
/// then projected with gradient tracking, so the backward pass is a rank-1 update per cloud instead of
/// a dense `[n, L] × [L, d]` product. Shapes and element types as in [`sliced_wasserstein`].
pub fn max_sliced_wasserstein(
    x: Tensor<2>,
    y: Tensor<2>,
    directions: &Directions,
    p: f64,
    ascent: Option<Ascent>,
) -> Result<MaxSlicedDistance, OtError> {
    let coupling = validate(&x, &y, directions, p)?;
    let columns = directions.to_matching(&x.device(), x.dtype()).inner();
    let (x_plain, y_plain) = (x.clone().inner(), y.clone().inner());
    // Projections on the stored columns; their scales are applied on the host, and to the one
    // column of each that the graph reuses.
    let scales = directions.scales();
    let x_projected = project(x_plain.clone(), columns.clone());
    let y_projected = project(y_plain.clone(), columns.clone());
    let per_direction = host_costs(
        x_projected.clone(),
        y_projected.clone(),
        scales,
        &coupling,
        p,
    )?;
    let argmax = index_of_max(&per_direction);
    let scale = scales.map_or(1.0, |scales| scales[argmax]);
    // Copied out of the `[d, L]` matrix once, here: every later use (the graph, both backward
    // outer products, the returned direction) reads it contiguously.
    let best_column = copy_column(columns, argmax).mul_scalar(scale);
    let refined = match ascent {
        Some(ascent) if ascent.steps > 0 => Some(refine_direction(
            &x_plain,
            &y_plain,
            best_column.clone(),
            per_direction[argmax],
            &coupling,
            p,
            &ascent,
        )?),
        _ => None,
    };
    // The tracked projections on the winning direction: for a random direction their values are
    // a column of the projections above, so only the graph is added.
    let ascent_outcome = refined.as_ref().map(|(_, _, outcome)| *outcome);
    let (direction, cost, x_tracked, y_tracked) = match refined {
        Some((direction, cost, _)) => {
            let on_device = direction.clone().to_device(&x.device());
            let x_tracked = project(x, on_device.clone());
            (direction, cost, x_tracked, project(y, on_device))
        }
        None => {
            let on_device = best_column.clone().to_device(&x.device());
            let x_known = x_projected.narrow(1, argmax, 1).mul_scalar(scale);
            let y_known = y_projected.narrow(1, argmax, 1).mul_scalar(scale);
            let x_tracked = project_known(x, on_device.clone(), x_known);
            let y_tracked = project_known(y, on_device, y_known);
            (best_column, per_direction[argmax], x_tracked, y_tracked)
        }
    };
    let tracked_cost = costs_along(x_tracked, y_tracked, &coupling, p);
    let [dim, _] = direction.dims();
    Ok(MaxSlicedDistance {
        value: guarded_root(tracked_cost.clone(), cost, p),
        value_pow_p: tracked_cost,
        distance: root(cost, p),
        per_direction,
        argmax,
        direction: direction.reshape([dim]),
        cost,
        ascent: ascent_outcome,
    })
}

/// `W_p^p` along each direction, `[L]`, from the projections `x_projected: [n, L]` and
/// `y_projected: [m, L]`. The sort order comes from the values without a graph; the gathers and
/// differences are recorded, so gradients flow to the projections (and through them to the clouds).
pub(crate) fn costs_along(
    x_projected: Tensor<2>,
    y_projected: Tensor<2>,
    coupling: &QuantileCoupling,
    p: f64,
) -> Tensor<1> {
    let [n, count] = x_projected.dims();
    let [m, _] = y_projected.dims();
    let device = x_projected.device();
    let dtype = x_projected.dtype();
    let x_order = x_projected.clone().inner().argsort(0).to_device(&device);
    let y_order = y_projected.clone().inner().argsort(0).to_device(&device);
    let cost = if n == m {
        let gaps = x_projected.gather(0, x_order) - y_projected.gather(0, y_order);
        power(gaps, p).mean_dim(0)
    } else {
        let x_matched = x_order.select(0, coupling.x_rank_tensor(&device));
        let y_matched = y_order.select(0, coupling.y_rank_tensor(&device));
        let gaps = x_projected.gather(0, x_matched) - y_projected.gather(0, y_matched);
        let masses = Tensor::<1>::from_data(coupling.masses.as_slice(), (&device, dtype))
            .reshape([coupling.masses.len(), 1]);
        (power(gaps, p) * masses).sum_dim(0)
    };
    cost.reshape([count])
}

/// `points · columns`, each column of the result multiplied by its entry of `scales` (the factors
/// that make the stored directions unit vectors).
fn project_on(points: Tensor<2>, columns: Tensor<2>, scales: Option<&[f64]>) -> Tensor<2> {
    let projected = project(points, columns);
    match scales {
        None => projected,
        Some(scales) => {
            let row = Tensor::<1>::from_data(scales, (&projected.device(), projected.dtype()));
            projected * row.reshape([1, scales.len()])
        }
    }
}

/// The values of [`costs_along`], computed on the host without a graph: each direction's two
/// columns (times its scale, if given) sorted and matched in f64, the directions in parallel. Both
/// distances report these values (so they agree exactly when given the same single direction); the
/// graphs only carry gradients. A cost that is not finite (a cloud with NaN or infinity) is an error.
fn host_costs(
    x_projected: Tensor<2>,
    y_projected: Tensor<2>,
    scales: Option<&[f64]>,
    coupling: &QuantileCoupling,
    p: f64,
) -> Result<Vec<f64>, OtError> {
    let count = x_projected.dims()[1];
    let host = |projected: Tensor<2>| {
        projected
            .inner()
            .try_into_vec_as::<f64>()
            .map_err(|e| OtError::Backend(e.to_string()))
    };
    let (xs, ys) = (host(x_projected)?, host(y_projected)?);
    let sorted_column = |values: &[f64], l: usize| {
        let scale = scales.map_or(1.0, |scales| scales[l]);
        sorted_ascending(values.iter().skip(l).step_by(count).map(|v| v * scale))
    };
    let costs: Vec<f64> = (0..count)
        .into_par_iter()
        .map(|l| coupling.cost(&sorted_column(&xs, l), &sorted_column(&ys, l), p))
        .collect();
    if costs.iter().any(|c| !c.is_finite()) {
        return Err(OtError::NonFinite);
    }
    Ok(costs)
}

/// The values in ascending order (IEEE 754 total order, as `f64::total_cmp`), sorted as integer keys:
/// a float's bits, with the magnitude bits flipped for negative values, order like the float, and
/// integers compare faster.
fn sorted_ascending(values: impl Iterator<Item = f64>) -> Vec<f64> {
    let flip = |bits: i64| bits ^ (((bits >> 63) as u64) >> 1) as i64;
    let mut keys: Vec<i64> = values.map(|v| flip(v.to_bits() as i64)).collect();
    keys.sort_unstable();
    keys.into_iter()
        .map(|key| f64::from_bits(flip(key) as u64))
        .collect()
}

/// `|gaps|^p`, with the common orders spelled out.
fn power(gaps: Tensor<2>, p: f64) -> Tensor<2> {
    if p == 2.0 {
        gaps.square()
    } else if p == 1.0 {
        gaps.abs()
    } else {
        gaps.abs().powf_scalar(p)
    }
}

/// `cost^(1/p)` as a tensor whose value is exactly `root(cost_value, p)` and whose gradient is that
/// of the root at `max(cost_value, ROOT_EPSILON)` times the cost's gradient.
fn guarded_root(cost: Tensor<1>, cost_value: f64, p: f64) -> Tensor<1> {
    let slope = cost_value.max(ROOT_EPSILON).powf(1.0 / p - 1.0) / p;
    (cost.clone() - cost.detach())
        .mul_scalar(slope)
        .add_scalar(root(cost_value, p))
}

/// `cost^(1/p)` for a cost that rounding may have left a hair below zero.
fn root(cost: f64, p: f64) -> f64 {
    cost.max(0.0).powf(1.0 / p)
}

/// The index of the largest value (the first, on ties).
fn index_of_max(values: &[f64]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

/// The tensor's values as f64 on the host.
pub(crate) fn host_values(tensor: Tensor<1>) -> Result<Vec<f64>, OtError> {
    tensor
        .inner()
        .try_into_vec_as::<f64>()
        .map_err(|e| OtError::Backend(e.to_string()))
}

/// Checks shapes, element types and `p`; returns the coupling of the two cloud sizes.
fn validate(
    x: &Tensor<2>,
    y: &Tensor<2>,
    directions: &Directions,
    p: f64,
) -> Result<QuantileCoupling, OtError> {
    let [n, dx] = x.dims();
    let [m, dy] = y.dims();
    for (name, points, dim) in [("x", n, dx), ("y", m, dy)] {
        if points == 0 || dim == 0 {
            return Err(OtError::EmptyCloud { name, points, dim });
        }
    }
    if dx != dy {
        return Err(OtError::DimensionMismatch { x: dx, y: dy });
    }
    if directions.dim() != dx {
        return Err(OtError::DirectionDimensionMismatch {
            directions: directions.dim(),
            points: dx,
        });
    }
    if !(p.is_finite() && p >= 1.0) {
        return Err(OtError::InvalidOrder(p));
    }
    let (x_type, y_type) = (x.dtype(), y.dtype());
    if !matches!(x_type, DType::F32 | DType::F64) {
        return Err(OtError::UnsupportedDType(format!("{x_type:?}")));
    }
    if x_type != y_type {
        return Err(OtError::DTypeMismatch {
            x: format!("{x_type:?}"),
            y: format!("{y_type:?}"),
        });
    }
    Ok(QuantileCoupling::new(n, m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn integer_keys_sort_like_total_cmp(values in proptest::collection::vec(any::<f64>(), 0..200)) {
            let mut expected = values.clone();
            expected.sort_by(f64::total_cmp);
            let got = sorted_ascending(values.into_iter());
            prop_assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                expected.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn signed_zeros_and_extremes_keep_their_order() {
        let got = sorted_ascending([0.0, -0.0, 1.5, -1.5, f64::MAX, f64::MIN, -1e-300].into_iter());
        let bits: Vec<u64> = got.iter().map(|v| v.to_bits()).collect();
        let expected: Vec<u64> = [f64::MIN, -1.5, -1e-300, -0.0, 0.0, 1.5, f64::MAX]
            .iter()
            .map(|v| v.to_bits())
            .collect();
        assert_eq!(bits, expected);
    }
}
