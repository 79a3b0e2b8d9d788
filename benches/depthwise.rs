//! A 3x3 depthwise convolution, forward + backward to the gradients of input and weights, at the
//! largest depthwise layer of the paper's CIFAR MobileNetV2 (`features.3.conv.1`: 144 channels at
//! 32x32, batch 128). `bench/torch_train_step.py` times the same layer in PyTorch.

/// The allocator and setting the `lacoot` binary uses (see `lacoot::memory`).
#[global_allocator]
static ALLOCATOR: lacoot::memory::Allocator = lacoot::memory::Allocator;

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::tensor::{Distribution, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use lacoot::device::autodiff_device;

fn depthwise(c: &mut Criterion) {
    lacoot::memory::keep_freed_memory();
    let device = autodiff_device();
    let channels = 144;
    let conv = Conv2dConfig::new([channels, channels], [3, 3])
        .with_groups(channels)
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .init(&device);
    let input =
        Tensor::<4>::random([128, channels, 32, 32], Distribution::Default, &device).require_grad();
    let mut group = c.benchmark_group("depthwise_conv3x3");
    group.sample_size(10);
    group.bench_function("144x32x32_batch128_fwd_bwd", |b| {
        b.iter(|| {
            let gradients = conv.forward(input.clone()).sum().backward();
            let weight = conv.weight.grad(&gradients).expect("weight gradient");
            let input_grad = input.grad(&gradients).expect("input gradient");
            std::hint::black_box((weight.into_data(), input_grad.into_data()))
        })
    });
    group.finish();
}

criterion_group!(benches, depthwise);
criterion_main!(benches);
