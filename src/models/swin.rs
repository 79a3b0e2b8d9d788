//! Swin-T with torchvision's layout and parameter names (`features.1.0.attn.qkv.weight`, …):
//! shifted-window attention with relative position bias and the shift mask, patch merging, and
//! stochastic depth. Windows larger than the feature map are handled as torchvision does: the map
//! is zero-padded to a whole window, and the shift is dropped when one window covers it.

use std::collections::BTreeSet;

use crate::kernels::{conv2d, linear, window_attention};
use burn::module::{Flag, Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    Dropout, DropoutConfig, Gelu, Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig,
};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};

use super::cost::{LayerCost, TrainableParameters};
use super::{BlockFeatures, BlockInfo, BlockNetwork, Cost, ModelError, check_removable};

/// Which features of a Swin block the regulariser and the collapse scores compare.
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
pub enum FeaturePairing {
    /// The block's input and its output: the two sides of what removal replaces by identity.
    #[default]
    Block,
    /// The block's input and its MLP branch before the residual add, as the LaCoOT reference
    /// code does. The branch is what removal throws away, so this measures how large the update
    /// is rather than how far the block moves its input.
    MlpBranch,
}

/// Everything that determines a Swin Transformer.
#[derive(Clone, Debug, PartialEq)]
pub struct SwinConfig {
    /// Channels of the input images.
    pub in_channels: usize,
    /// Number of classes.
    pub num_classes: usize,
    /// Channels after the patch embedding (96 in Swin-T); stage s has `embed_dim * 2^s`.
    pub embed_dim: usize,
    /// Height and width of the (square) input images.
    pub input_size: usize,
    /// Blocks per stage.
    pub depths: [usize; 4],
    /// Attention heads per stage.
    pub num_heads: [usize; 4],
    /// Side of the attention windows.
    pub window_size: usize,
    /// Stochastic-depth probability of the last block (it grows linearly from 0 at the first).
    pub stochastic_depth: f64,
    /// Which features are compared.
    pub pairing: FeaturePairing,
}

/// Side of the square patches the image is cut into.
const PATCH_SIZE: usize = 4;
/// Hidden width of the MLPs, relative to their input.
const MLP_RATIO: usize = 4;

/// The epsilon of every layer norm (torchvision's `nn.LayerNorm` default).
pub(crate) const LAYER_NORM_EPSILON: f64 = 1e-5;

fn layer_norm(dim: usize, device: &Device) -> LayerNorm {
    LayerNormConfig::new(dim)
        .with_epsilon(LAYER_NORM_EPSILON)
        .init(device)
}

impl SwinConfig {
    /// torchvision's `swin_t`: embedding 96, depths 2, 2, 6, 2, heads 3, 6, 12, 24, window 7,
    /// stochastic depth 0.2, for 3-channel images.
    pub fn swin_t(num_classes: usize, input_size: usize) -> Self {
        Self {
            in_channels: 3,
            num_classes,
            embed_dim: 96,
            input_size,
            depths: [2, 2, 6, 2],
            num_heads: [3, 6, 12, 24],
            window_size: 7,
            stochastic_depth: 0.2,
            pairing: FeaturePairing::Block,
        }
    }

    /// Builds the network with torchvision's initialisation (linear layers N(0, 0.02) with zero
    /// biases, where torchvision truncates the normal at ±2σ; unit layer-norm scales).
    pub fn init(&self, device: &Device) -> Result<SwinTransformer, ModelError> {
        if self.in_channels == 0 || self.num_classes == 0 || self.embed_dim == 0 {
            return Err(ModelError::InvalidConfig(
                "input channels, classes and embedding width must be positive".into(),
            ));
        }
        if self.input_size < PATCH_SIZE {
            return Err(ModelError::InvalidConfig(format!(
                "input size {} is smaller than one {PATCH_SIZE}x{PATCH_SIZE} patch",
                self.input_size
            )));
        }
        if self.window_size == 0 {
            return Err(ModelError::InvalidConfig(
                "window size must be positive".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.stochastic_depth) {
            return Err(ModelError::InvalidConfig(
                "stochastic depth must be in [0, 1)".into(),
            ));
        }
        let total_blocks: usize = self.depths.iter().sum();
        let mut features = vec![SwinFeature::PatchEmbedding((
            Conv2dConfig::new([self.in_channels, self.embed_dim], [PATCH_SIZE, PATCH_SIZE])
                .with_stride([PATCH_SIZE, PATCH_SIZE])
                .init(device),
            ChannelsLast,
            layer_norm(self.embed_dim, device),
        ))];
        let mut block_id = 0;
        for stage in 0..4 {
            let dim = self.embed_dim << stage;
            let heads = self.num_heads[stage];
            if heads == 0 || !dim.is_multiple_of(heads) {
                return Err(ModelError::InvalidConfig(format!(
                    "stage {} has {dim} channels, which {heads} heads cannot share",
                    stage + 1
                )));
            }
            let blocks = (0..self.depths[stage])
                .map(|index| {
                    let drop = if total_blocks > 1 {
                        self.stochastic_depth * block_id as f64 / (total_blocks - 1) as f64
                    } else {
                        0.0
                    };
                    block_id += 1;
                    let shift = if index % 2 == 0 {
                        0
                    } else {
                        self.window_size / 2
                    };
                    SwinBlock::new(dim, heads, self.window_size, shift, drop, device)
                })
                .collect();
            features.push(SwinFeature::Stage(blocks));
            if stage < 3 {
                features.push(SwinFeature::Merging(PatchMerging {
                    reduction: swin_linear(4 * dim, 2 * dim, false, device),
                    norm: layer_norm(4 * dim, device),
                }));
            }
        }
        let last = self.embed_dim << 3;
        Ok(SwinTransformer {
            features,
            norm: layer_norm(last, device),
            head: swin_linear(last, self.num_classes, true, device),
            input_shape: [self.in_channels, self.input_size, self.input_size],
            pairing: self.pairing,
            removed: BTreeSet::new(),
        })
    }
}

/// A linear layer initialised as torchvision's Swin does.
fn swin_linear(inputs: usize, outputs: usize, bias: bool, device: &Device) -> Linear {
    let mut linear = LinearConfig::new(inputs, outputs)
        .with_bias(false)
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        })
        .init(device);
    linear.bias = bias.then(|| Initializer::Zeros.init([outputs], device));
    linear
}

/// torchvision's `Permute([0, 2, 3, 1])` in the patch embedding: NCHW to NHWC (no parameters; it
/// holds the index that torchvision's names skip).
#[derive(Module, Debug, Default)]
pub struct ChannelsLast;

/// Drops a whole residual branch per sample with probability `prob` while training, scaling the
/// kept ones by `1 / (1 - prob)` (torchvision's `StochasticDepth(mode="row")`).
#[derive(Module, Debug)]
pub struct StochasticDepth {
    /// Probability of dropping the branch.
    pub prob: f64,
    /// Whether to behave as during training.
    pub training: Param<Flag>,
}

impl StochasticDepth {
    fn new(prob: f64) -> Self {
        Self {
            prob,
            training: Param::from_bool(true),
        }
    }

    fn forward(&self, branch: Tensor<4>) -> Tensor<4> {
        if !self.training.is_enabled() || !branch.device().is_autodiff() || self.prob == 0.0 {
            return branch;
        }
        let keep = 1.0 - self.prob;
        let [n, ..] = branch.dims();
        let mask = Tensor::<4>::random(
            [n, 1, 1, 1],
            Distribution::Bernoulli(keep),
            &branch.device(),
        );
        branch * mask.div_scalar(keep)
    }
}

/// torchvision's `ShiftedWindowAttention`.
#[derive(Module, Debug)]
pub struct ShiftedWindowAttention {
    pub(crate) qkv: Linear,
    pub(crate) proj: Linear,
    relative_position_bias_table: Param<Tensor<2>>,
    #[module(skip)]
    pub(crate) window_size: usize,
    #[module(skip)]
    pub(crate) shift_size: usize,
    #[module(skip)]
    pub(crate) num_heads: usize,
}

/// The padded side of a feature map of side `length`, and the shift that applies to it.
pub(crate) fn padded_and_shift(length: usize, window: usize, shift: usize) -> (usize, usize) {
    let padded = length.div_ceil(window) * window;
    (padded, if window >= padded { 0 } else { shift })
}

/// torchvision's relative position index: for every pair of positions of a window, the row of the
/// bias table that holds their offset.
pub(crate) fn relative_position_index(window: usize) -> Vec<i64> {
    let positions: Vec<(i64, i64)> = (0..window as i64)
        .flat_map(|h| (0..window as i64).map(move |w| (h, w)))
        .collect();
    let span = 2 * window as i64 - 1;
    let last = window as i64 - 1;
    positions
        .iter()
        .flat_map(|&(h1, w1)| {
            positions
                .iter()
                .map(move |&(h2, w2)| (h1 - h2 + last) * span + (w1 - w2 + last))
        })
        .collect()
}

/// torchvision's attention mask for shifted windows on a `padded` x `padded` map: 0 between
/// tokens of the same region before the shift, -100 otherwise; `[windows, N, N]` row-major.
pub(crate) fn shift_mask(padded: usize, window: usize, shift: usize) -> Vec<f32> {
    let region = |i: usize| {
        if i < padded - window {
            0
        } else if i < padded - shift {
            1
        } else {
            2
        }
    };
    let per_side = padded / window;
    let tokens = window * window;
    let mut mask = Vec::with_capacity(per_side * per_side * tokens * tokens);
    for wh in 0..per_side {
        for ww in 0..per_side {
            let labels: Vec<usize> = (0..tokens)
                .map(|t| {
                    let (h, w) = (wh * window + t / window, ww * window + t % window);
                    region(h) * 3 + region(w)
                })
                .collect();
            for &a in &labels {
                mask.extend(labels.iter().map(|&b| if a == b { 0.0 } else { -100.0 }));
            }
        }
    }
    mask
}

impl ShiftedWindowAttention {
    fn new(dim: usize, heads: usize, window: usize, shift: usize, device: &Device) -> Self {
        let table = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        }
        .init([(2 * window - 1) * (2 * window - 1), heads], device);
        Self {
            qkv: swin_linear(dim, 3 * dim, true, device),
            proj: swin_linear(dim, dim, true, device),
            relative_position_bias_table: table,
            window_size: window,
            shift_size: shift,
            num_heads: heads,
        }
    }

    /// Attention over `[B, H, W, C]` features, in windows.
    fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let [b, h, w, c] = input.dims();
        let device = input.device();
        let window = self.window_size;
        let (padded_h, shift_h) = padded_and_shift(h, window, self.shift_size);
        let (padded_w, shift_w) = padded_and_shift(w, window, self.shift_size);
        let mut x = input;
        if padded_w > w {
            let zeros = Tensor::zeros([b, h, padded_w - w, c], &device);
            x = Tensor::cat(vec![x, zeros], 2);
        }
        if padded_h > h {
            let zeros = Tensor::zeros([b, padded_h - h, padded_w, c], &device);
            x = Tensor::cat(vec![x, zeros], 1);
        }
        let shifted = shift_h + shift_w > 0;
        if shifted {
            x = x.roll(&[-(shift_h as i64), -(shift_w as i64)], &[1, 2]);
        }
        let (rows, cols) = (padded_h / window, padded_w / window);
        let windows = rows * cols;
        let tokens = window * window;
        let heads = self.num_heads;
        let x: Tensor<3> = x
            .reshape([b, rows, window, cols, window, c])
            .permute([0, 1, 3, 2, 4, 5])
            .reshape([b * windows, tokens, c]);
        let mask = if shifted {
            let mask = shift_mask(padded_h, window, shift_h.max(shift_w));
            Tensor::<3>::from_data(TensorData::new(mask, [windows, tokens, tokens]), &device)
        } else {
            Tensor::<3>::zeros([1, tokens, tokens], &device)
        };
        let bias = self
            .relative_position_bias()
            .reshape([heads, tokens, tokens]);
        let x = window_attention(linear(&self.qkv, x), bias, mask, heads);
        let mut x: Tensor<4> = linear(&self.proj, x)
            .reshape([b, rows, cols, window, window, c])
            .permute([0, 1, 3, 2, 4, 5])
            .reshape([b, padded_h, padded_w, c]);
        if shifted {
            x = x.roll(&[shift_h as i64, shift_w as i64], &[1, 2]);
        }
        x.slice([0..b, 0..h, 0..w, 0..c])
    }

    /// The bias added to the attention logits, `[1, heads, N, N]`.
    pub(crate) fn relative_position_bias(&self) -> Tensor<4> {
        let table = self.relative_position_bias_table.val();
        let tokens = self.window_size * self.window_size;
        let index = relative_position_index(self.window_size);
        let index =
            Tensor::<1, Int>::from_data(TensorData::new(index, [tokens * tokens]), &table.device());
        table
            .select(0, index)
            .reshape([tokens, tokens, self.num_heads])
            .permute([2, 0, 1])
            .unsqueeze_dim(0)
    }

    /// Parameters and MACs (projections over the padded tokens, and the two attention products)
    /// for a `[C, H, W]` map.
    fn cost(&self, [c, h, w]: [usize; 3]) -> Cost {
        let (padded_h, _) = padded_and_shift(h, self.window_size, self.shift_size);
        let (padded_w, _) = padded_and_shift(w, self.window_size, self.shift_size);
        let tokens = (padded_h * padded_w) as u64;
        let window_tokens = (self.window_size * self.window_size) as u64;
        let c = c as u64;
        Cost {
            parameters: self.qkv.trainable_parameters()
                + self.proj.trainable_parameters()
                + self.relative_position_bias_table.shape().num_elements(),
            macs: tokens * 4 * c * c + 2 * tokens * window_tokens * c,
            norm_pool_macs: 0,
        }
    }
}

/// torchvision's `SwinTransformerBlock`: attention and MLP, each behind a layer norm and a
/// residual connection with stochastic depth.
#[derive(Module, Debug)]
pub struct SwinBlock {
    pub(crate) norm1: LayerNorm,
    pub(crate) attn: ShiftedWindowAttention,
    stochastic_depth: StochasticDepth,
    pub(crate) norm2: LayerNorm,
    pub(crate) mlp: (Linear, Gelu, Dropout, Linear, Dropout),
}

impl SwinBlock {
    fn new(
        dim: usize,
        heads: usize,
        window: usize,
        shift: usize,
        drop: f64,
        device: &Device,
    ) -> Self {
        Self {
            norm1: layer_norm(dim, device),
            attn: ShiftedWindowAttention::new(dim, heads, window, shift, device),
            stochastic_depth: StochasticDepth::new(drop),
            norm2: layer_norm(dim, device),
            mlp: (
                swin_linear(dim, MLP_RATIO * dim, true, device),
                Gelu::new(),
                DropoutConfig::new(0.0).init(),
                swin_linear(MLP_RATIO * dim, dim, true, device),
                DropoutConfig::new(0.0).init(),
            ),
        }
    }

    /// The block's output and its MLP branch (before the residual add), for `[B, H, W, C]`.
    fn forward(&self, input: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let x = input.clone()
            + self
                .stochastic_depth
                .forward(self.attn.forward(self.norm1.forward(input)));
        let (fc1, gelu, drop1, fc2, drop2) = &self.mlp;
        let branch = drop2.forward(linear(
            fc2,
            drop1.forward(gelu.forward(linear(fc1, self.norm2.forward(x.clone())))),
        ));
        (x + self.stochastic_depth.forward(branch.clone()), branch)
    }

    fn cost(&self, shape: [usize; 3]) -> Cost {
        let (fc1, _, _, fc2, _) = &self.mlp;
        let [c, h, w] = shape;
        let tokens = (h * w) as u64;
        let elements = tokens * c as u64;
        self.attn.cost(shape)
            + Cost {
                parameters: self.norm1.trainable_parameters()
                    + self.norm2.trainable_parameters()
                    + fc1.trainable_parameters()
                    + fc2.trainable_parameters(),
                macs: tokens * (fc1.macs(shape) + fc2.macs(shape)),
                norm_pool_macs: 2 * elements,
            }
    }
}

/// torchvision's `PatchMerging`: 2x2 neighbours concatenated, normalised and projected to twice
/// the channels.
#[derive(Module, Debug)]
pub struct PatchMerging {
    pub(crate) reduction: Linear,
    pub(crate) norm: LayerNorm,
}

impl PatchMerging {
    fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let [b, h, w, c] = input.dims();
        let device = input.device();
        let mut x = input;
        if w % 2 == 1 {
            x = Tensor::cat(vec![x, Tensor::zeros([b, h, 1, c], &device)], 2);
        }
        if h % 2 == 1 {
            x = Tensor::cat(vec![x, Tensor::zeros([b, 1, w + w % 2, c], &device)], 1);
        }
        let (half_h, half_w) = (h.div_ceil(2), w.div_ceil(2));
        // torchvision concatenates (even row, even col), (odd, even), (even, odd), (odd, odd):
        // column parity major, row parity minor.
        let x: Tensor<4> = x
            .reshape([b, half_h, 2, half_w, 2, c])
            .permute([0, 1, 3, 4, 2, 5])
            .reshape([b, half_h, half_w, 4 * c]);
        linear(&self.reduction, self.norm.forward(x))
    }

    fn output_shape(&self, [c, h, w]: [usize; 3]) -> [usize; 3] {
        [2 * c, h.div_ceil(2), w.div_ceil(2)]
    }

    fn cost(&self, shape: [usize; 3]) -> Cost {
        let [c, h, w] = self.output_shape(shape);
        let tokens = (h * w) as u64;
        Cost {
            parameters: self.reduction.trainable_parameters() + self.norm.trainable_parameters(),
            macs: tokens * self.reduction.macs(shape),
            norm_pool_macs: tokens * 2 * c as u64,
        }
    }
}

/// One entry of torchvision's `features` list.
#[derive(Module, Debug)]
pub(crate) enum SwinFeature {
    /// 4x4 patches to `embed_dim` channels, channels last, layer norm.
    PatchEmbedding((Conv2d, ChannelsLast, LayerNorm)),
    /// A stage of Swin blocks.
    Stage(Vec<SwinBlock>),
    /// Patch merging between stages.
    Merging(PatchMerging),
}

/// A Swin Transformer with torchvision's names; its removable blocks are the Swin blocks
/// (`features.S.I`, 12 in Swin-T), all of them shape-preserving.
#[derive(Module, Debug)]
pub struct SwinTransformer {
    pub(crate) features: Vec<SwinFeature>,
    pub(crate) norm: LayerNorm,
    pub(crate) head: Linear,
    /// One sample's input shape `[C, H, W]`.
    #[module(skip)]
    input_shape: [usize; 3],
    /// Which features are compared.
    #[module(skip)]
    pairing: FeaturePairing,
    /// Blocks replaced by identity.
    #[module(skip)]
    removed: BTreeSet<String>,
}

/// NHWC features of one sample's `[C, H, W]` shape.
fn channels_first(x: Tensor<4>) -> Tensor<4> {
    x.permute([0, 3, 1, 2])
}

impl SwinTransformer {
    /// Blocks and costs, walking the shapes from the input: the blocks, the cost of everything
    /// else, and the shape entering the final norm.
    fn walk(&self) -> (Vec<BlockInfo>, Cost, [usize; 3]) {
        let mut shape = self.input_shape;
        let mut blocks = Vec::new();
        let mut rest = Cost::default();
        for (index, feature) in self.features.iter().enumerate() {
            match feature {
                SwinFeature::PatchEmbedding((conv, _, norm)) => {
                    let out = conv.output_shape(shape);
                    rest = rest
                        + Cost {
                            parameters: conv.trainable_parameters() + norm.trainable_parameters(),
                            macs: conv.macs(shape),
                            norm_pool_macs: out.iter().product::<usize>() as u64,
                        };
                    shape = out;
                }
                SwinFeature::Stage(stage) => {
                    for (position, block) in stage.iter().enumerate() {
                        let name = format!("features.{index}.{position}");
                        let cost = block.cost(shape);
                        blocks.push(BlockInfo {
                            removed: self.removed.contains(&name),
                            name,
                            input_shape: shape,
                            output_shape: shape,
                            parameters: cost.parameters,
                            macs: cost.macs,
                            norm_pool_macs: cost.norm_pool_macs,
                            collapsible: true,
                        });
                    }
                }
                SwinFeature::Merging(merging) => {
                    rest = rest + merging.cost(shape);
                    shape = merging.output_shape(shape);
                }
            }
        }
        (blocks, rest, shape)
    }
}

impl BlockNetwork for SwinTransformer {
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
                SwinFeature::PatchEmbedding((conv, _, norm)) => {
                    norm.forward(conv2d(conv, x).permute([0, 2, 3, 1]))
                }
                SwinFeature::Stage(stage) => {
                    for (position, block) in stage.iter().enumerate() {
                        let name = format!("features.{index}.{position}");
                        if self.removed.contains(&name) {
                            continue;
                        }
                        let (output, branch) = block.forward(x.clone());
                        if capture.contains(&name) {
                            let compared = match self.pairing {
                                FeaturePairing::Block => output.clone(),
                                FeaturePairing::MlpBranch => branch,
                            };
                            captured.push(BlockFeatures {
                                name,
                                input: channels_first(x),
                                output: channels_first(compared),
                            });
                        }
                        x = output;
                    }
                    x
                }
                SwinFeature::Merging(merging) => merging.forward(x),
            };
        }
        let pooled: Tensor<2> = self.norm.forward(x).mean_dim(2).mean_dim(1).flatten(1, 3);
        (linear(&self.head, pooled), captured)
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
        let elements = (c * h * w) as u64;
        rest + Cost {
            parameters: self.norm.trainable_parameters() + self.head.trainable_parameters(),
            macs: self.head.macs([c, 1, 1]),
            norm_pool_macs: 2 * elements,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::default_device;

    #[test]
    fn torchvision_swin_t_parameters() {
        let net = SwinConfig::swin_t(1000, 224)
            .init(&default_device())
            .unwrap();
        assert_eq!(net.total_parameters(), 28_288_354);
        // torchvision's 4.49 GFLOPs: 4 350 425 088 projection and MLP MACs plus 140 141 568 in
        // the attention products (tools/make_torch_fixtures.py).
        assert_eq!(net.total_macs(), 4_350_425_088 + 140_141_568);
        let blocks = net.blocks();
        assert_eq!(blocks.len(), 12);
        assert_eq!(blocks[0].name, "features.1.0");
        assert_eq!(blocks[11].name, "features.7.1");
        assert!(blocks.iter().all(|b| b.collapsible));
    }

    #[test]
    fn relative_position_index_matches_torchvision_corners() {
        let index = relative_position_index(7);
        assert_eq!(index.len(), 49 * 49);
        // Same position: offset (0, 0), the table's centre row (6 * 13 + 6).
        assert_eq!(index[0], 84);
        // From (0, 0) to (6, 6): offset (-6, -6), row 0; the reverse: row 12 * 13 + 12.
        assert_eq!(index[48], 0);
        assert_eq!(index[48 * 49], 168);
    }

    #[test]
    fn shift_mask_separates_regions() {
        // A 14x14 map, window 7, shift 3: the first window is one region, the last has four.
        let mask = shift_mask(14, 7, 3);
        let tokens = 49;
        assert_eq!(mask.len(), 4 * tokens * tokens);
        assert!(mask[..tokens * tokens].iter().all(|&v| v == 0.0));
        let last = &mask[3 * tokens * tokens..];
        let distinct_rows: BTreeSet<Vec<i32>> = last
            .chunks(tokens)
            .map(|row| row.iter().map(|&v| v as i32).collect())
            .collect();
        assert_eq!(distinct_rows.len(), 4);
    }

    #[test]
    fn stochastic_depth_drops_branches_in_training_only() {
        let device = crate::device::autodiff_device();
        let mut config = SwinConfig::swin_t(10, 16);
        config.embed_dim = 6;
        config.stochastic_depth = 0.9;
        let net = config.init(&device).unwrap();
        let input = Tensor::<4>::random([8, 3, 16, 16], Distribution::Default, &device);
        let differ = |a: Tensor<2>, b: Tensor<2>| a.sub(b).abs().max().into_scalar::<f32>() > 1e-6;
        assert!(differ(
            net.forward(input.clone()),
            net.forward(input.clone())
        ));
        let eval = net.valid();
        let input = input.inner();
        assert!(!differ(eval.forward(input.clone()), eval.forward(input)));
    }

    #[test]
    fn the_regulariser_gradient_reaches_every_block_in_both_pairings() {
        let device = crate::device::autodiff_device();
        for pairing in [FeaturePairing::Block, FeaturePairing::MlpBranch] {
            let mut config = SwinConfig::swin_t(10, 16);
            config.embed_dim = 6;
            config.pairing = pairing;
            let net = config.init(&device).unwrap();
            let capture: BTreeSet<String> = net.blocks().into_iter().map(|b| b.name).collect();
            let input = Tensor::<4>::random([6, 3, 16, 16], Distribution::Default, &device);
            let regulariser = crate::models::test_support::regulariser(&net, input, &capture);
            let grads = regulariser.backward();
            let stages = net.features.iter().filter_map(|f| match f {
                SwinFeature::Stage(blocks) => Some(blocks),
                _ => None,
            });
            for (stage, blocks) in stages.enumerate() {
                for (index, block) in blocks.iter().enumerate() {
                    crate::models::test_support::assert_nonzero_gradient(
                        block.mlp.3.weight.grad(&grads),
                        &format!("{pairing:?}: stage {stage} block {index}"),
                    );
                }
            }
        }
    }

    #[test]
    fn small_inputs_pad_windows_and_keep_shapes() {
        let device = default_device();
        let mut config = SwinConfig::swin_t(10, 28);
        config.in_channels = 1;
        config.embed_dim = 6;
        config.pairing = FeaturePairing::MlpBranch;
        let net = config.init(&device).unwrap();
        let blocks = net.blocks();
        assert_eq!(blocks[0].input_shape, [6, 7, 7]);
        assert_eq!(blocks[2].input_shape, [12, 4, 4]);
        assert_eq!(blocks[11].input_shape, [48, 1, 1]);
        let capture = blocks.iter().map(|b| b.name.clone()).collect();
        let input = Tensor::<4>::random([2, 1, 28, 28], Distribution::Default, &device);
        let (logits, features) = net.forward_capturing(input, &capture);
        assert_eq!(logits.dims(), [2, 10]);
        assert_eq!(features.len(), 12);
        for (info, feature) in blocks.iter().zip(&features) {
            let [_, c, h, w] = feature.output.dims();
            assert_eq!([c, h, w], info.output_shape, "{}", info.name);
        }
    }
}
