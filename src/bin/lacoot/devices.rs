//! `lacoot devices`: what this build can compute on.

use anyhow::Result;
use clap::Args;

/// List the devices lacoot can compute on: the CPU, and each GPU adapter this build reaches
/// (`--features wgpu` for Vulkan, Metal or DX12; `--features cuda` for NVIDIA). Pass the first
/// column to `--device`.
#[derive(Debug, Args)]
pub struct DevicesArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &DevicesArgs) -> Result<()> {
    let devices = lacoot::device::list_devices();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&devices)?);
        return Ok(());
    }
    println!("{:<8}  {:<40}  {:>10}  kind", "device", "name", "memory");
    for device in &devices {
        let memory = device.memory_bytes.map_or_else(
            || "-".to_string(),
            |bytes| format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64),
        );
        println!(
            "{:<8}  {:<40}  {:>10}  {}",
            device.spec, device.name, memory, device.kind
        );
    }
    if !lacoot::device::gpu_backends_built() {
        println!(
            "(this lacoot was built without a GPU backend: `cargo build --release --features wgpu` adds wgpu adapters)"
        );
    } else if devices.len() == 1 {
        println!(
            "(no GPU adapter found: install a Vulkan driver, e.g. Debian's mesa-vulkan-drivers, or check the GPU's driver)"
        );
    }
    Ok(())
}
