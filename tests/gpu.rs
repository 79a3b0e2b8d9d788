//! The GPU path, on burn's wgpu backend: in CI on Mesa's lavapipe (software Vulkan, installed by
//! `.ci/run`), on a user's machine on whatever adapter `lacoot devices` lists first.
//!
//! Each test compares the wgpu result with the reference (POT's numbers, finite differences,
//! torchvision's logits) or with the same computation on `flex`. Without any wgpu adapter the
//! tests say so on standard error and pass, unless `LACOOT_REQUIRE_GPU` is set, as `.ci/run` sets
//! it: CI must run them.
#![cfg(feature = "wgpu")]

mod common;

use std::sync::{Mutex, MutexGuard};

use burn::module::Module;
use burn::store::ModuleSnapshot;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use common::*;
use lacoot::device::{DeviceChoice, host_reads, resolve};
use lacoot::kernels::column_order::column_order;
use lacoot::models::weights::load_torch_weights;
use lacoot::models::{Architecture, BlockNetwork, ModelSpec, Network, StemKind};
use lacoot::ot::{
    DirectionSampler, Directions, max_sliced_on_device, max_sliced_wasserstein, sliced_wasserstein,
};
use lacoot::train::{
    RegularisedBlocks, StepOutcome, TrainConfig, TrainingStep, build_optimizer, regulariser_weights,
};

/// One test at a time: they share one software device, and the step test counts the process's
/// host reads.
fn turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The wgpu device, or `None` (with a visible message) where this machine has no adapter and CI
/// did not ask for one.
fn wgpu() -> Option<Device> {
    match resolve(DeviceChoice::Wgpu(None)) {
        Ok((device, _)) => Some(device),
        Err(e) if std::env::var_os("LACOOT_REQUIRE_GPU").is_none() => {
            eprintln!(
                "SKIPPED: {e}. Install a Vulkan driver (Debian: mesa-vulkan-drivers) to run the GPU tests."
            );
            None
        }
        Err(e) => panic!("LACOOT_REQUIRE_GPU is set but {e}"),
    }
}

#[test]
fn the_rank_kernel_orders_columns_stably() {
    let _turn = turn();
    let Some(device) = wgpu() else { return };
    for (n, count, salt) in [(1, 1, 0), (7, 3, 1), (128, 50, 2), (300, 2, 3)] {
        // Few distinct values, so that ties are common: the stable order is the only answer.
        let values: Vec<f32> = (0..n * count)
            .map(|i| ((i * 7919 + salt * 31) % 13) as f32 - 6.0)
            .collect();
        let tensor = Tensor::<2>::from_data(TensorData::new(values.clone(), [n, count]), &device);
        let order: Vec<i64> = column_order(tensor)
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap();
        for column in 0..count {
            let mut rows: Vec<i64> = (0..n as i64).collect();
            rows.sort_by(|&a, &b| {
                values[a as usize * count + column].total_cmp(&values[b as usize * count + column])
            });
            let got: Vec<i64> = (0..n).map(|rank| order[rank * count + column]).collect();
            assert_eq!(got, rows, "{n} x {count}, column {column}");
        }
    }
}

#[test]
fn both_distances_agree_with_pot_on_wgpu() {
    let _turn = turn();
    let Some(device) = wgpu() else { return };
    for case in ["case0", "case1", "case2", "case3"] {
        let dir = local_fixtures().join("ot").join(case);
        let expected = read_json(&dir.join("expected.json"));
        let x = read_matrix(&dir.join("x.npy"), &device).cast(DType::F32);
        let y = read_matrix(&dir.join("y.npy"), &device).cast(DType::F32);
        let theta = read_matrix(&dir.join("theta.npy"), &device).cast(DType::F32);
        let directions = Directions::from_columns(theta).unwrap();
        let sliced = sliced_wasserstein(x.clone(), y.clone(), &directions, 2.0).unwrap();
        let max_sliced = max_sliced_wasserstein(x, y, &directions, 2.0, None).unwrap();
        let (sw, msw) = (
            expected["sliced_w2"].as_f64().unwrap(),
            expected["max_sliced_w2"].as_f64().unwrap(),
        );
        assert_close(sliced.distance, sw, 1e-4, 0.0, &format!("{case} sliced"));
        assert_close(max_sliced.distance, msw, 1e-4, 0.0, &format!("{case} max"));
        assert_close(scalar(max_sliced.value), msw, 1e-4, 0.0, case);
        assert_eq!(
            max_sliced.argmax as u64,
            expected["argmax_direction"].as_u64().unwrap(),
            "{case}"
        );
    }
    // Clouds of different sizes take the coupling's ranks and masses.
    let dir = local_fixtures().join("ot_unequal");
    let expected = read_json(&dir.join("expected.json"));
    let x = read_matrix(&dir.join("x.npy"), &device).cast(DType::F32);
    let y = read_matrix(&dir.join("y.npy"), &device).cast(DType::F32);
    let theta = read_matrix(&dir.join("theta.npy"), &device).cast(DType::F32);
    let directions = Directions::from_columns(theta).unwrap();
    let max_sliced = max_sliced_wasserstein(x, y, &directions, 2.0, None).unwrap();
    assert_close(
        max_sliced.distance,
        expected["p2"]["max_sliced"].as_f64().unwrap(),
        1e-4,
        0.0,
        "n != m",
    );
}

/// `MSW_2` of `x` against a fixed `y` along fixed directions, on `device`, in f64.
fn msw(x: &[f64], y: &Tensor<2>, directions: &Directions, device: &Device) -> f64 {
    let [n, d] = y.dims();
    let x = matrix(x.to_vec(), n, d, device);
    max_sliced_wasserstein(x, y.clone(), directions, 2.0, None)
        .unwrap()
        .distance
}

#[test]
fn the_max_sliced_gradient_on_wgpu_matches_finite_differences() {
    let _turn = turn();
    let Some(device) = wgpu() else { return };
    let (n, d, count) = (7, 5, 6);
    let point = |i: usize, salt: usize| ((i * 7919 + salt * 104_729) % 1000) as f64 / 250.0 - 2.0;
    let x_values: Vec<f64> = (0..n * d).map(|i| point(i, 1)).collect();
    let y = matrix((0..n * d).map(|i| point(i, 2)).collect(), n, d, &device);
    let mut theta: Vec<f64> = (0..d * count).map(|i| point(i, 3)).collect();
    for column in 0..count {
        let norm = (0..d)
            .map(|k| theta[k * count + column].powi(2))
            .sum::<f64>()
            .sqrt();
        for k in 0..d {
            theta[k * count + column] /= norm;
        }
    }
    let directions = Directions::from_columns(matrix(theta, d, count, &device)).unwrap();

    let autodiff = device.clone().autodiff();
    let x = matrix(x_values.clone(), n, d, &autodiff).require_grad();
    let distance =
        max_sliced_on_device(x.clone(), y.clone().to_device(&autodiff), &directions, 2.0)
            .unwrap()
            .value;
    let gradient = values(x.grad(&distance.backward()).unwrap());

    let h = 1e-6;
    for (i, &analytic) in gradient.iter().enumerate() {
        let mut plus = x_values.clone();
        let mut minus = x_values.clone();
        plus[i] += h;
        minus[i] -= h;
        let numeric = (msw(&plus, &y, &directions, &device)
            - msw(&minus, &y, &directions, &device))
            / (2.0 * h);
        assert_close(analytic, numeric, 1e-5, 1e-7, &format!("∂/∂x[{i}]"));
    }
}

fn tiny_config() -> TrainConfig {
    TrainConfig {
        architecture: Architecture::Resnet18,
        stem: Some(StemKind::Cifar),
        width: Some(4),
        batch_size: 8,
        learning_rate: 0.05,
        lambda: 1.0,
        regularised_blocks: RegularisedBlocks::All,
        num_projections: 8,
        augmentation: None,
        seed: 3,
        ..TrainConfig::default()
    }
}

/// One training step of `model` on `device` (an autodiff device) with a fixed batch and the
/// direction stream of seed 1; returns the updated model and what the step reported.
fn one_step(model: &Network, device: &Device) -> (Network, StepOutcome) {
    let config = tiny_config();
    let pixels: Vec<f32> = (0..8 * 3 * 144)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let images = Tensor::<4>::from_data(TensorData::new(pixels, [8, 3, 12, 12]), device);
    let labels = Tensor::<1, Int>::from_data([0, 1, 2, 3, 0, 1, 2, 3], device);
    let weights = regulariser_weights(model, &config).unwrap();
    let mut step = TrainingStep::new(&config, weights, DirectionSampler::new(1), device);
    step.run(
        model.clone().fork(device),
        &mut build_optimizer(&config),
        (images, labels),
        0.05,
        config.lambda,
    )
    .unwrap()
}

/// Every parameter and running statistic of `model`, by name, as f64.
fn weights(model: &Network) -> Vec<(String, Vec<f64>)> {
    model
        .collect(None, None, true)
        .into_iter()
        .map(|tensor| {
            let name = tensor.name.clone();
            let bytes = tensor.into_bytes().unwrap();
            let values = bytes
                .chunks_exact(4)
                .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect();
            (name, values)
        })
        .collect()
}

#[test]
fn a_training_step_on_wgpu_equals_the_flex_step_and_reads_back_once() {
    let _turn = turn();
    let Some(device) = wgpu() else { return };
    let flex = Device::flex().autodiff();
    let spec = ModelSpec {
        stem: Some(StemKind::Cifar),
        width: 4,
        ..ModelSpec::new(Architecture::Resnet18, 3, 12, 4)
    };
    let model = spec.build(&flex).unwrap();

    let (on_flex, flex_outcome) = one_step(&model, &flex);
    let reads_before = host_reads();
    let (on_wgpu, wgpu_outcome) = one_step(&model, &device.autodiff());
    assert_eq!(
        host_reads() - reads_before,
        1,
        "a training step reads back from the device once (its reported numbers)"
    );

    assert_close(wgpu_outcome.loss, flex_outcome.loss, 1e-4, 1e-6, "loss");
    assert_close(
        wgpu_outcome.regulariser,
        flex_outcome.regulariser,
        1e-4,
        1e-6,
        "regulariser",
    );
    assert_eq!(wgpu_outcome.correct, flex_outcome.correct);
    assert_eq!(wgpu_outcome.block_mswd.len(), 5);
    let (flex_weights, wgpu_weights) = (weights(&on_flex), weights(&on_wgpu));
    assert_eq!(flex_weights.len(), wgpu_weights.len());
    for ((name, want), (_, got)) in flex_weights.iter().zip(&wgpu_weights) {
        let worst = want
            .iter()
            .zip(got)
            .map(|(w, g)| (w - g).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-4, "{name}: updated weights differ by {worst}");
    }
}

#[test]
fn torchvision_logits_reproduce_on_wgpu() {
    let _turn = turn();
    let Some(device) = wgpu() else { return };
    let spec = |architecture, width, size| ModelSpec {
        width,
        stem: (architecture == Architecture::Resnet18).then_some(StemKind::Cifar),
        ..ModelSpec::new(architecture, 3, size, 10)
    };
    for (model, spec, input, logits) in [
        (
            "resnet18_cifar",
            spec(Architecture::Resnet18, 8, 32),
            "input.npy",
            "logits_eval.npy",
        ),
        (
            "mobilenetv2_cifar",
            spec(Architecture::Mobilenetv2Cifar, 8, 32),
            "input.npy",
            "logits_eval.npy",
        ),
        (
            "swin_t",
            spec(Architecture::SwinT, 12, 32),
            "input_32.npy",
            "logits_eval_32.npy",
        ),
    ] {
        let fixture = local_fixtures().join("torch").join(model);
        let mut network = spec.build(&Device::flex()).unwrap();
        load_torch_weights(&mut network, &fixture.join("weights.safetensors"), None).unwrap();
        let network = network.fork(&device);
        let input = read_array4(&fixture.join(input)).to_device(&device);
        assert_logits_match(network.forward(input), &fixture.join(logits));
    }
}

#[test]
fn train_collapse_and_eval_round_trip_on_wgpu() {
    let _turn = turn();
    if wgpu().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    write_toy_data(tmp.path(), 4);
    let run = tmp.path().join("run");
    let run_arg = run.to_str().unwrap();
    ok(lacoot()
        .args(["train", "--device", "wgpu"])
        .args(tiny_training(tmp.path()))
        .args(["--out", run_arg])
        .output()
        .unwrap());
    let record = read_json(&run.join("config.json"));
    assert!(
        record["device"].as_str().unwrap().starts_with("wgpu:"),
        "{record}"
    );
    ok(lacoot()
        .args(["collapse", "--device", "wgpu", "--run", run_arg])
        .args(["--max-drop", "100", "--latency-repeats", "1"])
        .args(["--num-projections", "8", "--batch-size", "10"])
        .output()
        .unwrap());
    let report = read_json(&run.join("collapse").join("report.json"));
    let chosen = report["chosen"].as_u64().unwrap() as usize;
    let reported = report["steps"][chosen]["test"]["accuracy"]
        .as_f64()
        .unwrap();
    // Export reads the weights back from the device the command runs on.
    let onnx = tmp.path().join("model.onnx");
    ok(lacoot()
        .args(["export", "--device", "wgpu", "--format", "onnx", "--model"])
        .arg(run.join("collapse").join("model"))
        .arg("--out")
        .arg(&onnx)
        .output()
        .unwrap());
    assert!(onnx.is_file());
    let model = run.join("collapse").join("model");
    for device in ["wgpu", "cpu"] {
        let eval: serde_json::Value = serde_json::from_str(&ok(lacoot()
            .args(["eval", "--device", device, "--json", "--model"])
            .arg(&model)
            .output()
            .unwrap()))
        .unwrap();
        assert_eq!(eval["accuracy"].as_f64().unwrap(), reported, "{device}");
    }
    // A run trained on the GPU resumes on the CPU, and says so.
    ok(lacoot()
        .args([
            "train", "--device", "cpu", "--resume", "--epochs", "2", "--out", run_arg,
        ])
        .output()
        .unwrap());
    let record = read_json(&run.join("config.json"));
    let changes = record["changes"].to_string();
    assert!(
        changes.contains("device wgpu:") && changes.contains("-> cpu"),
        "{changes}"
    );
}

#[test]
fn the_other_subcommands_run_on_wgpu() {
    let _turn = turn();
    if wgpu().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    ok(lacoot()
        .args([
            "inspect", "--device", "wgpu", "--model", "resnet18", "--width", "4",
        ])
        .output()
        .unwrap());
    let case = local_fixtures().join("ot").join("case1");
    let distance: serde_json::Value = serde_json::from_str(&ok(lacoot()
        .args(["distance", "--device", "wgpu", "--json", "--x"])
        .arg(case.join("x.npy"))
        .arg("--y")
        .arg(case.join("y.npy"))
        .arg("--projections")
        .arg(case.join("theta.npy"))
        .output()
        .unwrap()))
    .unwrap();
    let expected = read_json(&case.join("expected.json"));
    assert_close(
        distance["max_sliced_w2"].as_f64().unwrap(),
        expected["max_sliced_w2"].as_f64().unwrap(),
        1e-5,
        0.0,
        "lacoot distance --device wgpu",
    );
    write_toy_data(tmp.path(), 2);
    let sweep = tmp.path().join("sweep");
    ok(lacoot()
        .args(["sweep", "--device", "wgpu", "--lambdas", "1"])
        .args(tiny_training(tmp.path()))
        .args(["--score-projections", "8", "--latency-repeats", "1"])
        .args(["--max-drop", "100"])
        .arg("--out")
        .arg(&sweep)
        .output()
        .unwrap());
    assert!(sweep.join("sweep").join("report.json").is_file());
    // The demo on the embedded subset, at its smallest.
    let demo = tmp.path().join("demo");
    let text = ok(lacoot()
        .args([
            "demo", "--device", "wgpu", "--width", "4", "--epochs", "1", "--out",
        ])
        .arg(&demo)
        .output()
        .unwrap());
    assert!(text.contains("LaCoOT (lambda 1)"), "{text}");
}

#[test]
fn f64_orders_the_gpu_cannot_compute_are_refused() {
    let _turn = turn();
    let Some(device) = wgpu() else { return };
    let x = matrix(vec![1.0, 5.0, 3.0, 4.0], 2, 2, &device);
    let directions =
        Directions::from_columns(matrix(vec![1.0, 0.0, 0.0, 1.0], 2, 2, &device)).unwrap();
    for p in [1.0, 2.0] {
        let on_gpu =
            max_sliced_wasserstein(x.clone(), x.clone() * 2.0, &directions, p, None).unwrap();
        let flex = Device::flex();
        let on_cpu = max_sliced_wasserstein(
            x.clone().to_device(&flex),
            (x.clone() * 2.0).to_device(&flex),
            &Directions::from_columns(matrix(vec![1.0, 0.0, 0.0, 1.0], 2, 2, &flex)).unwrap(),
            p,
            None,
        )
        .unwrap();
        assert_close(
            on_gpu.distance,
            on_cpu.distance,
            1e-12,
            0.0,
            &format!("p = {p}"),
        );
        assert_close(
            scalar(on_gpu.value),
            on_cpu.distance,
            1e-12,
            0.0,
            &format!("p = {p}"),
        );
    }
    let refused = max_sliced_wasserstein(x.clone(), x, &directions, 3.0, None).unwrap_err();
    assert!(refused.to_string().contains("--device cpu"), "{refused}");
}
