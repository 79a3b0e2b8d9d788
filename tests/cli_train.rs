//! `lacoot train` and `lacoot eval` from the outside.

mod common;

use std::path::Path;

use common::lacoot;
use lacoot::data::idx::encode_idx;

/// A 10-class IDX data set of 4x4 images: 30 training and 20 test images.
fn write_data(root: &Path) {
    for (split, count) in [("train", 30), ("t10k", 20)] {
        let pixels: Vec<u8> = (0..count * 16).map(|v| (v * 37 % 256) as u8).collect();
        let labels: Vec<u8> = (0..count).map(|i| (i % 10) as u8).collect();
        std::fs::write(
            root.join(format!("{split}-images-idx3-ubyte")),
            encode_idx(&[count, 4, 4], &pixels),
        )
        .unwrap();
        std::fs::write(
            root.join(format!("{split}-labels-idx1-ubyte")),
            encode_idx(&[count], &labels),
        )
        .unwrap();
    }
}

#[test]
fn train_then_eval_then_refuse_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    write_data(tmp.path());
    let out = tmp.path().join("run");
    let data = tmp.path().to_str().unwrap();
    let args = [
        "train",
        "--data",
        "mnist",
        "--data-dir",
        data,
        "--width",
        "4",
        "--epochs",
        "2",
        "--batch-size",
        "10",
        "--num-projections",
        "4",
        "--validation-fraction",
        "0.0",
        "--out",
        out.to_str().unwrap(),
    ];
    let output = lacoot().args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("epoch   2") && stderr.contains("run in"),
        "{stderr}"
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["config"]["lambda"], 5.0);
    assert_eq!(config["config"]["momentum"], 0.9);
    assert_eq!(config["model"]["input_size"], 4);

    let eval = lacoot()
        .args([
            "eval",
            "--run",
            out.to_str().unwrap(),
            "--checkpoint",
            "last",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(report["images"], 20);
    assert!((0.0..=1.0).contains(&report["accuracy"].as_f64().unwrap()));

    let again = lacoot().args(args).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a run"));

    let resumed = lacoot()
        .args(["train", "--resume", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
}

#[test]
fn bad_runs_and_data_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = lacoot()
        .args(["eval", "--run", tmp.path().join("nope").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("nope") && stderr.contains("config.json"),
        "{stderr}"
    );

    let no_folder = lacoot()
        .args([
            "train",
            "--data",
            "cifar10",
            "--out",
            tmp.path().join("r").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&no_folder.stderr).contains("needs a folder"));

    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let bad = lacoot()
        .args([
            "train",
            "--data",
            "cifar10",
            "--data-dir",
            empty.to_str().unwrap(),
            "--out",
            tmp.path().join("r2").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && stderr.contains("data_batch_1.bin"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
}
