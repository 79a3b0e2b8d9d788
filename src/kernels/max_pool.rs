//! 2-D max pooling (dilation 1, floor mode, symmetric padding), forward and backward.
//!
//! burn `flex` runs every 2-D max-pool through its 3-D implementation: for each output value it
//! recomputes the window's valid range along three axes with divisions. lacoot computes the window
//! ranges once per call and pools separably: each output row's window rows are first reduced column
//! by column (contiguous, vectorised), then each output takes the winner of its window's columns.
//! Inference keeps only the values; training also keeps each maximum's index in its plane (`i32`,
//! burn's convention), and the backward pass scatters the output gradient through those indices.
//! The rule is flex's and PyTorch's: the first maximum of a window in row-major order, except that
//! a NaN always wins (the last NaN of the window), so values, indices and gradients equal burn's to
//! the bit. Each output gradient lands in its own plane and a plane's outputs are visited in order,
//! so the result does not depend on the thread count.
//!
//! Benchmark: `cargo bench --bench pooling` (BENCHMARKS.md, "CPU speed, session 14").

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::pool::MaxPool2d;
use burn::tensor::{DType, IntDType, Tensor, TensorData};
use rayon::prelude::*;

use super::buffers::{zeroed, zeroed_in_parallel};

/// Values each parallel task reads, about: planes are grouped into tasks of this size.
const PARALLEL_GRAIN: usize = 1 << 14;

/// Max pooling with lacoot's kernels where they are faster, implemented per backend.
#[backend_extension(Flex, Cube: cfg(any(feature = "wgpu", feature = "cuda")), Autodiff)]
pub trait PoolOps: Backend {
    /// Max pooling of `x` (`[batch, channels, H, W]`) over `kernel` windows moved by `stride`,
    /// with `padding` on both sides of each axis (dilation 1, floor mode).
    fn max_pool2d_dense(
        x: FloatTensor<Self>,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<Self> {
        Self::max_pool2d(x, kernel, stride, padding, [1, 1], false)
    }

    /// [`PoolOps::max_pool2d_dense`] and, for each output, the index of its maximum in its input
    /// plane (`h * W + w`, burn's convention), which the backward pass needs.
    fn max_pool2d_dense_with_indices(
        x: FloatTensor<Self>,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> (FloatTensor<Self>, IntTensor<Self>) {
        let pooled =
            Self::max_pool2d_with_indices(x, kernel, stride, padding, [1, 1], false, IntDType::I32);
        (pooled.output, pooled.indices)
    }

    /// The gradient of [`PoolOps::max_pool2d_dense`] with respect to `x`, for the gradient of its
    /// output `output_grad` and the `indices` of [`PoolOps::max_pool2d_dense_with_indices`].
    fn max_pool2d_dense_backward(
        x: FloatTensor<Self>,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        output_grad: FloatTensor<Self>,
        indices: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::max_pool2d_with_indices_backward(
            x,
            kernel,
            stride,
            padding,
            [1, 1],
            false,
            output_grad,
            indices,
        )
        .x_grad
    }
}

/// `pool.forward(input)`, through lacoot's kernels when the pool has dilation 1, floor mode and
/// symmetric padding; burn's `MaxPool2d::forward` otherwise.
pub fn max_pool2d(pool: &MaxPool2d, input: Tensor<4>) -> Tensor<4> {
    let padding = match pool.padding {
        PaddingConfig2d::Valid => [0, 0],
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            [top, left]
        }
        _ => return pool.forward(input),
    };
    if pool.dilation != [1, 1] || pool.ceil_mode {
        return pool.forward(input);
    }
    Tensor::from_dispatch(<Dispatch as PoolOps>::max_pool2d_dense(
        input.into_dispatch(),
        pool.kernel_size,
        pool.stride,
        padding,
    ))
}

/// Sizes of one max-pool, and the input range of every output row's and column's window.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Geometry {
    planes: usize,
    size_in: [usize; 2],
    size_out: [usize; 2],
    /// Input rows of each output row's window (empty where it lies in the padding only).
    rows: Vec<Range<usize>>,
    /// Input columns of each output column's window.
    columns: Vec<Range<usize>>,
}

impl Geometry {
    /// `None` when the shapes do not form a max-pool lacoot's kernels run (checked by burn's
    /// fallback instead, which reports the problem).
    fn new(
        x: &[usize],
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> Option<Self> {
        let &[batch, channels, height, width] = x else {
            return None;
        };
        if stride.contains(&0) || kernel.contains(&0) {
            return None;
        }
        let size_in = [height, width];
        let size_out = [
            super::sliding_outputs(height, kernel[0], stride[0], padding[0])?,
            super::sliding_outputs(width, kernel[1], stride[1], padding[1])?,
        ];
        let windows = |axis: usize| -> Vec<Range<usize>> {
            (0..size_out[axis])
                .map(|o| {
                    let start = o * stride[axis];
                    let end = (start + kernel[axis]).saturating_sub(padding[axis]);
                    let start = start.saturating_sub(padding[axis]);
                    start.min(size_in[axis])..end.min(size_in[axis])
                })
                .collect()
        };
        Some(Self {
            planes: batch * channels,
            size_in,
            size_out,
            rows: windows(0),
            columns: windows(1),
        })
    }

    fn plane_in(&self) -> usize {
        self.size_in[0] * self.size_in[1]
    }

    fn plane_out(&self) -> usize {
        self.size_out[0] * self.size_out[1]
    }

    /// Planes per parallel task.
    fn planes_per_task(&self) -> usize {
        (PARALLEL_GRAIN / self.plane_in().max(1)).max(1)
    }

    /// Into `maxima`, the maximum of each window of output row `oh` in `plane` (−∞ for a window in
    /// the padding only); `columns_max` (one value per input column) is scratch. The window's
    /// input rows are first reduced column by column (contiguous, vectorised), then each output
    /// takes the winner of its window's columns of that reduction.
    fn row_max<T: Element>(&self, plane: &[T], oh: usize, columns_max: &mut [T], maxima: &mut [T]) {
        let width = self.size_in[1];
        let mut rows = self.rows[oh].clone();
        let Some(first) = rows.next() else {
            maxima.fill(T::NEG_INFINITY);
            return;
        };
        columns_max.copy_from_slice(&plane[first * width..][..width]);
        for ih in rows {
            for (max, &value) in columns_max.iter_mut().zip(&plane[ih * width..][..width]) {
                *max = winner(*max, value);
            }
        }
        for (max, columns) in maxima.iter_mut().zip(&self.columns) {
            *max = columns_max[columns.clone()]
                .iter()
                .copied()
                .reduce(winner)
                .unwrap_or(T::NEG_INFINITY);
        }
    }

    /// [`Geometry::row_max`] that also writes, into `argmax`, the index in `plane` of each window's
    /// maximum by the rule of the module documentation (−1 for a window in the padding only);
    /// `columns` is scratch. The column pass keeps, for each input column, the winning value and
    /// its row: later rows take over only when greater or NaN, so a column keeps its first
    /// maximum or its last NaN. An output then takes, among its window's columns, the greater
    /// value, and between equal values the smaller row (then the first column): the first maximum
    /// in row-major order; between NaNs the greater row (then the last column): the last NaN.
    fn row_max_indexed<T: Element>(
        &self,
        plane: &[T],
        oh: usize,
        columns: &mut ColumnWinners<T>,
        maxima: &mut [T],
        argmax: &mut [i32],
    ) {
        let width = self.size_in[1];
        let mut rows = self.rows[oh].clone();
        let Some(first) = rows.next() else {
            maxima.fill(T::NEG_INFINITY);
            argmax.fill(-1);
            return;
        };
        let (values, max_rows) = (&mut columns.values[..width], &mut columns.rows[..width]);
        values.copy_from_slice(&plane[first * width..][..width]);
        max_rows.fill(first as u32);
        for ih in rows {
            let row = &plane[ih * width..][..width];
            let ih = ih as u32;
            // Indexed over equal lengths, with selects instead of branches, so that it vectorises.
            for c in 0..width {
                let (value, max) = (row[c], values[c]);
                let takes = (value > max) | value.is_nan();
                values[c] = T::blend(takes, value, max);
                let mask = u32::from(takes).wrapping_neg();
                max_rows[c] = (ih & mask) | (max_rows[c] & !mask);
            }
        }
        let (values, max_rows) = (&columns.values[..width], &columns.rows[..width]);
        for ((max, index), window) in maxima.iter_mut().zip(argmax.iter_mut()).zip(&self.columns) {
            let Some(first) = window.clone().next() else {
                (*max, *index) = (T::NEG_INFINITY, -1);
                continue;
            };
            let (mut best, mut best_row, mut best_column) = (values[first], max_rows[first], first);
            for iw in window.start + 1..window.end {
                let (value, row) = (values[iw], max_rows[iw]);
                let takes = (value > best)
                    | ((value == best) & (row < best_row))
                    | (value.is_nan() & (!best.is_nan() | (row >= best_row)));
                best = T::blend(takes, value, best);
                best_row = if takes { row } else { best_row };
                best_column = if takes { iw } else { best_column };
            }
            (*max, *index) = (best, (best_row as usize * width + best_column) as i32);
        }
    }
}

/// Per input column, the winning value of the current output row's window rows and its row.
struct ColumnWinners<T> {
    values: Vec<T>,
    rows: Vec<u32>,
}

impl<T: Element> ColumnWinners<T> {
    fn new(width: usize) -> Self {
        Self {
            values: vec![T::ZERO; width],
            rows: vec![0; width],
        }
    }
}

/// `a` or `b`, whichever wins by the rule of the module documentation; the comparison of values
/// only (which of two equal values wins does not change the value).
fn winner<T: Element>(a: T, b: T) -> T {
    if b > a || b.is_nan() { b } else { a }
}

/// Element types the kernels run on.
trait Element: burn::tensor::Element + bytemuck::Pod + PartialOrd + std::ops::AddAssign {
    const NEG_INFINITY: Self;
    const ZERO: Self;
    fn is_nan(self) -> bool;
    /// `new` where `takes`, else `old`, as a blend of bits: no branch, so that loops vectorise.
    fn blend(takes: bool, new: Self, old: Self) -> Self;
}

impl Element for f32 {
    const NEG_INFINITY: Self = f32::NEG_INFINITY;
    const ZERO: Self = 0.0;
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
    fn blend(takes: bool, new: Self, old: Self) -> Self {
        let mask = u32::from(takes).wrapping_neg();
        f32::from_bits((new.to_bits() & mask) | (old.to_bits() & !mask))
    }
}

impl Element for f64 {
    const NEG_INFINITY: Self = f64::NEG_INFINITY;
    const ZERO: Self = 0.0;
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
    fn blend(takes: bool, new: Self, old: Self) -> Self {
        let mask = u64::from(takes).wrapping_neg();
        f64::from_bits((new.to_bits() & mask) | (old.to_bits() & !mask))
    }
}

/// The pooled planes of `x` (`[planes, H, W]` flattened), `[planes, Ho, Wo]` flattened; a window in
/// the padding only gives −∞, as burn's op does.
fn forward<T: Element>(g: &Geometry, x: &[T]) -> Vec<T> {
    let (plane_in, plane_out) = (g.plane_in(), g.plane_out());
    let planes_per_task = g.planes_per_task();
    zeroed_in_parallel(
        g.planes * plane_out,
        planes_per_task * plane_out,
        |task, pooled| {
            let mut columns_max = vec![T::ZERO; g.size_in[1]];
            for (index, pooled) in pooled.chunks_exact_mut(plane_out).enumerate() {
                let plane = &x[(task * planes_per_task + index) * plane_in..][..plane_in];
                for (oh, maxima) in pooled.chunks_exact_mut(g.size_out[1]).enumerate() {
                    g.row_max(plane, oh, &mut columns_max, maxima);
                }
            }
        },
    )
}

/// [`forward`] that also returns each output's index in its input plane ([`Geometry::row_max_indexed`]).
fn forward_indexed<T: Element>(g: &Geometry, x: &[T]) -> (Vec<T>, Vec<i32>) {
    let (plane_in, plane_out) = (g.plane_in(), g.plane_out());
    let len = g.planes * plane_out;
    let (mut out, mut indices) = (Vec::with_capacity(len), Vec::with_capacity(len));
    let planes_per_task = g.planes_per_task();
    let chunk_len = (planes_per_task * plane_out).max(1);
    let out_w = g.size_out[1];
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk_len)
        .zip(indices.spare_capacity_mut()[..len].par_chunks_mut(chunk_len))
        .enumerate()
        .for_each(|(task, (pooled, argmax))| {
            let (pooled, argmax) = (zeroed(pooled), zeroed(argmax));
            let mut columns = ColumnWinners::new(g.size_in[1]);
            for (index, (pooled, argmax)) in pooled
                .chunks_exact_mut(plane_out)
                .zip(argmax.chunks_exact_mut(plane_out))
                .enumerate()
            {
                let plane = &x[(task * planes_per_task + index) * plane_in..][..plane_in];
                for (oh, (maxima, argmax)) in pooled
                    .chunks_exact_mut(out_w)
                    .zip(argmax.chunks_exact_mut(out_w))
                    .enumerate()
                {
                    g.row_max_indexed(plane, oh, &mut columns, maxima, argmax);
                }
            }
        });
    // SAFETY: the chunks cover the first `len` elements of both, and `zeroed` stored each of them.
    unsafe {
        out.set_len(len);
        indices.set_len(len);
    }
    (out, indices)
}

/// The gradient with respect to the `planes` input planes (`plane_in` values each) for the
/// output gradient `dy`: each output's gradient added at its maximum, `indices` (per plane, as
/// [`forward_indexed`] gives them; negative for a window in the padding only). `None` when an
/// index lies outside its plane or the lengths disagree, which only indices from elsewhere can do.
fn scatter<T: Element>(
    planes: usize,
    plane_in: usize,
    indices: &[i32],
    dy: &[T],
) -> Option<Vec<T>> {
    if indices.len() != dy.len() {
        return None;
    }
    let plane_out = dy.len() / planes.max(1);
    let planes_per_task = (PARALLEL_GRAIN / plane_in.max(1)).max(1);
    let outside = AtomicBool::new(false);
    let dx = zeroed_in_parallel(planes * plane_in, planes_per_task * plane_in, |task, dx| {
        for (index, dx_plane) in dx.chunks_exact_mut(plane_in).enumerate() {
            let first = (task * planes_per_task + index) * plane_out;
            let (indices, dy_plane) = (&indices[first..][..plane_out], &dy[first..][..plane_out]);
            for (&index, &gradient) in indices.iter().zip(dy_plane) {
                if let Ok(index) = usize::try_from(index) {
                    match dx_plane.get_mut(index) {
                        Some(slot) => *slot += gradient,
                        None => outside.store(true, Ordering::Relaxed),
                    }
                }
            }
        }
    });
    (!outside.into_inner()).then_some(dx)
}

fn host_forward<T: Element>(g: &Geometry, x: &FlexTensor) -> FlexTensor {
    let x = x.to_contiguous();
    let values = forward(g, x.as_slice::<T>().expect("checked element type"));
    let (shape, [out_h, out_w]) = (x.shape(), g.size_out);
    FlexTensor::from_data(TensorData::new(values, [shape[0], shape[1], out_h, out_w]))
}

fn host_forward_indexed<T: Element>(g: &Geometry, x: &FlexTensor) -> (FlexTensor, FlexTensor) {
    let x = x.to_contiguous();
    let (values, indices) = forward_indexed(g, x.as_slice::<T>().expect("checked element type"));
    let (shape, [out_h, out_w]) = (x.shape(), g.size_out);
    let out_shape = [shape[0], shape[1], out_h, out_w];
    (
        FlexTensor::from_data(TensorData::new(values, out_shape)),
        FlexTensor::from_data(TensorData::new(indices, out_shape)),
    )
}

/// lacoot's scatter for `f32` and `f64` with `i32` indices of the output gradient's shape; `None`
/// otherwise (burn's backward then runs).
fn host_backward(
    x: &FlexTensor,
    output_grad: &FlexTensor,
    indices: &FlexTensor,
) -> Option<FlexTensor> {
    let (x_shape, dy_shape) = (x.shape(), output_grad.shape());
    let &[batch, channels, height, width] = x_shape.as_slice() else {
        return None;
    };
    if dy_shape.len() != 4
        || dy_shape[..2] != [batch, channels]
        || indices.shape() != dy_shape
        || x.dtype() != output_grad.dtype()
    {
        return None;
    }
    let (output_grad, indices) = (output_grad.to_contiguous(), indices.to_contiguous());
    let indices = indices.as_slice::<i32>()?;
    let (planes, plane_in) = (batch * channels, height * width);
    let shape = x_shape.as_slice().to_vec();
    let dx = match output_grad.dtype() {
        DType::F32 => {
            let dy = output_grad.as_slice::<f32>()?;
            TensorData::new(scatter(planes, plane_in, indices, dy)?, shape)
        }
        DType::F64 => {
            let dy = output_grad.as_slice::<f64>()?;
            TensorData::new(scatter(planes, plane_in, indices, dy)?, shape)
        }
        _ => return None,
    };
    Some(FlexTensor::from_data(dx))
}

/// burn's own max-pool on the cubecl backends (wgpu, cuda).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl PoolOps for burn::backend::Cube {}

impl PoolOps for Flex {
    fn max_pool2d_dense(
        x: FlexTensor,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FlexTensor {
        match (
            Geometry::new(x.shape().as_slice(), kernel, stride, padding),
            x.dtype(),
        ) {
            (Some(g), DType::F32) => host_forward::<f32>(&g, &x),
            (Some(g), DType::F64) => host_forward::<f64>(&g, &x),
            _ => Flex::max_pool2d(x, kernel, stride, padding, [1, 1], false),
        }
    }

    fn max_pool2d_dense_with_indices(
        x: FlexTensor,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> (FlexTensor, FlexTensor) {
        let geometry = Geometry::new(x.shape().as_slice(), kernel, stride, padding)
            .filter(|g| i32::try_from(g.plane_in()).is_ok());
        match (geometry, x.dtype()) {
            (Some(g), DType::F32) => host_forward_indexed::<f32>(&g, &x),
            (Some(g), DType::F64) => host_forward_indexed::<f64>(&g, &x),
            _ => {
                let pooled = Flex::max_pool2d_with_indices(
                    x,
                    kernel,
                    stride,
                    padding,
                    [1, 1],
                    false,
                    IntDType::I32,
                );
                (pooled.output, pooled.indices)
            }
        }
    }

    fn max_pool2d_dense_backward(
        x: FlexTensor,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        output_grad: FlexTensor,
        indices: FlexTensor,
    ) -> FlexTensor {
        host_backward(&x, &output_grad, &indices).unwrap_or_else(|| {
            Flex::max_pool2d_with_indices_backward(
                x,
                kernel,
                stride,
                padding,
                [1, 1],
                false,
                output_grad,
                indices,
            )
            .x_grad
        })
    }
}

/// The backward pass of [`PoolOps::max_pool2d_dense`].
#[derive(Debug)]
struct MaxPool2dBackward;

impl<B: Backend + PoolOps> Backward<B, 1> for MaxPool2dBackward {
    /// The input, each output's index of its maximum, and the kernel, stride and padding.
    type State = (
        B::FloatTensorPrimitive,
        B::IntTensorPrimitive,
        [[usize; 2]; 3],
    );

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [input_node] = ops.parents;
        let output_grad = grads.consume::<B>(&ops.node);
        let (x, indices, [kernel, stride, padding]) = ops.state;
        if let Some(node) = input_node {
            let grad =
                B::max_pool2d_dense_backward(x, kernel, stride, padding, output_grad, indices);
            grads.register::<B>(node.id, grad);
        }
    }
}

impl<B: Backend + PoolOps, C: CheckpointStrategy> PoolOps for Autodiff<B, C> {
    fn max_pool2d_dense(
        x: FloatTensor<Self>,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<Self> {
        let prepared = MaxPool2dBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful();
        let x = x.into_primitive();
        match prepared {
            OpsKind::Tracked(prep) => {
                let (output, indices) =
                    B::max_pool2d_dense_with_indices(x.clone(), kernel, stride, padding);
                prep.finish((x, indices, [kernel, stride, padding]), output)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::max_pool2d_dense(x, kernel, stride, padding))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::ops::ModuleOps;
    use burn::nn::pool::MaxPool2dConfig;
    use burn::tensor::Distribution;
    use proptest::prelude::*;

    use super::*;
    use crate::device::{autodiff_device, default_device};

    /// A pool module of the given window, stride and symmetric padding.
    fn pool(kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) -> MaxPool2d {
        MaxPool2dConfig::new(kernel)
            .with_strides(stride)
            .with_padding(PaddingConfig2d::Explicit(
                padding[0], padding[1], padding[0], padding[1],
            ))
            .init()
    }

    /// The output and the input gradient of `run` on `x` for the output gradient `probe`.
    fn value_and_gradient(
        run: impl Fn(Tensor<4>) -> Tensor<4>,
        x: &Tensor<4>,
        probe: &Tensor<4>,
    ) -> [TensorData; 2] {
        let x = x.clone().require_grad();
        let output = run(x.clone());
        let grads = (output.clone() * probe.clone()).sum().backward();
        [
            output.into_data(),
            x.grad(&grads).expect("input gradient").into_data(),
        ]
    }

    /// lacoot's max-pool against burn's on `x`: the output (training and eval) and the input
    /// gradient, to the bit.
    fn check_against_burn(values: Vec<f32>, shape: [usize; 4], pooling: &MaxPool2d) {
        let device = autodiff_device();
        let x = Tensor::<4>::from_data(TensorData::new(values.clone(), shape), &device);
        let reference = pooling.forward(x.clone());
        let probe = Tensor::<4>::random(reference.dims(), Distribution::Normal(0.0, 1.0), &device);
        let ours = value_and_gradient(|x| max_pool2d(pooling, x), &x, &probe);
        let theirs = value_and_gradient(|x| pooling.forward(x), &x, &probe);
        assert_eq!(ours, theirs);
        let eval_x = Tensor::<4>::from_data(TensorData::new(values, shape), &default_device());
        assert_eq!(
            indices(
                pooling,
                &eval_x,
                <Dispatch as PoolOps>::max_pool2d_dense_with_indices
            ),
            indices(pooling, &eval_x, |x, kernel, stride, padding| {
                let pooled = <Dispatch as ModuleOps<Dispatch>>::max_pool2d_with_indices(
                    x,
                    kernel,
                    stride,
                    padding,
                    [1, 1],
                    false,
                    IntDType::I32,
                );
                (pooled.output, pooled.indices)
            })
        );
        assert_eq!(
            max_pool2d(pooling, eval_x.clone()).into_data(),
            pooling.forward(eval_x).into_data()
        );
    }

    /// The indices of each output's maximum, by `run`, for a pool of `pooling`'s options with
    /// symmetric padding.
    fn indices(
        pooling: &MaxPool2d,
        x: &Tensor<4>,
        run: impl Fn(
            FloatTensor<Dispatch>,
            [usize; 2],
            [usize; 2],
            [usize; 2],
        ) -> (FloatTensor<Dispatch>, IntTensor<Dispatch>),
    ) -> Option<TensorData> {
        let padding = match pooling.padding {
            PaddingConfig2d::Valid => [0, 0],
            PaddingConfig2d::Explicit(top, left, ..) => [top, left],
            _ => return None,
        };
        let (_, indices) = run(
            x.clone().into_dispatch(),
            pooling.kernel_size,
            pooling.stride,
            padding,
        );
        Some(Tensor::<4, burn::tensor::Int>::from_dispatch(indices).into_data())
    }

    /// `len` pseudo-random values drawn from three levels (xorshift), so that windows hold ties
    /// along rows, along columns and across both.
    fn tied_values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2).wrapping_add(0x9E37_79B9_7F4A_7C15);
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 3) as f32 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_burn_on_the_cifar_stem_with_ties() {
        let stem = pool([3, 3], [2, 2], [1, 1]);
        let shape = [4, 8, 16, 16];
        check_against_burn(tied_values(4 * 8 * 16 * 16, 1), shape, &stem);
        // Odd planes, and enough planes for several parallel tasks.
        let shape = [16, 16, 15, 13];
        check_against_burn(tied_values(16 * 16 * 15 * 13, 2), shape, &stem);
    }

    #[test]
    fn nan_wins_its_windows_as_in_burn() {
        let mut values = tied_values(2 * 3 * 7 * 7, 3);
        for index in [0, 5, 6, 40, 77, 200, 201] {
            values[index] = f32::NAN;
        }
        let device = default_device();
        let x = Tensor::<4>::from_data(TensorData::new(values, [2, 3, 7, 7]), &device);
        let stem = pool([3, 3], [2, 2], [1, 1]);
        let [ours, theirs] = [max_pool2d(&stem, x.clone()), stem.forward(x.clone())]
            .map(|out| out.into_data().try_to_vec::<f32>().expect("f32 output"));
        assert!(ours.iter().any(|v| v.is_nan()));
        for (ours, theirs) in ours.iter().zip(&theirs) {
            assert!(ours == theirs || ours.is_nan() && theirs.is_nan());
        }
        let probe = Tensor::<4>::ones([2, 3, 4, 4], &autodiff_device());
        let x = Tensor::<4>::from_data(x.into_data(), &autodiff_device());
        let [_, ours] = value_and_gradient(|x| max_pool2d(&stem, x), &x, &probe);
        let [_, theirs] = value_and_gradient(|x| stem.forward(x), &x, &probe);
        assert_eq!(ours, theirs);
    }

    #[test]
    fn other_pools_go_to_burn() {
        let device = autodiff_device();
        let x = Tensor::<4>::random([2, 3, 9, 9], Distribution::Normal(0.0, 1.0), &device);
        for pooling in [
            MaxPool2dConfig::new([3, 3]).with_dilation([2, 2]).init(),
            MaxPool2dConfig::new([2, 2]).with_ceil_mode(true).init(),
            MaxPool2dConfig::new([2, 2])
                .with_strides([1, 1])
                .with_padding(PaddingConfig2d::Same)
                .init(),
        ] {
            let probe = Tensor::<4>::ones(pooling.forward(x.clone()).dims(), &device);
            assert_eq!(
                value_and_gradient(|x| max_pool2d(&pooling, x), &x, &probe),
                value_and_gradient(|x| pooling.forward(x), &x, &probe)
            );
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        // Distinct values, so that each window's maximum has room to move in both directions.
        let g = Geometry::new(&[2, 2, 7, 6], [3, 2], [2, 1], [1, 1]).expect("a valid pool");
        let x: Vec<f64> = (0..2 * 2 * 7 * 6)
            .map(|i| ((i * 37 % 84) as f64) * 0.1 + (i as f64).sin() * 0.01)
            .collect();
        let probe: Vec<f64> = (0..g.planes * g.plane_out())
            .map(|i| (i as f64 * 0.7).cos())
            .collect();
        let loss =
            |x: &[f64]| -> f64 { forward(&g, x).iter().zip(&probe).map(|(v, p)| v * p).sum() };
        let (values, indices) = forward_indexed(&g, &x);
        assert_eq!(values, forward(&g, &x));
        let gradient = scatter(g.planes, g.plane_in(), &indices, &probe).expect("valid indices");
        let step = 1e-6;
        for index in 0..x.len() {
            let [mut up, mut down] = [x.clone(), x.clone()];
            up[index] += step;
            down[index] -= step;
            let numeric = (loss(&up) - loss(&down)) / (2.0 * step);
            assert!(
                (numeric - gradient[index]).abs() < 1e-6,
                "x[{index}]: numeric {numeric}, analytic {}",
                gradient[index]
            );
        }
    }

    #[test]
    fn indices_outside_their_plane_go_to_burn() {
        let g = Geometry::new(&[1, 2, 4, 4], [2, 2], [2, 2], [0, 0]).expect("a valid pool");
        let dy = vec![1.0f32; g.planes * g.plane_out()];
        let mut indices = vec![0i32; dy.len()];
        assert!(scatter(g.planes, g.plane_in(), &indices, &dy).is_some());
        indices[3] = 16;
        assert_eq!(scatter(g.planes, g.plane_in(), &indices, &dy), None);
        assert_eq!(
            scatter(g.planes, g.plane_in(), &indices[1..], &dy[1..]),
            None
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn matches_burn_on_random_shapes(
            batch in 1usize..3,
            channels in 1usize..4,
            height in 1usize..10,
            width in 1usize..10,
            kernel in (1usize..4, 1usize..4),
            stride in (1usize..4, 1usize..4),
            padding in (0usize..2, 0usize..2),
            seed in 0u64..1000,
        ) {
            let kernel = [kernel.0, kernel.1];
            // burn's rule: padding at most half the window, and a window that fits.
            let padding = [padding.0.min(kernel[0] / 2), padding.1.min(kernel[1] / 2)];
            prop_assume!(height + 2 * padding[0] >= kernel[0] && width + 2 * padding[1] >= kernel[1]);
            let shape = [batch, channels, height, width];
            let values = tied_values(shape.iter().product(), seed);
            check_against_burn(values, shape, &pool(kernel, [stride.0, stride.1], padding));
        }
    }
}
