//! Training with the LaCoOT regulariser: `loss = cross-entropy + λ · mean_b MSW_p(input_b, output_b)`
//! over the regularised blocks, each batch a point cloud, with fresh random directions every step.
//!
//! A run lives in one folder: `config.json` (every setting, the data, the model, the lacoot
//! revision), `metrics.jsonl` (one line per epoch) and `checkpoints/{last,best}` (written atomically
//! after every epoch). [`train`] resumes from `checkpoints/last` when asked.

pub mod checkpoint;
mod config;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
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
pub use config::{OptimizerKind, RegularisedBlocks, TrainConfig};

use crate::data::{BatchPlan, ImageSet, Normalization, Splits, batch_count, batches, load_splits};
use crate::device::autodiff_device;
use crate::fsutil::write_atomic;
use crate::models::{BlockNetwork, ModelSpec, Network};
use crate::ot::{DirectionSampler, max_sliced_wasserstein, point_cloud};

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
    /// The loss became NaN or infinite; the last good checkpoint is kept.
    #[error(
        "the loss became {value} at epoch {epoch}, batch {batch}; stopped, the last good checkpoint is kept (try a smaller learning rate or lambda)"
    )]
    NonFiniteLoss {
        /// 1-based epoch.
        epoch: usize,
        /// 0-based batch within the epoch.
        batch: usize,
        /// The offending value.
        value: f64,
    },
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
    /// Mean cross-entropy.
    pub cross_entropy: f64,
    /// Mean regulariser (mean MSW over regularised blocks), before λ.
    pub regulariser: f64,
    /// Mean MSW of each regularised block.
    pub block_mswd: BTreeMap<String, f64>,
    /// Training accuracy (on augmented batches, as seen during the epoch).
    pub train_accuracy: f64,
    /// Validation accuracy.
    pub validation_accuracy: f64,
    /// Validation cross-entropy.
    pub validation_loss: f64,
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
    /// The checkpoint after the latest epoch.
    pub fn last(&self) -> PathBuf {
        self.root.join("checkpoints").join("last")
    }
    /// The checkpoint with the best validation accuracy.
    pub fn best(&self) -> PathBuf {
        self.root.join("checkpoints").join("best")
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

/// Trains the model described by `config` into `run`; with `resume`, continues from the run's last
/// checkpoint (the configuration must be the one recorded in the run).
///
/// Initialisation, dropout and stochastic depth draw from burn's device random generator, which
/// this function seeds from `config.seed` (again at every epoch, so that a resumed run draws what
/// the uninterrupted one drew). That generator is shared by the whole process: two trainings
/// running at the same time in one process are not reproducible.
pub fn train(
    config: &TrainConfig,
    run: &RunPaths,
    resume: bool,
    observer: &dyn TrainObserver,
) -> Result<TrainSummary, TrainError> {
    config.validate().map_err(TrainError::Config)?;
    let splits = load_splits(&config.data, config.validation_fraction, config.seed)?;
    let record = run_record(config, &splits);
    let device = autodiff_device();
    device.seed(config.seed);
    let mut model = record.model.build(&device)?;
    if let (Some(weights), false) = (&config.init_from, resume) {
        crate::models::weights::load_torch_weights(
            &mut model,
            weights,
            config.strip_prefix.as_deref(),
        )?;
    }
    let mut optimizer = build_optimizer(config);
    let mut state = TrainerState {
        epochs_done: 0,
        direction_draws: 0,
        best_validation_accuracy: f64::NEG_INFINITY,
        best_epoch: 0,
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TrainError::Io { path, source }
    };
    if resume {
        let recorded = run.read_record()?;
        if recorded.config != *config {
            return Err(TrainError::Config(format!(
                "{} records different settings; resume with the same flags",
                run.config().display()
            )));
        }
        checkpoint::load_model(&run.last(), &mut model)?;
        (optimizer, state) = checkpoint::load_training_state(&run.last(), optimizer)?;
        truncate_metrics(&run.metrics(), state.epochs_done)?;
    } else {
        std::fs::create_dir_all(&run.root).map_err(io(&run.root))?;
        let json = serde_json::to_vec_pretty(&record).expect("record serialises");
        write_atomic(&run.config(), &json).map_err(io(&run.config()))?;
        write_atomic(&run.metrics(), b"").map_err(io(&run.metrics()))?;
    }

    let regularised = regularised_blocks(&model, config.regularised_blocks);
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
    let mut step = TrainingStep::new(config, regularised, sampler, &device);
    let mut trained = Vec::new();
    for epoch in state.epochs_done..config.epochs {
        let started = Instant::now();
        device.seed(config.seed ^ (epoch as u64 + 1).wrapping_mul(EPOCH_SEED_STEP));
        let learning_rate = config.learning_rate_at(epoch);
        observer.epoch_started(epoch + 1, batch_count(train_set.len(), &plan));
        let mut totals = EpochTotals::default();
        let epoch_batches = batches(
            train_set.clone(),
            record.normalization.clone(),
            plan,
            epoch as u64,
        );
        for (index, batch) in epoch_batches.enumerate() {
            let (images, labels) = batch.to_tensors(&device);
            let outcome;
            (model, outcome) = step.run(model, &mut optimizer, images, labels, learning_rate)?;
            if !outcome.loss.is_finite() {
                return Err(TrainError::NonFiniteLoss {
                    epoch: epoch + 1,
                    batch: index,
                    value: outcome.loss,
                });
            }
            observer.batch_done(outcome.loss, outcome.images);
            totals.add(outcome);
        }
        let validation = evaluate(
            &model.valid(),
            &validation_set,
            &record.normalization,
            config.batch_size,
        );
        state.epochs_done = epoch + 1;
        state.direction_draws = step.direction_draws();
        let metrics = totals.finish(
            epoch + 1,
            learning_rate,
            &validation,
            started.elapsed().as_secs_f64(),
        );
        append_metrics(&run.metrics(), &metrics)?;
        let improved = validation.accuracy > state.best_validation_accuracy;
        if improved {
            state.best_validation_accuracy = validation.accuracy;
            state.best_epoch = epoch + 1;
        }
        checkpoint::save(&run.last(), &model, Some(&optimizer), &state)?;
        if improved {
            checkpoint::save(&run.best(), &model, None, &state)?;
        }
        tracing::info!(
            epoch = epoch + 1,
            validation_accuracy = validation.accuracy,
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
    /// Cross-entropy part.
    pub cross_entropy: f64,
    /// Mean max-sliced distance over the regularised blocks (before λ; 0 when λ = 0).
    pub regulariser: f64,
    /// Max-sliced distance of each regularised block.
    pub block_mswd: Vec<(String, f64)>,
    /// Correctly classified images of the batch.
    pub correct: usize,
    /// Images in the batch.
    pub images: usize,
}

/// One optimisation step with the LaCoOT loss; owns the loss function and the direction sampler.
pub struct TrainingStep {
    loss_fn: CrossEntropyLoss,
    regularised: BTreeSet<String>,
    sampler: DirectionSampler,
    lambda: f64,
    num_projections: usize,
    p: f64,
    device: Device,
}

impl TrainingStep {
    /// A step for `config`, regularising `regularised` with directions from `sampler`, on `device`
    /// (an autodiff device).
    pub fn new(
        config: &TrainConfig,
        regularised: BTreeSet<String>,
        sampler: DirectionSampler,
        device: &Device,
    ) -> Self {
        Self {
            loss_fn: CrossEntropyLossConfig::new().init(device),
            regularised,
            sampler,
            lambda: config.lambda,
            num_projections: config.num_projections,
            p: config.p,
            device: device.clone(),
        }
    }

    /// How many direction sets the step's sampler has drawn (saved in checkpoints).
    pub fn direction_draws(&self) -> u64 {
        self.sampler.draws()
    }

    /// Forward, loss, backward and optimiser update on one batch; returns the updated model.
    pub fn run<M: BlockNetwork + Module>(
        &mut self,
        model: M,
        optimizer: &mut ModuleOptimizer,
        images: Tensor<4>,
        labels: Tensor<1, Int>,
        learning_rate: f64,
    ) -> Result<(M, StepOutcome), TrainError> {
        let no_blocks = BTreeSet::new();
        let capture = if self.lambda > 0.0 {
            &self.regularised
        } else {
            &no_blocks
        };
        let (logits, features) = model.forward_capturing(images, capture);
        let cross_entropy = self.loss_fn.forward(logits.clone(), labels.clone());
        let mut distances = Vec::with_capacity(features.len());
        let mut block_mswd = Vec::with_capacity(features.len());
        for block in features {
            let (x, y) = (point_cloud(block.input), point_cloud(block.output));
            let directions =
                self.sampler
                    .sample(x.dims()[1], self.num_projections, &self.device, x.dtype())?;
            let distance = max_sliced_wasserstein(x, y, &directions, self.p, None)?;
            block_mswd.push((block.name, distance.distance));
            distances.push(distance.value);
        }
        let regulariser = (!distances.is_empty()).then(|| Tensor::cat(distances, 0).mean());
        let loss = match &regulariser {
            Some(r) => cross_entropy.clone() + r.clone().mul_scalar(self.lambda),
            None => cross_entropy.clone(),
        };
        let outcome = StepOutcome {
            loss: scalar(&loss),
            cross_entropy: scalar(&cross_entropy),
            regulariser: regulariser.as_ref().map_or(0.0, scalar),
            block_mswd,
            correct: correct(&logits, &labels),
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
    }
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

/// Accuracy and mean cross-entropy of `model` (in eval mode) on every image of `set`.
pub fn evaluate<N: BlockNetwork>(
    model: &N,
    set: &Arc<ImageSet>,
    normalization: &Normalization,
    batch_size: usize,
) -> Evaluation {
    let device = crate::device::default_device();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let plan = BatchPlan {
        batch_size,
        shuffle: false,
        drop_last: false,
        augmentation: None,
        seed: 0,
    };
    let (mut right, mut loss_sum) = (0usize, 0.0);
    for batch in batches(set.clone(), normalization.clone(), plan, 0) {
        let (images, labels) = batch.to_tensors(&device);
        let logits = model.forward(images);
        loss_sum +=
            scalar(&loss_fn.forward(logits.clone(), labels.clone())) * batch.labels.len() as f64;
        right += correct(&logits, &labels);
    }
    let images = set.len().max(1);
    Evaluation {
        accuracy: right as f64 / images as f64,
        loss: loss_sum / images as f64,
        images: set.len(),
    }
}

fn scalar(tensor: &Tensor<1>) -> f64 {
    tensor.clone().inner().into_scalar::<f32>() as f64
}

fn correct(logits: &Tensor<2>, labels: &Tensor<1, Int>) -> usize {
    let predicted = logits.clone().inner().argmax(1).flatten::<1>(0, 1);
    predicted
        .equal(labels.clone().inner())
        .int()
        .sum()
        .into_scalar::<i64>() as usize
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
        validation: &Evaluation,
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
            validation_accuracy: validation.accuracy,
            validation_loss: validation.loss,
            seconds,
            images_per_second: self.images as f64 / seconds.max(1e-9),
        }
    }
}

fn append_metrics(path: &Path, metrics: &EpochMetrics) -> Result<(), TrainError> {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let line = serde_json::to_string(metrics).expect("metrics serialise");
    writeln!(file, "{line}").map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Keeps the first `epochs` lines of `metrics.jsonl` (a resumed run rewrites what came after).
fn truncate_metrics(path: &Path, epochs: usize) -> Result<(), TrainError> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let kept: String = text
        .lines()
        .take(epochs)
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(path, kept.as_bytes()).map_err(|source| TrainError::Io {
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
    let mut model = record.model.build(&device)?;
    checkpoint::load_model(checkpoint_dir, &mut model)?;
    Ok((record, model.valid()))
}
