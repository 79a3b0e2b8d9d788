//! Collapse without finetuning: score the collapsible blocks, replace them by identity one at a
//! time in score order, measure accuracy, cost and real latency after each removal, choose the
//! deepest removal within the user's budget, and save that shallower model.

mod criteria;
mod latency;
mod recalibrate;
pub mod saved;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use burn::module::Module;

pub use criteria::{Criterion, ScoreSettings, static_scores};
pub use latency::{Latency, LatencySettings, interleaved_latencies};
pub use recalibrate::recalibrate_batch_norm;

use crate::data::{Augmentation, DataSource, ImageSet, Normalization, load_splits};
use crate::device::default_device;
use crate::models::ModelSpec;
use crate::models::weights::load_torch_weights;
use crate::models::{BlockNetwork, Network};
use crate::train::{RegularisedBlocks, RunPaths, TrainError, evaluate, load_run_model};
use saved::Manifest;

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
    /// The settings make no sense.
    #[error("invalid collapse settings: {0}")]
    Settings(String),
    /// No removal meets the budget.
    #[error("no removal meets the budget: {0}")]
    Budget(String),
    /// The batch-norm statistics could not be read or written back while recalibrating.
    #[error("batch-norm recalibration: {0}")]
    Recalibration(String),
    /// A score or loss is NaN or infinite (the model's weights may be broken).
    #[error("{0}")]
    NonFinite(String),
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
    /// The split blocks are scored on and the budget is judged on (the test split only reports).
    pub score_split: ScoreSplit,
    /// Which blocks may be removed.
    pub blocks: RegularisedBlocks,
    /// Largest acceptable drop of accuracy on the selection split, in percentage points.
    pub max_drop: f64,
    /// MACs (conv + linear + attention, per image) the chosen model must not exceed, if any.
    pub target_macs: Option<u64>,
    /// Settings of the distance criteria.
    pub score: ScoreSettings,
    /// How latency is measured.
    pub latency: LatencySettings,
    /// Training batches whose statistics re-estimate every batch-norm layer's running statistics
    /// after each removal (no weight changes; see [`recalibrate_batch_norm`]); 0 keeps the trained
    /// statistics, as the paper does.
    pub recalibration_batches: usize,
}

impl CollapseSettings {
    /// Checks the settings before any work is done.
    pub fn validate(&self) -> Result<(), CollapseError> {
        let problems = [
            (
                !(self.max_drop.is_finite() && self.max_drop >= 0.0),
                format!(
                    "--max-drop must be a finite number of points >= 0, not {}",
                    self.max_drop
                ),
            ),
            (
                self.target_macs == Some(0),
                "--target-macs must be positive".to_string(),
            ),
            (
                self.score.batch_size < 2,
                "--batch-size must be at least 2 (a point cloud)".to_string(),
            ),
            (
                self.latency.repeats == 0,
                "--latency-repeats must be at least 1".to_string(),
            ),
        ];
        match problems.into_iter().find(|(bad, _)| *bad) {
            Some((_, problem)) => Err(CollapseError::Settings(problem)),
            None => crate::ot::check_num_projections(self.score.num_projections)
                .map_err(CollapseError::Settings),
        }
    }
}

/// The data split blocks are scored on and removal budgets are judged on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ScoreSplit {
    /// The validation split held out from training (the default: no test data leaks into choices).
    Val,
    /// The training split (for runs trained without a validation split; must be asked for).
    Train,
}

impl ScoreSplit {
    /// The split's name in reports.
    pub fn label(self) -> &'static str {
        match self {
            Self::Val => "validation",
            Self::Train => "train",
        }
    }

    /// This split of a data set, given its validation and (shared) training splits.
    pub fn pick(self, validation: ImageSet, train: &Arc<ImageSet>) -> Arc<ImageSet> {
        match self {
            Self::Val => Arc::new(validation),
            Self::Train => train.clone(),
        }
    }
}

/// Accuracy and loss of one network on one split, and the accuracy drop from the full network.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct SplitScore {
    /// Accuracy, as a fraction.
    pub accuracy: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Accuracy drop from the full network on the same split, in percentage points.
    pub drop_points: f64,
}

/// The network after one more removal.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CollapseStep {
    /// Blocks removed so far (0 for the full network).
    pub blocks_removed: usize,
    /// The block removed at this step.
    pub removed_block: Option<String>,
    /// On the selection split (validation unless the user asked for train): what decides.
    pub selection: SplitScore,
    /// On the test split: reported only, never used for a choice.
    pub test: SplitScore,
    /// Trainable parameters.
    pub parameters: usize,
    /// Conv + linear MACs per image.
    pub macs: u64,
    /// Full MACs / these MACs.
    pub macs_reduction: f64,
    /// Latency of one image (median and quartiles of the interleaved rounds).
    pub latency_batch1: Latency,
    /// Latency of a batch of 64.
    pub latency_batch64: Latency,
    /// Measured speed-up at batch 1 over the full network (ratio of medians).
    pub speedup_batch1: f64,
    /// Measured speed-up at batch 64 over the full network (ratio of medians).
    pub speedup_batch64: f64,
    /// Whether the batch-64 latency is within the noise of the previous step's (their
    /// interquartile ranges overlap).
    pub batch64_within_noise_of_previous: bool,
}

/// Everything a collapse measured, as written to `collapse/report.json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CollapseReport {
    /// The run collapsed (or the weights file, for weights trained elsewhere).
    pub run: PathBuf,
    /// Where the network comes from, when it is not a lacoot training run.
    pub note: Option<String>,
    /// The settings.
    pub settings: CollapseSettings,
    /// The split scores and the budget were judged on (`validation` or `train`).
    pub selection_split: String,
    /// Each candidate block's score (lower = more removable); for `loss-drop`, the selection-split
    /// loss after removing it at its turn.
    pub scores: BTreeMap<String, f64>,
    /// The removal order.
    pub order: Vec<String>,
    /// The full network, then one entry per removal.
    pub steps: Vec<CollapseStep>,
    /// Index in `steps` of the chosen network.
    pub chosen: usize,
    /// The data the accuracies were measured on.
    pub data: String,
    /// Images in the selection and test splits.
    pub split_images: [usize; 2],
}

/// What a collapse works on: a network and the data that judges it, from a training run or from
/// weights trained elsewhere.
pub struct CollapseInput {
    /// The network, eval mode.
    pub model: Network,
    /// The split that scores blocks and judges the budget.
    pub selection: Arc<ImageSet>,
    /// The test split (reported, never used for a choice).
    pub test: Arc<ImageSet>,
    /// The training split (batch-norm recalibration draws its batches from it).
    pub train: Arc<ImageSet>,
    /// The augmentation the network was trained with (recalibration batches are augmented alike).
    pub train_augmentation: Option<Augmentation>,
    /// Order of the Wasserstein distance the scores use.
    pub p: f64,
    /// The saved model's manifest before the collapse (no removals, no accuracies yet); its
    /// normalisation is the one the network expects.
    pub manifest: Manifest,
    /// What the report should say about where the network comes from, if anything unusual.
    pub note: Option<String>,
}

impl CollapseInput {
    /// The best checkpoint of a training run, judged on the run's own splits.
    pub fn from_run(run: &RunPaths, split: ScoreSplit) -> Result<Self, CollapseError> {
        let (record, model) = load_run_model(run, &run.best())?;
        let splits = load_splits(
            &record.config.data,
            record.config.validation_fraction,
            record.config.seed,
        )?;
        record.check_data(&splits)?;
        let train = Arc::new(splits.train);
        Ok(Self {
            model,
            selection: split.pick(splits.validation, &train),
            test: Arc::new(splits.test),
            train,
            train_augmentation: record.config.augmentation,
            p: record.config.p,
            manifest: Manifest::before_collapse(&record, &run.root),
            note: None,
        })
    }

    /// A PyTorch checkpoint with torchvision's names (see [`WeightsImport`]), judged on splits of
    /// `import.data` carved as a training run would carve them.
    pub fn from_weights(import: &WeightsImport, split: ScoreSplit) -> Result<Self, CollapseError> {
        let splits = load_splits(&import.data, import.validation_fraction, import.seed)?;
        let [channels, height, width] = splits.train.shape;
        if height != width {
            return Err(CollapseError::Settings(format!(
                "{}: images are {height}x{width}; lacoot's networks take square images",
                splits.description
            )));
        }
        let spec = ModelSpec {
            in_channels: channels,
            input_size: height,
            num_classes: splits.train.num_classes(),
            removed_blocks: Vec::new(),
            ..import.model.clone()
        };
        let mut model = spec.build(&default_device())?;
        load_torch_weights(&mut model, &import.weights, import.strip_prefix.as_deref())?;
        let normalization = match &import.normalization {
            Some(given) if given.mean.len() != channels || given.std.len() != channels => {
                return Err(CollapseError::Settings(format!(
                    "--mean and --std need {channels} values each, one per channel of {}",
                    splits.description
                )));
            }
            Some(given) => given.clone(),
            None => splits.train.channel_statistics(),
        };
        let manifest = Manifest {
            model: spec,
            normalization,
            data: import.data.clone(),
            validation_fraction: import.validation_fraction,
            seed: import.seed,
            source_run: import.weights.clone(),
            data_description: splits.description.clone(),
            selection_split: String::new(),
            selection_accuracy: 0.0,
            test_accuracy: 0.0,
        };
        let train = Arc::new(splits.train);
        Ok(Self {
            model: model.valid(),
            selection: split.pick(splits.validation, &train),
            test: Arc::new(splits.test),
            train,
            train_augmentation: import.augmentation,
            p: 2.0,
            manifest,
            note: Some(format!(
                "weights from {} (not trained with the LaCoOT regulariser by lacoot: the scores are training-free)",
                import.weights.display()
            )),
        })
    }
}

/// A checkpoint trained elsewhere, to collapse without a lacoot training run.
#[derive(Clone, Debug)]
pub struct WeightsImport {
    /// A `.pth` / `.pt` (torch.save) or `.safetensors` file with torchvision's names.
    pub weights: PathBuf,
    /// A wrapper's prefix to strip from the file's keys (e.g. `backbone.`).
    pub strip_prefix: Option<String>,
    /// The architecture and its options; channels, input size and classes come from the data.
    pub model: ModelSpec,
    /// The data that judges the network.
    pub data: DataSource,
    /// Fraction of the training data held out as the validation split.
    pub validation_fraction: f64,
    /// Seed of the split.
    pub seed: u64,
    /// The normalisation the network was trained with; computed from the training split if
    /// absent.
    pub normalization: Option<Normalization>,
    /// The augmentation the network was trained with, for batch-norm recalibration.
    pub augmentation: Option<Augmentation>,
}

/// Collapses the best checkpoint of `run` as `settings` ask; `progress` hears about each step.
///
/// Blocks are scored, and the budget judged, on `settings.score_split` (validation by default);
/// every step is also evaluated on the test split, which is reported and never used for a choice.
pub fn collapse(
    run: &RunPaths,
    settings: &CollapseSettings,
    progress: &dyn Fn(&str),
) -> Result<(CollapseReport, Network), CollapseError> {
    // Nonsense settings fail before any file is read.
    settings.validate()?;
    let input = CollapseInput::from_run(run, settings.score_split)?;
    collapse_network(&input, settings, progress)
}

/// Collapses `input.model` as `settings` ask (see [`collapse`]).
pub fn collapse_network(
    input: &CollapseInput,
    settings: &CollapseSettings,
    progress: &dyn Fn(&str),
) -> Result<(CollapseReport, Network), CollapseError> {
    settings.validate()?;
    let selection = &input.selection;
    let test = &input.test;
    let model = &input.model;
    if selection.is_empty() {
        return Err(CollapseError::Settings(format!(
            "there is no {} split (trained with --validation-fraction 0?), so it can neither score blocks nor judge the budget on it; pass --split train to score and choose on the training split",
            settings.score_split.label()
        )));
    }
    let normalization = &input.manifest.normalization;
    let batch_size = settings.score.batch_size;
    let p = input.p;
    let candidates = crate::train::regularised_blocks(model, settings.blocks);
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
            model,
            &candidates,
            selection,
            normalization,
            settings.criterion,
            &settings.score,
            p,
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
            let mut best: Option<(String, f64)> = None;
            for name in &remaining {
                let mut trial = trial_model.clone();
                trial.remove_blocks(std::slice::from_ref(name))?;
                let loss = evaluate(&trial, selection, normalization, batch_size)?.loss;
                if !loss.is_finite() {
                    return Err(CollapseError::NonFinite(format!(
                        "the {} loss without block {name} is {loss}",
                        settings.score_split.label()
                    )));
                }
                if best.as_ref().is_none_or(|(_, b)| loss < *b) {
                    best = Some((name.clone(), loss));
                }
            }
            let (best, loss) = best.expect("at least one remaining block");
            trial_model.remove_blocks(std::slice::from_ref(&best))?;
            remaining.remove(&best);
            scores.insert(best.clone(), loss);
            order.push(best);
        }
        order
    };

    // Each removal starts from the previous network with its trained statistics, so a
    // recalibration never feeds the next one.
    let mut networks = vec![model.clone()];
    let mut removed = model.clone();
    for (k, block) in order.iter().enumerate() {
        removed.remove_blocks(std::slice::from_ref(block))?;
        if settings.recalibration_batches > 0 {
            progress(&format!(
                "step {}: re-estimating batch-norm statistics over {} training batches",
                k + 1,
                settings.recalibration_batches
            ));
        }
        networks.push(recalibrate_batch_norm(
            &removed,
            &input.train,
            normalization,
            input.train_augmentation,
            settings.recalibration_batches,
            batch_size,
        )?);
    }
    let mut evaluations = Vec::with_capacity(networks.len());
    for (k, network) in networks.iter().enumerate() {
        progress(&format!(
            "step {k}: evaluating {}",
            k.checked_sub(1).map_or("the full network", |i| &order[i])
        ));
        let on_selection = evaluate(network, selection, normalization, batch_size)?;
        let on_test = evaluate(network, test, normalization, batch_size)?;
        evaluations.push((on_selection, on_test));
    }
    progress(&format!(
        "timing {} networks in interleaved rounds",
        networks.len()
    ));
    let input_shape = model.input_shape();
    let latency1 = interleaved_latencies(&networks, input_shape, 1, &settings.latency);
    let latency64 = interleaved_latencies(&networks, input_shape, 64, &settings.latency);

    let (full_selection, full_test) = evaluations[0];
    let full_cost = networks[0].total_cost();
    let score = |e: &crate::train::Evaluation, full: &crate::train::Evaluation| SplitScore {
        accuracy: e.accuracy,
        loss: e.loss,
        drop_points: 100.0 * (full.accuracy - e.accuracy),
    };
    let steps: Vec<CollapseStep> = networks
        .iter()
        .enumerate()
        .map(|(k, network)| {
            let cost = network.total_cost();
            let (on_selection, on_test) = &evaluations[k];
            CollapseStep {
                blocks_removed: k,
                removed_block: k.checked_sub(1).map(|i| order[i].clone()),
                selection: score(on_selection, &full_selection),
                test: score(on_test, &full_test),
                parameters: cost.parameters,
                macs: cost.macs,
                macs_reduction: full_cost.macs as f64 / cost.macs as f64,
                latency_batch1: latency1[k],
                latency_batch64: latency64[k],
                speedup_batch1: latency1[0].median_ms / latency1[k].median_ms,
                speedup_batch64: latency64[0].median_ms / latency64[k].median_ms,
                batch64_within_noise_of_previous: k > 0 && latency64[k].overlaps(&latency64[k - 1]),
            }
        })
        .collect();
    let chosen = choose(&steps, settings.max_drop, settings.target_macs)?;
    let chosen_model = networks.swap_remove(chosen);
    let report = CollapseReport {
        run: input.manifest.source_run.clone(),
        note: input.note.clone(),
        settings: settings.clone(),
        selection_split: settings.score_split.label().to_string(),
        scores,
        order,
        steps,
        chosen,
        data: input.manifest.data_description.clone(),
        split_images: [selection.len(), test.len()],
    };
    Ok((report, chosen_model))
}

/// The deepest step whose accuracy drop on the selection split is within `max_drop` points and,
/// when a target is given, whose MACs reach it. Test accuracy plays no part.
pub fn choose(
    steps: &[CollapseStep],
    max_drop: f64,
    target_macs: Option<u64>,
) -> Result<usize, CollapseError> {
    let within = |s: &CollapseStep| s.selection.drop_points <= max_drop + 1e-9;
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
