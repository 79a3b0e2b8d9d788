//! `lacoot collapse`: remove blocks without finetuning and report what each removal costs and saves.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lacoot::collapse::{
    CollapseInput, CollapseSettings, Criterion, LatencySettings, ScoreSettings, ScoreSplit,
    WeightsImport, collapse, collapse_network,
};
use lacoot::data::{Augmentation, DataSource, Normalization};
use lacoot::report::{collapse_table, publish_collapse, publish_collapse_to};

use crate::architecture::ArchitectureArgs;
use lacoot::train::{RegularisedBlocks, RunPaths};

/// Remove blocks without finetuning; report accuracy, MACs and measured latency per removal.
///
/// Scores every collapsible block of a trained run on its validation split, replaces the lowest
/// scoring blocks by identity one at a time (no finetuning), and after each removal measures
/// validation and test accuracy and loss, parameters, MACs and real latency (batch 1 and 64; all
/// networks timed in interleaved rounds, median and interquartile range).
///
/// Which split decides: the chosen network is the deepest removal whose VALIDATION accuracy drop
/// stays within --max-drop points and, if given, reaches --target-macs. Test accuracy is measured
/// and reported beside it, never used for a choice. A run trained with --validation-fraction 0 has
/// no validation split: pass --split train to score and choose on the training split instead.
///
/// Writes into RUN/collapse/: report.json (every number), report.md (the table), plots of accuracy
/// against blocks removed and against MACs (SVG and PNG) and model/
/// (safetensors weights of the kept blocks + manifest.json), which `lacoot eval --model` reloads.
///
/// Example: lacoot collapse --run runs/fm --criterion mswd --max-drop 0.5
#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct CollapseArgs {
    /// The run folder written by lacoot train (its best checkpoint is collapsed).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "weights",
        conflicts_with = "weights"
    )]
    run: Option<PathBuf>,

    /// Collapse a network trained elsewhere, with no lacoot training run: a PyTorch checkpoint
    /// with torchvision's state_dict names (.pth/.pt from torch.save, or .safetensors). Say which
    /// network it is with --model/--stem/--width/--unit; the data with --data/--data-dir (the
    /// validation split is carved from its training data as lacoot train would, with
    /// --validation-fraction and --seed); the report goes to --out. Such a network was not trained
    /// with the LaCoOT regulariser: the scores are training-free, and the report says so.
    #[arg(long, value_name = "FILE", requires_all = ["data", "out"])]
    weights: Option<PathBuf>,

    #[command(flatten)]
    architecture: ArchitectureArgs,

    /// With --weights: a wrapper's prefix to strip from the file's keys (e.g. backbone.).
    #[arg(long, requires = "weights")]
    strip_prefix: Option<String>,

    /// With --weights: the data set (fashion-mnist, fashion-mnist-subset, mnist, cifar10,
    /// cifar100, image-folder).
    #[arg(long, requires = "weights")]
    data: Option<String>,

    /// With --weights: the data set's folder.
    #[arg(long, value_name = "DIR", requires = "data")]
    data_dir: Option<PathBuf>,

    /// With --weights: fraction of each training class held out as the validation split.
    #[arg(long, default_value_t = 0.1, requires = "weights")]
    validation_fraction: f64,

    /// With --weights: the per-channel mean the network was trained with (comma-separated, for
    /// pixels in [0, 1]); computed from the training split when absent.
    #[arg(long, value_delimiter = ',', requires_all = ["weights", "std"], allow_negative_numbers = true)]
    mean: Option<Vec<f32>>,

    /// With --weights: the per-channel standard deviation (comma-separated).
    #[arg(long, value_delimiter = ',', requires_all = ["weights", "mean"])]
    std: Option<Vec<f32>>,

    /// With --weights and --recalibrate-bn: the random-crop padding the network was trained with
    /// (0: no crop), so that the recalibration batches are augmented as its training batches were.
    #[arg(long, default_value_t = 4, requires = "weights")]
    crop_padding: usize,

    /// With --weights and --recalibrate-bn: the network was trained without horizontal flips.
    #[arg(long, requires = "weights")]
    no_flip: bool,

    /// With --weights: the folder for the report, plots and collapsed model.
    #[arg(long, value_name = "DIR", requires = "weights")]
    out: Option<PathBuf>,

    /// How blocks are ranked: mswd (the paper), swd, block-influence, angular, random, loss-drop.
    #[arg(long, value_enum, default_value = "mswd")]
    criterion: Criterion,

    /// The split blocks are scored on and the budget is judged on: val (held out from training) or
    /// train (only for runs without a validation split). Never test.
    #[arg(long, value_enum, default_value = "val")]
    split: ScoreSplit,

    /// Largest acceptable accuracy drop on the --split split, in percentage points (>= 0).
    #[arg(long, default_value_t = 0.5)]
    max_drop: f64,

    /// MACs the chosen network must not exceed (e.g. 70M, 1.5G, 64690000).
    #[arg(long, value_parser = parse_macs)]
    target_macs: Option<u64>,

    /// Removable blocks: every shape-preserving block, or the paper's (all but the first of each
    /// stage).
    #[arg(long, value_enum, default_value = "all")]
    blocks: RegularisedBlocks,

    /// Directions per distance when scoring (more than in training, so the ranking is stable).
    #[arg(long, default_value_t = 500)]
    num_projections: usize,

    /// Seed of the scoring directions and of the random criterion (with --weights, also of the
    /// validation split).
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Images per batch for scoring and evaluation.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,

    /// Timed rounds per latency measurement; each round runs every network once (the median and
    /// quartiles are reported).
    #[arg(long, default_value_t = 25)]
    latency_repeats: usize,

    /// After each removal, re-estimate every batch-norm layer's running statistics from this many
    /// training batches, augmented as in training (forward passes only: no weight changes, no
    /// finetuning), averaged over the second half of the passes. The layers behind a removed
    /// block see shifted activations; after 200 batches the trained statistics weigh 3e-5. 0 (the
    /// default) keeps the trained statistics, as the paper does.
    #[arg(long, default_value_t = 0, value_name = "BATCHES")]
    recalibrate_bn: usize,
}

/// The import a `--weights` collapse asks for.
fn weights_import(args: &CollapseArgs, weights: &Path) -> Result<WeightsImport> {
    let data = args
        .data
        .as_deref()
        .expect("clap requires --data with --weights");
    let normalization = match (&args.mean, &args.std) {
        (Some(mean), Some(std)) => {
            if mean.len() != std.len() {
                bail!(
                    "--mean has {} values but --std has {}",
                    mean.len(),
                    std.len()
                );
            }
            if let Some(bad) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
                bail!("--std values must be positive, not {bad}");
            }
            if let Some(bad) = mean.iter().find(|m| !m.is_finite()) {
                bail!("--mean values must be finite, not {bad}");
            }
            Some(Normalization {
                mean: mean.clone(),
                std: std.clone(),
            })
        }
        _ => None,
    };
    Ok(WeightsImport {
        weights: weights.to_path_buf(),
        strip_prefix: args.strip_prefix.clone(),
        model: args.architecture.spec(),
        data: DataSource::from_name(data, args.data_dir.clone()).map_err(anyhow::Error::msg)?,
        validation_fraction: args.validation_fraction,
        seed: args.seed,
        normalization,
        augmentation: Augmentation::from_flags(args.crop_padding, !args.no_flip),
    })
}

/// Parses `70M`, `1.5G`, `64690000`.
fn parse_macs(text: &str) -> Result<u64, String> {
    let (number, scale) = match text.trim().to_ascii_uppercase() {
        t if t.ends_with('G') => (t[..t.len() - 1].to_string(), 1e9),
        t if t.ends_with('M') => (t[..t.len() - 1].to_string(), 1e6),
        t if t.ends_with('K') => (t[..t.len() - 1].to_string(), 1e3),
        t => (t, 1.0),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a MAC count such as 70M or 1.5G"))?;
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("'{text}' must be positive"));
    }
    Ok((value * scale).round() as u64)
}

/// Runs the collapse, writes the report and the model, prints the table.
pub fn run(args: &CollapseArgs) -> Result<()> {
    let settings = CollapseSettings {
        criterion: args.criterion,
        score_split: args.split,
        blocks: args.blocks,
        max_drop: args.max_drop,
        target_macs: args.target_macs,
        score: ScoreSettings {
            num_projections: args.num_projections,
            seed: args.seed,
            batch_size: args.batch_size,
        },
        latency: LatencySettings {
            warmup: 3,
            repeats: args.latency_repeats,
        },
        recalibration_batches: args.recalibrate_bn,
    };
    let (report, out) = match (&args.run, &args.weights) {
        (Some(run_dir), _) => {
            let run = RunPaths::new(run_dir);
            if !run.config().is_file() {
                bail!("{}: not a lacoot run (no config.json)", run_dir.display());
            }
            let (report, model) = with_spinner(|progress| collapse(&run, &settings, progress))?;
            let out = publish_collapse(&run, &report, &model)?;
            (report, out)
        }
        (None, Some(weights)) => {
            let import = weights_import(args, weights)?;
            let out = args
                .out
                .clone()
                .expect("clap requires --out with --weights");
            let input = with_spinner(|progress| {
                progress("loading the data and the weights");
                CollapseInput::from_weights(&import, settings.score_split)
            })?;
            let (report, model) =
                with_spinner(|progress| collapse_network(&input, &settings, progress))?;
            publish_collapse_to(&out, &input.manifest.for_chosen(&report), &report, &model)?;
            (report, out)
        }
        (None, None) => unreachable!("clap requires --run or --weights"),
    };
    if let Some(note) = &report.note {
        println!("note: {note}");
    }
    println!("{}", collapse_table(&report));
    println!(
        "report: {0}/report.md and {0}/report.json; plots: {0}/accuracy_vs_blocks.svg|png, {0}/accuracy_vs_macs.svg|png\nmodel: {0}/model (lacoot eval --model {0}/model; lacoot export --model {0}/model --format onnx|torchvision)",
        out.display()
    );
    Ok(())
}

/// Runs `work` with a spinner on standard error that shows its latest progress message.
pub fn with_spinner<T>(work: impl FnOnce(&dyn Fn(&str)) -> T) -> T {
    let spinner = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} [{elapsed}] {msg}").expect("valid template"),
    );
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let result = work(&|message| spinner.set_message(message.to_string()));
    spinner.finish_and_clear();
    result
}

#[cfg(test)]
mod tests {
    use super::parse_macs;

    #[test]
    fn mac_counts_parse_with_units() {
        assert_eq!(parse_macs("70M"), Ok(70_000_000));
        assert_eq!(parse_macs("1.5g"), Ok(1_500_000_000));
        assert_eq!(parse_macs("64690000"), Ok(64_690_000));
        assert!(parse_macs("lots").is_err());
        assert!(parse_macs("-3M").is_err());
    }
}
