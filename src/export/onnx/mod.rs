//! ONNX export (opset 17): each architecture is lowered to a graph whose nodes carry
//! torchvision's module names, with eval-mode batch norms folded into the convolutions and
//! removed blocks left out.

mod graph;
mod mobilenet;
mod resnet;
mod swin;

use onnx_ir::ModelProto;
use protobuf::Message;

pub use graph::BatchAxis;
use graph::GraphBuilder;

use super::ExportError;
use crate::models::{BlockNetwork, Network};

/// The ONNX operator set the graphs use (`LayerNormalization` needs 17).
pub const OPSET: i64 = 17;
/// The ONNX IR version that goes with [`OPSET`].
const IR_VERSION: i64 = 8;
/// The name of the graph's input.
pub const INPUT_NAME: &str = "images";
/// The name of the graph's output.
pub const OUTPUT_NAME: &str = "logits";

/// The network as a serialised ONNX model: input `images` `[batch, C, H, W]` (normalised as the
/// network was trained), output `logits` `[batch, classes]`; `metadata` goes into the model's
/// `metadata_props`; `num_classes` is the length of the output's last axis.
pub fn to_onnx(
    network: &Network,
    num_classes: usize,
    batch: BatchAxis,
    metadata: &[(String, String)],
) -> Result<Vec<u8>, ExportError> {
    let mut graph = GraphBuilder::new("lacoot", batch);
    let input = graph.input(INPUT_NAME, &network.input_shape());
    let logits = match network {
        Network::ResNet(net) => resnet::lower(&mut graph, net, &input)?,
        Network::MobileNetV2(net) => mobilenet::lower(&mut graph, net, &input)?,
        Network::Swin(net) => swin::lower(&mut graph, net, &input)?,
    };
    graph.output(&logits, OUTPUT_NAME, &[num_classes]);

    let mut model = ModelProto::new();
    model.ir_version = IR_VERSION;
    model.producer_name = "lacoot".into();
    model.producer_version = env!("CARGO_PKG_VERSION").into();
    model.opset_import.push(Default::default());
    let opset = model.opset_import.last_mut().expect("just pushed");
    opset.domain = String::new();
    opset.version = OPSET;
    for (key, value) in metadata {
        model.metadata_props.push(Default::default());
        let entry = model.metadata_props.last_mut().expect("just pushed");
        entry.key = key.clone();
        entry.value = value.clone();
    }
    model.graph = protobuf::MessageField::some(graph.finish());
    model
        .write_to_bytes()
        .map_err(|e| ExportError::Graph(format!("cannot serialise the ONNX model: {e}")))
}
