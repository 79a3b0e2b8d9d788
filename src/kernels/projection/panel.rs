//! The wide kernel of the distances: `P = X Θ` for a row-major cloud `x: [n, d]` and row-major
//! directions `columns: [d, L]` (one direction per column, POT's layout), for `L` of a SIMD vector
//! or more.
//!
//! It is a matrix-product micro-kernel: the directions' lanes run along `L`, so each step of `k`
//! loads one row of Θ (`L` contiguous values, a few vectors), broadcasts `X[i, k]` for a tile of
//! points and adds the products into a register tile of points × directions. A panel of Θ's rows
//! (about 24 KB) stays in L1 while every point of the cloud passes over it, and the points are read
//! once, one value at a time; nothing is summed across lanes. A dot-product kernel over Θ's rows
//! ([`super::dot`]) instead streams the directions from L2 for every tile of points, which caps it at
//! the L2 bandwidth (about 46 GMAC/s per core on the project's machine, against about 70 here).
//!
//! The tile takes the directions in whole blocks (48 for f32 with AVX-512: 3 vectors of 16), so no
//! lane computes a discarded value. The `L mod 48` directions left over (2 of the default 50) are
//! copied per panel into short contiguous rows and summed dot-product style, along `k`, while the
//! tile's points are still in L1: one pass over the cloud whatever `L`. The shared dimension is
//! split across threads as in [`super::dot`].

use super::real::{Real, split_columns};

/// Bytes of Θ's rows in one panel: a panel stays in the 48 KB L1 beside the points' cache lines.
const PANEL_BYTES: usize = 24 * 1024;

/// One thread's share of the product: rows `start..end` of Θ (columns of X).
#[derive(Clone, Copy)]
pub(crate) struct PanelRange<'a, T> {
    x: &'a [T],
    columns: &'a [T],
    dim: usize,
    count: usize,
    start: usize,
    end: usize,
}

/// `P = X Θ` for `x: [n, dim]` and `columns: [dim, L]`, both row-major; returns `[n, L]` row-major.
pub(crate) fn product_columns<T: Real>(x: &[T], columns: &[T], dim: usize) -> Vec<T> {
    assert!(dim > 0 && x.len().is_multiple_of(dim) && columns.len().is_multiple_of(dim));
    let count = columns.len() / dim;
    split_columns(dim, |start, end| {
        T::panel(PanelRange {
            x,
            columns,
            dim,
            count,
            start,
            end,
        })
    })
}

/// The range's products, one multiply-add at a time, for processors without a SIMD kernel here.
pub(crate) fn portable<T: Real>(range: PanelRange<'_, T>) -> Vec<T> {
    let PanelRange {
        x,
        columns,
        dim,
        count,
        start,
        end,
    } = range;
    let n = x.len() / dim;
    let mut out = vec![T::default(); n * count];
    for i in 0..n {
        let point = &x[i * dim..(i + 1) * dim];
        for k in start..end {
            let row = &columns[k * count..(k + 1) * count];
            for (o, &theta) in out[i * count..(i + 1) * count].iter_mut().zip(row) {
                *o = *o + point[k] * theta;
            }
        }
    }
    out
}

/// Rows of Θ per panel for `count` directions of `size` bytes each: a multiple of 16, so that the
/// leftover directions' sums along `k` run in whole vectors.
fn panel_rows(count: usize, size: usize) -> usize {
    (PANEL_BYTES / (count * size)).max(16) / 16 * 16
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::{PanelRange, panel_rows};
    use std::arch::x86_64::*;

    /// Defines a `#[target_feature]` kernel with a register tile of `$mr` points × `$nv` vectors of
    /// `$lanes` directions (`$block` = `$nv · $lanes` directions), walked over the range panel by
    /// panel. Tiles at the cloud's edge (fewer than `$mr` points left) repeat the last point and
    /// discard its results; so does the leftover directions' pair when only one is left.
    macro_rules! panel_kernel {
        ($name:ident, $features:literal, $elem:ty, $lanes:literal, $mr:literal, $nv:literal,
         $block:literal, $zero:ident, $load:ident, $store:ident, $set1:ident, $fma:ident,
         $add:ident, $reduce:path) => {
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn $name(range: PanelRange<'_, $elem>) -> Vec<$elem> {
                let PanelRange {
                    x,
                    columns,
                    dim,
                    count,
                    start,
                    end,
                } = range;
                assert!(end <= dim && columns.len() == dim * count);
                let n = x.len() / dim;
                let width = count - count % $block;
                let leftover = count - width;
                let mut sums = vec![0.0 as $elem; n * count];
                let step = panel_rows(count, std::mem::size_of::<$elem>());
                // The current panel: its rows' first `width` directions packed `width` apart from
                // a 64-byte boundary (a row of Θ is `count` apart, so its vectors would straddle
                // cache lines), and the leftover directions as one contiguous row each.
                let mut packed =
                    vec![0.0 as $elem; step * width + 64 / std::mem::size_of::<$elem>()];
                let align = packed.as_ptr().align_offset(64).min(packed.len());
                let packed = &mut packed[align..][..step * width];
                let mut leftover_rows = vec![0.0 as $elem; leftover * step];
                // The leftover directions' sums, still one vector per point and direction: summed
                // across lanes once, at the end.
                let mut lane_sums = vec![0.0 as $elem; n * leftover * $lanes];
                let mut first = start;
                while first < end {
                    let len = (first + step).min(end) - first;
                    for (k, row) in columns[first * count..(first + len) * count]
                        .chunks_exact(count)
                        .enumerate()
                    {
                        packed[k * width..(k + 1) * width].copy_from_slice(&row[..width]);
                        for (j, &value) in row[width..].iter().enumerate() {
                            leftover_rows[j * step + k] = value;
                        }
                    }
                    // The next panel's rows are fetched into L2 while this one is computed, so
                    // that packing it does not wait on L3.
                    let next_bytes = ((first + len + step).min(end) - first - len)
                        * count
                        * std::mem::size_of::<$elem>();
                    let next_panel = columns[(first + len) * count..].as_ptr().cast::<i8>();
                    let mut next_line = 0;
                    let mut i0 = 0;
                    while i0 < n {
                        let points: [*const $elem; $mr] = std::array::from_fn(|a| {
                            x[(i0 + a).min(n - 1) * dim + first..].as_ptr()
                        });
                        let tile_points = $mr.min(n - i0);
                        let next_points: [*const $elem; $mr] = std::array::from_fn(|a| {
                            x[(i0 + $mr + a).min(n - 1) * dim + first..].as_ptr()
                        });
                        for block in (0..width).step_by($block) {
                            let theta = packed[block..].as_ptr();
                            let mut acc = [[$zero(); $nv]; $mr];
                            for k in 0..len {
                                if k % 16 < $mr {
                                    // The next tile's points, a cache line per row every 16 steps.
                                    _mm_prefetch::<_MM_HINT_T0>(
                                        next_points[k % 16].wrapping_add(k).cast(),
                                    );
                                }
                                if k % 2 == 0 && next_line < next_bytes {
                                    _mm_prefetch::<_MM_HINT_T1>(next_panel.wrapping_add(next_line));
                                    next_line += 64;
                                }
                                let mut row = [$zero(); $nv];
                                for v in 0..$nv {
                                    // SAFETY: packed row k < len <= step, directions
                                    // `block + v·lanes ..` + lanes <= width.
                                    row[v] = unsafe { $load(theta.add(k * width + v * $lanes)) };
                                }
                                for a in 0..$mr {
                                    // SAFETY: column `first + k` < `end` <= dim of a row of x.
                                    let value = $set1(unsafe { *points[a].add(k) });
                                    for v in 0..$nv {
                                        acc[a][v] = $fma(value, row[v], acc[a][v]);
                                    }
                                }
                            }
                            for a in 0..tile_points {
                                let out = &mut sums[(i0 + a) * count + block..][..$block];
                                for v in 0..$nv {
                                    let slot = out[v * $lanes..].as_mut_ptr();
                                    // SAFETY: `slot` has $block - v·lanes >= lanes elements.
                                    unsafe { $store(slot, $add($load(slot), acc[a][v])) };
                                }
                            }
                        }
                        // Leftover directions two at a time, for the tile's points at once.
                        let whole = len - len % $lanes;
                        for j0 in (0..leftover).step_by(2) {
                            let rows: [*const $elem; 2] = std::array::from_fn(|b| {
                                leftover_rows[(j0 + b).min(leftover - 1) * step..].as_ptr()
                            });
                            let mut acc = [[$zero(); 2]; $mr];
                            let mut k = 0;
                            while k < whole {
                                // SAFETY: k + lanes <= len: inside the panel's columns of each
                                // point and inside each leftover row.
                                let theta =
                                    unsafe { [$load(rows[0].add(k)), $load(rows[1].add(k))] };
                                for a in 0..$mr {
                                    let value = unsafe { $load(points[a].add(k)) };
                                    for b in 0..2 {
                                        acc[a][b] = $fma(value, theta[b], acc[a][b]);
                                    }
                                }
                                k += $lanes;
                            }
                            for a in 0..tile_points {
                                let i = i0 + a;
                                for b in 0..2.min(leftover - j0) {
                                    let slot =
                                        lane_sums[(i * leftover + j0 + b) * $lanes..].as_mut_ptr();
                                    // SAFETY: each (point, direction) owns `lanes` elements.
                                    unsafe { $store(slot, $add($load(slot), acc[a][b])) };
                                    for k in whole..len {
                                        // SAFETY: k < len, as above.
                                        sums[i * count + width + j0 + b] +=
                                            unsafe { *points[a].add(k) * *rows[b].add(k) };
                                    }
                                }
                            }
                        }
                        i0 += $mr;
                    }
                    first += len;
                }
                for (slot, vector) in lane_sums.chunks_exact($lanes).enumerate() {
                    let (i, j) = (slot / leftover, slot % leftover);
                    // SAFETY: `vector` holds `lanes` elements.
                    sums[i * count + width + j] += $reduce(unsafe { $load(vector.as_ptr()) });
                }
                sums
            }
        };
    }

    panel_kernel!(
        avx512_f32,
        "avx512f",
        f32,
        16,
        8,
        3,
        48,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        _mm512_add_ps,
        _mm512_reduce_add_ps
    );
    panel_kernel!(
        avx512_f64,
        "avx512f",
        f64,
        8,
        8,
        3,
        24,
        _mm512_setzero_pd,
        _mm512_loadu_pd,
        _mm512_storeu_pd,
        _mm512_set1_pd,
        _mm512_fmadd_pd,
        _mm512_add_pd,
        _mm512_reduce_add_pd
    );
    panel_kernel!(
        avx2_f32,
        "avx2,fma",
        f32,
        8,
        6,
        2,
        16,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_set1_ps,
        _mm256_fmadd_ps,
        _mm256_add_ps,
        super::super::dot::x86::reduce_add_256_ps
    );
    panel_kernel!(
        avx2_f64,
        "avx2,fma",
        f64,
        4,
        6,
        2,
        8,
        _mm256_setzero_pd,
        _mm256_loadu_pd,
        _mm256_storeu_pd,
        _mm256_set1_pd,
        _mm256_fmadd_pd,
        _mm256_add_pd,
        super::super::dot::x86::reduce_add_256_pd
    );
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::projection::real::tests::{LONG, every_kernel};
    use proptest::prelude::*;

    /// `x · columns` one product at a time, in f64.
    fn naive(x: &[f64], columns: &[f64], dim: usize) -> Vec<f64> {
        let count = columns.len() / dim;
        let mut out = Vec::new();
        for point in x.chunks(dim) {
            for l in 0..count {
                out.push((0..dim).map(|k| point[k] * columns[k * count + l]).sum());
            }
        }
        out
    }

    /// Small integers and quarters: every product and partial sum is exact in f32 and f64, so
    /// every kernel must agree with [`naive`] exactly.
    fn exact_operands(n: usize, count: usize, dim: usize) -> (Vec<f64>, Vec<f64>) {
        let x = (0..n * dim).map(|k| ((k % 17) as f64) - 8.0).collect();
        let columns = (0..dim * count).map(|k| ((k % 5) as f64) * 0.25).collect();
        (x, columns)
    }

    fn narrow(values: &[f64]) -> Vec<f32> {
        values.iter().map(|&v| v as f32).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn matches_the_naive_product(
            n in 1usize..20, count in 1usize..110, dim in 1usize..300, seed in any::<u64>()
        ) {
            let value = |k: usize| (((k as u64 ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f64) / 1e7 - 0.8;
            let x: Vec<f64> = (0..n * dim).map(value).collect();
            let columns: Vec<f64> = (0..dim * count).map(|k| value(k + 7919)).collect();
            let expected = naive(&x, &columns, dim);
            let got = product_columns(&x, &columns, dim);
            prop_assert_eq!(got.len(), n * count);
            for (g, e) in got.iter().zip(&expected) {
                prop_assert!((g - e).abs() <= 1e-12 * (1.0 + e.abs()));
            }
            for (g, e) in product_columns(&narrow(&x), &narrow(&columns), dim).iter().zip(&expected) {
                prop_assert!((f64::from(*g) - e).abs() <= 1e-4 * (1.0 + e.abs()));
            }
        }
    }

    /// Every kernel this processor can run, with edge tiles of points, whole blocks of directions
    /// plus leftovers (50 = 48 + 2 for AVX-512 f32), several panels and a panel shorter than 16 rows.
    #[test]
    fn every_kernel_agrees_with_the_naive_product() {
        for (n, count) in [(13, 50), (9, 48), (3, 7), (17, 101)] {
            let dim = 3 * panel_rows(count, 4) + 5;
            let (x, columns) = exact_operands(n, count, dim);
            let expected = naive(&x, &columns, dim);
            let (x32, columns32) = (narrow(&x), narrow(&columns));
            let range64 = PanelRange {
                x: &x,
                columns: &columns,
                dim,
                count,
                start: 0,
                end: dim,
            };
            let range32 = PanelRange {
                x: &x32,
                columns: &columns32,
                dim,
                count,
                start: 0,
                end: dim,
            };
            let results = every_kernel!(range64, range32);
            for (kernel, got) in results {
                assert_eq!(got, expected, "{kernel}, n = {n}, L = {count}");
            }
        }
    }

    #[test]
    fn long_columns_are_split_across_threads_and_panels() {
        let (n, count) = (5, 50);
        let (x, columns) = exact_operands(n, count, LONG);
        assert_eq!(
            product_columns(&x, &columns, LONG),
            naive(&x, &columns, LONG)
        );
    }
}
