//! `lacoot collapse --weights`: a network trained elsewhere (torchvision-named checkpoints from
//! tests/fixtures/torch) collapsed with no lacoot training run, then evaluated and exported.

mod common;

use std::path::Path;

use common::{assert_eval_reproduces_chosen, lacoot, local_fixtures, ok, read_json};

/// CIFAR-10's binary format: 5 training batches and a test batch of `per_file` random images.
fn write_cifar10(root: &Path, per_file: usize) {
    let mut state = 12345u64;
    let mut byte = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 56) as u8
    };
    let mut write = |name: &str| {
        let mut bytes = Vec::with_capacity(per_file * 3073);
        for i in 0..per_file {
            bytes.push((i % 10) as u8);
            bytes.extend((0..3072).map(|_| byte()));
        }
        std::fs::write(root.join(name), bytes).unwrap();
    };
    for i in 1..=5 {
        write(&format!("data_batch_{i}.bin"));
    }
    write("test_batch.bin");
}

fn fixture(model: &str, file: &str) -> String {
    local_fixtures()
        .join("torch")
        .join(model)
        .join(file)
        .to_str()
        .unwrap()
        .to_string()
}

const FAST: [&str; 8] = [
    "--max-drop",
    "100",
    "--latency-repeats",
    "1",
    "--num-projections",
    "8",
    "--batch-size",
    "20",
];

#[test]
fn a_torchvision_checkpoint_collapses_without_a_training_run() {
    let tmp = tempfile::tempdir().unwrap();
    write_cifar10(tmp.path(), 20);
    let data_dir = tmp.path().to_str().unwrap();
    let out = tmp.path().join("collapsed");
    let weights = fixture("resnet18_cifar", "weights.safetensors");
    let printed = ok(lacoot()
        .args([
            "collapse",
            "--weights",
            &weights,
            "--model",
            "resnet18",
            "--width",
            "8",
        ])
        .args(["--data", "cifar10", "--data-dir", data_dir])
        .args(["--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"])
        .args(FAST)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap());
    assert!(
        printed.contains("not trained with the LaCoOT regulariser"),
        "{printed}"
    );
    let report = read_json(&out.join("report.json"));
    assert!(report["note"].as_str().unwrap().contains("training-free"));
    assert_eq!(report["split_images"][0], 10, "10 % of 100 training images");
    let markdown = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(markdown.contains("**Note:**"), "{markdown}");
    let manifest = read_json(&out.join("model").join("manifest.json"));
    assert_eq!(
        manifest["normalization"]["std"],
        serde_json::json!([0.25, 0.25, 0.25])
    );
    assert!(
        report["chosen"].as_u64().unwrap() > 0,
        "max-drop 100 removes blocks"
    );

    let model = out.join("model");
    assert_eval_reproduces_chosen(&model, &report);
    ok(lacoot()
        .args(["export", "--format", "onnx", "--model"])
        .arg(&model)
        .output()
        .unwrap());
    assert!(out.join("model.onnx").is_file());

    // A .pth saved from a wrapper module, with the prefix stripped; normalisation from the data.
    let wrapped = tmp.path().join("wrapped");
    ok(lacoot()
        .args([
            "collapse",
            "--model",
            "mobilenetv2-cifar",
            "--width",
            "8",
            "--unit",
            "depthwise",
        ])
        .args([
            "--weights",
            &fixture("mobilenetv2_cifar", "weights_backbone_prefix.pth"),
        ])
        .args([
            "--strip-prefix",
            "backbone.",
            "--data",
            "cifar10",
            "--data-dir",
            data_dir,
        ])
        .args(FAST)
        .arg("--out")
        .arg(&wrapped)
        .output()
        .unwrap());
    let manifest = read_json(&wrapped.join("model").join("manifest.json"));
    assert_eq!(manifest["model"]["unit"], "depthwise");
}

#[test]
fn weights_that_do_not_fit_the_named_network_get_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    write_cifar10(tmp.path(), 10);
    let weights = fixture("resnet18_cifar", "weights.safetensors");
    let output = lacoot()
        .args([
            "collapse",
            "--weights",
            &weights,
            "--model",
            "resnet34",
            "--width",
            "8",
        ])
        .args([
            "--data",
            "cifar10",
            "--data-dir",
            tmp.path().to_str().unwrap(),
        ])
        .arg("--out")
        .arg(tmp.path().join("x"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let error = String::from_utf8(output.stderr).unwrap();
    assert!(
        error.contains(&weights) && error.contains("missing"),
        "{error}"
    );
    assert_eq!(error.trim().lines().count(), 1, "{error}");
    assert!(!tmp.path().join("x").exists());

    let output = lacoot()
        .args(["collapse", "--weights", &weights, "--model", "resnet18"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let error = String::from_utf8(output.stderr).unwrap();
    assert!(
        error.contains("--data") && error.contains("--out"),
        "{error}"
    );
}
