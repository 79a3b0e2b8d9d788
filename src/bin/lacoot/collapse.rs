//! `lacoot collapse`: remove blocks without finetuning and report what each removal costs and saves.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lacoot::collapse::{
    CollapseSettings, Criterion, LatencySettings, ScoreSettings, ScoreSplit, collapse,
};
use lacoot::report::{collapse_table, publish_collapse};
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
    #[arg(long, value_name = "DIR")]
    run: PathBuf,

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

    /// Seed of the scoring directions and of the random criterion.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Images per batch for scoring and evaluation.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,

    /// Timed rounds per latency measurement; each round runs every network once (the median and
    /// quartiles are reported).
    #[arg(long, default_value_t = 25)]
    latency_repeats: usize,
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
    let run = RunPaths::new(&args.run);
    if !run.config().is_file() {
        bail!("{}: not a lacoot run (no config.json)", args.run.display());
    }
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
    };
    let (report, model) = with_spinner(|progress| collapse(&run, &settings, progress))?;
    let out = publish_collapse(&run, &report, &model)?;
    println!("{}", collapse_table(&report));
    println!(
        "report: {0}/report.md and {0}/report.json; plots: {0}/accuracy_vs_blocks.svg|png, {0}/accuracy_vs_macs.svg|png\nmodel: {0}/model (lacoot eval --model {0}/model)",
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
