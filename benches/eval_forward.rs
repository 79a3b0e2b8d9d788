//! Inference latency of the paper's CIFAR ResNet-18 (width 64, 3x32x32, eval-mode BatchNorm), full
//! and with the paper's four `layerS.1` blocks removed, at batch 1 and 64, measured the way `lacoot collapse` measures it (`interleaved_latencies`: warm-up,
//! then the median of timed runs with the logits read back). `bench/torch_eval_forward.py` times the
//! same network in PyTorch under `eval()` and `inference_mode`.
//!
//! `cargo bench --bench eval_forward` prints one JSON line; `LACOOT_DEVICE=wgpu` (built with
//! `--features wgpu`) measures on a GPU.

/// The allocator and setting the `lacoot` binary uses (see `lacoot::memory`).
#[global_allocator]
static ALLOCATOR: lacoot::memory::Allocator = lacoot::memory::Allocator;

use lacoot::collapse::{LatencySettings, interleaved_latencies};
use lacoot::device::default_device;
use lacoot::models::{Architecture, BlockNetwork, ModelSpec};

fn main() {
    lacoot::memory::keep_freed_memory();
    let device = lacoot::device::select_from_env().expect("LACOOT_DEVICE names a device");
    let spec = ModelSpec::new(Architecture::Resnet18, 3, 32, 10);
    let full = spec
        .build(&default_device())
        .expect("the CIFAR ResNet-18 builds");
    // The paper's collapsed network: the four `layerS.1` blocks replaced by identity.
    let mut collapsed = full.clone();
    collapsed
        .remove_blocks(&["layer1.1", "layer2.1", "layer3.1", "layer4.1"].map(String::from))
        .expect("the paper's blocks exist");
    let settings = LatencySettings {
        warmup: 3,
        repeats: 30,
    };
    let threads = rayon::current_num_threads();
    let models = [full, collapsed];
    let [batch1, batch64] =
        [1, 64].map(|batch| interleaved_latencies(&models, [3, 32, 32], batch, &settings));
    println!(
        "{{\"backend\":\"lacoot\",\"device\":{device:?},\"threads\":{threads},\"batch1_ms\":{:.2},\"batch64_ms\":{:.1},\"collapsed_batch1_ms\":{:.2},\"collapsed_batch64_ms\":{:.1}}}",
        batch1[0].median_ms, batch64[0].median_ms, batch1[1].median_ms, batch64[1].median_ms
    );
}
