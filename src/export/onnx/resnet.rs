//! ResNet-18/34 as an ONNX graph: convolutions with their batch norms folded in, removed blocks
//! absent.

use burn::nn::PaddingConfig2d;

use super::graph::{Attribute, GraphBuilder, as_i64};
use crate::export::ExportError;
use crate::models::ResNet;

/// Appends the network to `graph`, reading `input`; returns the logits.
pub fn lower(graph: &mut GraphBuilder, net: &ResNet, input: &str) -> Result<String, ExportError> {
    let x = graph.conv("conv1", &net.conv1, Some(&net.bn1), input)?;
    let x = graph.node("Relu", "relu", &[&x], &[]);
    let pads = match net.maxpool.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) => {
            vec![top as i64, left as i64, bottom as i64, right as i64]
        }
        _ => vec![0; 4],
    };
    let mut x = graph.node(
        "MaxPool",
        "maxpool",
        &[&x],
        &[
            Attribute::Ints("kernel_shape", as_i64(&net.maxpool.kernel_size)),
            Attribute::Ints("strides", as_i64(&net.maxpool.stride)),
            Attribute::Ints("pads", pads),
        ],
    );
    let removed = crate::models::BlockNetwork::removed_blocks(net);
    for (name, block) in net.named_blocks() {
        if removed.contains(&name) {
            continue;
        }
        let out = graph.conv(&format!("{name}.conv1"), &block.conv1, Some(&block.bn1), &x)?;
        let out = graph.node("Relu", &format!("{name}.relu1"), &[&out], &[]);
        let out = graph.conv(
            &format!("{name}.conv2"),
            &block.conv2,
            Some(&block.bn2),
            &out,
        )?;
        let shortcut = match &block.downsample {
            Some((conv, norm)) => {
                graph.conv(&format!("{name}.downsample"), conv, Some(norm), &x)?
            }
            None => x.clone(),
        };
        let sum = graph.node("Add", &format!("{name}.add"), &[&out, &shortcut], &[]);
        x = graph.node("Relu", &format!("{name}.relu2"), &[&sum], &[]);
    }
    graph.pooled_classifier("fc", &net.fc, &x)
}
