//! Where a ResNet-18 training step spends its BatchNorm time: every batch normalisation of the
//! paper's CIFAR ResNet-18 (width 64, batch 128, 3x32x32 input, max-pool kept), and then of the
//! reference Fashion-MNIST setting (width 16, 1x28x28, small planes), forward and backward with the
//! batch's statistics, and the eval-mode forward, timed alone:
//!
//! - burn: `batch_norm_train`, `batch_norm_train_backward` and `batch_norm` of burn's `ModuleOps`,
//!   which `flex` runs as generic tensor ops;
//! - lacoot: `lacoot::kernels::batch_norm` (two fused passes each way).
//!
//! Each pass is the median of 7 runs after one warm-up, multiplied by how often the network has
//! that shape. `bench/torch_batch_norm.py` times the same passes in PyTorch with the same table.
//!
//! A second table times the end of a basic block, `relu(bn(x) + residual)`, forward (training)
//! and backward, as separate ops (lacoot's normalisation, then flex's addition and ReLU; backward
//! flex's `relu_backward`, then lacoot's) against `lacoot::kernels::batch_norm_rectified`'s
//! fused op (the addition and the ReLU in the normalisation's output pass; backward one parallel
//! masking pass).
//!
//! `cargo bench --bench batch_norm` prints three Markdown tables and one JSON line per network and
//! implementation.

/// The allocator and setting the `lacoot` binary uses (see `lacoot::memory`).
#[global_allocator]
static ALLOCATOR: lacoot::memory::Allocator = lacoot::memory::Allocator;

mod common;

use burn::backend::Dispatch;
use burn::backend::ops::ActivationOps;
use burn::backend::ops::ModuleOps;
use burn::tensor::module::{batch_norm, batch_norm_train};
use burn::tensor::{Distribution, Tensor};
use lacoot::device::default_device;
use lacoot::kernels::Rectifier;
use lacoot::kernels::batch_norm::{NormOps, normalize_batch, normalize_batch_backward};

const BATCH: usize = 128;
const REPEATS: usize = 7;
const EPSILON: f64 = 1e-5;

/// The normalised activations of the CIFAR ResNet-18: (name, channels, size, count).
const SHAPES: [(&str, usize, usize, usize); 5] = [
    ("stem 64 @32", 64, 32, 1),
    ("layer1 64 @16", 64, 16, 4),
    ("layer2 128 @8", 128, 8, 5),
    ("layer3 256 @4", 256, 4, 5),
    ("layer4 512 @2", 512, 2, 5),
];

/// The same for the reference Fashion-MNIST setting (width 16, 28x28), whose planes are small.
const WIDTH16_SHAPES: [(&str, usize, usize, usize); 5] = [
    ("stem 16 @28", 16, 28, 1),
    ("layer1 16 @14", 16, 14, 4),
    ("layer2 32 @7", 32, 7, 5),
    ("layer3 64 @4", 64, 4, 5),
    ("layer4 128 @2", 128, 2, 5),
];

fn median_ms(run: impl FnMut()) -> f64 {
    common::median_ms(REPEATS, run)
}

/// Forward (training), backward and eval forward of one shape: burn's ops, then lacoot's.
fn time_shape(channels: usize, size: usize, device: &burn::tensor::Device) -> [[f64; 3]; 2] {
    let shape = [BATCH, channels, size, size];
    let x = Tensor::<4>::random(shape, Distribution::Normal(0.5, 2.0), device);
    let output_grad = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), device);
    let gamma = Tensor::<1>::random([channels], Distribution::Normal(1.0, 0.1), device);
    let beta = Tensor::<1>::random([channels], Distribution::Normal(0.0, 0.1), device);
    let train = batch_norm_train(x.clone(), gamma.clone(), beta.clone(), EPSILON);
    let (mean, variance) = (train.mean, train.variance);
    let burn = [
        median_ms(|| {
            std::hint::black_box(batch_norm_train(
                x.clone(),
                gamma.clone(),
                beta.clone(),
                EPSILON,
            ));
        }),
        median_ms(|| {
            std::hint::black_box(
                <Dispatch as ModuleOps<Dispatch>>::batch_norm_train_backward(
                    x.clone().into_dispatch(),
                    gamma.clone().into_dispatch(),
                    mean.clone().into_dispatch(),
                    variance.clone().into_dispatch(),
                    EPSILON,
                    output_grad.clone().into_dispatch(),
                ),
            );
        }),
        median_ms(|| {
            std::hint::black_box(batch_norm(
                x.clone(),
                gamma.clone(),
                beta.clone(),
                mean.clone(),
                variance.clone(),
                EPSILON,
            ));
        }),
    ];
    let lacoot = [
        median_ms(|| {
            std::hint::black_box(normalize_batch(
                x.clone(),
                gamma.clone(),
                beta.clone(),
                EPSILON,
            ));
        }),
        median_ms(|| {
            std::hint::black_box(normalize_batch_backward(
                x.clone(),
                gamma.clone(),
                [mean.clone(), variance.clone()],
                EPSILON,
                output_grad.clone(),
            ));
        }),
        median_ms(|| {
            std::hint::black_box(<Dispatch as NormOps>::normalize_with_statistics(
                x.clone().into_dispatch(),
                gamma.clone().into_dispatch(),
                beta.clone().into_dispatch(),
                mean.clone().into_dispatch(),
                variance.clone().into_dispatch(),
                EPSILON,
            ));
        }),
    ];
    [burn, lacoot]
}

/// `relu(bn(x) + residual)` of one shape, forward (training) and backward: separate ops, then
/// fused.
fn time_block_end(channels: usize, size: usize, device: &burn::tensor::Device) -> [[f64; 2]; 2] {
    let shape = [BATCH, channels, size, size];
    let random = |mean: f64| Tensor::<4>::random(shape, Distribution::Normal(mean, 2.0), device);
    let (x, residual, output_grad) = (random(0.5), random(0.0), random(0.0));
    let gamma = Tensor::<1>::random([channels], Distribution::Normal(1.0, 0.1), device);
    let beta = Tensor::<1>::random([channels], Distribution::Normal(0.0, 0.1), device);
    let (normalized, mean, variance) =
        normalize_batch(x.clone(), gamma.clone(), beta.clone(), EPSILON);
    let output = burn::tensor::activation::relu(normalized + residual.clone());
    let backward = |masked: Tensor<4>| {
        normalize_batch_backward(
            x.clone(),
            gamma.clone(),
            [mean.clone(), variance.clone()],
            EPSILON,
            masked,
        )
    };
    let separate = [
        median_ms(|| {
            let (y, _, _) = normalize_batch(x.clone(), gamma.clone(), beta.clone(), EPSILON);
            std::hint::black_box(burn::tensor::activation::relu(y + residual.clone()));
        }),
        median_ms(|| {
            let masked = <Dispatch as ActivationOps<Dispatch>>::relu_backward(
                output.clone().into_dispatch(),
                output_grad.clone().into_dispatch(),
            );
            std::hint::black_box(backward(Tensor::from_dispatch(masked)));
        }),
    ];
    let fused = [
        median_ms(|| {
            std::hint::black_box(<Dispatch as NormOps>::normalize_batch_residual_rectified(
                x.clone().into_dispatch(),
                gamma.clone().into_dispatch(),
                beta.clone().into_dispatch(),
                residual.clone().into_dispatch(),
                Rectifier::Relu,
                EPSILON,
            ));
        }),
        median_ms(|| {
            let masked = <Dispatch as NormOps>::rectifier_backward(
                output.clone().into_dispatch(),
                output_grad.clone().into_dispatch(),
                Rectifier::Relu,
            );
            std::hint::black_box(backward(Tensor::from_dispatch(masked)));
        }),
    ];
    [separate, fused]
}

/// The first table for one network's `shapes`, and its JSON lines.
fn normalization_table(
    network: &str,
    shapes: &[(&str, usize, usize, usize)],
    device: &burn::tensor::Device,
) {
    let threads = rayon::current_num_threads();
    println!("{network} batch norms, batch {BATCH}, {threads} threads: burn flex / lacoot, ms");
    println!("| shape | count | train forward | backward | eval forward |");
    println!("|---|---:|---:|---:|---:|");
    let mut totals = [[0.0f64; 3]; 2];
    for &(name, channels, size, count) in shapes {
        let times = time_shape(channels, size, device);
        let cells: Vec<String> = (0..3)
            .map(|pass| format!("{:.2} / {:.2}", times[0][pass], times[1][pass]))
            .collect();
        println!("| {name} | {count} | {} |", cells.join(" | "));
        for (total, time) in totals.iter_mut().zip(&times) {
            for pass in 0..3 {
                total[pass] += time[pass] * count as f64;
            }
        }
    }
    let cells: Vec<String> = (0..3)
        .map(|pass| format!("**{:.1} / {:.1}**", totals[0][pass], totals[1][pass]))
        .collect();
    println!("| **network** | | {} |", cells.join(" | "));
    for (implementation, total) in ["burn", "lacoot"].iter().zip(&totals) {
        println!(
            "{{\"network\":\"{network}\",\"implementation\":\"{implementation}\",\"threads\":{threads},\"train_forward_ms\":{:.3},\"backward_ms\":{:.3},\"eval_forward_ms\":{:.3}}}",
            total[0], total[1], total[2]
        );
    }
}

fn main() {
    lacoot::memory::keep_freed_memory();
    let device = default_device();
    let threads = rayon::current_num_threads();
    normalization_table("ResNet-18 (CIFAR)", &SHAPES, &device);
    println!();
    normalization_table(
        "ResNet-18 width 16 (Fashion-MNIST)",
        &WIDTH16_SHAPES,
        &device,
    );

    println!();
    println!("relu(bn(x) + residual), batch {BATCH}, {threads} threads: separate / fused, ms");
    println!("| shape | count | train forward | backward |");
    println!("|---|---:|---:|---:|");
    let mut totals = [[0.0f64; 2]; 2];
    for (name, channels, size, count) in SHAPES {
        let times = time_block_end(channels, size, &device);
        let cells: Vec<String> = (0..2)
            .map(|pass| format!("{:.2} / {:.2}", times[0][pass], times[1][pass]))
            .collect();
        println!("| {name} | {count} | {} |", cells.join(" | "));
        for (total, time) in totals.iter_mut().zip(&times) {
            for pass in 0..2 {
                total[pass] += time[pass] * count as f64;
            }
        }
    }
    let cells: Vec<String> = (0..2)
        .map(|pass| format!("**{:.1} / {:.1}**", totals[0][pass], totals[1][pass]))
        .collect();
    println!("| **network** | | {} |", cells.join(" | "));
    for (implementation, total) in ["separate", "fused"].iter().zip(&totals) {
        println!(
            "{{\"block_end\":\"{implementation}\",\"threads\":{threads},\"train_forward_ms\":{:.3},\"backward_ms\":{:.3}}}",
            total[0], total[1]
        );
    }
}
