//! MobileNetV2 and Swin-T through the same commands as ResNet: `lacoot train`, `lacoot collapse`
//! and `lacoot eval --model`, with the architecture-specific options (depthwise units, MLP-branch
//! pairing). Tiny widths and 8x8 images keep it fast.

mod common;

use std::path::Path;

use common::{assert_eval_reproduces_chosen, lacoot, ok, read_json};

/// Trains `model_flags` for two epochs with the regulariser, collapses it, and checks that the
/// saved model reproduces the reported accuracy; returns the collapse report.
fn train_and_collapse(data: &Path, run: &Path, model_flags: &[&str]) -> serde_json::Value {
    let run_arg = run.to_str().unwrap();
    ok(lacoot()
        .args(["train", "--data", "mnist", "--data-dir"])
        .arg(data)
        .args(model_flags)
        .args(["--epochs", "2", "--batch-size", "10", "--lr", "0.02"])
        .args(["--num-projections", "4", "--validation-fraction", "0.25"])
        .args(["--out", run_arg])
        .output()
        .unwrap());
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert!(last["regulariser"].as_f64().unwrap() > 0.0, "{last}");
    ok(lacoot()
        .args(["collapse", "--run", run_arg, "--max-drop", "100"])
        .args(["--latency-repeats", "1", "--num-projections", "16"])
        .args(["--batch-size", "10"])
        .output()
        .unwrap());
    let report = read_json(&run.join("collapse/report.json"));
    assert_eval_reproduces_chosen(&run.join("collapse/model"), &report);
    report
}

#[test]
fn mobilenet_v2_trains_and_collapses_its_depthwise_units() {
    let tmp = tempfile::tempdir().unwrap();
    common::write_toy_data(tmp.path(), 4);
    let report = train_and_collapse(
        tmp.path(),
        &tmp.path().join("run"),
        &[
            "--model",
            "mobilenetv2-cifar",
            "--width",
            "8",
            "--unit",
            "depthwise",
        ],
    );
    // 17 depthwise units, 3 of them at stride 2: 14 candidates, removed one at a time.
    let order = report["order"].as_array().unwrap();
    assert_eq!(order.len(), 14);
    assert!(order.iter().all(|name| {
        let name = name.as_str().unwrap();
        name.starts_with("features.") && (name.ends_with(".conv.1") || name == "features.1.conv.0")
    }));
    assert_eq!(report["steps"].as_array().unwrap().len(), 15);
}

#[test]
fn swin_t_trains_and_collapses_with_the_mlp_branch_pairing() {
    let tmp = tempfile::tempdir().unwrap();
    common::write_toy_data(tmp.path(), 4);
    let report = train_and_collapse(
        tmp.path(),
        &tmp.path().join("run"),
        &[
            "--model",
            "swin-t",
            "--width",
            "6",
            "--pairing",
            "mlp-branch",
        ],
    );
    let order = report["order"].as_array().unwrap();
    assert_eq!(order.len(), 12);
    let config = read_json(&tmp.path().join("run/config.json"));
    assert_eq!(config["model"]["pairing"], "mlp-branch");
    assert_eq!(config["model"]["architecture"], "swin-t");
}

#[test]
fn inspect_reports_torchvision_counts_for_both() {
    for (flags, parameters) in [
        (vec!["--model", "mobilenetv2"], 3_504_872u64),
        (vec!["--model", "swin-t"], 28_288_354),
    ] {
        let json: serde_json::Value = serde_json::from_str(&ok(lacoot()
            .arg("inspect")
            .args(&flags)
            .args(["--input", "224", "--classes", "1000", "--json"])
            .output()
            .unwrap()))
        .unwrap();
        assert_eq!(json["total"]["parameters"].as_u64().unwrap(), parameters);
    }
    let refused = lacoot()
        .args(["inspect", "--model", "swin-t", "--unit", "depthwise"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("MobileNetV2 only"));
}
