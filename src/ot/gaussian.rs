//! Standard normal samples in `f32` by the ziggurat method (Marsaglia & Tsang, 2000) with 256
//! layers. A sample needs 32 random bits in the common case (8 choose the layer, 24 the position
//! in it); the slow paths (wedges and the tail beyond 3.65, together about 1 % of samples) draw
//! more.
//!
//! The fast path is written for SIMD: the random bits come from [`WideRng`], 8 xoshiro256++ streams
//! side by side (one step gives 16 candidates), and each candidate is decided without branching;
//! the few rejected ones are then finished one by one from a separate scalar generator. With
//! AVX-512 a step is a handful of vector instructions and two table gathers; elsewhere the same
//! arithmetic runs lane by lane. Both give bit-identical samples (the decoding is exact integer
//! work, one rounded product and one rounded difference), so a seed draws the same directions on
//! every x86-64 or aarch64 machine.

use std::mem::MaybeUninit;
use std::sync::LazyLock;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, RngExt, SeedableRng};

/// Number of layers.
const LAYERS: usize = 256;
/// Where the tail starts: the base layer's right edge.
const TAIL_START: f64 = 3.654_152_885_361_009;
/// How far (as a fraction of a wedge) a point must be from the chord for the squeeze in
/// [`slow_sample`] to decide it: far above the rounding of the f32 arithmetic involved.
const SQUEEZE_MARGIN: f32 = 1e-4;
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

/// Independent xoshiro256++ streams advanced together.
const STREAMS: usize = 8;

/// Samples decided per step: two 32-bit words per stream.
const STEP: usize = 2 * STREAMS;

/// [`STREAMS`] xoshiro256++ generators (Blackman & Vigna) stored word-major, so that one step of
/// all of them is a few vector instructions.
pub(crate) struct WideRng {
    state: [[u64; STREAMS]; 4],
}

impl WideRng {
    /// Streams seeded from `seed` by SplitMix64, one sub-seed per stream.
    pub(crate) fn new(seed: u64) -> Self {
        let mut state = [[0; STREAMS]; 4];
        for stream in 0..STREAMS {
            let mut z = seed ^ (stream as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
            for word in &mut state {
                z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut v = z;
                v = (v ^ (v >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                v = (v ^ (v >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                word[stream] = v ^ (v >> 31);
            }
        }
        Self { state }
    }

    /// One output of every stream, lane by lane.
    fn next(&mut self) -> [u64; STREAMS] {
        let [s0, s1, s2, s3] = &mut self.state;
        std::array::from_fn(|j| {
            let result = s0[j]
                .wrapping_add(s3[j])
                .rotate_left(23)
                .wrapping_add(s0[j]);
            let t = s1[j] << 17;
            s2[j] ^= s0[j];
            s3[j] ^= s1[j];
            s1[j] ^= s2[j];
            s0[j] ^= s3[j];
            s2[j] ^= t;
            s3[j] = s3[j].rotate_left(45);
            result
        })
    }
}

/// The generators `seed` determines: the wide one for the candidates, and a scalar one for the
/// slow paths.
fn generators(seed: u64) -> (WideRng, Xoshiro256PlusPlus) {
    (
        WideRng::new(seed),
        Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x5851_F42D_4C95_7F2D),
    )
}

/// Fills `out` with independent standard normal samples, a function of `seed` alone.
pub(crate) fn fill_standard_normal(seed: u64, out: &mut [MaybeUninit<f32>]) {
    let tables = &*TABLES;
    let (mut wide, mut slow) = generators(seed);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the processor supports AVX-512F (checked just above).
        unsafe { x86::fill_avx512(tables, &mut wide, &mut slow, out) };
        return;
    }
    fill_lanes(tables, &mut wide, &mut slow, out);
}

/// The 16 words of one step of `wide`: the low then the high half of each stream's output.
fn step_words(wide: &mut WideRng) -> [u32; STEP] {
    let outputs = wide.next();
    std::array::from_fn(|w| (outputs[w / 2] >> (32 * (w % 2))) as u32)
}

/// [`fill_standard_normal`] without SIMD intrinsics.
fn fill_lanes<R: Rng>(
    tables: &Tables,
    wide: &mut WideRng,
    slow: &mut R,
    out: &mut [MaybeUninit<f32>],
) {
    for chunk in out.chunks_mut(STEP) {
        let words = step_words(wide);
        for (slot, &word) in chunk.iter_mut().zip(&words) {
            slot.write(sample(tables, word, slow));
        }
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
        // The wedge test, in f32 like the samples (the densities are stored in f32 too): a point
        // `y` uniform between the densities at the layer's edges is kept if under the density.
        // Squeeze: where |x| < 1 the density is concave, so above the chord joining the layer's
        // corners, and beyond 1 it is convex, so below it; a point clearly on the right side of
        // the chord is decided without `exp` (most are).
        let (outer, inner) = (tables.edges[layer], tables.edges[layer + 1]);
        let (low, high) = (tables.densities[layer], tables.densities[layer + 1]);
        let v = rng.random::<f32>();
        let along_chord = (outer - x.abs()) / (outer - inner);
        let under = if outer <= 1.0 && v < along_chord - SQUEEZE_MARGIN {
            true
        } else if inner >= 1.0 && v > along_chord + SQUEEZE_MARGIN {
            false
        } else {
            low + (high - low) * v < (-0.5 * x * x).exp()
        };
        if under {
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

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{STEP, Tables, WideRng, candidate, slow_sample};
    use rand::Rng;
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// Samples per batch of steps whose rejected candidates are finished together.
    const BATCH: usize = 64 * STEP;

    /// [`super::fill_standard_normal`] with AVX-512: the 8 streams in 4 registers, 16 candidates per
    /// step decided at once, rejected lanes finished by [`slow_sample`] in lane order.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fill_avx512<R: Rng>(
        tables: &Tables,
        wide: &mut WideRng,
        slow: &mut R,
        out: &mut [MaybeUninit<f32>],
    ) {
        // SAFETY: each state row is 8 u64 = 64 bytes, unaligned loads and stores.
        let load = |row: &[u64; 8]| unsafe { _mm512_loadu_si512(row.as_ptr().cast()) };
        let [mut s0, mut s1, mut s2, mut s3] = wide.state.each_ref().map(load);
        let scale = _mm512_set1_ps(2.0 / 16_777_216.0);
        let one = _mm512_set1_ps(1.0);
        let layer_bits = _mm512_set1_epi32(0xff);
        let edges = tables.edges.as_ptr();
        let whole = out.len() - out.len() % STEP;
        let (steps, rest) = out.split_at_mut(whole);
        // Rejected candidates are listed without branching (their word and their slot, compressed
        // to the front of a vector) and finished in slot order after each batch of steps.
        let mut rejected_words = [0u32; BATCH + STEP];
        let mut rejected_slots = [0u32; BATCH + STEP];
        let lane_index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        for batch in steps.chunks_mut(BATCH) {
            let mut rejected = 0;
            for (step, chunk) in batch.chunks_exact_mut(STEP).enumerate() {
                let words = _mm512_add_epi64(_mm512_rol_epi64::<23>(_mm512_add_epi64(s0, s3)), s0);
                let t = _mm512_slli_epi64::<17>(s1);
                s2 = _mm512_xor_si512(s2, s0);
                s3 = _mm512_xor_si512(s3, s1);
                s1 = _mm512_xor_si512(s1, s2);
                s0 = _mm512_xor_si512(s0, s3);
                s2 = _mm512_xor_si512(s2, t);
                s3 = _mm512_rol_epi64::<45>(s3);
                let layer = _mm512_and_si512(words, layer_bits);
                let position = _mm512_cvtepi32_ps(_mm512_srli_epi32::<8>(words));
                let u = _mm512_sub_ps(_mm512_mul_ps(position, scale), one);
                // SAFETY: layers are 0..=255 and the table has 257 edges: both gathers stay inside.
                let (edge, next) = unsafe {
                    (
                        _mm512_i32gather_ps::<4>(layer, edges.cast()),
                        _mm512_i32gather_ps::<4>(layer, edges.add(1).cast()),
                    )
                };
                let x = _mm512_mul_ps(u, edge);
                let outside = !_mm512_cmp_ps_mask::<_CMP_LT_OQ>(_mm512_abs_ps(x), next);
                let slots = _mm512_add_epi32(lane_index, _mm512_set1_epi32((step * STEP) as i32));
                // SAFETY: the chunk holds 16 f32 slots; each list has STEP slots of slack past
                // `rejected` <= BATCH - STEP.
                unsafe {
                    _mm512_storeu_ps(chunk.as_mut_ptr().cast(), x);
                    let words_at = rejected_words.as_mut_ptr().add(rejected);
                    let slots_at = rejected_slots.as_mut_ptr().add(rejected);
                    _mm512_storeu_si512(
                        words_at.cast(),
                        _mm512_maskz_compress_epi32(outside, words),
                    );
                    _mm512_storeu_si512(
                        slots_at.cast(),
                        _mm512_maskz_compress_epi32(outside, slots),
                    );
                }
                rejected += outside.count_ones() as usize;
            }
            for (&word, &slot) in rejected_words[..rejected].iter().zip(&rejected_slots) {
                batch[slot as usize].write(slow_sample(tables, candidate(tables, word), slow));
            }
        }
        for (row, value) in wide.state.iter_mut().zip([s0, s1, s2, s3]) {
            // SAFETY: as for the loads.
            unsafe { _mm512_storeu_si512(row.as_mut_ptr().cast(), value) };
        }
        super::fill_lanes(tables, wide, slow, rest);
    }
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
        let mut out = vec![MaybeUninit::uninit(); count];
        fill_standard_normal(seed, &mut out);
        // SAFETY: `fill_standard_normal` writes every slot.
        out.into_iter()
            .map(|v| f64::from(unsafe { v.assume_init() }))
            .collect()
    }

    /// What [`fill_lanes`] alone (the path of processors without AVX-512) draws from `seed`.
    fn lane_samples(count: usize, seed: u64) -> Vec<f32> {
        let mut out = vec![MaybeUninit::uninit(); count];
        let (mut wide, mut slow) = generators(seed);
        fill_lanes(&TABLES, &mut wide, &mut slow, &mut out);
        // SAFETY: `fill_lanes` writes every slot.
        out.into_iter()
            .map(|v| unsafe { v.assume_init() })
            .collect()
    }

    #[test]
    fn every_path_draws_the_same_samples() {
        // 10 007 samples: about a hundred rejected candidates and a partial last step.
        for seed in [0, 1, 77] {
            let expected = lane_samples(10_007, seed);
            let got: Vec<f32> = samples(10_007, seed)
                .into_iter()
                .map(|v| v as f32)
                .collect();
            assert_eq!(got, expected, "seed {seed}");
        }
    }

    #[test]
    fn each_wide_lane_is_xoshiro256_plus_plus() {
        // rand's xoshiro256++ started from lane 3's state (its seed is the state, little-endian).
        let mut wide = WideRng::new(42);
        let mut seed = [0u8; 32];
        for (bytes, word) in seed.chunks_exact_mut(8).zip(wide.state.map(|word| word[3])) {
            bytes.copy_from_slice(&word.to_le_bytes());
        }
        let mut reference = Xoshiro256PlusPlus::from_seed(seed);
        for _ in 0..5 {
            assert_eq!(wide.next()[3], reference.next_u64());
        }
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
