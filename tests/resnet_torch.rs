//! The CIFAR ResNet-18 against PyTorch: weights load by torchvision name and reproduce PyTorch's
//! eval-mode logits, also with blocks replaced by identity.

mod common;

use std::path::Path;

use common::*;
use lacoot::device::default_device;
use lacoot::models::weights::load_torch_weights;
use lacoot::models::{BlockNetwork, ModelError, ResNet, ResNetConfig, ResNetDepth, Stem};

fn fixture(name: &str) -> std::path::PathBuf {
    shared_fixtures().join("torch/resnet18_cifar10").join(name)
}

fn loaded(weights: &Path) -> ResNet {
    let mut net = ResNetConfig::new(ResNetDepth::ResNet18, Stem::Cifar)
        .init(&default_device())
        .unwrap();
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
    for weights in ["resnet18_cifar.pth", "resnet18_cifar.safetensors"] {
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
    let net = loaded(&fixture("resnet18_cifar.safetensors"));
    assert_eq!(
        net.total_parameters() as u64,
        expected["parameters"].as_u64().unwrap()
    );
    assert_eq!(
        net.total_macs(),
        expected["macs_conv_linear_per_image"].as_u64().unwrap()
    );
}

#[test]
fn mismatched_checkpoints_are_reported_by_key() {
    // A 100-class network cannot take the 10-class head; a ResNet-34 lacks nothing but has extra
    // blocks the file does not provide.
    let mut wide = ResNetConfig::new(ResNetDepth::ResNet34, Stem::Cifar)
        .init(&default_device())
        .unwrap();
    match load_torch_weights(&mut wide, &fixture("resnet18_cifar.safetensors"), None) {
        Err(ModelError::Weights { path, reason }) => {
            assert!(path.ends_with("resnet18_cifar.safetensors"));
            assert!(
                // ResNet-34's extra blocks: 8 of ResNet-34's 16 blocks, 10 tensors each.
                reason.contains("80 missing keys [layer1.2.bn1.beta")
                    && reason.contains("0 unexpected keys []"),
                "{reason}"
            );
        }
        other => panic!("expected a key mismatch, got {other:?}"),
    }
    let mut net = ResNetConfig::new(ResNetDepth::ResNet18, Stem::Cifar)
        .init(&default_device())
        .unwrap();
    match load_torch_weights(&mut net, Path::new("no/such/file.pth"), None) {
        Err(ModelError::Weights { reason, .. }) => assert_eq!(reason, "no such file"),
        other => panic!("expected a missing-file error, got {other:?}"),
    }
}

#[test]
fn a_wrapper_prefix_can_be_stripped() {
    // The same weights saved from a wrapper module: every key starts with "backbone.".
    let bytes = std::fs::read(fixture("resnet18_cifar.safetensors")).unwrap();
    let original = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let renamed: Vec<(String, safetensors::tensor::TensorView)> = original
        .tensors()
        .into_iter()
        .map(|(name, view)| (format!("backbone.{name}"), view))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let wrapped = tmp.path().join("wrapped.safetensors");
    safetensors::serialize_to_file(renamed, None, &wrapped).unwrap();

    let mut net = ResNetConfig::new(ResNetDepth::ResNet18, Stem::Cifar)
        .init(&default_device())
        .unwrap();
    assert!(load_torch_weights(&mut net, &wrapped, None).is_err());
    let report = load_torch_weights(&mut net, &wrapped, Some("backbone.")).unwrap();
    assert_eq!(report.applied, 102);
    assert_resnet_matches(&net, "logits_eval.npy");
}
