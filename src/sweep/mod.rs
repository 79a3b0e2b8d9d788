//! λ sweeps: one training run per (λ, seed), each collapsed, in one folder that a re-run
//! completes (finished members are skipped) and that several processes or machines can share
//! (`shard`).
//! [`crate::report::sweep`] aggregates the members' collapse reports.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::collapse::{CollapseError, CollapseSettings, collapse};
use crate::report::{PublishError, publish_collapse};
use crate::train::{RunPaths, RunStart, Silent, TrainConfig, TrainError, epochs_done, train};

/// What can go wrong in a sweep.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The sweep's settings are unusable.
    #[error("{0}")]
    Settings(String),
    /// A member's folder holds a run with other settings.
    #[error(
        "{folder}: holds a run with other settings ({difference}); use another --out, or delete that folder"
    )]
    Mismatch {
        /// The member's folder.
        folder: PathBuf,
        /// What differs.
        difference: String,
    },
    /// A member's training failed.
    #[error("{0}")]
    Train(#[from] TrainError),
    /// A member's collapse failed.
    #[error("{0}")]
    Collapse(#[from] CollapseError),
    /// A member's report could not be written.
    #[error("{0}")]
    Publish(#[from] PublishError),
    /// Some members failed; the others finished.
    #[error("{} of {} members failed: {}", .failures.len(), .total, .failures.join("; "))]
    Members {
        /// One line per failed member.
        failures: Vec<String>,
        /// Members attempted.
        total: usize,
    },
}

/// Everything a sweep varies and keeps.
#[derive(Clone, Debug)]
pub struct SweepPlan {
    /// The training settings every member shares (λ and seed are replaced per member).
    pub base: TrainConfig,
    /// The regulariser weights.
    pub lambdas: Vec<f64>,
    /// The seeds.
    pub seeds: Vec<u64>,
    /// How each member is collapsed.
    pub collapse: CollapseSettings,
}

/// One (λ, seed) of a sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    /// The regulariser weight.
    pub lambda: f64,
    /// The seed.
    pub seed: u64,
    /// Its run folder, `ROOT/lambda-X-seed-S`.
    pub folder: PathBuf,
}

impl Member {
    /// The member's training settings.
    pub fn config(&self, base: &TrainConfig) -> TrainConfig {
        TrainConfig {
            lambda: self.lambda,
            seed: self.seed,
            ..base.clone()
        }
    }
}

/// The folder name of a member: `lambda-0.2-seed-0`.
pub fn member_folder_name(lambda: f64, seed: u64) -> String {
    format!("lambda-{lambda}-seed-{seed}")
}

/// Every `n`-th member starting at the `i`-th (1-based `i` of `n`), for spreading a sweep over
/// machines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// Which share, 1 to `count`.
    pub index: usize,
    /// How many shares.
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// Parses `i/N`.
    fn from_str(text: &str) -> Result<Self, String> {
        let (index, count) = text
            .split_once('/')
            .ok_or_else(|| format!("'{text}' is not a shard such as 1/3"))?;
        let parse = |part: &str| {
            part.trim()
                .parse::<usize>()
                .map_err(|_| format!("'{text}' is not a shard such as 1/3"))
        };
        let (index, count) = (parse(index)?, parse(count)?);
        if count == 0 || index == 0 || index > count {
            return Err(format!("shard '{text}' must be i/N with 1 <= i <= N"));
        }
        Ok(Self { index, count })
    }
}

impl SweepPlan {
    /// Checks the plan: at least one λ and seed, no duplicates, λ finite and non-negative, and the
    /// shared settings and collapse settings valid.
    pub fn validate(&self) -> Result<(), SweepError> {
        if self.lambdas.is_empty() || self.seeds.is_empty() {
            return Err(SweepError::Settings(
                "a sweep needs at least one --lambdas value and one --seeds value".into(),
            ));
        }
        if let Some(bad) = self.lambdas.iter().find(|l| !(l.is_finite() && **l >= 0.0)) {
            return Err(SweepError::Settings(format!(
                "--lambdas values must be finite and >= 0, not {bad}"
            )));
        }
        let mut names: Vec<String> = self
            .members(Path::new(""))
            .into_iter()
            .map(|m| member_folder_name(m.lambda, m.seed))
            .collect();
        let count = names.len();
        names.sort();
        names.dedup();
        if names.len() != count {
            return Err(SweepError::Settings(
                "--lambdas and --seeds must not repeat a value".into(),
            ));
        }
        self.base.validate().map_err(SweepError::Settings)?;
        self.collapse
            .validate()
            .map_err(|e| SweepError::Settings(e.to_string()))
    }

    /// Every member, λ-major, under `root`.
    pub fn members(&self, root: &Path) -> Vec<Member> {
        self.lambdas
            .iter()
            .flat_map(|&lambda| {
                self.seeds.iter().map(move |&seed| Member {
                    lambda,
                    seed,
                    folder: root.join(member_folder_name(lambda, seed)),
                })
            })
            .collect()
    }
}

/// What happened to a member.
#[derive(Clone, Debug, PartialEq)]
pub enum MemberEvent {
    /// Its training or collapse starts.
    Started,
    /// It was already trained and collapsed.
    Skipped,
    /// It finished (training and collapse) in this many seconds.
    Finished(f64),
    /// It failed.
    Failed(String),
}

/// Hears about members as a sweep runs them.
pub trait SweepObserver: Sync {
    /// `member` (the `index`-th of `total` this process runs) changed state.
    fn member(&self, index: usize, total: usize, member: &Member, event: &MemberEvent);
}

/// Trains (or finishes training) and collapses one member; skips what is already done. Returns
/// whether anything ran.
pub fn run_member(plan: &SweepPlan, member: &Member) -> Result<bool, SweepError> {
    let config = member.config(&plan.base);
    let run = RunPaths::new(&member.folder);
    let report = member.folder.join("collapse").join("report.json");
    let start = if run.config().is_file() {
        let recorded = run.read_record()?.config;
        let comparable = TrainConfig {
            epochs: config.epochs,
            ..recorded.clone()
        };
        if comparable != config {
            let recorded_json = serde_json::to_value(&recorded).expect("settings serialise");
            let wanted_json = serde_json::to_value(&config).expect("settings serialise");
            let difference = wanted_json
                .as_object()
                .expect("an object")
                .iter()
                .filter(|(key, value)| recorded_json.get(*key) != Some(value))
                .map(|(key, value)| {
                    format!(
                        "{key}: {} recorded, {value} asked",
                        recorded_json.get(key).cloned().unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Err(SweepError::Mismatch {
                folder: member.folder.clone(),
                difference,
            });
        }
        let trained = epochs_done(&run) >= config.epochs && recorded.epochs == config.epochs;
        if trained && collapsed_with(&report, &plan.collapse) {
            return Ok(false);
        }
        // Trained already, but not collapsed, or collapsed with other settings: collapse again.
        (!trained).then_some(RunStart::Resume)
    } else {
        Some(RunStart::New)
    };
    if let Some(start) = start {
        train(&config, &run, start, &Silent)?;
    }
    let (collapse_report, model) = collapse(&run, &plan.collapse, &|_| {})?;
    publish_collapse(&run, &collapse_report, &model)?;
    Ok(true)
}

/// Whether the collapse report at `path` exists and was made with `settings`.
fn collapsed_with(path: &Path, settings: &CollapseSettings) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let recorded = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|report| report.get("settings").cloned());
    recorded == Some(serde_json::to_value(settings).expect("settings serialise"))
}

/// Runs the members of `plan` under `root` (those of `shard` only, if given), one after the other.
/// A failed member does not stop the others; the sweep then ends with [`SweepError::Members`].
///
/// Members never run side by side in one process: burn's random number generator is
/// process-global, so concurrent trainings would draw from each other's stream (initialisation,
/// dropout, stochastic depth) and lose their seeds' reproducibility. Parallel sweeps run one
/// process per shard (the CLI's `--jobs`).
pub fn run_sweep(
    plan: &SweepPlan,
    root: &Path,
    shard: Option<Shard>,
    observer: &dyn SweepObserver,
) -> Result<(), SweepError> {
    plan.validate()?;
    let members: Vec<Member> = plan
        .members(root)
        .into_iter()
        .enumerate()
        .filter(|(position, _)| shard.is_none_or(|s| position % s.count == s.index - 1))
        .map(|(_, member)| member)
        .collect();
    let total = members.len();
    let mut failures = Vec::new();
    for (index, member) in members.iter().enumerate() {
        observer.member(index, total, member, &MemberEvent::Started);
        let started = Instant::now();
        let event = match run_member(plan, member) {
            Ok(true) => MemberEvent::Finished(started.elapsed().as_secs_f64()),
            Ok(false) => MemberEvent::Skipped,
            Err(error) => {
                let line = format!("{}: {error}", member.folder.display());
                failures.push(line.clone());
                MemberEvent::Failed(line)
            }
        };
        observer.member(index, total, member, &event);
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(SweepError::Members { failures, total })
    }
}
