//! `lacoot export`: write a (collapsed) model as ONNX or as torchvision weights.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use lacoot::export::onnx::{BatchAxis, INPUT_NAME, OPSET, OUTPUT_NAME};
use lacoot::export::torchvision::{LOADER_FILE, write_torchvision};
use lacoot::export::{Checkpoint, ExportSource, reference_path, write_onnx};
use lacoot::models::BlockNetwork;

/// Export a model for deployment runtimes (ONNX) or PyTorch (torchvision weights).
///
/// ONNX (opset 17): one graph with the removed blocks absent, eval-mode batch norms folded into
/// the convolutions, input `images` [batch, C, H, W] and output `logits` [batch, classes]. The
/// input is normalised as in training (pixels scaled to [0, 1], then (x - mean) / std per
/// channel); mean and std are in the model's metadata (`lacoot.normalization`). Beside the model,
/// NAME.reference.safetensors holds a batch of inputs and lacoot's logits for it, to check a
/// runtime against.
///
/// torchvision: a folder with model.safetensors (torchvision's state_dict names, removed blocks
/// left out), removed_blocks.json, load_model.py (at most ten lines of PyTorch that build the
/// torchvision model, replace the removed blocks by nn.Identity() and load the weights),
/// reference.safetensors and a README.
///
/// Examples:
///   lacoot export --model runs/fm/collapse/model --format onnx --dynamic-batch
///   lacoot export --run runs/fm --format torchvision --out fm-full
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A model saved by lacoot collapse (the folder holding manifest.json).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "run",
        conflicts_with = "run"
    )]
    model: Option<PathBuf>,

    /// A training run folder: its full network is exported.
    #[arg(long, value_name = "DIR")]
    run: Option<PathBuf>,

    /// Which checkpoint of --run: best (validation accuracy) or last.
    #[arg(long, value_enum, default_value = "best", requires = "run")]
    checkpoint: CheckpointArg,

    /// What to write.
    #[arg(long, value_enum)]
    format: Format,

    /// Where: the .onnx file, or the torchvision folder. Default: beside the source, e.g.
    /// RUN/collapse/model.onnx or RUN/collapse/model-torchvision/ (RUN/full-best.onnx for --run).
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,

    /// ONNX: a symbolic batch axis, so that any batch size runs.
    #[arg(long, conflicts_with = "batch")]
    dynamic_batch: bool,

    /// ONNX: the fixed batch size of the graph (without --dynamic-batch).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65536))]
    batch: u32,
}

/// The export formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// An ONNX model (opset 17), for ONNX Runtime, TensorRT, OpenVINO, …
    Onnx,
    /// torchvision-named safetensors weights and the PyTorch lines that load them.
    Torchvision,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum CheckpointArg {
    Best,
    Last,
}

/// Writes the export and says what was written.
pub fn run(args: &ExportArgs) -> Result<()> {
    let (source, default_stem) = match (&args.model, &args.run) {
        (Some(dir), _) => (ExportSource::from_saved_model(dir)?, dir.clone()),
        (None, Some(run)) => {
            let (checkpoint, label) = match args.checkpoint {
                CheckpointArg::Best => (Checkpoint::Best, "full-best"),
                CheckpointArg::Last => (Checkpoint::Last, "full-last"),
            };
            (ExportSource::from_run(run, checkpoint)?, run.join(label))
        }
        (None, None) => unreachable!("clap requires --model or --run"),
    };
    let removed: Vec<String> = source.network.removed_blocks().into_iter().collect();
    let removed = if removed.is_empty() {
        "no blocks removed".to_string()
    } else {
        format!("removed {}", removed.join(", "))
    };
    match args.format {
        Format::Onnx => {
            let path = args
                .out
                .clone()
                .unwrap_or_else(|| default_stem.with_extension("onnx"));
            let batch = if args.dynamic_batch {
                BatchAxis::Dynamic
            } else {
                BatchAxis::Fixed(args.batch as usize)
            };
            let bytes = write_onnx(&source, &path, batch)
                .with_context(|| format!("exporting {}", source.origin))?;
            let [c, h, w] = source.network.input_shape();
            let batch = match batch {
                BatchAxis::Dynamic => "batch".to_string(),
                BatchAxis::Fixed(n) => n.to_string(),
            };
            println!(
                "wrote {} ({:.1} MB, ONNX opset {OPSET}): {} ({removed}); input '{INPUT_NAME}' [{batch}, {c}, {h}, {w}] normalised with mean {:?} std {:?}, output '{OUTPUT_NAME}' [{batch}, {}]",
                path.display(),
                bytes as f64 / 1e6,
                source.origin,
                source.normalization.mean,
                source.normalization.std,
                source.spec.num_classes,
            );
            println!(
                "reference batch and lacoot's logits: {}",
                reference_path(&path).display()
            );
        }
        Format::Torchvision => {
            let dir = args.out.clone().unwrap_or_else(|| {
                let mut name = default_stem.file_name().unwrap_or_default().to_os_string();
                name.push("-torchvision");
                default_stem.with_file_name(name)
            });
            write_torchvision(&source, &dir)
                .with_context(|| format!("exporting {}", source.origin))?;
            println!(
                "wrote {}: torchvision weights of {} ({removed}); load them with {}",
                dir.display(),
                source.origin,
                dir.join(LOADER_FILE).display()
            );
        }
    }
    Ok(())
}
