//! A serialisable description of a model, from which the network is rebuilt (runs, manifests).

use burn::tensor::Device;

use super::resnet::{ResNet, ResNetConfig, ResNetDepth, Stem};
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

/// Everything needed to rebuild a network: architecture, stem, width and the input it was built for.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelSpec {
    /// The architecture.
    pub architecture: Architecture,
    /// The stem.
    pub stem: StemKind,
    /// Channels of the first stage (64 in the paper).
    pub width: usize,
    /// Channels of the input images.
    pub in_channels: usize,
    /// Height and width of the (square) input images.
    pub input_size: usize,
    /// Number of classes.
    pub num_classes: usize,
    /// Blocks replaced by identity.
    #[serde(default)]
    pub removed_blocks: Vec<String>,
}

impl ModelSpec {
    /// Builds the network (freshly initialised) on `device`, with the removed blocks applied.
    pub fn build(&self, device: &Device) -> Result<ResNet, ModelError> {
        let depth = match self.architecture {
            Architecture::Resnet18 => ResNetDepth::ResNet18,
            Architecture::Resnet34 => ResNetDepth::ResNet34,
        };
        let stem = match self.stem {
            StemKind::Cifar => Stem::Cifar,
            StemKind::Imagenet => Stem::ImageNet,
        };
        let mut network = ResNetConfig::new(depth, stem)
            .with_in_channels(self.in_channels)
            .with_num_classes(self.num_classes)
            .with_width(self.width)
            .with_input_size(self.input_size)
            .init(device)?;
        network.remove_blocks(&self.removed_blocks)?;
        Ok(network)
    }
}
