//! `lacoot train` and `lacoot eval`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lacoot::data::{Augmentation, DataSource, load_splits};
use lacoot::train::{
    EpochMetrics, OptimizerKind, RegularisedBlocks, RunPaths, TrainConfig, TrainObserver, evaluate,
    load_run_model, train,
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
/// checkpoints/best, written atomically after every epoch. --resume continues an interrupted run with
/// the settings recorded in its config.json.
///
/// Examples:
///   lacoot train --model resnet18 --width 16 --data fashion-mnist --epochs 10 --out runs/fm
///   lacoot train --model mobilenetv2-cifar --unit depthwise --width 16 --epochs 5 --out runs/mb
///   lacoot train --model swin-t --width 24 --pairing mlp-branch --epochs 5 --out runs/swin
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct TrainArgs {
    /// The run folder.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// Continue the run in --out from its last checkpoint, with its recorded settings.
    #[arg(long)]
    resume: bool,

    #[command(flatten)]
    architecture: ArchitectureArgs,

    /// The data set: fashion-mnist (Debian's copy when installed, else the embedded subset),
    /// fashion-mnist-subset, mnist, cifar10, cifar100 or image-folder.
    #[arg(long, default_value = "fashion-mnist")]
    data: String,

    /// The data set's folder (for image-folder: the folder holding train/ and test/).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Fraction of each training class held out for validation.
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

impl TrainArgs {
    fn config(&self) -> Result<TrainConfig> {
        let data =
            DataSource::from_name(&self.data, self.data_dir.clone()).map_err(anyhow::Error::msg)?;
        let augmentation = (self.crop_padding > 0 || !self.no_flip).then_some(Augmentation {
            crop_padding: self.crop_padding,
            horizontal_flip: !self.no_flip,
        });
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
            augmentation,
            seed: self.seed,
            init_from: self.init_from.clone(),
            strip_prefix: self.strip_prefix.clone(),
        })
    }
}

/// Trains, showing one progress bar per epoch and one summary line after it.
pub fn run_train(args: &TrainArgs) -> Result<()> {
    let run = RunPaths::new(&args.out);
    let config = if args.resume {
        run.read_record()
            .with_context(|| format!("cannot resume {}", args.out.display()))?
            .config
    } else {
        if run.config().exists() {
            bail!(
                "{} already holds a run; choose another --out or add --resume",
                args.out.display()
            );
        }
        args.config()?
    };
    let summary = train(&config, &run, args.resume, &EpochBars::default())?;
    eprintln!(
        "best validation accuracy {:.2} % at epoch {}; run in {}",
        100.0 * summary.state.best_validation_accuracy,
        summary.state.best_epoch,
        args.out.display()
    );
    Ok(())
}

/// Progress bars for the training loop.
#[derive(Default)]
pub struct EpochBars {
    bar: std::cell::RefCell<Option<ProgressBar>>,
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
            "epoch {:>3}  lr {:.4}  loss {:.4} (ce {:.4} + reg {:.4})  train {:.2} %  val {:.2} %  {:.0} img/s",
            m.epoch,
            m.learning_rate,
            m.train_loss,
            m.cross_entropy,
            m.regulariser,
            100.0 * m.train_accuracy,
            100.0 * m.validation_accuracy,
            m.images_per_second
        );
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
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Images per evaluation batch.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,

    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Evaluates a checkpoint or a saved model and prints accuracy and loss.
pub fn run_eval(args: &EvalArgs) -> Result<()> {
    let (source_name, model, normalization, data, validation_fraction, seed) =
        match (&args.run, &args.model) {
            (Some(run_dir), _) => {
                let run = RunPaths::new(run_dir);
                let checkpoint = match args.checkpoint.as_str() {
                    "last" => run.last(),
                    _ => run.best(),
                };
                let (record, model) = load_run_model(&run, &checkpoint)?;
                let name = format!("{} ({} checkpoint)", run_dir.display(), args.checkpoint);
                (
                    name,
                    model,
                    record.normalization,
                    record.config.data,
                    record.config.validation_fraction,
                    record.config.seed,
                )
            }
            (None, Some(dir)) => {
                let (manifest, model) = lacoot::collapse::saved::load_model(dir)?;
                (
                    dir.display().to_string(),
                    model,
                    manifest.normalization,
                    manifest.data,
                    manifest.validation_fraction,
                    manifest.seed,
                )
            }
            (None, None) => bail!("give --run or --model"),
        };
    let source = match &args.data {
        Some(name) => {
            DataSource::from_name(name, args.data_dir.clone()).map_err(anyhow::Error::msg)?
        }
        None => data,
    };
    let splits = load_splits(&source, validation_fraction, seed)?;
    let set = match args.split.as_str() {
        "val" => splits.validation,
        _ => splits.test,
    };
    let evaluation = evaluate(&model, &Arc::new(set), &normalization, args.batch_size);
    if args.json {
        println!(
            "{}",
            json!({
                "model": source_name, "split": args.split, "data": splits.description,
                "accuracy": evaluation.accuracy, "loss": evaluation.loss, "images": evaluation.images,
            })
        );
    } else {
        println!(
            "{source_name} on {} {}: accuracy {:.2} %, loss {:.4}, {} images",
            splits.description,
            args.split,
            100.0 * evaluation.accuracy,
            evaluation.loss,
            evaluation.images
        );
    }
    Ok(())
}
