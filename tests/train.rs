//! Training end to end on tiny data: it learns, the regulariser reaches every regularised block,
//! runs resume exactly, and failures keep the last good checkpoint.

mod common;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use common::write_toy_data;

use burn::tensor::{Int, Tensor, TensorData};
use lacoot::data::DataSource;
use lacoot::device::autodiff_device;
use lacoot::models::{Architecture, BlockNetwork, ModelSpec, Network, StemKind};
use lacoot::ot::{DirectionKind, DirectionSampler};
use lacoot::train::{
    BlockWeighting, RegularisedBlocks, RunPaths, RunStart, Silent, StepOutcome, TrainConfig,
    TrainingStep, build_optimizer, load_run_model, regulariser_weights, train,
};

/// Training seeds burn's device generator, which the whole process shares: tests that train take
/// turns, so that each run draws only its own numbers.
fn one_training_at_a_time() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn tiny_config(data: &Path, epochs: usize, lambda: f64) -> TrainConfig {
    TrainConfig {
        architecture: Architecture::Resnet18,
        stem: Some(StemKind::Cifar),
        width: Some(4),
        data: DataSource::Mnist {
            root: data.to_path_buf(),
        },
        validation_fraction: 0.2,
        epochs,
        batch_size: 8,
        learning_rate: 0.05,
        lambda,
        regularised_blocks: RegularisedBlocks::All,
        num_projections: 8,
        augmentation: None,
        seed: 3,
        ..TrainConfig::default()
    }
}

#[test]
fn a_tiny_resnet_learns_and_writes_its_run() {
    let _turn = one_training_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    write_toy_data(tmp.path(), 5);
    let run = RunPaths::new(tmp.path().join("run"));
    let config = TrainConfig {
        batch_size: 20,
        optimizer: lacoot::train::OptimizerKind::Adam,
        learning_rate: 0.01,
        ..tiny_config(tmp.path(), 40, 0.1)
    };
    let summary = train(&config, &run, RunStart::New, &Silent).unwrap();
    let first = &summary.epochs[0];
    let last = summary.epochs.last().unwrap();
    assert!(
        last.cross_entropy < first.cross_entropy / 10.0,
        "{} -> {}",
        first.cross_entropy,
        last.cross_entropy
    );
    assert!(
        last.train_accuracy > 0.9,
        "train accuracy {}",
        last.train_accuracy
    );
    assert_eq!(first.block_mswd.len(), 5, "{:?}", first.block_mswd.keys());
    assert!(first.regulariser > 0.0);

    let lines = std::fs::read_to_string(run.metrics()).unwrap();
    assert_eq!(lines.lines().count(), 40);
    let record = run.read_record().unwrap();
    assert_eq!(record.model.num_classes, 10);
    assert_eq!(record.model.input_size, 8);
    assert_eq!(record.split_sizes, [40, 10, 50]);
    let (_, model) = load_run_model(&run, &run.best()).unwrap();
    use lacoot::models::BlockNetwork;
    assert_eq!(model.blocks().len(), 8);
}

/// Stops the run after a number of epochs, as an interruption would.
struct StopAfter(usize, std::cell::Cell<usize>);

impl lacoot::train::TrainObserver for StopAfter {
    fn epoch_done(&self, _: &lacoot::train::EpochMetrics) {
        self.1.set(self.1.get() + 1);
    }
    fn keep_going(&self) -> bool {
        self.1.get() < self.0
    }
}

/// The lines of metrics.jsonl without the wall-clock fields.
fn timeless_metrics(run: &RunPaths) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.metrics())
        .unwrap()
        .lines()
        .map(|line| {
            let mut value: serde_json::Value = serde_json::from_str(line).unwrap();
            let object = value.as_object_mut().unwrap();
            object.remove("seconds");
            object.remove("images_per_second");
            value
        })
        .collect()
}

/// Trains `config` straight through and with an interruption after epoch 2, and checks that both
/// wrote the same metrics; returns the interrupted run.
fn assert_resumes_exactly(config: &TrainConfig, root: &Path) -> RunPaths {
    let straight = RunPaths::new(root.join("straight"));
    train(config, &straight, RunStart::New, &Silent).unwrap();

    let interrupted = RunPaths::new(root.join("interrupted"));
    let first = train(
        config,
        &interrupted,
        RunStart::New,
        &StopAfter(2, Default::default()),
    )
    .unwrap();
    assert_eq!(first.state.epochs_done, 2);
    let rest = train(config, &interrupted, RunStart::Resume, &Silent).unwrap();
    assert_eq!(rest.epochs.len(), 1);
    assert_eq!(rest.epochs[0].epoch, 3);
    assert_eq!(timeless_metrics(&interrupted), timeless_metrics(&straight));
    interrupted
}

#[test]
fn an_interrupted_run_resumes_exactly() {
    let _turn = one_training_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    write_toy_data(tmp.path(), 3);
    let config = TrainConfig {
        augmentation: Some(lacoot::data::Augmentation {
            crop_padding: 1,
            horizontal_flip: true,
        }),
        milestones: vec![0.5],
        ..tiny_config(tmp.path(), 3, 0.5)
    };
    let interrupted = assert_resumes_exactly(&config, tmp.path());

    let different = TrainConfig {
        lambda: 1.0,
        ..config
    };
    match train(&different, &interrupted, RunStart::Resume, &Silent) {
        Err(lacoot::train::TrainError::Config(message)) => {
            assert!(message.contains("lambda 1.0 (recorded 0.5)"), "{message}")
        }
        other => panic!("expected a configuration mismatch, got {other:?}"),
    }
}

#[test]
fn a_run_with_every_regulariser_lever_resumes_exactly() {
    let _turn = one_training_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    write_toy_data(tmp.path(), 3);
    let config = TrainConfig {
        lambda_warmup: 1.5,
        block_weighting: BlockWeighting::Macs,
        directions: DirectionKind::Orthogonal,
        ascent_steps: 2,
        squared: true,
        ..tiny_config(tmp.path(), 3, 0.5)
    };
    let run = assert_resumes_exactly(&config, tmp.path());
    let recorded = run.read_record().unwrap().config;
    assert_eq!(recorded, config);
}

/// One step of `config` on the same model, a fixed batch and a fixed direction stream.
fn one_step(config: &TrainConfig, model: &Network, lambda: f64) -> StepOutcome {
    let device = autodiff_device();
    let pixels: Vec<f32> = (0..8 * 144)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let images = Tensor::<4>::from_data(TensorData::new(pixels, [8, 1, 12, 12]), &device);
    let labels = Tensor::<1, Int>::from_data([0, 1, 2, 3, 0, 1, 2, 3], &device);
    let weights = regulariser_weights(model, config).unwrap();
    let mut step = TrainingStep::new(config, weights, DirectionSampler::new(1), &device);
    step.run(
        model.clone(),
        &mut build_optimizer(config),
        (images, labels),
        0.01,
        lambda,
    )
    .unwrap()
    .1
}

#[test]
fn each_lever_changes_the_regulariser_as_documented() {
    let _turn = one_training_at_a_time();
    let device = autodiff_device();
    device.seed(5);
    let spec = ModelSpec {
        stem: Some(StemKind::Cifar),
        width: 4,
        ..ModelSpec::new(Architecture::Resnet18, 1, 12, 4)
    };
    let model = spec.build(&device).unwrap();
    let base = TrainConfig {
        lambda: 2.0,
        num_projections: 8,
        ..TrainConfig::default()
    };
    let plain = one_step(&base, &model, 2.0);
    let distances: Vec<f64> = plain.block_mswd.iter().map(|(_, d)| *d).collect();
    let mean = |values: Vec<f64>| values.iter().sum::<f64>() / values.len() as f64;
    assert_eq!(distances.len(), 5);
    assert!((plain.regulariser - mean(distances.clone())).abs() < 1e-5);
    assert!((plain.loss - plain.cross_entropy - 2.0 * plain.regulariser).abs() < 1e-4);

    // The warm-up's λ weighs the regulariser; the distances are still measured.
    let warming = one_step(&base, &model, 0.0);
    assert_eq!(warming.loss, warming.cross_entropy);
    assert_eq!(warming.block_mswd, plain.block_mswd);

    // Squared: the mean of MSW_2², along the same directions.
    let squared = one_step(
        &TrainConfig {
            squared: true,
            ..base.clone()
        },
        &model,
        2.0,
    );
    assert_eq!(squared.block_mswd, plain.block_mswd);
    let squares = distances.iter().map(|d| d * d).collect();
    assert!((squared.regulariser - mean(squares)).abs() < 1e-5);

    // Label smoothing: the cross-entropy against `(1 − α)·one-hot + α/K` is affine in α, and the
    // regulariser does not see it.
    let smoothed = |alpha: f64| {
        one_step(
            &TrainConfig {
                label_smoothing: alpha,
                ..base.clone()
            },
            &model,
            2.0,
        )
    };
    let (light, middle, heavy) = (smoothed(0.1), smoothed(0.2), smoothed(0.3));
    assert_eq!(middle.block_mswd, plain.block_mswd);
    assert!((middle.regulariser - plain.regulariser).abs() < 1e-6);
    assert!(
        (middle.cross_entropy - (light.cross_entropy + heavy.cross_entropy) / 2.0).abs() < 1e-5
    );
    let per_alpha = (heavy.cross_entropy - light.cross_entropy) / 0.2;
    assert!(per_alpha.abs() > 1e-4, "smoothing changed nothing");
    assert!((light.cross_entropy - 0.1 * per_alpha - plain.cross_entropy).abs() < 1e-5);

    // MACs weighting: weights proportional to the blocks' MACs with mean 1.
    let by_macs = TrainConfig {
        block_weighting: BlockWeighting::Macs,
        ..base.clone()
    };
    let weights = regulariser_weights(&model, &by_macs).unwrap();
    let macs: std::collections::BTreeMap<String, f64> = model
        .blocks()
        .into_iter()
        .map(|b| (b.name, b.macs as f64))
        .collect();
    assert!((weights.values().sum::<f64>() - 5.0).abs() < 1e-12);
    let ratio = weights["layer1.0"] / weights["layer4.1"];
    assert!((ratio - macs["layer1.0"] / macs["layer4.1"]).abs() < 1e-12);
    // The regulariser of a weighted step: the weighted mean of the plain step's distances (the
    // same directions).
    let weighted_mean = |weights: &std::collections::BTreeMap<String, f64>| {
        let weighted = plain.block_mswd.iter().map(|(name, d)| weights[name] * d);
        mean(weighted.collect())
    };
    let weighted = one_step(&by_macs, &model, 2.0);
    assert!((weighted.regulariser - weighted_mean(&weights)).abs() < 1e-5);

    // Block scales: one block's weight multiplied, the others untouched; an unknown block is an
    // error that names the flag and the block.
    let scaled = TrainConfig {
        block_scales: [("layer1.0".to_string(), 3.0)].into(),
        ..base.clone()
    };
    let weights = regulariser_weights(&model, &scaled).unwrap();
    assert_eq!(weights["layer1.0"], 3.0);
    assert!(
        weights
            .iter()
            .all(|(name, w)| name == "layer1.0" || *w == 1.0)
    );
    let weighted = one_step(&scaled, &model, 2.0);
    assert!((weighted.regulariser - weighted_mean(&weights)).abs() < 1e-5);
    let unknown = TrainConfig {
        block_scales: [("layer9.9".to_string(), 2.0)].into(),
        ..base.clone()
    };
    let error = regulariser_weights(&model, &unknown)
        .unwrap_err()
        .to_string();
    assert!(error.contains("--block-scale layer9.9"), "{error}");

    // Ascent: never below the best random direction, block by block.
    let ascent = one_step(
        &TrainConfig {
            ascent_steps: 3,
            ..base.clone()
        },
        &model,
        2.0,
    );
    for ((name, refined), (_, random)) in ascent.block_mswd.iter().zip(&plain.block_mswd) {
        assert!(refined >= random, "{name}: {refined} < {random}");
    }
    assert!(ascent.regulariser > plain.regulariser);

    // Orthogonal directions: other directions from the same stream, a distance of the same size.
    let orthogonal = one_step(
        &TrainConfig {
            directions: DirectionKind::Orthogonal,
            ..base.clone()
        },
        &model,
        2.0,
    );
    assert_ne!(orthogonal.block_mswd, plain.block_mswd);
    for ((_, a), (_, b)) in orthogonal.block_mswd.iter().zip(&plain.block_mswd) {
        assert!(a / b > 0.5 && a / b < 2.0);
    }
}

#[test]
fn a_checkpoint_from_an_older_lacoot_resumes_without_losing_metrics() {
    // Older checkpoints carry no metrics history and no checksum list: resume reads the history
    // back from metrics.jsonl instead of wiping it.
    let _turn = one_training_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    write_toy_data(tmp.path(), 3);
    let config = tiny_config(tmp.path(), 3, 0.5);
    let straight = RunPaths::new(tmp.path().join("straight"));
    train(&config, &straight, RunStart::New, &Silent).unwrap();
    let old = RunPaths::new(tmp.path().join("old"));
    train(
        &config,
        &old,
        RunStart::New,
        &StopAfter(2, Default::default()),
    )
    .unwrap();
    for checkpoint in [old.last(), old.best()] {
        let path = checkpoint.join("state.json");
        let mut state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        state.as_object_mut().unwrap().remove("history");
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, state.to_string()).unwrap();
        std::fs::remove_file(checkpoint.join("checksums.json")).unwrap();
    }
    train(&config, &old, RunStart::Resume, &Silent).unwrap();
    assert_eq!(timeless_metrics(&old), timeless_metrics(&straight));
}

#[test]
fn runs_with_dropout_and_stochastic_depth_resume_exactly_too() {
    // MobileNetV2's classifier dropout and Swin-T's stochastic depth draw from the device
    // generator during training; it is reseeded at every epoch.
    let _turn = one_training_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    write_toy_data(tmp.path(), 3);
    for (name, architecture, width) in [
        ("mobilenet", Architecture::Mobilenetv2Cifar, 8),
        ("swin", Architecture::SwinT, 6),
    ] {
        let config = TrainConfig {
            architecture,
            stem: None,
            width: Some(width),
            ..tiny_config(tmp.path(), 3, 0.5)
        };
        let root = tmp.path().join(name);
        assert_resumes_exactly(&config, &root);
    }
}

#[test]
fn a_diverging_run_stops_with_a_clear_message_and_keeps_its_checkpoint() {
    let _turn = one_training_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    write_toy_data(tmp.path(), 3);
    let run = RunPaths::new(tmp.path().join("run"));
    let config = TrainConfig {
        learning_rate: 1e30,
        ..tiny_config(tmp.path(), 4, 0.0)
    };
    match train(&config, &run, RunStart::New, &Silent) {
        Err(lacoot::train::TrainError::NonFiniteLoss { epoch, .. }) => {
            if epoch > 1 {
                assert!(run.last().join("model.bpk").is_file());
            }
        }
        other => panic!("expected a non-finite loss, got {other:?}"),
    }
}

/// Writes a CIFAR-10 folder of `per_batch` random-looking images per batch file.
fn write_cifar(root: &Path, per_batch: usize) {
    let records = |seed: usize| -> Vec<u8> {
        (0..per_batch)
            .flat_map(|i| {
                std::iter::once((i % 10) as u8)
                    .chain((0..3072).map(move |p| ((p * 7 + i * 13 + seed) % 251) as u8))
            })
            .collect()
    };
    for i in 1..=5 {
        std::fs::write(root.join(format!("data_batch_{i}.bin")), records(i)).unwrap();
    }
    std::fs::write(root.join("test_batch.bin"), records(9)).unwrap();
}

#[test]
fn a_run_can_start_from_pytorch_weights() {
    let _turn = one_training_at_a_time();
    use burn::store::ModuleSnapshot;
    let tmp = tempfile::tempdir().unwrap();
    write_cifar(tmp.path(), 4);
    let weights = common::local_fixtures().join("torch/resnet18_cifar/weights.pth");
    let run = RunPaths::new(tmp.path().join("run"));
    let config = TrainConfig {
        width: Some(8),
        data: DataSource::Cifar10 {
            root: tmp.path().to_path_buf(),
        },
        validation_fraction: 0.0,
        epochs: 1,
        batch_size: 10,
        learning_rate: 1e-30,
        lambda: 0.0,
        augmentation: None,
        init_from: Some(weights),
        ..TrainConfig::default()
    };
    train(&config, &run, RunStart::New, &Silent).unwrap();
    // With a vanishing learning rate the convolutions keep the PyTorch values.
    let (_, model) = load_run_model(&run, &run.last()).unwrap();
    let conv1 = model
        .collect(None, None, true)
        .into_iter()
        .find(|t| t.name == "conv1.weight")
        .unwrap()
        .into_bytes()
        .unwrap();
    let bytes =
        std::fs::read(common::local_fixtures().join("torch/resnet18_cifar/weights.safetensors"))
            .unwrap();
    let fixture = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(&conv1[..], fixture.tensor("conv1.weight").unwrap().data());

    let wrong = TrainConfig {
        width: Some(16),
        ..config
    };
    let message = train(
        &wrong,
        &RunPaths::new(tmp.path().join("wrong")),
        RunStart::New,
        &Silent,
    )
    .unwrap_err()
    .to_string();
    assert!(message.contains("weights.pth"), "{message}");
}
