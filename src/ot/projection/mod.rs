//! Projecting point clouds on directions: the one dense product of the distances.
//!
//! `project(points, rows)` computes `points · rowsᵀ` (`[n, d] × [L, d] → [n, L]`). It is a burn
//! backend extension so that each backend can run its best kernel while autodiff stays exact:
//!
//! - on `flex` (the CPU backend), a SIMD dot-product kernel ([`dot`]) that reads both operands along
//!   their contiguous rows and splits the shared dimension across threads; burn's generic matmul runs
//!   this narrow product on one thread;
//! - under autodiff, a backward pass written for the shapes that occur: with one direction (the
//!   max-sliced case) the gradient `grad ⊗ θ` is a parallel outer product, where a matmul would form
//!   it as a slow K = 1 product; with L directions it is one `[n, L] × [L, d]` product;
//! - `project_known` adds only the graph when the projections' values were computed already (the
//!   winning direction's column of the untracked projections).

mod dot;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, binary};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

/// Projections of point clouds on directions, implemented per backend.
#[backend_extension(Flex, Autodiff)]
pub trait ProjectionOps: Backend {
    /// `points · rowsᵀ`: `points` is `[n, d]`, `rows` is `[L, d]`, the result `[n, L]`.
    fn project_rows(points: FloatTensor<Self>, rows: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `points · rowsᵀ` when its value `projections` is already known: returns `projections`
    /// without recomputing them, and back-propagates like [`ProjectionOps::project_rows`].
    fn project_rows_known(
        _points: FloatTensor<Self>,
        _rows: FloatTensor<Self>,
        projections: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        projections
    }

    /// The outer product `column ⊗ row`: `column` is `[n, 1]`, `row` is `[1, d]`, the result
    /// `[n, d]`. The backward pass of a projection on one direction.
    fn outer_product(column: FloatTensor<Self>, row: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_mul(column, row)
    }
}

/// The projections of `points` (`[n, d]`) on each row of `rows` (`[L, d]`): `[n, L]`, differentiable
/// with respect to both.
pub(crate) fn project(points: Tensor<2>, rows: Tensor<2>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as ProjectionOps>::project_rows(
        points.into_dispatch(),
        rows.into_dispatch(),
    ))
}

/// `points · rowsᵀ` with a known value `projections` (`[n, L]`, computed earlier without a graph):
/// no recomputation, the same gradients as [`project`].
pub(crate) fn project_known(
    points: Tensor<2>,
    rows: Tensor<2>,
    projections: Tensor<2>,
) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as ProjectionOps>::project_rows_known(
        points.into_dispatch(),
        rows.into_dispatch(),
        projections.into_dispatch(),
    ))
}

impl ProjectionOps for Flex {
    fn project_rows(points: FlexTensor, rows: FlexTensor) -> FlexTensor {
        match points.dtype() {
            DType::F32 if rows.dtype() == DType::F32 => host_product::<f32>(&points, &rows),
            DType::F64 if rows.dtype() == DType::F64 => host_product::<f64>(&points, &rows),
            _ => Flex::float_matmul(points, Flex::float_transpose(rows)),
        }
    }

    fn outer_product(column: FlexTensor, row: FlexTensor) -> FlexTensor {
        match column.dtype() {
            DType::F32 if row.dtype() == DType::F32 => host_outer::<f32>(&column, &row),
            DType::F64 if row.dtype() == DType::F64 => host_outer::<f64>(&column, &row),
            _ => Flex::float_mul(column, row),
        }
    }
}

/// `column ⊗ row` written row by row in parallel. flex's broadcast multiply takes a strided path
/// for these shapes, several times slower than this plain loop.
fn host_outer<T>(column: &FlexTensor, row: &FlexTensor) -> FlexTensor
where
    T: burn::tensor::Element + bytemuck::Pod + std::ops::Mul<Output = T> + Send + Sync,
{
    let (column, row) = (column.to_contiguous(), row.to_contiguous());
    let weights = column
        .as_slice::<T>()
        .expect("contiguous storage of the checked type");
    let direction = row
        .as_slice::<T>()
        .expect("contiguous storage of the checked type");
    let dim = direction.len();
    let len = weights.len() * dim;
    // Written once, without zero-filling first: zeroing two 8 MB gradients cost as much as
    // computing them.
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(dim)
        .zip(weights.par_iter())
        .for_each(|(out_row, &weight)| {
            for (o, &d) in out_row.iter_mut().zip(direction) {
                o.write(weight * d);
            }
        });
    // SAFETY: the loop above initialised every one of the first `len` elements (one row of `dim`
    // per weight).
    unsafe { out.set_len(len) };
    FlexTensor::from_data(TensorData::new(out, [weights.len(), dim]))
}

/// Runs the [`dot`] kernel on the tensors' storage (copied first only if not contiguous).
fn host_product<T>(points: &FlexTensor, rows: &FlexTensor) -> FlexTensor
where
    T: dot::Real + burn::tensor::Element + bytemuck::Pod,
{
    let (n, dim) = (points.shape()[0], points.shape()[1]);
    let count = rows.shape()[0];
    let (points, rows) = (points.to_contiguous(), rows.to_contiguous());
    let product = dot::dot_rows(
        points
            .as_slice::<T>()
            .expect("contiguous storage of the checked type"),
        rows.as_slice::<T>()
            .expect("contiguous storage of the checked type"),
        dim,
    );
    FlexTensor::from_data(TensorData::new(product, [n, count]))
}

/// The backward pass of [`ProjectionOps::project_rows`].
#[derive(Debug)]
struct ProjectRowsBackward;

impl<B: Backend + ProjectionOps> Backward<B, 2> for ProjectRowsBackward {
    /// `rows` when `points` needs a gradient, and `points` when `rows` needs one.
    type State = (
        Option<B::FloatTensorPrimitive>,
        Option<B::FloatTensorPrimitive>,
    );

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (rows, points) = ops.state;
        binary::<B, _, _>(
            ops.parents,
            ops.node,
            grads,
            |grad| {
                let rows = rows.expect("rows are kept when points need a gradient");
                if rows.shape()[0] == 1 {
                    B::outer_product(grad, rows)
                } else {
                    B::float_matmul(grad, rows)
                }
            },
            |grad| {
                let points = points.expect("points are kept when rows need a gradient");
                B::float_matmul(B::float_transpose(grad), points)
            },
        );
    }
}

impl<B: Backend + ProjectionOps, C: CheckpointStrategy> ProjectionOps for Autodiff<B, C> {
    fn project_rows(points: FloatTensor<Self>, rows: FloatTensor<Self>) -> FloatTensor<Self> {
        let (points_tracked, rows_tracked) = (points.is_tracked(), rows.is_tracked());
        let prepared = ProjectRowsBackward
            .prepare::<C>([points.node(), rows.node()])
            .compute_bound()
            .stateful();
        let (points, rows) = (points.into_primitive(), rows.into_primitive());
        match prepared {
            OpsKind::Tracked(prep) => {
                let state = (
                    points_tracked.then(|| rows.clone()),
                    rows_tracked.then(|| points.clone()),
                );
                prep.finish(state, B::project_rows(points, rows))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::project_rows(points, rows)),
        }
    }

    fn project_rows_known(
        points: FloatTensor<Self>,
        rows: FloatTensor<Self>,
        projections: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (points_tracked, rows_tracked) = (points.is_tracked(), rows.is_tracked());
        let prepared = ProjectRowsBackward
            .prepare::<C>([points.node(), rows.node()])
            .compute_bound()
            .stateful();
        let (points, rows) = (points.into_primitive(), rows.into_primitive());
        let projections = projections.into_primitive();
        match prepared {
            OpsKind::Tracked(prep) => {
                let state = (
                    points_tracked.then_some(rows),
                    rows_tracked.then_some(points),
                );
                prep.finish(state, projections)
            }
            OpsKind::UnTracked(prep) => prep.finish(projections),
        }
    }
}
