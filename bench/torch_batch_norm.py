"""PyTorch's batch normalisation passes on the shapes of `benches/batch_norm.rs`, same table.

Every batch normalisation of the paper's CIFAR ResNet-18 (width 64, batch 128, 3x32x32 input,
max-pool kept): the training forward (`aten::native_batch_norm` with the batch's statistics), its
backward (`aten::native_batch_norm_backward`, the three gradients) and the eval forward, each the
median of 7 runs after one warm-up, times how often the network has the shape.

    python3 -m pip install torch
    python3 bench/torch_batch_norm.py --threads 2
"""

import argparse
import json
import statistics
import time

import torch

BATCH = 128
REPEATS = 7
EPSILON = 1e-5
SHAPES = [
    ("stem 64 @32", 64, 32, 1),
    ("layer1 64 @16", 64, 16, 4),
    ("layer2 128 @8", 128, 8, 5),
    ("layer3 256 @4", 256, 4, 5),
    ("layer4 512 @2", 512, 2, 5),
]


def median_ms(run):
    run()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def time_shape(channels, size):
    x = torch.randn(BATCH, channels, size, size) * 2.0 + 0.5
    grad = torch.randn_like(x)
    gamma = torch.randn(channels) * 0.1 + 1.0
    beta = torch.randn(channels) * 0.1
    running_mean, running_var = torch.zeros(channels), torch.ones(channels)
    aten = torch.ops.aten
    _, save_mean, save_invstd = aten.native_batch_norm(
        x, gamma, beta, running_mean, running_var, True, 0.1, EPSILON
    )
    with torch.inference_mode():
        forward = median_ms(
            lambda: aten.native_batch_norm(
                x, gamma, beta, running_mean.clone(), running_var.clone(), True, 0.1, EPSILON
            )
        )
        backward = median_ms(
            lambda: aten.native_batch_norm_backward(
                grad, x, gamma, running_mean, running_var, save_mean, save_invstd, True,
                EPSILON, [True, True, True],
            )
        )
        evaluation = median_ms(
            lambda: torch.nn.functional.batch_norm(
                x, running_mean, running_var, gamma, beta, False, 0.1, EPSILON
            )
        )
    return [forward, backward, evaluation]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"ResNet-18 (CIFAR) batch norms, batch {BATCH}, {args.threads} threads: PyTorch, ms")
    print("| shape | count | train forward | backward | eval forward |")
    print("|---|---:|---:|---:|---:|")
    totals = [0.0, 0.0, 0.0]
    for name, channels, size, count in SHAPES:
        times = time_shape(channels, size)
        print(f"| {name} | {count} | " + " | ".join(f"{t:.2f}" for t in times) + " |")
        totals = [total + t * count for total, t in zip(totals, times)]
    print("| **network** | | " + " | ".join(f"**{t:.1f}**" for t in totals) + " |")
    print(json.dumps({
        "implementation": f"torch-{torch.__version__}",
        "threads": args.threads,
        "train_forward_ms": round(totals[0], 3),
        "backward_ms": round(totals[1], 3),
        "eval_forward_ms": round(totals[2], 3),
    }))


if __name__ == "__main__":
    main()
