//! Convolutions with small output planes (the 2x2 and 4x4 layers of a CIFAR network), kernel tap
//! by kernel tap on position-major operands.
//!
//! With the batch laid out as `[positions, images, channels]`, the output rows of one output row
//! (or a whole plane) that a kernel tap `(i, j)` reaches from inside the image are contiguous, and so
//! are the input rows they read. Each such run is one product with the tap's `[C, Co]` weights,
//! accumulated into the output: `out[rows, Co] += x[rows', C] · W[:, :, i, j]ᵀ`. Nothing is copied
//! into patches, and the products skip the padding, which im2col would multiply by: on a 2x2 plane a
//! 3x3 kernel reaches the image with 4 of its 9 taps per position (44 % of im2col's work), on a 4x4
//! plane 69 %. The products have `images · run` rows and the full channel counts as the other two
//! sizes, large enough for `gemm`'s micro-kernels even when a plane has 4 positions. The weights
//! are reordered once per call so that each tap's matrix has contiguous rows in the order `gemm`
//! packs it (`[C, taps, Co]` forward, `[Co, taps, C]` for the input gradient): read in place, one
//! value every `kh·kw`, each tap's packing streamed the whole weight tensor (the eval forward of
//! the CIFAR ResNet-18 at batch 64: 137–144 ms before, 111–125 ms after, BENCHMARKS.md, session 18).
//!
//! The output leaves in that order (a position-major view, [`crate::kernels::position_major`]), an
//! input or output gradient that arrives so is read as it lies, and the input gradient goes back
//! stored as the input came: between consecutive small-plane layers nothing is transposed.
//!
//! The backward passes reuse the same runs: the input gradient adds `dy[rows, Co] · W` onto the
//! input rows, the weight gradient of a tap adds `dy[rows, Co]ᵀ · x[rows', C]`. Every run is added
//! in the same order whatever the thread count (`gemm` splits rows and columns, never the shared
//! dimension), so the results are reproducible. Where one output row's product is too small for
//! `gemm` to split (a width-16 network's 7x7 to 2x2 layers), the runs are cut to one output row
//! each and spread over the threads by the rows they write (the weight gradient by taps), each
//! row's runs in the same order, so that such layers do not run on one thread.

use std::borrow::Cow;

use rayon::prelude::*;

use super::Geometry;
use crate::kernels::buffers::{Destination, zeroed_in_parallel};
use crate::kernels::products::{Element, PARALLEL_MACS, product, product_with};

/// Where each position of a plane lies in a position-major buffer: grouped by its phase modulo the
/// stride first, then by its place within that phase. Positions one stride apart are then adjacent,
/// so the positions a tap reads along an output row are contiguous at any stride.
#[derive(Clone, Copy, Debug)]
struct PhaseLayout {
    size: [usize; 2],
    stride: [usize; 2],
    /// Rows and columns of each phase.
    quotient: [usize; 2],
}

impl PhaseLayout {
    fn new(size: [usize; 2], stride: [usize; 2]) -> Self {
        let quotient = [size[0].div_ceil(stride[0]), size[1].div_ceil(stride[1])];
        Self {
            size,
            stride,
            quotient,
        }
    }

    /// Positions of the buffer (the plane's, and the unused ones of phases that end early).
    fn slots(&self) -> usize {
        self.stride[0] * self.stride[1] * self.quotient[0] * self.quotient[1]
    }

    /// The slot of position `(h, w)`.
    fn slot(&self, h: usize, w: usize) -> usize {
        let [[sh, sw], [qh, qw]] = [self.stride, self.quotient];
        let phase = (h % sh) * sw + w % sw;
        (phase * qh + h / sh) * qw + w / sw
    }

    /// The position held in `slot`, if it is inside the plane.
    fn position(&self, slot: usize) -> Option<[usize; 2]> {
        let [[sh, sw], [qh, qw]] = [self.stride, self.quotient];
        let phase = slot / (qh * qw);
        let h = (slot / qw % qh) * sh + phase / sw;
        let w = (slot % qw) * sw + phase % sw;
        (h < self.size[0] && w < self.size[1]).then_some([h, w])
    }
}

/// Output positions `out_position..out_position + positions` that kernel tap `tap` computes from
/// the input slots `in_position..in_position + positions` (one product).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    tap: usize,
    in_position: usize,
    out_position: usize,
    positions: usize,
}

/// Every run of `g` with the input in `layout`, tap by tap: one per output row, or one for the
/// whole plane when the tap reads whole rows of its phase (the centre column of a same-size
/// convolution, a strided 1x1 shortcut).
fn runs(g: &Geometry, layout: &PhaseLayout) -> Vec<Run> {
    let [kh, kw] = g.kernel;
    let out_w = g.size_out[1];
    let mut runs = Vec::new();
    for i in 0..kh {
        let rows = g.valid_outputs(0, i);
        for j in 0..kw {
            let cols = g.valid_outputs(1, j);
            if rows.is_empty() || cols.is_empty() {
                continue;
            }
            let tap = i * kw + j;
            let first_column = cols.start * g.stride[1] + j - g.padding[1];
            let in_slot =
                |oh: usize| layout.slot(oh * g.stride[0] + i - g.padding[0], first_column);
            let whole_rows =
                cols.len() == out_w && out_w == layout.quotient[1] && first_column < g.stride[1];
            if whole_rows {
                runs.push(Run {
                    tap,
                    in_position: in_slot(rows.start),
                    out_position: rows.start * out_w,
                    positions: rows.len() * out_w,
                });
            } else {
                runs.extend(rows.clone().map(|oh| Run {
                    tap,
                    in_position: in_slot(oh),
                    out_position: oh * out_w + cols.start,
                    positions: cols.len(),
                }));
            }
        }
    }
    runs
}

/// How a convolution's products share the threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spread {
    /// One product after the other, each split across the threads by `gemm` when it is large.
    InsideProducts,
    /// Products cut to one output row each and run on one thread each, the rows of the output
    /// (forward), of the input gradient (backward) or the taps (weight gradient) at once.
    AcrossRows,
}

impl Spread {
    /// Across rows when a product of one output row is too small for `gemm` to split (a
    /// width-16 network's `[7·128, 32] × [32, 32]`): without it such a layer runs on one thread.
    /// A function of the shapes alone, so the results do not depend on the thread count.
    fn of(g: &Geometry) -> Self {
        if g.size_out[1] * g.batch * g.channels_in * g.channels_out < PARALLEL_MACS {
            Self::AcrossRows
        } else {
            Self::InsideProducts
        }
    }
}

/// `runs` cut so that none spans more than one output row: a whole-plane run (whose input slots
/// advance by one phase row per output row) becomes one run per row. Each value is then the same
/// sum in the same order, the products only have fewer rows.
fn row_pieces(runs: &[Run], out_width: usize) -> Vec<Run> {
    runs.iter()
        .flat_map(|&run| {
            let piece = run.positions.min(out_width);
            (0..run.positions / piece).map(move |row| Run {
                in_position: run.in_position + row * piece,
                out_position: run.out_position + row * piece,
                positions: piece,
                ..run
            })
        })
        .collect()
}

/// Parts each chunk of [`by_chunks`] is cut into: a 7x7 layer spread by output rows has 7 chunks,
/// and on two threads the last of them would run alone.
const CHUNK_PARTS: usize = 2;

/// A buffer of `total_rows` rows of `row_len` values, the sum of every run's product over the
/// rows it writes: the rows are cut into chunks of `chunk_rows` rows, `chunk_of` names the one
/// chunk a run writes and `rows_of` the rows it writes there. Each chunk is cut into
/// [`CHUNK_PARTS`] parts of consecutive rows; the parts run in parallel, each setting the rows it
/// owns to zero and then applying the runs of its chunk in their order to them: `apply(run,
/// rows, buffer)` with `rows` counted from the run's first. A row is the same sum in the same
/// order however the rows are cut.
fn by_chunks<T: Element>(
    [total_rows, chunk_rows, row_len]: [usize; 3],
    runs: &[Run],
    chunk_of: impl Fn(&Run) -> usize,
    rows_of: impl Fn(&Run) -> std::ops::Range<usize>,
    apply: impl Fn(&Run, std::ops::Range<usize>, Destination<T>) + Sync,
) -> Vec<T> {
    let chunk_rows = chunk_rows.max(1);
    let chunks = total_rows.div_ceil(chunk_rows);
    let mut groups = vec![Vec::new(); chunks];
    for run in runs {
        groups[chunk_of(run)].push((*run, rows_of(run)));
    }
    let len = total_rows * row_len;
    let mut buffer = Vec::with_capacity(len);
    let destination = Destination::of(buffer.as_mut_ptr());
    (0..chunks * CHUNK_PARTS).into_par_iter().for_each(|task| {
        let (chunk, part) = (task / CHUNK_PARTS, task % CHUNK_PARTS);
        let first = chunk * chunk_rows;
        let owned = (first + part * chunk_rows / CHUNK_PARTS).min(total_rows)
            ..(first + (part + 1) * chunk_rows / CHUNK_PARTS).min(total_rows);
        // SAFETY: the rows this task owns lie in the buffer's capacity, and no other task
        // touches them.
        unsafe {
            std::ptr::write_bytes(
                destination.at(owned.start * row_len),
                0,
                owned.len() * row_len,
            );
        }
        for (run, rows) in &groups[chunk] {
            let (start, end) = (rows.start.max(owned.start), rows.end.min(owned.end));
            if start < end {
                apply(run, start - rows.start..end - rows.start, destination);
            }
        }
    });
    // SAFETY: the parts' rows cover all `total_rows` rows, and each part zeroed its own.
    unsafe { buffer.set_len(len) };
    buffer
}

/// `planes` (`[images, channels, H, W]`, NCHW) as `[slots, images, channels]` in `layout`.
fn to_position_major<T: Element>(
    planes: &[T],
    [images, channels]: [usize; 2],
    layout: &PhaseLayout,
) -> Vec<T> {
    let (plane, width) = (layout.size[0] * layout.size[1], layout.size[1]);
    let row = images * channels;
    zeroed_in_parallel(layout.slots() * row, row, |slot, block| {
        if let Some([h, w]) = layout.position(slot) {
            let position = h * width + w;
            for (index, value) in block.iter_mut().enumerate() {
                *value = planes[index * plane + position];
            }
        }
    })
}

/// `rows` (`[slots, images, channels]` in `layout`) back as NCHW planes.
fn from_position_major<T: Element>(
    rows: &[T],
    [images, channels]: [usize; 2],
    layout: &PhaseLayout,
) -> Vec<T> {
    let [height, width] = layout.size;
    let plane = height * width;
    zeroed_in_parallel(
        images * channels * plane,
        channels * plane,
        |image, block| {
            for h in 0..height {
                for w in 0..width {
                    let slot = layout.slot(h, w);
                    let row = &rows[(slot * images + image) * channels..][..channels];
                    for (channel, &value) in row.iter().enumerate() {
                        block[channel * plane + h * width + w] = value;
                    }
                }
            }
        },
    )
}

/// The layouts of the input and of the output of `g`.
fn layouts(g: &Geometry) -> [PhaseLayout; 2] {
    [
        PhaseLayout::new(g.size_in, g.stride),
        PhaseLayout::new(g.size_out, [1, 1]),
    ]
}

/// `weight` (`[Co, C, kh·kw]`) as `[Co, kh·kw, C]`: each tap's `[Co, C]` weights then lie in rows
/// of `C` contiguous values (`kh·kw·C` apart) instead of one value every `kh·kw`, so `gemm` packs
/// them from whole cache lines instead of gathering them from the whole tensor for every tap.
/// Only the layout changes, not a value. One pass over the weights per call; a 1x1 kernel is
/// already in that order.
fn taps_before_channels<T: Element>(weight: &[T], channels_in: usize, taps: usize) -> Cow<'_, [T]> {
    if taps == 1 {
        return Cow::Borrowed(weight);
    }
    let mut reordered = vec![T::default(); weight.len()];
    reordered
        .par_chunks_mut(taps * channels_in)
        .zip(weight.par_chunks(channels_in * taps))
        .for_each(|(rows, filter)| {
            for (tap, row) in rows.chunks_mut(channels_in).enumerate() {
                for (slot, &value) in row.iter_mut().zip(filter[tap..].iter().step_by(taps)) {
                    *slot = value;
                }
            }
        });
    Cow::Owned(reordered)
}

/// Input channels the reordering of [`channels_then_taps`] reads together (`IN_BLOCK · taps`
/// contiguous values of each filter).
const IN_BLOCK: usize = 8;

/// `weight` (`[Co, C, kh·kw]`) as `[C, kh·kw, Co]`: each tap's weights then form a `[C, Co]`
/// matrix whose rows are `Co` contiguous values, the order `gemm` packs the forward product's
/// weights in. Only the layout changes, not a value.
fn channels_then_taps<T: Element>(
    weight: &[T],
    [channels_out, channels_in]: [usize; 2],
    taps: usize,
) -> Vec<T> {
    let mut reordered = vec![T::default(); weight.len()];
    reordered
        .par_chunks_mut(IN_BLOCK * taps * channels_out)
        .enumerate()
        .for_each(|(block, rows)| {
            let first = block * IN_BLOCK;
            let span = rows.len() / channels_out;
            for (o, filter) in weight.chunks(channels_in * taps).enumerate() {
                for (index, &value) in filter[first * taps..][..span].iter().enumerate() {
                    rows[index * channels_out + o] = value;
                }
            }
        });
    reordered
}

/// An activation `[B, C, H, W]` as it arrives: NCHW planes, or position-major rows
/// (`[H·W, B, C]`, the order this scheme computes in and hands on).
#[derive(Clone, Copy, Debug)]
pub(super) enum Activation<'a, T> {
    Planes(&'a [T]),
    Rows(&'a [T]),
}

impl<'a, T: Element> Activation<'a, T> {
    /// The values in the slots of `layout`: position-major rows at stride 1 as they are, a copy
    /// of whole rows into the phases otherwise, a transposition of NCHW planes.
    fn in_slots(self, [images, channels]: [usize; 2], layout: &PhaseLayout) -> Cow<'a, [T]> {
        let row = images * channels;
        match self {
            Self::Planes(planes) => {
                Cow::Owned(to_position_major(planes, [images, channels], layout))
            }
            Self::Rows(rows) if layout.stride == [1, 1] => Cow::Borrowed(rows),
            Self::Rows(rows) => {
                let width = layout.size[1];
                Cow::Owned(zeroed_in_parallel(
                    layout.slots() * row,
                    row,
                    |slot, block| {
                        if let Some([h, w]) = layout.position(slot) {
                            block.copy_from_slice(&rows[(h * width + w) * row..][..row]);
                        }
                    },
                ))
            }
        }
    }

    /// `slots` (in `layout`) stored in this activation's order.
    fn store_like(
        self,
        slots: Vec<T>,
        [images, channels]: [usize; 2],
        layout: &PhaseLayout,
    ) -> Vec<T> {
        let row = images * channels;
        match self {
            Self::Planes(_) => from_position_major(&slots, [images, channels], layout),
            Self::Rows(_) if layout.stride == [1, 1] => slots,
            Self::Rows(_) => {
                let [height, width] = layout.size;
                zeroed_in_parallel(height * width * row, row, |position, block| {
                    let slot = layout.slot(position / width, position % width);
                    block.copy_from_slice(&slots[slot * row..][..row]);
                })
            }
        }
    }
}

/// [`product`] as `spread` runs it: split by `gemm` when large enough, or on the calling thread.
///
/// # Safety
/// As for [`product`].
unsafe fn spread_product<T: Element>(
    spread: Spread,
    dims: [usize; 3],
    dst: (*mut T, isize, isize),
    lhs: (*const T, isize, isize),
    rhs: (*const T, isize, isize),
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match spread {
            Spread::InsideProducts => product(dims, dst, true, lhs, rhs),
            Spread::AcrossRows => product_with(false, dims, dst, true, lhs, rhs),
        }
    }
}

/// The forward pass: `x` is `[B, C, H, W]`, `weight` `[Co, C, kh, kw]`; returns `[B, Co, Ho, Wo]`
/// as position-major rows (`[Ho·Wo, B, Co]`).
pub(super) fn forward<T: Element>(g: &Geometry, x: Activation<'_, T>, weight: &[T]) -> Vec<T> {
    forward_spread(g, x, weight, Spread::of(g))
}

fn forward_spread<T: Element>(
    g: &Geometry,
    x: Activation<'_, T>,
    weight: &[T],
    spread: Spread,
) -> Vec<T> {
    let (b, c, co) = (g.batch, g.channels_in, g.channels_out);
    let taps = g.kernel[0] * g.kernel[1];
    let [in_layout, _] = layouts(g);
    let x_rows = x.in_slots([b, c], &in_layout);
    let weight = channels_then_taps(weight, [co, c], taps);
    let runs = runs(g, &in_layout);
    // The rows `rows` (counted from the run's first) of a run's product.
    let add_run = |run: &Run, rows: std::ops::Range<usize>, out: Destination<T>| {
        // SAFETY: the run's output rows [positions·B, Co] and input rows [positions·B, C] lie in
        // their position-major buffers (the runs stay inside both planes), and `rows` inside
        // them; the tap's weights are read as [C, Co] with strides (taps·Co, 1) inside the
        // `[C, taps, Co]` weights. The caller gives each of these output rows to one task.
        unsafe {
            spread_product(
                spread,
                [rows.len(), co, c],
                (
                    out.at((run.out_position * b + rows.start) * co),
                    co as isize,
                    1,
                ),
                (
                    x_rows[(run.in_position * b + rows.start) * c..].as_ptr(),
                    c as isize,
                    1,
                ),
                (weight[run.tap * co..].as_ptr(), (taps * co) as isize, 1),
            );
        }
    };
    match spread {
        Spread::InsideProducts => {
            let mut out_rows = vec![T::default(); g.positions() * b * co];
            let out = Destination::of(out_rows.as_mut_ptr());
            for run in &runs {
                add_run(run, 0..run.positions * b, out);
            }
            out_rows
        }
        Spread::AcrossRows => {
            let width = g.size_out[1];
            by_chunks(
                [g.positions() * b, width * b, co],
                &row_pieces(&runs, width),
                |run| run.out_position / width,
                |run| run.out_position * b..(run.out_position + run.positions) * b,
                add_run,
            )
        }
    }
}

/// The gradients with respect to the input (stored in `x`'s order) and to the weight, each only
/// when wanted, for the output gradient `dy` (`[B, Co, Ho, Wo]`).
pub(super) fn backward<T: Element>(
    g: &Geometry,
    x: Activation<'_, T>,
    weight: &[T],
    dy: Activation<'_, T>,
    wanted: [bool; 2],
) -> (Option<Vec<T>>, Option<Vec<T>>) {
    backward_spread(g, x, weight, dy, wanted, Spread::of(g))
}

fn backward_spread<T: Element>(
    g: &Geometry,
    x: Activation<'_, T>,
    weight: &[T],
    dy: Activation<'_, T>,
    [want_input, want_weight]: [bool; 2],
    spread: Spread,
) -> (Option<Vec<T>>, Option<Vec<T>>) {
    let (b, c, co) = (g.batch, g.channels_in, g.channels_out);
    let taps = g.kernel[0] * g.kernel[1];
    let [in_layout, out_layout] = layouts(g);
    let runs = runs(g, &in_layout);
    let dy_rows = dy.in_slots([b, co], &out_layout);
    let dx = want_input.then(|| {
        let weight = taps_before_channels(weight, c, taps);
        let add_run = |run: &Run, rows: std::ops::Range<usize>, dx: Destination<T>| {
            // SAFETY: as in `forward`, with the roles of input and output rows exchanged and the
            // tap's weights read as [Co, C] (strides taps·C, 1).
            unsafe {
                spread_product(
                    spread,
                    [rows.len(), c, co],
                    (dx.at((run.in_position * b + rows.start) * c), c as isize, 1),
                    (
                        dy_rows[(run.out_position * b + rows.start) * co..].as_ptr(),
                        co as isize,
                        1,
                    ),
                    (weight[run.tap * c..].as_ptr(), (taps * c) as isize, 1),
                );
            }
        };
        let dx_rows = match spread {
            Spread::InsideProducts => {
                let mut dx_rows = vec![T::default(); in_layout.slots() * b * c];
                let dx = Destination::of(dx_rows.as_mut_ptr());
                for run in &runs {
                    add_run(run, 0..run.positions * b, dx);
                }
                dx_rows
            }
            Spread::AcrossRows => {
                // A run of one output row reads, and so writes back, slots of one phase row.
                let phase_row = in_layout.quotient[1];
                by_chunks(
                    [in_layout.slots() * b, phase_row * b, c],
                    &row_pieces(&runs, g.size_out[1]),
                    |run| run.in_position / phase_row,
                    |run| run.in_position * b..(run.in_position + run.positions) * b,
                    add_run,
                )
            }
        };
        x.store_like(dx_rows, [b, c], &in_layout)
    });
    let dw = want_weight.then(|| {
        let x_rows = x.in_slots([b, c], &in_layout);
        // Rows `co_rows` of one tap's gradient, [Co, C] with strides `(co_stride, c_stride)`
        // from `dw`.
        let add_run = |run: &Run,
                       co_rows: std::ops::Range<usize>,
                       dw: *mut T,
                       (co_stride, c_stride): (isize, isize)| {
            // SAFETY: `dw` covers the tap's [Co, C] gradient at those strides and `co_rows` lie
            // in it; the run's output-gradient rows are read transposed as [Co, rows] and its
            // input rows as [rows, C], both inside their position-major buffers.
            unsafe {
                spread_product(
                    spread,
                    [co_rows.len(), c, run.positions * b],
                    (
                        dw.wrapping_offset(co_rows.start as isize * co_stride),
                        co_stride,
                        c_stride,
                    ),
                    (
                        dy_rows[run.out_position * b * co + co_rows.start..].as_ptr(),
                        1,
                        co as isize,
                    ),
                    (x_rows[run.in_position * b * c..].as_ptr(), c as isize, 1),
                );
            }
        };
        let mut dw = vec![T::default(); co * c * taps];
        match spread {
            Spread::InsideProducts => {
                for run in &runs {
                    let strides = ((c * taps) as isize, taps as isize);
                    add_run(run, 0..co, dw[run.tap..].as_mut_ptr(), strides);
                }
            }
            Spread::AcrossRows => {
                // The taps at once, each into its own [Co, C] block, then interleaved.
                let by_tap = by_chunks(
                    [taps * co, co, c],
                    &runs,
                    |run| run.tap,
                    |run| run.tap * co..(run.tap + 1) * co,
                    |run, co_rows, blocks| {
                        add_run(run, co_rows, blocks.at(run.tap * co * c), (c as isize, 1));
                    },
                );
                for (tap, block) in by_tap.chunks(co * c).enumerate() {
                    for (value, &gradient) in dw[tap..].iter_mut().step_by(taps).zip(block) {
                        *value = gradient;
                    }
                }
            }
        }
        dw
    });
    (dx, dw)
}

/// Position-major rows (`[H·W, B, C]`) as NCHW planes.
#[cfg(test)]
pub(super) fn rows_to_planes<T: Element>(
    rows: &[T],
    [images, channels]: [usize; 2],
    size: [usize; 2],
) -> Vec<T> {
    from_position_major(rows, [images, channels], &PhaseLayout::new(size, [1, 1]))
}

#[cfg(test)]
mod tests {
    use burn::tensor::ops::ConvOptions;
    use proptest::prelude::*;

    use super::*;
    use crate::kernels::conv2d::by_image;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// The same values and gradients as the image-by-image scheme (itself checked against
        /// burn) on random shapes, strides and paddings, in f64.
        #[test]
        fn agrees_with_the_image_by_image_scheme(
            batch in 1usize..5,
            channels in (1usize..5, 1usize..5),
            size in (1usize..8, 1usize..8),
            kernel in (1usize..4, 1usize..4),
            stride in (1usize..4, 1usize..4),
            padding in (0usize..3, 0usize..3),
            seed in 0u64..1000,
        ) {
            let options = ConvOptions::new([stride.0, stride.1], [padding.0, padding.1], [1, 1], 1);
            let g = Geometry::new(
                &[batch, channels.0, size.0, size.1],
                &[channels.1, channels.0, kernel.0, kernel.1],
                &options,
            );
            prop_assume!(g.is_some());
            let g = g.unwrap();
            let values = |len: usize, phase: u64| -> Vec<f64> {
                (0..len).map(|i| ((i as f64 + 0.1) * 0.37 + (seed + phase) as f64).sin()).collect()
            };
            let x = values(batch * channels.0 * g.plane_in(), 0);
            let w = values(g.channels_out * g.patch_len(), 1);
            let dy = values(batch * g.channels_out * g.positions(), 2);
            let close = |a: &[f64], b: &[f64]| a.len() == b.len() && a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-9);
            let [c, co] = [channels.0, g.channels_out];
            let out = forward(&g, Activation::Planes(&x), &w);
            let planes = rows_to_planes(&out, [batch, co], g.size_out);
            prop_assert!(close(&planes, &by_image::forward(&g, &x, &w)));
            let (dx, dw) = backward(&g, Activation::Planes(&x), &w, Activation::Planes(&dy), [true, true]);
            let (dx_ref, dw_ref) = by_image::backward(&g, &x, &w, &dy, [true, true]);
            let (dx, dw) = (dx.unwrap(), dw.unwrap());
            prop_assert!(close(&dx, &dx_ref.unwrap()));
            prop_assert!(close(&dw, &dw_ref.unwrap()));
            // Position-major operands give the same values to the bit, the input gradient in rows.
            let x_rows = to_position_major(&x, [batch, c], &PhaseLayout::new(g.size_in, [1, 1]));
            let dy_rows = to_position_major(&dy, [batch, co], &PhaseLayout::new(g.size_out, [1, 1]));
            prop_assert_eq!(&forward(&g, Activation::Rows(&x_rows), &w), &out);
            let (dx_rows, dw_rows) =
                backward(&g, Activation::Rows(&x_rows), &w, Activation::Rows(&dy_rows), [true, true]);
            prop_assert_eq!(rows_to_planes(&dx_rows.unwrap(), [batch, c], g.size_in), dx);
            prop_assert_eq!(dw_rows.unwrap(), dw);
        }
    }

    /// Spreading the runs across rows, taps and threads gives the values of one product after
    /// the other, to the bit, at strides 1 and 2, with whole-plane runs, on 1 and 3 threads.
    #[test]
    fn spreading_across_rows_changes_no_bit() {
        for (x, weight, stride, padding) in [
            ([20, 8, 7, 7], [8, 8, 3, 3], 1, 1),
            ([18, 6, 14, 14], [9, 6, 3, 3], 2, 1),
            ([17, 5, 8, 8], [7, 5, 1, 1], 2, 0),
            ([16, 4, 2, 2], [6, 4, 3, 3], 1, 1),
        ] {
            let g = geometry(x, weight, stride, padding);
            assert_eq!(Spread::of(&g), Spread::AcrossRows);
            let values = |len: usize, phase: f32| -> Vec<f32> {
                (0..len)
                    .map(|i| ((i as f32 + phase) * 0.37).sin())
                    .collect()
            };
            let x = values(g.batch * g.channels_in * g.plane_in(), 0.1);
            let w = values(g.channels_out * g.patch_len(), 0.2);
            let dy = values(g.batch * g.channels_out * g.positions(), 0.3);
            let run = |spread: Spread| {
                let planes = Activation::Planes;
                let out = forward_spread(&g, planes(&x), &w, spread);
                let grads = backward_spread(&g, planes(&x), &w, planes(&dy), [true, true], spread);
                (out, grads)
            };
            let one_after_the_other = run(Spread::InsideProducts);
            for threads in [1, 3] {
                let spread = crate::kernels::on_threads(threads, || run(Spread::AcrossRows));
                assert_eq!(spread, one_after_the_other, "{g:?} on {threads} threads");
            }
        }
    }

    fn geometry(x: [usize; 4], weight: [usize; 4], stride: usize, padding: usize) -> Geometry {
        let options = ConvOptions::new([stride; 2], [padding; 2], [1, 1], 1);
        Geometry::new(&x, &weight, &options).unwrap()
    }

    fn all_runs(g: &Geometry) -> Vec<Run> {
        runs(g, &layouts(g)[0])
    }

    /// Output positions reached by each tap, counted over the runs.
    fn reached(g: &Geometry) -> usize {
        all_runs(g).iter().map(|run| run.positions).sum()
    }

    #[test]
    fn runs_cover_exactly_the_taps_inside_the_image() {
        // 2x2, 3x3 kernel, same padding: each position sees 4 of the 9 taps.
        assert_eq!(reached(&geometry([1, 1, 2, 2], [1, 1, 3, 3], 1, 1)), 16);
        // 4x4: 10 of 12 tap rows per axis are inside, (10·10) reached positions.
        assert_eq!(reached(&geometry([1, 1, 4, 4], [1, 1, 3, 3], 1, 1)), 100);
        // The centre tap of a same-size convolution is one run over the whole plane.
        let g = geometry([1, 1, 4, 4], [1, 1, 3, 3], 1, 1);
        assert!(all_runs(&g).contains(&Run {
            tap: 4,
            in_position: 0,
            out_position: 0,
            positions: 16
        }));
        // 4x4 → 2x2 at stride 2: output 0 sees 2 of 3 taps per axis, output 1 all 3.
        assert_eq!(reached(&geometry([1, 1, 4, 4], [1, 1, 3, 3], 2, 1)), 25);
        // A 1x1 shortcut at stride 2 reads phase (0, 0) whole: one run.
        assert_eq!(
            all_runs(&geometry([1, 1, 8, 8], [1, 1, 1, 1], 2, 0)).len(),
            1
        );
    }

    #[test]
    fn phase_layout_is_a_bijection_onto_the_plane() {
        for (size, stride) in [([5, 4], [2, 1]), ([7, 7], [3, 2]), ([4, 4], [1, 1])] {
            let layout = PhaseLayout::new(size, stride);
            let mut seen = vec![false; layout.slots()];
            for h in 0..size[0] {
                for w in 0..size[1] {
                    let slot = layout.slot(h, w);
                    assert_eq!(layout.position(slot), Some([h, w]));
                    assert!(!std::mem::replace(&mut seen[slot], true));
                }
            }
            let unused = (0..layout.slots()).filter(|&slot| !seen[slot]);
            assert!(unused.clone().all(|slot| layout.position(slot).is_none()));
        }
    }

    /// The two weight orders hold every value once, where the products read it: channel blocks
    /// that end inside a block ([`IN_BLOCK`] does not divide 19), 3x3 and 1x1 kernels.
    #[test]
    fn weight_orders_move_every_value_to_its_tap() {
        let [co, c] = [5, 19];
        for taps in [9, 1] {
            let weight: Vec<f32> = (0..co * c * taps).map(|v| v as f32).collect();
            let original = |o: usize, ci: usize, tap: usize| weight[(o * c + ci) * taps + tap];
            let forward = channels_then_taps(&weight, [co, c], taps);
            let backward = taps_before_channels(&weight, c, taps);
            for (o, ci, tap) in (0..co)
                .flat_map(|o| (0..c).flat_map(move |ci| (0..taps).map(move |tap| (o, ci, tap))))
            {
                assert_eq!(forward[(ci * taps + tap) * co + o], original(o, ci, tap));
                assert_eq!(backward[(o * taps + tap) * c + ci], original(o, ci, tap));
            }
        }
    }

    #[test]
    fn layouts_round_trip() {
        let planes: Vec<f32> = (0..2 * 3 * 5 * 3).map(|v| v as f32).collect();
        let layout = PhaseLayout::new([5, 3], [2, 2]);
        let rows = to_position_major(&planes, [2, 3], &layout);
        // Image 1, channel 2, position (3, 1): planes[((1·3 + 2)·5 + 3)·3 + 1].
        assert_eq!(rows[(layout.slot(3, 1) * 2 + 1) * 3 + 2], planes[85]);
        assert_eq!(from_position_major(&rows, [2, 3], &layout), planes);
    }
}
