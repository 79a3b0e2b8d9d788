//! Training throughput with and without the LaCoOT regulariser, batch 128: one full step per
//! iteration (forward, cross-entropy, max-sliced distances on every collapsible block with 50 fresh
//! directions, backward, SGD update). Throughput is 128 / (time per iteration) images per second.
//!
//! - ResNet-18 (the paper's CIFAR variant, width 64) on 28x28 single-channel (Fashion-MNIST) and
//!   32x32 RGB (CIFAR) inputs;
//! - MobileNetV2, the paper's CIFAR variant at full width, on 32x32 RGB, with the paper's
//!   depthwise removal units;
//! - Swin-T at full width on 32x32 RGB (the paper's CIFAR setting).

/// The allocator and setting the `lacoot` binary uses (see `lacoot::memory`).
#[global_allocator]
static ALLOCATOR: lacoot::memory::Allocator = lacoot::memory::Allocator;

use burn::tensor::{Distribution, Int, Tensor};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use lacoot::device::autodiff_device;
use lacoot::models::{Architecture, ModelSpec, RemovalUnit};
use lacoot::ot::DirectionSampler;
use lacoot::train::{TrainConfig, TrainingStep, build_optimizer, regulariser_weights};

const BATCH: usize = 128;

/// Benchmarks training steps of `spec` at λ = 0 and λ = 5 in `group`.
fn bench_spec(c: &mut Criterion, group_name: &str, spec: &ModelSpec) {
    lacoot::memory::keep_freed_memory();
    // LACOOT_DEVICE=wgpu (with --features wgpu) times the step on a GPU; each step reads its
    // reported numbers back, so every iteration ends synchronised.
    lacoot::device::select_from_env().expect("LACOOT_DEVICE names a device");
    let mut group = c.benchmark_group(group_name);
    group.sample_size(10);
    let device = autodiff_device();
    let [channels, size] = [spec.in_channels, spec.input_size];
    for lambda in [0.0, 5.0] {
        let config = TrainConfig {
            lambda,
            ..TrainConfig::default()
        };
        let mut model = Some(spec.build(&device).unwrap());
        let blocks = regulariser_weights(model.as_ref().unwrap(), &config).unwrap();
        let mut step = TrainingStep::new(&config, blocks, DirectionSampler::new(0), &device);
        let mut optimizer = build_optimizer(&config);
        let images = Tensor::<4>::random(
            [BATCH, channels, size, size],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let labels = Tensor::<1, Int>::from_data(
            (0..BATCH as i64)
                .map(|i| i % 10)
                .collect::<Vec<_>>()
                .as_slice(),
            &device,
        );
        let name = format!("{channels}x{size}x{size}_lambda{lambda}");
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                let (next, outcome) = step
                    .run(
                        model.take().unwrap(),
                        &mut optimizer,
                        (images.clone(), labels.clone()),
                        0.01,
                        lambda,
                    )
                    .unwrap();
                model = Some(next);
                std::hint::black_box(outcome.loss)
            })
        });
    }
    group.finish();
}

fn resnet18(c: &mut Criterion) {
    for (channels, size) in [(1, 28), (3, 32)] {
        let spec = ModelSpec::new(Architecture::Resnet18, channels, size, 10);
        bench_spec(c, "resnet18_train_step_batch128", &spec);
    }
}

fn mobilenetv2(c: &mut Criterion) {
    let spec = ModelSpec {
        unit: RemovalUnit::Depthwise,
        ..ModelSpec::new(Architecture::Mobilenetv2Cifar, 3, 32, 10)
    };
    bench_spec(c, "mobilenetv2_cifar_train_step_batch128", &spec);
}

fn swin_t(c: &mut Criterion) {
    let spec = ModelSpec::new(Architecture::SwinT, 3, 32, 10);
    bench_spec(c, "swin_t_train_step_batch128", &spec);
}

criterion_group!(benches, resnet18, mobilenetv2, swin_t);
criterion_main!(benches);
