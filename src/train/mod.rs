//! Training with the LaCoOT regulariser: `loss = cross-entropy + λ · mean_b MSW_p(input_b, output_b)`
//! over the regularised blocks, each batch a point cloud, with fresh random directions every step.
//!
//! A run lives in one folder: `config.json` (every setting, the data, the model, the lacoot
//! revision), `metrics.jsonl` (one line per epoch) and `checkpoints/{last,best}` (written atomically
//! after every epoch). [`train`] resumes from `checkpoints/last` when asked.

pub mod checkpoint;
mod config;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::{Device, Int, Tensor};

pub use checkpoint::TrainerState;
pub use config::{BlockWeighting, MAX_ASCENT_STEPS, OptimizerKind, RegularisedBlocks, TrainConfig};

use crate::data::{BatchPlan, ImageSet, Normalization, Splits, batch_count, batches, load_splits};
use crate::device::autodiff_device;
use crate::fsutil::write_atomic;
use crate::models::{BlockNetwork, ModelSpec, Network};
use crate::ot::{
    Ascent, DirectionKind, DirectionSampler, max_sliced_on_device, max_sliced_wasserstein,
    point_cloud,
};

/// Salt that separates the direction sampler's seed from the model's and the data's.
const DIRECTION_SEED_SALT: u64 = 0x4C61_436F_4F54;
/// Spreads the per-epoch seeds of the device generator apart (the golden-ratio increment).
const EPOCH_SEED_STEP: u64 = 0x9E37_79B9_7F4A_7C15;

/// What can go wrong while training or evaluating.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The settings are inconsistent.
    #[error("invalid training configuration: {0}")]
    Config(String),
    /// The data could not be read.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// The model could not be built.
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    /// A distance could not be computed.
    #[error(transparent)]
    Distance(#[from] crate::ot::OtError),
    /// The device failed.
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    /// A file of the run could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A checkpoint or run record is missing or does not fit.
    #[error("{0}: {1}")]
    Checkpoint(PathBuf, String),
    /// The loss became NaN or infinite.
    #[error("the loss became {value} at epoch {epoch}, batch {batch}; stopped. {kept}")]
    NonFiniteLoss {
        /// 1-based epoch.
        epoch: usize,
        /// 0-based batch within the epoch.
        batch: usize,
        /// The offending value.
        value: f64,
        /// What was kept, and what the user may try.
        kept: String,
    },
    /// The run folder already holds a run and the caller did not ask to resume or replace it.
    #[error(
        "{path} already holds a run ({epochs} epochs done); continue it with --resume, or replace it with --force"
    )]
    RunExists {
        /// The run folder.
        path: PathBuf,
        /// Epochs its last checkpoint holds.
        epochs: usize,
    },
    /// The data read now is not the data recorded with the run, or does not fit the model.
    #[error("{0}")]
    DataMismatch(String),
    /// A block's distance could not be computed (its features hold NaN or infinity, say).
    #[error("block {block}: {source}")]
    BlockDistance {
        /// The block.
        block: String,
        /// What went wrong.
        source: crate::ot::OtError,
    },
    /// A training step failed.
    #[error("epoch {epoch}, batch {batch}: {source}")]
    AtStep {
        /// 1-based epoch.
        epoch: usize,
        /// 0-based batch within the epoch.
        batch: usize,
        /// What went wrong.
        source: Box<TrainError>,
    },
}

/// What [`train`] does with the run folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStart {
    /// Start a new run; an error if the folder already holds one.
    New,
    /// Continue from the last checkpoint (from the start if no epoch finished yet); only `epochs`
    /// may differ from the recorded settings, and a change is recorded.
    Resume,
    /// Delete the run the folder holds (config, metrics, checkpoints), then start anew.
    Replace,
}

/// The record of a run in `config.json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunRecord {
    /// The training settings.
    pub config: TrainConfig,
    /// The model as built (input size and classes from the data).
    pub model: ModelSpec,
    /// Per-channel normalisation computed on the training split.
    pub normalization: Normalization,
    /// Which copy of the data was used.
    pub data_description: String,
    /// Images per split: train, validation, test.
    pub split_sizes: [usize; 3],
    /// The lacoot version and git revision that trained.
    pub lacoot_version: String,
    /// Settings changed on resume, oldest first (e.g. `epochs 10 -> 20 after epoch 10`, or a
    /// change of device).
    #[serde(default)]
    pub changes: Vec<String>,
    /// The device that trained the run (the last one, when a resume changed it; `changes` lists
    /// the earlier ones).
    #[serde(default)]
    pub device: String,
}

impl RunRecord {
    /// Checks that `splits` are the data recorded with the run (same copy, same split sizes) and fit
    /// its model.
    pub fn check_data(&self, splits: &Splits) -> Result<(), TrainError> {
        let sizes = [
            splits.train.len(),
            splits.validation.len(),
            splits.test.len(),
        ];
        if splits.description != self.data_description || sizes != self.split_sizes {
            return Err(TrainError::DataMismatch(format!(
                "the data read now ({}, splits {sizes:?}) is not the data the run recorded ({}, splits {:?}); evaluate on other data explicitly with --data",
                splits.description, self.data_description, self.split_sizes
            )));
        }
        check_fit(&self.model, &splits.test, &splits.description)
    }
}

/// Checks that the images of `set` (from `description`) fit `model`: channels, size and classes.
pub fn check_fit(model: &ModelSpec, set: &ImageSet, description: &str) -> Result<(), TrainError> {
    let expected = [model.in_channels, model.input_size, model.input_size];
    if set.shape != expected {
        return Err(TrainError::DataMismatch(format!(
            "{description}: images are {}x{}x{} (channels x height x width) but the model takes {}x{}x{}",
            set.shape[0], set.shape[1], set.shape[2], expected[0], expected[1], expected[2]
        )));
    }
    if set.num_classes() != model.num_classes {
        return Err(TrainError::DataMismatch(format!(
            "{description}: {} classes but the model has {}",
            set.num_classes(),
            model.num_classes
        )));
    }
    Ok(())
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: usize,
    /// Learning rate during the epoch.
    pub learning_rate: f64,
    /// Mean total loss over the epoch's batches.
    pub train_loss: f64,
    /// Mean cross-entropy (against smoothed targets with `--label-smoothing`).
    pub cross_entropy: f64,
    /// Mean regulariser (mean MSW over regularised blocks), before λ.
    pub regulariser: f64,
    /// Mean MSW of each regularised block.
    pub block_mswd: BTreeMap<String, f64>,
    /// Training accuracy (on augmented batches, as seen during the epoch).
    pub train_accuracy: f64,
    /// Validation accuracy (absent without a validation split).
    pub validation_accuracy: Option<f64>,
    /// Validation cross-entropy (absent without a validation split).
    pub validation_loss: Option<f64>,
    /// Seconds the epoch took, evaluation included.
    pub seconds: f64,
    /// Training images per second.
    pub images_per_second: f64,
}

/// Callbacks for progress display; the library itself prints nothing.
pub trait TrainObserver {
    /// An epoch starts with `batches` batches.
    fn epoch_started(&self, _epoch: usize, _batches: usize) {}
    /// A batch finished with this total loss.
    fn batch_done(&self, _loss: f64, _images: usize) {}
    /// An epoch finished.
    fn epoch_done(&self, _metrics: &EpochMetrics) {}
    /// Asked after each epoch's checkpoint: `false` stops the run there (it can be resumed).
    fn keep_going(&self) -> bool {
        true
    }
}

/// An observer that ignores everything.
pub struct Silent;

impl TrainObserver for Silent {}

/// Accuracy and mean cross-entropy of a model on a set.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Evaluation {
    /// Fraction of images classified correctly.
    pub accuracy: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Number of images.
    pub images: usize,
}

/// The folder layout of a run.
#[derive(Clone, Debug)]
pub struct RunPaths {
    /// The run folder.
    pub root: PathBuf,
}

impl RunPaths {
    /// The run rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    /// `config.json`.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }
    /// `metrics.jsonl`.
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    /// The folder holding both checkpoints, committed as one.
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    /// The checkpoint after the latest epoch.
    pub fn last(&self) -> PathBuf {
        self.checkpoints().join("last")
    }
    /// The checkpoint with the best validation accuracy (the latest epoch without a validation
    /// split).
    pub fn best(&self) -> PathBuf {
        self.checkpoints().join("best")
    }

    /// Reads the run's `config.json`.
    pub fn read_record(&self) -> Result<RunRecord, TrainError> {
        let path = self.config();
        let text = std::fs::read_to_string(&path).map_err(|source| TrainError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint(path, e.to_string()))
    }
}

/// The outcome of a run.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    /// One entry per epoch trained in this call.
    pub epochs: Vec<EpochMetrics>,
    /// The run's state at the end.
    pub state: TrainerState,
}

/// Trains the model described by `config` into `run`, starting as `start` says.
///
/// After every epoch, `checkpoints/` (last and best together) is committed atomically, then
/// `metrics.jsonl` is rewritten atomically from the checkpoint's history: a crash at any moment
/// loses at most the epoch in progress, and `--resume` repeats exactly what was lost.
///
/// Initialisation, dropout and stochastic depth draw from burn's device random generator, which
/// this function seeds from `config.seed` (again at every epoch, so that a resumed run draws what
/// the uninterrupted one drew). That generator is shared by the whole process: two trainings
/// running at the same time in one process are not reproducible.
pub fn train(
    config: &TrainConfig,
    run: &RunPaths,
    start: RunStart,
    observer: &dyn TrainObserver,
) -> Result<TrainSummary, TrainError> {
    config.validate().map_err(TrainError::Config)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TrainError::Io { path, source }
    };
    let holds_run = run.config().exists();
    if start == RunStart::New && holds_run {
        return Err(TrainError::RunExists {
            path: run.root.clone(),
            epochs: epochs_done(run),
        });
    }
    let splits = load_splits(&config.data, config.validation_fraction, config.seed)?;
    check_split_sizes(config, &splits)?;
    let mut record = run_record(config, &splits);
    let device = autodiff_device();
    device.seed(config.seed);
    let mut model = record.model.build(&device)?;
    let block_weights = regulariser_weights(&model, config)?;
    let resume_from_checkpoint = start == RunStart::Resume && checkpoint::exists(&run.last());
    if let (Some(weights), false) = (&config.init_from, resume_from_checkpoint) {
        crate::models::weights::load_torch_weights(
            &mut model,
            weights,
            config.strip_prefix.as_deref(),
        )?;
    }
    let mut optimizer = build_optimizer(config);
    let mut state = TrainerState::fresh();
    if start == RunStart::Resume {
        let recorded = run.read_record()?;
        record.changes = resumed_changes(&recorded, config, &splits)?;
        if resume_from_checkpoint {
            checkpoint::load_model(&run.last(), &mut model)?;
            (optimizer, state) = checkpoint::load_training_state(&run.last(), optimizer)?;
            if state.history.len() < state.epochs_done {
                state.history = legacy_history(&run.metrics(), state.epochs_done);
            }
            if let Some(change) = record.changes.last_mut()
                && recorded.config.epochs != config.epochs
            {
                change.push_str(&format!(" after epoch {}", state.epochs_done));
            }
        }
        if !recorded.device.is_empty() && recorded.device != record.device {
            record.changes.push(format!(
                "device {} -> {} after epoch {}",
                recorded.device, record.device, state.epochs_done
            ));
        }
        if state.epochs_done > config.epochs {
            return Err(TrainError::Config(format!(
                "{} has {} epochs done, more than --epochs {}",
                run.root.display(),
                state.epochs_done,
                config.epochs
            )));
        }
    } else {
        if start == RunStart::Replace {
            for path in [run.config(), run.metrics()] {
                if path.exists() {
                    std::fs::remove_file(&path).map_err(io(&path))?;
                }
            }
            let checkpoints = run.checkpoints();
            crate::fsutil::recover_dir(&checkpoints).map_err(io(&checkpoints))?;
            if checkpoints.exists() {
                std::fs::remove_dir_all(&checkpoints).map_err(io(&checkpoints))?;
            }
        }
        std::fs::create_dir_all(&run.root).map_err(io(&run.root))?;
    }
    let json = serde_json::to_vec_pretty(&record)
        .map_err(|e| TrainError::Config(format!("the settings cannot be recorded as JSON: {e}")))?;
    write_atomic(&run.config(), &json).map_err(io(&run.config()))?;
    if start == RunStart::Resume {
        let on_disk = std::fs::read(run.metrics()).unwrap_or_default();
        if on_disk != metrics_text(&state.history).as_bytes() {
            tracing::warn!(
                "{}: repaired from the checkpoint ({} epochs; a line was missing, cut or extra)",
                run.metrics().display(),
                state.history.len()
            );
        }
    }
    write_metrics(&run.metrics(), &state.history)?;
    if splits.validation.is_empty() {
        tracing::warn!(
            "no validation split (--validation-fraction 0): checkpoints/best is the latest epoch, and collapse must be told to score on the training split"
        );
    }

    let train_set = Arc::new(splits.train);
    let validation_set = Arc::new(splits.validation);
    let sampler =
        DirectionSampler::resume(config.seed ^ DIRECTION_SEED_SALT, state.direction_draws);
    let plan = BatchPlan {
        batch_size: config.batch_size,
        shuffle: true,
        drop_last: true,
        augmentation: config.augmentation,
        seed: config.seed,
    };
    let mut step = TrainingStep::new(config, block_weights, sampler, &device);
    let mut trained = Vec::new();
    for epoch in state.epochs_done..config.epochs {
        let started = Instant::now();
        device.seed(config.seed ^ (epoch as u64 + 1).wrapping_mul(EPOCH_SEED_STEP));
        let learning_rate = config.learning_rate_at(epoch);
        let planned_batches = batch_count(train_set.len(), &plan);
        observer.epoch_started(epoch + 1, planned_batches);
        let mut totals = EpochTotals::default();
        let epoch_batches = batches(
            train_set.clone(),
            record.normalization.clone(),
            plan,
            epoch as u64,
        );
        for (index, batch) in epoch_batches.enumerate() {
            let lambda = config.lambda_at(epoch, index, planned_batches);
            let outcome;
            (model, outcome) = step
                .run(
                    model,
                    &mut optimizer,
                    batch?.to_tensors(&device),
                    learning_rate,
                    lambda,
                )
                .map_err(|source| TrainError::AtStep {
                    epoch: epoch + 1,
                    batch: index,
                    source: Box::new(source),
                })?;
            if !outcome.loss.is_finite() {
                return Err(TrainError::NonFiniteLoss {
                    epoch: epoch + 1,
                    batch: index,
                    value: outcome.loss,
                    kept: non_finite_advice(state.epochs_done, config, &outcome),
                });
            }
            observer.batch_done(outcome.loss, outcome.images);
            totals.add(outcome);
        }
        if totals.batches != planned_batches {
            return Err(TrainError::Data(crate::data::DataError::Batching(format!(
                "epoch {} trained on {} of {planned_batches} batches",
                epoch + 1,
                totals.batches
            ))));
        }
        let validation = if validation_set.is_empty() {
            None
        } else {
            Some(evaluate(
                &model.valid(),
                &validation_set,
                &record.normalization,
                config.batch_size,
            )?)
        };
        state.epochs_done = epoch + 1;
        state.direction_draws = step.direction_draws();
        let metrics = totals.finish(
            epoch + 1,
            learning_rate,
            validation.as_ref(),
            started.elapsed().as_secs_f64(),
        );
        let improved = match (validation, state.best_validation_accuracy) {
            (None, _) | (Some(_), None) => true,
            (Some(v), Some(best)) => v.accuracy > best,
        };
        if improved {
            state.best_validation_accuracy = validation.map(|v| v.accuracy);
            state.best_epoch = epoch + 1;
        }
        state.history.push(metrics.clone());
        checkpoint::commit_epoch(&run.checkpoints(), &model, &optimizer, &state, improved)?;
        write_metrics(&run.metrics(), &state.history)?;
        tracing::info!(
            epoch = epoch + 1,
            validation_accuracy = ?validation.map(|v| v.accuracy),
            "epoch done"
        );
        observer.epoch_done(&metrics);
        trained.push(metrics);
        if !observer.keep_going() {
            break;
        }
    }
    Ok(TrainSummary {
        epochs: trained,
        state,
    })
}

/// What one training step measured.
#[derive(Clone, Debug, PartialEq)]
pub struct StepOutcome {
    /// Total loss.
    pub loss: f64,
    /// Cross-entropy part (against smoothed targets with label smoothing).
    pub cross_entropy: f64,
    /// The regulariser before λ: the blocks' weighted mean max-sliced distance (of `MSW_p^p` with
    /// `squared`); 0 when λ = 0.
    pub regulariser: f64,
    /// Max-sliced distance `MSW_p` of each regularised block.
    pub block_mswd: Vec<(String, f64)>,
    /// Correctly classified images of the batch.
    pub correct: usize,
    /// Images in the batch.
    pub images: usize,
}

/// One optimisation step with the LaCoOT loss; owns the loss function and the direction sampler.
pub struct TrainingStep {
    loss_fn: CrossEntropyLoss,
    block_weights: BTreeMap<String, f64>,
    captured: BTreeSet<String>,
    sampler: DirectionSampler,
    direction_kind: DirectionKind,
    ascent: Option<Ascent>,
    squared: bool,
    num_projections: usize,
    p: f64,
    device: Device,
}

impl TrainingStep {
    /// A step for `config`, regularising the blocks of `block_weights` (each distance multiplied by
    /// its weight) with directions from `sampler`, on `device` (an autodiff device).
    pub fn new(
        config: &TrainConfig,
        block_weights: BTreeMap<String, f64>,
        sampler: DirectionSampler,
        device: &Device,
    ) -> Self {
        Self {
            loss_fn: CrossEntropyLossConfig::new()
                .with_smoothing(
                    (config.label_smoothing > 0.0).then_some(config.label_smoothing as f32),
                )
                .init(device),
            captured: if config.lambda > 0.0 {
                block_weights.keys().cloned().collect()
            } else {
                BTreeSet::new()
            },
            block_weights,
            sampler,
            direction_kind: config.directions,
            ascent: (config.ascent_steps > 0).then(|| Ascent::new(config.ascent_steps)),
            squared: config.squared,
            num_projections: config.num_projections,
            p: config.p,
            device: device.clone(),
        }
    }

    /// How many direction sets the step's sampler has drawn (saved in checkpoints).
    pub fn direction_draws(&self) -> u64 {
        self.sampler.draws()
    }

    /// Forward, loss, backward and optimiser update on one batch, with the regulariser weighted by
    /// `lambda` (the run's λ, or less during a warm-up); returns the updated model. The features
    /// are captured and the distances computed whenever the run's λ is positive, so the
    /// directions drawn do not depend on the warm-up.
    pub fn run<M: BlockNetwork + Module>(
        &mut self,
        model: M,
        optimizer: &mut ModuleOptimizer,
        (images, labels): (Tensor<4>, Tensor<1, Int>),
        learning_rate: f64,
        lambda: f64,
    ) -> Result<(M, StepOutcome), TrainError> {
        let (logits, features) = model.forward_capturing(images, &self.captured);
        let cross_entropy = self.loss_fn.forward(logits.clone(), labels.clone());
        let mut terms = Vec::with_capacity(features.len());
        let mut block_names = Vec::with_capacity(features.len());
        let mut block_distances = Vec::with_capacity(features.len());
        for block in features {
            let (x, y) = (point_cloud(block.input), point_cloud(block.output));
            let directions = self.sampler.sample_kind(
                self.direction_kind,
                x.dims()[1],
                self.num_projections,
                &self.device,
                x.dtype(),
            )?;
            let failed = |source| TrainError::BlockDistance {
                block: block.name.clone(),
                source,
            };
            // Without ascent the distance stays on the device; the ascent reads its steps' costs.
            let (value, value_pow_p) = match self.ascent {
                None => {
                    let distance =
                        max_sliced_on_device(x, y, &directions, self.p).map_err(failed)?;
                    (distance.value, distance.value_pow_p)
                }
                Some(ascent) => {
                    let distance = max_sliced_wasserstein(x, y, &directions, self.p, Some(ascent))
                        .map_err(failed)?;
                    (distance.value, distance.value_pow_p)
                }
            };
            block_distances.push(value.clone().inner());
            let term = if self.squared { value_pow_p } else { value };
            terms.push(term.mul_scalar(self.block_weights[&block.name]));
            block_names.push(block.name);
        }
        let regulariser = (!terms.is_empty()).then(|| Tensor::cat(terms, 0).mean());
        let loss = match &regulariser {
            Some(r) => cross_entropy.clone() + r.clone().mul_scalar(lambda),
            None => cross_entropy.clone(),
        };
        // Everything the step reports, read back in one transfer: the step's only synchronisation.
        let mut reported = vec![
            loss.clone().inner(),
            cross_entropy.inner(),
            regulariser.map_or_else(|| loss.clone().inner().zeros_like(), Tensor::inner),
            correct(&logits, &labels),
        ];
        reported.extend(block_distances);
        let numbers = crate::device::read_to_host(Tensor::cat(reported, 0))?;
        let outcome = StepOutcome {
            loss: numbers[0],
            cross_entropy: numbers[1],
            regulariser: numbers[2],
            block_mswd: block_names
                .into_iter()
                .zip(numbers[4..].iter().copied())
                .collect(),
            correct: numbers[3] as usize,
            images: labels.dims()[0],
        };
        if !outcome.loss.is_finite() {
            return Ok((model, outcome));
        }
        let gradients = GradientsParams::from_grads(loss.backward(), &model);
        Ok((optimizer.step(learning_rate, model, gradients), outcome))
    }
}

/// Builds the run's model spec and normalisation from the data.
fn run_record(config: &TrainConfig, splits: &Splits) -> RunRecord {
    let [channels, h, _] = splits.train.shape;
    RunRecord {
        config: config.clone(),
        model: ModelSpec {
            stem: config.stem,
            width: config.width.unwrap_or(config.architecture.default_width()),
            unit: config.unit,
            pairing: config.pairing,
            ..ModelSpec::new(config.architecture, channels, h, splits.train.num_classes())
        },
        normalization: splits.train.channel_statistics(),
        data_description: splits.description.clone(),
        split_sizes: [
            splits.train.len(),
            splits.validation.len(),
            splits.test.len(),
        ],
        lacoot_version: format!(
            "{} ({})",
            env!("CARGO_PKG_VERSION"),
            env!("LACOOT_GIT_REVISION")
        ),
        changes: Vec::new(),
        device: crate::device::selected_label(),
    }
}

/// Epochs the run in `run` has finished (0 without a checkpoint).
pub fn epochs_done(run: &RunPaths) -> usize {
    checkpoint::load_state(&run.last()).map_or(0, |s| s.epochs_done)
}

/// Training needs at least one full batch, and images in every class it learns.
fn check_split_sizes(config: &TrainConfig, splits: &Splits) -> Result<(), TrainError> {
    let train = splits.train.len();
    if train < config.batch_size {
        return Err(TrainError::Config(format!(
            "--batch-size {} is larger than the training split ({train} images of {}, after holding out {} for validation): no training step would run",
            config.batch_size,
            splits.description,
            splits.validation.len()
        )));
    }
    let side = splits.train.shape[1];
    if let Some(augmentation) = config.augmentation
        && augmentation.crop_padding > side
    {
        return Err(TrainError::Config(format!(
            "--crop-padding {} is larger than the {side}-pixel images",
            augmentation.crop_padding
        )));
    }
    if splits.test.is_empty() {
        return Err(TrainError::Config(format!(
            "{}: the test split is empty",
            splits.description
        )));
    }
    Ok(())
}

/// The settings a resume may change (only `epochs`), as lines to record; an error naming every
/// other difference from the recorded run, and when the data read now is not the recorded data.
fn resumed_changes(
    recorded: &RunRecord,
    config: &TrainConfig,
    splits: &Splits,
) -> Result<Vec<String>, TrainError> {
    let comparable = TrainConfig {
        epochs: recorded.config.epochs,
        ..config.clone()
    };
    if comparable != recorded.config {
        let ours = serde_json::to_value(&comparable).expect("config serialises");
        let theirs = serde_json::to_value(&recorded.config).expect("config serialises");
        let differing: Vec<String> = ours
            .as_object()
            .expect("an object")
            .iter()
            .filter(|(key, value)| theirs.get(key.as_str()) != Some(value))
            .map(|(key, value)| {
                format!(
                    "{key} {} (recorded {})",
                    value,
                    theirs.get(key.as_str()).unwrap_or(&serde_json::Value::Null)
                )
            })
            .collect();
        return Err(TrainError::Config(format!(
            "resume keeps the recorded settings (only --epochs may change); these differ: {}",
            differing.join(", ")
        )));
    }
    let mut changes = recorded.changes.clone();
    if recorded.config.epochs != config.epochs {
        changes.push(format!(
            "epochs {} -> {}",
            recorded.config.epochs, config.epochs
        ));
    }
    let data_now = run_record(config, splits);
    if data_now.data_description != recorded.data_description
        || data_now.split_sizes != recorded.split_sizes
        || data_now.model != recorded.model
    {
        return Err(TrainError::DataMismatch(format!(
            "the data read now ({}, splits {:?}) is not the data the run was trained on ({}, splits {:?})",
            data_now.data_description,
            data_now.split_sizes,
            recorded.data_description,
            recorded.split_sizes
        )));
    }
    Ok(changes)
}

/// What a non-finite loss leaves behind, and the likely causes given the step's parts.
fn non_finite_advice(epochs_done: usize, config: &TrainConfig, outcome: &StepOutcome) -> String {
    let kept = if epochs_done == 0 {
        "No epoch had finished, so no checkpoint was written.".to_string()
    } else {
        format!("checkpoints/last holds epoch {epochs_done}.")
    };
    let cause = if !outcome.cross_entropy.is_finite() {
        format!(
            "The cross-entropy diverged: try a smaller --lr (now {}).",
            config.learning_rate
        )
    } else {
        format!(
            "The regulariser diverged: try a smaller --lambda (now {}).",
            config.lambda
        )
    };
    format!("{kept} {cause}")
}

/// The optimiser `config` asks for.
pub fn build_optimizer(config: &TrainConfig) -> ModuleOptimizer {
    let decay =
        (config.weight_decay > 0.0).then(|| WeightDecayConfig::new(config.weight_decay as f32));
    match config.optimizer {
        OptimizerKind::Sgd => SgdConfig::new()
            .with_momentum(Some(
                MomentumConfig::new()
                    .with_momentum(config.momentum)
                    .with_dampening(0.0),
            ))
            .with_weight_decay(decay)
            .init(),
        OptimizerKind::Adam => AdamConfig::new().with_weight_decay(decay).init(),
    }
}

/// The names of the blocks the regulariser acts on.
pub fn regularised_blocks<N: BlockNetwork>(
    model: &N,
    which: RegularisedBlocks,
) -> BTreeSet<String> {
    match which {
        RegularisedBlocks::All => model
            .blocks()
            .into_iter()
            .filter(|b| b.collapsible && !b.removed)
            .map(|b| b.name)
            .collect(),
        RegularisedBlocks::Paper => model.paper_regularised(),
    }
}

/// The regularised blocks (see [`regularised_blocks`]) with the weight of each one's distance:
/// 1 each, or with [`BlockWeighting::Macs`] the block's MACs over the mean of theirs, times the
/// block's factor in `config.block_scales`; an error naming a scaled block that is not regularised.
pub fn regulariser_weights<N: BlockNetwork>(
    model: &N,
    config: &TrainConfig,
) -> Result<BTreeMap<String, f64>, TrainError> {
    let names = regularised_blocks(model, config.regularised_blocks);
    if let Some(unknown) = config.block_scales.keys().find(|b| !names.contains(*b)) {
        let known: Vec<&str> = names.iter().map(String::as_str).collect();
        return Err(TrainError::Config(format!(
            "--block-scale {unknown}: not a regularised block of this model (regularised: {})",
            known.join(", ")
        )));
    }
    let macs: BTreeMap<String, f64> = model
        .blocks()
        .into_iter()
        .filter(|b| names.contains(&b.name))
        .map(|b| (b.name, b.macs as f64))
        .collect();
    let mean = macs.values().sum::<f64>() / macs.len().max(1) as f64;
    Ok(macs
        .into_iter()
        .map(|(name, block_macs)| {
            let weight = match config.block_weighting {
                BlockWeighting::Uniform => 1.0,
                BlockWeighting::Macs if mean > 0.0 => block_macs / mean,
                BlockWeighting::Macs => 1.0,
            };
            let factor = config.block_scales.get(&name).copied().unwrap_or(1.0);
            (name, weight * factor)
        })
        .collect())
}

/// Accuracy and mean cross-entropy of `model` (in eval mode) on every image of `set`; an error if
/// the set is empty or any batch could not be prepared.
pub fn evaluate<N: BlockNetwork>(
    model: &N,
    set: &Arc<ImageSet>,
    normalization: &Normalization,
    batch_size: usize,
) -> Result<Evaluation, crate::data::DataError> {
    let device = crate::device::default_device();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let plan = BatchPlan {
        batch_size,
        shuffle: false,
        drop_last: false,
        augmentation: None,
        seed: 0,
    };
    if set.is_empty() {
        return Err(crate::data::DataError::Batching(
            "cannot evaluate on an empty split".into(),
        ));
    }
    // Summed on the device and read back once at the end: no synchronisation per batch.
    let mut totals: Option<Tensor<1>> = None;
    let mut seen = 0usize;
    for batch in batches(set.clone(), normalization.clone(), plan, 0) {
        let batch = batch?;
        let (images, labels) = batch.to_tensors(&device);
        let logits = model.forward(images);
        let loss_sum = loss_fn
            .forward(logits.clone(), labels.clone())
            .mul_scalar(batch.labels.len() as f64);
        let batch_totals = Tensor::cat(vec![loss_sum, correct(&logits, &labels)], 0);
        totals = Some(match totals {
            Some(sum) => sum + batch_totals,
            None => batch_totals,
        });
        seen += batch.labels.len();
    }
    let [loss_sum, right] = match totals.map(crate::device::read_to_host) {
        Some(Ok(numbers)) => [numbers[0], numbers[1]],
        Some(Err(e)) => {
            return Err(crate::data::DataError::Batching(format!(
                "reading the evaluation's totals: {e}"
            )));
        }
        None => [0.0, 0.0],
    };
    if seen != set.len() {
        return Err(crate::data::DataError::Batching(format!(
            "evaluated {seen} of {} images",
            set.len()
        )));
    }
    Ok(Evaluation {
        accuracy: right / seen as f64,
        loss: loss_sum / seen as f64,
        images: seen,
    })
}

/// The number of correctly classified images, `[1]`, as a float on the logits' device.
fn correct(logits: &Tensor<2>, labels: &Tensor<1, Int>) -> Tensor<1> {
    let predicted = logits.clone().inner().argmax(1).flatten::<1>(0, 1);
    predicted
        .equal(labels.clone().inner())
        .int()
        .sum()
        .float()
        .cast(logits.dtype())
}

#[derive(Default)]
struct EpochTotals {
    batches: usize,
    images: usize,
    correct: usize,
    loss: f64,
    cross_entropy: f64,
    regulariser: f64,
    blocks: BTreeMap<String, (f64, usize)>,
}

impl EpochTotals {
    fn add(&mut self, outcome: StepOutcome) {
        for (name, distance) in outcome.block_mswd {
            let entry = self.blocks.entry(name).or_default();
            entry.0 += distance;
            entry.1 += 1;
        }
        self.batches += 1;
        self.images += outcome.images;
        self.correct += outcome.correct;
        self.loss += outcome.loss;
        self.cross_entropy += outcome.cross_entropy;
        self.regulariser += outcome.regulariser;
    }

    fn finish(
        self,
        epoch: usize,
        learning_rate: f64,
        validation: Option<&Evaluation>,
        seconds: f64,
    ) -> EpochMetrics {
        let batches = self.batches.max(1) as f64;
        EpochMetrics {
            epoch,
            learning_rate,
            train_loss: self.loss / batches,
            cross_entropy: self.cross_entropy / batches,
            regulariser: self.regulariser / batches,
            block_mswd: self
                .blocks
                .into_iter()
                .map(|(k, (sum, n))| (k, sum / n.max(1) as f64))
                .collect(),
            train_accuracy: self.correct as f64 / self.images.max(1) as f64,
            validation_accuracy: validation.map(|v| v.accuracy),
            validation_loss: validation.map(|v| v.loss),
            seconds,
            images_per_second: self.images as f64 / seconds.max(1e-9),
        }
    }
}

/// The metrics history of a checkpoint written before checkpoints carried it: the valid lines of
/// `metrics.jsonl` for the epochs the checkpoint holds (fewer, with a warning, if some are damaged).
fn legacy_history(path: &Path, epochs: usize) -> Vec<EpochMetrics> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let history: Vec<EpochMetrics> = text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .take(epochs)
        .collect();
    if history.len() < epochs {
        tracing::warn!(
            "{}: only {} of the {epochs} epochs' lines could be read back",
            path.display(),
            history.len()
        );
    }
    history
}

/// The text of `metrics.jsonl`: one JSON line per epoch of `history`.
fn metrics_text(history: &[EpochMetrics]) -> String {
    let mut text = String::new();
    for metrics in history {
        text.push_str(&serde_json::to_string(metrics).expect("metrics serialise"));
        text.push('\n');
    }
    text
}

/// Writes `metrics.jsonl` atomically: one line per epoch of `history`.
fn write_metrics(path: &Path, history: &[EpochMetrics]) -> Result<(), TrainError> {
    write_atomic(path, metrics_text(history).as_bytes()).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads the model of a run from one of its checkpoints, in eval mode on the plain device.
pub fn load_run_model(
    run: &RunPaths,
    checkpoint_dir: &Path,
) -> Result<(RunRecord, Network), TrainError> {
    let record = run.read_record()?;
    let device: Device = crate::device::default_device();
    let mut model = record
        .model
        .build(&device)
        .map_err(|e| TrainError::Checkpoint(run.config(), e.to_string()))?;
    checkpoint::load_model(checkpoint_dir, &mut model)?;
    Ok((record, model.valid()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::Architecture;

    fn set(shape: [usize; 3], classes: usize) -> ImageSet {
        let size: usize = shape.iter().product();
        ImageSet::new(
            vec![0; 2 * size],
            vec![0, 1],
            shape,
            (0..classes).map(|c| c.to_string()).collect(),
            Path::new("test"),
        )
        .unwrap()
    }

    #[test]
    fn data_must_fit_the_model_in_channels_size_and_classes() {
        let model = ModelSpec::new(Architecture::Resnet18, 1, 28, 10);
        assert!(check_fit(&model, &set([1, 28, 28], 10), "d").is_ok());
        for (bad, needle) in [
            (set([3, 28, 28], 10), "images are 3x28x28"),
            (set([1, 32, 32], 10), "images are 1x32x32"),
            (set([1, 28, 28], 5), "5 classes but the model has 10"),
            (set([1, 28, 28], 12), "12 classes but the model has 10"),
        ] {
            let message = check_fit(&model, &bad, "d").unwrap_err().to_string();
            assert!(message.contains(needle), "{message}");
        }
    }
}
