//! The burn ops lacoot replaces with its own kernels, one file per op.
//!
//! Each is a burn backend extension: a `flex` implementation for the shapes and element types it
//! was measured on, an implementation for the cubecl backends (wgpu, cuda) when one of their
//! features is built (a CubeCL kernel where burn's op would leave the device, burn's own op
//! otherwise), burn's generic op as the fallback everywhere else (other dtypes, unsupported
//! options), and an autodiff backward of its own where the op carries gradients.
//!
//! | op | replaces | why (benchmark) |
//! |---|---|---|
//! | `conv2d` | `Conv2d::forward` and its backward passes for dense convolutions | image-by-image im2col products in parallel for planes of 64+ positions, one product per kernel tap over the whole batch for smaller ones in batches of 16+ images (no patch matrix, no products with the padding), and Winograd's F(4x4, 3x3) for the 3x3 stride-1 layers of 32+ channels (64+ on position-major planes) where it saves a third of the products and the batch has 128+ tiles (`conv2d/winograd/`), instead of flex's per-image products with a layout conversion per call (`cargo bench --bench conv_layers`, `cargo bench --bench train_step`) |
//! | `batch_norm` | `BatchNorm::forward` (training and eval) and its backward, and with `batch_norm_rectified` the residual addition and ReLU/ReLU6 after it | two parallel passes each way instead of about ten generic ops with transposed copies; the addition and the activation fused into the output pass, and their backward one parallel masking pass, instead of a single-threaded flex pass each (`cargo bench --bench batch_norm`, `cargo bench --bench train_step`) |
//! | `max_pool` | `MaxPool2d::forward` (dilation 1, floor mode, symmetric padding) and its backward | window ranges computed once per call and separable pooling (window rows reduced column by column, then across the window's columns); training keeps `i32` indices found in the same pass and the backward scatters through them, instead of flex's 3-D pooling that recomputes the window's range with divisions for every output value (`cargo bench --bench pooling`) |
//! | `linear` | `Linear::forward` and its backward passes | one product each way written straight into its output, the bias copied into the output rows before the product accumulates onto them and its gradient summed in parallel, instead of flex's products into buffers it zero-fills and copies on the calling thread, a separate broadcast addition and a single-threaded row sum (`cargo bench --bench train_step`, Swin-T) |
//! | `window_attention` | Swin's attention from `qkv` to the heads' outputs (burn's permutes, slices, products, bias and mask additions and softmax) and its backward | one task per window and head reading `q`, `k`, `v` where they lie in `qkv`, the scale, bias, mask and softmax in one pass per row, the gradient written into one `qkv`-shaped buffer, instead of a dozen full-size intermediates and three zero-filled slice gradients (`cargo bench --bench train_step`, Swin-T) |
//! | `planar` | the layout flex gives a position-major activation that meets an op wanting planes: the sum of two position-major gradients (a ResNet block's input feeds its first convolution and its shortcut) and the distances' `reshape` | each branch's gradient converted to planes in parallel before flex sums them in place with SIMD, and the activation flattened by a parallel tiled transpose, instead of flex's single-threaded element-by-element sum into a new tensor and copy (`lacoot train`'s width-16 epoch, BENCHMARKS.md "CPU speed, session 21") |
//! | `column_order` | `argsort` along the rows in the distances | on the GPU backends a rank kernel on the device instead of burn's read-back, host sort and upload (no synchronisation in a training step, `tests/gpu.rs`); on `flex` integer-key sorts of the columns in parallel |
//! | `projection` | `matmul` of point clouds by directions in the distances | the narrow `[n, d] × [d, L]` product split along `d` across threads, SIMD per processor (`cargo bench --bench mswd`) |
//!
//! Between the tap-by-tap convolutions of small planes, activations stay position-major
//! ([`position_major`]: `[H, W, B, C]` behind a strided `[B, C, H, W]` view): the convolutions
//! read and write that order, and the batch norms normalise it where it lies, so the layers of a
//! CIFAR network's last stages pass their activations and gradients on without converting them to
//! NCHW and back (`lacoot train`'s width-16 epoch, BENCHMARKS.md "CPU speed, session 16").
//!
//! The kernels' outputs are never zero-filled on the calling thread ([`buffers`]): a buffer is
//! either written whole by the kernel or cleared chunk by chunk by the parallel task that then
//! fills it (`lacoot train`'s width-16 epoch, BENCHMARKS.md "CPU speed, session 22").

pub mod batch_norm;
mod buffers;
pub mod column_order;
pub mod conv2d;
pub mod linear;
pub mod max_pool;
pub mod planar;
mod position_major;
mod products;
pub(crate) mod projection;
pub mod window_attention;

pub use batch_norm::{Rectifier, batch_norm, batch_norm_rectified};
pub use conv2d::conv2d;
pub use linear::linear;
pub use max_pool::max_pool2d;
pub use planar::{planar, planar_gradient};
pub use window_attention::window_attention;

use burn::backend::flex::FlexTensor;

/// The values of `tensor` in row-major order (`copy` keeps a contiguous copy alive when needed).
fn row_major<'a, T: products::Element>(
    tensor: &'a FlexTensor,
    copy: &'a mut Option<FlexTensor>,
) -> &'a [T] {
    match tensor.as_slice::<T>() {
        Some(values) => values,
        None => copy
            .insert(tensor.to_contiguous())
            .as_slice::<T>()
            .expect("checked element type"),
    }
}

/// Smooth, deterministic test operands of the given lengths, each with its own phase.
#[cfg(test)]
fn smooth_operands<const N: usize>(lens: [usize; N]) -> [Vec<f64>; N] {
    let mut phase = 0.0;
    lens.map(|len| {
        phase += 0.5;
        (0..len)
            .map(|i| ((i as f64 + phase) * 0.731).sin())
            .collect()
    })
}

/// Asserts that `grads[which][index]` is the central difference of `objective` in
/// `operands[which][index]` (steps of ±1e-6) to within `tolerance`, for every operand and index.
#[cfg(test)]
fn assert_central_differences<const N: usize>(
    operands: [Vec<f64>; N],
    grads: &[Vec<f64>; N],
    objective: impl Fn(&[Vec<f64>; N]) -> f64,
    tolerance: f64,
    what: &str,
) {
    let step = 1e-6;
    for (which, grad) in grads.iter().enumerate() {
        assert_eq!(grad.len(), operands[which].len(), "{what} operand {which}");
        for (index, &analytic) in grad.iter().enumerate() {
            let mut shifted = operands.clone();
            shifted[which][index] += step;
            let plus = objective(&shifted);
            shifted[which][index] -= 2.0 * step;
            let minus = objective(&shifted);
            let numeric = (plus - minus) / (2.0 * step);
            assert!(
                (numeric - analytic).abs() < tolerance,
                "{what} operand {which}, {index}: {numeric} vs {analytic}"
            );
        }
    }
}

/// Runs `f` on a pool of `threads` threads: the kernels' tests compare one thread with several.
#[cfg(test)]
fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool")
        .install(f)
}

/// Outputs of a window of `kernel` taps sliding by `stride` along an axis of `size` positions
/// padded by `padding` on both sides; `None` when the window does not fit.
fn sliding_outputs(size: usize, kernel: usize, stride: usize, padding: usize) -> Option<usize> {
    (size + 2 * padding)
        .checked_sub(kernel)
        .map(|span| span / stride + 1)
}

/// The outputs `o < out` of such a window whose tap `tap` reads inside the input, i.e. whose
/// input index `o·stride + tap − padding` lies in `[0, size)`.
fn tap_outputs(
    size: usize,
    out: usize,
    stride: usize,
    padding: usize,
    tap: usize,
) -> std::ops::Range<usize> {
    let first = padding.saturating_sub(tap).div_ceil(stride);
    let end = (size + padding)
        .saturating_sub(tap)
        .div_ceil(stride)
        .min(out);
    first.min(end)..end
}
