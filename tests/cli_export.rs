//! `lacoot export` from the outside: a trained and collapsed run exported as ONNX (run in tract
//! against the reference batch written beside it) and as torchvision weights; bad input gets one
//! clear line.

mod common;

use std::path::Path;

use common::{lacoot, ok};
use safetensors::SafeTensors;
use tract_onnx::prelude::*;

/// `name` of a safetensors file as f32 values with their shape.
fn tensor(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let view = file.tensor(name).unwrap();
    let values = bytemuck::pod_collect_to_vec::<u8, f32>(view.data());
    (view.shape().to_vec(), values)
}

/// Runs an ONNX model in tract on its reference batch and checks lacoot's logits.
fn assert_onnx_reproduces_its_reference(onnx: &Path) {
    let reference = lacoot::export::reference_path(onnx);
    let (shape, input) = tensor(&reference, "input");
    let (_, logits) = tensor(&reference, "logits");
    let model = tract_onnx::onnx()
        .model_for_path(onnx)
        .unwrap()
        .with_input_fact(0, f32::fact(&shape).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let input = tract_ndarray::ArrayD::from_shape_vec(shape, input).unwrap();
    let outputs = model.run(tvec!(Tensor::from(input).into())).unwrap();
    let got: Vec<f32> = outputs[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect();
    assert_eq!(got.len(), logits.len());
    // numpy's allclose with atol 1e-4 and rtol 1e-5, plus 1e-6 of the batch's largest logit: a
    // briefly trained network's logits reach the hundreds, where 1e-4 is below one f32 step, and
    // lacoot's convolutions (products tap by tap or over im2col patches) and tract's sum in
    // different orders. Their rounding errors scale with the activations every logit is summed
    // from, so a logit near 1 beside logits near 400 moved by 1.2e-4 (3e-7 of the largest).
    let scale = logits.iter().fold(0f32, |scale, w| scale.max(w.abs()));
    for (g, w) in got.iter().zip(&logits) {
        let tolerance = 1e-4 + 1e-5 * w.abs() + 1e-6 * scale;
        assert!(
            (g - w).abs() <= tolerance,
            "{}: {g} against {w} (largest logit {scale})",
            onnx.display()
        );
    }
}

fn failure(args: &[&str]) -> String {
    let output = lacoot().args(args).output().unwrap();
    assert!(!output.status.success(), "{args:?} succeeded");
    String::from_utf8(output.stderr).unwrap()
}

#[test]
fn a_collapsed_run_exports_to_onnx_and_torchvision() {
    let tmp = tempfile::tempdir().unwrap();
    common::write_toy_data(tmp.path(), 4);
    let run = tmp.path().join("run");
    let run_arg = run.to_str().unwrap();
    ok(lacoot()
        .arg("train")
        .args(common::tiny_training(tmp.path()))
        .args(["--out", run_arg])
        .output()
        .unwrap());
    let model = run.join("collapse").join("model");
    let model_arg = model.to_str().unwrap();

    // Before any collapse there is no model to export.
    let error = failure(&["export", "--model", model_arg, "--format", "onnx"]);
    assert!(
        error.contains("no manifest.json") && error.contains(model_arg),
        "{error}"
    );
    assert_eq!(error.trim().lines().count(), 1, "{error}");

    ok(lacoot()
        .args(["collapse", "--run", run_arg, "--max-drop", "100"])
        .args(["--latency-repeats", "1", "--num-projections", "8"])
        .output()
        .unwrap());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("manifest.json")).unwrap()).unwrap();
    let removed = manifest["model"]["removed_blocks"]
        .as_array()
        .unwrap()
        .len();
    assert!(removed > 0, "max-drop 100 removes blocks");

    let printed = ok(lacoot()
        .args([
            "export",
            "--model",
            model_arg,
            "--format",
            "onnx",
            "--dynamic-batch",
        ])
        .output()
        .unwrap());
    let onnx = run.join("collapse").join("model.onnx");
    assert!(printed.contains(onnx.to_str().unwrap()), "{printed}");
    assert!(printed.contains("[batch, 1, 8, 8]"), "{printed}");
    assert_onnx_reproduces_its_reference(&onnx);

    let full = tmp.path().join("full.onnx");
    ok(lacoot()
        .args([
            "export",
            "--run",
            run_arg,
            "--checkpoint",
            "last",
            "--format",
            "onnx",
        ])
        .args(["--batch", "4", "--out", full.to_str().unwrap()])
        .output()
        .unwrap());
    assert_onnx_reproduces_its_reference(&full);
    assert!(std::fs::metadata(&full).unwrap().len() > std::fs::metadata(&onnx).unwrap().len());

    ok(lacoot()
        .args(["export", "--model", model_arg, "--format", "torchvision"])
        .output()
        .unwrap());
    let folder = run.join("collapse").join("model-torchvision");
    for file in [
        "model.safetensors",
        "removed_blocks.json",
        "load_model.py",
        "reference.safetensors",
        "README.md",
    ] {
        assert!(folder.join(file).is_file(), "{file}");
    }
    let listed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join("removed_blocks.json")).unwrap())
            .unwrap();
    let names = |value: &serde_json::Value| {
        let mut names: Vec<String> = value
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        names(&listed["removed_blocks"]),
        names(&manifest["model"]["removed_blocks"])
    );
    assert_eq!(listed["accuracy"]["test"], manifest["test_accuracy"]);

    // Bad input: one clear line each.
    let error = failure(&["export", "--model", model_arg, "--format", "tflite"]);
    assert!(
        error.contains("tflite") && error.contains("--format"),
        "{error}"
    );
    let blocked = tmp.path().join("a-file");
    std::fs::write(&blocked, "").unwrap();
    let inside = blocked.join("model.onnx");
    let error = failure(&[
        "export",
        "--model",
        model_arg,
        "--format",
        "onnx",
        "--out",
        inside.to_str().unwrap(),
    ]);
    assert!(
        error.contains("cannot write") && error.contains("a-file"),
        "{error}"
    );
    assert_eq!(error.trim().lines().count(), 1, "{error}");
    let error = failure(&["export", "--format", "onnx"]);
    assert!(error.contains("--model"), "{error}");
}
