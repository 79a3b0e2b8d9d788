//! A serialisable description of a model, from which the network is rebuilt (runs, manifests).

use burn::tensor::Device;

use super::mobilenet::{MobileNetV2Config, MobileNetVariant, RemovalUnit};
use super::network::Network;
use super::resnet::{ResNetConfig, ResNetDepth, Stem};
use super::swin::{FeaturePairing, SwinConfig};
use super::{BlockNetwork, ModelError};

/// The architectures lacoot builds.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    /// ResNet-18 (BasicBlocks 2, 2, 2, 2).
    Resnet18,
    /// ResNet-34 (BasicBlocks 3, 4, 6, 3).
    Resnet34,
    /// MobileNetV2, torchvision's ImageNet layout (stem at stride 2).
    Mobilenetv2,
    /// MobileNetV2, the paper's CIFAR layout (stem and second stage at stride 1).
    #[value(name = "mobilenetv2-cifar")]
    #[serde(rename = "mobilenetv2-cifar")]
    Mobilenetv2Cifar,
    /// Swin-T (torchvision's `swin_t`: depths 2, 2, 6, 2, window 7).
    SwinT,
}

impl Architecture {
    /// Channels of the first layer at full width: the first stage of a ResNet (64), the stem of
    /// MobileNetV2 (32), the patch embedding of Swin-T (96).
    pub fn default_width(self) -> usize {
        match self {
            Self::Resnet18 | Self::Resnet34 => 64,
            Self::Mobilenetv2 | Self::Mobilenetv2Cifar => 32,
            Self::SwinT => 96,
        }
    }

    fn is_resnet(self) -> bool {
        matches!(self, Self::Resnet18 | Self::Resnet34)
    }
}

/// The stem of a ResNet.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum StemKind {
    /// 3x3 stride-1 convolution, then a 3x3 stride-2 max-pool (the paper's CIFAR variant).
    Cifar,
    /// 7x7 stride-2 convolution, then a 3x3 stride-2 max-pool (torchvision's).
    Imagenet,
}

/// The widest network lacoot builds, as a multiple of the architecture's full width: wider ones
/// do not fit in memory.
const MAX_WIDTH_FACTOR: usize = 16;
/// The smallest input side every architecture handles (Swin-T's 4x4 patches).
const MIN_INPUT_SIZE: usize = 4;
/// The largest input side (beyond it, feature maps no longer fit in memory).
const MAX_INPUT_SIZE: usize = 4096;
/// The most input channels.
const MAX_CHANNELS: usize = 64;
/// The most classes.
const MAX_CLASSES: usize = 100_000;

/// Everything needed to rebuild a network: architecture, width, options and the input it was built
/// for.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelSpec {
    /// The architecture.
    pub architecture: Architecture,
    /// The stem (ResNets only; the CIFAR stem when absent).
    #[serde(default)]
    pub stem: Option<StemKind>,
    /// Channels of the first layer (see [`Architecture::default_width`]); MobileNetV2 scales every
    /// layer by `width / 32`, as torchvision's `width_mult`.
    pub width: usize,
    /// Channels of the input images.
    pub in_channels: usize,
    /// Height and width of the (square) input images.
    pub input_size: usize,
    /// Number of classes.
    pub num_classes: usize,
    /// What a removable block is (MobileNetV2 only; other networks have whole blocks).
    #[serde(default)]
    pub unit: RemovalUnit,
    /// Which features of a block are compared (Swin-T only; other networks compare the block's
    /// input and output).
    #[serde(default)]
    pub pairing: FeaturePairing,
    /// Blocks replaced by identity.
    #[serde(default)]
    pub removed_blocks: Vec<String>,
}

impl ModelSpec {
    /// A spec for `architecture` at its full width, with whole blocks compared by input and output.
    pub fn new(
        architecture: Architecture,
        in_channels: usize,
        input_size: usize,
        num_classes: usize,
    ) -> Self {
        Self {
            architecture,
            stem: None,
            width: architecture.default_width(),
            in_channels,
            input_size,
            num_classes,
            unit: RemovalUnit::Block,
            pairing: FeaturePairing::Block,
            removed_blocks: Vec::new(),
        }
    }

    /// Checks that the options belong to the architecture.
    fn check_options(&self) -> Result<(), ModelError> {
        let arch = self.architecture;
        let problem = if self.stem.is_some() && !arch.is_resnet() {
            Some("--stem applies to ResNets only")
        } else if self.unit == RemovalUnit::Depthwise
            && !matches!(
                arch,
                Architecture::Mobilenetv2 | Architecture::Mobilenetv2Cifar
            )
        {
            Some("depthwise removal units exist in MobileNetV2 only")
        } else if self.pairing == FeaturePairing::MlpBranch && arch != Architecture::SwinT {
            Some("the MLP-branch pairing exists in Swin-T only")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(ModelError::InvalidConfig(problem.into()));
        }
        let max_width = MAX_WIDTH_FACTOR * arch.default_width();
        let limits = [
            (
                !(1..=max_width).contains(&self.width),
                format!(
                    "width must be between 1 and {max_width} ({MAX_WIDTH_FACTOR}x the full width), not {}",
                    self.width
                ),
            ),
            (
                !(MIN_INPUT_SIZE..=MAX_INPUT_SIZE).contains(&self.input_size),
                format!(
                    "input size must be between {MIN_INPUT_SIZE} and {MAX_INPUT_SIZE} pixels, not {}",
                    self.input_size
                ),
            ),
            (
                !(1..=MAX_CHANNELS).contains(&self.in_channels),
                format!(
                    "input channels must be between 1 and {MAX_CHANNELS}, not {}",
                    self.in_channels
                ),
            ),
            (
                !(2..=MAX_CLASSES).contains(&self.num_classes),
                format!(
                    "classes must be between 2 and {MAX_CLASSES}, not {}",
                    self.num_classes
                ),
            ),
        ];
        match limits.into_iter().find(|(bad, _)| *bad) {
            Some((_, problem)) => Err(ModelError::InvalidConfig(problem)),
            None => Ok(()),
        }
    }

    /// Builds the network (freshly initialised) on `device`, with the removed blocks applied.
    pub fn build(&self, device: &Device) -> Result<Network, ModelError> {
        self.check_options()?;
        let mut network = match self.architecture {
            Architecture::Resnet18 | Architecture::Resnet34 => {
                let depth = if self.architecture == Architecture::Resnet18 {
                    ResNetDepth::ResNet18
                } else {
                    ResNetDepth::ResNet34
                };
                let stem = match self.stem.unwrap_or(StemKind::Cifar) {
                    StemKind::Cifar => Stem::Cifar,
                    StemKind::Imagenet => Stem::ImageNet,
                };
                Network::ResNet(
                    ResNetConfig::new(depth, stem)
                        .with_in_channels(self.in_channels)
                        .with_num_classes(self.num_classes)
                        .with_width(self.width)
                        .with_input_size(self.input_size)
                        .init(device)?,
                )
            }
            Architecture::Mobilenetv2 | Architecture::Mobilenetv2Cifar => {
                let variant = if self.architecture == Architecture::Mobilenetv2 {
                    MobileNetVariant::ImageNet
                } else {
                    MobileNetVariant::Cifar
                };
                let config = MobileNetV2Config {
                    in_channels: self.in_channels,
                    width_multiplier: self.width as f64 / 32.0,
                    unit: self.unit,
                    ..MobileNetV2Config::new(variant, self.num_classes, self.input_size)
                };
                Network::MobileNetV2(config.init(device)?)
            }
            Architecture::SwinT => {
                let config = SwinConfig {
                    in_channels: self.in_channels,
                    embed_dim: self.width,
                    pairing: self.pairing,
                    ..SwinConfig::swin_t(self.num_classes, self.input_size)
                };
                Network::Swin(config.init(device)?)
            }
        };
        network.remove_blocks(&self.removed_blocks)?;
        Ok(network)
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Tensor;

    use super::*;
    use crate::device::default_device;

    #[test]
    fn every_architecture_runs_at_the_smallest_input_and_refuses_smaller() {
        for (architecture, width) in [
            (Architecture::Resnet18, 4),
            (Architecture::Resnet34, 4),
            (Architecture::Mobilenetv2, 8),
            (Architecture::Mobilenetv2Cifar, 8),
            (Architecture::SwinT, 6),
        ] {
            let spec = ModelSpec {
                width,
                ..ModelSpec::new(architecture, 2, MIN_INPUT_SIZE, 3)
            };
            let network = spec.build(&default_device()).unwrap();
            let logits = network.forward(Tensor::zeros(
                [2, 2, MIN_INPUT_SIZE, MIN_INPUT_SIZE],
                &default_device(),
            ));
            assert_eq!(logits.dims(), [2, 3], "{architecture:?}");
            let tiny = ModelSpec {
                input_size: MIN_INPUT_SIZE - 1,
                ..spec
            };
            assert!(tiny.build(&default_device()).is_err(), "{architecture:?}");
        }
    }
}
