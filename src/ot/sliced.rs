//! Sliced and max-sliced Wasserstein distances.

use burn::tensor::{DType, Device, Int, Tensor};

use super::ascent::{Ascent, AscentOutcome, refine_direction};
use super::coupling::QuantileCoupling;
use super::{Directions, OtError};
use crate::kernels::column_order::column_order;
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

/// Flattens a batch of features `[n, …]` into a point cloud `[n, d]`: each sample is one point
/// (its values in the features' logical order, however they are stored). A 1-D tensor of `n`
/// values becomes `n` points on the line.
pub fn point_cloud<const D: usize>(features: Tensor<D>) -> Tensor<2> {
    let dims = features.dims();
    let per_sample: usize = dims[1..].iter().product();
    crate::kernels::planar(features).reshape([dims[0], per_sample])
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
    let row = scale_row(directions, &x.device(), x.dtype());
    let (x_projected, y_projected) = (
        scaled(project(x, columns.clone()), row.as_ref()),
        scaled(project(y, columns), row.as_ref()),
    );
    let costs = costs_along(x_projected, y_projected, &coupling, p);
    let per_direction = finite(host_values(costs.clone())?)?;
    let mean_cost = costs.mean();
    let mean_value = per_direction.iter().sum::<f64>() / per_direction.len() as f64;
    Ok(SlicedDistance {
        distance: root(mean_value, p),
        value: guarded_root(mean_cost, p),
        per_direction,
    })
}

/// A max-sliced distance kept on the device: what a training step needs, computed without reading
/// anything back to the host (projections, column sorts, costs, arg-max and the tracked winning
/// direction all stay on the clouds' device).
#[derive(Clone, Debug)]
pub struct DeviceMaxSliced {
    /// `MSW_p`, `[1]`, differentiable with respect to both clouds through the winning direction.
    pub value: Tensor<1>,
    /// `MSW_p^p`, `[1]`, differentiable like `value`.
    pub value_pow_p: Tensor<1>,
    /// `W_p^p` along each direction, `[L]`, without a graph.
    pub costs: Tensor<1>,
    /// Index of the winning direction, `[1]` (the first of equal costs).
    pub argmax: Tensor<1, Int>,
    /// The winning unit direction, `[d, 1]`, without a graph.
    pub direction: Tensor<2>,
}

/// The max-sliced Wasserstein distance `MSW_p(x, y) = (max_θ W_p^p(θ))^(1/p)` over the given
/// directions, entirely on the clouds' device.
///
/// The costs of all directions are computed without recording a graph; only the winning direction
/// is then projected with gradient tracking (its projections' values are reused), so the backward
/// pass is a rank-1 update per cloud instead of a dense `[n, L] × [L, d]` product. Shapes and
/// element types as in [`sliced_wasserstein`].
pub fn max_sliced_on_device(
    x: Tensor<2>,
    y: Tensor<2>,
    directions: &Directions,
    p: f64,
) -> Result<DeviceMaxSliced, OtError> {
    let coupling = validate(&x, &y, directions, p)?;
    let (x_plain, y_plain) = (x.clone().inner(), y.clone().inner());
    let device = x_plain.device();
    let columns = directions.to_matching(&device, x.dtype());
    // The projections on the unit directions, without a graph.
    let row = scale_row(directions, &device, x.dtype());
    let x_projected = scaled(project(x_plain, columns.clone()), row.as_ref());
    let y_projected = scaled(project(y_plain, columns.clone()), row.as_ref());
    let (x_order, y_order) = (
        column_order(x_projected.clone()),
        column_order(y_projected.clone()),
    );
    let costs = matched_costs(
        (x_projected.clone(), x_order.clone()),
        (y_projected.clone(), y_order.clone()),
        &coupling,
        p,
    );
    let argmax = costs.clone().argmax(0);
    let winner = |matrix: Tensor<2>| matrix.select(1, argmax.clone());
    let direction = match &row {
        Some(row) => copy_column(columns, argmax.clone()) * winner(row.clone()),
        None => copy_column(columns, argmax.clone()),
    };
    let x_tracked = project_known(x, direction.clone(), winner(x_projected));
    let y_tracked = project_known(y, direction.clone(), winner(y_projected));
    let value_pow_p = matched_costs(
        (x_tracked, x_order.select(1, argmax.clone())),
        (y_tracked, y_order.select(1, argmax.clone())),
        &coupling,
        p,
    );
    Ok(DeviceMaxSliced {
        value: guarded_root(value_pow_p.clone(), p),
        value_pow_p,
        costs,
        argmax,
        direction,
    })
}

/// The max-sliced Wasserstein distance `MSW_p(x, y) = (max_θ W_p^p(θ))^(1/p)` over the given
/// directions, optionally refined by gradient ascent on the sphere, with its numbers read back to
/// the host for reporting ([`max_sliced_on_device`] is the same distance without the read).
/// Shapes and element types as in [`sliced_wasserstein`]; a cost that is not finite (a cloud with
/// NaN or infinity) is an error.
pub fn max_sliced_wasserstein(
    x: Tensor<2>,
    y: Tensor<2>,
    directions: &Directions,
    p: f64,
    ascent: Option<Ascent>,
) -> Result<MaxSlicedDistance, OtError> {
    let on_device = max_sliced_on_device(x.clone(), y.clone(), directions, p)?;
    let per_direction = finite(host_values(on_device.costs)?)?;
    let argmax = on_device
        .argmax
        .try_into_vec_as::<i64>()
        .map_err(|e| OtError::Backend(e.to_string()))?[0] as usize;
    let random = (
        on_device.direction,
        per_direction[argmax],
        on_device.value,
        on_device.value_pow_p,
    );
    let (direction, cost, value, value_pow_p, ascent_outcome) = match ascent {
        Some(ascent) if ascent.steps > 0 => {
            let coupling = QuantileCoupling::new(x.dims()[0], y.dims()[0]);
            let (direction, cost, outcome) = refine_direction(
                &x.clone().inner(),
                &y.clone().inner(),
                random.0,
                random.1,
                &coupling,
                p,
                &ascent,
            )?;
            let on_device = direction.clone().to_device(&x.device());
            let value_pow_p = costs_along(
                project(x, on_device.clone()),
                project(y, on_device),
                &coupling,
                p,
            );
            let value = guarded_root(value_pow_p.clone(), p);
            (direction, cost, value, value_pow_p, Some(outcome))
        }
        _ => (random.0, random.1, random.2, random.3, None),
    };
    let [dim, _] = direction.dims();
    Ok(MaxSlicedDistance {
        value,
        value_pow_p,
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
    let x_order = column_order(x_projected.clone().inner()).to_device(&x_projected.device());
    let y_order = column_order(y_projected.clone().inner()).to_device(&y_projected.device());
    matched_costs((x_projected, x_order), (y_projected, y_order), coupling, p)
}

/// `W_p^p` along each column of the projections, `[L]`, given each column's ascending order:
/// the quantile coupling matches the `k`-th smallest values of both clouds (through the coupling's
/// ranks and masses when the clouds differ in size).
fn matched_costs(
    (x_projected, x_order): (Tensor<2>, Tensor<2, Int>),
    (y_projected, y_order): (Tensor<2>, Tensor<2, Int>),
    coupling: &QuantileCoupling,
    p: f64,
) -> Tensor<1> {
    let [n, count] = x_projected.dims();
    let [m, _] = y_projected.dims();
    let device = x_projected.device();
    let cost = if n == m {
        let gaps = x_projected.gather(0, x_order) - y_projected.gather(0, y_order);
        power(gaps, p).mean_dim(0)
    } else {
        let x_matched = x_order.select(0, coupling.x_rank_tensor(&device));
        let y_matched = y_order.select(0, coupling.y_rank_tensor(&device));
        let gaps = x_projected.gather(0, x_matched) - y_projected.gather(0, y_matched);
        let masses = Tensor::<1>::from_data(coupling.masses.as_slice(), (&device, gaps.dtype()))
            .reshape([coupling.masses.len(), 1]);
        (power(gaps, p) * masses).sum_dim(0)
    };
    cost.reshape([count])
}

/// The factors that make the stored directions unit vectors, as a `[1, L]` row on `device` to
/// multiply projections on the stored columns by; `None` when the columns are unit vectors already.
fn scale_row(directions: &Directions, device: &Device, dtype: DType) -> Option<Tensor<2>> {
    directions
        .scales()
        .map(|scales| Tensor::<1>::from_data(scales, (device, dtype)).reshape([1, scales.len()]))
}

/// `projected` (`[n, L]`) with each column multiplied by its entry of `row`, if given.
fn scaled(projected: Tensor<2>, row: Option<&Tensor<2>>) -> Tensor<2> {
    match row {
        Some(row) => projected * row.clone(),
        None => projected,
    }
}

/// The costs unchanged when all are finite; a cloud with NaN or infinity is an error.
fn finite(costs: Vec<f64>) -> Result<Vec<f64>, OtError> {
    if costs.iter().any(|c| !c.is_finite()) {
        return Err(OtError::NonFinite);
    }
    Ok(costs)
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

/// `cost^(1/p)`, computed on the device, whose gradient is that of the root at
/// `max(cost, ROOT_EPSILON)` times the cost's gradient: a block that is already an identity (cost 0,
/// whose cost gradient is 0) gets gradient 0 instead of NaN.
fn guarded_root(cost: Tensor<1>, p: f64) -> Tensor<1> {
    let held = cost.clone().detach();
    // Square roots spelled out: f64 `powf` is wrong on the GPU backends (see `validate`).
    let (value, slope) = if p == 1.0 {
        (held.clone().clamp_min(0.0), held.ones_like())
    } else if p == 2.0 {
        let floor = held.clone().clamp_min(ROOT_EPSILON).sqrt();
        (
            held.clone().clamp_min(0.0).sqrt(),
            floor.recip().mul_scalar(0.5),
        )
    } else {
        let floor = held.clone().clamp_min(ROOT_EPSILON);
        (
            held.clone().clamp_min(0.0).powf_scalar(1.0 / p),
            floor.powf_scalar(1.0 / p - 1.0).div_scalar(p),
        )
    };
    (cost - held) * slope + value
}

/// `cost^(1/p)` for a cost that rounding may have left a hair below zero.
fn root(cost: f64, p: f64) -> f64 {
    cost.max(0.0).powf(1.0 / p)
}

/// The tensor's values as f64 on the host.
pub(crate) fn host_values(tensor: Tensor<1>) -> Result<Vec<f64>, OtError> {
    crate::device::read_to_host(tensor.inner()).map_err(|e| OtError::Backend(e.to_string()))
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
    if x_type == DType::F64 && p != 1.0 && p != 2.0 && !crate::device::is_host(&x.device()) {
        return Err(OtError::UnsupportedOrderOnDevice(p));
    }
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
