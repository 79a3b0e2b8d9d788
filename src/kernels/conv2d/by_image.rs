//! Convolutions with large output planes (8x8 and more), image by image through im2col.
//!
//! Images run in parallel, one thread each. An image's patch matrix `[C·kh·kw, positions]` is built
//! from contiguous row copies of its NCHW planes into a buffer the thread reuses, and each pass is
//! one product by the `gemm` crate:
//!
//! - forward: `out[Co, positions] = W[Co, K] · col[K, positions]`, straight into the image's block
//!   of the NCHW output;
//! - backward to the input: at stride 1, the forward pass of the transposed convolution (`dy`
//!   convolved with the weights flipped in space, input and output channels exchanged, padded by
//!   `k − 1 − p`), written once into `dx` by products whose shared dimension is `Co·kh·kw`;
//!   otherwise `dcol[K, positions] = Wᵀ · dy[Co, positions]` (the image's output gradient is
//!   already that matrix), then col2im adds each patch back onto the image's planes;
//! - backward to the weights: `dW[Co, K] += dy[Co, positions] · colᵀ`, summed per group of images
//!   ([`IMAGE_GROUPS`] of them, whatever the thread count) and then over the groups in order, so
//!   the result is the same on any number of threads.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::{Geometry, sum_in_order};
use crate::kernels::buffers::{written, zeroed};
use crate::kernels::products::{Element, product_with};

/// Groups of images the backward pass runs in parallel, whatever the thread count.
const IMAGE_GROUPS: usize = 16;

/// The patch matrix of image `image` of `x` (`[C·kh·kw, positions]`) into `col`. Only the entries
/// inside the image are written: the padding entries are the same for every image, so a buffer
/// zeroed once can be reused image after image.
fn im2col_into<T: Element>(g: &Geometry, x: &[T], image: usize, col: &mut [T]) {
    let [kh, kw] = g.kernel;
    let out_w = g.size_out[1];
    for (row, col_row) in col.chunks_mut(g.positions()).enumerate() {
        let (channel, i, j) = (row / (kh * kw), row / kw % kh, row % kw);
        let (rows_valid, cols_valid) = (g.valid_outputs(0, i), g.valid_outputs(1, j));
        if cols_valid.is_empty() {
            continue;
        }
        let plane = &x[(image * g.channels_in + channel) * g.plane_in()..][..g.plane_in()];
        let first_iw = cols_valid.start * g.stride[1] + j - g.padding[1];
        for oh in rows_valid {
            let ih = oh * g.stride[0] + i - g.padding[0];
            let in_row = &plane[ih * g.size_in[1]..][..g.size_in[1]];
            let out_row = &mut col_row[oh * out_w..][cols_valid.clone()];
            if g.stride[1] == 1 {
                out_row.copy_from_slice(&in_row[first_iw..][..cols_valid.len()]);
            } else {
                for (slot, &value) in out_row
                    .iter_mut()
                    .zip(in_row[first_iw..].iter().step_by(g.stride[1]))
                {
                    *slot = value;
                }
            }
        }
    }
}

/// Adds every column of `dcol` (`[C·kh·kw, positions]`, one image's patch gradients) back onto the
/// input positions its patch came from, in `planes` (that image's `[C, H, W]`).
fn col2im<T: Element>(g: &Geometry, dcol: &[T], planes: &mut [T]) {
    let [kh, kw] = g.kernel;
    let out_w = g.size_out[1];
    for (channel, plane) in planes.chunks_mut(g.plane_in()).enumerate() {
        for i in 0..kh {
            let rows_valid = g.valid_outputs(0, i);
            for j in 0..kw {
                let cols_valid = g.valid_outputs(1, j);
                if cols_valid.is_empty() {
                    continue;
                }
                let row = (channel * kh + i) * kw + j;
                let patch_plane = &dcol[row * g.positions()..][..g.positions()];
                let first_iw = cols_valid.start * g.stride[1] + j - g.padding[1];
                for oh in rows_valid.clone() {
                    let ih = oh * g.stride[0] + i - g.padding[0];
                    let in_row = &mut plane[ih * g.size_in[1]..][..g.size_in[1]];
                    let values = &patch_plane[oh * out_w..][cols_valid.clone()];
                    if g.stride[1] == 1 {
                        for (slot, &value) in
                            in_row[first_iw..][..values.len()].iter_mut().zip(values)
                        {
                            *slot += value;
                        }
                    } else {
                        for (slot, &value) in in_row[first_iw..]
                            .iter_mut()
                            .step_by(g.stride[1])
                            .zip(values)
                        {
                            *slot += value;
                        }
                    }
                }
            }
        }
    }
}

/// The forward pass: `x` is `[B, C, H, W]`, `weight` `[Co, C, kh, kw]`; returns `[B, Co, Ho, Wo]`.
pub(super) fn forward<T: Element>(g: &Geometry, x: &[T], weight: &[T]) -> Vec<T> {
    let (k, positions) = (g.patch_len(), g.positions());
    let image_out = g.channels_out * positions;
    // SAFETY: each image's block of the output is written whole by its product (which does not
    // read it): the blocks tile the output.
    unsafe {
        written(g.batch * image_out, |out: *mut T| {
            let out = std::slice::from_raw_parts_mut(out.cast(), g.batch * image_out);
            out.par_chunks_mut(image_out.max(1))
                .enumerate()
                .for_each_init(
                    || vec![T::default(); k * positions],
                    |col, (image, block): (usize, &mut [std::mem::MaybeUninit<T>])| {
                        im2col_into(g, x, image, col);
                        // SAFETY: `block` is [Co, positions], `weight` [Co, K] and `col`
                        // [K, positions], all row-major.
                        product_with(
                            false,
                            [g.channels_out, positions, k],
                            (block.as_mut_ptr().cast(), positions as isize, 1),
                            false,
                            (weight.as_ptr(), k as isize, 1),
                            (col.as_ptr(), positions as isize, 1),
                        );
                    },
                );
        })
    }
}

/// The gradients with respect to the input and to the weight (each only when wanted) for the
/// output gradient `dy` (`[B, Co, Ho, Wo]`).
pub(super) fn backward<T: Element>(
    g: &Geometry,
    x: &[T],
    weight: &[T],
    dy: &[T],
    [want_input, want_weight]: [bool; 2],
) -> (Option<Vec<T>>, Option<Vec<T>>) {
    match want_input.then(|| g.transposed()).flatten() {
        Some(transposed) => {
            let dx = forward(&transposed, dy, &g.flipped_exchanged(weight));
            let dw = want_weight
                .then(|| backward_by_groups(g, x, weight, dy, [false, true]).1)
                .flatten();
            (Some(dx), dw)
        }
        None => backward_by_groups(g, x, weight, dy, [want_input, want_weight]),
    }
}

/// [`backward`] in a fixed number of groups of images that run in parallel: each group
/// accumulates its own weight gradient, and the groups' sums are added in group order; the input
/// gradient by col2im.
fn backward_by_groups<T: Element>(
    g: &Geometry,
    x: &[T],
    weight: &[T],
    dy: &[T],
    [want_input, want_weight]: [bool; 2],
) -> (Option<Vec<T>>, Option<Vec<T>>) {
    let (k, positions) = (g.patch_len(), g.positions());
    let image_in = g.channels_in * g.plane_in();
    let image_out = g.channels_out * positions;
    let group_len = g.batch.div_ceil(IMAGE_GROUPS).max(1);
    let groups = g.batch.div_ceil(group_len);
    let dx_len = if want_input { g.batch * image_in } else { 0 };
    let mut dx = Vec::with_capacity(dx_len);
    // The image range of each group, with that group's planes of `dx` (empty when not wanted),
    // each image's cleared by its task just before its patches are added onto them.
    let mut work: Vec<(std::ops::Range<usize>, &mut [MaybeUninit<T>])> = Vec::with_capacity(groups);
    let mut rest = &mut dx.spare_capacity_mut()[..dx_len];
    for group in 0..groups {
        let images = group * group_len..((group + 1) * group_len).min(g.batch);
        let len = if want_input {
            images.len() * image_in
        } else {
            0
        };
        let (planes, tail) = std::mem::take(&mut rest).split_at_mut(len);
        rest = tail;
        work.push((images, planes));
    }
    let partials: Vec<Vec<T>> = work
        .into_par_iter()
        .map(|(images, dx_planes)| {
            // Patches keep their zero padding entries image after image; the patch gradients are
            // overwritten whole by each product.
            let mut patches = vec![T::default(); if want_weight { k * positions } else { 0 }];
            let mut dcol = vec![T::default(); if want_input { k * positions } else { 0 }];
            let mut dw = vec![T::default(); if want_weight { g.channels_out * k } else { 0 }];
            for (index, image) in images.clone().enumerate() {
                let dy_image = dy[image * image_out..].as_ptr();
                if want_weight {
                    im2col_into(g, x, image, &mut patches);
                    // SAFETY: `dw` is [Co, K], the image's output gradient [Co, positions] and
                    // `patches` [K, positions] read as its transpose, all row-major.
                    unsafe {
                        product_with(
                            false,
                            [g.channels_out, k, positions],
                            (dw.as_mut_ptr(), k as isize, 1),
                            index > 0,
                            (dy_image, positions as isize, 1),
                            (patches.as_ptr(), 1, positions as isize),
                        );
                    }
                }
                if want_input {
                    // SAFETY: `dcol` is [K, positions], `weight` [Co, K] read as its
                    // transpose, and the image's output gradient [Co, positions].
                    unsafe {
                        product_with(
                            false,
                            [k, positions, g.channels_out],
                            (dcol.as_mut_ptr(), positions as isize, 1),
                            false,
                            (weight.as_ptr(), 1, k as isize),
                            (dy_image, positions as isize, 1),
                        );
                    }
                    col2im(
                        g,
                        &dcol,
                        zeroed(&mut dx_planes[index * image_in..][..image_in]),
                    );
                }
            }
            dw
        })
        .collect();
    // SAFETY: the groups' planes cover the first `dx_len` elements, and each image's planes were
    // zeroed before its patches were added.
    unsafe { dx.set_len(dx_len) };
    let dw = want_weight.then(|| sum_in_order(partials, g.channels_out * k));
    (want_input.then_some(dx), dw)
}

#[cfg(test)]
mod tests {
    use burn::tensor::ops::ConvOptions;

    use super::*;

    #[test]
    fn the_transposed_convolution_gives_the_col2im_input_gradient() {
        // [B, C, H, W], [Co, C, kh, kw], padding: square and oblong kernels and planes, paddings
        // from none to the kernel's half and beyond it (which col2im keeps).
        let cases = [
            ([2, 3, 9, 8], [4, 3, 3, 3], [1, 1]),
            ([1, 2, 8, 11], [3, 2, 3, 2], [0, 1]),
            ([3, 1, 10, 10], [2, 1, 1, 1], [0, 0]),
            ([2, 2, 9, 9], [2, 2, 5, 3], [2, 0]),
            ([1, 2, 8, 8], [2, 2, 3, 3], [3, 1]),
        ];
        for (x_shape, w_shape, padding) in cases {
            let options = ConvOptions::new([1, 1], padding, [1, 1], 1);
            let g = Geometry::new(&x_shape, &w_shape, &options).expect("a dense convolution");
            assert_eq!(
                g.transposed().is_some(),
                padding[0] < w_shape[2] && padding[1] < w_shape[3]
            );
            let [x, weight, dy] = crate::kernels::smooth_operands([
                g.batch * g.channels_in * g.plane_in(),
                g.channels_out * g.patch_len(),
                g.batch * g.channels_out * g.positions(),
            ]);
            let (dx, dw) = backward(&g, &x, &weight, &dy, [true, true]);
            let (dx_col2im, dw_groups) = backward_by_groups(&g, &x, &weight, &dy, [true, true]);
            let (dx, dx_col2im) = (dx.unwrap(), dx_col2im.unwrap());
            assert_eq!(dx.len(), dx_col2im.len());
            for (a, b) in dx.iter().zip(&dx_col2im) {
                assert!(
                    (a - b).abs() < 1e-12,
                    "{x_shape:?} {w_shape:?} {padding:?}: {a} vs {b}"
                );
            }
            assert_eq!(dw, dw_groups, "the weight gradient takes the same path");
        }
    }
}
