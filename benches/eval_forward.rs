//! Inference latency of the paper's CIFAR ResNet-18 (width 64, 3x32x32, eval-mode BatchNorm) at
//! batch 1 and 64, measured the way `lacoot collapse` measures it (`interleaved_latencies`: warm-up,
//! then the median of timed runs with the logits read back). `bench/torch_eval_forward.py` times the
//! same network in PyTorch under `eval()` and `inference_mode`.
//!
//! `cargo bench --bench eval_forward` prints one JSON line.

/// The allocator and setting the `lacoot` binary uses (see `lacoot::memory`).
#[global_allocator]
static ALLOCATOR: lacoot::memory::Allocator = lacoot::memory::Allocator;

use lacoot::collapse::{LatencySettings, interleaved_latencies};
use lacoot::device::default_device;
use lacoot::models::{Architecture, ModelSpec};

fn main() {
    lacoot::memory::keep_freed_memory();
    let device = lacoot::device::select_from_env().expect("LACOOT_DEVICE names a device");
    let spec = ModelSpec::new(Architecture::Resnet18, 3, 32, 10);
    let model = spec
        .build(&default_device())
        .expect("the CIFAR ResNet-18 builds");
    let settings = LatencySettings {
        warmup: 3,
        repeats: 30,
    };
    let threads = rayon::current_num_threads();
    let [batch1, batch64] = [1, 64].map(|batch| {
        interleaved_latencies(std::slice::from_ref(&model), [3, 32, 32], batch, &settings)[0]
    });
    println!(
        "{{\"backend\":\"lacoot\",\"device\":{device:?},\"threads\":{threads},\"batch1_ms\":{:.2},\"batch64_ms\":{:.1}}}",
        batch1.median_ms, batch64.median_ms
    );
}
