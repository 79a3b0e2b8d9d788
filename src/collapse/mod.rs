//! Collapse without finetuning: score the collapsible blocks, replace them by identity one at a
//! time in score order, measure accuracy, cost and real latency after each removal, choose the
//! deepest removal within the user's budget, and save that shallower model.

mod criteria;
mod latency;
pub mod saved;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

pub use criteria::{Criterion, ScoreSettings, static_scores};
pub use latency::{LatencySettings, median_latency_ms};

use crate::data::load_splits;
use crate::models::{BlockNetwork, Network};
use crate::train::{RegularisedBlocks, RunPaths, TrainError, evaluate, load_run_model};

/// What can go wrong while collapsing.
#[derive(Debug, thiserror::Error)]
pub enum CollapseError {
    /// The run could not be read.
    #[error(transparent)]
    Run(#[from] TrainError),
    /// The data could not be read.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// A distance could not be computed.
    #[error(transparent)]
    Distance(#[from] crate::ot::OtError),
    /// The model could not be changed or saved.
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    /// No removal meets the budget.
    #[error("no removal meets the budget: {0}")]
    Budget(String),
    /// A report or model file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The user's choices for a collapse.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CollapseSettings {
    /// How blocks are ranked.
    pub criterion: Criterion,
    /// The split the scores are computed on (accuracy is always measured on the test split).
    pub score_split: ScoreSplit,
    /// Which blocks may be removed.
    pub blocks: RegularisedBlocks,
    /// Largest acceptable drop of test accuracy, in percentage points.
    pub max_drop: f64,
    /// MACs (conv + linear + attention, per image) the chosen model must not exceed, if any.
    pub target_macs: Option<u64>,
    /// Settings of the distance criteria.
    pub score: ScoreSettings,
    /// How latency is measured.
    pub latency: LatencySettings,
}

/// The data split blocks are scored on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ScoreSplit {
    /// The validation split held out from training (the default: no test data leaks into choices).
    Val,
    /// The training split.
    Train,
}

/// The network after one more removal.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CollapseStep {
    /// Blocks removed so far (0 for the full network).
    pub blocks_removed: usize,
    /// The block removed at this step.
    pub removed_block: Option<String>,
    /// Test accuracy, as a fraction.
    pub test_accuracy: f64,
    /// Test cross-entropy.
    pub test_loss: f64,
    /// Accuracy drop from the full network, in percentage points.
    pub accuracy_drop_points: f64,
    /// Trainable parameters.
    pub parameters: usize,
    /// Conv + linear MACs per image.
    pub macs: u64,
    /// Full MACs / these MACs.
    pub macs_reduction: f64,
    /// Median latency of one image, milliseconds.
    pub latency_batch1_ms: f64,
    /// Median latency of a batch of 64, milliseconds.
    pub latency_batch64_ms: f64,
    /// Measured speed-up at batch 1 over the full network.
    pub speedup_batch1: f64,
    /// Measured speed-up at batch 64 over the full network.
    pub speedup_batch64: f64,
}

/// Everything a collapse measured, as written to `collapse/report.json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CollapseReport {
    /// The run collapsed.
    pub run: PathBuf,
    /// The settings.
    pub settings: CollapseSettings,
    /// Each candidate block's score (lower = more removable); for `loss-drop`, the validation loss
    /// after removing it at its turn.
    pub scores: BTreeMap<String, f64>,
    /// The removal order.
    pub order: Vec<String>,
    /// The full network, then one entry per removal.
    pub steps: Vec<CollapseStep>,
    /// Index in `steps` of the chosen network.
    pub chosen: usize,
    /// The data the accuracies were measured on.
    pub data: String,
}

/// Collapses the best checkpoint of `run` as `settings` ask; `progress` hears about each step.
pub fn collapse(
    run: &RunPaths,
    settings: &CollapseSettings,
    progress: &dyn Fn(&str),
) -> Result<(CollapseReport, Network), CollapseError> {
    let (record, model) = load_run_model(run, &run.best())?;
    let splits = load_splits(
        &record.config.data,
        record.config.validation_fraction,
        record.config.seed,
    )?;
    let validation = Arc::new(match settings.score_split {
        ScoreSplit::Val => splits.validation,
        ScoreSplit::Train => splits.train,
    });
    if validation.is_empty() {
        return Err(CollapseError::Budget(format!(
            "the {:?} split is empty, so blocks cannot be scored (train with a validation fraction > 0, or score on --split train)",
            settings.score_split
        )));
    }
    let test = Arc::new(splits.test);
    let normalization = &record.normalization;
    let batch_size = settings.score.batch_size;
    let candidates = crate::train::regularised_blocks(&model, settings.blocks);
    if candidates.is_empty() {
        return Err(CollapseError::Budget(
            "the network has no removable block".into(),
        ));
    }

    let mut scores = BTreeMap::new();
    let order: Vec<String> = if settings.criterion.is_static() {
        progress(&format!(
            "scoring {} blocks with {:?}",
            candidates.len(),
            settings.criterion
        ));
        scores = static_scores(
            &model,
            &candidates,
            &validation,
            normalization,
            settings.criterion,
            &settings.score,
        )?;
        let mut ranked: Vec<(String, f64)> = scores.iter().map(|(k, v)| (k.clone(), *v)).collect();
        ranked.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        ranked.into_iter().map(|(name, _)| name).collect()
    } else {
        let mut remaining = candidates.clone();
        let mut trial_model = model.clone();
        let mut order = Vec::new();
        while !remaining.is_empty() {
            progress(&format!("loss-drop: trying {} removals", remaining.len()));
            let (best, loss) = remaining
                .iter()
                .map(|name| {
                    let mut trial = trial_model.clone();
                    trial
                        .remove_blocks(std::slice::from_ref(name))
                        .expect("candidate is removable");
                    (
                        name.clone(),
                        evaluate(&trial, &validation, normalization, batch_size).loss,
                    )
                })
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .expect("non-empty");
            trial_model.remove_blocks(std::slice::from_ref(&best))?;
            remaining.remove(&best);
            scores.insert(best.clone(), loss);
            order.push(best);
        }
        order
    };

    let mut current = model.clone();
    let input_shape = current.input_shape();
    let mut steps: Vec<CollapseStep> = Vec::new();
    for k in 0..=order.len() {
        let removed_block = k.checked_sub(1).map(|i| order[i].clone());
        if let Some(block) = &removed_block {
            current.remove_blocks(std::slice::from_ref(block))?;
        }
        progress(&format!(
            "step {k}: evaluating {}",
            removed_block.as_deref().unwrap_or("the full network")
        ));
        let evaluation = evaluate(&current, &test, normalization, batch_size);
        let cost = current.total_cost();
        let latency1 = median_latency_ms(&current, input_shape, 1, &settings.latency);
        let latency64 = median_latency_ms(&current, input_shape, 64, &settings.latency);
        let (full_accuracy, full_macs, full1, full64) =
            steps
                .first()
                .map_or((evaluation.accuracy, cost.macs, latency1, latency64), |s| {
                    (
                        s.test_accuracy,
                        s.macs,
                        s.latency_batch1_ms,
                        s.latency_batch64_ms,
                    )
                });
        steps.push(CollapseStep {
            blocks_removed: k,
            removed_block,
            test_accuracy: evaluation.accuracy,
            test_loss: evaluation.loss,
            accuracy_drop_points: 100.0 * (full_accuracy - evaluation.accuracy),
            parameters: cost.parameters,
            macs: cost.macs,
            macs_reduction: full_macs as f64 / cost.macs as f64,
            latency_batch1_ms: latency1,
            latency_batch64_ms: latency64,
            speedup_batch1: full1 / latency1,
            speedup_batch64: full64 / latency64,
        });
    }
    let chosen = choose(&steps, settings.max_drop, settings.target_macs)?;
    let mut chosen_model = model;
    chosen_model.remove_blocks(&order[..steps[chosen].blocks_removed])?;
    let report = CollapseReport {
        run: run.root.clone(),
        settings: settings.clone(),
        scores,
        order,
        steps,
        chosen,
        data: splits.description,
    };
    Ok((report, chosen_model))
}

/// The deepest step whose accuracy drop is within `max_drop` points and, when a target is given,
/// whose MACs reach it.
pub fn choose(
    steps: &[CollapseStep],
    max_drop: f64,
    target_macs: Option<u64>,
) -> Result<usize, CollapseError> {
    let within = |s: &CollapseStep| s.accuracy_drop_points <= max_drop + 1e-9;
    let reaches = |s: &CollapseStep| target_macs.is_none_or(|t| s.macs <= t);
    steps
        .iter()
        .rposition(|s| within(s) && reaches(s))
        .ok_or_else(|| {
            let best_macs = steps.iter().filter(|s| within(s)).map(|s| s.macs).min().unwrap_or(0);
            CollapseError::Budget(format!(
                "within a drop of {max_drop} points the fewest MACs reachable are {:.2} M, above the target of {:.2} M",
                best_macs as f64 / 1e6,
                target_macs.unwrap_or(0) as f64 / 1e6
            ))
        })
}
