//! `lacoot inspect`: the blocks of a network, their shapes and costs.

use std::io::Write;

use anyhow::Result;
use clap::Args;
use lacoot::device::default_device;
use lacoot::models::{BlockNetwork, ModelSpec};

use crate::architecture::ArchitectureArgs;
use serde_json::json;

/// A network's blocks, shapes, collapsibility, parameters and MACs.
///
/// Lists each block: input and output shape, whether identity can replace it (collapsible),
/// parameters and MACs, and the totals, optionally with blocks removed.
///
/// MACs follow the paper's convention: multiply-accumulates of convolutions and linear layers, per
/// image. A second total adds normalisation (one per output element) and pooling (one per window
/// element). For the paper's CIFAR ResNet-18 (3x32x32, 10 classes): 140.19 M, and 64.69 M with
/// --remove layer1.1,layer2.1,layer3.1,layer4.1.
///
/// Swin-T's MACs also count the two attention products (torchvision's 4.49 GFLOPs at 224x224).
///
/// Examples:
///   lacoot inspect --model resnet18 --remove layer3.1,layer4.1
///   lacoot inspect --model mobilenetv2 --input 224 --classes 1000 --unit depthwise
///   lacoot inspect --model swin-t --input 224 --classes 1000
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct InspectArgs {
    #[command(flatten)]
    architecture: ArchitectureArgs,
    /// Channels of the input images.
    #[arg(long, default_value_t = 3)]
    in_channels: usize,
    /// Height and width of the input images.
    #[arg(long, default_value_t = 32)]
    input: usize,
    /// Number of classes.
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// Blocks to replace by identity, comma-separated.
    #[arg(long, value_delimiter = ',')]
    remove: Vec<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Builds the network and prints its blocks and totals.
pub fn run(args: &InspectArgs) -> Result<()> {
    let arch = &args.architecture;
    let spec = ModelSpec {
        stem: arch.stem,
        width: arch.width.unwrap_or(arch.model.default_width()),
        unit: arch.unit,
        pairing: arch.pairing,
        removed_blocks: args.remove.clone(),
        ..ModelSpec::new(arch.model, args.in_channels, args.input, args.classes)
    };
    let network = spec.build(&default_device())?;
    let mut out = std::io::stdout().lock();
    let blocks = network.blocks();
    let total = network.total_cost();
    let full = blocks
        .iter()
        .fold(network.stem_and_head(), |sum, b| sum + b.cost());
    if args.json {
        writeln!(
            out,
            "{}",
            json!({
                "model": spec,
                "macs_convention": "multiply-accumulates of convolutions, linear layers and attention products, per image",
                "blocks": blocks,
                "stem_and_head": network.stem_and_head(),
                "total": total,
                "total_before_removal": full,
            })
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<18} {:>14} {:>14} {:>12} {:>12} {:>13}",
        "block", "input", "output", "collapsible", "params", "MACs"
    )?;
    for b in &blocks {
        let shape = |s: [usize; 3]| format!("{}x{}x{}", s[0], s[1], s[2]);
        let status = match (b.removed, b.collapsible) {
            (true, _) => "removed",
            (false, true) => "yes",
            (false, false) => "no",
        };
        writeln!(
            out,
            "{:<18} {:>14} {:>14} {:>12} {:>12} {:>13}",
            b.name,
            shape(b.input_shape),
            shape(b.output_shape),
            status,
            b.parameters,
            b.macs
        )?;
    }
    let mega = |v: u64| v as f64 / 1e6;
    writeln!(
        out,
        "\ntotal: {} parameters, {:.2} M MACs (conv + linear + attention, per image); {:.2} M including normalisation and pooling",
        total.parameters,
        mega(total.macs),
        mega(total.macs + total.norm_pool_macs)
    )?;
    if !args.remove.is_empty() {
        writeln!(
            out,
            "without removal: {} parameters, {:.2} M MACs; removal saves {:.1} % of the MACs",
            full.parameters,
            mega(full.macs),
            100.0 * (1.0 - total.macs as f64 / full.macs as f64)
        )?;
    }
    Ok(())
}
