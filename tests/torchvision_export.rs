//! The torchvision export writes exactly torchvision's `state_dict` (names, shapes, values, the
//! buffers lacoot derives), minus the removed blocks, and a loader of at most ten lines. The
//! networks carry the torchvision fixtures' weights (tests/fixtures/torch).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::*;
use lacoot::data::Normalization;
use lacoot::device::default_device;
use lacoot::export::ExportSource;
use lacoot::export::torchvision::{
    LOADER_FILE, REFERENCE_FILE, REMOVED_FILE, WEIGHTS_FILE, state_dict, write_torchvision,
};
use lacoot::models::weights::load_torch_weights;
use lacoot::models::{Architecture, BlockNetwork, ModelSpec, RemovalUnit};
use safetensors::SafeTensors;

fn fixture(model: &str) -> PathBuf {
    local_fixtures()
        .join("torch")
        .join(model)
        .join("weights.safetensors")
}

fn source(spec: ModelSpec, model: &str, removed: &[&str]) -> ExportSource {
    let mut network = spec.build(&default_device()).unwrap();
    load_torch_weights(&mut network, &fixture(model), None).unwrap();
    let removed: Vec<String> = removed.iter().map(|s| s.to_string()).collect();
    network.remove_blocks(&removed).unwrap();
    ExportSource {
        network,
        spec: ModelSpec {
            removed_blocks: removed,
            ..spec
        },
        normalization: Normalization {
            mean: vec![0.5; 3],
            std: vec![0.25; 3],
        },
        origin: "a test".into(),
        accuracies: vec![("validation".into(), 0.5)],
    }
}

/// Name → (dtype, shape, bytes) of a safetensors file.
fn tensors(bytes: &[u8]) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    SafeTensors::deserialize(bytes)
        .unwrap()
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let entry = (
                format!("{:?}", view.dtype()),
                view.shape().to_vec(),
                view.data().to_vec(),
            );
            (name, entry)
        })
        .collect()
}

/// The exported state dict equals the fixture's, except the removed blocks' entries.
fn assert_state_dict_is_torchvisions(model: &str, spec: ModelSpec, removed: &[&str]) {
    let exported = tensors(&state_dict(&source(spec, model, removed)).unwrap());
    let mut expected = tensors(&std::fs::read(fixture(model)).unwrap());
    expected.retain(|name, _| !removed.iter().any(|r| name.starts_with(&format!("{r}."))));
    let exported_names: Vec<&String> = exported.keys().collect();
    let expected_names: Vec<&String> = expected.keys().collect();
    assert_eq!(exported_names, expected_names, "{model}");
    for (name, (dtype, shape, data)) in &expected {
        let (got_dtype, got_shape, got_data) = &exported[name];
        assert_eq!((got_dtype, got_shape), (dtype, shape), "{model}: {name}");
        if !name.ends_with("num_batches_tracked") {
            assert_eq!(got_data, data, "{model}: {name}");
        }
    }
}

#[test]
fn exported_weights_are_torchvisions_state_dict_without_the_removed_blocks() {
    let resnet = ModelSpec {
        width: 8,
        ..ModelSpec::new(Architecture::Resnet18, 3, 32, 10)
    };
    assert_state_dict_is_torchvisions("resnet18_cifar", resnet.clone(), &[]);
    assert_state_dict_is_torchvisions("resnet18_cifar", resnet, &["layer3.1", "layer4.1"]);
    let mobilenet = ModelSpec {
        width: 8,
        unit: RemovalUnit::Depthwise,
        ..ModelSpec::new(Architecture::Mobilenetv2Cifar, 3, 32, 10)
    };
    assert_state_dict_is_torchvisions(
        "mobilenetv2_cifar",
        mobilenet,
        &["features.1.conv.0", "features.5.conv.1"],
    );
    let swin = ModelSpec {
        width: 12,
        ..ModelSpec::new(Architecture::SwinT, 3, 32, 10)
    };
    assert_state_dict_is_torchvisions("swin_t", swin, &["features.5.3"]);
}

#[test]
fn the_export_folder_holds_weights_loader_removed_list_and_a_reference_batch() {
    let spec = ModelSpec {
        width: 8,
        ..ModelSpec::new(Architecture::Mobilenetv2, 3, 64, 10)
    };
    let source = source(spec, "mobilenetv2_imagenet", &["features.6"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export");
    write_torchvision(&source, &out).unwrap();
    let removed = read_json(&out.join(REMOVED_FILE));
    assert_eq!(removed["removed_blocks"], serde_json::json!(["features.6"]));
    assert_eq!(
        removed["normalization"]["std"],
        serde_json::json!([0.25, 0.25, 0.25])
    );
    let loader = std::fs::read_to_string(out.join(LOADER_FILE)).unwrap();
    let code_lines = loader.lines().filter(|l| !l.trim().is_empty()).count();
    assert!(code_lines <= 10, "{code_lines} lines:\n{loader}");
    assert!(loader.contains("[\"features.6\"]"), "{loader}");
    assert!(loader.contains("width_mult=0.25"), "{loader}");
    let reference = std::fs::read(out.join(REFERENCE_FILE)).unwrap();
    let reference = tensors(&reference);
    assert_eq!(reference["input"].1, [4, 3, 64, 64]);
    assert_eq!(reference["logits"].1, [4, 10]);
    assert!(out.join(WEIGHTS_FILE).is_file());
    // A second export replaces the folder whole.
    write_torchvision(&source, &out).unwrap();
    assert!(out.join(WEIGHTS_FILE).is_file());
}

#[test]
fn every_architectures_loader_stays_within_ten_lines() {
    for architecture in [
        Architecture::Resnet18,
        Architecture::Resnet34,
        Architecture::Mobilenetv2,
        Architecture::Mobilenetv2Cifar,
        Architecture::SwinT,
    ] {
        let spec = ModelSpec::new(architecture, 3, 32, 10);
        let removed = vec!["a.1".to_string()];
        let loader = lacoot::export::torchvision::pytorch_loader(&spec, &removed);
        let code_lines = loader.lines().filter(|l| !l.trim().is_empty()).count();
        assert!(code_lines <= 10, "{architecture:?}: {code_lines} lines");
        assert!(loader.contains("nn.Identity()") && loader.contains("load_state_dict"));
        let _ = spec.build(&default_device()).unwrap().blocks();
    }
}
