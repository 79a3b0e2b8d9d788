//! The CIFAR ResNet-18 against PyTorch: weights load by torchvision name and reproduce PyTorch's
//! eval-mode logits, also with blocks replaced by identity (a width-8 network, so the fixture stays
//! small; the full-width counts are checked without weights).

mod common;

use std::path::Path;

use common::*;
use lacoot::device::default_device;
use lacoot::models::weights::load_torch_weights;
use lacoot::models::{BlockNetwork, ModelError, ResNet, ResNetConfig, ResNetDepth, Stem};

fn fixture(name: &str) -> std::path::PathBuf {
    local_fixtures().join("torch/resnet18_cifar").join(name)
}

/// The fixture's width.
const WIDTH: usize = 8;

fn resnet18(width: usize) -> ResNet {
    ResNetConfig::new(ResNetDepth::ResNet18, Stem::Cifar)
        .with_width(width)
        .init(&default_device())
        .unwrap()
}

fn loaded(weights: &Path) -> ResNet {
    let mut net = resnet18(WIDTH);
    let report = load_torch_weights(&mut net, weights, None).unwrap();
    // 62 parameters and 40 running statistics.
    assert_eq!(report.applied, 102, "{report:?}");
    net
}

fn assert_resnet_matches(net: &ResNet, expected_file: &str) {
    let input = read_array4(&fixture("input.npy"));
    assert_logits_match(net.forward(input), &fixture(expected_file));
}

#[test]
fn pth_and_safetensors_reproduce_pytorch_eval_logits() {
    for weights in ["weights.pth", "weights.safetensors"] {
        let mut net = loaded(&fixture(weights));
        assert_resnet_matches(&net, "logits_eval.npy");
        net.remove_blocks(&["layer3.1".into(), "layer4.1".into()])
            .unwrap();
        assert_resnet_matches(&net, "logits_eval_without_layer3.1_layer4.1.npy");
    }
}

#[test]
fn counts_match_the_fixture() {
    let expected = read_json(&fixture("expected.json"));
    let net = loaded(&fixture("weights.safetensors"));
    assert_eq!(
        net.total_parameters() as u64,
        expected["parameters"].as_u64().unwrap()
    );
    assert_eq!(net.total_macs(), expected["macs"].as_u64().unwrap());
    // The paper's network: 11,173,962 parameters and 140,186,624 MACs (140.19 M).
    let full = resnet18(64);
    assert_eq!(
        full.total_parameters() as u64,
        expected["full_width_parameters"].as_u64().unwrap()
    );
    assert_eq!(
        full.total_macs(),
        expected["full_width_macs"].as_u64().unwrap()
    );
}

#[test]
fn mismatched_checkpoints_are_reported_by_key() {
    // A 100-class network cannot take the 10-class head; a ResNet-34 lacks nothing but has extra
    // blocks the file does not provide.
    let mut wide = ResNetConfig::new(ResNetDepth::ResNet34, Stem::Cifar)
        .with_width(WIDTH)
        .init(&default_device())
        .unwrap();
    match load_torch_weights(&mut wide, &fixture("weights.safetensors"), None) {
        Err(ModelError::Weights { path, reason }) => {
            assert!(path.ends_with("weights.safetensors"));
            assert!(
                // ResNet-34's extra blocks: 8 of ResNet-34's 16 blocks, 10 tensors each.
                reason.contains("80 missing keys [layer1.2.bn1.beta")
                    && reason.contains("0 unexpected keys []"),
                "{reason}"
            );
        }
        other => panic!("expected a key mismatch, got {other:?}"),
    }
    let mut net = resnet18(WIDTH);
    match load_torch_weights(&mut net, Path::new("no/such/file.pth"), None) {
        Err(ModelError::Weights { reason, .. }) => assert_eq!(reason, "no such file"),
        other => panic!("expected a missing-file error, got {other:?}"),
    }
}

#[test]
fn a_wrapper_prefix_can_be_stripped() {
    // The same weights saved from a wrapper module: every key starts with "backbone.".
    let bytes = std::fs::read(fixture("weights.safetensors")).unwrap();
    let original = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let renamed: Vec<(String, safetensors::tensor::TensorView)> = original
        .tensors()
        .into_iter()
        .map(|(name, view)| (format!("backbone.{name}"), view))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let wrapped = tmp.path().join("wrapped.safetensors");
    safetensors::serialize_to_file(renamed, None, &wrapped).unwrap();

    let mut net = resnet18(WIDTH);
    assert!(load_torch_weights(&mut net, &wrapped, None).is_err());
    let report = load_torch_weights(&mut net, &wrapped, Some("backbone.")).unwrap();
    assert_eq!(report.applied, 102);
    assert_resnet_matches(&net, "logits_eval.npy");
}
