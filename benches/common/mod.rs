//! Timing shared by the benchmarks that time single ops with their own harness.

use std::time::Instant;

/// The median wall time of `repeats` runs of `run`, in milliseconds, after one warm-up run.
pub fn median_ms(repeats: usize, mut run: impl FnMut()) -> f64 {
    run();
    let mut times: Vec<f64> = (0..repeats.max(1))
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}
