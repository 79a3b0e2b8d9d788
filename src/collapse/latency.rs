//! Measured latency: every network timed in the same rounds, so that a change in the machine's
//! load hits all of them alike, and reported as a median with its interquartile range.

use std::time::Instant;

use burn::tensor::Tensor;

use crate::device::default_device;
use crate::models::BlockNetwork;

/// How latency is measured.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LatencySettings {
    /// Untimed runs of each network first.
    pub warmup: usize,
    /// Timed rounds; each round runs every network once, in turn.
    pub repeats: usize,
}

/// The spread of one network's timed runs, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Latency {
    /// The median.
    pub median_ms: f64,
    /// The first quartile.
    pub q1_ms: f64,
    /// The third quartile.
    pub q3_ms: f64,
}

impl Latency {
    /// Whether the two interquartile ranges overlap: the difference is within the noise.
    pub fn overlaps(&self, other: &Latency) -> bool {
        self.q1_ms <= other.q3_ms && other.q1_ms <= self.q3_ms
    }

    fn from_times(mut times: Vec<f64>) -> Self {
        times.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let position = q * (times.len() - 1) as f64;
            let (low, high) = (position.floor() as usize, position.ceil() as usize);
            times[low] + (times[high] - times[low]) * (position - low as f64)
        };
        Self {
            median_ms: at(0.5),
            q1_ms: at(0.25),
            q3_ms: at(0.75),
        }
    }
}

/// The latency of a forward pass of `batch` images of `input_shape` through each of `models`,
/// measured round-robin: `settings.warmup` untimed runs of each, then `settings.repeats` rounds in
/// which every model runs once (values read back, so the work is done).
pub fn interleaved_latencies<N: BlockNetwork>(
    models: &[N],
    input_shape: [usize; 3],
    batch: usize,
    settings: &LatencySettings,
) -> Vec<Latency> {
    let [c, h, w] = input_shape;
    let input = Tensor::<4>::zeros([batch, c, h, w], &default_device());
    let run = |model: &N| {
        let logits = model.forward(input.clone());
        std::hint::black_box(logits.into_data());
    };
    for model in models {
        for _ in 0..settings.warmup {
            run(model);
        }
    }
    let mut times = vec![Vec::with_capacity(settings.repeats); models.len()];
    for _ in 0..settings.repeats.max(1) {
        for (model, model_times) in models.iter().zip(&mut times) {
            let start = Instant::now();
            run(model);
            model_times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.into_iter().map(Latency::from_times).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartiles_interpolate_and_overlap_is_symmetric() {
        let a = Latency::from_times(vec![4.0, 1.0, 3.0, 2.0, 5.0]);
        assert_eq!((a.q1_ms, a.median_ms, a.q3_ms), (2.0, 3.0, 4.0));
        let b = Latency::from_times(vec![3.5, 4.5, 7.0]);
        assert_eq!((b.q1_ms, b.median_ms, b.q3_ms), (4.0, 4.5, 5.75));
        assert!(a.overlaps(&b) && b.overlaps(&a));
        let c = Latency::from_times(vec![10.0, 11.0]);
        assert!(!a.overlaps(&c) && !c.overlaps(&a));
    }
}
