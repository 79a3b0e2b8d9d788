//! The passes of the batch norm over an activation stored with its channels innermost (the
//! position-major rows the tap-by-tap convolutions hand on): `[rows, channels]`, each row one
//! position of one image.
//!
//! Each pass runs over fixed blocks of whole rows in parallel and vectorises across the channels
//! of a row. The per-channel sums of a block are added block after block in order, so the results
//! do not depend on the thread count.

use rayon::prelude::*;

use super::{Affine, Element, Epilogue, PARALLEL_GRAIN, Rectifier, relu, relu6};
use crate::kernels::buffers::zeroed_in_parallel;

/// Whole rows per parallel task.
fn rows_per_task(channels: usize) -> usize {
    (PARALLEL_GRAIN / channels).max(1)
}

/// Per channel, `Σ f(a, b, centre)[0]` and `Σ f(a, b, centre)[1]` over the paired values of `a`
/// and `b` in `f64`, `centre` being the channel's value of `centres` (one per channel). The two
/// sums lie in separate arrays, so that the loop over a row's channels vectorises; each channel's
/// values are added row after row, block after block, in order.
fn channel_sums<T: Element>(
    centres: &[f64],
    a: &[T],
    b: &[T],
    f: impl Fn(f64, f64, f64) -> [f64; 2] + Sync,
) -> Vec<[f64; 2]> {
    let channels = centres.len();
    let block = rows_per_task(channels) * channels;
    let partials: Vec<[Vec<f64>; 2]> = a
        .par_chunks(block)
        .zip(b.par_chunks(block))
        .map(|(a, b)| {
            let [mut firsts, mut seconds] = [vec![0.0; channels], vec![0.0; channels]];
            for (a, b) in a.chunks_exact(channels).zip(b.chunks_exact(channels)) {
                let values = a.iter().zip(b).zip(centres);
                for ((first, second), ((&a, &b), &centre)) in
                    firsts.iter_mut().zip(seconds.iter_mut()).zip(values)
                {
                    let [f_first, f_second] = f(a.to_f64(), b.to_f64(), centre);
                    *first += f_first;
                    *second += f_second;
                }
            }
            [firsts, seconds]
        })
        .collect();
    let [firsts, seconds] = partials
        .into_iter()
        .reduce(|[mut firsts, mut seconds], [first_part, second_part]| {
            firsts.iter_mut().zip(first_part).for_each(|(t, p)| *t += p);
            seconds
                .iter_mut()
                .zip(second_part)
                .for_each(|(t, p)| *t += p);
            [firsts, seconds]
        })
        .unwrap_or_else(|| [vec![0.0; channels], vec![0.0; channels]]);
    firsts
        .into_iter()
        .zip(seconds)
        .map(|(f, s)| [f, s])
        .collect()
}

/// Per-channel mean and biased variance of `x` (`[rows, channels]`), the sums shifted by the
/// first row as the planar pass shifts by a channel's first value.
pub(super) fn statistics<T: Element>(channels: usize, x: &[T]) -> (Vec<f64>, Vec<f64>) {
    let count = (x.len() / channels) as f64;
    let shift: Vec<f64> = x[..channels].iter().map(|v| v.to_f64()).collect();
    channel_sums(&shift, x, x, |v, _, shift| {
        let centred = v - shift;
        [centred, centred * centred]
    })
    .into_iter()
    .zip(&shift)
    .map(|([sum, squares], &shift)| {
        let centred_mean = sum / count;
        let variance = (squares / count - centred_mean * centred_mean).max(0.0);
        (shift + centred_mean, variance)
    })
    .unzip()
}

/// Per channel, `Σ dy` and `Σ dy·(x − mean)`.
pub(super) fn gradient_sums<T: Element>(
    channels: usize,
    dy: &[T],
    x: &[T],
    mean: &[f64],
) -> Vec<[f64; 2]> {
    channel_sums(&mean[..channels], dy, x, |dy, x, mean| {
        [dy, dy * (x - mean)]
    })
}

/// A new `[rows, channels]` activation of `len` values filled block by block, in parallel, by
/// `fill(start, out)`: `out` holds whole rows, the first at index `start`.
fn fill_rows<T: Element>(
    channels: usize,
    len: usize,
    fill: impl Fn(usize, &mut [T]) + Sync,
) -> Vec<T> {
    let block = rows_per_task(channels) * channels;
    zeroed_in_parallel(len, block, |task, out| fill(task * block, out))
}

/// `out = (x − centre)·a + y·b + c` with the constants of each value's channel.
pub(super) fn affine<T: Element>(x: &[T], y: &[T], per_channel: &[Affine]) -> Vec<T> {
    let constants: Vec<[T; 4]> = per_channel
        .iter()
        .map(|k| [k.centre, k.a, k.b, k.c].map(T::from_f64))
        .collect();
    let channels = constants.len();
    let [centres, a, b, c] = columns(&constants);
    fill_rows(channels, x.len(), |start, out| {
        let (x, y) = (&x[start..][..out.len()], &y[start..][..out.len()]);
        for ((out, x), y) in out
            .chunks_exact_mut(channels)
            .zip(x.chunks_exact(channels))
            .zip(y.chunks_exact(channels))
        {
            let constants = centres.iter().zip(&a).zip(&b).zip(&c);
            for (((out, &x), &y), (((&centre, &a), &b), &c)) in
                out.iter_mut().zip(x).zip(y).zip(constants)
            {
                *out = (x - centre) * a + y * b + c;
            }
        }
    })
}

/// `(x − mean)/σ·γ + β` with each channel's `[mean, σ, γ, β]` (rounded in `T` as the planar pass
/// rounds them), then with an epilogue `rectifier(· + residual)`.
pub(super) fn normalize<T: Element>(
    x: &[T],
    per_channel: &[[T; 4]],
    epilogue: Epilogue<'_, T>,
) -> Vec<T> {
    let channels = per_channel.len();
    let residual = epilogue.and_then(|(residual, _)| residual);
    fill_rows(channels, x.len(), |start, out| {
        let x = &x[start..][..out.len()];
        let residual = residual.map(|r| &r[start..][..out.len()]);
        match epilogue.map(|(_, rectifier)| rectifier) {
            None => fill_normalized(out, x, residual, per_channel, |v| v),
            Some(Rectifier::Relu) => fill_normalized(out, x, residual, per_channel, relu),
            Some(Rectifier::Relu6) => fill_normalized(out, x, residual, per_channel, relu6),
        }
    })
}

/// `out[r, c] = activation(normalize_c(x[r, c]) [+ residual[r, c]])`, monomorphic per activation
/// so that the loop over a row's channels vectorises.
fn fill_normalized<T: Element>(
    out: &mut [T],
    x: &[T],
    residual: Option<&[T]>,
    per_channel: &[[T; 4]],
    activation: impl Fn(T) -> T,
) {
    let channels = per_channel.len();
    let [means, stds, gammas, betas] = columns(per_channel);
    let constants = || means.iter().zip(&stds).zip(&gammas).zip(&betas);
    let normalized = |x: T, (((&mean, &std), &gamma), &beta): (((&T, &T), &T), &T)| {
        (x - mean) / std * gamma + beta
    };
    let rows = out.chunks_exact_mut(channels).zip(x.chunks_exact(channels));
    match residual {
        None => {
            for (out, x) in rows {
                for ((out, &x), k) in out.iter_mut().zip(x).zip(constants()) {
                    *out = activation(normalized(x, k));
                }
            }
        }
        Some(residual) => {
            for ((out, x), r) in rows.zip(residual.chunks_exact(channels)) {
                for (((out, &x), &r), k) in out.iter_mut().zip(x).zip(r).zip(constants()) {
                    *out = activation(normalized(x, k) + r);
                }
            }
        }
    }
}

/// Per-channel constants as four arrays, one per constant, so that a loop over a row's channels
/// reads each with contiguous vector loads.
fn columns<T: Copy>(per_channel: &[[T; 4]]) -> [Vec<T>; 4] {
    std::array::from_fn(|index| per_channel.iter().map(|k| k[index]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[rows, channels]` values with a per-channel offset, spread over several parallel blocks.
    fn activation(rows: usize, channels: usize, phase: f64) -> Vec<f32> {
        (0..rows * channels)
            .map(|i| ((i as f64 * 0.37 + phase).sin() * 2.0 + (i % channels) as f64) as f32)
            .collect()
    }

    #[test]
    fn statistics_are_each_channels_mean_and_variance() {
        let (rows, channels) = (3 * rows_per_task(8) + 5, 8);
        let x = activation(rows, channels, 0.1);
        let (mean, variance) = statistics(channels, &x);
        for channel in 0..channels {
            let values: Vec<f64> = x[channel..]
                .iter()
                .step_by(channels)
                .map(|&v| f64::from(v))
                .collect();
            let expected = values.iter().sum::<f64>() / rows as f64;
            let spread = values.iter().map(|v| (v - expected).powi(2)).sum::<f64>() / rows as f64;
            assert!((mean[channel] - expected).abs() < 1e-9, "mean {channel}");
            assert!(
                (variance[channel] - spread).abs() < 1e-9,
                "variance {channel}"
            );
        }
    }

    /// Every pass gives the same bits on one thread and on four.
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let (rows, channels) = (3 * rows_per_task(8) + 5, 8);
        let (x, dy) = (
            activation(rows, channels, 0.1),
            activation(rows, channels, 2.3),
        );
        let residual = activation(rows, channels, 4.1);
        let per_channel: Vec<[f32; 4]> = (0..channels)
            .map(|c| [c as f32, 1.5 + c as f32 * 0.1, 0.8, -0.2])
            .collect();
        let constants: Vec<Affine> = (0..channels)
            .map(|c| Affine {
                centre: c as f64,
                a: 0.3,
                b: -1.1,
                c: 0.05 * c as f64,
            })
            .collect();
        let run = |threads: usize| {
            crate::kernels::on_threads(threads, || {
                let (mean, variance) = statistics(channels, &x);
                let sums = gradient_sums(channels, &dy, &x, &mean);
                let epilogue = Some((Some(residual.as_slice()), Rectifier::Relu6));
                let output = normalize(&x, &per_channel, epilogue);
                (mean, variance, sums, output, affine(&x, &dy, &constants))
            })
        };
        assert!(run(1) == run(4));
    }
}
