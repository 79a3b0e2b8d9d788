//! The architecture flags that `train` and `inspect` share.

use clap::Args;
use lacoot::models::{Architecture, FeaturePairing, ModelSpec, RemovalUnit, StemKind};

/// Which network, at what width, with which removable units.
#[derive(Debug, Args)]
pub struct ArchitectureArgs {
    /// The architecture: resnet18, resnet34, mobilenetv2 (torchvision's ImageNet layout),
    /// mobilenetv2-cifar (the paper's: stem and second stage at stride 1) or swin-t.
    #[arg(long, value_enum, default_value = "resnet18")]
    pub model: Architecture,

    /// ResNet stem: the paper's CIFAR stem (3x3 stride 1) or torchvision's ImageNet stem (7x7
    /// stride 2) [default: cifar].
    #[arg(long, value_enum)]
    pub stem: Option<StemKind>,

    /// Channels of the first layer [default: 64 for ResNets (first stage), 32 for MobileNetV2
    /// (stem; every layer scales by width/32 like torchvision's width_mult), 96 for Swin-T (patch
    /// embedding)]. Smaller makes CPU runs feasible.
    #[arg(long)]
    pub width: Option<usize>,

    /// MobileNetV2's removable unit: whole inverted residuals (`features.N`, those with a
    /// residual connection can go) or, as in the paper, the depthwise conv + BN + ReLU6 inside
    /// each of them (`features.N.conv.1`, those at stride 1 can go).
    #[arg(long, value_enum, default_value = "block")]
    pub unit: RemovalUnit,

    /// Swin-T's compared features: the block's input and output, or (as the LaCoOT reference code)
    /// the input and the MLP branch before the residual add.
    #[arg(long, value_enum, default_value = "block")]
    pub pairing: FeaturePairing,
}

impl ArchitectureArgs {
    /// The model these flags describe; channels, input size and classes are placeholders that
    /// the data fills in.
    pub fn spec(&self) -> ModelSpec {
        ModelSpec {
            stem: self.stem,
            width: self.width.unwrap_or(self.model.default_width()),
            unit: self.unit,
            pairing: self.pairing,
            ..ModelSpec::new(self.model, 0, 0, 0)
        }
    }
}
