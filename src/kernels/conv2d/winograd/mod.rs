//! 3x3 convolutions at stride 1 by Winograd's minimal filtering F(4x4, 3x3) (Lavin and Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016): each 4x4 block of outputs comes
//! from the 6x6 block of inputs around it with 36 multiplications per pair of channels instead of
//! 144.
//!
//! With `V = Bᵀ d B` the transform of an input tile `d`, `U = G g Gᵀ` that of a kernel `g` and
//! `Y = Aᵀ M A` the output tile (interpolation points 0, ±1, ±2 and infinity), the convolution is
//! `M[ξ] = Σ_c V[ξ, c] · U[ξ, c]` for each of the 36 entries `ξ` of a transformed tile: 36 matrix
//! products `[tiles, C] · [C, Co]`, with the tiles of several images as rows.
//!
//! - forward: transform the input tiles and the kernels, 36 products, transform the output tiles;
//! - backward to the input: the forward pass of the transposed convolution, itself 3x3 at stride 1;
//! - backward to the weights: `dU[ξ] = V[ξ]ᵀ · dM[ξ]` summed over the tiles, with `dM = A dY Aᵀ`,
//!   then `dg = Gᵀ dU G`.
//!
//! The transforms run on channels-last blocks (position, then image, then channel), so each one
//! combines whole runs of contiguous values that the compiler vectorises. Position-major
//! activations ([`crate::kernels::position_major`]) are read and written where they lie; NCHW
//! planes are transposed a chunk of images at a time into a buffer that stays in cache.
//!
//! It takes 36 multiply-adds per tile of 16 outputs where im2col takes 144 (4x fewer) and the
//! tap-by-tap products on a 4x4 plane 100 (2.8x); [`applies`] picks it where it saves at least a
//! third. F(2x2, 3x3) (16 per tile of four, 2.25x fewer than im2col) measured slower on every
//! layer of the CIFAR ResNet-18 where both apply (BENCHMARKS.md, "CPU speed, session 24"). In
//! `f32` its rounding errors are about 10x im2col's: within 3e-5 of the largest output where
//! im2col's are within 2e-6 (tested to 1e-4). The work is cut into chunks of images whose size
//! depends on the shapes alone, each chunk on one thread, and the weight gradient is summed per
//! fixed group of chunks and then across the groups in order, so the results are the same on any
//! number of threads. Benchmark: `cargo bench --bench conv_layers` (BENCHMARKS.md, "CPU speed,
//! session 23" and "session 24").

use std::ops::Range;

use rayon::prelude::*;

mod blocks;

use self::blocks::Blocks;
use super::by_tap::Activation;
use super::{Geometry, sum_in_order};
use crate::kernels::buffers::{Destination, written};
use crate::kernels::products::{Element, product_with};

/// Side of the output tiles.
const TILE: usize = 4;
/// Side of the input tiles (and of the transformed ones) for a 3x3 kernel.
const SPAN: usize = TILE + 2;
/// Entries of a transformed tile: one product each.
const ENTRIES: usize = SPAN * SPAN;
/// Rows (tiles times images) of each chunk's products, about.
const CHUNK_ROWS: usize = 64;
/// Values of a block that the transforms combine at a time, held on the stack.
const STRIP: usize = 64;
/// Fewest input and output channels for NCHW planes: below, the transforms cost about what the
/// products save (at batch 128, 14x14 with 16 channels: forward 2.70 ms image by image, 2.65 ms
/// here, backward to the input 1.48 against 1.64 ms; with 32 channels 4.96 against 3.29 ms and
/// 4.61 against 3.34 ms).
const MIN_CHANNELS: usize = 32;
/// Fewest input and output channels for position-major planes, whose tap-by-tap products already
/// skip the padding (at batch 128, 7x7 with 32 channels: forward 0.90 ms tap by tap, 0.92 ms here;
/// with 64 channels 2.86 against 1.85 ms; 4x4 with 64 channels 0.75 against 0.69 ms).
const MIN_CHANNELS_POSITION_MAJOR: usize = 64;
/// Fewest rows (tiles times images) in the products: below, the transformed kernels (36 values
/// per pair of channels where the kernel has 9, rewritten on every call) cost more memory traffic
/// than the products save, and a single chunk leaves the other threads idle. With F(2x2, 3x3) and
/// no such floor the CIFAR ResNet-18's eval forward at batch 1 took 21–26 ms against 8–10 ms by
/// the direct schemes. With F(4x4, 3x3), 16x16 planes of 64 channels at batch 8 (128 rows) take
/// 0.67 ms against 1.77 ms image by image, 4x4 position-major planes of 128 channels at batch 64
/// (64 rows) 2.05 against 1.50 ms for the input gradient.
const MIN_ROWS: usize = 2 * CHUNK_ROWS;
/// Groups of chunks whose weight gradients are summed separately, whatever the thread count.
const WEIGHT_GROUPS: usize = 16;

/// Whether `g` runs by Winograd's algorithm: a 3x3 kernel at stride 1, padding at most 2, enough
/// channels and rows, and at least a third fewer multiply-adds than the direct scheme, which
/// multiplies every tap (`skips_padding` false, im2col on planes) or only those inside the image
/// (the tap-by-tap products on position-major rows). A 3x3 plane, one tile padded to 6x6, saves a
/// quarter and stays direct (512 channels at batch 128: forward 24.6 ms tap by tap, 44.7 ms here).
pub(super) fn applies(g: &Geometry, skips_padding: bool) -> bool {
    let min_channels = if skips_padding {
        MIN_CHANNELS_POSITION_MAJOR
    } else {
        MIN_CHANNELS
    };
    let shape = g.kernel == [3, 3]
        && g.stride == [1, 1]
        && g.padding.iter().all(|&p| p <= 2)
        && g.channels_in.min(g.channels_out) >= min_channels
        && Tiles::new(g).len() * g.batch >= MIN_ROWS;
    if !shape {
        return false;
    }
    let taps_along = |axis: usize| {
        (0..3)
            .map(|k| g.valid_outputs(axis, k).len())
            .sum::<usize>()
    };
    let direct = if skips_padding {
        taps_along(0) * taps_along(1)
    } else {
        9 * g.positions()
    };
    3 * ENTRIES * Tiles::new(g).len() <= 2 * direct
}

/// The 4x4 output tiles of a convolution.
#[derive(Clone, Copy, Debug)]
struct Tiles {
    /// Tiles along the height and the width.
    count: [usize; 2],
    padding: [usize; 2],
}

impl Tiles {
    fn new(g: &Geometry) -> Self {
        Self {
            count: g.size_out.map(|size| size.div_ceil(TILE)),
            padding: g.padding,
        }
    }

    fn len(&self) -> usize {
        self.count[0] * self.count[1]
    }

    /// Images in each chunk: enough for about [`CHUNK_ROWS`] rows in its products.
    fn images_per_chunk(&self, batch: usize) -> usize {
        CHUNK_ROWS.div_ceil(self.len()).clamp(1, batch.max(1))
    }

    /// The tiles, row by row, with their first output position.
    fn origins(&self) -> impl Iterator<Item = (usize, [usize; 2])> {
        let [rows, columns] = self.count;
        (0..rows * columns)
            .map(move |tile| (tile, [TILE * (tile / columns), TILE * (tile % columns)]))
    }
}

/// `body` compiled for AVX2 and FMA where the processor has them, as the crate is compiled
/// otherwise. The transforms inline into it: their strips then move through 256-bit registers,
/// where the baseline build moves them 128 bits at a time and calls `memcpy` for each copy.
#[inline(always)]
fn vectorised<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        fn with_avx2<R>(body: impl FnOnce() -> R) -> R {
            body()
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the processor has both features.
            return unsafe { with_avx2(body) };
        }
    }
    body()
}

/// `dst[..width] = src[..width]`, a copy of constant length when `width` is a whole strip, which
/// the compiler moves through vector registers instead of calling `memcpy`.
#[inline(always)]
fn copy_strip<T: Copy>(dst: &mut [T], src: &[T], width: usize) {
    if width == STRIP {
        dst[..STRIP].copy_from_slice(&src[..STRIP]);
    } else {
        dst[..width].copy_from_slice(&src[..width]);
    }
}

/// A square grid of `N x N` values, [`STRIP`] lanes each.
type Grid<T, const N: usize> = [[[T; STRIP]; N]; N];

/// `transform` (`I` values to `O`) applied along the columns of `grid` and then along its rows.
#[inline(always)]
fn separable<T: Element, const I: usize, const O: usize>(
    grid: &Grid<T, I>,
    transform: impl Fn([T; I]) -> [T; O],
) -> Grid<T, O> {
    let mut columns = [[[T::default(); STRIP]; I]; O];
    for column in 0..I {
        for lane in 0..STRIP {
            let values = transform(std::array::from_fn(|row| grid[row][column][lane]));
            for (row, value) in values.into_iter().enumerate() {
                columns[row][column][lane] = value;
            }
        }
    }
    let mut out = [[[T::default(); STRIP]; O]; O];
    for (row, line) in columns.iter().enumerate() {
        for lane in 0..STRIP {
            let values = transform(std::array::from_fn(|column| line[column][lane]));
            for (column, value) in values.into_iter().enumerate() {
                out[row][column][lane] = value;
            }
        }
    }
    out
}

/// One axis of `Bᵀ d B`.
#[inline(always)]
fn input_axis<T: Element>([d0, d1, d2, d3, d4, d5]: [T; SPAN]) -> [T; SPAN] {
    let [two, four, five] = [2.0, 4.0, 5.0].map(T::from_real);
    [
        four * d0 - five * d2 + d4,
        d4 + d3 - four * (d1 + d2),
        d4 - d3 + four * (d1 - d2),
        d4 - d2 + two * (d3 - d1),
        d4 - d2 - two * (d3 - d1),
        four * d1 - five * d3 + d5,
    ]
}

/// One axis of `Aᵀ M A`.
#[inline(always)]
fn output_axis<T: Element>([m0, m1, m2, m3, m4, m5]: [T; SPAN]) -> [T; TILE] {
    let [two, four, eight] = [2.0, 4.0, 8.0].map(T::from_real);
    let (sum, difference) = (m1 + m2, m1 - m2);
    let (sum_far, difference_far) = (m3 + m4, m3 - m4);
    [
        m0 + sum + sum_far,
        difference + two * difference_far,
        sum + four * sum_far,
        difference + eight * difference_far + m5,
    ]
}

/// One axis of `A dY Aᵀ`, the adjoint of [`output_axis`].
#[inline(always)]
fn output_gradient_axis<T: Element>([a, b, c, d]: [T; TILE]) -> [T; SPAN] {
    let [two, four, eight] = [2.0, 4.0, 8.0].map(T::from_real);
    let (even_near, odd_near) = (a + c, b + d);
    let (even_far, odd_far) = (a + four * c, two * b + eight * d);
    [
        a,
        even_near + odd_near,
        even_near - odd_near,
        even_far + odd_far,
        even_far - odd_far,
        d,
    ]
}

/// One axis of `G g Gᵀ`.
#[inline(always)]
fn kernel_axis<T: Element>([a, b, c]: [T; 3]) -> [T; SPAN] {
    let [quarter, sixth, twelfth, twenty_fourth] =
        [1.0 / 4.0, 1.0 / 6.0, 1.0 / 12.0, 1.0 / 24.0].map(T::from_real);
    let outer = a + c;
    let far = twenty_fourth * a + sixth * c;
    [
        quarter * a,
        T::default() - sixth * (outer + b),
        sixth * (b - outer),
        far + twelfth * b,
        far - twelfth * b,
        c,
    ]
}

/// One axis of `Gᵀ dU G`, the adjoint of [`kernel_axis`].
#[inline(always)]
fn kernel_gradient_axis<T: Element>([u0, u1, u2, u3, u4, u5]: [T; SPAN]) -> [T; 3] {
    let [quarter, sixth, twelfth, twenty_fourth] =
        [1.0 / 4.0, 1.0 / 6.0, 1.0 / 12.0, 1.0 / 24.0].map(T::from_real);
    let (near, far) = (u1 + u2, u3 + u4);
    [
        quarter * u0 - sixth * near + twenty_fourth * far,
        sixth * (u2 - u1) + twelfth * (u3 - u4),
        sixth * (far - near) + u5,
    ]
}

/// The transformed kernels `U` of `weight` (`[Co, C, 3, 3]`): entry after entry, each a
/// `[C, Co]` matrix.
fn transform_weights<T: Element>(weight: &[T], [channels_out, channels_in]: [usize; 2]) -> Vec<T> {
    let entry_len = channels_in * channels_out;
    // SAFETY: task `c` writes row `c` of every entry, all `Co` values of it.
    unsafe {
        written(ENTRIES * entry_len, |out: *mut T| {
            let out = Destination::of(out);
            (0..channels_in).into_par_iter().for_each(|c| {
                for first in (0..channels_out).step_by(STRIP) {
                    let width = STRIP.min(channels_out - first);
                    let mut grid: Grid<T, 3> = [[[T::default(); STRIP]; 3]; 3];
                    for (tap, lanes) in grid.iter_mut().flatten().enumerate() {
                        for (lane, slot) in lanes[..width].iter_mut().enumerate() {
                            *slot = weight[((first + lane) * channels_in + c) * 9 + tap];
                        }
                    }
                    let transformed = separable(&grid, kernel_axis);
                    for (entry, lanes) in transformed.iter().flatten().enumerate() {
                        std::ptr::copy_nonoverlapping(
                            lanes.as_ptr(),
                            out.at(entry * entry_len + c * channels_out + first),
                            width,
                        );
                    }
                }
            });
        })
    }
}

/// The weight gradient `[Co, C, 3, 3]` from the gradients `dU` of the transformed kernels (laid
/// out as [`transform_weights`] writes `U`).
fn weight_gradient_from<T: Element>(du: &[T], [channels_out, channels_in]: [usize; 2]) -> Vec<T> {
    let entry_len = channels_in * channels_out;
    // SAFETY: task `c` writes the nine taps of input channel `c` of every filter.
    unsafe {
        written(9 * entry_len, |out: *mut T| {
            let out = Destination::of(out);
            (0..channels_in).into_par_iter().for_each(|c| {
                for first in (0..channels_out).step_by(STRIP) {
                    let width = STRIP.min(channels_out - first);
                    let mut grid: Grid<T, SPAN> = [[[T::default(); STRIP]; SPAN]; SPAN];
                    for (entry, lanes) in grid.iter_mut().flatten().enumerate() {
                        lanes[..width].copy_from_slice(
                            &du[entry * entry_len + c * channels_out + first..][..width],
                        );
                    }
                    let taps = separable(&grid, kernel_gradient_axis);
                    for (tap, lanes) in taps.iter().flatten().enumerate() {
                        for (lane, &value) in lanes[..width].iter().enumerate() {
                            out.at(((first + lane) * channels_in + c) * 9 + tap)
                                .write(value);
                        }
                    }
                }
            });
        })
    }
}

/// The chunks of `batch` images for `tiles`.
fn chunks(tiles: &Tiles, batch: usize) -> impl Iterator<Item = Range<usize>> + Clone {
    let chunk = tiles.images_per_chunk(batch);
    (0..batch.div_ceil(chunk)).map(move |index| index * chunk..((index + 1) * chunk).min(batch))
}

/// Reusable buffers of one thread: two operands staged from planes, and their transformed tiles.
struct Scratch<T> {
    staged: [Vec<T>; 2],
    entries: [Vec<T>; 2],
}

impl<T> Default for Scratch<T> {
    fn default() -> Self {
        Self {
            staged: [Vec::new(), Vec::new()],
            entries: [Vec::new(), Vec::new()],
        }
    }
}

/// The chunk `images` of `activation` (`channels` per image on a plane of `size`) as
/// channels-last blocks: where they lie in position-major rows, or staged from NCHW planes into
/// `staging`.
fn chunk_blocks<'a, T: Element>(
    activation: Activation<'a, T>,
    [batch, channels]: [usize; 2],
    size: [usize; 2],
    images: Range<usize>,
    staging: &'a mut Vec<T>,
) -> (&'a [T], Blocks) {
    match activation {
        Activation::Rows(rows) => (rows, Blocks::of_images([batch, channels], size, images)),
        Activation::Planes(planes) => {
            let plane = size[0] * size[1];
            let blocks =
                vectorised(|| blocks::stage(planes, [channels, plane], size, images, staging));
            (staging, blocks)
        }
    }
}

/// The forward pass: `x` is `[B, C, H, W]`, `weight` `[Co, C, 3, 3]`; returns `[B, Co, Ho, Wo]`
/// in the order `x` came in (NCHW planes or position-major rows).
pub(super) fn forward<T: Element>(g: &Geometry, x: Activation<'_, T>, weight: &[T]) -> Vec<T> {
    let tiles = Tiles::new(g);
    let (channels_in, channels_out) = (g.channels_in, g.channels_out);
    let u = transform_weights(weight, [channels_out, channels_in]);
    let chunks: Vec<Range<usize>> = chunks(&tiles, g.batch).collect();
    // SAFETY: the chunks' images tile the batch, and each chunk writes all of its images' outputs.
    unsafe {
        written(g.batch * channels_out * g.positions(), |out: *mut T| {
            let out = Destination::of(out);
            chunks
                .into_par_iter()
                .for_each_init(Scratch::default, |scratch, images| {
                    let Scratch {
                        staged: [staged_in, staged_out],
                        entries: [v, m],
                    } = scratch;
                    let (x_values, x_blocks) = chunk_blocks(
                        x,
                        [g.batch, channels_in],
                        g.size_in,
                        images.clone(),
                        staged_in,
                    );
                    vectorised(|| blocks::transform_input(&tiles, x_values, x_blocks, v));
                    let rows = tiles.len() * images.len();
                    m.resize(ENTRIES * rows * channels_out, T::default());
                    for entry in 0..ENTRIES {
                        // SAFETY: entry `entry` of `v` is [rows, C], of `u` [C, Co] and of `m`
                        // [rows, Co], all row-major.
                        product_with(
                            false,
                            [rows, channels_out, channels_in],
                            (
                                m.as_mut_ptr().add(entry * rows * channels_out),
                                channels_out as isize,
                                1,
                            ),
                            false,
                            (
                                v.as_ptr().add(entry * rows * channels_in),
                                channels_in as isize,
                                1,
                            ),
                            (
                                u.as_ptr().add(entry * channels_in * channels_out),
                                channels_out as isize,
                                1,
                            ),
                        );
                    }
                    match x {
                        Activation::Rows(_) => {
                            let blocks =
                                Blocks::of_images([g.batch, channels_out], g.size_out, images);
                            vectorised(|| blocks::transform_output(&tiles, m, out, blocks));
                        }
                        Activation::Planes(_) => {
                            let len = images.len() * channels_out;
                            staged_out.resize(g.positions() * len, T::default());
                            let blocks = Blocks::packed(g.size_out, len);
                            let staging = Destination::of(staged_out.as_mut_ptr());
                            vectorised(|| blocks::transform_output(&tiles, m, staging, blocks));
                            let plane = g.positions();
                            vectorised(|| {
                                blocks::unstage(staged_out, [channels_out, plane], images, out)
                            });
                        }
                    }
                });
        })
    }
}

/// The gradients with respect to the input (in `dy`'s order) and to the weight (`[Co, C, 3, 3]`),
/// each only when wanted, for the output gradient `dy`.
pub(super) fn backward<T: Element>(
    g: &Geometry,
    x: Activation<'_, T>,
    weight: &[T],
    dy: Activation<'_, T>,
    [want_input, want_weight]: [bool; 2],
) -> (Option<Vec<T>>, Option<Vec<T>>) {
    let dx = want_input.then(|| {
        let transposed = g.transposed().expect("a 3x3 kernel padded by at most 2");
        forward(&transposed, dy, &g.flipped_exchanged(weight))
    });
    let dw = want_weight.then(|| weight_gradient(g, x, dy));
    (dx, dw)
}

/// `dW` for the output gradient `dy`: `dU` summed per group of chunks, the groups added in order,
/// then transformed back to the kernels.
fn weight_gradient<T: Element>(
    g: &Geometry,
    x: Activation<'_, T>,
    dy: Activation<'_, T>,
) -> Vec<T> {
    let tiles = Tiles::new(g);
    let (channels_in, channels_out) = (g.channels_in, g.channels_out);
    let entry_len = channels_in * channels_out;
    let chunks: Vec<Range<usize>> = chunks(&tiles, g.batch).collect();
    let per_group = chunks.len().div_ceil(WEIGHT_GROUPS).max(1);
    let partials: Vec<Vec<T>> = chunks
        .par_chunks(per_group)
        .map(|group| {
            let mut du = vec![T::default(); ENTRIES * entry_len];
            let Scratch {
                staged: [staged_x, staged_dy],
                entries: [v, dm],
            } = &mut Scratch::default();
            for (index, images) in group.iter().enumerate() {
                let (x_values, x_blocks) = chunk_blocks(
                    x,
                    [g.batch, channels_in],
                    g.size_in,
                    images.clone(),
                    staged_x,
                );
                vectorised(|| blocks::transform_input(&tiles, x_values, x_blocks, v));
                let (dy_values, dy_blocks) = chunk_blocks(
                    dy,
                    [g.batch, channels_out],
                    g.size_out,
                    images.clone(),
                    staged_dy,
                );
                vectorised(|| blocks::transform_output_gradient(&tiles, dy_values, dy_blocks, dm));
                let rows = tiles.len() * images.len();
                for entry in 0..ENTRIES {
                    // SAFETY: entry `entry` of `v` is [rows, C] (read as its transpose), of `dm`
                    // [rows, Co] and of `du` [C, Co], all row-major.
                    unsafe {
                        product_with(
                            false,
                            [channels_in, channels_out, rows],
                            (
                                du.as_mut_ptr().add(entry * entry_len),
                                channels_out as isize,
                                1,
                            ),
                            index > 0,
                            (
                                v.as_ptr().add(entry * rows * channels_in),
                                1,
                                channels_in as isize,
                            ),
                            (
                                dm.as_ptr().add(entry * rows * channels_out),
                                channels_out as isize,
                                1,
                            ),
                        );
                    }
                }
            }
            du
        })
        .collect();
    let du = sum_in_order(partials, ENTRIES * entry_len);
    weight_gradient_from(&du, [channels_out, channels_in])
}

#[cfg(test)]
mod tests {
    use burn::tensor::ops::ConvOptions;
    use proptest::prelude::*;

    use super::super::by_image;
    use super::*;

    fn geometry(x: [usize; 4], channels_out: usize, padding: [usize; 2]) -> Option<Geometry> {
        let options = ConvOptions::new([1, 1], padding, [1, 1], 1);
        Geometry::new(&x, &[channels_out, x[1], 3, 3], &options)
    }

    /// NCHW `planes` of `[batch, channels, H, W]` as position-major rows `[H·W, batch, channels]`.
    fn rows_of(planes: &[f64], [batch, channels]: [usize; 2], plane: usize) -> Vec<f64> {
        let mut rows = vec![0.0; planes.len()];
        for (index, &value) in planes.iter().enumerate() {
            let (image_channel, position) = (index / plane, index % plane);
            rows[position * batch * channels + image_channel] = value;
        }
        rows
    }

    fn assert_close(ours: &[f64], reference: &[f64], what: &str) {
        assert_eq!(ours.len(), reference.len(), "{what}");
        for (index, (a, b)) in ours.iter().zip(reference).enumerate() {
            assert!((a - b).abs() < 1e-10, "{what}, {index}: {a} vs {b}");
        }
    }

    /// Output and both gradients against im2col, from NCHW planes and from position-major rows.
    fn check_against_im2col(g: &Geometry) {
        let [x, weight, dy] = crate::kernels::smooth_operands([
            g.batch * g.channels_in * g.plane_in(),
            g.channels_out * g.patch_len(),
            g.batch * g.channels_out * g.positions(),
        ]);
        let forward_reference = by_image::forward(g, &x, &weight);
        let (dx_reference, dw_reference) = by_image::backward(g, &x, &weight, &dy, [true, true]);
        let (dx_reference, dw_reference) = (dx_reference.unwrap(), dw_reference.unwrap());

        let planes = Activation::Planes;
        assert_close(
            &forward(g, planes(&x), &weight),
            &forward_reference,
            &format!("{g:?} forward"),
        );
        let (dx, dw) = backward(g, planes(&x), &weight, planes(&dy), [true, true]);
        assert_close(
            &dx.unwrap(),
            &dx_reference,
            &format!("{g:?} input gradient"),
        );
        assert_close(
            &dw.unwrap(),
            &dw_reference,
            &format!("{g:?} weight gradient"),
        );

        let [x_rows, dy_rows] = [
            (&x, g.channels_in, g.plane_in()),
            (&dy, g.channels_out, g.positions()),
        ]
        .map(|(values, channels, plane)| rows_of(values, [g.batch, channels], plane));
        let rows = Activation::Rows;
        let expected_rows = rows_of(&forward_reference, [g.batch, g.channels_out], g.positions());
        assert_close(
            &forward(g, rows(&x_rows), &weight),
            &expected_rows,
            &format!("{g:?} forward, rows"),
        );
        let (dx, dw) = backward(g, rows(&x_rows), &weight, rows(&dy_rows), [true, false]);
        let dx_expected = rows_of(&dx_reference, [g.batch, g.channels_in], g.plane_in());
        assert_close(
            &dx.unwrap(),
            &dx_expected,
            &format!("{g:?} input gradient, rows"),
        );
        assert!(dw.is_none());
        let (dx, dw) = backward(g, rows(&x_rows), &weight, rows(&dy_rows), [false, true]);
        assert!(dx.is_none());
        assert_close(
            &dw.unwrap(),
            &dw_reference,
            &format!("{g:?} weight gradient, rows"),
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn matches_im2col_on_random_shapes(
            batch in 1usize..4,
            channels_in in 1usize..5,
            channels_out in 1usize..5,
            height in 1usize..10,
            width in 1usize..10,
            padding in (0usize..3, 0usize..3),
        ) {
            let g = geometry([batch, channels_in, height, width], channels_out, [padding.0, padding.1]);
            prop_assume!(g.is_some());
            check_against_im2col(&g.unwrap());
        }
    }

    #[test]
    fn matches_im2col_over_many_chunks_and_groups() {
        // 40 images of 2x2 tiles: 16 images a chunk, three chunks; 200 images of 4x4 tiles: four
        // a chunk, 50 chunks in groups of four; channels wider than a strip.
        for (x, channels_out, padding) in [
            ([40, 3, 6, 5], 2, [1, 1]),
            ([200, 2, 16, 16], 3, [1, 1]),
            ([3, 70, 4, 4], 67, [1, 0]),
        ] {
            check_against_im2col(&geometry(x, channels_out, padding).unwrap());
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let g = geometry([2, 2, 5, 4], 3, [1, 2]).unwrap();
        let [x, w, probe] = crate::kernels::smooth_operands([
            g.batch * g.channels_in * g.plane_in(),
            g.channels_out * g.patch_len(),
            g.batch * g.channels_out * g.positions(),
        ]);
        let objective = |[x, w]: &[Vec<f64>; 2]| -> f64 {
            let output = forward(&g, Activation::Planes(x), w);
            output.iter().zip(&probe).map(|(o, p)| o * p).sum()
        };
        let planes = Activation::Planes;
        let (dx, dw) = backward(&g, planes(&x), &w, planes(&probe), [true, true]);
        crate::kernels::assert_central_differences(
            [x, w],
            &[dx.unwrap(), dw.unwrap()],
            objective,
            1e-7,
            "winograd",
        );
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let g = geometry([24, 32, 8, 8], 48, [1, 1]).unwrap();
        let [x, w, dy] = crate::kernels::smooth_operands([
            g.batch * g.channels_in * g.plane_in(),
            g.channels_out * g.patch_len(),
            g.batch * g.channels_out * g.positions(),
        ])
        .map(|values| values.into_iter().map(|v| v as f32).collect::<Vec<_>>());
        let run = |threads: usize| {
            crate::kernels::on_threads(threads, || {
                let planes = Activation::Planes;
                (
                    forward(&g, planes(&x), &w),
                    backward(&g, planes(&x), &w, planes(&dy), [true, true]),
                )
            })
        };
        let (one, four) = (run(1), run(4));
        assert!(
            one == four,
            "the results differ between one thread and four"
        );
    }

    #[test]
    fn applies_where_it_saves_a_third_of_the_products() {
        let batch =
            |images, size, channels| geometry([images, channels, size, size], channels, [1, 1]);
        let square = |size, channels| batch(512, size, channels).unwrap();
        // Image by image (im2col multiplies all 9 taps): from 4x4 planes up, from 32 channels; a
        // 2x2 plane padded to one 6x6 tile saves nothing.
        assert!(applies(&square(8, 64), false));
        assert!(applies(&square(4, 32), false));
        assert!(!applies(&square(2, 512), false));
        assert!(!applies(&square(8, 16), false));
        // Enough rows: 128 tiles in the whole batch.
        assert!(applies(&batch(8, 16, 64).unwrap(), false));
        assert!(!applies(&batch(7, 16, 64).unwrap(), false));
        assert!(!applies(&batch(1, 16, 64).unwrap(), false));
        assert!(applies(&batch(128, 4, 256).unwrap(), true));
        assert!(!applies(&batch(64, 4, 256).unwrap(), true));
        // Tap by tap (only the taps inside the image): 4x4, 6x6 and 7x7 planes from 64 channels,
        // not 2x2, 3x3 or 5x5 ones.
        assert!(applies(&square(4, 256), true));
        assert!(applies(&square(4, 64), true));
        assert!(applies(&square(6, 128), true));
        assert!(applies(&square(7, 128), true));
        assert!(!applies(&square(7, 32), true));
        assert!(!applies(&square(2, 512), true));
        assert!(!applies(&square(3, 512), true));
        assert!(!applies(&square(5, 128), true));
        // Other kernels and strides keep the direct schemes.
        let options = ConvOptions::new([2, 2], [1, 1], [1, 1], 1);
        let strided = Geometry::new(&[512, 64, 8, 8], &[64, 64, 3, 3], &options).unwrap();
        assert!(!applies(&strided, false));
        let options = ConvOptions::new([1, 1], [2, 2], [1, 1], 1);
        let five = Geometry::new(&[512, 64, 8, 8], &[64, 64, 5, 5], &options).unwrap();
        assert!(!applies(&five, false));
    }

    /// Single precision: errors from the exact convolution of the same `f32` operands within
    /// 1e-4 of the largest value (F(4x4, 3x3) rounds its transforms: about 10x im2col's error).
    #[test]
    fn single_precision_stays_close_to_exact() {
        let g = geometry([8, 64, 8, 8], 64, [1, 1]).unwrap();
        let [x, w, dy] = crate::kernels::smooth_operands([
            g.batch * g.channels_in * g.plane_in(),
            g.channels_out * g.patch_len(),
            g.batch * g.channels_out * g.positions(),
        ])
        .map(|values| values.into_iter().map(|v| v as f32).collect::<Vec<_>>());
        let wide = |values: &[f32]| values.iter().map(|&v| f64::from(v)).collect::<Vec<_>>();
        let (x64, w64, dy64) = (wide(&x), wide(&w), wide(&dy));
        let planes = Activation::Planes;
        let (dx, dw) = backward(&g, planes(&x), &w, planes(&dy), [true, true]);
        let (dx_im2col, dw_im2col) = by_image::backward(&g, &x, &w, &dy, [true, true]);
        let (dx_exact, dw_exact) = by_image::backward(&g, &x64, &w64, &dy64, [true, true]);
        let largest_error = |ours: &[f32], exact: &[f64]| {
            ours.iter()
                .zip(exact)
                .fold(0f64, |max, (&a, &b)| max.max((f64::from(a) - b).abs()))
        };
        for (ours, im2col, exact, what) in [
            (
                forward(&g, planes(&x), &w),
                by_image::forward(&g, &x, &w),
                by_image::forward(&g, &x64, &w64),
                "forward",
            ),
            (
                dx.unwrap(),
                dx_im2col.unwrap(),
                dx_exact.unwrap(),
                "input gradient",
            ),
            (
                dw.unwrap(),
                dw_im2col.unwrap(),
                dw_exact.unwrap(),
                "weight gradient",
            ),
        ] {
            let scale = exact.iter().fold(0f64, |max, v| max.max(v.abs()));
            let (error, im2col_error) =
                (largest_error(&ours, &exact), largest_error(&im2col, &exact));
            // Measured: forward 4.5e-5 (im2col 2.3e-6) of 1.56, input gradient 3.1e-5 (2.3e-6)
            // of 1.36, weight gradient 3.7e-4 (6.7e-5) of 257.
            assert!(
                error <= 1e-4 * scale,
                "{what}: largest error {error:e} (im2col {im2col_error:e}) of {scale:e}"
            );
        }
    }
}
