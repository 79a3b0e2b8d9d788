//! `lacoot distance` from the outside: results, output formats and error messages.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

fn json_of(args: &[&str]) -> Value {
    let output = lacoot()
        .arg("distance")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Runs `lacoot distance` expecting failure; returns standard error.
fn failure_of(args: &[&str]) -> String {
    let output = lacoot().arg("distance").args(args).output().unwrap();
    assert!(!output.status.success(), "expected failure for {args:?}");
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn json_output_matches_pot() {
    let dir = local_fixtures().join("ot/case1");
    let report = json_of(&[
        "--x",
        path_str(&dir.join("x.npy")),
        "--y",
        path_str(&dir.join("y.npy")),
        "--projections",
        path_str(&dir.join("theta.npy")),
    ]);
    let expected = read_json(&dir.join("expected.json"));
    for key in ["sliced_w2", "max_sliced_w2"] {
        assert_close(
            report[key].as_f64().unwrap(),
            expected[key].as_f64().unwrap(),
            1e-5,
            0.0,
            key,
        );
    }
    assert_eq!(report["argmax_direction"], expected["argmax_direction"]);
    assert_eq!(report["per_direction"].as_array().unwrap().len(), 50);
}

#[test]
fn random_directions_follow_the_seed_and_other_orders_rename_the_keys() {
    let dir = local_fixtures().join("ot_unequal");
    let (x, y) = (dir.join("x.npy"), dir.join("y.npy"));
    let base = [
        "--x",
        path_str(&x),
        "--y",
        path_str(&y),
        "--num-projections",
        "20",
    ];
    let first = json_of(&[&base[..], &["--seed", "4"]].concat());
    let again = json_of(&[&base[..], &["--seed", "4"]].concat());
    let other = json_of(&[&base[..], &["--seed", "5"]].concat());
    assert_eq!(first, again);
    assert_ne!(first["sliced_w2"], other["sliced_w2"]);
    assert_eq!(first["per_direction"].as_array().unwrap().len(), 20);

    let cubic = json_of(&[&base[..], &["--p", "3"]].concat());
    assert!(cubic["sliced_wp"].as_f64().unwrap() > 0.0);
    assert!(cubic["max_sliced_wp"].as_f64().unwrap() >= cubic["sliced_wp"].as_f64().unwrap());
    assert!(cubic.get("sliced_w2").is_none());
}

/// The JSON report of `--optimise steps` on the clouds of fixture `case`.
fn ascent_report(case: &str, steps: &str) -> Value {
    let dir = local_fixtures().join(case);
    json_of(&[
        "--x",
        path_str(&dir.join("x.npy")),
        "--y",
        path_str(&dir.join("y.npy")),
        "--optimise",
        steps,
    ])
}

#[test]
fn optimise_never_reports_less_than_the_random_maximum() {
    let report = ascent_report("ot/case2", "10");
    let refined = report["max_sliced_w2"].as_f64().unwrap();
    let random = report["random_max_sliced_w2"].as_f64().unwrap();
    assert!(refined >= random, "{refined} < {random}");
    assert_eq!(report["ascent_steps_asked"], 10);
    assert!(report["ascent_steps"].as_u64().unwrap() <= 10);
    assert!(report["ascent_stopped"].is_string());
}

#[test]
fn a_huge_ascent_reports_the_steps_it_took_and_why_it_stopped() {
    let report = ascent_report("ot_unequal", "100000000");
    let taken = report["ascent_steps"].as_u64().unwrap();
    assert!(taken < 100_000_000, "{report}");
    assert_ne!(report["ascent_stopped"], "all-steps", "{report}");
}

#[test]
fn clouds_with_nan_are_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (x, y) = (tmp.path().join("x.npy"), tmp.path().join("y.npy"));
    write_npy(&x, &[3, 2], &[0.0f64, 1.0, 2.0, f64::NAN, 4.0, 5.0]);
    write_npy(&y, &[3, 2], &[0.0f64, 1.0, 2.0, 3.0, 4.0, 5.0]);
    let output = lacoot()
        .args(["distance", "--x", path_str(&x), "--y", path_str(&y)])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("x.npy") && stderr.contains("NaN"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&output.stdout).is_empty());
}

#[test]
fn text_output_names_the_distances() {
    let dir = local_fixtures().join("ot_unequal");
    let output = lacoot()
        .args([
            "distance",
            "--x",
            path_str(&dir.join("x.npy")),
            "--y",
            path_str(&dir.join("y.npy")),
        ])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("sliced W2") && text.contains("max-sliced W2"),
        "{text}"
    );
    assert!(text.contains("of 50"), "{text}");
}

#[test]
fn feature_maps_and_safetensors_inputs_are_read() {
    let tmp = tempfile::tempdir().unwrap();
    // Four 2x3x3 feature maps, as f32, in .npy and in a .safetensors file with two tensors.
    let maps: Vec<f32> = (0..4 * 18).map(|v| (v as f32 * 0.37).sin()).collect();
    let shifted: Vec<f32> = maps.iter().map(|v| v + 1.0).collect();
    let npy = tmp.path().join("maps.npy");
    write_npy(&npy, &[4, 2, 3, 3], &maps);
    let st = tmp.path().join("features.safetensors");
    let bytes = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
    let (input_bytes, output_bytes) = (bytes(&maps), bytes(&shifted));
    let tensors = [
        (
            "input",
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                vec![4, 2, 3, 3],
                &input_bytes,
            )
            .unwrap(),
        ),
        (
            "output",
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                vec![4, 2, 3, 3],
                &output_bytes,
            )
            .unwrap(),
        ),
    ];
    safetensors::serialize_to_file(tensors, None, &st).unwrap();

    // A translation by 1 in every coordinate: per-direction cost (θ·1)², the same from both files.
    let report = json_of(&[
        "--x",
        path_str(&npy),
        "--y",
        path_str(&st),
        "--y-tensor",
        "output",
        "--num-projections",
        "5",
    ]);
    let same = json_of(&[
        "--x",
        path_str(&st),
        "--x-tensor",
        "input",
        "--y",
        path_str(&st),
        "--y-tensor",
        "output",
        "--num-projections",
        "5",
    ]);
    assert_eq!(report, same);
    assert!(report["max_sliced_w2"].as_f64().unwrap() > 0.0);

    let ambiguous = failure_of(&["--x", path_str(&st), "--y", path_str(&npy)]);
    assert!(
        ambiguous.contains("features.safetensors") && ambiguous.contains("input, output"),
        "{ambiguous}"
    );
    let missing = failure_of(&[
        "--x",
        path_str(&st),
        "--x-tensor",
        "hidden",
        "--y",
        path_str(&npy),
    ]);
    assert!(missing.contains("no tensor named 'hidden'"), "{missing}");
}

#[test]
fn bad_inputs_get_one_clear_line_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.npy");
    write_npy::<f64>(&good, &[3, 2], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    let wide = tmp.path().join("wide.npy");
    write_npy::<f64>(&wide, &[3, 4], &[0.5; 12]);
    let ints = tmp.path().join("ints.npy");
    write_npy::<i32>(&ints, &[3, 2], &[1, 2, 3, 4, 5, 6]);
    let truncated = tmp.path().join("truncated.npy");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 5]).unwrap();
    let text = tmp.path().join("notes.npy");
    std::fs::write(&text, "just some text that is long enough").unwrap();
    let scalar = tmp.path().join("scalar.npy");
    write_npy::<f64>(&scalar, &[], &[1.0]);
    let theta_wrong_dim = tmp.path().join("theta3.npy");
    write_npy::<f64>(&theta_wrong_dim, &[3, 1], &[1.0, 0.0, 0.0]);
    let theta_not_unit = tmp.path().join("theta_long.npy");
    write_npy::<f64>(&theta_not_unit, &[2, 2], &[1.0, 2.0, 0.0, 0.0]);

    let g = path_str(&good);
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["--x", "does-not-exist.npy", "--y", g],
            vec!["does-not-exist.npy", "cannot read"],
        ),
        (
            vec!["--x", path_str(&ints), "--y", g],
            vec!["ints.npy", "<i4", "float32 or float64"],
        ),
        (
            vec!["--x", path_str(&truncated), "--y", g],
            vec!["truncated.npy", "malformed .npy"],
        ),
        (
            vec!["--x", path_str(&text), "--y", g],
            vec!["notes.npy", "not a .npy or .safetensors"],
        ),
        (
            vec!["--x", path_str(&scalar), "--y", g],
            vec!["scalar.npy", "at least one axis"],
        ),
        (
            vec!["--x", g, "--y", path_str(&wide)],
            vec!["different dimensions", "x has 2", "y has 4"],
        ),
        (
            vec![
                "--x",
                g,
                "--y",
                g,
                "--projections",
                path_str(&theta_wrong_dim),
            ],
            vec!["dimension 3", "have 2"],
        ),
        (
            vec![
                "--x",
                g,
                "--y",
                g,
                "--projections",
                path_str(&theta_not_unit),
            ],
            vec!["theta_long.npy", "norm", "unit vectors"],
        ),
        (
            vec!["--x", g, "--y", g, "--p", "0.5"],
            vec!["p must be a finite number >= 1"],
        ),
        (
            vec!["--x", g, "--y", g, "--num-projections", "0"],
            vec!["--num-projections must be between 1 and 100000"],
        ),
    ];
    for (args, needles) in cases {
        let stderr = failure_of(&args);
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "one line for {args:?}: {stderr}"
        );
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{args:?}: '{needle}' not in: {stderr}"
            );
        }
    }
}

#[test]
fn the_readme_example_clouds_run() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/clouds");
    let (x, y) = (dir.join("block_input.npy"), dir.join("block_output.npy"));
    let report = json_of(&["--x", path_str(&x), "--y", path_str(&y), "--optimise", "20"]);
    let per_direction = report["per_direction"].as_array().unwrap();
    assert_eq!(per_direction.len(), 50);
    let sliced = report["sliced_w2"].as_f64().unwrap();
    let random = report["random_max_sliced_w2"].as_f64().unwrap();
    let refined = report["max_sliced_w2"].as_f64().unwrap();
    assert!(0.0 < sliced && sliced <= random, "{sliced} {random}");
    // The README's point: in high dimension the ascent finds far more than the random maximum.
    assert!(refined > 2.0 * random, "{refined} against {random}");
}
