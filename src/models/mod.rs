//! Networks with removable blocks, all answering the same questions so that training and collapse
//! never name a model:
//!
//! - [`BlockNetwork::blocks`]: every block's name, input and output shape, parameters, MACs, and
//!   whether it is collapsible (its output shape equals its input shape, so identity can replace it);
//! - [`BlockNetwork::forward_capturing`]: the logits plus the input and output features of chosen
//!   blocks (what the LaCoOT regulariser and the collapse scores need);
//! - [`BlockNetwork::remove_blocks`]: replace blocks by identity.
//!
//! Costs are computed from the same layer objects the forward pass runs, so the reported MACs
//! cannot disagree with what executes. Parameter names follow torchvision's `state_dict` keys, so
//! PyTorch checkpoints load by name ([`weights`]).

mod cost;
pub mod mobilenet;
mod network;
pub mod resnet;
mod spec;
pub mod swin;
pub mod weights;

use std::collections::BTreeSet;

use burn::tensor::Tensor;

pub use cost::{LayerCost, TrainableParameters};
pub use mobilenet::{MobileNetV2, MobileNetV2Config, MobileNetVariant, RemovalUnit};
pub use network::Network;
pub use resnet::{ResNet, ResNetConfig, ResNetDepth, Stem};
pub use spec::{Architecture, ModelSpec, StemKind};
pub use swin::{FeaturePairing, SwinConfig, SwinTransformer};

/// One block of a network, described for the network's configured input size.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BlockInfo {
    /// The block's stable name, as in the `state_dict` (`layer3.1`).
    pub name: String,
    /// Shape of one sample's input `[C, H, W]`.
    pub input_shape: [usize; 3],
    /// Shape of one sample's output `[C, H, W]`.
    pub output_shape: [usize; 3],
    /// Trainable parameters of the block.
    pub parameters: usize,
    /// Multiply-accumulates of its convolutions and linear layers, per sample (the paper's count).
    pub macs: u64,
    /// Further operations of its normalisation and pooling layers, per sample (see [`Cost`]).
    pub norm_pool_macs: u64,
    /// Whether identity can replace it: its output shape equals its input shape.
    pub collapsible: bool,
    /// Whether it is currently replaced by identity.
    pub removed: bool,
}

/// The cost of a part of a network, per sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Cost {
    /// Trainable parameters.
    pub parameters: usize,
    /// Multiply-accumulates of convolutions and linear layers (the paper's convention).
    pub macs: u64,
    /// Operations of normalisation and pooling layers, counted as multiply-accumulates: one per
    /// output element for batch norm (a fused scale and shift), one per window element for
    /// pooling. ReLUs and residual additions are not counted.
    pub norm_pool_macs: u64,
}

impl std::ops::Add for Cost {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            parameters: self.parameters + other.parameters,
            macs: self.macs + other.macs,
            norm_pool_macs: self.norm_pool_macs + other.norm_pool_macs,
        }
    }
}

impl BlockInfo {
    /// The block's cost.
    pub fn cost(&self) -> Cost {
        Cost {
            parameters: self.parameters,
            macs: self.macs,
            norm_pool_macs: self.norm_pool_macs,
        }
    }
}

/// A block's input and output features from one forward pass, each `[n, C, H, W]`.
#[derive(Clone, Debug)]
pub struct BlockFeatures {
    /// The block's name.
    pub name: String,
    /// What entered the block.
    pub input: Tensor<4>,
    /// What the block produced.
    pub output: Tensor<4>,
}

/// What can go wrong with a model's structure or weights.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A block name that the network does not have.
    #[error("unknown block '{name}'; this network's blocks are: {}", .known.join(", "))]
    UnknownBlock {
        /// The name asked for.
        name: String,
        /// The names it has.
        known: Vec<String>,
    },
    /// A block whose output shape differs from its input shape cannot become identity.
    #[error(
        "block '{name}' maps {input:?} to {output:?}; only shape-preserving blocks can be removed"
    )]
    NotCollapsible {
        /// The block.
        name: String,
        /// Its input shape.
        input: [usize; 3],
        /// Its output shape.
        output: [usize; 3],
    },
    /// A configuration that cannot build a network.
    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),
    /// A weight file that could not be read or does not fit the network.
    #[error("{path}: {reason}")]
    Weights {
        /// The weight file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// A network made of named blocks, some of which can be replaced by identity.
pub trait BlockNetwork {
    /// One sample's input shape `[C, H, W]`, which block shapes and costs are computed for.
    fn input_shape(&self) -> [usize; 3];

    /// Every block, in forward order, for the configured input size.
    fn blocks(&self) -> Vec<BlockInfo>;

    /// Logits for `input` `[n, C, H, W]`, and the input and output features of each block named in
    /// `capture` that is not removed, in forward order.
    fn forward_capturing(
        &self,
        input: Tensor<4>,
        capture: &BTreeSet<String>,
    ) -> (Tensor<2>, Vec<BlockFeatures>);

    /// Logits for `input` `[n, C, H, W]`.
    fn forward(&self, input: Tensor<4>) -> Tensor<2> {
        self.forward_capturing(input, &BTreeSet::new()).0
    }

    /// Replaces the named blocks by identity (removing one twice is harmless).
    fn remove_blocks(&mut self, names: &[String]) -> Result<(), ModelError>;

    /// The names of the blocks currently replaced by identity.
    fn removed_blocks(&self) -> BTreeSet<String>;

    /// The cost of everything outside the blocks (stem, head, and the layers around removable
    /// units that are smaller than a whole block).
    fn stem_and_head(&self) -> Cost;

    /// The blocks the paper regularises (`--blocks paper`): by default every collapsible block
    /// that is not removed.
    fn paper_regularised(&self) -> BTreeSet<String> {
        self.blocks()
            .into_iter()
            .filter(|b| b.collapsible && !b.removed)
            .map(|b| b.name)
            .collect()
    }

    /// The cost of the whole network, removed blocks excluded.
    fn total_cost(&self) -> Cost {
        self.blocks()
            .iter()
            .filter(|b| !b.removed)
            .fold(self.stem_and_head(), |total, b| total + b.cost())
    }

    /// Conv + linear MACs per sample, removed blocks excluded.
    fn total_macs(&self) -> u64 {
        self.total_cost().macs
    }

    /// Trainable parameters, removed blocks excluded.
    fn total_parameters(&self) -> usize {
        self.total_cost().parameters
    }
}

/// Checks that every name is a collapsible block of `blocks`.
pub(crate) fn check_removable(blocks: &[BlockInfo], names: &[String]) -> Result<(), ModelError> {
    for name in names {
        let Some(block) = blocks.iter().find(|b| &b.name == name) else {
            return Err(ModelError::UnknownBlock {
                name: name.clone(),
                known: blocks.iter().map(|b| b.name.clone()).collect(),
            });
        };
        if !block.collapsible {
            return Err(ModelError::NotCollapsible {
                name: name.clone(),
                input: block.input_shape,
                output: block.output_shape,
            });
        }
    }
    Ok(())
}

/// What the models' unit tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use std::collections::BTreeSet;

    use burn::tensor::Tensor;

    use super::BlockNetwork;
    use crate::ot::{DirectionSampler, max_sliced_wasserstein, point_cloud};

    /// The sum over the `capture`d blocks of their max-sliced distance (8 directions), for checking
    /// that the regulariser's gradient reaches every block.
    pub(crate) fn regulariser<N: BlockNetwork>(
        net: &N,
        input: Tensor<4>,
        capture: &BTreeSet<String>,
    ) -> Tensor<1> {
        let device = input.device();
        let (_, features) = net.forward_capturing(input, capture);
        let mut sampler = DirectionSampler::new(1);
        features
            .into_iter()
            .map(|f| {
                let (x, y) = (point_cloud(f.input), point_cloud(f.output));
                let dirs = sampler.sample(x.dims()[1], 8, &device, x.dtype()).unwrap();
                max_sliced_wasserstein(x, y, &dirs, 2.0, None)
                    .unwrap()
                    .value
            })
            .reduce(|a, b| a + b)
            .expect("at least one captured block")
    }

    /// Asserts that a parameter received a finite, non-zero gradient.
    pub(crate) fn assert_nonzero_gradient<const D: usize>(grad: Option<Tensor<D>>, what: &str) {
        let grad = grad.unwrap_or_else(|| panic!("{what}: no gradient"));
        let size = grad.abs().sum().into_scalar::<f32>();
        assert!(size > 0.0 && size.is_finite(), "{what}: |grad| = {size}");
    }
}
