//! Reports a person reads: the collapse table as Markdown, the JSON beside it, and plots.

mod plots;
pub mod sweep;

use std::fmt::Write as _;
use std::path::Path;

use crate::collapse::CollapseReport;
use crate::fsutil::write_atomic;

pub use plots::{PlotError, write_collapse_plots, write_sweep_plots};

/// The collapse as a Markdown document: settings, scores, and one row per removal step with the
/// chosen one marked.
pub fn collapse_markdown(report: &CollapseReport) -> String {
    let mut out = String::new();
    let s = &report.settings;
    let _ = writeln!(out, "# Collapse of `{}`\n", report.run.display());
    if let Some(note) = &report.note {
        let _ = writeln!(out, "**Note:** {note}\n");
    }
    let _ = writeln!(
        out,
        "Criterion `{:?}`, removable blocks `{:?}`, budget: {} accuracy drop ≤ {} points{}. Data: {}. No finetuning{}.\n",
        s.criterion,
        s.blocks,
        report.selection_split,
        s.max_drop,
        s.target_macs.map_or(String::new(), |t| format!(
            ", MACs ≤ {:.2} M",
            t as f64 / 1e6
        )),
        report.data,
        match s.recalibration_batches {
            0 => String::new(),
            n => format!(
                "; after each removal the batch-norm running statistics were re-estimated from {n} training batches (forward passes only, no weight changed)"
            ),
        }
    );
    let _ = writeln!(
        out,
        "Blocks are scored and the chosen step is decided on the **{}** split ({} images); the **test** split ({} images) is only reported. Latency: median of {} interleaved rounds (every network once per round), interquartile range in brackets; `≈` marks a step whose batch-64 latency is within the noise of the previous step's.\n",
        report.selection_split, report.split_images[0], report.split_images[1], s.latency.repeats
    );
    out.push_str(&collapse_table(report));
    if !report.scores.is_empty() {
        let _ = writeln!(
            out,
            "\nScores (lower = more removable), in removal order:\n"
        );
        let _ = writeln!(out, "| block | score |\n|---|---:|");
        for name in &report.order {
            let _ = writeln!(
                out,
                "| {name} | {:.6} |",
                report.scores.get(name).copied().unwrap_or(f64::NAN)
            );
        }
    }
    let chosen = &report.steps[report.chosen];
    let _ = writeln!(
        out,
        "\nChosen on {} accuracy: {} block(s) removed: {:.2} % {} accuracy ({:+.2} points), {:.2} % test accuracy ({:+.2} points), {:.2} M MACs (÷{:.2}), measured speed-up ×{:.2} at batch 1 and ×{:.2} at batch 64.",
        report.selection_split,
        chosen.blocks_removed,
        100.0 * chosen.selection.accuracy,
        report.selection_split,
        -chosen.selection.drop_points,
        100.0 * chosen.test.accuracy,
        -chosen.test.drop_points,
        chosen.macs as f64 / 1e6,
        chosen.macs_reduction,
        chosen.speedup_batch1,
        chosen.speedup_batch64
    );
    out
}

/// The step table (also what the terminal shows): accuracy on the selection split (which decides)
/// and on the test split (reported only), cost and measured latency.
pub fn collapse_table(report: &CollapseReport) -> String {
    let split = match report.selection_split.as_str() {
        "validation" => "val",
        other => other,
    };
    let mut out = format!(
        "| removed | block | {split} acc. (decides) | {split} drop | test acc. | test drop | params | MACs | MACs ÷ | latency b1 | ×b1 | latency b64 | ×b64 |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (index, step) in report.steps.iter().enumerate() {
        let marker = if index == report.chosen {
            " ◀ chosen"
        } else {
            ""
        };
        let noise = if step.batch64_within_noise_of_previous {
            "≈ "
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "| {} | {}{} | {:.2} % | {:.2} | {:.2} % | {:.2} | {:.2} M | {:.2} M | {:.2} | {:.2} ms [{:.2}–{:.2}] | {:.2} | {noise}{:.1} ms [{:.1}–{:.1}] | {:.2} |",
            step.blocks_removed,
            step.removed_block.as_deref().unwrap_or("(full)"),
            marker,
            100.0 * step.selection.accuracy,
            step.selection.drop_points,
            100.0 * step.test.accuracy,
            step.test.drop_points,
            step.parameters as f64 / 1e6,
            step.macs as f64 / 1e6,
            step.macs_reduction,
            step.latency_batch1.median_ms,
            step.latency_batch1.q1_ms,
            step.latency_batch1.q3_ms,
            step.speedup_batch1,
            step.latency_batch64.median_ms,
            step.latency_batch64.q1_ms,
            step.latency_batch64.q3_ms,
            step.speedup_batch64
        );
    }
    out
}

/// What can go wrong publishing a collapse.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The run record could not be read.
    #[error(transparent)]
    Run(#[from] crate::train::TrainError),
    /// The model could not be saved.
    #[error(transparent)]
    Model(#[from] crate::collapse::CollapseError),
    /// A plot could not be written.
    #[error(transparent)]
    Plot(#[from] PlotError),
    /// A file could not be written.
    #[error("{0}: {1}")]
    Io(std::path::PathBuf, std::io::Error),
}

/// Writes everything a collapse produced into `RUN/collapse/`: `report.json`, `report.md`, the
/// plots and `model/` (the chosen network with its manifest). The folder is built aside and
/// replaces the previous one only once complete. Returns its path.
pub fn publish_collapse(
    run: &crate::train::RunPaths,
    report: &CollapseReport,
    chosen_model: &crate::models::Network,
) -> Result<std::path::PathBuf, PublishError> {
    let record = run.read_record()?;
    let out = run.root.join("collapse");
    let manifest = crate::collapse::saved::Manifest::before_collapse(&record, &run.root);
    publish_collapse_to(&out, &manifest.for_chosen(report), report, chosen_model)?;
    Ok(out)
}

/// Writes a collapse's report, plots and chosen model (with `manifest`) into the folder `out`,
/// replacing it whole.
pub fn publish_collapse_to(
    out: &Path,
    manifest: &crate::collapse::saved::Manifest,
    report: &CollapseReport,
    chosen_model: &crate::models::Network,
) -> Result<(), PublishError> {
    let io = |e| PublishError::Io(out.to_path_buf(), e);
    let staging = crate::fsutil::staging_dir(out).map_err(io)?;
    crate::collapse::saved::save_model(&staging.join("model"), chosen_model, manifest)?;
    write_collapse_report(&staging, report).map_err(io)?;
    write_collapse_plots(&staging, report)?;
    crate::fsutil::swap_in_dir(&staging, out).map_err(io)
}

/// Writes `report.json` and `report.md` into `dir`, each atomically.
pub fn write_collapse_report(dir: &Path, report: &CollapseReport) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_vec_pretty(report).expect("report serialises");
    write_atomic(&dir.join("report.json"), &json)?;
    write_atomic(&dir.join("report.md"), collapse_markdown(report).as_bytes())
}
