//! Measured latency: warm-up runs, then the median of repeated forward passes.

use std::time::Instant;

use burn::tensor::Tensor;

use crate::device::default_device;
use crate::models::BlockNetwork;

/// How latency is measured.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LatencySettings {
    /// Untimed runs first.
    pub warmup: usize,
    /// Timed runs; the median is reported.
    pub repeats: usize,
}

/// Median milliseconds of a forward pass of `batch` images of `input_shape` (values read back, so
/// the work is done).
pub fn median_latency_ms<N: BlockNetwork>(
    model: &N,
    input_shape: [usize; 3],
    batch: usize,
    settings: &LatencySettings,
) -> f64 {
    let [c, h, w] = input_shape;
    let input = Tensor::<4>::zeros([batch, c, h, w], &default_device());
    let run = || {
        let logits = model.forward(input.clone());
        std::hint::black_box(logits.into_data());
    };
    for _ in 0..settings.warmup {
        run();
    }
    let mut times: Vec<f64> = (0..settings.repeats.max(1))
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}
