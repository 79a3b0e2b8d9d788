//! Swin-T as an ONNX graph, following torchvision's forward pass: windows by reshape and
//! transpose, the shift by slice and concat, the relative position bias and the shift mask as
//! constants, exact GELU through `Erf`, removed blocks absent.

use super::graph::{Attribute, GraphBuilder, as_i64};
use crate::export::ExportError;
use crate::models::swin::{
    LAYER_NORM_EPSILON, PatchMerging, ShiftedWindowAttention, SwinBlock, SwinFeature,
    padded_and_shift, shift_mask,
};
use crate::models::{BlockNetwork, LayerCost, SwinTransformer};

/// Appends the network to `graph`, reading `input`; returns the logits.
pub fn lower(
    graph: &mut GraphBuilder,
    net: &SwinTransformer,
    input: &str,
) -> Result<String, ExportError> {
    let removed = net.removed_blocks();
    let mut x = input.to_string();
    let mut shape = net.input_shape();
    for (index, feature) in net.features.iter().enumerate() {
        let prefix = format!("features.{index}");
        match feature {
            SwinFeature::PatchEmbedding((conv, _, norm)) => {
                let patches = graph.conv(&format!("{prefix}.0"), conv, None, &x)?;
                shape = conv.output_shape(shape);
                let last = graph.transpose(&format!("{prefix}.1"), &patches, &[0, 2, 3, 1]);
                x = graph.layer_norm(&format!("{prefix}.2"), norm, LAYER_NORM_EPSILON, &last)?;
            }
            SwinFeature::Stage(blocks) => {
                for (position, block) in blocks.iter().enumerate() {
                    let name = format!("{prefix}.{position}");
                    if !removed.contains(&name) {
                        x = swin_block(graph, &name, block, &x, shape)?;
                    }
                }
            }
            SwinFeature::Merging(merging) => {
                x = patch_merging(graph, &prefix, merging, &x, shape)?;
                let [c, h, w] = shape;
                shape = [2 * c, h.div_ceil(2), w.div_ceil(2)];
            }
        }
    }
    let normed = graph.layer_norm("norm", &net.norm, LAYER_NORM_EPSILON, &x)?;
    let first = graph.transpose("permute", &normed, &[0, 3, 1, 2]);
    graph.pooled_classifier("head", &net.head, &first)
}

/// A Swin block on `[B, H, W, C]` features of one sample's shape `[C, H, W]`.
fn swin_block(
    graph: &mut GraphBuilder,
    name: &str,
    block: &SwinBlock,
    input: &str,
    shape: [usize; 3],
) -> Result<String, ExportError> {
    let normed = graph.layer_norm(
        &format!("{name}.norm1"),
        &block.norm1,
        LAYER_NORM_EPSILON,
        input,
    )?;
    let attended = attention(graph, &format!("{name}.attn"), &block.attn, &normed, shape)?;
    let x = graph.node("Add", &format!("{name}.add1"), &[input, &attended], &[]);
    let normed = graph.layer_norm(
        &format!("{name}.norm2"),
        &block.norm2,
        LAYER_NORM_EPSILON,
        &x,
    )?;
    let (fc1, _, _, fc2, _) = &block.mlp;
    let hidden = graph.linear(&format!("{name}.mlp.0"), fc1, &normed, 4)?;
    let hidden = graph.gelu(&format!("{name}.mlp.1"), &hidden);
    let branch = graph.linear(&format!("{name}.mlp.3"), fc2, &hidden, 4)?;
    Ok(graph.node("Add", &format!("{name}.add2"), &[&x, &branch], &[]))
}

/// torchvision's shifted-window attention on `[B, H, W, C]` features.
fn attention(
    graph: &mut GraphBuilder,
    name: &str,
    attn: &ShiftedWindowAttention,
    input: &str,
    [c, h, w]: [usize; 3],
) -> Result<String, ExportError> {
    let window = attn.window_size;
    let (padded_h, shift_h) = padded_and_shift(h, window, attn.shift_size);
    let (padded_w, shift_w) = padded_and_shift(w, window, attn.shift_size);
    let shifted = shift_h + shift_w > 0;
    let step = |part: &str| format!("{name}.{part}");
    let mut x = graph.pad_end(&step("pad"), input, &[0, padded_h - h, padded_w - w, 0]);
    if shifted {
        x = graph.roll(&step("shift_h"), &x, 1, padded_h, -(shift_h as i64));
        x = graph.roll(&step("shift_w"), &x, 2, padded_w, -(shift_w as i64));
    }
    let (rows, cols) = (padded_h / window, padded_w / window);
    let windows = rows * cols;
    let tokens = window * window;
    let heads = attn.num_heads;
    let head_dim = c / heads;
    let grid = graph.reshape(
        &step("grid"),
        &x,
        &as_i64_signed(&[rows, window, cols, window, c]),
    );
    let grouped = graph.transpose(&step("group"), &grid, &[0, 1, 3, 2, 4, 5]);
    let windowed = graph.reshape(&step("windows"), &grouped, &as_i64_signed(&[tokens, c]));
    let qkv = graph.linear(&step("qkv"), &attn.qkv, &windowed, 3)?;
    let qkv = graph.reshape(
        &step("qkv_heads"),
        &qkv,
        &as_i64_signed(&[tokens, 3, heads, head_dim]),
    );
    let qkv = graph.transpose(&step("qkv_split"), &qkv, &[2, 0, 3, 1, 4]);
    let mut part = |index: i64, label: &str| {
        let at = graph.constant_i64(&step(&format!("{label}_index")), &[], &[index]);
        graph.node(
            "Gather",
            &step(label),
            &[&qkv, &at],
            &[Attribute::Int("axis", 0)],
        )
    };
    let (q, k, v) = (part(0, "q"), part(1, "k"), part(2, "v"));
    let scale = graph.constant(&step("scale"), &[], &[(head_dim as f32).powf(-0.5)]);
    let q = graph.node("Mul", &step("q_scaled"), &[&q, &scale], &[]);
    let k_t = graph.transpose(&step("k_t"), &k, &[0, 1, 3, 2]);
    let logits = graph.node("MatMul", &step("logits"), &[&q, &k_t], &[]);
    let bias = attn
        .relative_position_bias()
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| ExportError::Graph(format!("{name}: cannot read the position bias: {e:?}")))?;
    let bias = graph.constant(
        &step("relative_position_bias"),
        &[1, heads, tokens, tokens],
        &bias,
    );
    let mut logits = graph.node("Add", &step("biased"), &[&logits, &bias], &[]);
    if shifted {
        let mask = shift_mask(padded_h, window, shift_h.max(shift_w));
        let mask = graph.constant(&step("shift_mask"), &[1, windows, 1, tokens, tokens], &mask);
        let per_window = graph.reshape(
            &step("per_window"),
            &logits,
            &as_i64_signed(&[windows, heads, tokens, tokens]),
        );
        let masked = graph.node("Add", &step("masked"), &[&per_window, &mask], &[]);
        logits = graph.reshape(
            &step("unmasked_layout"),
            &masked,
            &as_i64_signed(&[heads, tokens, tokens]),
        );
    }
    let weights = graph.node(
        "Softmax",
        &step("softmax"),
        &[&logits],
        &[Attribute::Int("axis", -1)],
    );
    let mixed = graph.node("MatMul", &step("mixed"), &[&weights, &v], &[]);
    let mixed = graph.transpose(&step("heads_last"), &mixed, &[0, 2, 1, 3]);
    let mixed = graph.reshape(&step("merge_heads"), &mixed, &as_i64_signed(&[tokens, c]));
    let projected = graph.linear(&step("proj"), &attn.proj, &mixed, 3)?;
    let grid = graph.reshape(
        &step("ungrid"),
        &projected,
        &as_i64_signed(&[rows, cols, window, window, c]),
    );
    let grid = graph.transpose(&step("ungroup"), &grid, &[0, 1, 3, 2, 4, 5]);
    let mut x = graph.reshape(
        &step("unwindowed"),
        &grid,
        &as_i64_signed(&[padded_h, padded_w, c]),
    );
    if shifted {
        x = graph.roll(&step("unshift_h"), &x, 1, padded_h, shift_h as i64);
        x = graph.roll(&step("unshift_w"), &x, 2, padded_w, shift_w as i64);
    }
    if padded_h > h || padded_w > w {
        x = graph.slice(&step("crop"), &x, &[1, 2], &[0, 0], &as_i64(&[h, w]));
    }
    Ok(x)
}

/// torchvision's patch merging on `[B, H, W, C]` features.
fn patch_merging(
    graph: &mut GraphBuilder,
    prefix: &str,
    merging: &PatchMerging,
    input: &str,
    [c, h, w]: [usize; 3],
) -> Result<String, ExportError> {
    let padded = graph.pad_end(&format!("{prefix}.pad"), input, &[0, h % 2, w % 2, 0]);
    let (half_h, half_w) = (h.div_ceil(2), w.div_ceil(2));
    let grid = graph.reshape(
        &format!("{prefix}.grid"),
        &padded,
        &as_i64_signed(&[half_h, 2, half_w, 2, c]),
    );
    // Column parity major, row parity minor, as torchvision concatenates the four neighbours.
    let grouped = graph.transpose(&format!("{prefix}.group"), &grid, &[0, 1, 3, 4, 2, 5]);
    let merged = graph.reshape(
        &format!("{prefix}.merged"),
        &grouped,
        &as_i64_signed(&[half_h, half_w, 4 * c]),
    );
    let normed = graph.layer_norm(
        &format!("{prefix}.norm"),
        &merging.norm,
        LAYER_NORM_EPSILON,
        &merged,
    )?;
    graph.linear(
        &format!("{prefix}.reduction"),
        &merging.reduction,
        &normed,
        4,
    )
}

/// A reshape target with an inferred leading (batch-dependent) axis, then `rest`.
fn as_i64_signed(rest: &[usize]) -> Vec<i64> {
    std::iter::once(-1).chain(as_i64(rest)).collect()
}
