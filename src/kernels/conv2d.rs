//! Dense 2-D convolution (groups = 1, dilation = 1) as three batched matrix products.
//!
//! burn `flex` runs a convolution image by image: it converts the whole batch to channels-last on one
//! thread, builds an im2col tile per image and multiplies it with the weights, so the deep layers of a
//! CIFAR network (2x2 to 8x8 outputs) make many products of 4 to 64 columns that stream the full
//! weight matrix each time. Its backward passes reuse that forward with rearranged operands
//! (`conv_transpose2d` for the input, a convolution whose kernel is the output gradient for the
//! weights). Here the batch is cut into chunks of whole images whose patches are laid out as one
//! `[C·kh·kw, images·positions]` matrix (the classic im2col, built from contiguous row copies of
//! the NCHW planes, in parallel); each pass is then one product per chunk by the `gemm` crate (the
//! same AVX-512 / AVX2 / NEON micro-kernels flex calls, with its run-time dispatch):
//!
//! - forward: `out[Co, n] = W[Co, K] · col[K, n]`;
//! - backward to the input: `dcol[K, n] = Wᵀ · dy[Co, n]`, then col2im adds each patch back;
//! - backward to the weights: `dW[Co, K] += dy[Co, n] · colᵀ`, accumulated chunk after chunk.
//!
//! That suits small output planes (2x2 to 4x4 in a CIFAR ResNet's last stages), where one image
//! gives too few columns for an efficient product. Planes of at least 64 positions (the 8x8 to
//! 32x32 layers) are multiplied image by image instead, images in parallel on one thread each: the
//! product lands straight in the NCHW output, the output gradient of an image is already its
//! `[Co, positions]` matrix (nothing gathered), its input gradient stays in its own planes, and
//! the weight gradient is summed per group of images (16 groups) and then over the groups in
//! order. Per call, that replaces several short parallel passes (im2col, product, copy) by one.
//!
//! Every output element is summed in a fixed order whatever the thread count (the products split
//! rows and columns among threads, never the shared dimension; the image groups do not depend on
//! it), so training stays reproducible.
//! Other element types, groups and dilations go to burn's own ops. Benchmark: `cargo bench --bench
//! conv_layers` against `bench/torch_conv_layers.py` (BENCHMARKS.md, "Convolutions").

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

/// Elements of one chunk's patch matrix: 4 MB of f32, so that a chunk's operands stay in the
/// outer caches while its product runs.
const CHUNK_ELEMENTS: usize = 1 << 20;
/// Output planes of at least this many positions are multiplied image by image (in parallel
/// over the images), straight into the output; smaller ones as one product per chunk.
const DIRECT_POSITIONS: usize = 64;
/// Groups of images the image-by-image backward pass runs in parallel, whatever the thread count.
const IMAGE_GROUPS: usize = 16;
/// Products below this many multiply-adds run on one thread.
const PARALLEL_MACS: usize = 192 * 192 * 192;

/// Convolutions with lacoot's own kernels where they are faster, implemented per backend.
#[backend_extension(Flex, Cube: cfg(any(feature = "wgpu", feature = "cuda")), Autodiff)]
pub trait ConvOps: Backend {
    /// `conv2d(x, weight)` without bias: `x` is `[B, C, H, W]`, `weight` `[Co, C, kh, kw]`.
    fn dense_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d(x, weight, None, options)
    }

    /// The gradients of [`ConvOps::dense_conv2d`] with respect to its input and its weight, each
    /// computed only when asked for.
    fn dense_conv2d_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
        wanted: [bool; 2],
    ) -> (Option<FloatTensor<Self>>, Option<FloatTensor<Self>>) {
        burn_backward::<Self>(x, weight, output_grad, options, wanted)
    }
}

/// The gradients of `conv2d(x, weight)` by burn's own ops of backend `B`, each computed only when
/// `wanted` asks for it.
fn burn_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    options: ConvOptions<2>,
    wanted: [bool; 2],
) -> (Option<FloatTensor<B>>, Option<FloatTensor<B>>) {
    let input_grad = wanted[0].then(|| {
        B::conv2d_x_backward(
            x.clone(),
            weight.clone(),
            output_grad.clone(),
            options.clone(),
        )
    });
    let weight_grad = wanted[1].then(|| B::conv2d_weight_backward(x, weight, output_grad, options));
    (input_grad, weight_grad)
}

/// `conv.forward(input)`, through lacoot's kernels when the convolution is dense (groups = 1,
/// dilation 1, explicit padding that is the same on both sides); burn's `Conv2d::forward` otherwise.
pub fn conv2d(conv: &Conv2d, input: Tensor<4>) -> Tensor<4> {
    let padding = match conv.padding {
        PaddingConfig2d::Valid => [0, 0],
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            [top, left]
        }
        _ => return conv.forward(input),
    };
    if conv.groups != 1 || conv.dilation != [1, 1] {
        return conv.forward(input);
    }
    let options = ConvOptions::new(conv.stride, padding, [1, 1], 1);
    let output = dense_conv2d(input, conv.weight.val(), options);
    match &conv.bias {
        Some(bias) => {
            let channels = bias.dims()[0];
            output + bias.val().reshape([1, channels, 1, 1])
        }
        None => output,
    }
}

/// `conv2d(x, weight)` without bias through [`ConvOps::dense_conv2d`]: lacoot's kernels on `flex`
/// when `options` describe a dense convolution, burn's op otherwise.
pub fn dense_conv2d(x: Tensor<4>, weight: Tensor<4>, options: ConvOptions<2>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as ConvOps>::dense_conv2d(
        x.into_dispatch(),
        weight.into_dispatch(),
        options,
    ))
}

/// The gradients of [`dense_conv2d`] with respect to `x` and to `weight` for the output gradient
/// `output_grad`, each computed only when `wanted` asks for it.
pub fn dense_conv2d_backward(
    x: Tensor<4>,
    weight: Tensor<4>,
    output_grad: Tensor<4>,
    options: ConvOptions<2>,
    wanted: [bool; 2],
) -> (Option<Tensor<4>>, Option<Tensor<4>>) {
    let (input_grad, weight_grad) = <Dispatch as ConvOps>::dense_conv2d_backward(
        x.into_dispatch(),
        weight.into_dispatch(),
        output_grad.into_dispatch(),
        options,
        wanted,
    );
    (
        input_grad.map(Tensor::from_dispatch),
        weight_grad.map(Tensor::from_dispatch),
    )
}

/// Sizes of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geometry {
    batch: usize,
    channels_in: usize,
    size_in: [usize; 2],
    channels_out: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    size_out: [usize; 2],
}

impl Geometry {
    /// `None` when the shapes do not form a convolution lacoot's kernels run (checked by burn's
    /// fallback instead, which reports the problem).
    fn new(x: &[usize], weight: &[usize], options: &ConvOptions<2>) -> Option<Self> {
        let &[batch, channels_in, height, width] = x else {
            return None;
        };
        let &[channels_out, weight_channels, kh, kw] = weight else {
            return None;
        };
        let dense = options.groups == 1 && options.dilation == [1, 1] && !options.is_asymmetric();
        if !dense || weight_channels != channels_in || options.stride.contains(&0) {
            return None;
        }
        let padding = options.padding_begin();
        let out = |size: usize, kernel: usize, stride: usize, pad: usize| {
            (size + 2 * pad).checked_sub(kernel).map(|v| v / stride + 1)
        };
        let size_out = [
            out(height, kh, options.stride[0], padding[0])?,
            out(width, kw, options.stride[1], padding[1])?,
        ];
        Some(Self {
            batch,
            channels_in,
            size_in: [height, width],
            channels_out,
            kernel: [kh, kw],
            stride: options.stride,
            padding,
            size_out,
        })
    }

    /// Rows of the patch matrix: `C·kh·kw`.
    fn patch_len(&self) -> usize {
        self.channels_in * self.kernel[0] * self.kernel[1]
    }

    fn positions(&self) -> usize {
        self.size_out[0] * self.size_out[1]
    }

    fn plane_in(&self) -> usize {
        self.size_in[0] * self.size_in[1]
    }

    /// Whole images per chunk.
    fn chunk_images(&self) -> usize {
        (CHUNK_ELEMENTS / (self.patch_len() * self.positions()).max(1)).clamp(1, self.batch.max(1))
    }

    /// The output positions `o` along one axis whose input index `o·stride + k − pad` lies in
    /// `[0, size)`.
    fn valid_outputs(&self, axis: usize, k: usize) -> std::ops::Range<usize> {
        let [stride, pad] = [self.stride[axis], self.padding[axis]];
        let [size, out] = [self.size_in[axis], self.size_out[axis]];
        let first = pad.saturating_sub(k).div_ceil(stride);
        let end = (size + pad).saturating_sub(k).div_ceil(stride).min(out);
        first.min(end)..end
    }
}

/// Element types the kernels run on.
trait Element: burn::tensor::Element + bytemuck::Pod + Default + std::ops::AddAssign {
    const ONE: Self;
}

impl Element for f32 {
    const ONE: Self = 1.0;
}

impl Element for f64 {
    const ONE: Self = 1.0;
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]`, each operand given by its row and column strides.
///
/// # Safety
/// Every operand must cover the elements its strides address for the given sizes.
unsafe fn product<T: Element>(
    [m, n, k]: [usize; 3],
    dst: (*mut T, isize, isize),
    accumulate: bool,
    lhs: (*const T, isize, isize),
    rhs: (*const T, isize, isize),
) {
    let parallel = m * n * k >= PARALLEL_MACS;
    // SAFETY: forwarded from the caller.
    unsafe { product_with(parallel, [m, n, k], dst, accumulate, lhs, rhs) }
}

/// [`product`] on all threads when `parallel`, on the calling thread otherwise.
///
/// # Safety
/// As for [`product`].
unsafe fn product_with<T: Element>(
    parallel: bool,
    [m, n, k]: [usize; 3],
    dst: (*mut T, isize, isize),
    accumulate: bool,
    lhs: (*const T, isize, isize),
    rhs: (*const T, isize, isize),
) {
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let alpha = if accumulate { T::ONE } else { T::default() };
    // SAFETY: the caller guarantees the operands' extents; `gemm` reads `dst` only when accumulating.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.2,
            dst.1,
            accumulate,
            lhs.0,
            lhs.2,
            lhs.1,
            rhs.0,
            rhs.2,
            rhs.1,
            alpha,
            T::ONE,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// The patch matrix of images `images` of `x`: `[C·kh·kw, images·positions]`, zero where a patch
/// overhangs the padding.
fn im2col<T: Element>(g: &Geometry, x: &[T], images: std::ops::Range<usize>) -> Vec<T> {
    let columns = images.len() * g.positions();
    let mut col = vec![T::default(); g.patch_len() * columns];
    col.par_chunks_mut(columns)
        .enumerate()
        .for_each(|(row, col_row)| fill_patch_row(g, x, images.clone(), row, col_row));
    col
}

/// The patch matrix of image `image` of `x` (`[C·kh·kw, positions]`) into `col`, on this thread.
/// Only the entries inside the image are written: the padding entries are the same for every
/// image, so a buffer zeroed once can be reused image after image.
fn im2col_image_into<T: Element>(g: &Geometry, x: &[T], image: usize, col: &mut [T]) {
    for (row, col_row) in col.chunks_mut(g.positions()).enumerate() {
        fill_patch_row(g, x, image..image + 1, row, col_row);
    }
}

/// Row `row` (one input channel and kernel offset) of the patch matrix of images `images`.
fn fill_patch_row<T: Element>(
    g: &Geometry,
    x: &[T],
    images: std::ops::Range<usize>,
    row: usize,
    col_row: &mut [T],
) {
    let [kh, kw] = g.kernel;
    let out_w = g.size_out[1];
    let (channel, i, j) = (row / (kh * kw), row / kw % kh, row % kw);
    let (rows_valid, cols_valid) = (g.valid_outputs(0, i), g.valid_outputs(1, j));
    if cols_valid.is_empty() {
        return;
    }
    for (image_index, image) in images.enumerate() {
        let plane = &x[(image * g.channels_in + channel) * g.plane_in()..][..g.plane_in()];
        let out_plane = &mut col_row[image_index * g.positions()..][..g.positions()];
        for oh in rows_valid.clone() {
            let ih = oh * g.stride[0] + i - g.padding[0];
            let in_row = &plane[ih * g.size_in[1]..][..g.size_in[1]];
            let out_row = &mut out_plane[oh * out_w..][..out_w];
            let first_iw = cols_valid.start * g.stride[1] + j - g.padding[1];
            if g.stride[1] == 1 {
                out_row[cols_valid.clone()]
                    .copy_from_slice(&in_row[first_iw..][..cols_valid.len()]);
            } else {
                for (slot, &value) in out_row[cols_valid.clone()]
                    .iter_mut()
                    .zip(in_row[first_iw..].iter().step_by(g.stride[1]))
                {
                    *slot = value;
                }
            }
        }
    }
}

/// Adds every column of `dcol` (`[C·kh·kw, images·positions]`) back onto the input positions its
/// patch came from, in `planes`: the input planes of those images, `[images, C, H, W]`.
fn col2im<T: Element>(g: &Geometry, dcol: &[T], planes: &mut [T]) {
    planes
        .par_chunks_mut(g.plane_in())
        .enumerate()
        .for_each(|(plane_index, plane)| add_patches_to_plane(g, dcol, plane_index, plane));
}

/// [`col2im`] on this thread.
fn col2im_serial<T: Element>(g: &Geometry, dcol: &[T], planes: &mut [T]) {
    for (plane_index, plane) in planes.chunks_mut(g.plane_in()).enumerate() {
        add_patches_to_plane(g, dcol, plane_index, plane);
    }
}

/// Adds the patches of `dcol` that cover input plane `plane_index` (image-major, then channel)
/// onto `plane`.
fn add_patches_to_plane<T: Element>(g: &Geometry, dcol: &[T], plane_index: usize, plane: &mut [T]) {
    let [kh, kw] = g.kernel;
    let out_w = g.size_out[1];
    let columns = dcol.len() / g.patch_len().max(1);
    let (image_index, channel) = (plane_index / g.channels_in, plane_index % g.channels_in);
    for i in 0..kh {
        let rows_valid = g.valid_outputs(0, i);
        for j in 0..kw {
            let cols_valid = g.valid_outputs(1, j);
            if cols_valid.is_empty() {
                continue;
            }
            let row = (channel * kh + i) * kw + j;
            let patch_plane = &dcol[row * columns + image_index * g.positions()..][..g.positions()];
            for oh in rows_valid.clone() {
                let ih = oh * g.stride[0] + i - g.padding[0];
                let in_row = &mut plane[ih * g.size_in[1]..][..g.size_in[1]];
                let first_iw = cols_valid.start * g.stride[1] + j - g.padding[1];
                let values = &patch_plane[oh * out_w..][cols_valid.clone()];
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

/// The output gradient of images `images` as `[Co, images·positions]` (channel-major).
fn gather_output_grad<T: Element>(
    g: &Geometry,
    dy: &[T],
    images: std::ops::Range<usize>,
) -> Vec<T> {
    let positions = g.positions();
    let columns = images.len() * positions;
    let mut gathered = vec![T::default(); g.channels_out * columns];
    gathered
        .par_chunks_mut(columns)
        .enumerate()
        .for_each(|(channel, row)| {
            for (image_index, image) in images.clone().enumerate() {
                row[image_index * positions..][..positions].copy_from_slice(
                    &dy[(image * g.channels_out + channel) * positions..][..positions],
                );
            }
        });
    gathered
}

/// The images of the batch, chunk by chunk.
fn chunks(g: &Geometry) -> impl Iterator<Item = std::ops::Range<usize>> {
    let size = g.chunk_images();
    (0..g.batch.div_ceil(size)).map(move |c| c * size..((c + 1) * size).min(g.batch))
}

fn forward<T: Element>(g: &Geometry, x: &[T], weight: &[T]) -> Vec<T> {
    let positions = g.positions();
    let k = g.patch_len();
    let mut out = vec![T::default(); g.batch * g.channels_out * positions];
    if positions >= DIRECT_POSITIONS {
        // One product per image, images in parallel, each straight into its `[Co, positions]`
        // block of the output; each thread reuses one patch buffer.
        out.par_chunks_mut(g.channels_out * positions)
            .enumerate()
            .for_each_init(
                || vec![T::default(); k * positions],
                |col, (image, block)| {
                    im2col_image_into(g, x, image, col);
                    // SAFETY: `block` is [Co, positions], `weight` [Co, K] and `col`
                    // [K, positions], all row-major.
                    unsafe {
                        product_with(
                            false,
                            [g.channels_out, positions, k],
                            (block.as_mut_ptr(), positions as isize, 1),
                            false,
                            (weight.as_ptr(), k as isize, 1),
                            (col.as_ptr(), positions as isize, 1),
                        );
                    }
                },
            );
        return out;
    }
    for images in chunks(g) {
        let columns = images.len() * positions;
        let col = im2col(g, x, images.clone());
        let planes =
            &mut out[images.start * g.channels_out * positions..][..columns * g.channels_out];
        let mut product_out = vec![T::default(); g.channels_out * columns];
        // SAFETY: `product_out` is [Co, columns], `weight` [Co, K] and `col` [K, columns], all
        // row-major.
        unsafe {
            product(
                [g.channels_out, columns, k],
                (product_out.as_mut_ptr(), columns as isize, 1),
                false,
                (weight.as_ptr(), k as isize, 1),
                (col.as_ptr(), columns as isize, 1),
            );
        }
        planes
            .par_chunks_mut(positions)
            .enumerate()
            .for_each(|(plane_index, plane)| {
                let (image_index, channel) =
                    (plane_index / g.channels_out, plane_index % g.channels_out);
                plane.copy_from_slice(
                    &product_out[channel * columns + image_index * positions..][..positions],
                );
            });
    }
    out
}

fn backward<T: Element>(
    g: &Geometry,
    x: &[T],
    weight: &[T],
    dy: &[T],
    [want_input, want_weight]: [bool; 2],
) -> (Option<Vec<T>>, Option<Vec<T>>) {
    if g.positions() >= DIRECT_POSITIONS {
        return backward_by_image(g, x, weight, dy, [want_input, want_weight]);
    }
    let k = g.patch_len();
    let mut dx = want_input.then(|| vec![T::default(); g.batch * g.channels_in * g.plane_in()]);
    let mut dw = want_weight.then(|| vec![T::default(); g.channels_out * k]);
    for (chunk_index, images) in chunks(g).enumerate() {
        let columns = images.len() * g.positions();
        let dy_chunk = gather_output_grad(g, dy, images.clone());
        if let Some(dw) = dw.as_mut() {
            let col = im2col(g, x, images.clone());
            // SAFETY: `dw` is [Co, K] row-major, `dy_chunk` [Co, columns], and `col` [K, columns]
            // read as its transpose [columns, K].
            unsafe {
                product(
                    [g.channels_out, k, columns],
                    (dw.as_mut_ptr(), k as isize, 1),
                    chunk_index > 0,
                    (dy_chunk.as_ptr(), columns as isize, 1),
                    (col.as_ptr(), 1, columns as isize),
                );
            }
        }
        if let Some(dx) = dx.as_mut() {
            let mut dcol = vec![T::default(); k * columns];
            // SAFETY: `dcol` is [K, columns], `weight` [Co, K] read as its transpose [K, Co], and
            // `dy_chunk` [Co, columns].
            unsafe {
                product(
                    [k, columns, g.channels_out],
                    (dcol.as_mut_ptr(), columns as isize, 1),
                    false,
                    (weight.as_ptr(), 1, k as isize),
                    (dy_chunk.as_ptr(), columns as isize, 1),
                );
            }
            let planes_len = images.len() * g.channels_in * g.plane_in();
            col2im(
                g,
                &dcol,
                &mut dx[images.start * g.channels_in * g.plane_in()..][..planes_len],
            );
        }
    }
    (dx, dw)
}

/// [`backward`] for large output planes: image by image, in a fixed number of groups of images
/// that run in parallel. Each image's output gradient is already a `[Co, positions]` matrix, so
/// nothing is gathered; its input gradient lands in its own planes; each group accumulates its
/// own weight gradient, and the groups' sums are added in group order, so the result does not
/// depend on the thread count.
fn backward_by_image<T: Element>(
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
    let mut dx = vec![T::default(); if want_input { g.batch * image_in } else { 0 }];
    // The image range of each group, with that group's planes of `dx` (empty when not wanted).
    let mut work: Vec<(std::ops::Range<usize>, &mut [T])> = Vec::with_capacity(groups);
    let mut rest = dx.as_mut_slice();
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
                    im2col_image_into(g, x, image, &mut patches);
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
                    col2im_serial(g, &dcol, &mut dx_planes[index * image_in..][..image_in]);
                }
            }
            dw
        })
        .collect();
    let dw = want_weight.then(|| sum_in_order(partials, g.channels_out * k));
    (want_input.then_some(dx), dw)
}

/// The element-wise sum of `parts` (zeros of length `len` when there are none), added in their
/// order.
fn sum_in_order<T: Element>(parts: Vec<Vec<T>>, len: usize) -> Vec<T> {
    let mut total = vec![T::default(); len];
    for part in parts {
        for (total, value) in total.iter_mut().zip(part) {
            *total += value;
        }
    }
    total
}

fn host_forward<T: Element>(g: &Geometry, x: &FlexTensor, weight: &FlexTensor) -> FlexTensor {
    let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
    let values = forward(
        g,
        x.as_slice::<T>().expect("checked element type"),
        weight.as_slice::<T>().expect("checked element type"),
    );
    let [out_h, out_w] = g.size_out;
    FlexTensor::from_data(TensorData::new(
        values,
        [g.batch, g.channels_out, out_h, out_w],
    ))
}

fn host_backward<T: Element>(
    g: &Geometry,
    x: &FlexTensor,
    weight: &FlexTensor,
    output_grad: &FlexTensor,
    wanted: [bool; 2],
) -> (Option<FlexTensor>, Option<FlexTensor>) {
    let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
    let output_grad = output_grad.to_contiguous();
    let (dx, dw) = backward(
        g,
        x.as_slice::<T>().expect("checked element type"),
        weight.as_slice::<T>().expect("checked element type"),
        output_grad.as_slice::<T>().expect("checked element type"),
        wanted,
    );
    let [height, width] = g.size_in;
    let [kh, kw] = g.kernel;
    (
        dx.map(|dx| {
            FlexTensor::from_data(TensorData::new(dx, [g.batch, g.channels_in, height, width]))
        }),
        dw.map(|dw| {
            FlexTensor::from_data(TensorData::new(dw, [g.channels_out, g.channels_in, kh, kw]))
        }),
    )
}

/// burn's own convolutions on the cubecl backends (wgpu, cuda).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl ConvOps for burn::backend::Cube {}

impl ConvOps for Flex {
    fn dense_conv2d(x: FlexTensor, weight: FlexTensor, options: ConvOptions<2>) -> FlexTensor {
        let geometry = Geometry::new(x.shape().as_slice(), weight.shape().as_slice(), &options);
        match (geometry, x.dtype(), weight.dtype()) {
            (Some(g), DType::F32, DType::F32) => host_forward::<f32>(&g, &x, &weight),
            (Some(g), DType::F64, DType::F64) => host_forward::<f64>(&g, &x, &weight),
            _ => Flex::conv2d(x, weight, None, options),
        }
    }

    fn dense_conv2d_backward(
        x: FlexTensor,
        weight: FlexTensor,
        output_grad: FlexTensor,
        options: ConvOptions<2>,
        wanted: [bool; 2],
    ) -> (Option<FlexTensor>, Option<FlexTensor>) {
        let geometry = Geometry::new(x.shape().as_slice(), weight.shape().as_slice(), &options);
        let dtypes = [x.dtype(), weight.dtype(), output_grad.dtype()];
        match (geometry, dtypes) {
            (Some(g), [DType::F32, DType::F32, DType::F32]) => {
                host_backward::<f32>(&g, &x, &weight, &output_grad, wanted)
            }
            (Some(g), [DType::F64, DType::F64, DType::F64]) => {
                host_backward::<f64>(&g, &x, &weight, &output_grad, wanted)
            }
            _ => burn_backward::<Flex>(x, weight, output_grad, options, wanted),
        }
    }
}

/// The backward pass of [`ConvOps::dense_conv2d`].
#[derive(Debug)]
struct DenseConv2dBackward;

impl<B: Backend + ConvOps> Backward<B, 2> for DenseConv2dBackward {
    /// The input, the weight and the options.
    type State = (
        B::FloatTensorPrimitive,
        B::FloatTensorPrimitive,
        ConvOptions<2>,
    );

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [input_node, weight_node] = ops.parents;
        let output_grad = grads.consume::<B>(&ops.node);
        let (x, weight, options) = ops.state;
        let wanted = [input_node.is_some(), weight_node.is_some()];
        let (input_grad, weight_grad) =
            B::dense_conv2d_backward(x, weight, output_grad, options, wanted);
        if let (Some(node), Some(grad)) = (input_node, input_grad) {
            grads.register::<B>(node.id, grad);
        }
        if let (Some(node), Some(grad)) = (weight_node, weight_grad) {
            grads.register::<B>(node.id, grad);
        }
    }
}

impl<B: Backend + ConvOps, C: CheckpointStrategy> ConvOps for Autodiff<B, C> {
    fn dense_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let prepared = DenseConv2dBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful();
        let (x, weight) = (x.into_primitive(), weight.into_primitive());
        match prepared {
            OpsKind::Tracked(prep) => {
                let output = B::dense_conv2d(x.clone(), weight.clone(), options.clone());
                prep.finish((x, weight, options), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::dense_conv2d(x, weight, options)),
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::module;
    use burn::tensor::{Distribution, Tolerance};
    use proptest::prelude::*;

    use super::*;
    use crate::device::autodiff_device;

    /// Output, input gradient and weight gradient of `run` on `x` and `weight`, with the output
    /// gradient `probe` (the gradient of `sum(output · probe)`).
    fn value_and_gradients(
        run: impl Fn(Tensor<4>, Tensor<4>) -> Tensor<4>,
        x: &Tensor<4>,
        weight: &Tensor<4>,
        probe: &Tensor<4>,
    ) -> [TensorData; 3] {
        let (x, weight) = (x.clone().require_grad(), weight.clone().require_grad());
        let output = run(x.clone(), weight.clone());
        let grads = (output.clone() * probe.clone()).sum().backward();
        [
            output.into_data(),
            x.grad(&grads).expect("input gradient").into_data(),
            weight.grad(&grads).expect("weight gradient").into_data(),
        ]
    }

    /// lacoot's kernel against burn's conv2d on one shape: value and both gradients.
    fn check_against_burn(
        [batch, channels_in, height, width]: [usize; 4],
        [channels_out, kh, kw]: [usize; 3],
        stride: [usize; 2],
        padding: [usize; 2],
        seed: u64,
    ) {
        let device = autodiff_device();
        device.seed(seed);
        let x = Tensor::<4>::random(
            [batch, channels_in, height, width],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let weight = Tensor::<4>::random(
            [channels_out, channels_in, kh, kw],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let options = ConvOptions::new(stride, padding, [1, 1], 1);
        let reference = module::conv2d(x.clone(), weight.clone(), None, options.clone());
        let probe = Tensor::<4>::random(reference.dims(), Distribution::Normal(0.0, 1.0), &device);
        let ours = value_and_gradients(
            |x, w| dense_conv2d(x, w, options.clone()),
            &x,
            &weight,
            &probe,
        );
        let theirs = value_and_gradients(
            |x, w| module::conv2d(x, w, None, options.clone()),
            &x,
            &weight,
            &probe,
        );
        for (ours, theirs) in ours.iter().zip(&theirs) {
            assert_eq!(ours.shape(), theirs.shape());
            ours.assert_approx_eq::<f32>(theirs, Tolerance::absolute(1e-3).set_relative(1e-4));
        }
    }

    #[test]
    fn matches_burn_on_the_resnet_shapes() {
        // 3x3 at stride 1, 3x3 at stride 2 and the 1x1 shortcut at stride 2; a stem from 3 channels.
        check_against_burn([4, 8, 8, 8], [8, 3, 3], [1, 1], [1, 1], 1);
        check_against_burn([4, 8, 8, 8], [16, 3, 3], [2, 2], [1, 1], 2);
        check_against_burn([4, 8, 8, 8], [16, 1, 1], [2, 2], [0, 0], 3);
        check_against_burn([2, 3, 12, 12], [8, 3, 3], [1, 1], [1, 1], 4);
    }

    #[test]
    fn matches_burn_on_a_patch_embedding_and_in_several_chunks() {
        // Swin's 4x4 patches at stride 4 (with bias in the model, added outside the kernel).
        check_against_burn([2, 3, 16, 16], [8, 4, 4], [4, 4], [0, 0], 5);
        // Enough images that the batch is cut into chunks: the weight gradient accumulates.
        let g = dense([40, 64, 16, 16], [64, 64, 3, 3], [1, 1], [1, 1]);
        assert!(g.chunk_images() < 40, "{}", g.chunk_images());
        check_against_burn([40, 64, 16, 16], [64, 3, 3], [1, 1], [1, 1], 6);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn matches_burn_on_random_shapes(
            batch in 1usize..4,
            channels_in in 1usize..6,
            channels_out in 1usize..6,
            height in 1usize..9,
            width in 1usize..9,
            kh in 1usize..4,
            kw in 1usize..4,
            stride in (1usize..4, 1usize..4),
            padding in (0usize..3, 0usize..3),
            seed in 0u64..1000,
        ) {
            prop_assume!(height + 2 * padding.0 >= kh && width + 2 * padding.1 >= kw);
            check_against_burn(
                [batch, channels_in, height, width],
                [channels_out, kh, kw],
                [stride.0, stride.1],
                [padding.0, padding.1],
                seed,
            );
        }
    }

    /// The geometry of a dense convolution of `x` by `weight`.
    fn dense(
        x: [usize; 4],
        weight: [usize; 4],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> Geometry {
        Geometry::new(&x, &weight, &ConvOptions::new(stride, padding, [1, 1], 1)).unwrap()
    }

    /// Smooth, deterministic input, weight and output-gradient values for `g`.
    fn operands(g: &Geometry) -> [Vec<f64>; 3] {
        let lens = [
            g.batch * g.channels_in * g.plane_in(),
            g.channels_out * g.patch_len(),
            g.batch * g.channels_out * g.positions(),
        ];
        lens.map(|len| (0..len).map(|i| ((i as f64 + 0.3) * 0.731).sin()).collect())
    }

    /// Central differences of `sum(conv(x, w) · probe)` in f64 against the kernel's gradients.
    #[test]
    fn gradients_match_finite_differences() {
        // Small output planes (one product per chunk) and large ones (image by image).
        check_finite_differences(dense([2, 3, 5, 4], [4, 3, 3, 2], [2, 1], [1, 1]));
        let by_image = dense([3, 2, 9, 8], [2, 2, 3, 3], [1, 1], [1, 1]);
        assert!(by_image.positions() >= DIRECT_POSITIONS);
        check_finite_differences(by_image);
    }

    fn check_finite_differences(g: Geometry) {
        let [x, w, probe] = operands(&g);
        let objective = |x: &[f64], w: &[f64]| -> f64 {
            forward(&g, x, w)
                .iter()
                .zip(&probe)
                .map(|(o, p)| o * p)
                .sum()
        };
        let (dx, dw) = backward(&g, &x, &w, &probe, [true, true]);
        let step = 1e-6;
        for (values, grad, is_input) in [(&x, dx.unwrap(), true), (&w, dw.unwrap(), false)] {
            for index in 0..values.len() {
                let mut plus = values.clone();
                let mut minus = values.clone();
                plus[index] += step;
                minus[index] -= step;
                let numeric = if is_input {
                    (objective(&plus, &w) - objective(&minus, &w)) / (2.0 * step)
                } else {
                    (objective(&x, &plus) - objective(&x, &minus)) / (2.0 * step)
                };
                assert!(
                    (numeric - grad[index]).abs() < 1e-7,
                    "{index}: {numeric} vs {}",
                    grad[index]
                );
            }
        }
    }

    /// The same values bit for bit on one thread and on four.
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let g = dense([24, 32, 16, 16], [48, 32, 3, 3], [1, 1], [1, 1]);
        let [x, w, dy] = operands(&g).map(|v| v.into_iter().map(|v| v as f32).collect::<Vec<_>>());
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| (forward(&g, &x, &w), backward(&g, &x, &w, &dy, [true, true])))
        };
        let (one, four) = (run(1), run(4));
        assert!(one.0 == four.0, "forward differs");
        assert!(one.1 == four.1, "backward differs");
    }
}
