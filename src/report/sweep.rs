//! A sweep's report: every member's collapse read back from its folder, aggregated per λ (mean and
//! standard deviation over seeds), the Pareto frontier over all (λ, blocks removed), JSON,
//! Markdown and plots in `ROOT/sweep/`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::PublishError;
use super::plots::write_sweep_plots;
use crate::fsutil::{staging_dir, swap_in_dir, write_atomic};
use crate::train::RunPaths;

/// A mean and a standard deviation over seeds (sample deviation; 0 for one seed).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Stat {
    /// The mean.
    pub mean: f64,
    /// The sample standard deviation.
    pub std: f64,
}

impl Stat {
    fn of(values: &[f64]) -> Self {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let std = if values.len() > 1 {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        Self { mean, std }
    }
}

/// One step of one member's collapse.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct MemberStep {
    /// Blocks removed so far.
    pub blocks_removed: usize,
    /// MACs per image.
    pub macs: f64,
    /// Accuracy on the selection split (which decides).
    pub selection_accuracy: f64,
    /// Test accuracy (reported).
    pub test_accuracy: f64,
    /// Median latency at batch 64, ms.
    pub latency_batch64_ms: f64,
}

/// One member's collapse.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct MemberResult {
    /// Its λ.
    pub lambda: f64,
    /// Its seed.
    pub seed: u64,
    /// Its folder.
    pub folder: PathBuf,
    /// The full network, then each removal.
    pub steps: Vec<MemberStep>,
    /// The step the collapse chose (on the selection split).
    pub chosen: usize,
    /// The `lacoot train` command that trained it, but for `--seed` and `--out`.
    pub training: String,
    /// Training batches that re-estimated its batch-norm statistics after each removal (0: none).
    pub recalibration_batches: usize,
}

/// One step (blocks removed) of a λ, over its seeds.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StepSummary {
    /// Blocks removed.
    pub blocks_removed: usize,
    /// MACs per image.
    pub macs: Stat,
    /// Selection-split accuracy.
    pub selection_accuracy: Stat,
    /// Test accuracy.
    pub test_accuracy: Stat,
    /// Median latency at batch 64, ms.
    pub latency_batch64_ms: Stat,
}

/// One λ over its seeds.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LambdaSummary {
    /// The λ.
    pub lambda: f64,
    /// Its seeds that finished.
    pub seeds: Vec<u64>,
    /// Every step, averaged over seeds.
    pub steps: Vec<StepSummary>,
    /// Blocks the collapse removed within the budget.
    pub chosen_blocks: Stat,
    /// The chosen networks' selection-split accuracy.
    pub chosen_selection_accuracy: Stat,
    /// The chosen networks' test accuracy.
    pub chosen_test_accuracy: Stat,
    /// MACs of the full network over the chosen one's.
    pub chosen_macs_reduction: Stat,
    /// Batch-64 latency of the full network over the chosen one's.
    pub chosen_speedup_batch64: Stat,
    /// The training commands of its members, but for `--seed` and `--out` (one, unless members
    /// of the same λ were trained differently).
    pub training: Vec<String>,
}

/// A (λ, blocks removed) that no other beats on both MACs and selection accuracy.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FrontierPoint {
    /// Index of the λ in [`SweepReport::lambdas`].
    pub lambda_index: usize,
    /// The λ.
    pub lambda: f64,
    /// Blocks removed.
    pub blocks_removed: usize,
    /// Mean MACs.
    pub macs: f64,
    /// Mean selection-split accuracy (what the frontier is chosen on).
    pub selection_accuracy: f64,
    /// Mean test accuracy (reported).
    pub test_accuracy: f64,
}

/// Everything a sweep found, as written to `sweep/report.json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SweepReport {
    /// The sweep's folder.
    pub root: PathBuf,
    /// The split choices were made on (`validation`, or `train` when asked).
    pub selection_split: String,
    /// Every member with a collapse report.
    pub members: Vec<MemberResult>,
    /// Member folders without a collapse report yet.
    pub unfinished: Vec<PathBuf>,
    /// Per λ, ascending.
    pub lambdas: Vec<LambdaSummary>,
    /// The Pareto frontier over every (λ, blocks removed), by MACs ascending.
    pub frontier: Vec<FrontierPoint>,
}

fn malformed(path: &Path, what: &str) -> PublishError {
    PublishError::Io(
        path.to_path_buf(),
        std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string()),
    )
}

/// Reads one member's collapse report.
fn read_member(folder: &Path) -> Result<Option<(MemberResult, String)>, PublishError> {
    let path = folder.join("collapse").join("report.json");
    if !path.is_file() {
        return Ok(None);
    }
    let record = RunPaths::new(folder).read_record()?;
    let text = std::fs::read_to_string(&path).map_err(|e| PublishError::Io(path.clone(), e))?;
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| malformed(&path, &format!("not a collapse report: {e}")))?;
    let number = |value: &Value, what: &str| {
        value
            .as_f64()
            .ok_or_else(|| malformed(&path, &format!("no number {what}")))
    };
    let steps = json["steps"]
        .as_array()
        .ok_or_else(|| malformed(&path, "no steps"))?
        .iter()
        .map(|step| {
            Ok(MemberStep {
                blocks_removed: number(&step["blocks_removed"], "blocks_removed")? as usize,
                macs: number(&step["macs"], "macs")?,
                selection_accuracy: number(&step["selection"]["accuracy"], "selection accuracy")?,
                test_accuracy: number(&step["test"]["accuracy"], "test accuracy")?,
                latency_batch64_ms: number(&step["latency_batch64"]["median_ms"], "latency")?,
            })
        })
        .collect::<Result<Vec<_>, PublishError>>()?;
    let chosen = number(&json["chosen"], "chosen")? as usize;
    if steps.is_empty() || chosen >= steps.len() {
        return Err(malformed(&path, "the chosen step is not among the steps"));
    }
    let split = json["selection_split"]
        .as_str()
        .unwrap_or("validation")
        .to_string();
    Ok(Some((
        MemberResult {
            lambda: record.config.lambda,
            seed: record.config.seed,
            folder: folder.to_path_buf(),
            steps,
            chosen,
            training: record.config.train_command(),
            recalibration_batches: json["settings"]["recalibration_batches"]
                .as_u64()
                .unwrap_or(0) as usize,
        },
        split,
    )))
}

/// Reads every member folder (`lambda-X-seed-S`) under `root` and aggregates them.
pub fn sweep_report(root: &Path) -> Result<SweepReport, PublishError> {
    if !root.is_dir() {
        return Err(malformed(root, "no such folder (nothing swept there yet)"));
    }
    let entries = std::fs::read_dir(root).map_err(|e| PublishError::Io(root.to_path_buf(), e))?;
    let mut folders: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.is_dir()
                && path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("lambda-") && n.contains("-seed-"))
        })
        .collect();
    folders.sort();
    report_of_runs(root, &folders)
}

/// Aggregates the collapsed runs in `folders` (any run folders, grouped by their recorded λ) as
/// the sweep `root`.
pub fn report_of_runs(root: &Path, folders: &[PathBuf]) -> Result<SweepReport, PublishError> {
    let mut members = Vec::new();
    let mut unfinished = Vec::new();
    let mut splits = Vec::new();
    for folder in folders {
        match read_member(folder)? {
            Some((member, split)) => {
                members.push(member);
                splits.push(split);
            }
            None => unfinished.push(folder.clone()),
        }
    }
    if members.is_empty() {
        return Err(malformed(
            root,
            "no sweep member has a collapse report yet (folders lambda-X-seed-S/collapse/report.json)",
        ));
    }
    splits.dedup();
    if splits.len() > 1 {
        return Err(malformed(
            root,
            "the members chose on different splits; collapse them alike",
        ));
    }
    members.sort_by(|a, b| a.lambda.total_cmp(&b.lambda).then(a.seed.cmp(&b.seed)));
    let mut lambdas: Vec<LambdaSummary> = Vec::new();
    for group in members.chunk_by(|a, b| a.lambda == b.lambda) {
        lambdas.push(summarise(group));
    }
    let frontier = pareto_frontier(&lambdas);
    Ok(SweepReport {
        root: root.to_path_buf(),
        selection_split: splits.remove(0),
        members,
        unfinished,
        lambdas,
        frontier,
    })
}

fn summarise(group: &[MemberResult]) -> LambdaSummary {
    let steps = group.iter().map(|m| m.steps.len()).min().unwrap_or(0);
    let over =
        |f: &dyn Fn(&MemberResult) -> f64| Stat::of(&group.iter().map(f).collect::<Vec<_>>());
    LambdaSummary {
        lambda: group[0].lambda,
        seeds: group.iter().map(|m| m.seed).collect(),
        steps: (0..steps)
            .map(|k| StepSummary {
                blocks_removed: k,
                macs: over(&|m| m.steps[k].macs),
                selection_accuracy: over(&|m| m.steps[k].selection_accuracy),
                test_accuracy: over(&|m| m.steps[k].test_accuracy),
                latency_batch64_ms: over(&|m| m.steps[k].latency_batch64_ms),
            })
            .collect(),
        chosen_blocks: over(&|m| m.chosen as f64),
        chosen_selection_accuracy: over(&|m| m.steps[m.chosen].selection_accuracy),
        chosen_test_accuracy: over(&|m| m.steps[m.chosen].test_accuracy),
        chosen_macs_reduction: over(&|m| m.steps[0].macs / m.steps[m.chosen].macs),
        chosen_speedup_batch64: over(&|m| {
            m.steps[0].latency_batch64_ms / m.steps[m.chosen].latency_batch64_ms
        }),
        training: group
            .iter()
            .map(|m| m.training.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect(),
    }
}

/// The (λ, blocks removed) points that no other point beats on both mean MACs (fewer) and mean
/// selection accuracy (higher), by MACs ascending.
fn pareto_frontier(lambdas: &[LambdaSummary]) -> Vec<FrontierPoint> {
    let points: Vec<FrontierPoint> = lambdas
        .iter()
        .enumerate()
        .flat_map(|(lambda_index, summary)| {
            summary.steps.iter().map(move |step| FrontierPoint {
                lambda_index,
                lambda: summary.lambda,
                blocks_removed: step.blocks_removed,
                macs: step.macs.mean,
                selection_accuracy: step.selection_accuracy.mean,
                test_accuracy: step.test_accuracy.mean,
            })
        })
        .collect();
    let dominated = |p: &FrontierPoint| {
        points.iter().any(|q| {
            q.macs <= p.macs
                && q.selection_accuracy >= p.selection_accuracy
                && (q.macs < p.macs || q.selection_accuracy > p.selection_accuracy)
        })
    };
    let mut frontier: Vec<FrontierPoint> =
        points.iter().filter(|p| !dominated(p)).cloned().collect();
    frontier.sort_by(|a, b| a.macs.total_cmp(&b.macs));
    frontier
}

/// `report.md`: per λ, the full and chosen networks (mean ± std over seeds) and the test accuracy
/// after each removal; then the frontier.
pub fn sweep_markdown(report: &SweepReport) -> String {
    let split = &report.selection_split;
    let pct = |s: &Stat| format!("{:.2} ± {:.2}", 100.0 * s.mean, 100.0 * s.std);
    let mut out = format!("# Sweep `{}`\n\n", report.root.display());
    let _ = writeln!(
        out,
        "Every accuracy names its split. Choices (the chosen step of each collapse, the frontier) are made on the **{split}** split; **test** accuracy is reported beside them. Mean ± standard deviation over seeds.\n"
    );
    let recalibrated: Vec<String> = report
        .members
        .iter()
        .filter(|m| m.recalibration_batches > 0)
        .map(|m| {
            format!(
                "`{}` ({})",
                m.folder.file_name().unwrap_or_default().to_string_lossy(),
                m.recalibration_batches
            )
        })
        .collect();
    if !recalibrated.is_empty() {
        let _ = writeln!(
            out,
            "Batch-norm running statistics re-estimated after each removal from training batches (`--recalibrate-bn`, no weight changed) in {} of {} members: {}.\n",
            recalibrated.len(),
            report.members.len(),
            recalibrated.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "| λ | seeds | full {split} acc. | full test acc. | blocks removed within budget | chosen {split} acc. | chosen test acc. | MACs ÷ | measured ×b64 |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for summary in &report.lambdas {
        let seeds: Vec<String> = summary.seeds.iter().map(u64::to_string).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} % | {} % | {:.1} ± {:.1} | {} % | {} % | {:.2} ± {:.2} | {:.2} ± {:.2} |",
            summary.lambda,
            seeds.join(", "),
            pct(&summary.steps[0].selection_accuracy),
            pct(&summary.steps[0].test_accuracy),
            summary.chosen_blocks.mean,
            summary.chosen_blocks.std,
            pct(&summary.chosen_selection_accuracy),
            pct(&summary.chosen_test_accuracy),
            summary.chosen_macs_reduction.mean,
            summary.chosen_macs_reduction.std,
            summary.chosen_speedup_batch64.mean,
            summary.chosen_speedup_batch64.std,
        );
    }
    let _ = writeln!(
        out,
        "\n## Test accuracy after each removal (mean ± std over seeds)\n"
    );
    let longest = report
        .lambdas
        .iter()
        .map(|l| l.steps.len())
        .max()
        .unwrap_or(0);
    let header: Vec<String> = (0..longest).map(|k| format!("k = {k}")).collect();
    let _ = writeln!(out, "| λ | {} |", header.join(" | "));
    let _ = writeln!(out, "|---:|{}", "---:|".repeat(longest));
    for summary in &report.lambdas {
        let cells: Vec<String> = (0..longest)
            .map(|k| {
                summary
                    .steps
                    .get(k)
                    .map_or(String::new(), |s| pct(&s.test_accuracy))
            })
            .collect();
        let _ = writeln!(out, "| {} | {} |", summary.lambda, cells.join(" | "));
    }
    let _ = writeln!(
        out,
        "\n## Pareto frontier over (λ, blocks removed), chosen on {split} accuracy\n\n| λ | blocks removed | MACs | {split} acc. | test acc. |\n|---:|---:|---:|---:|---:|"
    );
    for point in &report.frontier {
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} M | {:.2} % | {:.2} % |",
            point.lambda,
            point.blocks_removed,
            point.macs / 1e6,
            100.0 * point.selection_accuracy,
            100.0 * point.test_accuracy
        );
    }
    let _ = writeln!(
        out,
        "\n## Training\n\nEach member ran the command of its λ with its `--seed` and its own `--out`.\n"
    );
    for summary in &report.lambdas {
        for command in &summary.training {
            let _ = writeln!(out, "- λ = {}: `{command}`", summary.lambda);
        }
    }
    if !report.unfinished.is_empty() {
        let names: Vec<String> = report
            .unfinished
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let _ = writeln!(
            out,
            "\nNot finished yet (no collapse report): {}.",
            names.join(", ")
        );
    }
    out
}

/// Writes `ROOT/sweep/` (report.json, report.md, the plots), replacing it whole; returns its path.
pub fn publish_sweep(report: &SweepReport) -> Result<PathBuf, PublishError> {
    let out = report.root.join("sweep");
    publish_sweep_to(report, &out)?;
    Ok(out)
}

/// Writes the folder `out` (report.json, report.md, the plots), replacing it whole.
pub fn publish_sweep_to(report: &SweepReport, out: &Path) -> Result<(), PublishError> {
    let out = out.to_path_buf();
    let io = |e| PublishError::Io(out.clone(), e);
    let staging = staging_dir(&out).map_err(io)?;
    std::fs::create_dir_all(&staging).map_err(io)?;
    let json = serde_json::to_vec_pretty(report).expect("report serialises");
    write_atomic(&staging.join("report.json"), &json).map_err(io)?;
    write_atomic(
        &staging.join("report.md"),
        sweep_markdown(report).as_bytes(),
    )
    .map_err(io)?;
    write_sweep_plots(&staging, report)?;
    swap_in_dir(&staging, &out).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(lambda: f64, points: &[(f64, f64)]) -> LambdaSummary {
        let stat = |mean| Stat { mean, std: 0.0 };
        LambdaSummary {
            lambda,
            seeds: vec![0],
            steps: points
                .iter()
                .enumerate()
                .map(|(k, &(macs, accuracy))| StepSummary {
                    blocks_removed: k,
                    macs: stat(macs),
                    selection_accuracy: stat(accuracy),
                    test_accuracy: stat(accuracy),
                    latency_batch64_ms: stat(macs),
                })
                .collect(),
            chosen_blocks: Stat::default(),
            chosen_selection_accuracy: Stat::default(),
            chosen_test_accuracy: Stat::default(),
            chosen_macs_reduction: Stat::default(),
            chosen_speedup_batch64: Stat::default(),
            training: Vec::new(),
        }
    }

    #[test]
    fn the_frontier_keeps_exactly_the_undominated_points() {
        let lambdas = [
            summary(0.0, &[(100.0, 0.90), (80.0, 0.50), (60.0, 0.20)]),
            summary(1.0, &[(100.0, 0.88), (80.0, 0.87), (60.0, 0.85)]),
        ];
        let frontier: Vec<(f64, usize)> = pareto_frontier(&lambdas)
            .iter()
            .map(|p| (p.lambda, p.blocks_removed))
            .collect();
        assert_eq!(frontier, [(1.0, 2), (1.0, 1), (0.0, 0)]);
    }

    #[test]
    fn statistics_use_the_sample_deviation() {
        let stat = Stat::of(&[1.0, 3.0]);
        assert_eq!(stat.mean, 2.0);
        assert!((stat.std - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(Stat::of(&[5.0]).std, 0.0);
    }
}
