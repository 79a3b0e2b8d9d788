//! MobileNetV2 as an ONNX graph: convolutions with their batch norms folded in, ReLU6 as `Clip`,
//! removed blocks or depthwise units absent.

use super::graph::GraphBuilder;
use crate::export::ExportError;
use crate::models::mobilenet::{Feature, ResidualLayer};
use crate::models::{BlockNetwork, MobileNetV2, RemovalUnit};

/// Appends the network to `graph`, reading `input`; returns the logits.
pub fn lower(
    graph: &mut GraphBuilder,
    net: &MobileNetV2,
    input: &str,
) -> Result<String, ExportError> {
    let removed = net.removed_blocks();
    let mut x = input.to_string();
    for (index, feature) in net.features.iter().enumerate() {
        let prefix = format!("features.{index}");
        match feature {
            Feature::Conv((conv, norm)) => {
                let out = graph.conv(&format!("{prefix}.0"), conv, Some(norm), &x)?;
                x = graph.relu6(&format!("{prefix}.2"), &out);
            }
            Feature::InvertedResidual(block) => {
                let name = net.block_name(index, block);
                let is_removed = removed.contains(&name);
                if is_removed && net.unit == RemovalUnit::Block {
                    continue;
                }
                let skipped = (is_removed && net.unit == RemovalUnit::Depthwise)
                    .then(|| block.depthwise_index());
                let mut out = x.clone();
                let mut layers = block.conv.iter().enumerate().peekable();
                while let Some((position, layer)) = layers.next() {
                    let layer_name = format!("{prefix}.conv.{position}");
                    if Some(position) == skipped {
                        continue;
                    }
                    out = match layer {
                        ResidualLayer::Activated((conv, norm)) => {
                            let conv_out =
                                graph.conv(&format!("{layer_name}.0"), conv, Some(norm), &out)?;
                            graph.relu6(&format!("{layer_name}.2"), &conv_out)
                        }
                        ResidualLayer::Projection(conv) => {
                            let norm = match layers.peek() {
                                Some((_, ResidualLayer::Norm(norm))) => Some(norm),
                                _ => None,
                            };
                            if norm.is_some() {
                                layers.next();
                            }
                            graph.conv(&layer_name, conv, norm, &out)?
                        }
                        ResidualLayer::Norm(_) => {
                            return Err(ExportError::Graph(format!(
                                "{layer_name}: a batch norm without its convolution"
                            )));
                        }
                    };
                }
                x = if block.residual {
                    graph.node("Add", &format!("{prefix}.add"), &[&x, &out], &[])
                } else {
                    out
                };
            }
        }
    }
    graph.pooled_classifier("classifier.1", &net.classifier.1, &x)
}
