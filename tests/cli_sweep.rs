//! `lacoot sweep` from the outside: members trained and collapsed into their own run folders, a
//! report per λ over seeds with the frontier and plots, finished members skipped on a re-run,
//! shards, --report-only, and clear refusals.

mod common;

use std::path::Path;

use common::{lacoot, ok, read_json, tiny_training};

fn sweep(data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    lacoot()
        .arg("sweep")
        .args(tiny_training(data))
        .args([
            "--score-projections",
            "8",
            "--latency-repeats",
            "1",
            "--max-drop",
            "100",
        ])
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn a_sweep_trains_collapses_and_reports_every_member_once() {
    let tmp = tempfile::tempdir().unwrap();
    common::write_toy_data(tmp.path(), 4);
    let out = tmp.path().join("sweep");
    let output = sweep(
        tmp.path(),
        &out,
        &["--lambdas", "0,1", "--seeds", "0,1", "--jobs", "2"],
    );
    let table = ok(output.clone());
    let progress = String::from_utf8(output.stderr).unwrap();
    assert_eq!(progress.matches(": done in").count(), 4, "{progress}");
    // Two shards; whether they overlap depends on timing, never more than two at once.
    assert!(most_at_once(&progress) <= 2, "--jobs 2: {progress}");
    assert!(table.contains("Pareto frontier"), "{table}");
    for member in [
        "lambda-0-seed-0",
        "lambda-0-seed-1",
        "lambda-1-seed-0",
        "lambda-1-seed-1",
    ] {
        assert!(
            out.join(member).join("collapse/report.json").is_file(),
            "{member}"
        );
    }
    let report = read_json(&out.join("sweep/report.json"));
    assert_eq!(report["selection_split"], "validation");
    let lambdas = report["lambdas"].as_array().unwrap();
    assert_eq!(lambdas.len(), 2);
    assert_eq!(lambdas[1]["lambda"], 1.0);
    assert_eq!(lambdas[1]["seeds"], serde_json::json!([0, 1]));
    assert!(!report["frontier"].as_array().unwrap().is_empty());
    // The mean over seeds is the mean of the members' own reports.
    let member_full = |seed: u64| {
        let r = read_json(&out.join(format!("lambda-1-seed-{seed}/collapse/report.json")));
        r["steps"][0]["test"]["accuracy"].as_f64().unwrap()
    };
    let mean = lambdas[1]["steps"][0]["test_accuracy"]["mean"]
        .as_f64()
        .unwrap();
    assert!((mean - (member_full(0) + member_full(1)) / 2.0).abs() < 1e-12);
    for plot in ["test_accuracy_vs_macs", "test_accuracy_vs_latency"] {
        for extension in ["svg", "png"] {
            assert!(out.join(format!("sweep/{plot}.{extension}")).is_file());
        }
    }

    // A member of a parallel sweep has exactly the numbers of the same run trained alone, with
    // the training command the report gives for its λ.
    let command = lambdas[1]["training"][0].as_str().unwrap();
    let words: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(words[..2], ["lacoot", "train"], "{command}");
    assert!(command.contains("--lambda 1 ") && !command.contains("--seed"));
    let markdown = std::fs::read_to_string(out.join("sweep/report.md")).unwrap();
    assert!(
        markdown.contains(&format!("- λ = 1: `{command}`")),
        "{markdown}"
    );
    let alone = tmp.path().join("alone");
    ok(lacoot()
        .args(&words[1..])
        .args(["--seed", "1", "--out"])
        .arg(&alone)
        .output()
        .unwrap());
    let metrics = |run: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|line| {
                let mut value: serde_json::Value = serde_json::from_str(line).unwrap();
                let fields = value.as_object_mut().unwrap();
                fields.remove("seconds");
                fields.remove("images_per_second");
                value
            })
            .collect()
    };
    assert_eq!(metrics(&alone), metrics(&out.join("lambda-1-seed-1")));

    // The same command again, one member at a time: nothing to do.
    let again = sweep(
        tmp.path(),
        &out,
        &["--lambdas", "0,1", "--seeds", "0,1", "--jobs", "1"],
    );
    let progress = String::from_utf8(again.stderr.clone()).unwrap();
    ok(again);
    assert_eq!(progress.matches("skipped").count(), 4, "{progress}");
    assert_eq!(most_at_once(&progress), 1, "--jobs 1: {progress}");

    // Other collapse settings on finished members: collapsed again, not retrained.
    let trained = metrics(&out.join("lambda-0-seed-0"));
    let recollapsed = sweep(
        tmp.path(),
        &out,
        &["--lambdas", "0", "--seeds", "0", "--recalibrate-bn", "2"],
    );
    let progress = String::from_utf8(recollapsed.stderr.clone()).unwrap();
    ok(recollapsed);
    assert_eq!(progress.matches(": done in").count(), 1, "{progress}");
    assert_eq!(metrics(&out.join("lambda-0-seed-0")), trained);
    let member = read_json(&out.join("lambda-0-seed-0/collapse/report.json"));
    assert_eq!(member["settings"]["recalibration_batches"], 2);
    let markdown = std::fs::read_to_string(out.join("sweep/report.md")).unwrap();
    assert!(
        markdown.contains("in 1 of 4 members: `lambda-0-seed-0` (2)"),
        "{markdown}"
    );

    // A shard of a larger sweep runs only its members; the report covers what has finished.
    let shard = sweep(
        tmp.path(),
        &out,
        &["--lambdas", "0,1,5", "--seeds", "0,1", "--shard", "2/2"],
    );
    let progress = String::from_utf8(shard.stderr.clone()).unwrap();
    ok(shard);
    assert_eq!(progress.matches(": done in").count(), 1, "{progress}");
    assert!(progress.contains("lambda-5-seed-1"), "{progress}");
    assert!(!out.join("lambda-5-seed-0").exists());
    ok(lacoot()
        .args(["sweep", "--report-only", "--out"])
        .arg(&out)
        .output()
        .unwrap());
    let report = read_json(&out.join("sweep/report.json"));
    assert_eq!(report["lambdas"].as_array().unwrap().len(), 3);
    assert_eq!(report["lambdas"][2]["seeds"], serde_json::json!([1]));

    // A member folder trained with other settings is not silently reused.
    let other = lacoot()
        .args(["sweep", "--data", "mnist", "--data-dir"])
        .arg(tmp.path())
        .args([
            "--width",
            "8",
            "--epochs",
            "1",
            "--batch-size",
            "10",
            "--lambdas",
            "0",
        ])
        .args(["--validation-fraction", "0.25", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!other.status.success());
    let error = String::from_utf8(other.stderr).unwrap();
    assert!(
        error.contains("lambda-0-seed-0") && error.contains("width"),
        "{error}"
    );
}

/// The most members running at the same time, from the progress lines.
fn most_at_once(progress: &str) -> usize {
    let (mut running, mut most) = (0usize, 0usize);
    for line in progress.lines() {
        if line.contains(": running") {
            running += 1;
            most = most.max(running);
        } else if line.contains(": done in") || line.contains("FAILED") || line.contains("skipped")
        {
            running = running.saturating_sub(1);
        }
    }
    most
}

#[test]
fn a_sweep_refuses_single_run_flags_and_bad_lists() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("s");
    let refused = |args: &[&str], expected: &str| {
        let output = lacoot()
            .arg("sweep")
            .args(args)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?}");
        let error = String::from_utf8(output.stderr).unwrap();
        assert!(error.contains(expected), "{args:?}: {error}");
    };
    refused(&["--lambdas", "0,1", "--lambda", "5"], "--lambdas");
    refused(&["--lambdas", "0,1", "--seed", "3"], "--seeds");
    refused(&["--lambdas", "0,-1"], "finite and >= 0");
    refused(&["--lambdas", "1,1"], "repeat");
    refused(&["--lambdas", "1", "--shard", "3/2"], "1 <= i <= N");
    refused(&["--report-only"], "no such folder");
}
