//! Swin's windowed multi-head self-attention, from the fused `qkv` projection to the heads'
//! concatenated outputs, forward and backward: `softmax(q·kᵀ·scale + bias + mask)·v` for every
//! window and head.
//!
//! Composed from burn's ops, one attention layer is a dozen tensors the size of the logits or of
//! `qkv`: the permuted copies of `q`, `k` and `v`, the logits, the bias and mask sums, the softmax's
//! intermediates, and in the backward a zero tensor the size of `qkv` for each of the three slices
//! of it, each filled on the calling thread. lacoot runs each window and head as one task that
//! reads `q`, `k` and `v` where they lie in `qkv` (strided products by the `gemm` crate), applies
//! the scale, the bias, the mask and the softmax in one pass over each row, and writes its output
//! columns in place; the backward pass writes `dq`, `dk` and `dv` straight into one `qkv`-shaped
//! gradient. The probabilities are kept for the backward pass.
//!
//! The bias gradient sums each window's logit gradients over fixed groups of windows in parallel,
//! and the groups' sums are added in order; the products are too small to split across threads, so
//! every value is computed in the same order whatever the thread count. Other element types and
//! shapes go to the same computation composed from burn's ops. Benchmark: `cargo bench --bench
//! train_step` (Swin-T; BENCHMARKS.md, "CPU speed, session 20").

use std::mem::MaybeUninit;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{DType, Shape, Slice, Tensor, TensorData};
use rayon::prelude::*;

use super::buffers::written;
use super::products::{Element, product_with};
use super::row_major;

/// Groups of windows whose logit gradients are summed in parallel for the bias gradient, whatever
/// the thread count.
const BIAS_GROUPS: usize = 32;

/// Windowed attention with lacoot's kernels where they are faster, implemented per backend.
#[backend_extension(Flex, Cube: cfg(any(feature = "wgpu", feature = "cuda")), Autodiff)]
pub trait AttentionOps: Backend {
    /// The attention of every window and head, and its probabilities.
    ///
    /// `qkv` is `[windows, tokens, 3·heads·head_dim]` (each token's queries, keys and values, each
    /// head after head), `bias` `[heads, tokens, tokens]`, and `mask` `[m, tokens, tokens]`, added
    /// to window `w`'s logits as `mask[w % m]`. The logits are scaled by `head_dim^-½`. Returns the
    /// output `[windows, tokens, heads·head_dim]` and the probabilities `[windows, heads, tokens,
    /// tokens]`.
    fn window_attention(
        qkv: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        heads: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed_forward::<Self>(qkv, bias, mask, heads)
    }

    /// The gradients of [`AttentionOps::window_attention`] with respect to `qkv` and to `bias`,
    /// given the probabilities it returned and the gradient of its output.
    fn window_attention_backward(
        qkv: FloatTensor<Self>,
        probabilities: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        heads: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed_backward::<Self>(qkv, probabilities, output_grad, heads)
    }
}

/// [`AttentionOps::window_attention`] through the dispatch backend: `qkv` `[windows, tokens,
/// 3·channels]`, `bias` `[heads, tokens, tokens]`, `mask` `[m, tokens, tokens]`; returns
/// `[windows, tokens, channels]`.
pub fn window_attention(
    qkv: Tensor<3>,
    bias: Tensor<3>,
    mask: Tensor<3>,
    heads: usize,
) -> Tensor<3> {
    let (output, _) = <Dispatch as AttentionOps>::window_attention(
        qkv.into_dispatch(),
        bias.into_dispatch(),
        mask.into_dispatch(),
        heads,
    );
    Tensor::from_dispatch(output)
}

/// Sizes of one windowed attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geometry {
    windows: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
    /// Windows of the mask, repeated along the windows.
    mask_windows: usize,
}

impl Geometry {
    /// `None` when the shapes do not form a windowed attention lacoot's kernels run (checked by
    /// the composed fallback instead, which reports the problem).
    fn new(qkv: &[usize], bias: &[usize], mask: &[usize], heads: usize) -> Option<Self> {
        let &[windows, tokens, width] = qkv else {
            return None;
        };
        let &[mask_windows, mask_rows, mask_cols] = mask else {
            return None;
        };
        let fits = heads > 0
            && windows > 0
            && tokens > 0
            && width % (3 * heads) == 0
            && width > 0
            && bias == [heads, tokens, tokens]
            && [mask_rows, mask_cols] == [tokens, tokens]
            && mask_windows > 0
            && windows % mask_windows == 0;
        fits.then(|| Self {
            windows,
            tokens,
            heads,
            head_dim: width / (3 * heads),
            mask_windows,
        })
    }

    fn channels(&self) -> usize {
        self.heads * self.head_dim
    }

    fn logits(&self) -> usize {
        self.tokens * self.tokens
    }

    fn scale<T: Element>(&self) -> T {
        T::from_real(1.0 / (self.head_dim as f64).sqrt())
    }

    /// Offset of part `part` (0 queries, 1 keys, 2 values) of head `head` in window `window`'s
    /// first row of `qkv`.
    fn part(&self, window: usize, part: usize, head: usize) -> usize {
        window * self.tokens * 3 * self.channels() + part * self.channels() + head * self.head_dim
    }
}

/// A pointer the tasks of one kernel share; each writes its own disjoint elements through it.
#[derive(Clone, Copy)]
struct Shared<T>(*mut T);

// SAFETY: the kernels hand each task disjoint elements to write through the pointer.
unsafe impl<T> Send for Shared<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    fn at(self, offset: usize) -> *mut T {
        // SAFETY: callers stay inside the buffer the pointer addresses.
        unsafe { self.0.add(offset) }
    }
}

/// The output (`[windows, tokens, channels]`) and the probabilities (`[windows, heads, tokens,
/// tokens]`) for row-major `qkv`, `bias` and `mask`.
fn forward<T: Element>(g: Geometry, qkv: &[T], bias: &[T], mask: &[T]) -> (Vec<T>, Vec<T>) {
    let (tokens, channels, stride) = (g.tokens, g.channels(), 3 * g.channels() as isize);
    let scale = g.scale::<T>();
    let mut probabilities: Vec<MaybeUninit<T>> =
        Vec::with_capacity(g.windows * g.heads * g.logits());
    // SAFETY: `MaybeUninit` needs no initialisation; every element is written below.
    unsafe { probabilities.set_len(probabilities.capacity()) };
    // SAFETY: each task writes the columns of its head in its window's rows of the output; the
    // tasks together cover every output element.
    let output = unsafe {
        written(g.windows * tokens * channels, |output: *mut T| {
            let output = Shared(output);
            probabilities
                .par_chunks_mut(g.logits())
                .enumerate()
                .for_each(|(task, logits)| {
                    let (window, head) = (task / g.heads, task % g.heads);
                    let logits = logits.as_mut_ptr().cast::<T>();
                    // SAFETY: the logits are `[tokens, tokens]`; queries and keys are `[tokens,
                    // head_dim]` blocks of `qkv` with row stride `3·channels`, the keys read as
                    // their transpose.
                    product_with(
                        false,
                        [tokens, tokens, g.head_dim],
                        (logits, tokens as isize, 1),
                        false,
                        (qkv.as_ptr().add(g.part(window, 0, head)), stride, 1),
                        (qkv.as_ptr().add(g.part(window, 1, head)), 1, stride),
                    );
                    let logits = std::slice::from_raw_parts_mut(logits, g.logits());
                    let bias = &bias[head * g.logits()..][..g.logits()];
                    let mask = &mask[window % g.mask_windows * g.logits()..][..g.logits()];
                    for ((row, bias), mask) in logits
                        .chunks_mut(tokens)
                        .zip(bias.chunks(tokens))
                        .zip(mask.chunks(tokens))
                    {
                        softmax_row(row, scale, bias, mask);
                    }
                    // SAFETY: the output block is `[tokens, head_dim]` with row stride
                    // `channels`, values `[tokens, head_dim]` with row stride `3·channels`.
                    product_with(
                        false,
                        [tokens, g.head_dim, tokens],
                        (
                            output.at(window * tokens * channels + head * g.head_dim),
                            channels as isize,
                            1,
                        ),
                        false,
                        (logits.as_ptr(), tokens as isize, 1),
                        (qkv.as_ptr().add(g.part(window, 2, head)), stride, 1),
                    );
                });
        })
    };
    // SAFETY: every chunk was written by its task (`MaybeUninit<T>` and `T` share their layout).
    let probabilities = unsafe {
        let mut probabilities = std::mem::ManuallyDrop::new(probabilities);
        Vec::from_raw_parts(
            probabilities.as_mut_ptr().cast::<T>(),
            probabilities.len(),
            probabilities.capacity(),
        )
    };
    (output, probabilities)
}

/// `row ← softmax(row·scale + bias + mask)`, one row of logits.
fn softmax_row<T: Element>(row: &mut [T], scale: T, bias: &[T], mask: &[T]) {
    let mut max = T::from_real(f64::NEG_INFINITY);
    for ((value, &bias), &mask) in row.iter_mut().zip(bias).zip(mask) {
        *value = *value * scale + bias + mask;
        if *value > max {
            max = *value;
        }
    }
    let mut sum = T::default();
    for value in row.iter_mut() {
        *value = (*value - max).exp();
        sum += *value;
    }
    let inverse = T::from_real(1.0 / sum.to_f64());
    for value in row.iter_mut() {
        *value = *value * inverse;
    }
}

/// The gradients with respect to `qkv` (`[windows, tokens, 3·channels]`) and to the bias
/// (`[heads, tokens, tokens]`) for the row-major output gradient `dy` (`[windows, tokens,
/// channels]`).
fn backward<T: Element>(g: Geometry, qkv: &[T], probabilities: &[T], dy: &[T]) -> (Vec<T>, Vec<T>) {
    let (tokens, channels, stride) = (g.tokens, g.channels(), 3 * g.channels() as isize);
    let scale = g.scale::<T>();
    let group_len = g.windows.div_ceil(BIAS_GROUPS).max(1);
    let mut bias_grad = vec![T::default(); g.heads * g.logits()];
    // SAFETY: each task writes the query, key and value columns of its windows' rows of the
    // gradient, which together cover every element.
    let qkv_grad = unsafe {
        written(g.windows * tokens * 3 * channels, |qkv_grad: *mut T| {
            let qkv_grad = Shared(qkv_grad);
            let partials: Vec<Vec<T>> = (0..g.windows.div_ceil(group_len))
                .into_par_iter()
                .map(|group| {
                    let mut bias_partial = vec![T::default(); g.heads * g.logits()];
                    let mut logits_grad = vec![T::default(); g.logits()];
                    let windows = group * group_len..((group + 1) * group_len).min(g.windows);
                    for window in windows {
                        for head in 0..g.heads {
                            let probabilities = &probabilities
                                [(window * g.heads + head) * g.logits()..][..g.logits()];
                            let dy = dy
                                .as_ptr()
                                .add(window * tokens * channels + head * g.head_dim);
                            let [q, k, v] = [0, 1, 2].map(|part| g.part(window, part, head));
                            // SAFETY (all products): `[tokens, tokens]` logit blocks, `[tokens,
                            // head_dim]` blocks of `qkv` and its gradient with row stride
                            // `3·channels`, and of `dy` with row stride `channels`.
                            product_with(
                                false,
                                [tokens, tokens, g.head_dim],
                                (logits_grad.as_mut_ptr(), tokens as isize, 1),
                                false,
                                (dy, channels as isize, 1),
                                (qkv.as_ptr().add(v), 1, stride),
                            );
                            product_with(
                                false,
                                [tokens, g.head_dim, tokens],
                                (qkv_grad.at(v), stride, 1),
                                false,
                                (probabilities.as_ptr(), 1, tokens as isize),
                                (dy, channels as isize, 1),
                            );
                            let bias_partial = &mut bias_partial[head * g.logits()..][..g.logits()];
                            for ((grad, p), bias) in logits_grad
                                .chunks_mut(tokens)
                                .zip(probabilities.chunks(tokens))
                                .zip(bias_partial.chunks_mut(tokens))
                            {
                                softmax_row_backward(grad, p, bias, scale);
                            }
                            product_with(
                                false,
                                [tokens, g.head_dim, tokens],
                                (qkv_grad.at(q), stride, 1),
                                false,
                                (logits_grad.as_ptr(), tokens as isize, 1),
                                (qkv.as_ptr().add(k), stride, 1),
                            );
                            product_with(
                                false,
                                [tokens, g.head_dim, tokens],
                                (qkv_grad.at(k), stride, 1),
                                false,
                                (logits_grad.as_ptr(), 1, tokens as isize),
                                (qkv.as_ptr().add(q), stride, 1),
                            );
                        }
                    }
                    bias_partial
                })
                .collect();
            for partial in partials {
                for (total, value) in bias_grad.iter_mut().zip(partial) {
                    *total += value;
                }
            }
        })
    };
    (qkv_grad, bias_grad)
}

/// One row of the softmax's backward pass: `grad` holds the probabilities' gradient and becomes
/// the logits' gradient (`p ∘ (grad − Σ grad ∘ p)`), which is added to `bias_grad` and then scaled
/// by `scale` for the queries and keys.
fn softmax_row_backward<T: Element>(
    grad: &mut [T],
    probabilities: &[T],
    bias_grad: &mut [T],
    scale: T,
) {
    let mut dot = T::default();
    for (&grad, &p) in grad.iter().zip(probabilities) {
        dot += grad * p;
    }
    for ((grad, &p), bias_grad) in grad.iter_mut().zip(probabilities).zip(bias_grad) {
        let logit_grad = p * (*grad - dot);
        *bias_grad += logit_grad;
        *grad = logit_grad * scale;
    }
}

/// The queries, keys and values of `qkv` (`[windows, tokens, 3·heads·head_dim]`) as `[windows,
/// heads, tokens, head_dim]` tensors of backend `B`.
fn split_heads<B: Backend>(qkv: FloatTensor<B>, heads: usize) -> [FloatTensor<B>; 3] {
    let [windows, tokens, width] = qkv.shape().dims::<3>();
    let head_dim = width / (3 * heads);
    let parts = B::float_permute(
        B::float_reshape(qkv, Shape::new([windows, tokens, 3, heads, head_dim])),
        &[2, 0, 3, 1, 4],
    );
    let all = Slice::new(0, None, 1);
    [0, 1, 2].map(|part| {
        let slices = [Slice::new(part, Some(part + 1), 1), all, all, all, all];
        B::float_reshape(
            B::float_slice(parts.clone(), &slices),
            Shape::new([windows, heads, tokens, head_dim]),
        )
    })
}

/// [`AttentionOps::window_attention`] composed from burn's ops of backend `B`.
fn composed_forward<B: Backend>(
    qkv: FloatTensor<B>,
    bias: FloatTensor<B>,
    mask: FloatTensor<B>,
    heads: usize,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let [windows, tokens, width] = qkv.shape().dims::<3>();
    let [mask_windows, _, _] = mask.shape().dims::<3>();
    let head_dim = width / (3 * heads);
    let [q, k, v] = split_heads::<B>(qkv, heads);
    let logits = B::float_mul_scalar(
        B::float_matmul(q, B::float_swap_dims(k, 2, 3)),
        (1.0 / (head_dim as f64).sqrt()).into(),
    );
    let logits = B::float_add(
        logits,
        B::float_reshape(bias, Shape::new([1, heads, tokens, tokens])),
    );
    let by_mask_window = Shape::new([windows / mask_windows, mask_windows, heads, tokens, tokens]);
    let logits = B::float_add(
        B::float_reshape(logits, by_mask_window),
        B::float_reshape(mask, Shape::new([1, mask_windows, 1, tokens, tokens])),
    );
    let logits = B::float_reshape(logits, Shape::new([windows, heads, tokens, tokens]));
    let probabilities = B::softmax(logits, 3);
    let output = B::float_reshape(
        B::float_swap_dims(B::float_matmul(probabilities.clone(), v), 1, 2),
        Shape::new([windows, tokens, heads * head_dim]),
    );
    (output, probabilities)
}

/// [`AttentionOps::window_attention_backward`] composed from burn's ops of backend `B`.
fn composed_backward<B: Backend>(
    qkv: FloatTensor<B>,
    probabilities: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    heads: usize,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let [windows, tokens, width] = qkv.shape().dims::<3>();
    let head_dim = width / (3 * heads);
    let scale = (1.0 / (head_dim as f64).sqrt()).into();
    let [q, k, v] = split_heads::<B>(qkv, heads);
    let dy = B::float_swap_dims(
        B::float_reshape(output_grad, Shape::new([windows, tokens, heads, head_dim])),
        1,
        2,
    );
    let probabilities_grad = B::float_matmul(dy.clone(), B::float_swap_dims(v, 2, 3));
    let dv = B::float_matmul(B::float_swap_dims(probabilities.clone(), 2, 3), dy);
    let dot = B::float_sum_dim(
        B::float_mul(probabilities_grad.clone(), probabilities.clone()),
        3,
    );
    let logits_grad = B::float_mul(probabilities, B::float_sub(probabilities_grad, dot));
    let bias_grad = B::float_reshape(
        B::float_sum_dim(logits_grad.clone(), 0),
        Shape::new([heads, tokens, tokens]),
    );
    let dq = B::float_mul_scalar(B::float_matmul(logits_grad.clone(), k), scale);
    let dk = B::float_mul_scalar(
        B::float_matmul(B::float_swap_dims(logits_grad, 2, 3), q),
        scale,
    );
    let part_shape = Shape::new([1, windows, heads, tokens, head_dim]);
    let parts = [dq, dk, dv].map(|part| B::float_reshape(part, part_shape.clone()));
    let qkv_grad = B::float_reshape(
        B::float_permute(B::float_cat(parts.into(), 0), &[1, 3, 0, 2, 4]),
        Shape::new([windows, tokens, width]),
    );
    (qkv_grad, bias_grad)
}

/// [`forward`] on flex tensors of element type `T`.
fn host_forward<T: Element>(
    g: Geometry,
    qkv: &FlexTensor,
    bias: &FlexTensor,
    mask: &FlexTensor,
) -> (FlexTensor, FlexTensor) {
    let (mut qkv_copy, mut bias_copy, mut mask_copy) = (None, None, None);
    let (output, probabilities) = forward(
        g,
        row_major::<T>(qkv, &mut qkv_copy),
        row_major::<T>(bias, &mut bias_copy),
        row_major::<T>(mask, &mut mask_copy),
    );
    (
        FlexTensor::from_data(TensorData::new(output, [g.windows, g.tokens, g.channels()])),
        FlexTensor::from_data(TensorData::new(
            probabilities,
            [g.windows, g.heads, g.tokens, g.tokens],
        )),
    )
}

/// [`backward`] on flex tensors of element type `T`.
fn host_backward<T: Element>(
    g: Geometry,
    qkv: &FlexTensor,
    probabilities: &FlexTensor,
    output_grad: &FlexTensor,
) -> (FlexTensor, FlexTensor) {
    let (mut qkv_copy, mut probabilities_copy, mut dy_copy) = (None, None, None);
    let (qkv_grad, bias_grad) = backward(
        g,
        row_major::<T>(qkv, &mut qkv_copy),
        row_major::<T>(probabilities, &mut probabilities_copy),
        row_major::<T>(output_grad, &mut dy_copy),
    );
    (
        FlexTensor::from_data(TensorData::new(qkv_grad, qkv.shape())),
        FlexTensor::from_data(TensorData::new(bias_grad, [g.heads, g.tokens, g.tokens])),
    )
}

/// burn's ops on the cubecl backends (wgpu, cuda).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl AttentionOps for burn::backend::Cube {}

impl AttentionOps for Flex {
    fn window_attention(
        qkv: FlexTensor,
        bias: FlexTensor,
        mask: FlexTensor,
        heads: usize,
    ) -> (FlexTensor, FlexTensor) {
        let geometry = Geometry::new(
            qkv.shape().as_slice(),
            bias.shape().as_slice(),
            mask.shape().as_slice(),
            heads,
        );
        match (geometry, [qkv.dtype(), bias.dtype(), mask.dtype()]) {
            (Some(g), [DType::F32, DType::F32, DType::F32]) => {
                host_forward::<f32>(g, &qkv, &bias, &mask)
            }
            (Some(g), [DType::F64, DType::F64, DType::F64]) => {
                host_forward::<f64>(g, &qkv, &bias, &mask)
            }
            _ => composed_forward::<Flex>(qkv, bias, mask, heads),
        }
    }

    fn window_attention_backward(
        qkv: FlexTensor,
        probabilities: FlexTensor,
        output_grad: FlexTensor,
        heads: usize,
    ) -> (FlexTensor, FlexTensor) {
        let shape = qkv.shape();
        let geometry = match shape.as_slice() {
            &[windows, tokens, _] => Geometry::new(
                shape.as_slice(),
                &[heads, tokens, tokens],
                &[1, tokens, tokens],
                heads,
            )
            .filter(|g| {
                probabilities.shape().as_slice() == [windows, heads, tokens, tokens]
                    && output_grad.shape().as_slice() == [windows, tokens, g.channels()]
            }),
            _ => None,
        };
        let dtypes = [qkv.dtype(), probabilities.dtype(), output_grad.dtype()];
        match (geometry, dtypes) {
            (Some(g), [DType::F32, DType::F32, DType::F32]) => {
                host_backward::<f32>(g, &qkv, &probabilities, &output_grad)
            }
            (Some(g), [DType::F64, DType::F64, DType::F64]) => {
                host_backward::<f64>(g, &qkv, &probabilities, &output_grad)
            }
            _ => composed_backward::<Flex>(qkv, probabilities, output_grad, heads),
        }
    }
}

/// The backward pass of [`AttentionOps::window_attention`]: its parents are `qkv` and the bias
/// (the mask is a constant).
#[derive(Debug)]
struct WindowAttentionBackward;

impl<B: Backend + AttentionOps> Backward<B, 2> for WindowAttentionBackward {
    /// `qkv`, the probabilities and the number of heads.
    type State = (B::FloatTensorPrimitive, B::FloatTensorPrimitive, usize);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let output_grad = grads.consume::<B>(&ops.node);
        let (qkv, probabilities, heads) = ops.state;
        let (qkv_grad, bias_grad) =
            B::window_attention_backward(qkv, probabilities, output_grad, heads);
        let [qkv_node, bias_node] = ops.parents;
        if let Some(node) = qkv_node {
            grads.register::<B>(node.id, qkv_grad);
        }
        if let Some(node) = bias_node {
            grads.register::<B>(node.id, bias_grad);
        }
    }
}

impl<B: Backend + AttentionOps, C: CheckpointStrategy> AttentionOps for Autodiff<B, C> {
    fn window_attention(
        qkv: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        heads: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let prepared = WindowAttentionBackward
            .prepare::<C>([qkv.node(), bias.node()])
            .compute_bound()
            .stateful();
        let (qkv, bias, mask) = (
            qkv.into_primitive(),
            bias.into_primitive(),
            mask.into_primitive(),
        );
        let (output, probabilities) = B::window_attention(qkv.clone(), bias, mask, heads);
        let output = match prepared {
            OpsKind::Tracked(prep) => prep.finish((qkv, probabilities.clone(), heads), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        };
        (output, <FloatTensor<Self>>::new(probabilities))
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::softmax;
    use burn::tensor::{Distribution, Tolerance};
    use proptest::prelude::*;

    use super::*;
    use crate::device::autodiff_device;

    /// The attention as the Swin model composed it from burn's tensor ops before this kernel:
    /// scaled queries, the bias and the mask added to the logits, softmax, values.
    fn reference(qkv: Tensor<3>, bias: Tensor<3>, mask: Tensor<3>, heads: usize) -> Tensor<3> {
        let [windows, tokens, width] = qkv.dims();
        let mask_windows = mask.dims()[0];
        let head_dim = width / (3 * heads);
        let qkv: Tensor<5> = qkv
            .reshape([windows, tokens, 3, heads, head_dim])
            .permute([2, 0, 3, 1, 4]);
        let part = |index: usize| -> Tensor<4> {
            qkv.clone()
                .narrow(0, index, 1)
                .reshape([windows, heads, tokens, head_dim])
        };
        let q = part(0).mul_scalar((head_dim as f64).powf(-0.5));
        let logits = q.matmul(part(1).swap_dims(2, 3)) + bias.unsqueeze_dim::<4>(0);
        let logits =
            (logits.reshape([windows / mask_windows, mask_windows, heads, tokens, tokens])
                + mask.reshape([1, mask_windows, 1, tokens, tokens]))
            .reshape([windows, heads, tokens, tokens]);
        softmax(logits, 3).matmul(part(2)).swap_dims(1, 2).reshape([
            windows,
            tokens,
            heads * head_dim,
        ])
    }

    /// Output and the gradients of `qkv` and `bias` of `run`, with the output gradient `probe`.
    fn value_and_gradients(
        run: impl Fn(Tensor<3>, Tensor<3>) -> Tensor<3>,
        qkv: &Tensor<3>,
        bias: &Tensor<3>,
        probe: &Tensor<3>,
    ) -> [TensorData; 3] {
        let (qkv, bias) = (qkv.clone().require_grad(), bias.clone().require_grad());
        let output = run(qkv.clone(), bias.clone());
        let grads = (output.clone() * probe.clone()).sum().backward();
        [
            output.into_data(),
            qkv.grad(&grads).expect("qkv gradient").into_data(),
            bias.grad(&grads).expect("bias gradient").into_data(),
        ]
    }

    /// A mask of `mask_windows` windows with Swin's `-100` between tokens of different regions
    /// (here: every third pair), zeros when `mask_windows` is 1.
    fn mask_of(mask_windows: usize, tokens: usize) -> Tensor<3> {
        let values: Vec<f32> = (0..mask_windows * tokens * tokens)
            .map(|i| {
                if mask_windows > 1 && i % 3 == 0 {
                    -100.0
                } else {
                    0.0
                }
            })
            .collect();
        Tensor::from_data(
            TensorData::new(values, [mask_windows, tokens, tokens]),
            &autodiff_device(),
        )
    }

    /// lacoot's kernel against the composition of burn's ops: the value and both gradients.
    fn check_against_burn(
        windows: usize,
        tokens: usize,
        heads: usize,
        head_dim: usize,
        mask_windows: usize,
        seed: u64,
    ) {
        let device = autodiff_device();
        device.seed(seed);
        let width = 3 * heads * head_dim;
        let qkv = Tensor::<3>::random(
            [windows, tokens, width],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let bias = Tensor::<3>::random(
            [heads, tokens, tokens],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let probe = Tensor::<3>::random(
            [windows, tokens, heads * head_dim],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let mask = mask_of(mask_windows, tokens);
        let ours = value_and_gradients(
            |qkv, bias| window_attention(qkv, bias, mask.clone(), heads),
            &qkv,
            &bias,
            &probe,
        );
        let theirs = value_and_gradients(
            |qkv, bias| reference(qkv, bias, mask.clone(), heads),
            &qkv,
            &bias,
            &probe,
        );
        for (ours, theirs) in ours.iter().zip(&theirs) {
            assert_eq!(ours.shape(), theirs.shape());
            ours.assert_approx_eq::<f32>(theirs, Tolerance::absolute(1e-4).set_relative(1e-4));
        }
    }

    #[test]
    fn matches_burn_on_swin_shapes() {
        // Two images of four 7x7 windows, shifted (one mask per window) and not; more windows
        // than bias groups.
        check_against_burn(8, 49, 3, 8, 4, 1);
        check_against_burn(8, 49, 3, 8, 1, 2);
        check_against_burn(2 * BIAS_GROUPS + 3, 4, 2, 3, 1, 3);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn matches_burn_on_random_shapes(
            images in 1usize..4,
            mask_windows in 1usize..4,
            tokens in 1usize..10,
            heads in 1usize..4,
            head_dim in 1usize..6,
            seed in 0u64..1000,
        ) {
            check_against_burn(images * mask_windows, tokens, heads, head_dim, mask_windows, seed);
        }
    }

    /// Smooth, deterministic `qkv`, bias, mask and output-gradient values for `g`.
    fn operands(g: Geometry) -> [Vec<f64>; 4] {
        crate::kernels::smooth_operands([
            g.windows * g.tokens * 3 * g.channels(),
            g.heads * g.logits(),
            g.mask_windows * g.logits(),
            g.windows * g.tokens * g.channels(),
        ])
    }

    fn geometry() -> Geometry {
        Geometry {
            windows: 4,
            tokens: 3,
            heads: 2,
            head_dim: 2,
            mask_windows: 2,
        }
    }

    /// Central differences of `sum(attention(qkv, bias) · probe)` in f64 against the kernel's
    /// gradients.
    #[test]
    fn gradients_match_finite_differences() {
        let g = geometry();
        let [qkv, bias, mask, probe] = operands(g);
        let (_, probabilities) = forward(g, &qkv, &bias, &mask);
        let (qkv_grad, bias_grad) = backward(g, &qkv, &probabilities, &probe);
        let objective = |[qkv, bias]: &[Vec<f64>; 2]| -> f64 {
            let (output, _) = forward(g, qkv, bias, &mask);
            output.iter().zip(&probe).map(|(o, p)| o * p).sum()
        };
        let grads = [qkv_grad, bias_grad];
        crate::kernels::assert_central_differences(
            [qkv, bias],
            &grads,
            objective,
            1e-7,
            "attention",
        );
    }

    /// The composition of burn's ops the other backends run computes what the kernel computes.
    #[test]
    fn the_composed_fallback_agrees_with_the_kernel() {
        let g = geometry();
        let [qkv, bias, mask, probe] = operands(g);
        let flex = |values: &[f64], shape: Vec<usize>| {
            FlexTensor::from_data(TensorData::new(values.to_vec(), shape))
        };
        let (t, c) = (g.tokens, g.channels());
        let qkv_tensor = flex(&qkv, vec![g.windows, t, 3 * c]);
        let (output, probabilities) = composed_forward::<Flex>(
            qkv_tensor.clone(),
            flex(&bias, vec![g.heads, t, t]),
            flex(&mask, vec![g.mask_windows, t, t]),
            g.heads,
        );
        let (qkv_grad, bias_grad) = composed_backward::<Flex>(
            qkv_tensor,
            probabilities.clone(),
            flex(&probe, vec![g.windows, t, c]),
            g.heads,
        );
        let (kernel_output, kernel_probabilities) = forward(g, &qkv, &bias, &mask);
        let (kernel_qkv_grad, kernel_bias_grad) = backward(g, &qkv, &kernel_probabilities, &probe);
        for (composed, kernel) in [
            (output, kernel_output),
            (probabilities, kernel_probabilities),
            (qkv_grad, kernel_qkv_grad),
            (bias_grad, kernel_bias_grad),
        ] {
            let composed = composed.into_data().try_into_vec::<f64>().unwrap();
            assert_eq!(composed.len(), kernel.len());
            for (a, b) in composed.iter().zip(&kernel) {
                assert!((a - b).abs() < 1e-12, "{a} vs {b}");
            }
        }
    }

    /// Empty attentions and mismatched shapes go to the composition of burn's ops.
    #[test]
    fn empty_and_mismatched_shapes_are_left_to_burn() {
        assert_eq!(
            Geometry::new(&[4, 3, 12], &[2, 3, 3], &[2, 3, 3], 2),
            Some(Geometry {
                windows: 4,
                tokens: 3,
                heads: 2,
                head_dim: 2,
                mask_windows: 2
            })
        );
        for (qkv, bias, mask, heads) in [
            (&[0, 3, 12][..], &[2, 3, 3][..], &[1, 3, 3][..], 2),
            (&[4, 0, 12], &[2, 0, 0], &[1, 0, 0], 2),
            (&[4, 3, 0], &[2, 3, 3], &[1, 3, 3], 2),
            (&[4, 3, 12], &[2, 3, 3], &[1, 3, 3], 0),
            (&[4, 3, 10], &[2, 3, 3], &[1, 3, 3], 2),
            (&[4, 3, 12], &[3, 3, 3], &[1, 3, 3], 2),
            (&[4, 3, 12], &[2, 3, 3], &[3, 3, 3], 2),
        ] {
            assert_eq!(
                Geometry::new(qkv, bias, mask, heads),
                None,
                "{qkv:?} {heads}"
            );
        }
    }

    /// The same values bit for bit on one thread and on four.
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let g = Geometry {
            windows: 2 * BIAS_GROUPS + 5,
            tokens: 49,
            heads: 3,
            head_dim: 8,
            mask_windows: 1,
        };
        let [qkv, bias, mask, dy] =
            operands(g).map(|v| v.into_iter().map(|v| v as f32).collect::<Vec<_>>());
        let run = |threads: usize| {
            crate::kernels::on_threads(threads, || {
                let (output, probabilities) = forward(g, &qkv, &bias, &mask);
                let gradients = backward(g, &qkv, &probabilities, &dy);
                (output, probabilities, gradients)
            })
        };
        assert!(run(1) == run(4));
    }
}
