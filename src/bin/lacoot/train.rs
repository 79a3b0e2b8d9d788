//! `lacoot train` and `lacoot eval`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lacoot::data::{Augmentation, DataSource, load_splits};
use lacoot::ot::DirectionKind;
use lacoot::train::{
    BlockWeighting, EpochMetrics, OptimizerKind, RegularisedBlocks, RunPaths, RunStart,
    TrainConfig, TrainObserver, check_fit, evaluate, load_run_model, train,
};
use serde_json::json;

use crate::architecture::ArchitectureArgs;

/// Train a network with the LaCoOT regulariser (or without it, with --lambda 0).
///
/// loss = cross-entropy + lambda * mean over the regularised blocks of the max-sliced Wasserstein
/// distance between each block's input and output (the batch is the point cloud; fresh random
/// directions every step). Flag defaults are the paper's: SGD, momentum 0.9, lr 0.1, weight decay
/// 1e-4, batch 128, lr x0.1 at 50 % and 75 % of the epochs, lambda 5, random crop (pad 4) and
/// horizontal flip, 10 % of the training set held out for validation.
///
/// The run folder receives config.json, metrics.jsonl (one line per epoch) and checkpoints/last and
/// checkpoints/best, committed together atomically after every epoch: a crash or kill at any moment
/// loses at most the epoch in progress. --resume continues an interrupted run with the settings
/// recorded in its config.json (only --epochs may change, and the change is recorded). Ctrl-C
/// finishes the epoch, saves it and stops; a second Ctrl-C stops at once (the last finished epoch
/// is kept). Without a validation split (--validation-fraction 0), checkpoints/best is the last
/// epoch.
///
/// Examples:
///   lacoot train --model resnet18 --width 16 --data fashion-mnist --epochs 10 --out runs/fm
///   lacoot train --model mobilenetv2-cifar --unit depthwise --width 16 --epochs 5 --out runs/mb
///   lacoot train --model swin-t --width 24 --pairing mlp-branch --epochs 5 --out runs/swin
#[derive(Debug, Args)]
#[command(verbatim_doc_comment, allow_negative_numbers = true)]
pub struct TrainArgs {
    /// The run folder.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// Continue the run in --out from its last checkpoint (or from the start if it never finished
    /// an epoch), with its recorded settings; --epochs may extend it.
    #[arg(long, conflicts_with = "force")]
    resume: bool,

    /// Replace the run already in --out (its config, metrics and checkpoints are deleted).
    #[arg(long)]
    force: bool,

    #[command(flatten)]
    pub settings: TrainSettingsArgs,
}

/// The training settings (everything but the run folder), shared by `train` and `sweep`.
#[derive(Debug, Args)]
pub struct TrainSettingsArgs {
    #[command(flatten)]
    pub architecture: ArchitectureArgs,

    /// The data set: fashion-mnist (Debian's copy when installed, else the embedded subset),
    /// fashion-mnist-subset, mnist, cifar10, cifar100 or image-folder.
    #[arg(long, default_value = "fashion-mnist")]
    pub data: String,

    /// The data set's folder (for image-folder: the folder holding train/ and test/).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Fraction of each training class held out for validation, in [0, 1). With 0 there is no
    /// validation split: best = last, and collapse must be told to score on the training split.
    #[arg(long, default_value_t = 0.1)]
    validation_fraction: f64,

    /// Passes over the training set.
    #[arg(long, default_value_t = 160)]
    epochs: usize,

    /// Images per batch: the point clouds have this many points.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,

    /// The optimiser.
    #[arg(long, value_enum, default_value = "sgd")]
    optimizer: OptimizerKind,

    /// Initial learning rate.
    #[arg(long, default_value_t = 0.1)]
    lr: f64,

    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,

    /// L2 weight decay.
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f64,

    /// Learning-rate milestones as fractions of the epochs.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.75")]
    milestones: Vec<f64>,

    /// Learning-rate factor at each milestone.
    #[arg(long, default_value_t = 0.1)]
    gamma: f64,

    /// Weight of the regulariser; 0 trains the plain baseline.
    #[arg(long = "lambda", default_value_t = 5.0)]
    lambda: f64,

    /// Regularised blocks: every shape-preserving block, or the paper's (for ResNets all but the
    /// first of each stage; for the others every shape-preserving block).
    #[arg(long, value_enum, default_value = "all")]
    blocks: RegularisedBlocks,

    /// Random directions per distance, fresh every step.
    #[arg(long, default_value_t = 50)]
    num_projections: usize,

    /// Order p of the Wasserstein distance.
    #[arg(long, default_value_t = 2.0)]
    p: f64,

    /// Epochs (fractions allowed) over which λ ramps linearly from 0 to --lambda, step by step,
    /// so the network learns features before it is pulled towards identity. 0: the full λ from
    /// the first step (the paper).
    #[arg(long, value_name = "EPOCHS", default_value_t = 0.0)]
    lambda_warmup: f64,

    /// How the blocks' distances are weighed: uniform (the paper's mean), or macs (each block by
    /// its share of the regularised blocks' MACs, so the costliest blocks are pulled hardest).
    #[arg(long, value_enum, default_value = "uniform")]
    block_weighting: BlockWeighting,

    /// Multiply one block's weight in the regulariser by FACTOR (after --block-weighting; repeat
    /// the flag for several blocks), e.g. `--block-scale layer1.0=3` pulls `layer1.0` three times
    /// as hard as the others: a per-block λ. The block must be regularised (see --blocks).
    #[arg(long, value_name = "BLOCK=FACTOR", value_parser = parse_block_scale)]
    block_scale: Vec<(String, f64)>,

    /// How the directions are drawn: random (independent, the paper's) or orthogonal
    /// (orthonormal groups, as in UnifOrtho).
    #[arg(long, value_enum, default_value = "random")]
    directions: DirectionKind,

    /// Refine each block's best random direction with this many gradient-ascent steps on the
    /// sphere at every training step (0: the paper's max over random directions). Costs one
    /// projection and sort per step tried.
    #[arg(long, value_name = "STEPS", default_value_t = 0)]
    ascent_steps: usize,

    /// Regularise MSW_p^p (W2² at p = 2) instead of MSW_p: weaker on small distances, stronger
    /// on large ones.
    #[arg(long)]
    squared: bool,

    /// Label smoothing α of the training cross-entropy: the target puts 1 − α on the label and
    /// α / classes on every class, so the network is not pushed towards ever larger logits.
    /// 0: one-hot targets (the paper). Validation and test report the plain cross-entropy.
    #[arg(long, value_name = "ALPHA", default_value_t = 0.0)]
    label_smoothing: f64,

    /// Random-crop padding in pixels (0: no crop).
    #[arg(long, default_value_t = 4)]
    crop_padding: usize,

    /// No horizontal flips.
    #[arg(long)]
    no_flip: bool,

    /// Seed of initialisation, data order, augmentation and directions.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Start from PyTorch weights (.pth or .safetensors with torchvision names) instead of a random
    /// initialisation; missing or unexpected keys are an error that lists them.
    #[arg(long, value_name = "FILE")]
    init_from: Option<PathBuf>,

    /// Strip this prefix from the keys of --init-from (e.g. `backbone.` for a wrapper module).
    #[arg(long, requires = "init_from")]
    strip_prefix: Option<String>,
}

/// `BLOCK=FACTOR` of `--block-scale`.
fn parse_block_scale(text: &str) -> Result<(String, f64), String> {
    let (block, factor) = text
        .split_once('=')
        .ok_or_else(|| format!("expected BLOCK=FACTOR (e.g. layer1.0=3), not `{text}`"))?;
    let factor: f64 = factor
        .parse()
        .map_err(|_| format!("the factor of `{text}` is not a number"))?;
    Ok((block.to_string(), factor))
}

impl TrainSettingsArgs {
    /// The settings as the library takes them.
    pub fn config(&self) -> Result<TrainConfig> {
        let data =
            DataSource::from_name(&self.data, self.data_dir.clone()).map_err(anyhow::Error::msg)?;
        let augmentation = Augmentation::from_flags(self.crop_padding, !self.no_flip);
        Ok(TrainConfig {
            architecture: self.architecture.model,
            stem: self.architecture.stem,
            width: self.architecture.width,
            unit: self.architecture.unit,
            pairing: self.architecture.pairing,
            data,
            validation_fraction: self.validation_fraction,
            epochs: self.epochs,
            batch_size: self.batch_size,
            optimizer: self.optimizer,
            learning_rate: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            milestones: self.milestones.clone(),
            gamma: self.gamma,
            lambda: self.lambda,
            regularised_blocks: self.blocks,
            num_projections: self.num_projections,
            p: self.p,
            lambda_warmup: self.lambda_warmup,
            block_weighting: self.block_weighting,
            block_scales: self.block_scale.iter().cloned().collect(),
            directions: self.directions,
            ascent_steps: self.ascent_steps,
            squared: self.squared,
            label_smoothing: self.label_smoothing,
            augmentation,
            seed: self.seed,
            init_from: self.init_from.clone(),
            strip_prefix: self.strip_prefix.clone(),
        })
    }
}

/// Flags that may differ from the recorded settings on --resume (or say nothing about them).
const RESUMABLE_FLAGS: [&str; 5] = ["out", "resume", "epochs", "verbose", "device"];

/// The `config.json` key each setting flag is recorded under, where the names differ.
fn recorded_key(flag: &str) -> &str {
    match flag {
        "model" => "architecture",
        "data_dir" => "data",
        "lr" => "learning_rate",
        "blocks" => "regularised_blocks",
        "crop_padding" | "no_flip" => "augmentation",
        other => other,
    }
}

/// Trains, showing one progress bar per epoch and one summary line after it. `matches` tells which
/// flags the user typed (those must agree with a resumed run's record).
pub fn run_train(args: &TrainArgs, matches: &clap::ArgMatches) -> Result<()> {
    let run = RunPaths::new(&args.out);
    let (config, start) = if args.resume {
        let recorded = run
            .read_record()
            .with_context(|| format!("cannot resume {}", args.out.display()))?
            .config;
        let typed = args.settings.config()?;
        let (ours, theirs) = (
            serde_json::to_value(&typed)?,
            serde_json::to_value(&recorded)?,
        );
        let contradictions: Vec<String> = matches
            .ids()
            .map(|id| id.as_str())
            .filter(|id| {
                !RESUMABLE_FLAGS.contains(id)
                    && matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
            })
            .filter(|id| ours.get(recorded_key(id)) != theirs.get(recorded_key(id)))
            .map(|id| format!("--{}", id.replace('_', "-")))
            .collect();
        if !contradictions.is_empty() {
            bail!(
                "{} contradict{} the settings recorded in {} (a resumed run keeps them; only --epochs may change)",
                contradictions.join(", "),
                if contradictions.len() == 1 { "s" } else { "" },
                run.config().display()
            );
        }
        let epochs_typed =
            matches.value_source("epochs") == Some(clap::parser::ValueSource::CommandLine);
        let config = TrainConfig {
            epochs: if epochs_typed {
                args.settings.epochs
            } else {
                recorded.epochs
            },
            ..recorded
        };
        (config, RunStart::Resume)
    } else if args.force {
        (args.settings.config()?, RunStart::Replace)
    } else {
        (args.settings.config()?, RunStart::New)
    };
    let bars = EpochBars::default();
    let interrupts = interrupt_counter()?;
    bars.stop_after_epoch.set(interrupts).expect("set once");
    let summary = train(&config, &run, start, &bars)?;
    let state = &summary.state;
    match state.best_validation_accuracy {
        Some(best) => eprintln!(
            "best validation accuracy {:.2} % at epoch {}; run in {}",
            100.0 * best,
            state.best_epoch,
            args.out.display()
        ),
        None => eprintln!(
            "no validation split: checkpoints/best is the last epoch ({}); run in {}",
            state.best_epoch,
            args.out.display()
        ),
    }
    if state.epochs_done < config.epochs {
        eprintln!(
            "interrupted after epoch {} of {}; continue with: lacoot train --out {} --resume",
            state.epochs_done,
            config.epochs,
            args.out.display()
        );
        std::process::exit(130);
    }
    Ok(())
}

/// Counts Ctrl-C presses: the first asks training to stop after the epoch in progress is saved,
/// the second exits at once (every file lacoot writes is committed atomically, so the last
/// finished epoch is intact).
fn interrupt_counter() -> Result<&'static AtomicUsize> {
    static PRESSES: AtomicUsize = AtomicUsize::new(0);
    ctrlc::set_handler(|| {
        if PRESSES.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!(
                "\ninterrupted: finishing and saving this epoch, then stopping (Ctrl-C again stops now)"
            );
        } else {
            eprintln!(
                "\nstopped; the last finished epoch is saved: continue with lacoot train --out DIR --resume"
            );
            std::process::exit(130);
        }
    })
    .context("cannot install the Ctrl-C handler")?;
    Ok(&PRESSES)
}

/// Progress bars for the training loop.
#[derive(Default)]
pub struct EpochBars {
    bar: std::cell::RefCell<Option<ProgressBar>>,
    /// Ctrl-C presses; training stops after the epoch in progress once there is one.
    stop_after_epoch: std::sync::OnceLock<&'static AtomicUsize>,
}

impl TrainObserver for EpochBars {
    fn epoch_started(&self, epoch: usize, batches: usize) {
        let bar = ProgressBar::new(batches as u64).with_style(
            ProgressStyle::with_template(
                "epoch {prefix:>3} [{bar:30}] {pos}/{len} batches  {msg}  {per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(epoch.to_string());
        *self.bar.borrow_mut() = Some(bar);
    }

    fn batch_done(&self, loss: f64, _images: usize) {
        if let Some(bar) = self.bar.borrow().as_ref() {
            bar.set_message(format!("loss {loss:.4}"));
            bar.inc(1);
        }
    }

    fn epoch_done(&self, m: &EpochMetrics) {
        if let Some(bar) = self.bar.borrow_mut().take() {
            bar.finish_and_clear();
        }
        eprintln!(
            "epoch {:>3}  lr {:.4}  loss {:.4} (ce {:.4} + reg {:.4})  train {:.2} %  val {}  {:.0} img/s",
            m.epoch,
            m.learning_rate,
            m.train_loss,
            m.cross_entropy,
            m.regulariser,
            100.0 * m.train_accuracy,
            m.validation_accuracy
                .map_or("n/a".to_string(), |v| format!("{:.2} %", 100.0 * v)),
            m.images_per_second
        );
    }

    fn keep_going(&self) -> bool {
        self.stop_after_epoch
            .get()
            .is_none_or(|presses| presses.load(Ordering::SeqCst) == 0)
    }
}

/// Accuracy and loss of a trained run, or of a collapsed model, on a data split.
///
/// Evaluates the run's best (or last) checkpoint, or a model saved by lacoot collapse, on the data
/// recorded with it (or --data), in eval mode on every image of the split.
///
/// Examples: lacoot eval --run runs/fm --split test --json
///           lacoot eval --model runs/fm/collapse/model
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The run folder written by lacoot train.
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "model",
        conflicts_with = "model"
    )]
    run: Option<PathBuf>,

    /// A model saved by lacoot collapse (the folder holding manifest.json).
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,

    /// Which checkpoint: best (validation accuracy) or last.
    #[arg(long, default_value = "best", value_parser = ["best", "last"])]
    checkpoint: String,

    /// The split to evaluate: test or val.
    #[arg(long, default_value = "test", value_parser = ["test", "val"])]
    split: String,

    /// Evaluate on another data set than the run's (same names as lacoot train --data).
    #[arg(long)]
    data: Option<String>,

    /// The folder of --data.
    #[arg(long, value_name = "DIR", requires = "data")]
    data_dir: Option<PathBuf>,

    /// Images per evaluation batch.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,

    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// A checkpoint or saved model with what is needed to evaluate it.
struct Loaded {
    name: String,
    model: lacoot::models::Network,
    spec: lacoot::models::ModelSpec,
    normalization: lacoot::data::Normalization,
    data: DataSource,
    validation_fraction: f64,
    seed: u64,
    /// The data description recorded with the model, if any.
    recorded_data: Option<String>,
}

/// Evaluates a checkpoint or a saved model and prints accuracy and loss.
pub fn run_eval(args: &EvalArgs) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let loaded = match (&args.run, &args.model) {
        (Some(run_dir), _) => {
            let run = RunPaths::new(run_dir);
            let checkpoint = match args.checkpoint.as_str() {
                "last" => run.last(),
                _ => run.best(),
            };
            let (record, model) = load_run_model(&run, &checkpoint)?;
            Loaded {
                name: format!("{} ({} checkpoint)", run_dir.display(), args.checkpoint),
                model,
                spec: record.model,
                normalization: record.normalization,
                data: record.config.data,
                validation_fraction: record.config.validation_fraction,
                seed: record.config.seed,
                recorded_data: Some(record.data_description),
            }
        }
        (None, Some(dir)) => {
            let (manifest, model) = lacoot::collapse::saved::load_model(dir)?;
            Loaded {
                name: dir.display().to_string(),
                model,
                spec: manifest.model,
                normalization: manifest.normalization,
                data: manifest.data,
                validation_fraction: manifest.validation_fraction,
                seed: manifest.seed,
                recorded_data: (!manifest.data_description.is_empty())
                    .then_some(manifest.data_description),
            }
        }
        (None, None) => bail!("give --run or --model"),
    };
    let (source, other_data) = match &args.data {
        Some(name) => (
            DataSource::from_name(name, args.data_dir.clone()).map_err(anyhow::Error::msg)?,
            true,
        ),
        None => (loaded.data.clone(), false),
    };
    let splits = load_splits(&source, loaded.validation_fraction, loaded.seed)?;
    check_fit(&loaded.spec, &splits.test, &splits.description)?;
    if other_data {
        tracing::warn!(
            "evaluating on {} instead of the data recorded with the model",
            splits.description
        );
    } else if let Some(recorded) = loaded.recorded_data.filter(|r| *r != splits.description) {
        bail!(
            "the data read now ({}) is not the data recorded with the model ({recorded}); pass --data to evaluate on other data explicitly",
            splits.description
        );
    }
    let set = match args.split.as_str() {
        "val" => splits.validation,
        _ => splits.test,
    };
    if set.is_empty() {
        bail!(
            "the {} split of {} is empty (trained with --validation-fraction 0?)",
            args.split,
            splits.description
        );
    }
    let evaluation = evaluate(
        &loaded.model,
        &Arc::new(set),
        &loaded.normalization,
        args.batch_size,
    )?;
    let source_name = loaded.name;
    if args.json {
        println!(
            "{}",
            json!({
                "model": source_name, "split": args.split, "data": splits.description,
                "other_data": other_data,
                "accuracy": evaluation.accuracy, "loss": evaluation.loss, "images": evaluation.images,
            })
        );
    } else {
        println!(
            "{source_name} on {} {}{}: accuracy {:.2} %, loss {:.4}, {} images",
            splits.description,
            args.split,
            if other_data {
                " (not the model's own data)"
            } else {
                ""
            },
            100.0 * evaluation.accuracy,
            evaluation.loss,
            evaluation.images
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use lacoot::models::{Architecture, FeaturePairing, RemovalUnit, StemKind};
    use lacoot::train::{BlockWeighting, OptimizerKind, RegularisedBlocks, TrainConfig};

    use super::*;

    /// `lacoot train`'s settings alone, as the command line parses them.
    #[derive(Parser)]
    struct Settings {
        #[command(flatten)]
        settings: TrainSettingsArgs,
    }

    fn parsed(flags: &[String]) -> TrainConfig {
        let words = std::iter::once("lacoot".to_string()).chain(flags.iter().cloned());
        Settings::try_parse_from(words)
            .unwrap_or_else(|e| panic!("{flags:?}: {e}"))
            .settings
            .config()
            .unwrap()
    }

    #[test]
    fn the_recorded_flags_make_the_same_settings() {
        let every_setting = TrainConfig {
            architecture: Architecture::Mobilenetv2Cifar,
            stem: None,
            width: Some(8),
            unit: RemovalUnit::Depthwise,
            pairing: FeaturePairing::Block,
            data: DataSource::Cifar10 {
                root: "/data/cifar 10".into(),
            },
            validation_fraction: 0.2,
            epochs: 7,
            batch_size: 64,
            optimizer: OptimizerKind::Adam,
            learning_rate: 0.003,
            momentum: 0.8,
            weight_decay: 5e-4,
            milestones: vec![0.3, 0.6, 0.9],
            gamma: 0.2,
            lambda: 0.25,
            regularised_blocks: RegularisedBlocks::Paper,
            num_projections: 20,
            p: 1.5,
            lambda_warmup: 1.5,
            block_weighting: BlockWeighting::Macs,
            block_scales: [
                ("features.3".to_string(), 2.5),
                ("features.5".to_string(), 0.0),
            ]
            .into(),
            directions: DirectionKind::Orthogonal,
            ascent_steps: 3,
            squared: true,
            label_smoothing: 0.05,
            augmentation: Some(Augmentation {
                crop_padding: 2,
                horizontal_flip: false,
            }),
            seed: 0,
            init_from: Some("/weights/it's.pth".into()),
            strip_prefix: Some("backbone.".into()),
        };
        let resnet = TrainConfig {
            stem: Some(StemKind::Imagenet),
            data: DataSource::FashionMnistSubset,
            augmentation: None,
            ..TrainConfig::default()
        };
        let swin = TrainConfig {
            architecture: Architecture::SwinT,
            pairing: FeaturePairing::MlpBranch,
            ..TrainConfig::default()
        };
        for config in [every_setting, resnet, swin, TrainConfig::default()] {
            assert_eq!(parsed(&config.train_flags()), config);
        }
    }
}
