//! One type for every architecture, so that training, checkpoints and collapse hold any of them.

use std::collections::BTreeSet;

use burn::module::Module;
use burn::tensor::Tensor;

use super::mobilenet::MobileNetV2;
use super::resnet::ResNet;
use super::swin::SwinTransformer;
use super::{BlockFeatures, BlockInfo, BlockNetwork, Cost, ModelError};

/// Any network lacoot builds. Its variant names are not part of parameter names: stores that read
/// or write torchvision keys skip them.
// burn has no `Module` for `Box`, so the variants stay unboxed; the modules are built once and
// moved by value only between training steps.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Network {
    /// ResNet-18 / ResNet-34.
    ResNet(ResNet),
    /// MobileNetV2 (ImageNet or CIFAR layout).
    MobileNetV2(MobileNetV2),
    /// Swin-T.
    Swin(SwinTransformer),
}

/// Forwards a call to the variant's network.
macro_rules! each_variant {
    ($self:expr, $net:ident => $call:expr) => {
        match $self {
            Network::ResNet($net) => $call,
            Network::MobileNetV2($net) => $call,
            Network::Swin($net) => $call,
        }
    };
}

impl BlockNetwork for Network {
    fn input_shape(&self) -> [usize; 3] {
        each_variant!(self, net => net.input_shape())
    }

    fn blocks(&self) -> Vec<BlockInfo> {
        each_variant!(self, net => net.blocks())
    }

    fn forward_capturing(
        &self,
        input: Tensor<4>,
        capture: &BTreeSet<String>,
    ) -> (Tensor<2>, Vec<BlockFeatures>) {
        each_variant!(self, net => net.forward_capturing(input, capture))
    }

    fn remove_blocks(&mut self, names: &[String]) -> Result<(), ModelError> {
        each_variant!(self, net => net.remove_blocks(names))
    }

    fn removed_blocks(&self) -> BTreeSet<String> {
        each_variant!(self, net => net.removed_blocks())
    }

    fn stem_and_head(&self) -> Cost {
        each_variant!(self, net => net.stem_and_head())
    }

    fn paper_regularised(&self) -> BTreeSet<String> {
        each_variant!(self, net => net.paper_regularised())
    }
}
