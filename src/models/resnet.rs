//! ResNet-18 and ResNet-34 with torchvision's layout and parameter names.

use std::collections::BTreeSet;

use crate::kernels::{
    Rectifier, batch_norm, batch_norm_rectified, conv2d, linear, max_pool2d, planar_gradient,
};
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};

use super::cost::{LayerCost, TrainableParameters};
use super::{BlockFeatures, BlockInfo, BlockNetwork, Cost, ModelError, check_removable};

/// The first layers of the network.
#[derive(Config, Copy, Debug, PartialEq, Eq)]
pub enum Stem {
    /// The paper's CIFAR stem: 3x3 convolution at stride 1, batch norm, ReLU, 3x3 max-pool at stride 2.
    Cifar,
    /// torchvision's ImageNet stem: 7x7 convolution at stride 2, batch norm, ReLU, 3x3 max-pool at
    /// stride 2.
    ImageNet,
}

/// How many BasicBlocks each stage has.
#[derive(Config, Copy, Debug, PartialEq, Eq)]
pub enum ResNetDepth {
    /// ResNet-18: 2, 2, 2, 2.
    ResNet18,
    /// ResNet-34: 3, 4, 6, 3.
    ResNet34,
}

impl ResNetDepth {
    fn blocks_per_stage(self) -> [usize; 4] {
        match self {
            Self::ResNet18 => [2, 2, 2, 2],
            Self::ResNet34 => [3, 4, 6, 3],
        }
    }
}

/// Everything that determines a ResNet's architecture.
#[derive(Config, Debug, PartialEq)]
pub struct ResNetConfig {
    /// ResNet-18 or ResNet-34.
    pub depth: ResNetDepth,
    /// CIFAR or ImageNet stem.
    pub stem: Stem,
    /// Channels of the input images.
    #[config(default = 3)]
    pub in_channels: usize,
    /// Number of classes.
    #[config(default = 10)]
    pub num_classes: usize,
    /// Channels of the first stage; the others have 2x, 4x and 8x as many (64 in the paper).
    #[config(default = 64)]
    pub width: usize,
    /// Height and width of the (square) input images.
    #[config(default = 32)]
    pub input_size: usize,
}

impl ResNetConfig {
    /// Builds the network with burn's default initialisation (PyTorch's layer defaults: scaled
    /// uniform weights; unit batch-norm scales).
    pub fn init(&self, device: &Device) -> Result<ResNet, ModelError> {
        if self.in_channels == 0 || self.num_classes == 0 || self.width == 0 {
            return Err(ModelError::InvalidConfig(
                "input channels, classes and width must be positive".into(),
            ));
        }
        if self.input_size == 0 {
            return Err(ModelError::InvalidConfig(
                "input size 0 is too small for this stem".into(),
            ));
        }
        let (kernel, stride, pad) = match self.stem {
            Stem::Cifar => (3, 1, 1),
            Stem::ImageNet => (7, 2, 3),
        };
        let conv1 = Conv2dConfig::new([self.in_channels, self.width], [kernel, kernel])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .with_bias(false)
            .init(device);
        let maxpool = MaxPool2dConfig::new([3, 3])
            .with_strides([2, 2])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init();
        let mut in_channels = self.width;
        let stages: Vec<Vec<BasicBlock>> = self
            .depth
            .blocks_per_stage()
            .iter()
            .enumerate()
            .map(|(stage, &count)| {
                let out_channels = self.width << stage;
                let first_stride = if stage == 0 { 1 } else { 2 };
                (0..count)
                    .map(|index| {
                        let stride = if index == 0 { first_stride } else { 1 };
                        let block = BasicBlock::new(in_channels, out_channels, stride, device);
                        in_channels = out_channels;
                        block
                    })
                    .collect()
            })
            .collect();
        let [layer1, layer2, layer3, layer4]: [Vec<BasicBlock>; 4] =
            stages.try_into().expect("four stages");
        let network = ResNet {
            conv1,
            bn1: BatchNormConfig::new(self.width).init(device),
            maxpool,
            layer1,
            layer2,
            layer3,
            layer4,
            avgpool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            fc: LinearConfig::new(in_channels, self.num_classes).init(device),
            input_shape: [self.in_channels, self.input_size, self.input_size],
            removed: BTreeSet::new(),
        };
        let [_, h, w] = network.stem_output_shape();
        if h == 0 || w == 0 {
            return Err(ModelError::InvalidConfig(format!(
                "input size {} is too small for this stem",
                self.input_size
            )));
        }
        Ok(network)
    }
}

/// torchvision's BasicBlock: two 3x3 convolutions with batch norm, and a shortcut that is the
/// identity or, when the shape changes, a strided 1x1 convolution with batch norm (`downsample`).
#[derive(Module, Debug)]
pub struct BasicBlock {
    pub(crate) conv1: Conv2d,
    pub(crate) bn1: BatchNorm,
    pub(crate) conv2: Conv2d,
    pub(crate) bn2: BatchNorm,
    pub(crate) downsample: Option<(Conv2d, BatchNorm)>,
}

impl BasicBlock {
    fn new(in_channels: usize, out_channels: usize, stride: usize, device: &Device) -> Self {
        let conv3x3 = |from: usize, stride: usize| {
            Conv2dConfig::new([from, out_channels], [3, 3])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(false)
                .init(device)
        };
        let downsample = (stride != 1 || in_channels != out_channels).then(|| {
            (
                Conv2dConfig::new([in_channels, out_channels], [1, 1])
                    .with_stride([stride, stride])
                    .with_bias(false)
                    .init(device),
                BatchNormConfig::new(out_channels).init(device),
            )
        });
        Self {
            conv1: conv3x3(in_channels, stride),
            bn1: BatchNormConfig::new(out_channels).init(device),
            conv2: conv3x3(out_channels, 1),
            bn2: BatchNormConfig::new(out_channels).init(device),
            downsample,
        }
    }

    fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let relu = Rectifier::Relu;
        // The input feeds two branches: each hands its gradient back in planes, which flex sums
        // in place (two position-major gradients it would sum element by element into a new
        // tensor).
        let branch = planar_gradient(input.clone());
        let out = batch_norm_rectified(&self.bn1, conv2d(&self.conv1, branch), None, relu);
        let out = conv2d(&self.conv2, out);
        let input = planar_gradient(input);
        let shortcut = match &self.downsample {
            Some((conv, bn)) => batch_norm(bn, conv2d(conv, input)),
            None => input,
        };
        batch_norm_rectified(&self.bn2, out, Some(shortcut), relu)
    }

    fn output_shape(&self, shape: [usize; 3]) -> [usize; 3] {
        self.conv2.output_shape(self.conv1.output_shape(shape))
    }

    fn parameters(&self) -> usize {
        let shortcut = self.downsample.as_ref().map_or(0, |(conv, bn)| {
            conv.trainable_parameters() + bn.trainable_parameters()
        });
        self.conv1.trainable_parameters()
            + self.bn1.trainable_parameters()
            + self.conv2.trainable_parameters()
            + self.bn2.trainable_parameters()
            + shortcut
    }

    fn norm_pool_macs(&self, shape: [usize; 3]) -> u64 {
        let out = self.output_shape(shape);
        let norms = if self.downsample.is_some() { 3 } else { 2 };
        norms * out.iter().product::<usize>() as u64
    }

    fn macs(&self, shape: [usize; 3]) -> u64 {
        let shortcut = self
            .downsample
            .as_ref()
            .map_or(0, |(conv, _)| conv.macs(shape));
        self.conv1.macs(shape) + self.conv2.macs(self.conv1.output_shape(shape)) + shortcut
    }
}

/// A ResNet with BasicBlocks (ResNet-18 / ResNet-34), torchvision's module names, and removable
/// blocks named `layerS.I`.
#[derive(Module, Debug)]
pub struct ResNet {
    pub(crate) conv1: Conv2d,
    pub(crate) bn1: BatchNorm,
    pub(crate) maxpool: MaxPool2d,
    layer1: Vec<BasicBlock>,
    layer2: Vec<BasicBlock>,
    layer3: Vec<BasicBlock>,
    layer4: Vec<BasicBlock>,
    avgpool: AdaptiveAvgPool2d,
    pub(crate) fc: Linear,
    /// One sample's input shape `[C, H, W]`, which block shapes and costs are computed for.
    #[module(skip)]
    input_shape: [usize; 3],
    /// Blocks replaced by identity.
    #[module(skip)]
    removed: BTreeSet<String>,
}

impl ResNet {
    /// The blocks in forward order, with their names.
    pub(crate) fn named_blocks(&self) -> impl Iterator<Item = (String, &BasicBlock)> {
        [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
            .into_iter()
            .enumerate()
            .flat_map(|(stage, blocks)| {
                blocks
                    .iter()
                    .enumerate()
                    .map(move |(index, block)| (format!("layer{}.{index}", stage + 1), block))
            })
    }

    fn stem_output_shape(&self) -> [usize; 3] {
        self.maxpool
            .output_shape(self.conv1.output_shape(self.input_shape))
    }
}

impl BlockNetwork for ResNet {
    fn input_shape(&self) -> [usize; 3] {
        self.input_shape
    }

    fn blocks(&self) -> Vec<BlockInfo> {
        let mut shape = self.stem_output_shape();
        self.named_blocks()
            .map(|(name, block)| {
                let output_shape = block.output_shape(shape);
                let info = BlockInfo {
                    removed: self.removed.contains(&name),
                    name,
                    input_shape: shape,
                    output_shape,
                    parameters: block.parameters(),
                    macs: block.macs(shape),
                    norm_pool_macs: block.norm_pool_macs(shape),
                    collapsible: output_shape == shape,
                };
                shape = output_shape;
                info
            })
            .collect()
    }

    fn forward_capturing(
        &self,
        input: Tensor<4>,
        capture: &BTreeSet<String>,
    ) -> (Tensor<2>, Vec<BlockFeatures>) {
        let stem = conv2d(&self.conv1, input);
        let mut x = batch_norm_rectified(&self.bn1, stem, None, Rectifier::Relu);
        x = max_pool2d(&self.maxpool, x);
        let mut captured = Vec::new();
        for (name, block) in self.named_blocks() {
            if self.removed.contains(&name) {
                continue;
            }
            let output = block.forward(x.clone());
            if capture.contains(&name) {
                captured.push(BlockFeatures {
                    name,
                    input: x,
                    output: output.clone(),
                });
            }
            x = output;
        }
        let pooled: Tensor<2> = self.avgpool.forward(x).flatten(1, 3);
        (linear(&self.fc, pooled), captured)
    }

    fn remove_blocks(&mut self, names: &[String]) -> Result<(), ModelError> {
        check_removable(&self.blocks(), names)?;
        self.removed.extend(names.iter().cloned());
        Ok(())
    }

    fn removed_blocks(&self) -> BTreeSet<String> {
        self.removed.clone()
    }

    /// The paper's choice for ResNets: every collapsible block except the first of its stage (in
    /// ResNet-18, the four `layerS.1`).
    fn paper_regularised(&self) -> BTreeSet<String> {
        self.blocks()
            .into_iter()
            .filter(|b| b.collapsible && !b.removed && !b.name.ends_with(".0"))
            .map(|b| b.name)
            .collect()
    }

    fn stem_and_head(&self) -> Cost {
        let stem_shape = self.conv1.output_shape(self.input_shape);
        let last_shape = self
            .blocks()
            .last()
            .map_or(self.stem_output_shape(), |b| b.output_shape);
        Cost {
            parameters: self.conv1.trainable_parameters()
                + self.bn1.trainable_parameters()
                + self.fc.trainable_parameters(),
            macs: self.conv1.macs(self.input_shape) + self.fc.macs(last_shape),
            norm_pool_macs: self.bn1.norm_pool_macs(stem_shape)
                + self.maxpool.norm_pool_macs(stem_shape)
                + self.avgpool.norm_pool_macs(last_shape),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::default_device;

    fn cifar18() -> ResNet {
        ResNetConfig::new(ResNetDepth::ResNet18, Stem::Cifar)
            .init(&default_device())
            .unwrap()
    }

    #[test]
    fn cifar_resnet18_matches_the_paper_and_torchvision() {
        let net = cifar18();
        assert_eq!(net.total_parameters(), 11_173_962);
        assert_eq!(net.total_macs(), 140_186_624);
        // Batch norms 65 536 + 65 536 + 40 960 + 20 480 + 10 240, max-pool 9 x 16 384,
        // average pool 2 048 (hand count, see `Cost`).
        assert_eq!(net.total_cost().norm_pool_macs, 352_256);
        let blocks = net.blocks();
        let collapsible: Vec<&str> = blocks
            .iter()
            .filter(|b| b.collapsible)
            .map(|b| b.name.as_str())
            .collect();
        assert_eq!(
            collapsible,
            ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
        );
        assert_eq!(blocks[0].input_shape, [64, 16, 16]);
        assert_eq!(blocks.last().unwrap().output_shape, [512, 2, 2]);
    }

    #[test]
    fn removing_the_paper_blocks_gives_the_paper_macs() {
        let mut net = cifar18();
        let paper: Vec<String> = ["layer1.1", "layer2.1", "layer3.1", "layer4.1"]
            .map(String::from)
            .to_vec();
        let before_params = net.total_parameters();
        let removed_params: usize = net
            .blocks()
            .iter()
            .filter(|b| paper.contains(&b.name))
            .map(|b| b.parameters)
            .sum();
        net.remove_blocks(&paper).unwrap();
        // The paper reports 64.69 M MACs for this removal.
        assert_eq!(
            (net.total_macs() as f64 / 1e6 * 100.0).round() / 100.0,
            64.69
        );
        assert_eq!(net.total_parameters(), before_params - removed_params);
        assert_eq!(net.removed_blocks().len(), 4);
    }

    #[test]
    fn only_shape_preserving_known_blocks_can_be_removed() {
        let mut net = cifar18();
        match net.remove_blocks(&["layer2.0".to_string()]) {
            Err(ModelError::NotCollapsible { name, .. }) => assert_eq!(name, "layer2.0"),
            other => panic!("expected NotCollapsible, got {other:?}"),
        }
        match net.remove_blocks(&["layer9.0".to_string()]) {
            Err(ModelError::UnknownBlock { known, .. }) => assert_eq!(known.len(), 8),
            other => panic!("expected UnknownBlock, got {other:?}"),
        }
        assert!(net.removed_blocks().is_empty());
    }

    #[test]
    fn the_regulariser_gradient_reaches_every_regularised_block() {
        let device = crate::device::autodiff_device();
        let net = ResNetConfig::new(ResNetDepth::ResNet18, Stem::Cifar)
            .with_width(4)
            .with_input_size(8)
            .init(&device)
            .unwrap();
        let capture: BTreeSet<String> = net
            .blocks()
            .into_iter()
            .filter(|b| b.collapsible)
            .map(|b| b.name)
            .collect();
        let input = Tensor::<4>::random(
            [6, 3, 8, 8],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let regulariser = crate::models::test_support::regulariser(&net, input, &capture);
        let grads = regulariser.backward();
        for (name, block) in net.named_blocks().filter(|(n, _)| capture.contains(n)) {
            for (which, weight) in [
                ("conv1", &block.conv1.weight),
                ("conv2", &block.conv2.weight),
            ] {
                crate::models::test_support::assert_nonzero_gradient(
                    weight.grad(&grads),
                    &format!("{name}.{which}"),
                );
            }
        }
    }

    #[test]
    fn every_variant_has_consistent_shapes() {
        let device = default_device();
        for depth in [ResNetDepth::ResNet18, ResNetDepth::ResNet34] {
            for (stem, size, channels) in [(Stem::Cifar, 28, 1), (Stem::ImageNet, 64, 3)] {
                let net = ResNetConfig::new(depth, stem)
                    .with_in_channels(channels)
                    .with_input_size(size)
                    .with_width(8)
                    .with_num_classes(7)
                    .init(&device)
                    .unwrap();
                let blocks = net.blocks();
                let expected = match depth {
                    ResNetDepth::ResNet18 => 8,
                    ResNetDepth::ResNet34 => 16,
                };
                assert_eq!(blocks.len(), expected);
                for pair in blocks.windows(2) {
                    assert_eq!(pair[0].output_shape, pair[1].input_shape);
                }
                let input = Tensor::<4>::zeros([2, channels, size, size], &device);
                let capture: BTreeSet<String> = blocks.iter().map(|b| b.name.clone()).collect();
                let (logits, features) = net.forward_capturing(input, &capture);
                assert_eq!(logits.dims(), [2, 7]);
                assert_eq!(features.len(), expected);
                for (info, feature) in blocks.iter().zip(&features) {
                    let [_, c, h, w] = feature.output.dims();
                    assert_eq!([c, h, w], info.output_shape, "{}", info.name);
                    let [_, c, h, w] = feature.input.dims();
                    assert_eq!([c, h, w], info.input_shape, "{}", info.name);
                }
            }
        }
    }
}
