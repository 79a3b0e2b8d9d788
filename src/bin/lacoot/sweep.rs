//! `lacoot sweep`: train and collapse one run per (λ, seed), then report them together.

use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Result, bail};
use clap::Args;
use clap::parser::ValueSource;
use lacoot::collapse::{CollapseSettings, Criterion, LatencySettings, ScoreSettings, ScoreSplit};
use lacoot::report::sweep::{publish_sweep, sweep_markdown, sweep_report};
use lacoot::sweep::{Member, MemberEvent, Shard, SweepObserver, SweepPlan, run_sweep};
use lacoot::train::RegularisedBlocks;

use crate::train::TrainSettingsArgs;

/// Sweep λ (and seeds): train, collapse and compare one run per (λ, seed).
///
/// Each member is a normal run folder, OUT/lambda-X-seed-S/ (trained with every training flag
/// given here, its λ and seed replaced), collapsed into its collapse/ folder. Re-running the same
/// command skips finished members and resumes unfinished ones. OUT/sweep/ then receives
/// report.json, report.md (per λ: full accuracy, accuracy after each removal, blocks removable
/// within the budget, MACs and measured speed-up of the chosen network, mean ± std over seeds) and
/// plots of test accuracy against MACs and against measured latency, one curve per λ, with the
/// Pareto frontier marked. Every choice (each collapse's chosen step, the frontier) is made on the
/// validation split; test accuracy is reported beside it.
///
/// --jobs N trains N members at once (N processes, each a shard with its share of the cores);
/// --shard i/N runs every N-th member only, so machines sharing OUT can split a sweep;
/// --report-only re-assembles the report from whatever members have finished.
///
/// Examples:
///   lacoot sweep --lambdas 0,0.2,1,5 --seeds 0,1,2 --width 16 --epochs 12 --out runs/sweep
///   lacoot sweep --lambdas 0,1,5 --shard 2/3 --width 16 --epochs 12 --out /shared/sweep
///   lacoot sweep --report-only --out /shared/sweep
#[derive(Debug, Args)]
#[command(verbatim_doc_comment, allow_negative_numbers = true)]
pub struct SweepArgs {
    /// The sweep folder (one run folder per member, and sweep/).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// The regulariser weights to train (comma-separated; 0 is the plain baseline).
    #[arg(long, value_delimiter = ',', required_unless_present = "report_only")]
    lambdas: Vec<f64>,

    /// The seeds to train each λ with (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    seeds: Vec<u64>,

    /// Members trained at once, each in its own process (shard i/N) with cores / N threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    jobs: u32,

    /// Set by --jobs on the processes it starts: run the shard, leave the report to the parent.
    #[arg(long, hide = true)]
    member_only: bool,

    /// Run only every N-th member, starting at the i-th (i/N, e.g. 2/3).
    #[arg(long, value_name = "i/N")]
    shard: Option<Shard>,

    /// Only (re)write OUT/sweep/ from the members that have finished.
    #[arg(long, conflicts_with_all = ["lambdas", "shard"])]
    report_only: bool,

    /// Collapse: how blocks are ranked.
    #[arg(long, value_enum, default_value = "mswd")]
    criterion: Criterion,

    /// Collapse: the split blocks are scored and the budget judged on (val, or train for runs
    /// without a validation split).
    #[arg(long, value_enum, default_value = "val")]
    split: ScoreSplit,

    /// Collapse: largest acceptable accuracy drop on --split, in percentage points.
    #[arg(long, default_value_t = 1.0)]
    max_drop: f64,

    /// Collapse: which blocks may be removed (every shape-preserving one, or the paper's).
    #[arg(long, value_enum, default_value = "all")]
    collapse_blocks: RegularisedBlocks,

    /// Collapse: directions per distance when scoring.
    #[arg(long, default_value_t = 500)]
    score_projections: usize,

    /// Collapse: timed rounds per latency measurement.
    #[arg(long, default_value_t = 25)]
    latency_repeats: usize,

    /// Collapse: training batches that re-estimate the batch-norm statistics after each removal
    /// (no weight changes; 0 keeps the trained statistics). See `lacoot collapse --help`.
    #[arg(long, default_value_t = 0, value_name = "BATCHES")]
    recalibrate_bn: usize,

    #[command(flatten)]
    settings: TrainSettingsArgs,
}

/// One line per member event on standard error, with an estimate of the time left.
struct ProgressLines {
    state: Mutex<(usize, Vec<f64>)>,
}

impl SweepObserver for ProgressLines {
    fn member(&self, index: usize, total: usize, member: &Member, event: &MemberEvent) {
        let mut state = self.state.lock().expect("no panics while held");
        let name = member.folder.display();
        let line = match event {
            MemberEvent::Started => format!("[{}/{total}] {name}: running", index + 1),
            MemberEvent::Skipped => {
                state.0 += 1;
                format!(
                    "[{}/{total}] {name}: skipped (already trained and collapsed)",
                    index + 1
                )
            }
            MemberEvent::Finished(seconds) => {
                state.0 += 1;
                state.1.push(*seconds);
                format!("[{}/{total}] {name}: done in {seconds:.0} s", index + 1)
            }
            MemberEvent::Failed(error) => {
                state.0 += 1;
                format!("[{}/{total}] FAILED {error}", index + 1)
            }
        };
        let (finished, durations) = &*state;
        let eta = if durations.is_empty() || *finished == total {
            String::new()
        } else {
            let mean = durations.iter().sum::<f64>() / durations.len() as f64;
            let left = (total - finished) as f64 * mean;
            format!(
                " — {finished}/{total} finished, about {:.0} min left",
                left / 60.0
            )
        };
        // One write per line: the shards of --jobs share standard error, and a line written in
        // one piece (under the pipe's atomic size) never interleaves with another process's.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr().lock(),
            format!("{line}{eta}\n").as_bytes(),
        );
    }
}

/// Runs the sweep as `--jobs` processes of this program, shard `i/N` each with cores / N threads
/// (burn's random generator is process-global, so members never share a process).
fn run_in_processes(args: &SweepArgs) -> Result<()> {
    if args.shard.is_some() {
        bail!("--jobs starts its own shards; with --shard, give each shard --jobs 1");
    }
    let jobs = args.jobs as usize;
    let program = std::env::current_exe()?;
    let mut inherited: Vec<std::ffi::OsString> = Vec::new();
    let mut given = std::env::args_os().skip(1);
    while let Some(arg) = given.next() {
        if arg == "--jobs" {
            given.next();
        } else if !arg.to_string_lossy().starts_with("--jobs=") {
            inherited.push(arg);
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / jobs).max(1).to_string();
    let children = (1..=jobs)
        .map(|index| {
            std::process::Command::new(&program)
                .args(&inherited)
                .args(["--shard", &format!("{index}/{jobs}"), "--member-only"])
                .env("RAYON_NUM_THREADS", &threads)
                .spawn()
                .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", program.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut failed = Vec::new();
    for (index, mut child) in children.into_iter().enumerate() {
        let status = child.wait()?;
        if !status.success() {
            failed.push(format!("{}/{jobs}", index + 1));
        }
    }
    if !failed.is_empty() {
        bail!(
            "shard(s) {} failed (their errors are above); the report covers the members that finished: lacoot sweep --report-only --out {}",
            failed.join(", "),
            args.out.display()
        );
    }
    Ok(())
}

/// Runs the sweep (unless --report-only), then writes and prints its report.
pub fn run(args: &SweepArgs, matches: &clap::ArgMatches) -> Result<()> {
    for (id, instead) in [("lambda", "--lambdas"), ("seed", "--seeds")] {
        if matches.value_source(id) == Some(ValueSource::CommandLine) {
            bail!("--{id} does not apply to a sweep: give the values with {instead}");
        }
    }
    if !args.report_only {
        let plan = SweepPlan {
            base: args.settings.config()?,
            lambdas: args.lambdas.clone(),
            seeds: args.seeds.clone(),
            collapse: CollapseSettings {
                criterion: args.criterion,
                score_split: args.split,
                blocks: args.collapse_blocks,
                max_drop: args.max_drop,
                target_macs: None,
                score: ScoreSettings {
                    num_projections: args.score_projections,
                    seed: 0,
                    batch_size: 128,
                },
                latency: LatencySettings {
                    warmup: 3,
                    repeats: args.latency_repeats,
                },
                recalibration_batches: args.recalibrate_bn,
            },
        };
        if args.jobs > 1 {
            plan.validate()?;
            run_in_processes(args)?;
        } else {
            let observer = ProgressLines {
                state: Mutex::new((0, Vec::new())),
            };
            run_sweep(&plan, &args.out, args.shard, &observer)?;
        }
        if args.member_only {
            return Ok(());
        }
    }
    let report = sweep_report(&args.out)?;
    let folder = publish_sweep(&report)?;
    println!("{}", sweep_markdown(&report));
    println!(
        "report: {0}/report.md and {0}/report.json; plots: {0}/test_accuracy_vs_macs.svg|png, {0}/test_accuracy_vs_latency.svg|png",
        folder.display()
    );
    Ok(())
}
