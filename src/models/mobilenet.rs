//! MobileNetV2 with torchvision's layout and parameter names (`features.3.conv.1.0.weight`, …), in
//! the ImageNet variant and the paper's CIFAR variant.

use std::collections::BTreeSet;

use crate::kernels::{Rectifier, batch_norm, batch_norm_rectified, conv2d, linear};
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Initializer, Linear, LinearConfig,
    PaddingConfig2d,
};
use burn::tensor::{Device, Tensor};

use super::cost::{LayerCost, TrainableParameters};
use super::{BlockFeatures, BlockInfo, BlockNetwork, Cost, ModelError, check_removable};

/// The two published layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MobileNetVariant {
    /// torchvision's: stem at stride 2, stages at strides 1, 2, 2, 2, 1, 2, 1.
    ImageNet,
    /// The paper's CIFAR variant: stem at stride 1 and the second stage at stride 1.
    Cifar,
}

/// What a removable block of MobileNetV2 is.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum RemovalUnit {
    /// The whole block (an inverted residual, named `features.N`); removable when it has a
    /// residual connection.
    #[default]
    Block,
    /// The paper's unit: the depthwise convolution + BN + ReLU6 inside each inverted residual
    /// (`features.N.conv.1`, or `features.1.conv.0` where there is no expansion); removable when
    /// its stride is 1.
    Depthwise,
}

/// Everything that determines a MobileNetV2.
#[derive(Clone, Debug, PartialEq)]
pub struct MobileNetV2Config {
    /// ImageNet or CIFAR layout.
    pub variant: MobileNetVariant,
    /// Channels of the input images.
    pub in_channels: usize,
    /// Number of classes.
    pub num_classes: usize,
    /// torchvision's `width_mult`: every layer's channels are scaled by it and rounded to a
    /// multiple of 8.
    pub width_multiplier: f64,
    /// Height and width of the (square) input images.
    pub input_size: usize,
    /// What the removable blocks are.
    pub unit: RemovalUnit,
}

/// torchvision's inverted-residual settings: expansion t, channels c, repeats n, first stride s.
const IMAGENET_SETTINGS: [[usize; 4]; 7] = [
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
];

/// torchvision's `_make_divisible(v, 8)`: the nearest multiple of 8, at least 8 and at least 90 %
/// of `v`.
fn make_divisible(value: f64) -> usize {
    const DIVISOR: usize = 8;
    let rounded = ((value + DIVISOR as f64 / 2.0) as usize / DIVISOR * DIVISOR).max(DIVISOR);
    if (rounded as f64) < 0.9 * value {
        rounded + DIVISOR
    } else {
        rounded
    }
}

impl MobileNetV2Config {
    /// A configuration with torchvision's width (1.0) and block removal, for 3-channel images.
    pub fn new(variant: MobileNetVariant, num_classes: usize, input_size: usize) -> Self {
        Self {
            variant,
            in_channels: 3,
            num_classes,
            width_multiplier: 1.0,
            input_size,
            unit: RemovalUnit::Block,
        }
    }

    /// Builds the network with torchvision's initialisation (He-normal fan-out convolutions,
    /// N(0, 0.01) classifier, unit batch-norm scales).
    pub fn init(&self, device: &Device) -> Result<MobileNetV2, ModelError> {
        if self.in_channels == 0 || self.num_classes == 0 || self.input_size == 0 {
            return Err(ModelError::InvalidConfig(
                "input channels, classes and input size must be positive".into(),
            ));
        }
        if !(self.width_multiplier.is_finite() && self.width_multiplier > 0.0) {
            return Err(ModelError::InvalidConfig(format!(
                "width multiplier {} must be positive",
                self.width_multiplier
            )));
        }
        let (stem_stride, second_stride) = match self.variant {
            MobileNetVariant::ImageNet => (2, 2),
            MobileNetVariant::Cifar => (1, 1),
        };
        let mut channels = make_divisible(32.0 * self.width_multiplier);
        let last_channels = make_divisible(1280.0 * self.width_multiplier.max(1.0));
        let mut features = vec![Feature::Conv(conv_norm(
            self.in_channels,
            channels,
            3,
            stem_stride,
            1,
            device,
        ))];
        for (stage, [expansion, c, repeats, stride]) in IMAGENET_SETTINGS.into_iter().enumerate() {
            let out_channels = make_divisible(c as f64 * self.width_multiplier);
            let first_stride = if stage == 1 { second_stride } else { stride };
            for index in 0..repeats {
                let stride = if index == 0 { first_stride } else { 1 };
                features.push(Feature::InvertedResidual(InvertedResidual::new(
                    channels,
                    out_channels,
                    stride,
                    expansion,
                    device,
                )));
                channels = out_channels;
            }
        }
        features.push(Feature::Conv(conv_norm(
            channels,
            last_channels,
            1,
            1,
            1,
            device,
        )));
        let classifier = LinearConfig::new(last_channels, self.num_classes)
            .with_initializer(Initializer::Normal {
                mean: 0.0,
                std: 0.01,
            })
            .init(device);
        let network = MobileNetV2 {
            features,
            classifier: (DropoutConfig::new(0.2).init(), classifier),
            input_shape: [self.in_channels, self.input_size, self.input_size],
            unit: self.unit,
            removed: BTreeSet::new(),
        };
        let [_, h, w] = network.head_input_shape();
        if h == 0 || w == 0 {
            return Err(ModelError::InvalidConfig(format!(
                "input size {} is too small for MobileNetV2",
                self.input_size
            )));
        }
        Ok(network)
    }
}

/// A convolution, batch norm and ReLU6 (torchvision's `Conv2dNormActivation`).
pub(crate) type ConvNorm = (Conv2d, BatchNorm);

fn conv_norm(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    groups: usize,
    device: &Device,
) -> ConvNorm {
    let pad = (kernel - 1) / 2;
    (
        Conv2dConfig::new([in_channels, out_channels], [kernel, kernel])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .with_groups(groups)
            .with_bias(false)
            .with_initializer(Initializer::KaimingNormal {
                gain: std::f64::consts::SQRT_2,
                fan_out_only: true,
            })
            .init(device),
        BatchNormConfig::new(out_channels).init(device),
    )
}

fn conv_norm_forward((conv, norm): &ConvNorm, input: Tensor<4>) -> Tensor<4> {
    batch_norm_rectified(norm, conv2d(conv, input), None, Rectifier::Relu6)
}

fn conv_norm_cost((conv, norm): &ConvNorm, shape: [usize; 3]) -> (Cost, [usize; 3]) {
    let out = conv.output_shape(shape);
    let cost = Cost {
        parameters: conv.trainable_parameters() + norm.trainable_parameters(),
        macs: conv.macs(shape),
        norm_pool_macs: norm.norm_pool_macs(out),
    };
    (cost, out)
}

/// One entry of torchvision's `features` list.
// burn has no `Module` for `Box`, so the variants stay unboxed; the modules are built once and
// moved by value only between training steps.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub(crate) enum Feature {
    /// The stem or the final 1x1 convolution.
    Conv(ConvNorm),
    /// An inverted residual block.
    InvertedResidual(InvertedResidual),
}

/// One layer of an inverted residual's `conv` list.
// burn has no `Module` for `Box`, so the variants stay unboxed; the modules are built once and
// moved by value only between training steps.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub(crate) enum ResidualLayer {
    /// The expansion or the depthwise convolution, with batch norm and ReLU6.
    Activated(ConvNorm),
    /// The linear 1x1 projection.
    Projection(Conv2d),
    /// The projection's batch norm.
    Norm(BatchNorm),
}

/// torchvision's `InvertedResidual`: an optional 1x1 expansion, a 3x3 depthwise convolution, a
/// linear 1x1 projection, and a residual connection when the shape is preserved.
#[derive(Module, Debug)]
pub struct InvertedResidual {
    pub(crate) conv: Vec<ResidualLayer>,
    #[module(skip)]
    pub(crate) residual: bool,
}

impl InvertedResidual {
    fn new(
        in_channels: usize,
        out_channels: usize,
        stride: usize,
        expansion: usize,
        device: &Device,
    ) -> Self {
        let hidden = in_channels * expansion;
        let mut conv = Vec::with_capacity(4);
        if expansion != 1 {
            conv.push(ResidualLayer::Activated(conv_norm(
                in_channels,
                hidden,
                1,
                1,
                1,
                device,
            )));
        }
        conv.push(ResidualLayer::Activated(conv_norm(
            hidden, hidden, 3, stride, hidden, device,
        )));
        let projection = conv_norm(hidden, out_channels, 1, 1, 1, device);
        conv.push(ResidualLayer::Projection(projection.0));
        conv.push(ResidualLayer::Norm(projection.1));
        Self {
            conv,
            residual: stride == 1 && in_channels == out_channels,
        }
    }

    /// The index of the depthwise layer in `conv`.
    pub(crate) fn depthwise_index(&self) -> usize {
        self.conv.len() - 3
    }

    /// The block's output; with `skip_depthwise`, the depthwise layer is identity; with
    /// `capture`, the depthwise layer's input and output are returned too.
    fn forward(
        &self,
        input: Tensor<4>,
        skip_depthwise: bool,
        capture: bool,
    ) -> (Tensor<4>, Option<(Tensor<4>, Tensor<4>)>) {
        let depthwise = self.depthwise_index();
        let mut captured = None;
        let shortcut = self.residual.then(|| input.clone());
        let mut x = input;
        for (index, layer) in self.conv.iter().enumerate() {
            let at_depthwise = index == depthwise;
            if at_depthwise && skip_depthwise {
                continue;
            }
            let layer_input = (at_depthwise && capture).then(|| x.clone());
            x = match layer {
                ResidualLayer::Activated(unit) => conv_norm_forward(unit, x),
                ResidualLayer::Projection(conv) => conv2d(conv, x),
                ResidualLayer::Norm(norm) => batch_norm(norm, x),
            };
            if let Some(layer_input) = layer_input {
                captured = Some((layer_input, x.clone()));
            }
        }
        let output = match shortcut {
            Some(shortcut) => shortcut + x,
            None => x,
        };
        (output, captured)
    }

    /// The cost of the depthwise unit and of the rest, and the output shape, for an input of
    /// `shape`. Removing a (shape-preserving) depthwise unit changes neither the rest nor the
    /// output shape.
    fn costs(&self, shape: [usize; 3]) -> DepthwiseSplit {
        let depthwise = self.depthwise_index();
        let mut split = DepthwiseSplit {
            depthwise: Cost::default(),
            rest: Cost::default(),
            depthwise_input: shape,
            depthwise_output: shape,
            output: shape,
        };
        let mut current = shape;
        for (index, layer) in self.conv.iter().enumerate() {
            let (cost, out) = match layer {
                ResidualLayer::Activated(unit) => conv_norm_cost(unit, current),
                ResidualLayer::Projection(conv) => (
                    Cost {
                        parameters: conv.trainable_parameters(),
                        macs: conv.macs(current),
                        norm_pool_macs: 0,
                    },
                    conv.output_shape(current),
                ),
                ResidualLayer::Norm(norm) => (
                    Cost {
                        parameters: norm.trainable_parameters(),
                        macs: 0,
                        norm_pool_macs: norm.norm_pool_macs(current),
                    },
                    current,
                ),
            };
            if index == depthwise {
                split.depthwise = cost;
                split.depthwise_input = current;
                split.depthwise_output = out;
            } else {
                split.rest = split.rest + cost;
            }
            current = out;
        }
        split.output = current;
        split
    }
}

/// An inverted residual's cost, split into its depthwise unit and the rest.
struct DepthwiseSplit {
    depthwise: Cost,
    rest: Cost,
    depthwise_input: [usize; 3],
    depthwise_output: [usize; 3],
    output: [usize; 3],
}

/// MobileNetV2 with torchvision's names; its removable blocks are the inverted residuals
/// (`features.N`) or their depthwise units (`features.N.conv.K`), see [`RemovalUnit`].
#[derive(Module, Debug)]
pub struct MobileNetV2 {
    pub(crate) features: Vec<Feature>,
    pub(crate) classifier: (Dropout, Linear),
    /// One sample's input shape `[C, H, W]`.
    #[module(skip)]
    input_shape: [usize; 3],
    /// What the removable blocks are.
    #[module(skip)]
    pub(crate) unit: RemovalUnit,
    /// Blocks replaced by identity.
    #[module(skip)]
    removed: BTreeSet<String>,
}

impl MobileNetV2 {
    /// The name of the removable block of feature `index`.
    pub(crate) fn block_name(&self, index: usize, block: &InvertedResidual) -> String {
        match self.unit {
            RemovalUnit::Block => format!("features.{index}"),
            RemovalUnit::Depthwise => format!("features.{index}.conv.{}", block.depthwise_index()),
        }
    }

    /// Blocks and costs of every feature, walking the shapes from the input: the blocks, the cost
    /// of everything else, and the shape entering the classifier's pooling.
    fn walk(&self) -> (Vec<BlockInfo>, Cost, [usize; 3]) {
        let mut shape = self.input_shape;
        let mut blocks = Vec::new();
        let mut rest = Cost::default();
        for (index, feature) in self.features.iter().enumerate() {
            match feature {
                Feature::Conv(unit) => {
                    let (cost, out) = conv_norm_cost(unit, shape);
                    rest = rest + cost;
                    shape = out;
                }
                Feature::InvertedResidual(block) => {
                    let name = self.block_name(index, block);
                    let removed = self.removed.contains(&name);
                    let split = block.costs(shape);
                    let info = |input_shape, output_shape, cost: Cost| BlockInfo {
                        name: name.clone(),
                        input_shape,
                        output_shape,
                        parameters: cost.parameters,
                        macs: cost.macs,
                        norm_pool_macs: cost.norm_pool_macs,
                        collapsible: input_shape == output_shape,
                        removed,
                    };
                    // Only shape-preserving blocks and units can be removed, so removal changes
                    // neither the shapes nor, for depthwise units, the rest of the block's cost.
                    match self.unit {
                        RemovalUnit::Block => {
                            blocks.push(info(shape, split.output, split.depthwise + split.rest));
                        }
                        RemovalUnit::Depthwise => {
                            blocks.push(info(
                                split.depthwise_input,
                                split.depthwise_output,
                                split.depthwise,
                            ));
                            rest = rest + split.rest;
                        }
                    }
                    shape = split.output;
                }
            }
        }
        (blocks, rest, shape)
    }

    fn head_input_shape(&self) -> [usize; 3] {
        self.walk().2
    }
}

impl BlockNetwork for MobileNetV2 {
    fn input_shape(&self) -> [usize; 3] {
        self.input_shape
    }

    fn blocks(&self) -> Vec<BlockInfo> {
        self.walk().0
    }

    fn forward_capturing(
        &self,
        input: Tensor<4>,
        capture: &BTreeSet<String>,
    ) -> (Tensor<2>, Vec<BlockFeatures>) {
        let mut x = input;
        let mut captured = Vec::new();
        for (index, feature) in self.features.iter().enumerate() {
            x = match feature {
                Feature::Conv(unit) => conv_norm_forward(unit, x),
                Feature::InvertedResidual(block) => {
                    let name = self.block_name(index, block);
                    let removed = self.removed.contains(&name);
                    let wanted = capture.contains(&name) && !removed;
                    match self.unit {
                        RemovalUnit::Block if removed => x,
                        RemovalUnit::Block => {
                            let (output, _) = block.forward(x.clone(), false, false);
                            if wanted {
                                captured.push(BlockFeatures {
                                    name,
                                    input: x,
                                    output: output.clone(),
                                });
                            }
                            output
                        }
                        RemovalUnit::Depthwise => {
                            let (output, inner) = block.forward(x, removed, wanted);
                            if let Some((input, inner_output)) = inner {
                                captured.push(BlockFeatures {
                                    name,
                                    input,
                                    output: inner_output,
                                });
                            }
                            output
                        }
                    }
                }
            };
        }
        let pooled: Tensor<2> = x.mean_dim(3).mean_dim(2).flatten(1, 3);
        let (dropout, classifier) = &self.classifier;
        (linear(classifier, dropout.forward(pooled)), captured)
    }

    fn remove_blocks(&mut self, names: &[String]) -> Result<(), ModelError> {
        check_removable(&self.blocks(), names)?;
        self.removed.extend(names.iter().cloned());
        Ok(())
    }

    fn removed_blocks(&self) -> BTreeSet<String> {
        self.removed.clone()
    }

    fn stem_and_head(&self) -> Cost {
        let (_, rest, [c, h, w]) = self.walk();
        let linear = &self.classifier.1;
        rest + Cost {
            parameters: linear.trainable_parameters(),
            macs: linear.macs([c, 1, 1]),
            norm_pool_macs: (c * h * w) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::default_device;

    #[test]
    fn make_divisible_matches_torchvision() {
        assert_eq!(make_divisible(32.0), 32);
        assert_eq!(make_divisible(8.0), 8);
        assert_eq!(make_divisible(4.0), 8);
        assert_eq!(make_divisible(24.0 * 0.35), 8);
        assert_eq!(make_divisible(96.0 * 0.75), 72);
        assert_eq!(make_divisible(320.0 * 1.4), 448);
        // 0.9 rule: 40 * 0.55 = 22 rounds to 24.
        assert_eq!(make_divisible(22.0), 24);
    }

    #[test]
    fn torchvision_mobilenet_v2_counts() {
        let net = MobileNetV2Config::new(MobileNetVariant::ImageNet, 1000, 224)
            .init(&default_device())
            .unwrap();
        assert_eq!(net.total_parameters(), 3_504_872);
        // torchvision's conv + linear MACs at 224x224, from tools/make_torch_fixtures.py.
        assert_eq!(net.total_macs(), 300_774_272);
        let blocks = net.blocks();
        assert_eq!(blocks.len(), 17);
        let collapsible = blocks.iter().filter(|b| b.collapsible).count();
        assert_eq!(collapsible, 10);
    }

    #[test]
    fn the_regulariser_gradient_reaches_every_depthwise_unit() {
        let device = crate::device::autodiff_device();
        let mut config = MobileNetV2Config::new(MobileNetVariant::Cifar, 10, 8);
        config.width_multiplier = 0.25;
        config.unit = RemovalUnit::Depthwise;
        let net = config.init(&device).unwrap();
        let capture: BTreeSet<String> = net.paper_regularised();
        assert_eq!(capture.len(), 14);
        let input = Tensor::<4>::random(
            [6, 3, 8, 8],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let regulariser = crate::models::test_support::regulariser(&net, input, &capture);
        let grads = regulariser.backward();
        for (index, feature) in net.features.iter().enumerate() {
            let Feature::InvertedResidual(block) = feature else {
                continue;
            };
            if !capture.contains(&net.block_name(index, block)) {
                continue;
            }
            let ResidualLayer::Activated((conv, _)) = &block.conv[block.depthwise_index()] else {
                panic!("features.{index}: the depthwise layer is not a conv + BN + ReLU6");
            };
            crate::models::test_support::assert_nonzero_gradient(
                conv.weight.grad(&grads),
                &format!("features.{index}"),
            );
        }
    }

    #[test]
    fn depthwise_units_cover_every_block_and_keep_totals() {
        let device = default_device();
        let mut config = MobileNetV2Config::new(MobileNetVariant::Cifar, 10, 32);
        config.width_multiplier = 0.25;
        config.unit = RemovalUnit::Depthwise;
        let mut net = config.init(&device).unwrap();
        let blocks = net.blocks();
        assert_eq!(blocks.len(), 17);
        assert_eq!(blocks[0].name, "features.1.conv.0");
        assert_eq!(blocks[1].name, "features.2.conv.1");
        // Stride-2 depthwise units change the shape: features.4, .7, .14 in the CIFAR layout.
        let fixed: Vec<&str> = blocks
            .iter()
            .filter(|b| !b.collapsible)
            .map(|b| b.name.as_str())
            .collect();
        assert_eq!(
            fixed,
            [
                "features.4.conv.1",
                "features.7.conv.1",
                "features.14.conv.1"
            ]
        );
        let before = net.total_cost();
        let target = &blocks[5];
        net.remove_blocks(std::slice::from_ref(&target.name))
            .unwrap();
        let after = net.total_cost();
        assert_eq!(after.parameters, before.parameters - target.parameters);
        assert_eq!(after.macs, before.macs - target.macs);
        let input = Tensor::<4>::zeros([2, 3, 32, 32], &device);
        let capture = blocks.iter().map(|b| b.name.clone()).collect();
        let (logits, features) = net.forward_capturing(input, &capture);
        assert_eq!(logits.dims(), [2, 10]);
        assert_eq!(features.len(), 16);
        for feature in &features {
            let info = blocks.iter().find(|b| b.name == feature.name).unwrap();
            let [_, c, h, w] = feature.input.dims();
            assert_eq!([c, h, w], info.input_shape, "{}", info.name);
            let [_, c, h, w] = feature.output.dims();
            assert_eq!([c, h, w], info.output_shape, "{}", info.name);
        }
    }
}
