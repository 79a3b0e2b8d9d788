"""PyTorch's side of `cargo bench --bench conv_layers`: every convolution of the paper's CIFAR ResNet-18
(width 64, batch 128) timed alone in its three passes (forward, backward to the input, backward to the
weight), each the median of 5 runs after one warm-up, times how often the network has the layer. The
stem's backward to the input is shown but not counted (training never needs the images' gradient).

    python3 bench/torch_conv_layers.py --threads 2 [--batch 64]
"""

import argparse
import json

import torch
from torch_train_step import median_s


# name, channels in, channels out, kernel, stride, input size, count: the same table as the Rust bench.
LAYERS = [
    ("stem 3→64 @32", 3, 64, 3, 1, 32, 1),
    ("layer1 64→64 @16", 64, 64, 3, 1, 16, 4),
    ("layer2.0 64→128 /2", 64, 128, 3, 2, 16, 1),
    ("layer2 128→128 @8", 128, 128, 3, 1, 8, 3),
    ("layer2 shortcut 1x1 /2", 64, 128, 1, 2, 16, 1),
    ("layer3.0 128→256 /2", 128, 256, 3, 2, 8, 1),
    ("layer3 256→256 @4", 256, 256, 3, 1, 4, 3),
    ("layer3 shortcut 1x1 /2", 128, 256, 1, 2, 8, 1),
    ("layer4.0 256→512 /2", 256, 512, 3, 2, 4, 1),
    ("layer4 512→512 @2", 512, 512, 3, 1, 2, 3),
    ("layer4 shortcut 1x1 /2", 256, 512, 1, 2, 4, 1),
]


def median_ms(run) -> float:
    return 1e3 * median_s(run, warmup=1, repeats=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--batch", type=int, default=128, help="images per pass (the Rust side: LACOOT_BENCH_BATCH)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"ResNet-18 (CIFAR) convolutions, batch {args.batch}, PyTorch {torch.__version__}, {args.threads} threads")
    print("| layer | count | GMAC | forward ms | backward-input ms | backward-weight ms |")
    print("|---|---:|---:|---:|---:|---:|")
    totals = [0.0, 0.0, 0.0]
    with torch.inference_mode(False), torch.no_grad():
        for name, c_in, c_out, kernel, stride, size, count in LAYERS:
            padding = kernel // 2
            size_out = (size + 2 * padding - kernel) // stride + 1
            x = torch.randn(args.batch, c_in, size, size)
            w = 0.1 * torch.randn(c_out, c_in, kernel, kernel)
            grad = torch.randn(args.batch, c_out, size_out, size_out)

            def backward(mask):
                return torch.ops.aten.convolution_backward(
                    grad, x, w, None, [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], 1, mask
                )

            times = [
                median_ms(lambda: torch.nn.functional.conv2d(x, w, None, stride, padding)),
                median_ms(lambda: backward([True, False, False])),
                median_ms(lambda: backward([False, True, False])),
            ]
            for index, value in enumerate(times):
                if index != 1 or c_in != 3:
                    totals[index] += value * count
            macs = args.batch * c_out * size_out**2 * c_in * kernel**2
            print(f"| {name} | {count} | {macs * 1e-9:.3f} | {times[0]:.1f} | {times[1]:.1f} | {times[2]:.1f} |")
    print(f"| **network (times count)** | | | **{totals[0]:.1f}** | **{totals[1]:.1f}** | **{totals[2]:.1f}** |")
    print(
        json.dumps(
            {
                "backend": f"torch-{torch.__version__}",
                "threads": args.threads,
                "forward_ms": round(totals[0], 1),
                "backward_input_ms": round(totals[1], 1),
                "backward_weight_ms": round(totals[2], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
