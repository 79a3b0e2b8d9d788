//! Shapes and costs of layers, computed from the layer objects themselves.

use burn::nn::conv::Conv2d;
use burn::nn::pool::{AdaptiveAvgPool2d, MaxPool2d};
use burn::nn::{BatchNorm, LayerNorm, Linear, PaddingConfig2d};

/// Trainable parameters of a layer (buffers such as batch-norm running statistics excluded, as in
/// PyTorch's `sum(p.numel() for p in model.parameters())`).
pub trait TrainableParameters {
    /// The number of trainable parameters.
    fn trainable_parameters(&self) -> usize;
}

/// Implements [`TrainableParameters`] for a layer with a `weight` and an optional `bias`.
macro_rules! weight_and_bias {
    ($layer:ty) => {
        impl TrainableParameters for $layer {
            fn trainable_parameters(&self) -> usize {
                self.weight.shape().num_elements()
                    + self.bias.as_ref().map_or(0, |b| b.shape().num_elements())
            }
        }
    };
}

weight_and_bias!(Conv2d);
weight_and_bias!(Linear);

impl TrainableParameters for BatchNorm {
    fn trainable_parameters(&self) -> usize {
        self.gamma.shape().num_elements() + self.beta.shape().num_elements()
    }
}

impl TrainableParameters for LayerNorm {
    fn trainable_parameters(&self) -> usize {
        self.gamma.shape().num_elements()
            + self.beta.as_ref().map_or(0, |b| b.shape().num_elements())
    }
}

/// What one layer turns a `[C, H, W]` sample into, and at what cost.
pub trait LayerCost {
    /// The output shape for an input of `shape`.
    fn output_shape(&self, shape: [usize; 3]) -> [usize; 3];

    /// Multiply-accumulates per sample for an input of `shape` (0 for layers outside the paper's
    /// conv + linear convention).
    fn macs(&self, shape: [usize; 3]) -> u64;

    /// Normalisation and pooling operations per sample for an input of `shape` (see
    /// [`super::Cost::norm_pool_macs`]); 0 for other layers.
    fn norm_pool_macs(&self, _shape: [usize; 3]) -> u64 {
        0
    }
}

impl LayerCost for BatchNorm {
    fn output_shape(&self, shape: [usize; 3]) -> [usize; 3] {
        shape
    }

    fn macs(&self, _: [usize; 3]) -> u64 {
        0
    }

    fn norm_pool_macs(&self, shape: [usize; 3]) -> u64 {
        shape.iter().product::<usize>() as u64
    }
}

impl LayerCost for AdaptiveAvgPool2d {
    fn output_shape(&self, [c, ..]: [usize; 3]) -> [usize; 3] {
        [c, self.output_size[0], self.output_size[1]]
    }

    fn macs(&self, _: [usize; 3]) -> u64 {
        0
    }

    fn norm_pool_macs(&self, shape: [usize; 3]) -> u64 {
        shape.iter().product::<usize>() as u64
    }
}

/// Output length of a sliding window over `length` positions (0 when the window does not fit).
fn window(length: usize, kernel: usize, stride: usize, dilation: usize, pad: usize) -> usize {
    (length + 2 * pad)
        .checked_sub(dilation * (kernel - 1) + 1)
        .map_or(0, |room| room / stride + 1)
}

/// Symmetric padding `(height, width)`; `Same` keeps the size at stride 1.
fn symmetric_padding(padding: &PaddingConfig2d, kernel: [usize; 2]) -> [usize; 2] {
    match padding {
        PaddingConfig2d::Valid => [0, 0],
        PaddingConfig2d::Same => [(kernel[0] - 1) / 2, (kernel[1] - 1) / 2],
        PaddingConfig2d::Explicit(top, left, _, _) => [*top, *left],
    }
}

/// The spatial output size of a sliding window (convolution or pooling) over `[h, w]`.
fn windowed(
    [h, w]: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    padding: &PaddingConfig2d,
) -> [usize; 2] {
    let pad = symmetric_padding(padding, kernel);
    [0, 1].map(|axis| {
        let length = [h, w][axis];
        window(
            length,
            kernel[axis],
            stride[axis],
            dilation[axis],
            pad[axis],
        )
    })
}

impl LayerCost for Conv2d {
    fn output_shape(&self, [_, h, w]: [usize; 3]) -> [usize; 3] {
        let [out_channels, ..] = self.weight.dims();
        let [oh, ow] = windowed(
            [h, w],
            self.kernel_size,
            self.stride,
            self.dilation,
            &self.padding,
        );
        [out_channels, oh, ow]
    }

    fn macs(&self, shape: [usize; 3]) -> u64 {
        let [out_channels, in_per_group, kh, kw] = self.weight.dims();
        let [_, oh, ow] = self.output_shape(shape);
        (out_channels * in_per_group * kh * kw * oh * ow) as u64
    }
}

impl LayerCost for MaxPool2d {
    fn norm_pool_macs(&self, shape: [usize; 3]) -> u64 {
        let window: usize = self.kernel_size.iter().product();
        (window * self.output_shape(shape).iter().product::<usize>()) as u64
    }

    fn output_shape(&self, [c, h, w]: [usize; 3]) -> [usize; 3] {
        let [oh, ow] = windowed(
            [h, w],
            self.kernel_size,
            self.stride,
            self.dilation,
            &self.padding,
        );
        [c, oh, ow]
    }

    fn macs(&self, _: [usize; 3]) -> u64 {
        0
    }
}

impl LayerCost for Linear {
    fn output_shape(&self, _: [usize; 3]) -> [usize; 3] {
        [self.weight.dims()[1], 1, 1]
    }

    fn macs(&self, _: [usize; 3]) -> u64 {
        let [inputs, outputs] = self.weight.dims();
        (inputs * outputs) as u64
    }
}
