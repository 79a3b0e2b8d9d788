//! Standard normal samples in `f32` by the ziggurat method (Marsaglia & Tsang, 2000) with 256
//! layers. A sample needs 32 random bits in the common case (8 choose the layer, 24 the position
//! in it), so one 64-bit draw gives two; the slow paths (wedges and the tail beyond 3.65, together
//! about 1 % of samples) draw more.

use std::sync::LazyLock;

use rand::{Rng, RngExt};

/// Number of layers.
const LAYERS: usize = 256;
/// Where the tail starts: the base layer's right edge.
const TAIL_START: f64 = 3.654_152_885_361_009;
/// Area of each layer (and of the base layer with its tail).
const LAYER_AREA: f64 = 0.004_928_673_233_99;

/// The unnormalised density `exp(-x²/2)`.
fn density(x: f64) -> f64 {
    (-0.5 * x * x).exp()
}

/// Layer edges `x[0] > x[1] = TAIL_START > … > x[256] = 0` and the density at each.
struct Tables {
    edges: [f32; LAYERS + 1],
    densities: [f32; LAYERS + 1],
}

static TABLES: LazyLock<Tables> = LazyLock::new(|| {
    let mut edges = [0.0f64; LAYERS + 1];
    edges[0] = LAYER_AREA / density(TAIL_START);
    edges[1] = TAIL_START;
    for i in 2..LAYERS {
        edges[i] = (-2.0 * (LAYER_AREA / edges[i - 1] + density(edges[i - 1])).ln()).sqrt();
    }
    Tables {
        edges: edges.map(|x| x as f32),
        densities: edges.map(|x| density(x) as f32),
    }
});

/// Fills `out` with independent standard normal samples drawn from `rng`.
pub(crate) fn fill_standard_normal<R: Rng>(rng: &mut R, out: &mut [f32]) {
    let tables = &*TABLES;
    let mut pairs = out.chunks_exact_mut(2);
    for pair in &mut pairs {
        let bits = rng.next_u64();
        pair[0] = sample(tables, bits as u32, rng);
        pair[1] = sample(tables, (bits >> 32) as u32, rng);
    }
    if let [last] = pairs.into_remainder() {
        *last = sample(tables, rng.next_u32(), rng);
    }
}

/// The layer that 32 random bits choose (low 8 bits), the uniform position in `[-1, 1)` (upper
/// 24 bits) and the candidate `x` it gives in that layer.
#[inline(always)]
fn candidate(tables: &Tables, word: u32) -> (usize, f32, f32) {
    let layer = (word & 0xff) as usize;
    let u = (word >> 8) as f32 * (2.0 / 16_777_216.0) - 1.0;
    (layer, u, u * tables.edges[layer])
}

/// One sample from 32 random bits, drawing more from `rng` only on the slow paths.
#[inline(always)]
fn sample<R: Rng>(tables: &Tables, word: u32, rng: &mut R) -> f32 {
    let (layer, u, x) = candidate(tables, word);
    if x.abs() < tables.edges[layer + 1] {
        x
    } else {
        slow_sample(tables, (layer, u, x), rng)
    }
}

/// The rest of [`sample`] for the ~1 % of candidates outside their layer's rectangle: the tail,
/// the wedge test, and fresh candidates until one is accepted.
#[cold]
#[inline(never)]
fn slow_sample<R: Rng>(tables: &Tables, rejected: (usize, f32, f32), rng: &mut R) -> f32 {
    let (mut layer, mut u, mut x) = rejected;
    loop {
        if layer == 0 {
            return tail(rng, u < 0.0);
        }
        let (low, high) = (tables.densities[layer], tables.densities[layer + 1]);
        let y = f64::from(low) + f64::from(high - low) * rng.random::<f64>();
        if y < density(f64::from(x)) {
            return x;
        }
        (layer, u, x) = candidate(tables, rng.next_u32());
        if x.abs() < tables.edges[layer + 1] {
            return x;
        }
    }
}

/// A sample from the normal tail beyond `TAIL_START` (Marsaglia's method), with the given sign.
fn tail<R: Rng>(rng: &mut R, negative: bool) -> f32 {
    loop {
        let a = -open_unit(rng).ln() / TAIL_START;
        let b = -open_unit(rng).ln();
        if 2.0 * b >= a * a {
            let x = (TAIL_START + a) as f32;
            return if negative { -x } else { x };
        }
    }
}

/// Uniform in (0, 1].
fn open_unit<R: Rng>(rng: &mut R) -> f64 {
    1.0 - rng.random::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::Xoshiro256PlusPlus;

    /// The standard normal distribution function, by the Abramowitz–Stegun 7.1.26 error function
    /// (absolute error below 1.5e-7).
    fn normal_cdf(x: f64) -> f64 {
        let z = x.abs() / std::f64::consts::SQRT_2;
        let t = 1.0 / (1.0 + 0.327_591_1 * z);
        let poly = t
            * (0.254_829_592
                + t * (-0.284_496_736
                    + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
        let erf = 1.0 - poly * (-z * z).exp();
        0.5 * (1.0 + erf.copysign(x))
    }

    fn samples(count: usize, seed: u64) -> Vec<f64> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut out = vec![0.0f32; count];
        fill_standard_normal(&mut rng, &mut out);
        out.into_iter().map(f64::from).collect()
    }

    #[test]
    fn the_tables_close_at_zero() {
        let edges = &TABLES.edges;
        assert!((edges[0] - 3.910_758).abs() < 1e-5, "{}", edges[0]);
        assert!(edges[LAYERS - 1] > 0.0 && edges[LAYERS - 1] < 0.3);
        assert_eq!(edges[LAYERS], 0.0);
        assert!(edges.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn samples_follow_the_standard_normal() {
        let count = 400_000;
        let mut values = samples(count, 5);
        let n = count as f64;
        let mean = values.iter().sum::<f64>() / n;
        let moment = |k: i32| values.iter().map(|v| (v - mean).powi(k)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((moment(2) - 1.0).abs() < 0.01, "variance {}", moment(2));
        assert!(moment(3).abs() < 0.03, "third moment {}", moment(3));
        assert!(
            (moment(4) - 3.0).abs() < 0.06,
            "fourth moment {}",
            moment(4)
        );
        // Tails: P(|x| > 3) = 0.0026998, P(|x| > 3.654) = 0.000258 (the sampler's own tail).
        let beyond = |t: f64| values.iter().filter(|v| v.abs() > t).count() as f64 / n;
        assert!((beyond(3.0) - 0.0027).abs() < 0.0005, "{}", beyond(3.0));
        assert!(
            (beyond(TAIL_START) - 0.000_258).abs() < 0.00012,
            "{}",
            beyond(TAIL_START)
        );
        // Kolmogorov–Smirnov: the 0.1 % critical value for this many samples is 1.95 / sqrt(n).
        values.sort_by(f64::total_cmp);
        let statistic = values
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let cdf = normal_cdf(v);
                (cdf - i as f64 / n).abs().max((i as f64 + 1.0) / n - cdf)
            })
            .fold(0.0, f64::max);
        assert!(statistic < 1.95 / n.sqrt(), "KS statistic {statistic}");
    }

    #[test]
    fn the_tail_follows_the_conditional_normal() {
        // Beyond r, the normal has mean φ(r) / (1 − Φ(r)) and P(X > r + 0.5 | X > r) = 0.1265.
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(9);
        let count = 50_000;
        let draws: Vec<f64> = (0..count)
            .map(|_| f64::from(tail(&mut rng, false)))
            .collect();
        assert!(draws.iter().all(|&x| x >= TAIL_START as f32 as f64));
        let pdf = density(TAIL_START) / (2.0 * std::f64::consts::PI).sqrt();
        let mean = draws.iter().sum::<f64>() / count as f64;
        assert!(
            (mean - pdf / (1.0 - normal_cdf(TAIL_START))).abs() < 0.01,
            "mean {mean}"
        );
        let far = draws.iter().filter(|&&x| x > TAIL_START + 0.5).count() as f64 / count as f64;
        assert!((far - 0.1265).abs() < 0.01, "{far}");
    }

    #[test]
    fn seeds_repeat_and_odd_lengths_fill() {
        assert_eq!(samples(7, 1), samples(7, 1));
        assert_ne!(samples(7, 1), samples(7, 2));
        assert!(samples(7, 3).iter().all(|v| v.is_finite() && *v != 0.0));
    }
}
