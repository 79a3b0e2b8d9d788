//! The `lacoot` command line: a thin shell over the library that parses flags, calls it and prints.

mod architecture;
mod collapse;
mod demo;
mod devices;
mod distance;
mod export;
mod inspect;
mod sweep;
mod train;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// mimalloc, set to keep freed memory (see [`lacoot::memory`]).
#[global_allocator]
static ALLOCATOR: lacoot::memory::Allocator = lacoot::memory::Allocator;

/// lacoot makes deep networks shallower with optimal transport (LaCoOT, Quétu et al., ICCV 2025).
///
/// It measures how far each block of a network moves its input with the max-sliced Wasserstein
/// distance, trains networks that keep that distance small, and removes the blocks that barely move
/// their input.
#[derive(Debug, Parser)]
#[command(name = "lacoot", version, propagate_version = true)]
struct Cli {
    /// Log more: -v for progress details, -vv for debugging. RUST_LOG overrides this.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    /// Where to compute: cpu (burn's flex backend), wgpu or wgpu:N (a Vulkan, Metal or DX12
    /// adapter; needs a build with `--features wgpu`), cuda or cuda:N (`--features cuda`), or
    /// auto (the first GPU found, else the CPU). `lacoot devices` lists what this machine has.
    /// A run records its device; resume, eval and collapse may use another.
    #[arg(long, global = true, default_value = "cpu", value_name = "DEVICE")]
    device: lacoot::device::DeviceChoice,

    #[command(subcommand)]
    command: Command,
}

/// The subcommands; each one's help is its arguments' documentation.
#[derive(Debug, Subcommand)]
enum Command {
    Demo(demo::DemoArgs),
    Devices(devices::DevicesArgs),
    Distance(distance::DistanceArgs),
    Inspect(inspect::InspectArgs),
    Train(train::TrainArgs),
    Eval(train::EvalArgs),
    Collapse(collapse::CollapseArgs),
    Export(export::ExportArgs),
    Sweep(sweep::SweepArgs),
}

fn main() -> std::process::ExitCode {
    lacoot::memory::keep_freed_memory();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    init_logging(cli.verbose);
    let outcome = match cli.command {
        Command::Devices(args) => devices::run(&args),
        command => lacoot::device::select(cli.device)
            .map_err(anyhow::Error::from)
            .and_then(|(_, label)| {
                tracing::info!(device = %label, "computing on");
                run(command, &matches)
            }),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) if is_closed_pipe(&error) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs a subcommand on the selected device.
fn run(command: Command, matches: &clap::ArgMatches) -> anyhow::Result<()> {
    match command {
        Command::Devices(args) => devices::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Distance(args) => distance::run(&args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Train(args) => train::run_train(
            &args,
            matches
                .subcommand_matches("train")
                .expect("the train subcommand"),
        ),
        Command::Eval(args) => train::run_eval(&args),
        Command::Collapse(args) => collapse::run(&args),
        Command::Export(args) => export::run(&args),
        Command::Sweep(args) => sweep::run(
            &args,
            matches
                .subcommand_matches("sweep")
                .expect("the sweep subcommand"),
        ),
    }
}

/// Whether the error is a write to a closed pipe (`lacoot inspect | head -1`), which ends quietly as
/// in other Unix tools.
fn is_closed_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Logs go to standard error so that standard output stays clean for results (and `--json`).
fn init_logging(verbose: u8) {
    // wgpu reports every graphics API it probes and does not find (EGL, a missing Vulkan driver)
    // as an error: normal while listing adapters, so shown only from -v on.
    let default_level = match verbose {
        0 => "warn,wgpu_hal=off",
        1 => "info",
        _ => "debug",
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
