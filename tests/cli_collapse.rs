//! `lacoot collapse`, `lacoot eval --model` and `lacoot demo` from the outside.

mod common;

use common::{assert_eval_reproduces_chosen, lacoot, ok, read_json};

#[test]
fn collapse_writes_everything_and_the_saved_model_reproduces_its_accuracy() {
    let tmp = tempfile::tempdir().unwrap();
    common::write_toy_data(tmp.path(), 4);
    let run = tmp.path().join("run");
    let run_arg = run.to_str().unwrap();
    ok(lacoot()
        .args([
            "train",
            "--data",
            "mnist",
            "--data-dir",
            tmp.path().to_str().unwrap(),
        ])
        .args([
            "--width",
            "4",
            "--epochs",
            "2",
            "--batch-size",
            "10",
            "--num-projections",
            "4",
        ])
        .args(["--validation-fraction", "0.25", "--out", run_arg])
        .output()
        .unwrap());
    let table = ok(lacoot()
        .args([
            "collapse",
            "--run",
            run_arg,
            "--max-drop",
            "100",
            "--latency-repeats",
            "1",
        ])
        .args(["--num-projections", "16", "--batch-size", "10"])
        .output()
        .unwrap());
    assert!(
        table.contains("◀ chosen") && table.contains("lacoot eval --model"),
        "{table}"
    );
    let out = run.join("collapse");
    for file in [
        "report.json",
        "report.md",
        "accuracy_vs_blocks.svg",
        "accuracy_vs_blocks.png",
        "accuracy_vs_macs.svg",
        "accuracy_vs_macs.png",
        "model/manifest.json",
        "model/model.safetensors",
    ] {
        assert!(out.join(file).is_file(), "{file}");
    }
    assert_eval_reproduces_chosen(&out.join("model"), &read_json(&out.join("report.json")));

    // With recalibrated batch-norm statistics, the saved model carries them: eval reproduces the
    // reported accuracy again, and the report says what was done.
    ok(lacoot()
        .args(["collapse", "--run", run_arg, "--max-drop", "100"])
        .args(["--latency-repeats", "1", "--num-projections", "16"])
        .args(["--batch-size", "10", "--recalibrate-bn", "4"])
        .output()
        .unwrap());
    let report = read_json(&out.join("report.json"));
    assert_eq!(report["settings"]["recalibration_batches"], 4);
    assert!(
        report["chosen"].as_u64().unwrap() > 0,
        "max-drop 100 removes blocks"
    );
    assert_eval_reproduces_chosen(&out.join("model"), &report);
    let markdown = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        markdown.contains("re-estimated from 4 training batches"),
        "{markdown}"
    );

    let impossible = lacoot()
        .args(["collapse", "--run", run_arg, "--target-macs", "1K"])
        .output()
        .unwrap();
    assert!(!impossible.status.success());
    assert!(String::from_utf8_lossy(&impossible.stderr).contains("no removal meets the budget"));
    // The failed collapse left the previous report in place.
    assert!(out.join("report.json").is_file());

    let missing = lacoot()
        .args([
            "collapse",
            "--run",
            tmp.path().join("nope").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not a lacoot run"));
}

#[test]
fn the_demo_trains_collapses_and_compares() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let text = ok(lacoot()
        .args([
            "demo",
            "--out",
            out.to_str().unwrap(),
            "--width",
            "4",
            "--epochs",
            "1",
        ])
        .output()
        .unwrap());
    assert!(
        text.contains("baseline (lambda 0)") && text.contains("LaCoOT (lambda 1)"),
        "{text}"
    );
    for run in ["baseline", "lacoot"] {
        assert!(out.join(run).join("collapse/report.md").is_file(), "{run}");
    }
    assert!(text.contains("on one plot"), "{text}");
    assert!(text.contains("against the baseline's full"), "{text}");
    let lacoot_config = common::read_json(&out.join("lacoot/config.json"));
    assert_eq!(lacoot_config["config"]["regularised_blocks"], "paper");
    assert_eq!(lacoot_config["config"]["ascent_steps"], 2);
    let baseline_config = common::read_json(&out.join("baseline/config.json"));
    assert_eq!(baseline_config["config"]["ascent_steps"], 0);
    for plot in ["test_accuracy_vs_macs", "test_accuracy_vs_latency"] {
        for extension in ["svg", "png"] {
            assert!(out.join(format!("comparison/{plot}.{extension}")).is_file());
        }
    }
    let comparison = common::read_json(&out.join("comparison/report.json"));
    assert_eq!(comparison["lambdas"].as_array().unwrap().len(), 2);
}
