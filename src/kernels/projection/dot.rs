//! The dense kernel of the distances: all dot products between the rows of two row-major matrices,
//! `P[i, l] = Σ_k X[i, k] · R[l, k]`, with both operands read along their contiguous rows.
//!
//! The work is split along `k` into one range per thread (each thread sums into its own `[n, L]`
//! buffer, added at the end), and each range is walked in cache-sized chunks. Inside a chunk, a
//! register tile of `A` points × `B` directions keeps `A·B` SIMD accumulators while both operands
//! stream through. On x86-64 the tile is written with AVX-512 or AVX2 + FMA intrinsics, chosen at run
//! time from what the processor supports, so the default build runs on any x86-64 machine; elsewhere
//! (and on x86-64 without AVX2) a portable version runs.

use super::real::{Real, split_columns};

/// Columns of `k` walked at once: an `A`-row slab of X and a `B`-row slab of R stay in L1, and the
/// chunk of all L rows of R in L2.
const CHUNK: usize = 1024;

/// `P = X Rᵀ` for `x: [n, d]` and `rows: [count, d]`, both row-major; returns `[n, count]` row-major.
pub(crate) fn dot_rows<T: Real>(x: &[T], rows: &[T], dim: usize) -> Vec<T> {
    assert!(dim > 0 && x.len().is_multiple_of(dim) && rows.len().is_multiple_of(dim));
    let (n, count) = (x.len() / dim, rows.len() / dim);
    split_columns(dim, |start, end| {
        T::dot(Range {
            x,
            rows,
            dim,
            start,
            end,
            n,
            count,
        })
    })
}

/// One thread's share of the product: columns `start..end` of every row.
#[derive(Clone, Copy)]
pub(crate) struct Range<'a, T> {
    x: &'a [T],
    rows: &'a [T],
    dim: usize,
    start: usize,
    end: usize,
    n: usize,
    count: usize,
}

/// The range's products, one dot product at a time, for processors without a SIMD kernel here.
pub(crate) fn portable<T: Real>(range: Range<'_, T>) -> Vec<T> {
    let Range {
        x,
        rows,
        dim,
        start,
        end,
        n,
        count,
    } = range;
    let mut out = vec![T::default(); n * count];
    for i in 0..n {
        let point = &x[i * dim + start..i * dim + end];
        for l in 0..count {
            let row = &rows[l * dim + start..l * dim + end];
            out[i * count + l] = point
                .iter()
                .zip(row)
                .fold(T::default(), |s, (&a, &b)| s + a * b);
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::{CHUNK, Range};
    use std::arch::x86_64::*;

    /// Defines a `#[target_feature]` kernel: an `$a × $b` register tile of `$lanes`-wide vectors,
    /// walked over the range in `CHUNK`-column chunks. Tiles at the edges (fewer than `$a` points or
    /// `$b` directions left) repeat the last valid row and discard the duplicate results, so every
    /// tile runs the same unrolled code.
    macro_rules! tiled_kernel {
        ($name:ident, $features:literal, $elem:ty, $vector:ty, $lanes:literal, $a:literal, $b:literal,
         $zero:ident, $load:ident, $fma:ident, $reduce:ident) => {
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn $name(range: Range<'_, $elem>) -> Vec<$elem> {
                let Range {
                    x,
                    rows,
                    dim,
                    start,
                    end,
                    n,
                    count,
                } = range;
                let mut out = vec![0.0 as $elem; n * count];
                let mut chunk_start = start;
                while chunk_start < end {
                    let chunk_end = (chunk_start + CHUNK).min(end);
                    let mut i0 = 0;
                    while i0 < n {
                        let mut points = [x.as_ptr(); $a];
                        for (a, point) in points.iter_mut().enumerate() {
                            let i = (i0 + a).min(n - 1);
                            *point = x[i * dim..(i + 1) * dim].as_ptr();
                        }
                        let mut l0 = 0;
                        while l0 < count {
                            let mut directions = [rows.as_ptr(); $b];
                            for (b, direction) in directions.iter_mut().enumerate() {
                                let l = (l0 + b).min(count - 1);
                                *direction = rows[l * dim..(l + 1) * dim].as_ptr();
                            }
                            let mut acc = [[$zero(); $b]; $a];
                            let mut k = chunk_start;
                            while k + $lanes <= chunk_end {
                                let mut r = [$zero(); $b];
                                for b in 0..$b {
                                    // SAFETY: k + lanes <= chunk_end <= dim, within the row.
                                    r[b] = unsafe { $load(directions[b].add(k)) };
                                }
                                for a in 0..$a {
                                    // SAFETY: as above.
                                    let p = unsafe { $load(points[a].add(k)) };
                                    for b in 0..$b {
                                        acc[a][b] = $fma(p, r[b], acc[a][b]);
                                    }
                                }
                                k += $lanes;
                            }
                            for a in 0..$a.min(n - i0) {
                                for b in 0..$b.min(count - l0) {
                                    let mut sum: $elem = $reduce(acc[a][b]);
                                    for t in k..chunk_end {
                                        // SAFETY: t < chunk_end <= dim, within the rows.
                                        sum += unsafe { *points[a].add(t) * *directions[b].add(t) };
                                    }
                                    out[(i0 + a) * count + l0 + b] += sum;
                                }
                            }
                            l0 += $b;
                        }
                        i0 += $a;
                    }
                    chunk_start = chunk_end;
                }
                out
            }
        };
    }

    /// The sum of a vector's 8 lanes.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn reduce_add_256_ps(v: __m256) -> f32 {
        let halves = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
        _mm_cvtss_f32(_mm_add_ss(pairs, _mm_movehdup_ps(pairs)))
    }

    /// The sum of a vector's 4 lanes.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn reduce_add_256_pd(v: __m256d) -> f64 {
        let halves = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
        _mm_cvtsd_f64(_mm_add_sd(halves, _mm_unpackhi_pd(halves, halves)))
    }

    tiled_kernel!(
        avx512_f32,
        "avx512f",
        f32,
        __m512,
        16,
        6,
        4,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_fmadd_ps,
        _mm512_reduce_add_ps
    );
    tiled_kernel!(
        avx512_f64,
        "avx512f",
        f64,
        __m512d,
        8,
        6,
        4,
        _mm512_setzero_pd,
        _mm512_loadu_pd,
        _mm512_fmadd_pd,
        _mm512_reduce_add_pd
    );
    tiled_kernel!(
        avx2_f32,
        "avx2,fma",
        f32,
        __m256,
        8,
        2,
        4,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_fmadd_ps,
        reduce_add_256_ps
    );
    tiled_kernel!(
        avx2_f64,
        "avx2,fma",
        f64,
        __m256d,
        4,
        2,
        4,
        _mm256_setzero_pd,
        _mm256_loadu_pd,
        _mm256_fmadd_pd,
        reduce_add_256_pd
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::projection::real::tests::every_kernel;
    use proptest::prelude::*;

    fn naive(x: &[f64], rows: &[f64], dim: usize) -> Vec<f64> {
        let mut out = Vec::new();
        for point in x.chunks(dim) {
            for row in rows.chunks(dim) {
                out.push(point.iter().zip(row).map(|(a, b)| a * b).sum());
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn matches_the_naive_product(
            n in 1usize..11, count in 1usize..11, dim in 1usize..70, seed in any::<u64>()
        ) {
            let value = |k: usize| (((k as u64 ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f64) / 1e7 - 0.8;
            let x: Vec<f64> = (0..n * dim).map(value).collect();
            let rows: Vec<f64> = (0..count * dim).map(|k| value(k + 7919)).collect();
            let expected = naive(&x, &rows, dim);
            let got = dot_rows(&x, &rows, dim);
            prop_assert_eq!(got.len(), n * count);
            for (g, e) in got.iter().zip(&expected) {
                prop_assert!((g - e).abs() <= 1e-12 * (1.0 + e.abs()));
            }
            let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            let rows32: Vec<f32> = rows.iter().map(|&v| v as f32).collect();
            for (g, e) in dot_rows(&x32, &rows32, dim).iter().zip(&expected) {
                prop_assert!((f64::from(*g) - e).abs() <= 1e-4 * (1.0 + e.abs()));
            }
        }
    }

    /// Every kernel this processor can run, on a range with edge tiles in both directions and a
    /// tail shorter than one vector.
    #[test]
    fn every_kernel_agrees_with_the_naive_product() {
        let (n, count, dim) = (7, 6, 2 * CHUNK + 37);
        let x: Vec<f64> = (0..n * dim).map(|k| ((k % 17) as f64) - 8.0).collect();
        let rows: Vec<f64> = (0..count * dim).map(|k| ((k % 5) as f64) * 0.25).collect();
        let expected = naive(&x, &rows, dim);
        let (x32, rows32): (Vec<f32>, Vec<f32>) = (
            x.iter().map(|&v| v as f32).collect(),
            rows.iter().map(|&v| v as f32).collect(),
        );
        let range64 = Range {
            x: &x,
            rows: &rows,
            dim,
            start: 0,
            end: dim,
            n,
            count,
        };
        let range32 = Range {
            x: &x32,
            rows: &rows32,
            dim,
            start: 0,
            end: dim,
            n,
            count,
        };
        let results = every_kernel!(range64, range32);
        for (kernel, got) in results {
            // Small integers and quarters: every product and partial sum is exact in f32 and f64.
            assert_eq!(got, expected, "{kernel}");
        }
    }

    #[test]
    fn long_rows_are_split_across_threads_and_chunks() {
        // Spans several chunks and, with more than one thread, several ranges.
        let (n, count, dim) = (5, 3, crate::kernels::projection::real::tests::LONG);
        let x: Vec<f64> = (0..n * dim).map(|k| ((k % 13) as f64) - 6.0).collect();
        let rows: Vec<f64> = (0..count * dim).map(|k| ((k % 7) as f64) * 0.5).collect();
        assert_eq!(dot_rows(&x, &rows, dim), naive(&x, &rows, dim));
    }
}
