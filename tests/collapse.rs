//! Collapse on a tiny trained run: every criterion ranks every candidate, the chosen model saves
//! and reloads to the same logits, and budgets and broken files are reported.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use burn::tensor::Tensor;
use common::{values, write_toy_data};
use lacoot::collapse::saved::{Manifest, load_model, save_model};
use lacoot::collapse::{
    CollapseError, CollapseSettings, Criterion, LatencySettings, ScoreSettings, collapse,
    static_scores,
};
use lacoot::data::{DataSource, load_splits};
use lacoot::device::default_device;
use lacoot::models::BlockNetwork;
use lacoot::train::{
    RegularisedBlocks, RunPaths, RunStart, Silent, TrainConfig, load_run_model, train,
};

fn trained_run(root: &Path) -> RunPaths {
    trained_run_with(root, 0.25)
}

fn trained_run_with(root: &Path, validation_fraction: f64) -> RunPaths {
    write_toy_data(root, 4);
    let run = RunPaths::new(root.join("run"));
    let config = TrainConfig {
        width: Some(4),
        data: DataSource::Mnist {
            root: root.to_path_buf(),
        },
        validation_fraction,
        epochs: 3,
        batch_size: 10,
        num_projections: 4,
        augmentation: None,
        ..TrainConfig::default()
    };
    train(&config, &run, RunStart::New, &Silent).unwrap();
    run
}

fn settings(criterion: Criterion) -> CollapseSettings {
    CollapseSettings {
        criterion,
        score_split: lacoot::collapse::ScoreSplit::Val,
        blocks: RegularisedBlocks::All,
        max_drop: 100.0,
        target_macs: None,
        score: ScoreSettings {
            num_projections: 16,
            seed: 1,
            batch_size: 10,
        },
        latency: LatencySettings {
            warmup: 0,
            repeats: 1,
        },
        recalibration_batches: 0,
    }
}

#[test]
fn every_criterion_ranks_every_candidate_and_random_follows_its_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let run = trained_run(tmp.path());
    let (record, model) = load_run_model(&run, &run.best()).unwrap();
    let expected: BTreeSet<String> = ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
        .map(String::from)
        .into();
    for criterion in [
        Criterion::Mswd,
        Criterion::Swd,
        Criterion::BlockInfluence,
        Criterion::Angular,
        Criterion::Random,
        Criterion::LossDrop,
    ] {
        let (report, _) = collapse(&run, &settings(criterion), &|_| {}).unwrap();
        let order: BTreeSet<String> = report.order.iter().cloned().collect();
        assert_eq!(order, expected, "{criterion:?}");
        assert_eq!(report.steps.len(), 6);
        assert!(
            report.scores.values().all(|s| s.is_finite()),
            "{criterion:?}: {:?}",
            report.scores
        );
        // Every step removes one more block; costs only fall.
        for pair in report.steps.windows(2) {
            assert!(pair[1].macs < pair[0].macs && pair[1].parameters < pair[0].parameters);
        }
        assert_eq!(
            report.chosen, 5,
            "with an unlimited budget the deepest removal is chosen"
        );
    }
    let splits = load_splits(&record.config.data, 0.25, record.config.seed).unwrap();
    let validation = Arc::new(splits.validation);
    let random = |seed| {
        let score = ScoreSettings {
            seed,
            ..settings(Criterion::Random).score
        };
        static_scores(
            &model,
            &expected,
            &validation,
            &record.normalization,
            Criterion::Random,
            &score,
            2.0,
        )
        .unwrap()
    };
    assert_eq!(random(7), random(7));
    assert_ne!(random(7), random(8));
}

#[test]
fn the_saved_model_reloads_to_the_same_logits_and_broken_files_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let run = trained_run(tmp.path());
    let (record, mut model) = load_run_model(&run, &run.best()).unwrap();
    let removed = vec!["layer1.1".to_string(), "layer3.1".to_string()];
    model.remove_blocks(&removed).unwrap();
    let manifest = Manifest {
        model: lacoot::models::ModelSpec {
            removed_blocks: removed.clone(),
            ..record.model.clone()
        },
        normalization: record.normalization.clone(),
        data: record.config.data.clone(),
        validation_fraction: 0.25,
        seed: record.config.seed,
        source_run: run.root.clone(),
        data_description: record.data_description.clone(),
        selection_split: "validation".into(),
        selection_accuracy: 0.0,
        test_accuracy: 0.0,
    };
    let dir = tmp.path().join("saved");
    save_model(&dir, &model, &manifest).unwrap();
    let (loaded_manifest, reloaded) = load_model(&dir).unwrap();
    assert_eq!(loaded_manifest, manifest);
    assert_eq!(reloaded.removed_blocks(), removed.iter().cloned().collect());
    let input = Tensor::<4>::random(
        [3, 1, 8, 8],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &default_device(),
    );
    assert_eq!(
        values(model.forward(input.clone())),
        values(reloaded.forward(input))
    );

    // Removed blocks' weights are not stored.
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let names: Vec<String> = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap()
        .names()
        .into_iter()
        .map(String::from)
        .collect();
    assert!(names.iter().any(|n| n.starts_with("layer1.0.")));
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("layer1.1.") || n.starts_with("layer3.1."))
    );

    // A damaged file fails its checksum, naming the file.
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let mut flipped = weights.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    std::fs::write(dir.join("model.safetensors"), &flipped).unwrap();
    let message = load_model(&dir).unwrap_err().to_string();
    assert!(
        message.contains("model.safetensors: checksum mismatch"),
        "{message}"
    );
    std::fs::write(dir.join("model.safetensors"), &weights).unwrap();

    // Files changed on purpose (checksums rewritten) are still checked for sense.
    std::fs::write(dir.join("manifest.json"), "{ not json").unwrap();
    lacoot::fsutil::write_checksums(&dir, &["model.safetensors", "manifest.json"]).unwrap();
    let message = load_model(&dir).unwrap_err().to_string();
    assert!(
        message.contains("manifest.json") && message.contains("not a valid manifest"),
        "{message}"
    );

    let mut wrong = manifest.clone();
    wrong.model.removed_blocks = vec!["layer1.1".into()];
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec(&wrong).unwrap(),
    )
    .unwrap();
    lacoot::fsutil::write_checksums(&dir, &["model.safetensors", "manifest.json"]).unwrap();
    let message = load_model(&dir).unwrap_err().to_string();
    assert!(
        message.contains("does not match its manifest") && message.contains("layer3.1"),
        "{message}"
    );
}

#[test]
fn a_budget_nothing_meets_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let run = trained_run(tmp.path());
    let strict = CollapseSettings {
        target_macs: Some(1),
        ..settings(Criterion::Random)
    };
    match collapse(&run, &strict, &|_| {}) {
        Err(CollapseError::Budget(message)) => {
            assert!(message.contains("above the target"), "{message}")
        }
        other => panic!("expected a budget error, got {other:?}"),
    }
    let missing = RunPaths::new(tmp.path().join("no-run"));
    let message = collapse(&missing, &settings(Criterion::Mswd), &|_| {})
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("no-run") && message.contains("config.json"),
        "{message}"
    );
}

#[test]
fn reports_and_plots_are_written_for_a_person() {
    let tmp = tempfile::tempdir().unwrap();
    let run = trained_run(tmp.path());
    let (report, _) = collapse(&run, &settings(Criterion::Mswd), &|_| {}).unwrap();
    let out = tmp.path().join("collapse");
    lacoot::report::write_collapse_report(&out, &report).unwrap();
    lacoot::report::write_collapse_plots(&out, &report).unwrap();
    let markdown = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        markdown.contains("◀ chosen") && markdown.contains("| 5 |"),
        "{markdown}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["steps"].as_array().unwrap().len(), 6);
    assert_eq!(json["order"].as_array().unwrap().len(), 5);
    for name in ["accuracy_vs_blocks", "accuracy_vs_macs"] {
        let svg = std::fs::read_to_string(out.join(format!("{name}.svg"))).unwrap();
        assert!(svg.contains("<svg") && svg.contains("chosen"));
        let png = image::open(out.join(format!("{name}.png"))).unwrap();
        assert_eq!((png.width(), png.height()), (720, 440));
        // Not a blank canvas: some pixels are neither white nor uniform.
        let rgb = png.to_rgb8();
        assert!(rgb.pixels().filter(|p| p.0 != [255, 255, 255]).count() > 1000);
    }
}

#[test]
fn the_validation_split_decides_and_the_test_split_is_only_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let run = trained_run(tmp.path());
    let (report, _) = collapse(&run, &settings(Criterion::Mswd), &|_| {}).unwrap();
    assert_eq!(report.selection_split, "validation");
    // The toy data: 40 training images per split side, a quarter held out.
    assert_eq!(report.split_images, [10, 40]);
    let full = &report.steps[0];
    assert_eq!(full.selection.drop_points, 0.0);
    assert_eq!(full.test.drop_points, 0.0);
    for step in &report.steps {
        assert!((0.0..=1.0).contains(&step.selection.accuracy));
        assert!((0.0..=1.0).contains(&step.test.accuracy));
        assert!(step.latency_batch64.q1_ms <= step.latency_batch64.median_ms);
        assert!(step.latency_batch64.median_ms <= step.latency_batch64.q3_ms);
    }

    // choose() reads the selection split only: a step that is perfect on test but 3 points down
    // on validation is out of a 1-point budget.
    let mut steps = report.steps.clone();
    for step in &mut steps {
        step.test.drop_points = 0.0;
        step.selection.drop_points = 3.0;
    }
    steps[0].selection.drop_points = 0.0;
    assert_eq!(lacoot::collapse::choose(&steps, 1.0, None).unwrap(), 0);
    for step in &mut steps {
        step.test.drop_points = 50.0;
        step.selection.drop_points = 0.0;
    }
    assert_eq!(
        lacoot::collapse::choose(&steps, 1.0, None).unwrap(),
        steps.len() - 1
    );
}

#[test]
fn a_run_without_validation_split_must_be_told_which_split_decides() {
    let tmp = tempfile::tempdir().unwrap();
    let run = trained_run_with(tmp.path(), 0.0);
    // best = last: every epoch counts as the best.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.best().join("state.json")).unwrap()).unwrap();
    assert_eq!(state["best_epoch"], 3);
    assert!(state["best_validation_accuracy"].is_null());
    let message = collapse(&run, &settings(Criterion::Mswd), &|_| {})
        .unwrap_err()
        .to_string();
    assert!(message.contains("--split train"), "{message}");
    let on_train = CollapseSettings {
        score_split: lacoot::collapse::ScoreSplit::Train,
        ..settings(Criterion::Mswd)
    };
    let (report, _) = collapse(&run, &on_train, &|_| {}).unwrap();
    assert_eq!(report.selection_split, "train");
}

#[test]
fn nonsense_settings_fail_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = RunPaths::new(tmp.path().join("never-read"));
    for bad in [
        CollapseSettings {
            max_drop: -1.0,
            ..settings(Criterion::Mswd)
        },
        CollapseSettings {
            max_drop: f64::NAN,
            ..settings(Criterion::Mswd)
        },
        CollapseSettings {
            target_macs: Some(0),
            ..settings(Criterion::Mswd)
        },
    ] {
        match collapse(&missing, &bad, &|_| {}) {
            Err(CollapseError::Settings(_)) => {}
            other => panic!("expected a settings error, got {other:?}"),
        }
    }
}

#[test]
fn batch_norm_recalibration_changes_the_shallower_networks_only_and_repeats_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let run = trained_run(tmp.path());
    let (plain, _) = collapse(&run, &settings(Criterion::Mswd), &|_| {}).unwrap();
    let recalibrating = CollapseSettings {
        recalibration_batches: 3,
        ..settings(Criterion::Mswd)
    };
    let (recalibrated, _) = collapse(&run, &recalibrating, &|_| {}).unwrap();
    // The scores and the full network are the trained ones.
    assert_eq!(recalibrated.order, plain.order);
    assert_eq!(recalibrated.steps[0].selection, plain.steps[0].selection);
    assert_eq!(recalibrated.steps[0].test, plain.steps[0].test);
    // The networks with removals normalise with new statistics.
    assert!(
        plain.steps[1..]
            .iter()
            .zip(&recalibrated.steps[1..])
            .all(|(a, b)| a.selection.loss != b.selection.loss),
        "every shallower network's validation loss moves"
    );
    let markdown = lacoot::report::collapse_markdown(&recalibrated);
    assert!(
        markdown.contains("re-estimated from 3 training batches"),
        "{markdown}"
    );
    assert!(!lacoot::report::collapse_markdown(&plain).contains("re-estimated"));
    let (again, _) = collapse(&run, &recalibrating, &|_| {}).unwrap();
    for (a, b) in again.steps.iter().zip(&recalibrated.steps) {
        assert_eq!((a.selection, a.test), (b.selection, b.test));
    }
}
