//! The stem max-pool of the CIFAR ResNet-18 (3x3 windows, stride 2, padding 1), forward and
//! backward, timed alone at the two shapes lacoot trains: the paper's CIFAR network (width 64,
//! 32x32 planes) and the reference Fashion-MNIST setting (width 16, 28x28 planes), batch 128.
//!
//! - burn: `max_pool2d_with_indices` and `max_pool2d_with_indices_backward` of burn's `ModuleOps`
//!   (what burn's autodiff runs; `flex` pools through its 3-D implementation);
//! - lacoot: `lacoot::kernels::max_pool` in training form (window ranges computed once per call,
//!   separable pooling that also keeps `i32` indices; the backward scatters through them).
//!
//! Each pass is the median of 15 runs after one warm-up. `cargo bench --bench pooling` prints a
//! Markdown table and one JSON line.

/// The allocator and setting the `lacoot` binary uses (see `lacoot::memory`).
#[global_allocator]
static ALLOCATOR: lacoot::memory::Allocator = lacoot::memory::Allocator;

mod common;

use burn::backend::Dispatch;
use burn::backend::ops::ModuleOps;
use burn::tensor::{Distribution, IntDType, Tensor};
use lacoot::device::default_device;
use lacoot::kernels::max_pool::PoolOps;

const BATCH: usize = 128;
const REPEATS: usize = 15;
const KERNEL: [usize; 2] = [3, 3];
const STRIDE: [usize; 2] = [2, 2];
const PADDING: [usize; 2] = [1, 1];

/// The pooled activations: (name, channels, size).
const SHAPES: [(&str, usize, usize); 2] = [
    ("CIFAR ResNet-18, 64 @32", 64, 32),
    ("Fashion-MNIST width 16, 16 @28", 16, 28),
];

fn median_ms(run: impl FnMut()) -> f64 {
    common::median_ms(REPEATS, run)
}

/// Forward and backward of one shape: burn's ops, then lacoot's.
fn time_shape(channels: usize, size: usize, device: &burn::tensor::Device) -> [[f64; 2]; 2] {
    let x = Tensor::<4>::random(
        [BATCH, channels, size, size],
        Distribution::Normal(0.0, 1.0),
        device,
    );
    let pooled = <Dispatch as ModuleOps<Dispatch>>::max_pool2d_with_indices(
        x.clone().into_dispatch(),
        KERNEL,
        STRIDE,
        PADDING,
        [1, 1],
        false,
        IntDType::I64,
    );
    let output_grad = Tensor::<4>::random(
        Tensor::<4>::from_dispatch(pooled.output).dims(),
        Distribution::Normal(0.0, 1.0),
        device,
    );
    let indices = pooled.indices;
    let burn = [
        median_ms(|| {
            std::hint::black_box(<Dispatch as ModuleOps<Dispatch>>::max_pool2d_with_indices(
                x.clone().into_dispatch(),
                KERNEL,
                STRIDE,
                PADDING,
                [1, 1],
                false,
                IntDType::I64,
            ));
        }),
        median_ms(|| {
            std::hint::black_box(
                <Dispatch as ModuleOps<Dispatch>>::max_pool2d_with_indices_backward(
                    x.clone().into_dispatch(),
                    KERNEL,
                    STRIDE,
                    PADDING,
                    [1, 1],
                    false,
                    output_grad.clone().into_dispatch(),
                    indices.clone(),
                ),
            );
        }),
    ];
    let (_, lacoot_indices) = <Dispatch as PoolOps>::max_pool2d_dense_with_indices(
        x.clone().into_dispatch(),
        KERNEL,
        STRIDE,
        PADDING,
    );
    let lacoot = [
        median_ms(|| {
            std::hint::black_box(<Dispatch as PoolOps>::max_pool2d_dense_with_indices(
                x.clone().into_dispatch(),
                KERNEL,
                STRIDE,
                PADDING,
            ));
        }),
        median_ms(|| {
            std::hint::black_box(<Dispatch as PoolOps>::max_pool2d_dense_backward(
                x.clone().into_dispatch(),
                KERNEL,
                STRIDE,
                PADDING,
                output_grad.clone().into_dispatch(),
                lacoot_indices.clone(),
            ));
        }),
    ];
    [burn, lacoot]
}

fn main() {
    lacoot::memory::keep_freed_memory();
    let device = default_device();
    let threads = rayon::current_num_threads();
    println!("3x3 / 2 max-pool, batch {BATCH}, {threads} threads: burn flex / lacoot, ms");
    println!("| shape | forward | backward |");
    println!("|---|---:|---:|");
    let mut json = Vec::new();
    for (name, channels, size) in SHAPES {
        let [burn, lacoot] = time_shape(channels, size, &device);
        println!(
            "| {name} | {:.2} / {:.2} | {:.2} / {:.2} |",
            burn[0], lacoot[0], burn[1], lacoot[1]
        );
        json.push(format!(
            "{{\"shape\":\"{name}\",\"burn_forward_ms\":{:.3},\"burn_backward_ms\":{:.3},\"lacoot_forward_ms\":{:.3},\"lacoot_backward_ms\":{:.3}}}",
            burn[0], burn[1], lacoot[0], lacoot[1]
        ));
    }
    println!("{{\"threads\":{threads},\"shapes\":[{}]}}", json.join(","));
}
