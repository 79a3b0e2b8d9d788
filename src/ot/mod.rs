//! Sliced and max-sliced Wasserstein distances between point clouds, differentiable end to end.
//!
//! A point cloud is a `[n, d]` tensor: one point per row. A batch of feature maps `[n, C, H, W]`
//! becomes a cloud with [`point_cloud`] (each sample is one point in `R^(C·H·W)`).
//!
//! For a unit direction θ, both clouds are projected to the line, and the 1-D Wasserstein cost
//! `W_p^p(θ)` between the two projected empirical measures (uniform weights) is computed from their
//! quantile functions; for `n == m` this is `(1/n) Σ_i |sort(Xθ)_i − sort(Yθ)_i|^p`. Then
//!
//! - sliced Wasserstein: `SW_p = (mean_θ W_p^p(θ))^(1/p)` ([`sliced_wasserstein`]);
//! - max-sliced Wasserstein: `MSW_p = (max_θ W_p^p(θ))^(1/p)` ([`max_sliced_wasserstein`]), with an
//!   optional refinement of the best random direction by gradient ascent on the sphere ([`Ascent`]).
//!
//! Both follow POT's `ot.sliced` definitions and agree with it to floating-point precision.

mod ascent;
mod coupling;
mod directions;
mod gaussian;
mod sliced;

pub use ascent::{Ascent, AscentOutcome, AscentStop};
pub use directions::{DirectionKind, DirectionSampler, Directions};
pub use sliced::{
    DeviceMaxSliced, MaxSlicedDistance, ROOT_EPSILON, SlicedDistance, max_sliced_on_device,
    max_sliced_wasserstein, point_cloud, sliced_wasserstein,
};

/// The number of random directions used when the caller does not choose (the paper's and POT's
/// default).
pub const DEFAULT_NUM_PROJECTIONS: usize = 50;

/// The most directions a distance may draw (beyond this, the `[d, L]` matrix of any real feature
/// map no longer fits in memory).
pub const MAX_NUM_PROJECTIONS: usize = 100_000;

/// Checks a user's number of directions: between 1 and [`MAX_NUM_PROJECTIONS`]; the problem names
/// the `--num-projections` flag.
pub fn check_num_projections(count: usize) -> Result<(), String> {
    if (1..=MAX_NUM_PROJECTIONS).contains(&count) {
        Ok(())
    } else {
        Err(format!(
            "--num-projections must be between 1 and {MAX_NUM_PROJECTIONS}, not {count}"
        ))
    }
}

/// The most elements (`d · L`) a set of directions may hold: 4 GiB of f32.
pub const MAX_DIRECTION_ELEMENTS: usize = 1 << 30;

/// The order `p` of the Wasserstein distance used when the caller does not choose.
pub const DEFAULT_P: f64 = 2.0;

/// What can go wrong when computing a distance.
#[derive(Debug, thiserror::Error)]
pub enum OtError {
    /// The two clouds live in spaces of different dimension.
    #[error("point clouds have different dimensions: x has {x} features per point, y has {y}")]
    DimensionMismatch {
        /// Features per point of x.
        x: usize,
        /// Features per point of y.
        y: usize,
    },
    /// The directions do not live in the clouds' space.
    #[error("projection directions have dimension {directions}, but the points have {points}")]
    DirectionDimensionMismatch {
        /// Dimension of the directions.
        directions: usize,
        /// Features per point of the clouds.
        points: usize,
    },
    /// A cloud has no points or no features.
    #[error("point cloud {name} is empty (shape [{points}, {dim}])")]
    EmptyCloud {
        /// `x` or `y`.
        name: &'static str,
        /// Number of points.
        points: usize,
        /// Features per point.
        dim: usize,
    },
    /// There are no directions to project on.
    #[error(
        "need at least one projection direction of positive dimension (got {count} of dimension {dim})"
    )]
    EmptyDirections {
        /// Number of directions.
        count: usize,
        /// Their dimension.
        dim: usize,
    },
    /// The directions would not fit in memory.
    #[error(
        "{count} directions of dimension {dim} need {gib:.1} GiB; use fewer directions (at most {max} elements in all)",
        gib = (*count as f64) * (*dim as f64) * 4.0 / (1u64 << 30) as f64,
        max = MAX_DIRECTION_ELEMENTS
    )]
    TooManyDirections {
        /// Number of directions.
        count: usize,
        /// Their dimension.
        dim: usize,
    },
    /// A cloud holds NaN or infinite values, so no distance can be computed.
    #[error("the projected costs are not finite: a point cloud holds NaN or infinite values")]
    NonFinite,
    /// A user-given direction is not a unit vector.
    #[error("projection direction {index} has norm {norm}; directions must be unit vectors")]
    NotUnitDirection {
        /// Index of the offending direction.
        index: usize,
        /// Its Euclidean norm.
        norm: f64,
    },
    /// f64 powers other than squares and square roots are not computed correctly on the GPU
    /// backends (Vulkan's shader library has 32-bit powers only).
    #[error(
        "the order p = {0} with f64 clouds is not supported on a GPU device: use p = 1 or 2, f32 clouds, or --device cpu"
    )]
    UnsupportedOrderOnDevice(f64),
    /// The order `p` is not a finite number ≥ 1.
    #[error("the order p must be a finite number >= 1 (got {0})")]
    InvalidOrder(f64),
    /// The clouds use an element type the distances do not support.
    #[error("unsupported element type {0}: use f32 or f64")]
    UnsupportedDType(String),
    /// The two clouds use different element types.
    #[error("point clouds have different element types: x is {x}, y is {y}")]
    DTypeMismatch {
        /// Element type of x.
        x: String,
        /// Element type of y.
        y: String,
    },
    /// The tensor backend failed to produce a value.
    #[error("tensor backend error: {0}")]
    Backend(String),
}
