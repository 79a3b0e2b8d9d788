//! Batch normalisation over `[batch, channels, ...]` in two passes over the activation.
//!
//! burn 0.22 builds `batch_norm_train` (and its backward, and eval-mode `batch_norm`) out of
//! generic tensor ops: on `flex` that is a transposed copy of the activation for each reduction
//! and one full pass, with a fresh allocation, per subtraction, product, division and sum (about
//! ten passes forward and a dozen backward, per normalisation, several times per block). Here each
//! direction is two passes, both parallel:
//!
//! - forward: per channel, the sums of `x − x₀` and `(x − x₀)²` (shifted by the channel's first
//!   value, accumulated in f64 lanes), hence mean and biased variance; then
//!   `y = (x − mean)/σ·γ + β` with `σ = √(var + ε)`, rounded step by step as burn rounds it;
//! - backward: per channel, `Σ dy` (β's gradient) and `Σ dy·(x − mean)` (γ's, times `1/√(var + ε)`);
//!   then `dx = (x − mean)·a + dy·b + c` with per-channel constants that fold the mean terms of
//!   the textbook formula `dx = γ/σ · (dy − mean(dy) − x̂·mean(dy·x̂))`;
//! - eval mode: the same `y = (x − mean)/σ·γ + β` in one pass, equal to burn's to the bit (an
//!   exported model is checked against lacoot's logits to 1e-4, and a network briefly trained
//!   can amplify a different rounding of its normalisations beyond that).
//!
//! Each channel's sums run on one thread in a fixed order, so results do not depend on the thread
//! count. An activation the tap-by-tap convolutions hand on position-major is normalised where it
//! lies, channels innermost ([`channels_last`]), and its output and gradients keep that order; a
//! residual or gradient stored the other way is copied into the input's order first. Other
//! element types fall back to burn's ops. Benchmark: `cargo bench --bench batch_norm`
//! (BENCHMARKS.md, "BatchNorm").

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::{ActivationOps, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::BatchNorm;
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

use super::buffers::zeroed_in_parallel;
use super::position_major;

mod channels_last;

/// Accumulator lanes: independent partial sums the compiler keeps in one vector register.
const LANES: usize = 8;
/// Values per parallel task in the element-wise pass.
const PARALLEL_GRAIN: usize = 1 << 14;

/// Batch normalisation with lacoot's kernels where they are faster, implemented per backend.
#[backend_extension(Flex, Cube: cfg(any(feature = "wgpu", feature = "cuda")), Autodiff)]
pub trait NormOps: Backend {
    /// Normalises `x` (`[batch, channels, ...]`) with the statistics of the batch itself and
    /// returns the output, the per-channel mean and the biased variance.
    fn normalize_batch(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let result = <Self as ModuleOps<Self>>::batch_norm_train(x, gamma, beta, epsilon);
        (result.output, result.mean, result.variance)
    }

    /// The gradients of [`NormOps::normalize_batch`] with respect to `x`, `gamma` and `beta`,
    /// given the statistics it returned and the gradient of its output.
    fn normalize_batch_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        output_grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let result = <Self as ModuleOps<Self>>::batch_norm_train_backward(
            x,
            gamma,
            mean,
            variance,
            epsilon,
            output_grad,
        );
        (result.x_grad, result.gamma_grad, result.beta_grad)
    }

    /// `rectifier(normalize_batch(x))` in one pass over the output, with the batch statistics as
    /// [`NormOps::normalize_batch`] returns them.
    fn normalize_batch_rectified(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        rectifier: Rectifier,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        generic_rectified::<Self>(x, gamma, beta, None, rectifier, epsilon)
    }

    /// `rectifier(normalize_batch(x) + residual)` in one pass over the output.
    fn normalize_batch_residual_rectified(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        rectifier: Rectifier,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        generic_rectified::<Self>(x, gamma, beta, Some(residual), rectifier, epsilon)
    }

    /// The gradient through `rectifier` given its `output`: `output_grad` where the rectifier
    /// passes its input on, 0 where it clamps.
    fn rectifier_backward(
        output: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        rectifier: Rectifier,
    ) -> FloatTensor<Self> {
        rectifier.backward_generic::<Self>(output, output_grad)
    }

    /// `rectifier(normalize_with_statistics(x))` in one pass (eval mode).
    fn normalize_with_statistics_rectified(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        rectifier: Rectifier,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let stats = [gamma, beta, mean, variance];
        generic_eval_rectified::<Self>(x, stats, None, rectifier, epsilon)
    }

    /// `rectifier(normalize_with_statistics(x) + residual)` in one pass (eval mode).
    #[allow(clippy::too_many_arguments)]
    fn normalize_with_statistics_residual_rectified(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        rectifier: Rectifier,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let stats = [gamma, beta, mean, variance];
        generic_eval_rectified::<Self>(x, stats, Some(residual), rectifier, epsilon)
    }

    /// Normalises `x` with given statistics (eval mode): `(x − mean)/√(variance + ε)·γ + β`.
    fn normalize_with_statistics(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::batch_norm(x, gamma, beta, mean, variance, epsilon)
    }
}

/// [`NormOps::normalize_batch`], the residual and the rectifier as separate ops of backend `B`.
fn generic_rectified<B: Backend + NormOps>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    residual: Option<FloatTensor<B>>,
    rectifier: Rectifier,
    epsilon: f64,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (output, mean, variance) = B::normalize_batch(x, gamma, beta, epsilon);
    let output = match residual {
        Some(residual) => B::float_add(output, residual),
        None => output,
    };
    (rectifier.apply_generic::<B>(output), mean, variance)
}

/// [`NormOps::normalize_with_statistics`], the residual and the rectifier as separate ops of
/// backend `B`.
fn generic_eval_rectified<B: Backend + NormOps>(
    x: FloatTensor<B>,
    [gamma, beta, mean, variance]: [FloatTensor<B>; 4],
    residual: Option<FloatTensor<B>>,
    rectifier: Rectifier,
    epsilon: f64,
) -> FloatTensor<B> {
    let output = B::normalize_with_statistics(x, gamma, beta, mean, variance, epsilon);
    let output = match residual {
        Some(residual) => B::float_add(output, residual),
        None => output,
    };
    rectifier.apply_generic::<B>(output)
}

fn relu<T: Element>(value: T) -> T {
    let zero = T::from_f64(0.0);
    if value > zero || value.is_nan() {
        value
    } else {
        zero
    }
}

fn relu6<T: Element>(value: T) -> T {
    let six = T::from_f64(6.0);
    let value = relu(value);
    if value > six { six } else { value }
}

fn relu_passes<T: Element>(output: T) -> bool {
    output > T::from_f64(0.0) || output.is_nan()
}

fn relu6_passes<T: Element>(output: T) -> bool {
    (output > T::from_f64(0.0) && output < T::from_f64(6.0)) || output.is_nan()
}

/// The activation that [`batch_norm_rectified`] fuses after a normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rectifier {
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`, MobileNetV2's activation.
    Relu6,
}

impl Rectifier {
    /// The activation by burn's ops of backend `B`.
    fn apply_generic<B: Backend>(self, x: FloatTensor<B>) -> FloatTensor<B> {
        match self {
            Self::Relu => B::relu(x),
            Self::Relu6 => B::float_clamp(x, 0f32.into(), 6f32.into()),
        }
    }

    /// The gradient through the activation by burn's ops of backend `B`: `grad` where
    /// [`Rectifier::passes`], else 0 (for ReLU6 the mask `6 − output > 0` is a second ReLU's).
    fn backward_generic<B: Backend>(
        self,
        output: FloatTensor<B>,
        grad: FloatTensor<B>,
    ) -> FloatTensor<B> {
        let passed = B::relu_backward(output.clone(), grad);
        match self {
            Self::Relu => passed,
            Self::Relu6 => {
                let headroom = B::float_neg(B::float_sub_scalar(output, 6f32.into()));
                B::relu_backward(headroom, passed)
            }
        }
    }
}

/// `bn.forward(input)`, through lacoot's kernels: the same training/eval choice as burn's
/// `BatchNorm::forward` (batch statistics on an autodiff device while the layer trains, running
/// statistics otherwise) and the same update of the running statistics.
pub fn batch_norm<const D: usize>(bn: &BatchNorm, input: Tensor<D>) -> Tensor<D> {
    normalize(bn, input, None)
}

/// `rectifier(bn.forward(input) + residual)` (the residual optional) as one op: one pass over the
/// output forward and one masking pass backward instead of a pass for each of the addition and
/// the activation, each way (`cargo bench --bench batch_norm`). The same values as the three ops
/// in sequence.
pub fn batch_norm_rectified<const D: usize>(
    bn: &BatchNorm,
    input: Tensor<D>,
    residual: Option<Tensor<D>>,
    rectifier: Rectifier,
) -> Tensor<D> {
    normalize(bn, input, Some((residual, rectifier)))
}

/// [`batch_norm`], with the epilogue of [`batch_norm_rectified`] when one is given.
fn normalize<const D: usize>(
    bn: &BatchNorm,
    input: Tensor<D>,
    epilogue: Option<(Option<Tensor<D>>, Rectifier)>,
) -> Tensor<D> {
    let device = input.device();
    let (gamma, beta) = (
        bn.gamma.val().into_dispatch(),
        bn.beta.val().into_dispatch(),
    );
    if !(device.is_autodiff() && bn.training.is_enabled()) {
        let mean = bn.running_mean.value().to_device(&device).into_dispatch();
        let variance = bn.running_var.value().to_device(&device).into_dispatch();
        let x = input.into_dispatch();
        return Tensor::from_dispatch(match epilogue {
            None => <Dispatch as NormOps>::normalize_with_statistics(
                x, gamma, beta, mean, variance, bn.epsilon,
            ),
            Some((None, rectifier)) => <Dispatch as NormOps>::normalize_with_statistics_rectified(
                x, gamma, beta, mean, variance, rectifier, bn.epsilon,
            ),
            Some((Some(residual), rectifier)) => {
                <Dispatch as NormOps>::normalize_with_statistics_residual_rectified(
                    x,
                    gamma,
                    beta,
                    mean,
                    variance,
                    residual.into_dispatch(),
                    rectifier,
                    bn.epsilon,
                )
            }
        });
    }
    let x = input.into_dispatch();
    let (output, mean, variance) = match epilogue {
        None => <Dispatch as NormOps>::normalize_batch(x, gamma, beta, bn.epsilon),
        Some((None, rectifier)) => {
            <Dispatch as NormOps>::normalize_batch_rectified(x, gamma, beta, rectifier, bn.epsilon)
        }
        Some((Some(residual), rectifier)) => {
            <Dispatch as NormOps>::normalize_batch_residual_rectified(
                x,
                gamma,
                beta,
                residual.into_dispatch(),
                rectifier,
                bn.epsilon,
            )
        }
    };
    let (mean, variance) = (
        Tensor::<1>::from_dispatch(mean),
        Tensor::<1>::from_dispatch(variance),
    );
    let momentum = bn.momentum;
    let running = |state: Tensor<1>, batch: Tensor<1>| {
        state
            .to_device(&device)
            .mul_scalar(1.0 - momentum)
            .add(batch.mul_scalar(momentum))
            .detach()
    };
    bn.running_mean
        .update(running(bn.running_mean.value_sync(), mean.detach()));
    bn.running_var
        .update(running(bn.running_var.value_sync(), variance.detach()));
    Tensor::from_dispatch(output)
}

/// [`NormOps::normalize_batch`] on tensors: the output, the batch mean and the biased variance.
pub fn normalize_batch<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> (Tensor<D>, Tensor<1>, Tensor<1>) {
    let (output, mean, variance) = <Dispatch as NormOps>::normalize_batch(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
    );
    (
        Tensor::from_dispatch(output),
        Tensor::from_dispatch(mean),
        Tensor::from_dispatch(variance),
    )
}

/// [`NormOps::normalize_batch_backward`] on tensors: the gradients for `x`, `gamma` and `beta`.
pub fn normalize_batch_backward<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    [mean, variance]: [Tensor<1>; 2],
    epsilon: f64,
    output_grad: Tensor<D>,
) -> (Tensor<D>, Tensor<1>, Tensor<1>) {
    let (x_grad, gamma_grad, beta_grad) = <Dispatch as NormOps>::normalize_batch_backward(
        x.into_dispatch(),
        gamma.into_dispatch(),
        mean.into_dispatch(),
        variance.into_dispatch(),
        epsilon,
        output_grad.into_dispatch(),
    );
    (
        Tensor::from_dispatch(x_grad),
        Tensor::from_dispatch(gamma_grad),
        Tensor::from_dispatch(beta_grad),
    )
}

/// Element types the kernels run on.
trait Element:
    burn::tensor::Element
    + bytemuck::Pod
    + std::ops::Mul<Output = Self>
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Div<Output = Self>
    + PartialOrd
{
    fn is_nan(self) -> bool;
    fn to_f64(self) -> f64;
    fn from_f64(value: f64) -> Self;
    fn sqrt(self) -> Self;
}

impl Element for f32 {
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn from_f64(value: f64) -> Self {
        value as f32
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
}

impl Element for f64 {
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(value: f64) -> Self {
        value
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
}

/// `[batch, channels, positions]` of an activation of rank ≥ 2, and the order its values are
/// stored in.
#[derive(Clone, Copy, Debug)]
struct Layout {
    batch: usize,
    channels: usize,
    positions: usize,
    /// Channels innermost (position-major rows, [`channels_last`]) rather than planes.
    channels_last: bool,
}

impl Layout {
    fn of(shape: &[usize]) -> Option<Self> {
        let (&batch, rest) = shape.split_first()?;
        let (&channels, rest) = rest.split_first()?;
        Some(Self {
            batch,
            channels,
            positions: rest.iter().product(),
            channels_last: false,
        })
    }

    /// The layout of `x`, stored as it is.
    fn of_tensor(x: &FlexTensor) -> Option<Self> {
        let layout = Self::of(x.shape().as_slice())?;
        Some(Self {
            channels_last: position_major::is_position_major(x),
            ..layout
        })
    }

    /// Values per channel.
    fn count(&self) -> usize {
        self.batch * self.positions
    }

    /// The planes of `channel` in `values`, image after image.
    fn planes<'a, T>(&self, values: &'a [T], channel: usize) -> impl Iterator<Item = &'a [T]> {
        (0..self.batch).map(move |image| {
            &values[(image * self.channels + channel) * self.positions..][..self.positions]
        })
    }
}

/// The two sums `Σ f(a[i], b[i])[0]` and `Σ f(a[i], b[i])[1]` over paired slices, in one pass
/// and in f64 lanes.
fn lane_sums<T: Element>(a: &[T], b: &[T], f: impl Fn(f64, f64) -> [f64; 2]) -> [f64; 2] {
    let mut lanes = [[0.0f64; LANES]; 2];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (a_tail, b_tail) = (a_chunks.remainder(), b_chunks.remainder());
    for (a, b) in a_chunks.zip(b_chunks) {
        for lane in 0..LANES {
            let [first, second] = f(a[lane].to_f64(), b[lane].to_f64());
            lanes[0][lane] += first;
            lanes[1][lane] += second;
        }
    }
    let mut tails = [0.0f64; 2];
    for (&a, &b) in a_tail.iter().zip(b_tail) {
        let [first, second] = f(a.to_f64(), b.to_f64());
        tails[0] += first;
        tails[1] += second;
    }
    [0, 1].map(|sum| lanes[sum].iter().sum::<f64>() + tails[sum])
}

/// Per-channel mean and biased variance of `x`.
fn statistics<T: Element>(layout: Layout, x: &[T]) -> (Vec<f64>, Vec<f64>) {
    if layout.channels_last {
        return channels_last::statistics(layout.channels, x);
    }
    let count = layout.count() as f64;
    (0..layout.channels)
        .into_par_iter()
        .map(|channel| {
            let Some(shift) = layout.planes(x, channel).flatten().next() else {
                return (0.0, 0.0);
            };
            let shift = shift.to_f64();
            let [sum, squares] = layout.planes(x, channel).fold([0.0, 0.0], |totals, plane| {
                let [sum, squares] = lane_sums(plane, plane, |v, _| {
                    let centred = v - shift;
                    [centred, centred * centred]
                });
                [totals[0] + sum, totals[1] + squares]
            });
            let centred_mean = sum / count;
            let variance = (squares / count - centred_mean * centred_mean).max(0.0);
            (shift + centred_mean, variance)
        })
        .unzip()
}

/// Per channel, `Σ dy` and `Σ dy·(x − mean)` over the channel's planes.
fn planar_gradient_sums<T: Element>(
    layout: Layout,
    dy: &[T],
    x: &[T],
    mean: &[f64],
) -> Vec<[f64; 2]> {
    (0..layout.channels)
        .into_par_iter()
        .map(|channel| {
            let mean = mean[channel];
            layout
                .planes(dy, channel)
                .zip(layout.planes(x, channel))
                .fold([0.0, 0.0], |[dy_sum, dyx_sum], (dy, x)| {
                    let [dy_plane, dyx_plane] = lane_sums(dy, x, |dy, x| [dy, dy * (x - mean)]);
                    [dy_sum + dy_plane, dyx_sum + dyx_plane]
                })
        })
        .collect()
}

/// Per-channel constants of [`affine_planes`]: `out = (x − centre)·a + y·b + c`.
#[derive(Clone, Copy, Debug)]
struct Affine {
    centre: f64,
    a: f64,
    b: f64,
    c: f64,
}

/// A new activation of `layout` filled plane by plane, in parallel, by `fill(plane, start, out)`:
/// `out` is plane `plane` (image-major, then channel), whose first value has index `start`.
fn fill_planes<T: Element>(
    layout: Layout,
    len: usize,
    fill: impl Fn(usize, usize, &mut [T]) + Sync,
) -> Vec<T> {
    let positions = layout.positions.max(1);
    // Whole planes per parallel task, so that small planes (2x2 in a ResNet's last stage) do not
    // make one task each.
    let planes_per_task = (PARALLEL_GRAIN / positions).max(1);
    zeroed_in_parallel(len, planes_per_task * positions, |task, out| {
        for (index, out) in out.chunks_mut(positions).enumerate() {
            let plane = task * planes_per_task + index;
            fill(plane, plane * positions, out);
        }
    })
}

/// `out = (x − centre)·a + y·b + c` plane by plane, with the constants of each plane's channel.
/// Centring first keeps the precision where the mean is large against the spread.
fn affine_planes<T: Element>(layout: Layout, x: &[T], y: &[T], per_channel: &[Affine]) -> Vec<T> {
    if layout.channels_last {
        return channels_last::affine(x, y, per_channel);
    }
    fill_planes(layout, x.len(), |plane, start, out| {
        let constants = per_channel[plane % layout.channels];
        let [centre, a, b, c] =
            [constants.centre, constants.a, constants.b, constants.c].map(T::from_f64);
        let (x, y) = (&x[start..][..out.len()], &y[start..][..out.len()]);
        for ((out, &x), &y) in out.iter_mut().zip(x).zip(y) {
            *out = (x - centre) * a + y * b + c;
        }
    })
}

/// The residual and the activation [`normalize_planes`] applies after the normalisation.
type Epilogue<'a, T> = Option<(Option<&'a [T]>, Rectifier)>;

/// `(x − mean)/σ·γ + β` plane by plane with `σ = √(variance + ε)`, each step rounded in `T` as
/// burn's `batch_norm` rounds it, so that the output is burn's to the bit for the same statistics;
/// then, with an epilogue, `rectifier(· + residual)`, rounded as burn's addition and activation.
fn normalize_planes<T: Element>(
    layout: Layout,
    x: &[T],
    [mean, variance, gamma, beta]: [&[f64]; 4],
    epsilon: f64,
    epilogue: Epilogue<'_, T>,
) -> Vec<T> {
    let per_channel: Vec<[T; 4]> = (0..layout.channels)
        .map(|c| {
            let std = (T::from_f64(variance[c]) + T::from_f64(epsilon)).sqrt();
            let [mean, gamma, beta] = [mean[c], gamma[c], beta[c]].map(T::from_f64);
            [mean, std, gamma, beta]
        })
        .collect();
    if layout.channels_last {
        return channels_last::normalize(x, &per_channel, epilogue);
    }
    fill_planes(layout, x.len(), |plane, start, out| {
        let [mean, std, gamma, beta] = per_channel[plane % layout.channels];
        let x = &x[start..][..out.len()];
        let normalized = |x: T| (x - mean) / std * gamma + beta;
        let residual = epilogue.and_then(|(residual, _)| residual);
        let residual = residual.map(|r| &r[start..][..out.len()]);
        match epilogue.map(|(_, rectifier)| rectifier) {
            None => fill_normalized(out, x, None, normalized, |v| v),
            Some(Rectifier::Relu) => fill_normalized(out, x, residual, normalized, relu),
            Some(Rectifier::Relu6) => fill_normalized(out, x, residual, normalized, relu6),
        }
    })
}

/// `out[i] = activation(normalize(x[i]) [+ residual[i]])`, monomorphic per activation so that
/// the loop vectorises.
fn fill_normalized<T: Element>(
    out: &mut [T],
    x: &[T],
    residual: Option<&[T]>,
    normalize: impl Fn(T) -> T,
    activation: impl Fn(T) -> T,
) {
    match residual {
        None => {
            for (out, &x) in out.iter_mut().zip(x) {
                *out = activation(normalize(x));
            }
        }
        Some(residual) => {
            for ((out, &x), &r) in out.iter_mut().zip(x).zip(residual) {
                *out = activation(normalize(x) + r);
            }
        }
    }
}

/// Zeroes `grad` where `rectifier` clamped its input to make `output`, in parallel.
fn mask_rectified<T: Element>(output: &[T], grad: &mut [T], rectifier: Rectifier) {
    match rectifier {
        Rectifier::Relu => mask_where(output, grad, relu_passes),
        Rectifier::Relu6 => mask_where(output, grad, relu6_passes),
    }
}

/// `grad[i] = if passes(output[i]) { grad[i] } else { 0 }` as a select, so that it vectorises.
fn mask_where<T: Element>(output: &[T], grad: &mut [T], passes: impl Fn(T) -> bool + Sync) {
    let zero = T::from_f64(0.0);
    grad.par_chunks_mut(PARALLEL_GRAIN)
        .zip(output.par_chunks(PARALLEL_GRAIN))
        .for_each(|(grad, output)| {
            for (grad, &output) in grad.iter_mut().zip(output) {
                *grad = if passes(output) { *grad } else { zero };
            }
        });
}

fn host_values<T: Element>(tensor: &FlexTensor) -> Vec<f64> {
    tensor
        .to_contiguous()
        .as_slice::<T>()
        .expect("checked element type")
        .iter()
        .map(|&v| v.to_f64())
        .collect()
}

fn host_tensor<T: Element>(values: Vec<T>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.to_vec()))
}

/// The values of a tensor that [`position_major::readable`] or [`position_major::stored_like`]
/// arranged: contiguous, or position-major rows.
fn arranged_values<T: Element>(tensor: &FlexTensor) -> &[T] {
    match tensor.as_slice::<T>() {
        Some(values) => values,
        None => position_major::rows::<T>(tensor).expect("arranged, checked element type"),
    }
}

/// An activation of `x`'s shape over `values` stored in `x`'s order.
fn host_activation<T: Element>(values: Vec<T>, x: &FlexTensor) -> FlexTensor {
    position_major::tensor_stored_like(values, x.shape().as_slice(), x)
}

fn host_channel_tensor<T: Element>(values: impl Iterator<Item = f64>) -> FlexTensor {
    let values: Vec<T> = values.map(T::from_f64).collect();
    let len = values.len();
    host_tensor(values, &[len])
}

/// The residual and the activation of a fused call, as flex tensors.
type HostEpilogue<'a> = Option<(Option<&'a FlexTensor>, Rectifier)>;

/// Runs `f` with the epilogue's residual as a slice of `T` stored as `x` is.
fn with_epilogue<T: Element, R>(
    epilogue: HostEpilogue<'_>,
    x: &FlexTensor,
    f: impl FnOnce(Epilogue<'_, T>) -> R,
) -> R {
    match epilogue {
        None => f(None),
        Some((None, rectifier)) => f(Some((None, rectifier))),
        Some((Some(residual), rectifier)) => {
            let residual = position_major::stored_like(residual.clone(), x);
            f(Some((Some(arranged_values::<T>(&residual)), rectifier)))
        }
    }
}

fn host_normalize_batch<T: Element>(
    layout: Layout,
    x: &FlexTensor,
    [gamma, beta]: [&FlexTensor; 2],
    epsilon: f64,
    epilogue: HostEpilogue<'_>,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let x = position_major::readable(x);
    let values = arranged_values::<T>(&x);
    let (mean, variance) = statistics(layout, values);
    let (gamma, beta) = (host_values::<T>(gamma), host_values::<T>(beta));
    let output = with_epilogue::<T, _>(epilogue, &x, |epilogue| {
        normalize_planes(
            layout,
            values,
            [&mean, &variance, &gamma, &beta],
            epsilon,
            epilogue,
        )
    });
    (
        host_activation(output, &x),
        host_channel_tensor::<T>(mean.into_iter()),
        host_channel_tensor::<T>(variance.into_iter()),
    )
}

fn host_normalize_batch_backward<T: Element>(
    layout: Layout,
    x: &FlexTensor,
    [gamma, mean, variance]: [&FlexTensor; 3],
    epsilon: f64,
    output_grad: &FlexTensor,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let x = position_major::readable(x);
    let dy = position_major::stored_like(output_grad.clone(), &x);
    let (x_values, dy_values) = (arranged_values::<T>(&x), arranged_values::<T>(&dy));
    let (gamma, mean, variance) = (
        host_values::<T>(gamma),
        host_values::<T>(mean),
        host_values::<T>(variance),
    );
    let sums = if layout.channels_last {
        channels_last::gradient_sums(layout.channels, dy_values, x_values, &mean)
    } else {
        planar_gradient_sums(layout, dy_values, x_values, &mean)
    };
    let count = layout.count() as f64;
    let mut gamma_grad = Vec::with_capacity(layout.channels);
    let mut beta_grad = Vec::with_capacity(layout.channels);
    let per_channel: Vec<Affine> = (0..layout.channels)
        .map(|channel| {
            let inv_std = 1.0 / (variance[channel] + epsilon).sqrt();
            let [dy_sum, dyx_sum] = sums[channel];
            gamma_grad.push(dyx_sum * inv_std);
            beta_grad.push(dy_sum);
            // dx = k·(dy − Σdy/N − (x − mean)·inv_std²·Σdy(x − mean)/N), with k = γ·inv_std:
            // (x − mean)·(−slope) + dy·k − k·Σdy/N.
            let k = gamma[channel] * inv_std;
            let slope = k * inv_std * inv_std * dyx_sum / count;
            Affine {
                centre: mean[channel],
                a: -slope,
                b: k,
                c: -k * dy_sum / count,
            }
        })
        .collect();
    let x_grad = affine_planes(layout, x_values, dy_values, &per_channel);
    (
        host_activation(x_grad, &x),
        host_channel_tensor::<T>(gamma_grad.into_iter()),
        host_channel_tensor::<T>(beta_grad.into_iter()),
    )
}

fn host_normalize_with_statistics<T: Element>(
    layout: Layout,
    x: &FlexTensor,
    [gamma, beta, mean, variance]: [&FlexTensor; 4],
    epsilon: f64,
    epilogue: HostEpilogue<'_>,
) -> FlexTensor {
    let x = position_major::readable(x);
    let values = arranged_values::<T>(&x);
    let [gamma, beta, mean, variance] = [gamma, beta, mean, variance].map(host_values::<T>);
    let output = with_epilogue::<T, _>(epilogue, &x, |epilogue| {
        normalize_planes(
            layout,
            values,
            [&mean, &variance, &gamma, &beta],
            epsilon,
            epilogue,
        )
    });
    host_activation(output, &x)
}

/// The masked gradient, stored as `output` is: written over `output_grad` when it is stored so
/// and nothing else holds it (as flex's own element-wise ops do), into a copy otherwise.
fn host_rectifier_backward<T: Element>(
    output: &FlexTensor,
    output_grad: FlexTensor,
    rectifier: Rectifier,
) -> FlexTensor {
    let output = position_major::readable(output);
    let output_values = arranged_values::<T>(&output);
    let mut grad = position_major::stored_like(output_grad, &output);
    let in_place = grad.layout().start_offset() == 0;
    match grad.try_storage_mut::<T>() {
        Some(values) if in_place && values.len() == output_values.len() => {
            mask_rectified(output_values, values, rectifier);
            grad
        }
        _ => {
            let mut masked = arranged_values::<T>(&grad).to_vec();
            mask_rectified(output_values, &mut masked, rectifier);
            host_activation(masked, &output)
        }
    }
}

/// Whether `residual` (when there is one) has the shape and element type of `x`, so that the
/// host kernels can add it.
fn residual_fits(x: &FlexTensor, residual: Option<&FlexTensor>) -> bool {
    residual.is_none_or(|r| r.shape() == x.shape() && r.dtype() == x.dtype())
}

/// The layout of `x` when every tensor has `x`'s element type (f32 or f64), `x` has at least one
/// value and each per-channel tensor has one value per channel; `None` sends the call to burn.
fn host_layout(x: &FlexTensor, per_channel: &[&FlexTensor]) -> Option<(Layout, DType)> {
    let layout = Layout::of_tensor(x)?;
    let dtype = x.dtype();
    let supported = matches!(dtype, DType::F32 | DType::F64)
        && layout.count() > 0
        && per_channel
            .iter()
            .all(|t| t.dtype() == dtype && t.shape().as_slice() == [layout.channels]);
    supported.then_some((layout, dtype))
}

/// burn's own ops on the cubecl backends (wgpu, cuda).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl NormOps for burn::backend::Cube {}

impl NormOps for Flex {
    fn normalize_batch(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let per_channel = [&gamma, &beta];
        match host_layout(&x, &per_channel) {
            Some((layout, DType::F32)) => {
                host_normalize_batch::<f32>(layout, &x, per_channel, epsilon, None)
            }
            Some((layout, _)) => {
                host_normalize_batch::<f64>(layout, &x, per_channel, epsilon, None)
            }
            None => {
                let result = Flex::batch_norm_train(x, gamma, beta, epsilon);
                (result.output, result.mean, result.variance)
            }
        }
    }

    fn normalize_batch_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        epsilon: f64,
        output_grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let same_shape = output_grad.shape() == x.shape() && output_grad.dtype() == x.dtype();
        let stats = [&gamma, &mean, &variance];
        match host_layout(&x, &stats).filter(|_| same_shape) {
            Some((layout, DType::F32)) => {
                host_normalize_batch_backward::<f32>(layout, &x, stats, epsilon, &output_grad)
            }
            Some((layout, _)) => {
                host_normalize_batch_backward::<f64>(layout, &x, stats, epsilon, &output_grad)
            }
            None => {
                let result =
                    Flex::batch_norm_train_backward(x, gamma, mean, variance, epsilon, output_grad);
                (result.x_grad, result.gamma_grad, result.beta_grad)
            }
        }
    }

    fn normalize_batch_rectified(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        rectifier: Rectifier,
        epsilon: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        flex_rectified(x, [gamma, beta], None, rectifier, epsilon)
    }

    fn normalize_batch_residual_rectified(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        residual: FlexTensor,
        rectifier: Rectifier,
        epsilon: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        flex_rectified(x, [gamma, beta], Some(residual), rectifier, epsilon)
    }

    fn rectifier_backward(
        output: FlexTensor,
        output_grad: FlexTensor,
        rectifier: Rectifier,
    ) -> FlexTensor {
        let same = output.shape() == output_grad.shape() && output.dtype() == output_grad.dtype();
        match output.dtype() {
            // flex's own ReLU backward is one vectorised pass that reuses the gradient's buffer:
            // as fast as the masking here (`cargo bench --bench batch_norm`) on contiguous
            // tensors; a position-major output is masked here, in its own order.
            _ if rectifier == Rectifier::Relu && output.is_contiguous() => {
                Flex::relu_backward(output, output_grad)
            }
            DType::F32 if same => host_rectifier_backward::<f32>(&output, output_grad, rectifier),
            DType::F64 if same => host_rectifier_backward::<f64>(&output, output_grad, rectifier),
            _ => rectifier.backward_generic::<Self>(output, output_grad),
        }
    }

    fn normalize_with_statistics(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        epsilon: f64,
    ) -> FlexTensor {
        let stats = [&gamma, &beta, &mean, &variance];
        match host_layout(&x, &stats) {
            Some((layout, DType::F32)) => {
                host_normalize_with_statistics::<f32>(layout, &x, stats, epsilon, None)
            }
            Some((layout, _)) => {
                host_normalize_with_statistics::<f64>(layout, &x, stats, epsilon, None)
            }
            None => Flex::batch_norm(x, gamma, beta, mean, variance, epsilon),
        }
    }

    fn normalize_with_statistics_rectified(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        rectifier: Rectifier,
        epsilon: f64,
    ) -> FlexTensor {
        flex_eval_rectified(x, [gamma, beta, mean, variance], None, rectifier, epsilon)
    }

    fn normalize_with_statistics_residual_rectified(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        residual: FlexTensor,
        rectifier: Rectifier,
        epsilon: f64,
    ) -> FlexTensor {
        let stats = [gamma, beta, mean, variance];
        flex_eval_rectified(x, stats, Some(residual), rectifier, epsilon)
    }
}

/// The fused training-mode normalisation on `flex`: the host kernels when the shapes and element
/// types allow, burn's ops otherwise.
fn flex_rectified(
    x: FlexTensor,
    [gamma, beta]: [FlexTensor; 2],
    residual: Option<FlexTensor>,
    rectifier: Rectifier,
    epsilon: f64,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let per_channel = [&gamma, &beta];
    let epilogue = Some((residual.as_ref(), rectifier));
    match host_layout(&x, &per_channel).filter(|_| residual_fits(&x, residual.as_ref())) {
        Some((layout, DType::F32)) => {
            host_normalize_batch::<f32>(layout, &x, per_channel, epsilon, epilogue)
        }
        Some((layout, _)) => {
            host_normalize_batch::<f64>(layout, &x, per_channel, epsilon, epilogue)
        }
        None => generic_rectified::<Flex>(x, gamma, beta, residual, rectifier, epsilon),
    }
}

/// The fused eval-mode normalisation on `flex`, as [`flex_rectified`].
fn flex_eval_rectified(
    x: FlexTensor,
    [gamma, beta, mean, variance]: [FlexTensor; 4],
    residual: Option<FlexTensor>,
    rectifier: Rectifier,
    epsilon: f64,
) -> FlexTensor {
    let stats = [&gamma, &beta, &mean, &variance];
    let epilogue = Some((residual.as_ref(), rectifier));
    match host_layout(&x, &stats).filter(|_| residual_fits(&x, residual.as_ref())) {
        Some((layout, DType::F32)) => {
            host_normalize_with_statistics::<f32>(layout, &x, stats, epsilon, epilogue)
        }
        Some((layout, _)) => {
            host_normalize_with_statistics::<f64>(layout, &x, stats, epsilon, epilogue)
        }
        None => {
            let stats = [gamma, beta, mean, variance];
            generic_eval_rectified::<Flex>(x, stats, residual, rectifier, epsilon)
        }
    }
}

/// The backward pass of [`NormOps::normalize_batch`].
#[derive(Debug)]
struct NormalizeBatchBackward;

impl<B: Backend + NormOps> Backward<B, 3> for NormalizeBatchBackward {
    /// The input, γ, the batch mean and variance, and ε.
    type State = (
        B::FloatTensorPrimitive,
        B::FloatTensorPrimitive,
        B::FloatTensorPrimitive,
        B::FloatTensorPrimitive,
        f64,
    );

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, gamma_node, beta_node] = ops.parents;
        let output_grad = grads.consume::<B>(&ops.node);
        let (x, gamma, mean, variance, epsilon) = ops.state;
        let normalization =
            B::normalize_batch_backward(x, gamma, mean, variance, epsilon, output_grad);
        let parents = [x_node, gamma_node, beta_node].map(|node| node.map(|node| node.id));
        register_normalization_grads::<B>(grads, parents, normalization);
    }
}

/// Registers the gradients of the input, γ and β for those of the three parents that need them.
fn register_normalization_grads<B: Backend>(
    grads: &mut Gradients,
    parents: [Option<NodeId>; 3],
    (x_grad, gamma_grad, beta_grad): (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>),
) {
    for (id, grad) in parents.into_iter().zip([x_grad, gamma_grad, beta_grad]) {
        if let Some(id) = id {
            grads.register::<B>(id, grad);
        }
    }
}

/// What [`NormalizeRectifiedBackward`] keeps: the input, γ, the batch mean and variance, the
/// output, the rectifier and ε.
type RectifiedState<B> = ([FloatTensor<B>; 5], Rectifier, f64);

/// The backward pass of [`NormOps::normalize_batch_rectified`], over the input, γ, β and (with
/// `N` = 4) the residual: the output gradient masked by the rectifier is the residual's gradient
/// and goes through the normalisation's backward for the other three.
#[derive(Debug)]
struct NormalizeRectifiedBackward;

impl<B: Backend + NormOps, const N: usize> Backward<B, N> for NormalizeRectifiedBackward {
    type State = RectifiedState<B>;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let mut parents = ops.parents.into_iter();
        let [x_node, gamma_node, beta_node, residual_node] =
            std::array::from_fn(|_| parents.next().flatten());
        let output_grad = grads.consume::<B>(&ops.node);
        let ([x, gamma, mean, variance, output], rectifier, epsilon) = ops.state;
        let masked = B::rectifier_backward(output, output_grad, rectifier);
        if let Some(node) = residual_node {
            grads.register::<B>(node.id, masked.clone());
        }
        let normalization = B::normalize_batch_backward(x, gamma, mean, variance, epsilon, masked);
        let parents = [x_node, gamma_node, beta_node].map(|node| node.map(|node| node.id));
        register_normalization_grads::<B>(grads, parents, normalization);
    }
}

/// [`NormOps::normalize_batch_rectified`] on the autodiff backend, with the parents' nodes.
fn rectified_on_autodiff<B: Backend + NormOps, C: CheckpointStrategy, const N: usize>(
    nodes: [NodeGuard; N],
    [x, gamma, beta]: [B::FloatTensorPrimitive; 3],
    residual: Option<B::FloatTensorPrimitive>,
    rectifier: Rectifier,
    epsilon: f64,
) -> [FloatTensor<Autodiff<B, C>>; 3]
where
    NormalizeRectifiedBackward: Backward<B, N, State = RectifiedState<B>>,
{
    let prepared = NormalizeRectifiedBackward
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful();
    let (output, mean, variance) = match residual {
        Some(residual) => B::normalize_batch_residual_rectified(
            x.clone(),
            gamma.clone(),
            beta,
            residual,
            rectifier,
            epsilon,
        ),
        None => B::normalize_batch_rectified(x.clone(), gamma.clone(), beta, rectifier, epsilon),
    };
    let statistics = (
        <FloatTensor<Autodiff<B, C>>>::new(mean.clone()),
        <FloatTensor<Autodiff<B, C>>>::new(variance.clone()),
    );
    let output = match prepared {
        OpsKind::Tracked(prep) => {
            let state = (
                [x, gamma, mean, variance, output.clone()],
                rectifier,
                epsilon,
            );
            prep.finish(state, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    [output, statistics.0, statistics.1]
}

impl<B: Backend + NormOps, C: CheckpointStrategy> NormOps for Autodiff<B, C> {
    fn normalize_batch(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let prepared = NormalizeBatchBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful();
        let (x, gamma, beta) = (
            x.into_primitive(),
            gamma.into_primitive(),
            beta.into_primitive(),
        );
        match prepared {
            OpsKind::Tracked(prep) => {
                let (output, mean, variance) =
                    B::normalize_batch(x.clone(), gamma.clone(), beta, epsilon);
                let state = (x, gamma, mean.clone(), variance.clone(), epsilon);
                (
                    prep.finish(state, output),
                    <FloatTensor<Self>>::new(mean),
                    <FloatTensor<Self>>::new(variance),
                )
            }
            OpsKind::UnTracked(prep) => {
                let (output, mean, variance) = B::normalize_batch(x, gamma, beta, epsilon);
                (
                    prep.finish(output),
                    <FloatTensor<Self>>::new(mean),
                    <FloatTensor<Self>>::new(variance),
                )
            }
        }
    }

    fn normalize_batch_rectified(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        rectifier: Rectifier,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let nodes = [x.node(), gamma.node(), beta.node()];
        let primitives = [x, gamma, beta].map(|t| t.into_primitive());
        let [output, mean, variance] =
            rectified_on_autodiff::<B, C, 3>(nodes, primitives, None, rectifier, epsilon);
        (output, mean, variance)
    }

    fn normalize_batch_residual_rectified(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        rectifier: Rectifier,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let nodes = [x.node(), gamma.node(), beta.node(), residual.node()];
        let primitives = [x, gamma, beta].map(|t| t.into_primitive());
        let residual = Some(residual.into_primitive());
        let [output, mean, variance] =
            rectified_on_autodiff::<B, C, 4>(nodes, primitives, residual, rectifier, epsilon);
        (output, mean, variance)
    }

    /// burn's op on the autodiff backend, which records the gradients of eval-mode normalisation
    /// (of a frozen layer in a network that trains).
    fn normalize_with_statistics(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::batch_norm(x, gamma, beta, mean, variance, epsilon)
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Module;
    use burn::nn::BatchNormConfig;
    use burn::tensor::{Device, Distribution, Tolerance};
    use proptest::prelude::*;

    use super::*;
    use crate::device::{autodiff_device, default_device};

    const TOLERANCE: f32 = 1e-4;

    fn assert_close(ours: TensorData, theirs: TensorData, what: &str) {
        assert_eq!(ours.shape(), theirs.shape(), "{what}");
        let tolerance = Tolerance::absolute(TOLERANCE).set_relative(TOLERANCE);
        ours.assert_approx_eq::<f32>(&theirs, tolerance);
    }

    /// A batch norm over `channels` with non-trivial γ, β and running statistics.
    fn layer(channels: usize, device: &Device) -> BatchNorm {
        let mut bn = BatchNormConfig::new(channels).init(device);
        let ramp = |scale: f32, offset: f32| {
            let values: Vec<f32> = (0..channels).map(|c| offset + scale * c as f32).collect();
            Tensor::<1>::from_data(TensorData::new(values, [channels]), device)
        };
        bn.gamma = burn::module::Param::from_tensor(ramp(0.25, 0.5));
        bn.beta = burn::module::Param::from_tensor(ramp(-0.5, 0.3));
        bn.running_mean = burn::module::RunningState::new(ramp(0.1, -0.2));
        bn.running_var = burn::module::RunningState::new(ramp(0.3, 0.7));
        bn
    }

    /// Output, the gradients of `sum(output · probe)` for the input, γ and β, and the running
    /// statistics afterwards, of one training-mode forward of `run`.
    fn train_pass(
        run: impl Fn(&BatchNorm, Tensor<4>) -> Tensor<4>,
        bn: BatchNorm,
        x: &Tensor<4>,
        probe: &Tensor<4>,
    ) -> [TensorData; 6] {
        let x = x.clone().require_grad();
        let output = run(&bn, x.clone());
        let grads = (output.clone() * probe.clone()).sum().backward();
        [
            output.into_data(),
            x.grad(&grads).expect("input gradient").into_data(),
            bn.gamma.grad(&grads).expect("gamma gradient").into_data(),
            bn.beta.grad(&grads).expect("beta gradient").into_data(),
            bn.running_mean.value_sync().into_data(),
            bn.running_var.value_sync().into_data(),
        ]
    }

    fn check_training_against_burn(shape: [usize; 4], offset: f64, seed: u64) {
        let device = autodiff_device();
        device.seed(seed);
        let x = Tensor::<4>::random(shape, Distribution::Normal(offset, 2.0), &device);
        let probe = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        // Two separate layers: clones of a layer share their running statistics.
        let ours = train_pass(batch_norm, layer(shape[1], &device), &x, &probe);
        let theirs = train_pass(|bn, x| bn.forward(x), layer(shape[1], &device), &x, &probe);
        let names = [
            "output",
            "dx",
            "dgamma",
            "dbeta",
            "running mean",
            "running var",
        ];
        for ((ours, theirs), name) in ours.into_iter().zip(theirs).zip(names) {
            assert_close(ours, theirs, name);
        }
    }

    #[test]
    fn training_matches_burn_on_network_shapes() {
        check_training_against_burn([8, 16, 8, 8], 0.0, 1);
        // A large mean against a small spread: the shifted sums keep the variance exact.
        check_training_against_burn([4, 3, 5, 7], 300.0, 2);
        // One value per channel: zero variance.
        check_training_against_burn([1, 4, 1, 1], 1.0, 3);
    }

    #[test]
    fn eval_equals_burn_to_the_bit_and_trains_nothing() {
        let device = default_device();
        device.seed(4);
        let x = Tensor::<4>::random([3, 5, 4, 6], Distribution::Normal(1.0, 3.0), &device);
        let bn = layer(5, &device);
        let ours = batch_norm(&bn, x.clone())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let theirs = bn.forward(x).into_data().try_to_vec::<f32>().unwrap();
        assert!(ours == theirs, "the eval output differs from burn's");
        // A frozen layer on an autodiff device uses its running statistics, as burn's does.
        let device = autodiff_device();
        let x = Tensor::<4>::random([3, 5, 4, 6], Distribution::Normal(1.0, 3.0), &device);
        let frozen = layer(5, &device).no_grad();
        let frozen = BatchNorm {
            training: burn::module::Param::from_bool(false),
            ..frozen
        };
        let before = frozen.running_mean.value_sync().into_data();
        assert_close(
            batch_norm(&frozen, x.clone()).into_data(),
            frozen.forward(x).into_data(),
            "frozen output",
        );
        assert_close(
            frozen.running_mean.value_sync().into_data(),
            before,
            "running mean",
        );
    }

    /// `rectifier(bn(x) + residual)` by burn's separate ops: the reference of the fused op.
    fn unfused(
        bn: &BatchNorm,
        x: Tensor<4>,
        residual: Option<Tensor<4>>,
        rectifier: Rectifier,
    ) -> Tensor<4> {
        let y = bn.forward(x);
        let y = match residual {
            Some(residual) => y + residual,
            None => y,
        };
        match rectifier {
            Rectifier::Relu => burn::tensor::activation::relu(y),
            Rectifier::Relu6 => y.clamp(0.0, 6.0),
        }
    }

    /// Output, the gradients of `sum(output · probe)` for the input, the residual, γ and β, and
    /// the running statistics afterwards, of one training-mode forward of `run`.
    fn rectified_pass(
        run: impl Fn(&BatchNorm, Tensor<4>, Option<Tensor<4>>) -> Tensor<4>,
        bn: BatchNorm,
        [x, residual, probe]: [&Tensor<4>; 3],
        with_residual: bool,
        [store_x, store_residual]: [Storage; 2],
    ) -> Vec<TensorData> {
        let x = x.clone().require_grad();
        let residual = residual.clone().require_grad();
        let output = run(
            &bn,
            store_x(x.clone()),
            with_residual.then(|| store_residual(residual.clone())),
        );
        let grads = (output.clone() * probe.clone()).sum().backward();
        let mut results = vec![
            output.into_data(),
            x.grad(&grads).expect("input gradient").into_data(),
            bn.gamma.grad(&grads).expect("gamma gradient").into_data(),
            bn.beta.grad(&grads).expect("beta gradient").into_data(),
            bn.running_mean.value_sync().into_data(),
            bn.running_var.value_sync().into_data(),
        ];
        if with_residual {
            results.push(
                residual
                    .grad(&grads)
                    .expect("residual gradient")
                    .into_data(),
            );
        }
        results
    }

    /// How a test hands an activation to the op: as it is, or through [`position_major_copy`].
    type Storage = fn(Tensor<4>) -> Tensor<4>;

    /// `x` through a 1x1 identity convolution: the same values, stored position-major when the
    /// batch and the plane send the convolution tap by tap (16+ images, under 64 positions), and
    /// the gradient passed back unchanged.
    fn position_major_copy(x: Tensor<4>) -> Tensor<4> {
        let channels = x.dims()[1];
        let identity = Tensor::<2>::eye(channels, &x.device()).reshape([channels, channels, 1, 1]);
        let options = burn::tensor::ops::ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
        crate::kernels::conv2d::dense_conv2d(x, identity, options)
    }

    fn as_it_is(x: Tensor<4>) -> Tensor<4> {
        x
    }

    fn check_rectified_against_burn(shape: [usize; 4], offset: f64, seed: u64) {
        check_rectified_stored_against_burn(shape, offset, seed, [as_it_is, as_it_is]);
    }

    /// The fused op against burn's separate ops, with the input and the residual handed over as
    /// `storage` says (burn's ops get the same values).
    fn check_rectified_stored_against_burn(
        shape: [usize; 4],
        offset: f64,
        seed: u64,
        storage: [Storage; 2],
    ) {
        let device = autodiff_device();
        device.seed(seed);
        // Spread over [−3, 9] after normalisation (γ up to ~1.5, β ramps), so both clamps of
        // ReLU6 are exercised.
        let x = Tensor::<4>::random(shape, Distribution::Normal(offset, 2.0), &device);
        let residual = Tensor::<4>::random(shape, Distribution::Normal(3.0, 4.0), &device);
        let probe = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        for rectifier in [Rectifier::Relu, Rectifier::Relu6] {
            for with_residual in [false, true] {
                let inputs = [&x, &residual, &probe];
                let fused = |bn: &BatchNorm, x, r| batch_norm_rectified(bn, x, r, rectifier);
                let reference = |bn: &BatchNorm, x, r| unfused(bn, x, r, rectifier);
                let bn = layer(shape[1], &device);
                let ours = rectified_pass(fused, bn, inputs, with_residual, storage);
                let bn = layer(shape[1], &device);
                let plain = [as_it_is as Storage; 2];
                let theirs = rectified_pass(reference, bn, inputs, with_residual, plain);
                for (index, (ours, theirs)) in ours.into_iter().zip(theirs).enumerate() {
                    let what = format!("{rectifier:?}, residual {with_residual}, result {index}");
                    assert_close(ours, theirs, &what);
                }
            }
        }
    }

    #[test]
    fn rectified_matches_burn_on_network_shapes() {
        check_rectified_against_burn([16, 8, 8, 8], 0.5, 11);
        check_rectified_against_burn([4, 3, 2, 2], -2.0, 12);
    }

    /// Position-major activations (what the tap-by-tap convolutions hand on) are normalised
    /// where they lie, alone and with a residual stored either way, and give burn's values.
    #[test]
    fn position_major_activations_match_burn() {
        let position_major = position_major_copy as Storage;
        for storage in [
            [position_major, as_it_is],
            [position_major, position_major],
            [as_it_is, position_major],
        ] {
            check_rectified_stored_against_burn([16, 8, 4, 4], 0.5, 13, storage);
            check_rectified_stored_against_burn([16, 5, 3, 2], -20.0, 14, storage);
        }
        let device = default_device();
        device.seed(15);
        let x = Tensor::<4>::random([16, 6, 2, 2], Distribution::Normal(1.0, 3.0), &device);
        let bn = layer(6, &device);
        let ours = batch_norm(&bn, position_major_copy(x.clone())).into_data();
        let theirs = bn.forward(x).into_data();
        assert!(
            ours.try_to_vec::<f32>().unwrap() == theirs.try_to_vec::<f32>().unwrap(),
            "the eval output of a position-major activation differs from burn's"
        );
    }

    #[test]
    fn rectified_eval_equals_burn_to_the_bit() {
        let device = default_device();
        device.seed(5);
        let x = Tensor::<4>::random([3, 5, 4, 6], Distribution::Normal(1.0, 3.0), &device);
        let residual = Tensor::<4>::random([3, 5, 4, 6], Distribution::Normal(2.0, 4.0), &device);
        let bn = layer(5, &device);
        for rectifier in [Rectifier::Relu, Rectifier::Relu6] {
            for residual in [None, Some(residual.clone())] {
                let ours = batch_norm_rectified(&bn, x.clone(), residual.clone(), rectifier);
                let theirs = unfused(&bn, x.clone(), residual, rectifier);
                let [ours, theirs] =
                    [ours, theirs].map(|t| t.into_data().try_to_vec::<f32>().unwrap());
                assert!(
                    ours == theirs,
                    "{rectifier:?}: the eval output differs from burn's"
                );
            }
        }
    }

    #[test]
    fn rectifiers_clamp_and_keep_nan() {
        let values = [-1.5f32, 0.0, 1e-8, 3.25, 6.0, 7.5, 1e6];
        let clamped: Vec<f32> = values.iter().map(|&v| relu6(v)).collect();
        assert_eq!(clamped, [0.0, 0.0, 1e-8, 3.25, 6.0, 6.0, 6.0]);
        let rectified: Vec<f32> = values.iter().map(|&v| relu(v)).collect();
        assert_eq!(rectified, [0.0, 0.0, 1e-8, 3.25, 6.0, 7.5, 1e6]);
        assert!(relu(f32::NAN).is_nan() && relu6(f32::NAN).is_nan());
        assert!(relu_passes(f32::NAN) && relu6_passes(f32::NAN));
        assert!(!relu_passes(0.0f32) && !relu6_passes(0.0f32));
        assert!(relu_passes(6.0f32) && !relu6_passes(6.0f32));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn training_matches_burn_on_random_shapes(
            batch in 1usize..5,
            channels in 1usize..6,
            height in 1usize..7,
            width in 1usize..11,
            offset in -5.0f64..5.0,
            seed in 0u64..1000,
        ) {
            check_training_against_burn([batch, channels, height, width], offset, seed);
            check_rectified_against_burn([batch, channels, height, width], offset, seed);
        }
    }

    fn f64_tensor(values: &[f64], shape: &[usize]) -> FlexTensor {
        host_tensor(values.to_vec(), shape)
    }

    fn f64_values(tensor: &FlexTensor) -> Vec<f64> {
        host_values::<f64>(tensor)
    }

    /// Smooth, deterministic values.
    fn wave(len: usize, phase: f64) -> Vec<f64> {
        (0..len)
            .map(|i| ((i as f64 + phase) * 0.731).sin() * 1.5 + 0.2)
            .collect()
    }

    /// Central differences of `sum(normalize_batch(x) · probe)` in f64 against the kernel's
    /// gradients for the input, γ and β.
    #[test]
    fn gradients_match_finite_differences() {
        let shape = [3, 2, 2, 3];
        let layout = Layout::of(&shape).unwrap();
        let (x, probe) = (wave(36, 0.3), wave(36, 7.1));
        let (gamma, beta) = (vec![0.7, -1.3], vec![0.4, 0.1]);
        let epsilon = 1e-5;
        let objective = |[x, gamma, beta]: &[Vec<f64>; 3]| -> f64 {
            let (output, _, _) = host_normalize_batch::<f64>(
                layout,
                &f64_tensor(x, &shape),
                [&f64_tensor(gamma, &[2]), &f64_tensor(beta, &[2])],
                epsilon,
                None,
            );
            f64_values(&output)
                .iter()
                .zip(&probe)
                .map(|(o, p)| o * p)
                .sum()
        };
        let (_, mean, variance) = host_normalize_batch::<f64>(
            layout,
            &f64_tensor(&x, &shape),
            [&f64_tensor(&gamma, &[2]), &f64_tensor(&beta, &[2])],
            epsilon,
            None,
        );
        let (dx, dgamma, dbeta) = host_normalize_batch_backward::<f64>(
            layout,
            &f64_tensor(&x, &shape),
            [&f64_tensor(&gamma, &[2]), &mean, &variance],
            epsilon,
            &f64_tensor(&probe, &shape),
        );
        let grads = [dx, dgamma, dbeta].map(|grad| f64_values(&grad));
        crate::kernels::assert_central_differences([x, gamma, beta], &grads, objective, 1e-6, "");
    }

    #[test]
    fn rectified_gradients_match_finite_differences() {
        let shape = [3, 2, 2, 3];
        let layout = Layout::of(&shape).unwrap();
        let (x, probe) = (wave(36, 0.3), wave(36, 7.1));
        // Residuals that put outputs on both sides of each clamp, none within a step of one.
        let residual: Vec<f64> = wave(36, 2.9).iter().map(|v| 3.0 + 4.0 * v).collect();
        let (gamma, beta) = (vec![1.7, -2.3], vec![0.4, 0.1]);
        let epsilon = 1e-5;
        let per_channel = [f64_tensor(&gamma, &[2]), f64_tensor(&beta, &[2])];
        for rectifier in [Rectifier::Relu, Rectifier::Relu6] {
            let forward = |x: &[f64], residual: &[f64]| {
                let residual = f64_tensor(residual, &shape);
                host_normalize_batch::<f64>(
                    layout,
                    &f64_tensor(x, &shape),
                    [&per_channel[0], &per_channel[1]],
                    epsilon,
                    Some((Some(&residual), rectifier)),
                )
            };
            let objective = |[x, residual]: &[Vec<f64>; 2]| -> f64 {
                let output = f64_values(&forward(x, residual).0);
                output.iter().zip(&probe).map(|(o, p)| o * p).sum()
            };
            let (output, mean, variance) = forward(&x, &residual);
            let masked =
                host_rectifier_backward::<f64>(&output, f64_tensor(&probe, &shape), rectifier);
            let (dx, _, _) = host_normalize_batch_backward::<f64>(
                layout,
                &f64_tensor(&x, &shape),
                [&per_channel[0], &mean, &variance],
                epsilon,
                &masked,
            );
            let clamped = f64_values(&masked).iter().filter(|&&g| g == 0.0).count();
            assert!(
                clamped > 0 && clamped < 36,
                "{rectifier:?}: {clamped} clamped"
            );
            let grads = [dx, masked].map(|grad| f64_values(&grad));
            let operands = [x.clone(), residual.clone()];
            crate::kernels::assert_central_differences(
                operands,
                &grads,
                objective,
                1e-6,
                &format!("{rectifier:?}"),
            );
        }
    }

    /// The same values bit for bit on one thread and on four.
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let shape = [16, 8, 12, 12];
        let layout = Layout::of(&shape).unwrap();
        let len = shape.iter().product();
        let to_f32 = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<_>>();
        let (x, dy) = (to_f32(wave(len, 0.5)), to_f32(wave(len, 3.3)));
        let channel = |v: f32| host_tensor(vec![v; 8], &[8]);
        let run = |threads: usize| {
            crate::kernels::on_threads(threads, || {
                let x = host_tensor(x.clone(), &shape);
                let (output, mean, variance) = host_normalize_batch::<f32>(
                    layout,
                    &x,
                    [&channel(1.5), &channel(0.5)],
                    1e-5,
                    None,
                );
                let (dx, dgamma, dbeta) = host_normalize_batch_backward::<f32>(
                    layout,
                    &x,
                    [&channel(1.5), &mean, &variance],
                    1e-5,
                    &host_tensor(dy.clone(), &shape),
                );
                [output, mean, variance, dx, dgamma, dbeta].map(|t| host_values::<f32>(&t))
            })
        };
        assert!(run(1) == run(4));
    }
}
