//! Exported ONNX models run in a pure-Rust ONNX runtime (tract) and give lacoot's own logits within
//! 1e-4, for every architecture, full and collapsed, at batch 1 and 7. The networks carry
//! torchvision-fixture weights (tests/fixtures/torch), so batch norms have real statistics to fold.

mod common;

use std::path::PathBuf;

use burn::tensor::TensorData;
use common::*;
use lacoot::device::default_device;
use lacoot::export::onnx::{BatchAxis, INPUT_NAME, OPSET, OUTPUT_NAME, to_onnx};
use lacoot::models::weights::load_torch_weights;
use lacoot::models::{Architecture, BlockNetwork, ModelSpec, Network, RemovalUnit, StemKind};
use onnx_ir::ModelProto;
use protobuf::Message;
use tract_onnx::prelude::*;

fn fixture(model: &str, name: &str) -> PathBuf {
    local_fixtures().join("torch").join(model).join(name)
}

/// A network of `spec` with a fixture's weights (or its own initialisation when `weights` is
/// `None`), with `removed` blocks replaced by identity.
fn network(spec: &ModelSpec, weights: Option<PathBuf>, removed: &[&str]) -> Network {
    let mut net = spec.build(&default_device()).unwrap();
    if let Some(weights) = weights {
        load_torch_weights(&mut net, &weights, None).unwrap();
    }
    let removed: Vec<String> = removed.iter().map(|s| s.to_string()).collect();
    net.remove_blocks(&removed).unwrap();
    net
}

/// Deterministic inputs in about [-2, 2].
fn images(shape: [usize; 4]) -> Vec<f32> {
    let count: usize = shape.iter().product();
    (0..count)
        .map(|i| ((i * 7919 % 1009) as f32 / 252.0 - 2.0) * ((i % 7) as f32 / 7.0 + 0.5))
        .collect()
}

fn run_tract(onnx: &[u8], shape: [usize; 4], data: &[f32]) -> Vec<f32> {
    let model = tract_onnx::onnx()
        .model_for_read(&mut &onnx[..])
        .unwrap()
        .with_input_fact(0, f32::fact(shape).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let input = tract_ndarray::ArrayD::from_shape_vec(shape.to_vec(), data.to_vec()).unwrap();
    let outputs = model.run(tvec!(Tensor::from(input).into())).unwrap();
    outputs[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

/// Exports `net` with a dynamic batch axis and checks tract's logits against lacoot's at batch
/// 1 and 7.
fn assert_exports_faithfully(label: &str, net: &Network, classes: usize) {
    let onnx = to_onnx(net, classes, BatchAxis::Dynamic, &[]).unwrap();
    check_graph(label, &onnx, net);
    let [c, h, w] = net.input_shape();
    for batch in [1, 7] {
        let shape = [batch, c, h, w];
        let data = images(shape);
        let want: Vec<f32> = net
            .forward(burn::tensor::Tensor::from_data(
                TensorData::new(data.clone(), shape),
                &default_device(),
            ))
            .into_data()
            .try_to_vec()
            .unwrap();
        let got = run_tract(&onnx, shape, &data);
        assert_eq!(got.len(), batch * classes, "{label}");
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "{label}, batch {batch}: max |Δ| = {worst}");
    }
}

/// The rules an ONNX checker applies that matter here: opset, named typed input and output with a
/// symbolic batch axis, every node input defined before use, unique node outputs, no node of a
/// removed block.
fn check_graph(label: &str, onnx: &[u8], net: &Network) {
    let model = ModelProto::parse_from_bytes(onnx).unwrap();
    assert_eq!(model.opset_import.len(), 1, "{label}");
    assert_eq!(model.opset_import[0].version, OPSET, "{label}");
    let graph = model.graph.unwrap();
    assert_eq!(graph.input.len(), 1, "{label}");
    assert_eq!(
        batch_axis(&graph.input[0]),
        "batch",
        "{label}: the batch axis is symbolic"
    );
    assert_eq!(graph.input[0].name, INPUT_NAME);
    assert_eq!(graph.output[0].name, OUTPUT_NAME);
    let mut defined: std::collections::HashSet<String> =
        graph.initializer.iter().map(|t| t.name.clone()).collect();
    defined.insert(INPUT_NAME.to_string());
    for node in &graph.node {
        for input in &node.input {
            assert!(
                defined.contains(input),
                "{label}: {} reads undefined {input}",
                node.name
            );
        }
        for output in &node.output {
            assert!(
                defined.insert(output.clone()),
                "{label}: {output} defined twice"
            );
        }
        for removed in net.removed_blocks() {
            assert!(
                !node.name.starts_with(&format!("{removed}.")),
                "{label}: node {} of removed block {removed}",
                node.name
            );
        }
    }
}

#[test]
fn resnets_export_to_onnx_full_and_collapsed() {
    let spec = ModelSpec {
        width: 8,
        ..ModelSpec::new(Architecture::Resnet18, 3, 32, 10)
    };
    let weights = Some(fixture("resnet18_cifar", "weights.safetensors"));
    let full = network(&spec, weights.clone(), &[]);
    assert_exports_faithfully("resnet18 cifar", &full, 10);
    let collapsed = network(&spec, weights, &["layer1.1", "layer3.1", "layer4.1"]);
    assert_exports_faithfully("resnet18 cifar collapsed", &collapsed, 10);

    let spec = ModelSpec {
        width: 4,
        stem: Some(StemKind::Imagenet),
        ..ModelSpec::new(Architecture::Resnet34, 1, 40, 3)
    };
    let collapsed = network(&spec, None, &["layer2.2", "layer3.5"]);
    assert_exports_faithfully("resnet34 imagenet stem collapsed", &collapsed, 3);
}

#[test]
fn mobilenets_export_to_onnx_in_both_layouts_and_units() {
    for (model, architecture, size) in [
        ("mobilenetv2_cifar", Architecture::Mobilenetv2Cifar, 32),
        ("mobilenetv2_imagenet", Architecture::Mobilenetv2, 64),
    ] {
        let weights = Some(fixture(model, "weights.safetensors"));
        let spec = ModelSpec {
            width: 8,
            ..ModelSpec::new(architecture, 3, size, 10)
        };
        assert_exports_faithfully(model, &network(&spec, weights.clone(), &[]), 10);
        let blocks = network(&spec, weights.clone(), &["features.6", "features.13"]);
        assert_exports_faithfully(&format!("{model} without blocks"), &blocks, 10);
        let spec = ModelSpec {
            unit: RemovalUnit::Depthwise,
            ..spec
        };
        let units = network(&spec, weights, &["features.1.conv.0", "features.5.conv.1"]);
        assert_exports_faithfully(&format!("{model} without depthwise units"), &units, 10);
    }
}

#[test]
fn swin_t_exports_to_onnx_with_shifted_windows_and_padding() {
    let weights = Some(fixture("swin_t", "weights.safetensors"));
    for size in [32, 64] {
        let spec = ModelSpec {
            width: 12,
            ..ModelSpec::new(Architecture::SwinT, 3, size, 10)
        };
        let full = network(&spec, weights.clone(), &[]);
        assert_exports_faithfully(&format!("swin-t {size}"), &full, 10);
        let collapsed = network(&spec, weights.clone(), &["features.1.1", "features.5.3"]);
        assert_exports_faithfully(&format!("swin-t {size} collapsed"), &collapsed, 10);
    }
}

#[test]
fn a_fixed_batch_export_declares_its_batch_size() {
    let spec = ModelSpec {
        width: 4,
        ..ModelSpec::new(Architecture::Resnet18, 3, 16, 2)
    };
    let net = network(&spec, None, &[]);
    let onnx = to_onnx(&net, 2, BatchAxis::Fixed(5), &[("k".into(), "v".into())]).unwrap();
    let model = ModelProto::parse_from_bytes(&onnx).unwrap();
    assert_eq!(model.metadata_props[0].key, "k");
    let graph = model.graph.unwrap();
    assert_eq!(batch_axis(&graph.input[0]), "5");
    assert_eq!(batch_axis(&graph.output[0]), "5");
    let output_dims = &graph.output[0].type_.tensor_type().shape.dim;
    assert_eq!(output_dims[1].dim_value(), 2);
    let logits = run_tract(&onnx, [5, 3, 16, 16], &images([5, 3, 16, 16]));
    assert_eq!(logits.len(), 10);
}

/// The first axis of a value: its symbolic name, or its size.
fn batch_axis(info: &onnx_ir::ValueInfoProto) -> String {
    let first = &info.type_.tensor_type().shape.dim[0];
    if first.has_dim_param() {
        first.dim_param().to_string()
    } else {
        first.dim_value().to_string()
    }
}
