//! Training throughput of ResNet-18 (the paper's CIFAR variant, width 64, batch 128) with and
//! without the LaCoOT regulariser, on 28x28 single-channel (Fashion-MNIST) and 32x32 RGB (CIFAR)
//! inputs: one full step per iteration (forward, cross-entropy, max-sliced distances on every
//! collapsible block with 50 fresh directions, backward, SGD update). Throughput is
//! 128 / (time per iteration) images per second.

/// The allocator the `lacoot` binary uses (see its `main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use burn::tensor::{Distribution, Int, Tensor};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use lacoot::device::autodiff_device;
use lacoot::models::{Architecture, ModelSpec, StemKind};
use lacoot::ot::DirectionSampler;
use lacoot::train::{
    RegularisedBlocks, TrainConfig, TrainingStep, build_optimizer, regularised_blocks,
};

const BATCH: usize = 128;

fn steps(c: &mut Criterion) {
    let mut group = c.benchmark_group("resnet18_train_step_batch128");
    group.sample_size(10);
    let device = autodiff_device();
    for (channels, size) in [(1, 28), (3, 32)] {
        for lambda in [0.0, 5.0] {
            let config = TrainConfig {
                lambda,
                ..TrainConfig::default()
            };
            let spec = ModelSpec {
                architecture: Architecture::Resnet18,
                stem: StemKind::Cifar,
                width: 64,
                in_channels: channels,
                input_size: size,
                num_classes: 10,
                removed_blocks: Vec::new(),
            };
            let mut model = Some(spec.build(&device).unwrap());
            let blocks = regularised_blocks(model.as_ref().unwrap(), RegularisedBlocks::All);
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
                            images.clone(),
                            labels.clone(),
                            0.01,
                        )
                        .unwrap();
                    model = Some(next);
                    std::hint::black_box(outcome.loss)
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, steps);
criterion_main!(benches);
