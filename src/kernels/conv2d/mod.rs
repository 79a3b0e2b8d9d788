//! Dense 2-D convolution (groups = 1, dilation = 1) as matrix products by the `gemm` crate (the
//! same AVX-512 / AVX2 / NEON micro-kernels flex calls, with its run-time dispatch), forward and
//! both backward passes.
//!
//! burn `flex` runs a convolution image by image: it converts the whole batch to channels-last on one
//! thread, builds an im2col tile per image and multiplies it with the weights, so the deep layers of a
//! CIFAR network (2x2 to 8x8 outputs) make many products of 4 to 64 columns that stream the full
//! weight matrix each time. Its backward passes reuse that forward with rearranged operands
//! (`conv_transpose2d` for the input, a convolution whose kernel is the output gradient for the
//! weights). lacoot picks one of two schemes by the size of the output plane:
//!
//! - [`by_image`], planes of at least 64 positions (8x8 to 32x32): im2col image by image, images in
//!   parallel, products straight into and out of the NCHW planes;
//! - [`by_tap`], smaller planes in batches of 16+ images: the batch laid out position-major, one
//!   product per kernel tap and output row over all images, no patch matrix and no multiplications
//!   by the padding (smaller batches go image by image: their tap products would be too thin).
//!
//! Within either scheme, 3x3 convolutions at stride 1 go through [`winograd`] (F(4x4, 3x3): 36
//! products of transformed tiles, 4x fewer multiply-adds than im2col) wherever that saves at least
//! a third of the scheme's multiply-adds and the channels and the batch are wide enough to pay for
//! the transforms: image by image from 32 channels each way, tap by tap from 64 (4x4 to 7x7
//! position-major planes; a 2x2 or 3x3 plane, where the tap-by-tap products skip most of the
//! padding, stays tap by tap), and only with 128 tiles or more in the batch (small batches, such as
//! inference on one image, keep the direct schemes).
//!
//! Every output element is summed in a fixed order whatever the thread count (the products split
//! rows and columns among threads, never the shared dimension; the image groups and the tap order
//! do not depend on it), so training stays reproducible.
//! Other element types, groups and dilations go to burn's own ops. Benchmark: `cargo bench --bench
//! conv_layers` against `bench/torch_conv_layers.py` (BENCHMARKS.md, "Convolutions").

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

mod by_image;
mod by_tap;
mod winograd;

use super::position_major;
use super::products::Element;

/// Output planes of at least this many positions go image by image through im2col
/// ([`by_image`]); smaller ones tap by tap ([`by_tap`]) when the batch has [`TAP_MIN_IMAGES`].
const IMAGE_MIN_POSITIONS: usize = 64;
/// Fewest images for the tap-by-tap scheme: its products have `images · run` rows, and with fewer
/// images than this they are too thin to pay for packing each tap's weights (the eval forward at
/// batch 1 took 2.6x longer tap by tap than image by image).
const TAP_MIN_IMAGES: usize = 16;

/// Convolutions with lacoot's own kernels where they are faster, implemented per backend.
#[backend_extension(Flex, Cube: cfg(any(feature = "wgpu", feature = "cuda")), Autodiff)]
pub trait ConvOps: Backend {
    /// `conv2d(x, weight)` without bias: `x` is `[B, C, H, W]`, `weight` `[Co, C, kh, kw]`.
    fn dense_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d(x, weight, None, options)
    }

    /// The gradients of [`ConvOps::dense_conv2d`] with respect to its input and its weight, each
    /// computed only when asked for.
    fn dense_conv2d_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
        wanted: [bool; 2],
    ) -> (Option<FloatTensor<Self>>, Option<FloatTensor<Self>>) {
        burn_backward::<Self>(x, weight, output_grad, options, wanted)
    }
}

/// The gradients of `conv2d(x, weight)` by burn's own ops of backend `B`, each computed only when
/// `wanted` asks for it.
fn burn_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    options: ConvOptions<2>,
    wanted: [bool; 2],
) -> (Option<FloatTensor<B>>, Option<FloatTensor<B>>) {
    let input_grad = wanted[0].then(|| {
        B::conv2d_x_backward(
            x.clone(),
            weight.clone(),
            output_grad.clone(),
            options.clone(),
        )
    });
    let weight_grad = wanted[1].then(|| B::conv2d_weight_backward(x, weight, output_grad, options));
    (input_grad, weight_grad)
}

/// `conv.forward(input)`, through lacoot's kernels when the convolution is dense (groups = 1,
/// dilation 1, explicit padding that is the same on both sides); burn's `Conv2d::forward` otherwise.
pub fn conv2d(conv: &Conv2d, input: Tensor<4>) -> Tensor<4> {
    let padding = match conv.padding {
        PaddingConfig2d::Valid => [0, 0],
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            [top, left]
        }
        _ => return conv.forward(input),
    };
    if conv.groups != 1 || conv.dilation != [1, 1] {
        return conv.forward(input);
    }
    let options = ConvOptions::new(conv.stride, padding, [1, 1], 1);
    let output = dense_conv2d(input, conv.weight.val(), options);
    match &conv.bias {
        Some(bias) => {
            let channels = bias.dims()[0];
            output + bias.val().reshape([1, channels, 1, 1])
        }
        None => output,
    }
}

/// `conv2d(x, weight)` without bias through [`ConvOps::dense_conv2d`]: lacoot's kernels on `flex`
/// when `options` describe a dense convolution, burn's op otherwise.
pub fn dense_conv2d(x: Tensor<4>, weight: Tensor<4>, options: ConvOptions<2>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as ConvOps>::dense_conv2d(
        x.into_dispatch(),
        weight.into_dispatch(),
        options,
    ))
}

/// The gradients of [`dense_conv2d`] with respect to `x` and to `weight` for the output gradient
/// `output_grad`, each computed only when `wanted` asks for it.
pub fn dense_conv2d_backward(
    x: Tensor<4>,
    weight: Tensor<4>,
    output_grad: Tensor<4>,
    options: ConvOptions<2>,
    wanted: [bool; 2],
) -> (Option<Tensor<4>>, Option<Tensor<4>>) {
    let (input_grad, weight_grad) = <Dispatch as ConvOps>::dense_conv2d_backward(
        x.into_dispatch(),
        weight.into_dispatch(),
        output_grad.into_dispatch(),
        options,
        wanted,
    );
    (
        input_grad.map(Tensor::from_dispatch),
        weight_grad.map(Tensor::from_dispatch),
    )
}

/// Sizes of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geometry {
    batch: usize,
    channels_in: usize,
    size_in: [usize; 2],
    channels_out: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    size_out: [usize; 2],
}

impl Geometry {
    /// `None` when the shapes do not form a convolution lacoot's kernels run (checked by burn's
    /// fallback instead, which reports the problem).
    fn new(x: &[usize], weight: &[usize], options: &ConvOptions<2>) -> Option<Self> {
        let &[batch, channels_in, height, width] = x else {
            return None;
        };
        let &[channels_out, weight_channels, kh, kw] = weight else {
            return None;
        };
        let dense = options.groups == 1 && options.dilation == [1, 1] && !options.is_asymmetric();
        // Empty patches are left to burn: `gemm` need not write an output it sums nothing into.
        let patches = channels_in > 0 && kh > 0 && kw > 0;
        if !dense || !patches || weight_channels != channels_in || options.stride.contains(&0) {
            return None;
        }
        let padding = options.padding_begin();
        let size_out = [
            super::sliding_outputs(height, kh, options.stride[0], padding[0])?,
            super::sliding_outputs(width, kw, options.stride[1], padding[1])?,
        ];
        Some(Self {
            batch,
            channels_in,
            size_in: [height, width],
            channels_out,
            kernel: [kh, kw],
            stride: options.stride,
            padding,
            size_out,
        })
    }

    /// Rows of the patch matrix: `C·kh·kw`.
    fn patch_len(&self) -> usize {
        self.channels_in * self.kernel[0] * self.kernel[1]
    }

    fn positions(&self) -> usize {
        self.size_out[0] * self.size_out[1]
    }

    fn plane_in(&self) -> usize {
        self.size_in[0] * self.size_in[1]
    }

    /// The output positions `o` along one axis whose input index `o·stride + k − pad` lies in
    /// `[0, size)`.
    fn valid_outputs(&self, axis: usize, k: usize) -> std::ops::Range<usize> {
        super::tap_outputs(
            self.size_in[axis],
            self.size_out[axis],
            self.stride[axis],
            self.padding[axis],
            k,
        )
    }
}

impl Geometry {
    /// The convolution whose forward pass is the backward pass of `self` to its input, when it
    /// has stride 1 and a padding below its kernel: `dy` convolved with
    /// [`Geometry::flipped_exchanged`] weights, padded by `k − 1 − p`, gives `[B, C, H, W]`.
    fn transposed(&self) -> Option<Geometry> {
        if self.stride != [1, 1] {
            return None;
        }
        let padding = [0, 1].map(|axis| self.kernel[axis].checked_sub(1 + self.padding[axis]));
        let [Some(top), Some(left)] = padding else {
            return None;
        };
        Some(Geometry {
            batch: self.batch,
            channels_in: self.channels_out,
            size_in: self.size_out,
            channels_out: self.channels_in,
            kernel: self.kernel,
            stride: [1, 1],
            padding: [top, left],
            size_out: self.size_in,
        })
    }

    /// The weights `[Co, C, kh, kw]` as `[C, Co, kh, kw]`, each kernel turned by half a turn
    /// (`W'[c, o, i, j] = W[o, c, kh − 1 − i, kw − 1 − j]`).
    fn flipped_exchanged<T: Element>(&self, weight: &[T]) -> Vec<T> {
        let taps = self.kernel[0] * self.kernel[1];
        let (channels_in, channels_out) = (self.channels_in, self.channels_out);
        let mut out = Vec::with_capacity(weight.len());
        for channel in 0..channels_in {
            for output in 0..channels_out {
                let kernel = &weight[(output * channels_in + channel) * taps..][..taps];
                out.extend(kernel.iter().rev());
            }
        }
        out
    }
}

/// Values of the sum each task of [`sum_in_order`] adds.
const SUM_GRAIN: usize = 4096;

/// The element-wise sum of `parts` (zeros of length `len` when there are none), each element
/// added in the order of the parts, so the result does not depend on how the elements are split
/// among the threads.
fn sum_in_order<T: Element>(parts: Vec<Vec<T>>, len: usize) -> Vec<T> {
    let mut total = vec![T::default(); len];
    total
        .par_chunks_mut(SUM_GRAIN)
        .enumerate()
        .for_each(|(index, sums)| {
            for part in &parts {
                for (sum, &value) in sums.iter_mut().zip(&part[index * SUM_GRAIN..]) {
                    *sum += value;
                }
            }
        });
    total
}

/// Whether `g` runs tap by tap (small planes, enough images) rather than image by image.
fn runs_tap_by_tap(g: &Geometry) -> bool {
    g.positions() < IMAGE_MIN_POSITIONS && g.batch >= TAP_MIN_IMAGES
}

/// An activation for the tap-by-tap scheme: its position-major rows when it is stored so, its
/// NCHW planes otherwise (`contiguous` keeps the copy alive).
fn tap_activation<'a, T: Element>(
    tensor: &'a FlexTensor,
    contiguous: &'a mut Option<FlexTensor>,
) -> by_tap::Activation<'a, T> {
    match position_major::rows::<T>(tensor) {
        Some(rows) => by_tap::Activation::Rows(rows),
        None => by_tap::Activation::Planes(
            contiguous
                .insert(tensor.to_contiguous())
                .as_slice::<T>()
                .expect("checked element type"),
        ),
    }
}

/// The output, position-major when the convolution runs tap by tap (the next layers read it so),
/// NCHW otherwise.
fn host_forward<T: Element>(g: &Geometry, x: &FlexTensor, weight: &FlexTensor) -> FlexTensor {
    let weight = weight.to_contiguous();
    let weight = weight.as_slice::<T>().expect("checked element type");
    let [out_h, out_w] = g.size_out;
    let shape = [g.batch, g.channels_out, out_h, out_w];
    if runs_tap_by_tap(g) {
        let mut contiguous = None;
        let x = tap_activation::<T>(x, &mut contiguous);
        let rows = match x {
            by_tap::Activation::Rows(_) if winograd::applies(g, true) => {
                winograd::forward(g, x, weight)
            }
            _ => by_tap::forward(g, x, weight),
        };
        position_major::from_rows(rows, shape)
    } else {
        let x = x.to_contiguous();
        let x = x.as_slice::<T>().expect("checked element type");
        let values = if winograd::applies(g, false) {
            winograd::forward(g, by_tap::Activation::Planes(x), weight)
        } else {
            by_image::forward(g, x, weight)
        };
        FlexTensor::from_data(TensorData::new(values, shape))
    }
}

/// The input gradient, stored as `x` is, and the weight gradient, each only when wanted.
fn host_backward<T: Element>(
    g: &Geometry,
    x: &FlexTensor,
    weight: &FlexTensor,
    output_grad: &FlexTensor,
    wanted: [bool; 2],
) -> (Option<FlexTensor>, Option<FlexTensor>) {
    let weight = weight.to_contiguous();
    let weight_values = weight.as_slice::<T>().expect("checked element type");
    let [height, width] = g.size_in;
    let [kh, kw] = g.kernel;
    let input_shape = [g.batch, g.channels_in, height, width];
    let weight_shape = [g.channels_out, g.channels_in, kh, kw];
    let (dx, dw) = if runs_tap_by_tap(g) {
        let (mut x_copy, mut dy_copy) = (None, None);
        let input = tap_activation::<T>(x, &mut x_copy);
        let dy = tap_activation::<T>(output_grad, &mut dy_copy);
        let (dx, dw) = match (input, dy) {
            (by_tap::Activation::Rows(_), by_tap::Activation::Rows(_))
                if winograd::applies(g, true) =>
            {
                winograd::backward(g, input, weight_values, dy, wanted)
            }
            _ => by_tap::backward(g, input, weight_values, dy, wanted),
        };
        let dx = dx.map(|dx| position_major::tensor_stored_like(dx, &input_shape, x));
        (dx, dw)
    } else {
        let (x, dy) = (x.to_contiguous(), output_grad.to_contiguous());
        let x = x.as_slice::<T>().expect("checked element type");
        let dy = dy.as_slice::<T>().expect("checked element type");
        let (dx, dw) = if winograd::applies(g, false) {
            let planes = by_tap::Activation::Planes;
            winograd::backward(g, planes(x), weight_values, planes(dy), wanted)
        } else {
            by_image::backward(g, x, weight_values, dy, wanted)
        };
        (
            dx.map(|dx| FlexTensor::from_data(TensorData::new(dx, input_shape))),
            dw,
        )
    };
    (
        dx,
        dw.map(|dw| FlexTensor::from_data(TensorData::new(dw, weight_shape))),
    )
}

/// burn's own convolutions on the cubecl backends (wgpu, cuda).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl ConvOps for burn::backend::Cube {}

impl ConvOps for Flex {
    fn dense_conv2d(x: FlexTensor, weight: FlexTensor, options: ConvOptions<2>) -> FlexTensor {
        let geometry = Geometry::new(x.shape().as_slice(), weight.shape().as_slice(), &options);
        match (geometry, x.dtype(), weight.dtype()) {
            (Some(g), DType::F32, DType::F32) => host_forward::<f32>(&g, &x, &weight),
            (Some(g), DType::F64, DType::F64) => host_forward::<f64>(&g, &x, &weight),
            _ => Flex::conv2d(x, weight, None, options),
        }
    }

    fn dense_conv2d_backward(
        x: FlexTensor,
        weight: FlexTensor,
        output_grad: FlexTensor,
        options: ConvOptions<2>,
        wanted: [bool; 2],
    ) -> (Option<FlexTensor>, Option<FlexTensor>) {
        let geometry = Geometry::new(x.shape().as_slice(), weight.shape().as_slice(), &options);
        let dtypes = [x.dtype(), weight.dtype(), output_grad.dtype()];
        match (geometry, dtypes) {
            (Some(g), [DType::F32, DType::F32, DType::F32]) => {
                host_backward::<f32>(&g, &x, &weight, &output_grad, wanted)
            }
            (Some(g), [DType::F64, DType::F64, DType::F64]) => {
                host_backward::<f64>(&g, &x, &weight, &output_grad, wanted)
            }
            _ => burn_backward::<Flex>(x, weight, output_grad, options, wanted),
        }
    }
}

/// The backward pass of [`ConvOps::dense_conv2d`].
#[derive(Debug)]
struct DenseConv2dBackward;

impl<B: Backend + ConvOps> Backward<B, 2> for DenseConv2dBackward {
    /// The input, the weight and the options.
    type State = (
        B::FloatTensorPrimitive,
        B::FloatTensorPrimitive,
        ConvOptions<2>,
    );

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [input_node, weight_node] = ops.parents;
        let output_grad = grads.consume::<B>(&ops.node);
        let (x, weight, options) = ops.state;
        let wanted = [input_node.is_some(), weight_node.is_some()];
        let (input_grad, weight_grad) =
            B::dense_conv2d_backward(x, weight, output_grad, options, wanted);
        if let (Some(node), Some(grad)) = (input_node, input_grad) {
            grads.register::<B>(node.id, grad);
        }
        if let (Some(node), Some(grad)) = (weight_node, weight_grad) {
            grads.register::<B>(node.id, grad);
        }
    }
}

impl<B: Backend + ConvOps, C: CheckpointStrategy> ConvOps for Autodiff<B, C> {
    fn dense_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let prepared = DenseConv2dBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful();
        let (x, weight) = (x.into_primitive(), weight.into_primitive());
        match prepared {
            OpsKind::Tracked(prep) => {
                let output = B::dense_conv2d(x.clone(), weight.clone(), options.clone());
                prep.finish((x, weight, options), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::dense_conv2d(x, weight, options)),
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::module;
    use burn::tensor::{Distribution, Tolerance};
    use proptest::prelude::*;

    use super::*;
    use crate::device::autodiff_device;

    /// Output, input gradient and weight gradient of `run` on `x` and `weight`, with the output
    /// gradient `probe` (the gradient of `sum(output · probe)`).
    fn value_and_gradients(
        run: impl Fn(Tensor<4>, Tensor<4>) -> Tensor<4>,
        x: &Tensor<4>,
        weight: &Tensor<4>,
        probe: &Tensor<4>,
    ) -> [TensorData; 3] {
        let (x, weight) = (x.clone().require_grad(), weight.clone().require_grad());
        let output = run(x.clone(), weight.clone());
        let grads = (output.clone() * probe.clone()).sum().backward();
        [
            output.into_data(),
            x.grad(&grads).expect("input gradient").into_data(),
            weight.grad(&grads).expect("weight gradient").into_data(),
        ]
    }

    /// lacoot's kernel against burn's conv2d on one shape: value and both gradients.
    fn check_against_burn(
        [batch, channels_in, height, width]: [usize; 4],
        [channels_out, kh, kw]: [usize; 3],
        stride: [usize; 2],
        padding: [usize; 2],
        seed: u64,
    ) {
        let device = autodiff_device();
        device.seed(seed);
        let x = Tensor::<4>::random(
            [batch, channels_in, height, width],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let weight = Tensor::<4>::random(
            [channels_out, channels_in, kh, kw],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let options = ConvOptions::new(stride, padding, [1, 1], 1);
        let reference = module::conv2d(x.clone(), weight.clone(), None, options.clone());
        let probe = Tensor::<4>::random(reference.dims(), Distribution::Normal(0.0, 1.0), &device);
        let ours = value_and_gradients(
            |x, w| dense_conv2d(x, w, options.clone()),
            &x,
            &weight,
            &probe,
        );
        let theirs = value_and_gradients(
            |x, w| module::conv2d(x, w, None, options.clone()),
            &x,
            &weight,
            &probe,
        );
        for (ours, theirs) in ours.iter().zip(&theirs) {
            assert_eq!(ours.shape(), theirs.shape());
            ours.assert_approx_eq::<f32>(theirs, Tolerance::absolute(1e-3).set_relative(1e-4));
        }
    }

    #[test]
    fn matches_burn_on_the_resnet_shapes() {
        // 3x3 at stride 1, 3x3 at stride 2 and the 1x1 shortcut at stride 2; a stem from 3 channels.
        check_against_burn([4, 8, 8, 8], [8, 3, 3], [1, 1], [1, 1], 1);
        check_against_burn([4, 8, 8, 8], [16, 3, 3], [2, 2], [1, 1], 2);
        check_against_burn([4, 8, 8, 8], [16, 1, 1], [2, 2], [0, 0], 3);
        check_against_burn([2, 3, 12, 12], [8, 3, 3], [1, 1], [1, 1], 4);
    }

    #[test]
    fn matches_burn_on_a_patch_embedding_and_on_both_paths_at_scale() {
        // Swin's 4x4 patches at stride 4 (with bias in the model, added outside the kernel).
        check_against_burn([2, 3, 16, 16], [8, 4, 4], [4, 4], [0, 0], 5);
        // More images than groups: weight gradients summed within and across groups.
        check_against_burn([40, 16, 9, 9], [16, 3, 3], [1, 1], [1, 1], 6);
        // The deep layers of a CIFAR ResNet, tap by tap: 4x4 and 2x2 planes, strided 3x3 and 1x1.
        check_against_burn([16, 32, 4, 4], [32, 3, 3], [1, 1], [1, 1], 7);
        check_against_burn([16, 32, 2, 2], [32, 3, 3], [1, 1], [1, 1], 8);
        check_against_burn([16, 16, 8, 8], [32, 3, 3], [2, 2], [1, 1], 9);
        check_against_burn([16, 16, 8, 8], [32, 1, 1], [2, 2], [0, 0], 10);
        assert!(runs_tap_by_tap(&dense(
            [16, 16, 8, 8],
            [32, 16, 1, 1],
            [2, 2],
            [0, 0]
        )));
    }

    /// A flex tensor of `shape` with smooth values.
    fn flex_values(shape: [usize; 4], phase: f32) -> FlexTensor {
        let len = shape.iter().product::<usize>();
        let values: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37 + phase).sin()).collect();
        FlexTensor::from_data(TensorData::new(values, shape))
    }

    /// Tap-by-tap outputs are handed on position-major; the next convolution reads them as they
    /// lie (at stride 1 and 2) with the same values as from NCHW, and returns its input gradient
    /// stored as its input.
    #[test]
    fn small_planes_stay_position_major_between_layers() {
        let same = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let y = <Flex as ConvOps>::dense_conv2d(
            flex_values([16, 4, 5, 5], 0.0),
            flex_values([6, 4, 3, 3], 1.0),
            same.clone(),
        );
        assert!(position_major::is_position_major(&y) && !y.is_contiguous());
        let nchw = FlexTensor::from_data(y.clone().into_data());
        for options in [same, ConvOptions::new([2, 2], [1, 1], [1, 1], 1)] {
            let weight = flex_values([3, 6, 3, 3], 2.0);
            let conv = |x: &FlexTensor| {
                <Flex as ConvOps>::dense_conv2d(x.clone(), weight.clone(), options.clone())
            };
            let (from_rows, from_planes) = (conv(&y), conv(&nchw));
            assert_eq!(from_rows.clone().into_data(), from_planes.into_data());
            let backward = |x: &FlexTensor| {
                <Flex as ConvOps>::dense_conv2d_backward(
                    x.clone(),
                    weight.clone(),
                    from_rows.clone(),
                    options.clone(),
                    [true, true],
                )
            };
            let ((dx_rows, dw_rows), (dx_planes, dw_planes)) = (backward(&y), backward(&nchw));
            let (dx_rows, dx_planes) = (dx_rows.unwrap(), dx_planes.unwrap());
            assert!(position_major::is_position_major(&dx_rows) && !dx_rows.is_contiguous());
            assert!(dx_planes.is_contiguous());
            assert_eq!(dx_rows.into_data(), dx_planes.into_data());
            assert_eq!(dw_rows.unwrap().into_data(), dw_planes.unwrap().into_data());
        }
    }

    /// The 3x3 stride-1 layers Winograd takes, through the same entry points as the others: NCHW
    /// planes against burn, and position-major rows against the direct products on the same
    /// values as planes, in single precision.
    #[test]
    fn winograd_layers_match_the_direct_schemes() {
        let planes = [8, 32, 16, 16];
        assert!(winograd::applies(
            &dense(planes, [32, 32, 3, 3], [1, 1], [1, 1]),
            false
        ));
        check_against_burn(planes, [32, 3, 3], [1, 1], [1, 1], 11);

        let same = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let rows = <Flex as ConvOps>::dense_conv2d(
            flex_values([128, 64, 4, 4], 0.0),
            flex_values([64, 64, 3, 3], 1.0),
            same.clone(),
        );
        assert!(position_major::is_position_major(&rows));
        let g = dense([128, 64, 4, 4], [64, 64, 3, 3], [1, 1], [1, 1]);
        assert!(runs_tap_by_tap(&g) && winograd::applies(&g, true));
        let nchw = FlexTensor::from_data(rows.clone().into_data());
        let weight = flex_values([64, 64, 3, 3], 2.0);
        let dy = <Flex as ConvOps>::dense_conv2d(
            flex_values([128, 64, 4, 4], 3.0),
            flex_values([64, 64, 3, 3], 4.0),
            same.clone(),
        );
        assert!(position_major::is_position_major(&dy));
        let passes = |x: &FlexTensor| {
            let y = <Flex as ConvOps>::dense_conv2d(x.clone(), weight.clone(), same.clone());
            let (dx, dw) = <Flex as ConvOps>::dense_conv2d_backward(
                x.clone(),
                weight.clone(),
                dy.clone(),
                same.clone(),
                [true, true],
            );
            [y, dx.unwrap(), dw.unwrap()].map(FlexTensor::into_data)
        };
        // F(4x4, 3x3) rounds about 10x more than the direct products: compared with the largest
        // value, as outputs near zero carry the rounding of the large terms that cancelled there.
        for (pass, (winograd, direct)) in ["forward", "input gradient", "weight gradient"]
            .iter()
            .zip(passes(&rows).iter().zip(&passes(&nchw)))
        {
            let (winograd, direct) = (winograd.as_slice::<f32>(), direct.as_slice::<f32>());
            let (winograd, direct) = (winograd.unwrap(), direct.unwrap());
            let scale = direct.iter().fold(0f32, |max, v| max.max(v.abs()));
            let error = winograd
                .iter()
                .zip(direct)
                .fold(0f32, |max, (a, b)| max.max((a - b).abs()));
            assert!(error <= 1e-4 * scale, "{pass}: {error:e} of {scale:e}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn matches_burn_on_random_shapes(
            batch in 1usize..4,
            channels_in in 1usize..6,
            channels_out in 1usize..6,
            height in 1usize..9,
            width in 1usize..9,
            kh in 1usize..4,
            kw in 1usize..4,
            stride in (1usize..4, 1usize..4),
            padding in (0usize..3, 0usize..3),
            seed in 0u64..1000,
        ) {
            prop_assume!(height + 2 * padding.0 >= kh && width + 2 * padding.1 >= kw);
            check_against_burn(
                [batch, channels_in, height, width],
                [channels_out, kh, kw],
                [stride.0, stride.1],
                [padding.0, padding.1],
                seed,
            );
        }
    }

    /// The geometry of a dense convolution of `x` by `weight`.
    fn dense(
        x: [usize; 4],
        weight: [usize; 4],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> Geometry {
        Geometry::new(&x, &weight, &ConvOptions::new(stride, padding, [1, 1], 1)).unwrap()
    }

    #[test]
    fn empty_patches_are_left_to_burn() {
        let options = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
        assert!(Geometry::new(&[2, 0, 4, 4], &[3, 0, 1, 1], &options).is_none());
        assert!(Geometry::new(&[2, 1, 4, 4], &[3, 1, 0, 1], &options).is_none());
        assert!(Geometry::new(&[2, 1, 4, 4], &[3, 1, 1, 1], &options).is_some());
    }

    /// Smooth, deterministic input, weight and output-gradient values for `g`.
    fn operands(g: &Geometry) -> [Vec<f64>; 3] {
        let lens = [
            g.batch * g.channels_in * g.plane_in(),
            g.channels_out * g.patch_len(),
            g.batch * g.channels_out * g.positions(),
        ];
        lens.map(|len| (0..len).map(|i| ((i as f64 + 0.3) * 0.731).sin()).collect())
    }

    /// Central differences of `sum(conv(x, w) · probe)` in f64 against the kernel's gradients.
    #[test]
    fn gradients_match_finite_differences() {
        // Small output planes by both schemes, at strides 1 and 2; a large one image by image.
        for small in [
            dense([2, 3, 5, 4], [4, 3, 3, 2], [2, 1], [1, 1]),
            dense([2, 2, 7, 5], [3, 2, 3, 3], [2, 2], [1, 1]),
            dense([2, 2, 3, 3], [3, 2, 3, 3], [1, 1], [1, 1]),
        ] {
            check_finite_differences(small, true);
            check_finite_differences(small, false);
        }
        let large = dense([3, 2, 9, 8], [2, 2, 3, 3], [1, 1], [1, 1]);
        assert!(large.positions() >= IMAGE_MIN_POSITIONS);
        check_finite_differences(large, false);
    }

    /// The forward pass on NCHW planes, tap by tap (`taps`) or image by image, the output as
    /// NCHW planes.
    fn planes_forward<T: Element>(g: &Geometry, x: &[T], w: &[T], taps: bool) -> Vec<T> {
        if taps {
            let rows = by_tap::forward(g, by_tap::Activation::Planes(x), w);
            by_tap::rows_to_planes(&rows, [g.batch, g.channels_out], g.size_out)
        } else {
            by_image::forward(g, x, w)
        }
    }

    /// The backward passes on NCHW planes, as [`planes_forward`].
    fn planes_backward<T: Element>(
        g: &Geometry,
        [x, w, dy]: [&[T]; 3],
        taps: bool,
    ) -> (Option<Vec<T>>, Option<Vec<T>>) {
        if taps {
            let planes = by_tap::Activation::Planes;
            by_tap::backward(g, planes(x), w, planes(dy), [true, true])
        } else {
            by_image::backward(g, x, w, dy, [true, true])
        }
    }

    /// Central differences against the gradients of the tap-by-tap scheme (`taps`) or of the
    /// image-by-image one.
    fn check_finite_differences(g: Geometry, taps: bool) {
        let [x, w, probe] = operands(&g);
        let objective = |[x, w]: &[Vec<f64>; 2]| -> f64 {
            let output = planes_forward(&g, x, w, taps);
            output.iter().zip(&probe).map(|(o, p)| o * p).sum()
        };
        let (dx, dw) = planes_backward(&g, [&x, &w, &probe], taps);
        let grads = [dx.unwrap(), dw.unwrap()];
        crate::kernels::assert_central_differences(
            [x, w],
            &grads,
            objective,
            1e-7,
            &format!("{g:?}"),
        );
    }

    /// The same values bit for bit on one thread and on four.
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        // Image by image, and tap by tap with products large enough to run in parallel.
        for g in [
            dense([24, 32, 16, 16], [48, 32, 3, 3], [1, 1], [1, 1]),
            dense([64, 128, 4, 4], [128, 128, 3, 3], [1, 1], [1, 1]),
        ] {
            let [x, w, dy] =
                operands(&g).map(|v| v.into_iter().map(|v| v as f32).collect::<Vec<_>>());
            let run = |threads: usize| {
                crate::kernels::on_threads(threads, || {
                    let taps = runs_tap_by_tap(&g);
                    (
                        planes_forward(&g, &x, &w, taps),
                        planes_backward(&g, [&x, &w, &dy], taps),
                    )
                })
            };
            let (one, four) = (run(1), run(4));
            assert!(one.0 == four.0, "forward differs on {g:?}");
            assert!(one.1 == four.1, "backward differs on {g:?}");
        }
    }
}
