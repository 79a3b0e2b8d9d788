//! MobileNetV2 (both layouts, both removal units) and Swin-T against PyTorch: torchvision weights
//! load by name into lacoot's networks and reproduce torchvision's eval-mode logits, also with
//! blocks replaced by identity. Fixtures: tests/fixtures/torch, made by tools/make_torch_fixtures.py.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use lacoot::device::default_device;
use lacoot::models::weights::load_torch_weights;
use lacoot::models::{
    Architecture, BlockNetwork, FeaturePairing, ModelError, ModelSpec, Network, RemovalUnit,
};

fn fixture(model: &str, name: &str) -> PathBuf {
    local_fixtures().join("torch").join(model).join(name)
}

fn assert_net_matches(net: &Network, input: &Path, expected: &Path) {
    assert_logits_match(net.forward(read_array4(input)), expected);
}

fn mobilenet(architecture: Architecture, size: usize, unit: RemovalUnit) -> ModelSpec {
    ModelSpec {
        width: 8, // torchvision's width_mult 0.25
        unit,
        ..ModelSpec::new(architecture, 3, size, 10)
    }
}

fn load(spec: &ModelSpec, weights: &Path, prefix: Option<&str>) -> Network {
    let mut net = spec.build(&default_device()).unwrap();
    load_torch_weights(&mut net, weights, prefix).unwrap();
    net
}

#[test]
fn mobilenet_v2_reproduces_torchvision_in_both_layouts_and_units() {
    for (model, architecture, size) in [
        ("mobilenetv2_cifar", Architecture::Mobilenetv2Cifar, 32),
        ("mobilenetv2_imagenet", Architecture::Mobilenetv2, 64),
    ] {
        let expected = read_json(&fixture(model, "expected.json"));
        let input = fixture(model, "input.npy");
        let weights = fixture(model, "weights.safetensors");

        let spec = mobilenet(architecture, size, RemovalUnit::Block);
        let mut net = load(&spec, &weights, None);
        assert_eq!(
            net.total_parameters() as u64,
            expected["parameters"].as_u64().unwrap()
        );
        assert_eq!(net.total_macs(), expected["macs"].as_u64().unwrap());
        assert_net_matches(&net, &input, &fixture(model, "logits_eval.npy"));
        net.remove_blocks(&["features.6".into()]).unwrap();
        assert_net_matches(
            &net,
            &input,
            &fixture(model, "logits_eval_without_features.6.npy"),
        );

        let spec = mobilenet(architecture, size, RemovalUnit::Depthwise);
        let mut net = load(&spec, &weights, None);
        net.remove_blocks(&["features.1.conv.0".into(), "features.5.conv.1".into()])
            .unwrap();
        assert_net_matches(
            &net,
            &input,
            &fixture(
                model,
                "logits_eval_without_features.1.conv.0_features.5.conv.1.npy",
            ),
        );
    }
}

#[test]
fn mobilenet_v2_loads_a_pth_saved_from_a_wrapper() {
    let model = "mobilenetv2_cifar";
    let spec = mobilenet(Architecture::Mobilenetv2Cifar, 32, RemovalUnit::Block);
    let weights = fixture(model, "weights_backbone_prefix.pth");
    let mut net = spec.build(&default_device()).unwrap();
    match load_torch_weights(&mut net, &weights, None) {
        Err(ModelError::Weights { path, reason }) => {
            assert_eq!(path, weights);
            assert!(
                reason.contains("missing keys [classifier.1.bias, classifier.1.weight")
                    && reason.contains("unexpected keys [backbone.")
                    && reason.ends_with("strip it (--strip-prefix backbone.)"),
                "{reason}"
            );
            assert!(reason.len() < 1200, "the message lists every key: {reason}");
        }
        other => panic!("expected a key mismatch, got {other:?}"),
    }
    let net = load(&spec, &weights, Some("backbone."));
    assert_net_matches(
        &net,
        &fixture(model, "input.npy"),
        &fixture(model, "logits_eval.npy"),
    );
}

#[test]
fn swin_t_reproduces_torchvision_with_padded_and_shifted_windows() {
    let expected = read_json(&fixture("swin_t", "expected.json"));
    // At 32x32 the 8x8 patch grid pads to 14x14 (shifted windows in stage 1 only); at 64x64 the
    // 16x16 grid pads to 21x21 and stage 2's 8x8 to 14x14. The .pth also holds torchvision's
    // integer `relative_position_index` buffers, which lacoot derives instead of loading.
    for (size, weights) in [(32, "weights.safetensors"), (64, "weights.pth")] {
        let weights = fixture("swin_t", weights);
        let spec = ModelSpec {
            width: 12,
            ..ModelSpec::new(Architecture::SwinT, 3, size, 10)
        };
        let mut net = load(&spec, &weights, None);
        assert_eq!(
            net.total_parameters() as u64,
            expected["parameters"].as_u64().unwrap()
        );
        let macs = &expected[format!("macs_{size}")];
        assert_eq!(
            net.total_macs(),
            macs["conv_linear"].as_u64().unwrap() + macs["attention"].as_u64().unwrap()
        );
        let input = fixture("swin_t", &format!("input_{size}.npy"));
        assert_net_matches(
            &net,
            &input,
            &fixture("swin_t", &format!("logits_eval_{size}.npy")),
        );
        net.remove_blocks(&["features.5.3".into()]).unwrap();
        assert_net_matches(
            &net,
            &input,
            &fixture(
                "swin_t",
                &format!("logits_eval_{size}_without_features.5.3.npy"),
            ),
        );
    }
}

#[test]
fn options_of_one_architecture_are_refused_for_another() {
    let device = default_device();
    let depthwise_resnet = ModelSpec {
        unit: RemovalUnit::Depthwise,
        ..ModelSpec::new(Architecture::Resnet18, 3, 32, 10)
    };
    let branch_mobilenet = ModelSpec {
        pairing: FeaturePairing::MlpBranch,
        ..ModelSpec::new(Architecture::Mobilenetv2, 3, 32, 10)
    };
    for (spec, needle) in [
        (depthwise_resnet, "MobileNetV2 only"),
        (branch_mobilenet, "Swin-T only"),
    ] {
        match spec.build(&device) {
            Err(ModelError::InvalidConfig(message)) => {
                assert!(message.contains(needle), "{message}")
            }
            other => panic!("expected an invalid configuration, got {other:?}"),
        }
    }
}
