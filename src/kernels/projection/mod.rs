//! Projecting point clouds on directions: the one dense product of the distances.
//!
//! `project(points, columns)` computes `points · columns` (`[n, d] × [d, L] → [n, L]`, one direction
//! per column). It is a burn backend extension so that each backend can run its best kernel while
//! autodiff stays exact:
//!
//! - on `flex` (the CPU backend), SIMD kernels that split the shared dimension across threads
//!   (burn's generic matmul runs this narrow product on one thread): a matrix-product micro-kernel
//!   ([`panel`]) for many directions, and a dot-product kernel ([`dot`]) along the contiguous rows
//!   of both operands for one direction (the max-sliced refinement), which would fill one lane in
//!   sixteen of the former;
//! - under autodiff, a backward pass written for the shapes that occur: with one direction (the
//!   max-sliced case) the gradient `grad ⊗ θ` is a parallel outer product, where a matmul would form
//!   it as a slow K = 1 product; with L directions it is one `[n, L] × [L, d]` product;
//! - `project_known` adds only the graph when the projections' values were computed already (the
//!   winning direction's column of the untracked projections).

mod dot;
mod panel;
mod real;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, binary};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{DType, Int, Shape, Tensor, TensorData};
use rayon::prelude::*;

/// Projections of point clouds on directions, implemented per backend.
#[backend_extension(Flex, Cube: cfg(any(feature = "wgpu", feature = "cuda")), Autodiff)]
pub trait ProjectionOps: Backend {
    /// `points · columns`: `points` is `[n, d]`, `columns` is `[d, L]`, the result `[n, L]`.
    fn project_columns(points: FloatTensor<Self>, columns: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `points · columns` when its value `projections` is already known: returns `projections`
    /// without recomputing them, and back-propagates like [`ProjectionOps::project_columns`].
    fn project_columns_known(
        _points: FloatTensor<Self>,
        _columns: FloatTensor<Self>,
        projections: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        projections
    }

    /// The outer product `column ⊗ row`: `column` is `[n, 1]`, `row` is `[1, d]`, the result
    /// `[n, d]`. The backward pass of a projection on one direction.
    fn outer_product(column: FloatTensor<Self>, row: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_mul(column, row)
    }

    /// The column of `columns` (`[d, L]`) that the one-element `index` names, copied out as a
    /// contiguous `[d, 1]`; on the device, without reading `index` back.
    fn copy_column(columns: FloatTensor<Self>, index: IntTensor<Self>) -> FloatTensor<Self> {
        Self::float_select(columns, 1, index)
    }
}

/// The column of `columns` (`[d, L]`) that the one-element `index` names, as a contiguous `[d, 1]`
/// tensor (on `flex` gathered in parallel, since each of its values lies on a different cache
/// line of the matrix).
pub(crate) fn copy_column(columns: Tensor<2>, index: Tensor<1, Int>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as ProjectionOps>::copy_column(
        columns.into_dispatch(),
        index.into_dispatch(),
    ))
}

/// The projections of `points` (`[n, d]`) on each column of `columns` (`[d, L]`): `[n, L]`,
/// differentiable with respect to both.
pub(crate) fn project(points: Tensor<2>, columns: Tensor<2>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as ProjectionOps>::project_columns(
        points.into_dispatch(),
        columns.into_dispatch(),
    ))
}

/// `points · columns` with a known value `projections` (`[n, L]`, computed earlier without a graph):
/// no recomputation, the same gradients as [`project`].
pub(crate) fn project_known(
    points: Tensor<2>,
    columns: Tensor<2>,
    projections: Tensor<2>,
) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as ProjectionOps>::project_columns_known(
        points.into_dispatch(),
        columns.into_dispatch(),
        projections.into_dispatch(),
    ))
}

/// burn's matmul and slicing on the cubecl backends (wgpu, cuda): on the device, without a read.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl ProjectionOps for burn::backend::Cube {
    fn project_columns(points: FloatTensor<Self>, columns: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(points, columns)
    }
}

impl ProjectionOps for Flex {
    fn project_columns(points: FlexTensor, columns: FlexTensor) -> FlexTensor {
        match points.dtype() {
            DType::F32 if columns.dtype() == DType::F32 => host_product::<f32>(&points, &columns),
            DType::F64 if columns.dtype() == DType::F64 => host_product::<f64>(&points, &columns),
            _ => Flex::float_matmul(points, columns),
        }
    }

    fn copy_column(columns: FlexTensor, index: FlexTensor) -> FlexTensor {
        let position = index
            .to_contiguous()
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .expect("an integer index")[0] as usize;
        match columns.dtype() {
            DType::F32 => host_column::<f32>(&columns, position),
            DType::F64 => host_column::<f64>(&columns, position),
            _ => Flex::float_select(columns, 1, index),
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

/// Column `index` of a `[d, L]` matrix, gathered by the pool's threads in contiguous pieces.
fn host_column<T>(columns: &FlexTensor, index: usize) -> FlexTensor
where
    T: burn::tensor::Element + bytemuck::Pod + Send + Sync,
{
    let (dim, count) = (columns.shape()[0], columns.shape()[1]);
    let columns = columns.to_contiguous();
    let values = columns
        .as_slice::<T>()
        .expect("contiguous storage of the checked type");
    let piece_len = dim.div_ceil(rayon::current_num_threads());
    let mut column = Vec::with_capacity(dim);
    column.spare_capacity_mut()[..dim]
        .par_chunks_mut(piece_len)
        .enumerate()
        .for_each(|(piece, out)| {
            let first = piece * piece_len;
            for (k, slot) in out.iter_mut().enumerate() {
                slot.write(values[(first + k) * count + index]);
            }
        });
    // SAFETY: the pieces cover the first `dim` elements, each written once just above.
    unsafe { column.set_len(dim) };
    FlexTensor::from_data(TensorData::new(column, [dim, 1]))
}

/// Runs the [`panel`] or [`dot`] kernel on the tensors' storage (copied first only if not
/// contiguous).
fn host_product<T>(points: &FlexTensor, columns: &FlexTensor) -> FlexTensor
where
    T: real::Real + burn::tensor::Element + bytemuck::Pod,
{
    let (n, dim) = (points.shape()[0], points.shape()[1]);
    let count = columns.shape()[1];
    let (points, columns) = (points.to_contiguous(), columns.to_contiguous());
    let points = points
        .as_slice::<T>()
        .expect("contiguous storage of the checked type");
    let columns = columns
        .as_slice::<T>()
        .expect("contiguous storage of the checked type");
    let product = if count == 1 {
        // One column is also one row.
        dot::dot_rows(points, columns, dim)
    } else {
        panel::product_columns(points, columns, dim)
    };
    FlexTensor::from_data(TensorData::new(product, [n, count]))
}

/// The backward pass of [`ProjectionOps::project_columns`].
#[derive(Debug)]
struct ProjectColumnsBackward;

impl<B: Backend + ProjectionOps> Backward<B, 2> for ProjectColumnsBackward {
    /// `columns` when `points` needs a gradient, and `points` when `columns` needs one.
    type State = (
        Option<B::FloatTensorPrimitive>,
        Option<B::FloatTensorPrimitive>,
    );

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (columns, points) = ops.state;
        binary::<B, _, _>(
            ops.parents,
            ops.node,
            grads,
            |grad| {
                let columns = columns.expect("columns are kept when points need a gradient");
                let dim = columns.shape()[0];
                if columns.shape()[1] == 1 {
                    B::outer_product(grad, B::float_reshape(columns, Shape::new([1, dim])))
                } else {
                    B::float_matmul(grad, B::float_transpose(columns))
                }
            },
            |grad| {
                let points = points.expect("points are kept when columns need a gradient");
                B::float_matmul(B::float_transpose(points), grad)
            },
        );
    }
}

impl<B: Backend + ProjectionOps, C: CheckpointStrategy> ProjectionOps for Autodiff<B, C> {
    fn project_columns(points: FloatTensor<Self>, columns: FloatTensor<Self>) -> FloatTensor<Self> {
        let (points_tracked, columns_tracked) = (points.is_tracked(), columns.is_tracked());
        let prepared = ProjectColumnsBackward
            .prepare::<C>([points.node(), columns.node()])
            .compute_bound()
            .stateful();
        let (points, columns) = (points.into_primitive(), columns.into_primitive());
        match prepared {
            OpsKind::Tracked(prep) => {
                let state = (
                    points_tracked.then(|| columns.clone()),
                    columns_tracked.then(|| points.clone()),
                );
                prep.finish(state, B::project_columns(points, columns))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::project_columns(points, columns)),
        }
    }

    fn project_columns_known(
        points: FloatTensor<Self>,
        columns: FloatTensor<Self>,
        projections: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (points_tracked, columns_tracked) = (points.is_tracked(), columns.is_tracked());
        let prepared = ProjectColumnsBackward
            .prepare::<C>([points.node(), columns.node()])
            .compute_bound()
            .stateful();
        let (points, columns) = (points.into_primitive(), columns.into_primitive());
        let projections = projections.into_primitive();
        match prepared {
            OpsKind::Tracked(prep) => {
                let state = (
                    points_tracked.then_some(columns),
                    columns_tracked.then_some(points),
                );
                prep.finish(state, projections)
            }
            OpsKind::UnTracked(prep) => prep.finish(projections),
        }
    }
}
