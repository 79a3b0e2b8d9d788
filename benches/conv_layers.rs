//! Where a ResNet-18 training step spends its convolution time: every convolution of the paper's CIFAR
//! ResNet-18 (width 64, batch 128, 3x32x32 input) timed alone in its three passes, once the way
//! burn's autodiff runs them on `flex` and once by lacoot's kernels (`lacoot::kernels::conv2d`):
//!
//! - forward: burn's `conv2d`;
//! - backward to the input: burn's `conv_transpose2d` of the output gradient with the same weight;
//! - backward to the weight: burn's `conv2d` of the input with the output gradient as kernel, batch
//!   and channel axes swapped on both.
//!
//! Each pass is the median of 5 runs after one warm-up, multiplied by how often the network has that
//! layer (the stem's backward to the input is shown but not counted: training never needs the
//! images' gradient). `bench/torch_conv_layers.py` times the same passes in PyTorch (oneDNN) with
//! the same table.
//!
//! `cargo bench --bench conv_layers` prints a Markdown table and one JSON line per implementation;
//! `LACOOT_BENCH_BATCH=64` times another batch size (`--batch 64` on the PyTorch side), e.g. the
//! batch `eval_forward` measures.

/// The allocator and setting the `lacoot` binary uses (see `lacoot::memory`).
#[global_allocator]
static ALLOCATOR: lacoot::memory::Allocator = lacoot::memory::Allocator;

mod common;

use std::sync::LazyLock;

use burn::tensor::module::{conv_transpose2d, conv2d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{Distribution, Tensor};
use lacoot::device::default_device;
use lacoot::kernels::conv2d::{dense_conv2d, dense_conv2d_backward};

/// The batch size unless `LACOOT_BENCH_BATCH` says otherwise.
const DEFAULT_BATCH: usize = 128;

/// The batch size of every layer's tensors, read from the environment once.
static BATCH: LazyLock<usize> = LazyLock::new(|| match std::env::var("LACOOT_BENCH_BATCH") {
    Ok(value) => value
        .parse()
        .ok()
        .filter(|&batch| batch > 0)
        .unwrap_or_else(|| panic!("LACOOT_BENCH_BATCH={value:?} is not a positive integer")),
    Err(_) => DEFAULT_BATCH,
});

const REPEATS: usize = 5;

/// One convolution shape of the network and how many times it occurs.
struct Layer {
    name: &'static str,
    channels_in: usize,
    channels_out: usize,
    kernel: usize,
    stride: usize,
    size_in: usize,
    count: usize,
}

/// The convolutions of the CIFAR ResNet-18 (3x3 stem at stride 1, max-pool kept): 140.19 M MACs.
const LAYERS: [Layer; 11] = [
    layer("stem 3→64 @32", 3, 64, 3, 1, 32, 1),
    layer("layer1 64→64 @16", 64, 64, 3, 1, 16, 4),
    layer("layer2.0 64→128 /2", 64, 128, 3, 2, 16, 1),
    layer("layer2 128→128 @8", 128, 128, 3, 1, 8, 3),
    layer("layer2 shortcut 1x1 /2", 64, 128, 1, 2, 16, 1),
    layer("layer3.0 128→256 /2", 128, 256, 3, 2, 8, 1),
    layer("layer3 256→256 @4", 256, 256, 3, 1, 4, 3),
    layer("layer3 shortcut 1x1 /2", 128, 256, 1, 2, 8, 1),
    layer("layer4.0 256→512 /2", 256, 512, 3, 2, 4, 1),
    layer("layer4 512→512 @2", 512, 512, 3, 1, 2, 3),
    layer("layer4 shortcut 1x1 /2", 256, 512, 1, 2, 4, 1),
];

const fn layer(
    name: &'static str,
    channels_in: usize,
    channels_out: usize,
    kernel: usize,
    stride: usize,
    size_in: usize,
    count: usize,
) -> Layer {
    Layer {
        name,
        channels_in,
        channels_out,
        kernel,
        stride,
        size_in,
        count,
    }
}

impl Layer {
    fn padding(&self) -> usize {
        self.kernel / 2
    }

    fn size_out(&self) -> usize {
        (self.size_in + 2 * self.padding() - self.kernel) / self.stride + 1
    }

    /// The extra output rows `conv_transpose2d` needs to give back the input's size.
    fn padding_out(&self) -> usize {
        let covered = (self.size_out() - 1) * self.stride + self.kernel - 2 * self.padding();
        self.size_in - covered
    }

    fn macs(&self) -> usize {
        *BATCH * self.channels_out * self.size_out().pow(2) * self.channels_in * self.kernel.pow(2)
    }
}

fn median_ms(run: impl FnMut()) -> f64 {
    common::median_ms(REPEATS, run)
}

/// The three passes of one layer, by burn's ops and by lacoot's kernels.
fn time_layer(layer: &Layer, device: &burn::tensor::Device) -> [[f64; 3]; 2] {
    let [size_in, size_out] = [layer.size_in, layer.size_out()];
    let [stride, padding] = [layer.stride, layer.padding()];
    let input = Tensor::<4>::random(
        [*BATCH, layer.channels_in, size_in, size_in],
        Distribution::Normal(0.0, 1.0),
        device,
    );
    let weight = Tensor::<4>::random(
        [
            layer.channels_out,
            layer.channels_in,
            layer.kernel,
            layer.kernel,
        ],
        Distribution::Normal(0.0, 0.1),
        device,
    );
    let output_grad = Tensor::<4>::random(
        [*BATCH, layer.channels_out, size_out, size_out],
        Distribution::Normal(0.0, 1.0),
        device,
    );
    let options = ConvOptions::new([stride; 2], [padding; 2], [1, 1], 1);
    let transpose_options = ConvTransposeOptions::new(
        [stride; 2],
        [padding; 2],
        [layer.padding_out(); 2],
        [1, 1],
        1,
    );
    let weight_options = ConvOptions::new([1, 1], [padding; 2], [stride; 2], 1);
    let burn = [
        median_ms(|| {
            std::hint::black_box(conv2d(input.clone(), weight.clone(), None, options.clone()));
        }),
        median_ms(|| {
            let grad = conv_transpose2d(
                output_grad.clone(),
                weight.clone(),
                None,
                transpose_options.clone(),
            );
            std::hint::black_box(grad);
        }),
        median_ms(|| {
            let grad = conv2d(
                input.clone().swap_dims(0, 1),
                output_grad.clone().swap_dims(0, 1),
                None,
                weight_options.clone(),
            )
            .swap_dims(0, 1);
            std::hint::black_box(grad);
        }),
    ];
    let backward = |wanted| {
        median_ms(|| {
            std::hint::black_box(dense_conv2d_backward(
                input.clone(),
                weight.clone(),
                output_grad.clone(),
                options.clone(),
                wanted,
            ));
        })
    };
    let lacoot = [
        median_ms(|| {
            std::hint::black_box(dense_conv2d(input.clone(), weight.clone(), options.clone()));
        }),
        backward([true, false]),
        backward([false, true]),
    ];
    [burn, lacoot]
}

fn main() {
    lacoot::memory::keep_freed_memory();
    let device = default_device();
    let threads = rayon::current_num_threads();
    println!(
        "ResNet-18 (CIFAR) convolutions, batch {}, {threads} threads: burn flex / lacoot, ms",
        *BATCH
    );
    println!("| layer | count | GMAC | forward | backward-input | backward-weight |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut totals = [[0.0f64; 3]; 2];
    for layer in &LAYERS {
        let times = time_layer(layer, &device);
        for (total, time) in totals.iter_mut().zip(times) {
            for (pass, (sum, value)) in total.iter_mut().zip(time).enumerate() {
                // Training never asks for the gradient of the images, the stem's input.
                if pass != 1 || layer.channels_in != 3 {
                    *sum += value * layer.count as f64;
                }
            }
        }
        let cell = |pass: usize| format!("{:.1} / {:.1}", times[0][pass], times[1][pass]);
        println!(
            "| {} | {} | {:.3} | {} | {} | {} |",
            layer.name,
            layer.count,
            layer.macs() as f64 * 1e-9,
            cell(0),
            cell(1),
            cell(2)
        );
    }
    let cell = |pass: usize| format!("**{:.1} / {:.1}**", totals[0][pass], totals[1][pass]);
    println!(
        "| network (times count) | | | {} | {} | {} |",
        cell(0),
        cell(1),
        cell(2)
    );
    for (name, total) in ["burn-flex", "lacoot"].iter().zip(totals) {
        println!(
            "{{\"backend\":\"{name}\",\"threads\":{threads},\"forward_ms\":{:.1},\"backward_input_ms\":{:.1},\"backward_weight_ms\":{:.1}}}",
            total[0], total[1], total[2]
        );
    }
}
