//! `lacoot demo`: the main job on the embedded data, showing what the regulariser buys.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use lacoot::collapse::{
    CollapseReport, CollapseSettings, Criterion, LatencySettings, ScoreSettings, ScoreSplit,
    collapse,
};
use lacoot::data::DataSource;
use lacoot::report::publish_collapse;
use lacoot::report::sweep::{publish_sweep_to, report_of_runs};
use lacoot::train::{RegularisedBlocks, RunPaths, RunStart, TrainConfig, train};

use crate::collapse::with_spinner;
use crate::train::EpochBars;

/// Start here: train with and without the regulariser on embedded data, collapse both, compare.
///
/// Trains a small ResNet-18 twice on the Fashion-MNIST subset embedded in lacoot (no download, no
/// set-up): once plainly (lambda 0) and once with the LaCoOT regulariser (lambda 1 on the paper's
/// blocks, each block's direction refined by 2 ascent steps); collapse both with the
/// max-sliced Wasserstein criterion, without finetuning, and print the two collapse tables side by
/// side. About 4 to 11 minutes on 2 cores at the defaults, depending on the processor (timings in
/// BENCHMARKS.md).
///
/// Writes OUT/baseline and OUT/lacoot (runs, each with collapse/report.md, plots and model/), and
/// OUT/comparison (both on one plot: test accuracy against MACs and against measured latency).
#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct DemoArgs {
    /// Where the two runs go (replaced only if an earlier demo made them).
    #[arg(long, value_name = "DIR", default_value = "runs/demo")]
    out: PathBuf,
    /// Channels of the first stage (the paper's 64 is too slow for a demo on CPU).
    #[arg(long, default_value_t = 16)]
    width: usize,
    /// Epochs of each training run.
    #[arg(long, default_value_t = 15)]
    epochs: usize,
    /// Weight of the regulariser in the LaCoOT run.
    #[arg(long = "lambda", default_value_t = 1.0)]
    lambda: f64,
    /// Blocks the LaCoOT run regularises: the paper's (ResNet-18: the four layerS.1) or all
    /// shape-preserving blocks.
    #[arg(long, value_enum, default_value = "paper")]
    blocks: RegularisedBlocks,
    /// Gradient-ascent steps refining each block's max-sliced direction in the LaCoOT run (0: the
    /// paper's max over random directions; 2 removed the four layerS.1 within a validation point
    /// of the baseline, see RESULTS.md).
    #[arg(long, value_name = "STEPS", default_value_t = 2)]
    ascent_steps: usize,
    /// Accuracy drop (points) allowed when choosing how many blocks to remove.
    #[arg(long, default_value_t = 1.0)]
    max_drop: f64,
    /// Re-estimate the batch-norm statistics of every shallower network of both runs from this
    /// many training batches (no weight changes; see `lacoot collapse --help`). 0 keeps the
    /// trained statistics, as the paper does; 200 shows how much of the baseline's loss is its
    /// stale statistics rather than the missing blocks.
    #[arg(long, default_value_t = 0, value_name = "BATCHES")]
    recalibrate_bn: usize,
    /// Seed of both runs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Marks a run folder as the demo's own, so that a later demo may replace it.
const DEMO_MARKER: &str = ".lacoot-demo";

/// Trains, collapses and compares. Every setting is checked before any folder is touched, and only
/// folders an earlier demo created (marked with `.lacoot-demo`) are ever replaced.
pub fn run(args: &DemoArgs) -> Result<()> {
    let members = [("baseline", 0.0), ("lacoot", args.lambda)];
    let configs: Vec<TrainConfig> = members
        .iter()
        .map(|&(_, lambda)| TrainConfig {
            width: Some(args.width),
            data: DataSource::FashionMnistSubset,
            epochs: args.epochs,
            lambda,
            regularised_blocks: args.blocks,
            ascent_steps: if lambda > 0.0 { args.ascent_steps } else { 0 },
            seed: args.seed,
            ..TrainConfig::default()
        })
        .collect();
    for config in &configs {
        config.validate().map_err(anyhow::Error::msg)?;
    }
    let settings = CollapseSettings {
        criterion: Criterion::Mswd,
        score_split: ScoreSplit::Val,
        blocks: RegularisedBlocks::All,
        max_drop: args.max_drop,
        target_macs: None,
        score: ScoreSettings {
            num_projections: 500,
            seed: args.seed,
            batch_size: 128,
        },
        latency: LatencySettings {
            warmup: 3,
            repeats: 25,
        },
        recalibration_batches: args.recalibrate_bn,
    };
    settings.validate()?;
    for (name, _) in members {
        let root = args.out.join(name);
        if root.exists() && !root.join(DEMO_MARKER).is_file() {
            bail!(
                "{} exists and was not made by lacoot demo; choose another --out (the demo never replaces other folders)",
                root.display()
            );
        }
    }
    let mut reports = Vec::new();
    for ((name, lambda), config) in members.into_iter().zip(&configs) {
        let run = RunPaths::new(args.out.join(name));
        std::fs::create_dir_all(&run.root)?;
        std::fs::write(run.root.join(DEMO_MARKER), "made by lacoot demo\n")?;
        eprintln!("== training {name} (lambda {lambda}) ==");
        train(config, &run, RunStart::Replace, &EpochBars::default())?;
        eprintln!("== collapsing {name} ==");
        let (report, model) = with_spinner(|progress| collapse(&run, &settings, progress))?;
        let out = publish_collapse(&run, &report, &model)?;
        reports.push((name, report, out));
    }
    println!(
        "\nCollapse without finetuning, blocks removed in MSWD order (test accuracy on {}; the chosen step is decided on validation accuracy)",
        reports[0].1.data
    );
    print_side_by_side(&reports[0].1, &reports[1].1, args.lambda);
    print_trade_off(&reports[0].1, &reports[1].1);
    let folders: Vec<PathBuf> = ["baseline", "lacoot"]
        .iter()
        .map(|name| args.out.join(name))
        .collect();
    let comparison = args.out.join("comparison");
    publish_sweep_to(&report_of_runs(&args.out, &folders)?, &comparison)?;
    for (name, report, out) in &reports {
        let chosen = &report.steps[report.chosen];
        println!(
            "{name:>8}: within {} validation points, {} block(s) removed: {:.2} % validation, {:.2} % test accuracy, MACs ÷{:.2}, measured ×{:.2} faster at batch 64\n          report {}/report.md, plots accuracy_vs_blocks.svg|png and accuracy_vs_macs.svg|png beside it",
            args.max_drop,
            chosen.blocks_removed,
            100.0 * chosen.selection.accuracy,
            100.0 * chosen.test.accuracy,
            chosen.macs_reduction,
            chosen.speedup_batch64,
            out.display()
        );
    }
    println!(
        "baseline and LaCoOT on one plot: {0}/test_accuracy_vs_macs.svg|png and {0}/test_accuracy_vs_latency.svg|png (table: {0}/report.md)",
        comparison.display()
    );
    Ok(())
}

/// What the regulariser bought: the LaCoOT network chosen on validation accuracy against the
/// baseline's full depth, on test accuracy.
fn print_trade_off(baseline: &CollapseReport, lacoot: &CollapseReport) {
    let full = &baseline.steps[0];
    let chosen = &lacoot.steps[lacoot.chosen];
    println!(
        "LaCoOT: {} block(s) removed, {:.2} % test accuracy ({:+.2} points against the baseline's full {:.2} %), MACs ÷{:.2}, measured ×{:.2} faster at batch 64\n",
        chosen.blocks_removed,
        100.0 * chosen.test.accuracy,
        100.0 * (chosen.test.accuracy - full.test.accuracy),
        100.0 * full.test.accuracy,
        chosen.macs_reduction,
        chosen.speedup_batch64
    );
}

fn print_side_by_side(baseline: &CollapseReport, lacoot: &CollapseReport, lambda: f64) {
    let column = |report: &CollapseReport, k: usize| -> String {
        report.steps.get(k).map_or_else(String::new, |s| {
            let marker = if k == report.chosen { "*" } else { " " };
            format!(
                "{:<9} {:>6.2} % {:>7.2} M ×{:<4.2}{}",
                s.removed_block.as_deref().unwrap_or("(full)"),
                100.0 * s.test.accuracy,
                s.macs as f64 / 1e6,
                s.speedup_batch64,
                marker
            )
        })
    };
    println!(
        "{:>3}  {:<36}  {:<36}",
        "k",
        "baseline (lambda 0)",
        format!("LaCoOT (lambda {lambda})")
    );
    println!(
        "{:>3}  {:<36}  {:<36}",
        "", "block      test acc    MACs  ×b64", "block      test acc    MACs  ×b64"
    );
    let rows = baseline.steps.len().max(lacoot.steps.len());
    for k in 0..rows {
        println!(
            "{k:>3}  {:<36}  {:<36}",
            column(baseline, k),
            column(lacoot, k)
        );
    }
    println!("(* = chosen within the accuracy budget; ×b64 = measured speed-up at batch 64)\n");
}
