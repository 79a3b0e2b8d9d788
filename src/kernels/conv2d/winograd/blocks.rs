//! The transforms on channels-last blocks: position-major activations (`[H, W, B, C]`), read and
//! written where they lie.
//!
//! Each position of a chunk holds one block of `images · channels` contiguous values. A tile's
//! transform combines the blocks of its positions [`STRIP`] values at a time, so each step is
//! a run of contiguous values that the compiler vectorises. The transformed tiles go to entries
//! laid out `[rows, channels]`, the rows being `tile · images + image`.

use std::ops::Range;

use super::{
    ENTRIES, Grid, SPAN, STRIP, TILE, Tiles, copy_strip, input_axis, output_axis,
    output_gradient_axis, separable,
};
use crate::kernels::buffers::Destination;
use crate::kernels::products::Element;

/// Where the channels-last blocks of a plane lie in a buffer: position `(h, w)` has `len` values
/// starting at `(h·width + w)·stride + offset`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Blocks {
    size: [usize; 2],
    stride: usize,
    offset: usize,
    len: usize,
}

impl Blocks {
    /// The start of the block at `(h, w)`, `None` outside the plane.
    fn start(&self, h: usize, w: usize) -> Option<usize> {
        (h < self.size[0] && w < self.size[1])
            .then(|| (h * self.size[1] + w) * self.stride + self.offset)
    }

    /// Blocks of `len` values one after the other, for a plane of `size`.
    pub(super) fn packed(size: [usize; 2], len: usize) -> Self {
        Self {
            size,
            stride: len,
            offset: 0,
            len,
        }
    }

    /// The blocks of the chunk `images` of a position-major activation of `batch` images of
    /// `channels` channels on a plane of `size`.
    pub(super) fn of_images(
        [batch, channels]: [usize; 2],
        size: [usize; 2],
        images: Range<usize>,
    ) -> Self {
        Self {
            size,
            stride: batch * channels,
            offset: images.start * channels,
            len: images.len() * channels,
        }
    }
}

/// The transformed input tiles `V` of the `blocks` of `x` (read with `tiles.padding` around the
/// plane) into `v`: entry after entry, each `[tiles, blocks.len]`.
#[inline(always)]
pub(super) fn transform_input<T: Element>(tiles: &Tiles, x: &[T], blocks: Blocks, v: &mut Vec<T>) {
    transform_tiles::<T, SPAN>(tiles, x, blocks, tiles.padding, input_axis, v);
}

/// `transform` (`N` values to [`SPAN`]) applied along both axes of the `N x N` blocks of `values`
/// at the positions `(oh + i − top, ow + j − left)` of each tile whose first output is `(oh, ow)`
/// (positions outside the plane count as zeros), into `entries`: entry after entry, each
/// `[tiles, blocks.len]`.
#[inline(always)]
fn transform_tiles<T: Element, const N: usize>(
    tiles: &Tiles,
    values: &[T],
    blocks: Blocks,
    [top, left]: [usize; 2],
    transform: impl Fn([T; N]) -> [T; SPAN],
    entries: &mut Vec<T>,
) {
    let entry_len = tiles.len() * blocks.len;
    entries.resize(ENTRIES * entry_len, T::default());
    for (tile, [oh, ow]) in tiles.origins() {
        let sources: [[Option<&[T]>; N]; N] = std::array::from_fn(|i| {
            std::array::from_fn(|j| {
                let (h, w) = ((oh + i).checked_sub(top)?, (ow + j).checked_sub(left)?);
                Some(&values[blocks.start(h, w)?..][..blocks.len])
            })
        });
        for start in (0..blocks.len).step_by(STRIP) {
            let width = STRIP.min(blocks.len - start);
            let mut grid: Grid<T, N> = [[[T::default(); STRIP]; N]; N];
            for (line, row) in grid.iter_mut().zip(&sources) {
                for (lanes, source) in line.iter_mut().zip(row) {
                    if let Some(source) = source {
                        copy_strip(lanes, &source[start..], width);
                    }
                }
            }
            let transformed = separable(&grid, &transform);
            for (entry, lanes) in transformed.iter().flatten().enumerate() {
                copy_strip(
                    &mut entries[entry * entry_len + tile * blocks.len + start..],
                    lanes,
                    width,
                );
            }
        }
    }
}

/// The output tiles `Aᵀ M A` of `m` (laid out as [`transform_input`] writes `v`) into the
/// `blocks` of `out` that lie inside the plane.
///
/// # Safety
/// `out` must address every block inside the plane, and no other thread may touch them.
#[inline(always)]
pub(super) unsafe fn transform_output<T: Element>(
    tiles: &Tiles,
    m: &[T],
    out: Destination<T>,
    blocks: Blocks,
) {
    let entry_len = tiles.len() * blocks.len;
    for (tile, [oh, ow]) in tiles.origins() {
        for start in (0..blocks.len).step_by(STRIP) {
            let width = STRIP.min(blocks.len - start);
            let mut grid: Grid<T, SPAN> = [[[T::default(); STRIP]; SPAN]; SPAN];
            for (entry, lanes) in grid.iter_mut().flatten().enumerate() {
                copy_strip(
                    lanes,
                    &m[entry * entry_len + tile * blocks.len + start..],
                    width,
                );
            }
            let y = separable(&grid, output_axis);
            for (i, line) in y.iter().enumerate() {
                for (j, lanes) in line.iter().enumerate() {
                    if let Some(first) = blocks.start(oh + i, ow + j) {
                        let target = out.at(first + start);
                        // SAFETY: the block lies in `out` and belongs to this thread.
                        unsafe {
                            if width == STRIP {
                                target.cast::<[T; STRIP]>().write_unaligned(*lanes);
                            } else {
                                std::ptr::copy_nonoverlapping(lanes.as_ptr(), target, width);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The transformed output-gradient tiles `dM = A dY Aᵀ` of the `blocks` of `dy` into `dm`, laid
/// out as [`transform_input`] writes `v` (positions outside the plane count as zeros).
#[inline(always)]
pub(super) fn transform_output_gradient<T: Element>(
    tiles: &Tiles,
    dy: &[T],
    blocks: Blocks,
    dm: &mut Vec<T>,
) {
    transform_tiles::<T, TILE>(tiles, dy, blocks, [0, 0], output_gradient_axis, dm);
}

/// Side of the squares the stagings transpose at a time.
const SQUARE: usize = 8;

/// `dst[j·dst_stride + i] = src[i·src_stride + j]` for `i < rows` and `j < columns`, square by
/// square, so that both sides move in runs of [`SQUARE`] contiguous values.
///
/// # Safety
/// `src` and `dst` must address every element named, and `dst` none that `src` does.
#[inline(always)]
unsafe fn transpose<T: Element>(
    (src, src_stride): (*const T, usize),
    (dst, dst_stride): (*mut T, usize),
    [rows, columns]: [usize; 2],
) {
    for i0 in (0..rows).step_by(SQUARE) {
        let height = SQUARE.min(rows - i0);
        for j0 in (0..columns).step_by(SQUARE) {
            let width = SQUARE.min(columns - j0);
            let mut square = [[T::default(); SQUARE]; SQUARE];
            for (i, line) in square.iter_mut().enumerate().take(height) {
                // SAFETY: row `i0 + i`, columns `j0..j0 + width` of `src`.
                let source = unsafe { src.add((i0 + i) * src_stride + j0) };
                if width == SQUARE {
                    // SAFETY: as above, a whole square's row.
                    *line = unsafe { source.cast::<[T; SQUARE]>().read_unaligned() };
                } else {
                    // SAFETY: as above.
                    line[..width]
                        .copy_from_slice(unsafe { std::slice::from_raw_parts(source, width) });
                }
            }
            let columns: [[T; SQUARE]; SQUARE] =
                std::array::from_fn(|j| std::array::from_fn(|i| square[i][j]));
            for (j, &column) in columns.iter().enumerate().take(width) {
                // SAFETY: row `j0 + j`, columns `i0..i0 + height` of `dst`.
                let target = unsafe { dst.add((j0 + j) * dst_stride + i0) };
                if height == SQUARE {
                    // SAFETY: as above, a whole square's row.
                    unsafe { target.cast::<[T; SQUARE]>().write_unaligned(column) };
                } else {
                    // SAFETY: as above.
                    unsafe { std::ptr::copy_nonoverlapping(column.as_ptr(), target, height) };
                }
            }
        }
    }
}

/// The chunk `images` of NCHW `planes` (`channels` planes of `plane` positions per image)
/// transposed into `staging` as channels-last blocks, and where they lie there.
#[inline(always)]
pub(super) fn stage<T: Element>(
    planes: &[T],
    [channels, plane]: [usize; 2],
    size: [usize; 2],
    images: Range<usize>,
    staging: &mut Vec<T>,
) -> Blocks {
    let len = images.len() * channels;
    staging.resize(plane * len, T::default());
    for (index, image) in images.enumerate() {
        let image_planes = &planes[image * channels * plane..][..channels * plane];
        // SAFETY: the image's planes are `[channels, plane]`; its blocks in `staging` are
        // `[plane, channels]` rows `len` apart, starting at column `index·channels`.
        unsafe {
            transpose(
                (image_planes.as_ptr(), plane),
                (staging.as_mut_ptr().add(index * channels), len),
                [channels, plane],
            )
        };
    }
    Blocks::packed(size, len)
}

/// The channels-last blocks of the chunk `images` in `staged` (as [`stage`] lays them out)
/// transposed into their NCHW planes of the output starting at `out`.
///
/// # Safety
/// `out` must address the whole output, and no other thread may touch these images' planes.
#[inline(always)]
pub(super) unsafe fn unstage<T: Element>(
    staged: &[T],
    [channels, plane]: [usize; 2],
    images: Range<usize>,
    out: Destination<T>,
) {
    let len = images.len() * channels;
    assert_eq!(staged.len(), plane * len, "a staged chunk");
    for (index, image) in images.enumerate() {
        // SAFETY: the staged blocks are `[plane, channels]` rows `len` apart from column
        // `index·channels`; the image's planes `[channels, plane]` belong to this thread.
        unsafe {
            transpose(
                (staged.as_ptr().add(index * channels), len),
                (out.at(image * channels * plane), plane),
                [plane, channels],
            )
        };
    }
}
