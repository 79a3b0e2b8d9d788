//! Max-sliced Wasserstein forward + backward at the paper's batch size (n = 128) and L = 50
//! directions, for the feature sizes of ResNet-18's stages on CIFAR (d = 2048, 16384, 65536).
//!
//! Each iteration draws fresh directions, computes the distance with gradient tracking and runs the
//! backward pass to the gradients of both clouds, as a training step does (and as POT's
//! `max_sliced_wasserstein_distance` + `backward()` does in `bench/pot_mswd.py`). The sliced
//! (mean) distance and the direction sampling alone are measured beside it for reference.

/// The allocator and setting the `lacoot` binary uses (see `lacoot::memory`).
#[global_allocator]
static ALLOCATOR: lacoot::memory::Allocator = lacoot::memory::Allocator;

use burn::tensor::{DType, Tensor, TensorData};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use lacoot::device::{autodiff_device, default_device};
use lacoot::ot::{DirectionSampler, max_sliced_wasserstein, sliced_wasserstein};
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use rand_distr::{Distribution, StandardNormal};

const POINTS: usize = 128;
const DIRECTIONS: usize = 50;
const DIMS: [usize; 3] = [2048, 16384, 65536];

/// A block's input (Gaussian) and output (ReLU of a Gaussian), as tracked tensors.
fn clouds(dim: usize) -> (Tensor<2>, Tensor<2>) {
    let device = autodiff_device();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(0);
    let mut draw = |relu: bool| {
        let values: Vec<f32> = (0..POINTS * dim)
            .map(|_| {
                let v: f32 = StandardNormal.sample(&mut rng);
                if relu { v.max(0.0) } else { v }
            })
            .collect();
        Tensor::<2>::from_data(
            TensorData::new(values, [POINTS, dim]),
            (&device, DType::F32),
        )
        .require_grad()
    };
    (draw(false), draw(true))
}

/// Reads one element of each gradient so that nothing is left pending.
fn touch(gradients: [Option<Tensor<2>>; 2]) {
    for gradient in gradients {
        let corner = gradient.expect("gradient").slice([0..1, 0..1]);
        std::hint::black_box(corner.into_data());
    }
}

fn distances(c: &mut Criterion) {
    lacoot::memory::keep_freed_memory();
    // LACOOT_DEVICE=wgpu (with --features wgpu) times the distances on a GPU; `touch` reads the
    // gradients, so every iteration ends synchronised.
    lacoot::device::select_from_env().expect("LACOOT_DEVICE names a device");
    let mut group = c.benchmark_group("sliced_w2_n128_L50");
    group.sample_size(20);
    for dim in DIMS {
        let (x, y) = clouds(dim);
        let mut sampler = DirectionSampler::new(0);
        group.bench_function(BenchmarkId::new("max_sliced_forward_backward", dim), |b| {
            b.iter(|| {
                let dirs = sampler
                    .sample(dim, DIRECTIONS, &default_device(), DType::F32)
                    .unwrap();
                let result =
                    max_sliced_wasserstein(x.clone(), y.clone(), &dirs, 2.0, None).unwrap();
                let grads = result.value.backward();
                touch([x.grad(&grads), y.grad(&grads)]);
            })
        });
        group.bench_function(BenchmarkId::new("sliced_forward_backward", dim), |b| {
            b.iter(|| {
                let dirs = sampler
                    .sample(dim, DIRECTIONS, &default_device(), DType::F32)
                    .unwrap();
                let result = sliced_wasserstein(x.clone(), y.clone(), &dirs, 2.0).unwrap();
                let grads = result.value.backward();
                touch([x.grad(&grads), y.grad(&grads)]);
            })
        });
        group.bench_function(BenchmarkId::new("sample_directions", dim), |b| {
            b.iter(|| {
                let dirs = sampler
                    .sample(dim, DIRECTIONS, &default_device(), DType::F32)
                    .unwrap();
                std::hint::black_box(dirs.count());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, distances);
criterion_main!(benches);
