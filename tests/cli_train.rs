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

fn train_args(data: &Path, out: &Path) -> Vec<String> {
    [
        "train",
        "--data",
        "mnist",
        "--data-dir",
        data.to_str().unwrap(),
        "--width",
        "4",
        "--epochs",
        "1",
        "--batch-size",
        "10",
        "--num-projections",
        "4",
        "--out",
        out.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

/// Runs lacoot and expects a failure explained in one line that contains `needle`.
fn fails_with(args: &[String], needle: &str) {
    let output = lacoot().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{args:?} succeeded");
    assert!(
        stderr.contains(needle) && !stderr.contains("panicked"),
        "{args:?}: {stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
}

#[test]
fn nonsense_flags_are_refused_before_a_run_exists() {
    let tmp = tempfile::tempdir().unwrap();
    write_data(tmp.path());
    let out = tmp.path().join("run");
    for (flag, value, needle) in [
        ("--lr", "nan", "--lr must be"),
        ("--lr", "inf", "--lr must be"),
        ("--momentum", "-1", "--momentum must be"),
        ("--momentum", "nan", "--momentum must be"),
        ("--weight-decay", "nan", "--weight-decay must be"),
        ("--gamma", "-1", "--gamma must be"),
        ("--milestones", "nan", "--milestones must be"),
        ("--milestones", "0.75,0.5", "--milestones must be"),
        ("--milestones", "2", "--milestones must be"),
        ("--p", "inf", "--p must be"),
        ("--p", "0.5", "--p must be"),
        ("--lambda", "-1", "--lambda must be"),
        ("--num-projections", "0", "--num-projections must be"),
        ("--num-projections", "10000000", "--num-projections must be"),
        (
            "--validation-fraction",
            "1",
            "--validation-fraction must be",
        ),
        ("--width", "0", "--width must be"),
        ("--width", "100000", "width must be between"),
        ("--epochs", "0", "--epochs must be"),
        ("--batch-size", "0", "--batch-size must be"),
        ("--batch-size", "100", "larger than the training split"),
        (
            "--validation-fraction",
            "0.999",
            "larger than the training split",
        ),
        (
            "--crop-padding",
            "10",
            "--crop-padding 10 is larger than the 4-pixel images",
        ),
    ] {
        let mut args = train_args(tmp.path(), &out);
        match args.iter().position(|a| a == flag) {
            Some(index) => args[index + 1] = value.to_string(),
            None => args.extend([flag.to_string(), value.to_string()]),
        }
        fails_with(&args, needle);
        assert!(
            !out.join("config.json").exists(),
            "{flag} {value} left a run behind"
        );
    }
}

#[test]
fn eval_refuses_data_that_does_not_fit_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    write_data(tmp.path());
    let out = tmp.path().join("run");
    common::ok(
        lacoot()
            .args(train_args(tmp.path(), &out))
            .output()
            .unwrap(),
    );
    let run = out.to_str().unwrap().to_string();

    // CIFAR-10 (3 x 32 x 32) against a 1 x 4 x 4 model: one line, a failure, no number.
    let cifar = tmp.path().join("cifar");
    std::fs::create_dir_all(&cifar).unwrap();
    let records: Vec<u8> = (0..2 * 3073).map(|i| (i % 10) as u8).collect();
    for name in [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ] {
        std::fs::write(cifar.join(name), &records).unwrap();
    }
    let eval = |extra: &[&str]| {
        let mut args: Vec<String> = ["eval", "--run", &run].map(String::from).to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    fails_with(
        &eval(&["--data", "cifar10", "--data-dir", cifar.to_str().unwrap()]),
        "images are 3x32x32 (channels x height x width) but the model takes 1x4x4",
    );
    let output = lacoot()
        .args(eval(&["--data-dir", cifar.to_str().unwrap()]))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--data"));

    // The same data set from another copy is refused unless asked for explicitly.
    let copy = tmp.path().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    write_data(&copy);
    let mut config = common::read_json(&out.join("config.json"));
    config["config"]["data"]["root"] = serde_json::json!(copy.to_str().unwrap());
    std::fs::write(out.join("config.json"), config.to_string()).unwrap();
    fails_with(&eval(&[]), "is not the data recorded with the model");
    let explicit = lacoot()
        .args(eval(&[
            "--data",
            "mnist",
            "--data-dir",
            copy.to_str().unwrap(),
        ]))
        .output()
        .unwrap();
    assert!(explicit.status.success());
    assert!(String::from_utf8_lossy(&explicit.stdout).contains("not the model's own data"));
}

#[test]
fn the_demo_never_deletes_what_it_did_not_make() {
    let tmp = tempfile::tempdir().unwrap();
    let precious = tmp.path().join("baseline");
    std::fs::create_dir_all(&precious).unwrap();
    std::fs::write(precious.join("config.json"), "{}").unwrap();
    let out = tmp.path().to_str().unwrap();
    for extra in [&["--width", "0"][..], &[][..]] {
        let mut args = vec!["demo", "--out", out, "--epochs", "1"];
        args.extend_from_slice(extra);
        let output = lacoot().args(&args).output().unwrap();
        assert!(!output.status.success());
        assert!(
            precious.join("config.json").is_file(),
            "{args:?} deleted a user's run"
        );
    }
}

#[test]
fn a_closed_pipe_ends_quietly() {
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("lacoot"))
        .args(["inspect", "--model", "resnet34", "--width", "4"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
