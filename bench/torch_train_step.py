"""Reference training throughput of PyTorch on CPU, for BENCHMARKS.md.

The same step as benches/train_step.rs without the regulariser (lambda = 0): forward, cross-entropy,
backward, SGD update (momentum 0.9, weight decay 1e-4), batch 128 of 3x32x32 Gaussian images, for
- the paper's CIFAR ResNet-18 (3x3 stem at stride 1, max-pool kept),
- the paper's CIFAR MobileNetV2 (stem and second stage at stride 1),
- torchvision's swin_t with 10 classes at 32x32.
Each model: 2 warm-up steps, then the median of 5. Also times a 3x3 depthwise convolution forward +
backward at MobileNetV2's largest CIFAR size. Prints one JSON object.

    python3 -m pip install torch torchvision
    python3 bench/torch_train_step.py --threads 2
"""

import argparse
import json
import platform
import statistics
import time

import torch
import torchvision
from torch import nn
from torchvision.models import resnet18, swin_t
from torchvision.models.mobilenetv2 import MobileNetV2

BATCH = 128

CIFAR_MOBILENET = [
    [1, 16, 1, 1],
    [6, 24, 2, 1],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


def median_s(run, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cifar_resnet18() -> nn.Module:
    model = resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    return model


def cifar_mobilenet_v2() -> nn.Module:
    model = MobileNetV2(num_classes=10, inverted_residual_setting=CIFAR_MOBILENET)
    model.features[0][0].stride = (1, 1)
    return model


def step_seconds(model: nn.Module) -> float:
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    images = torch.randn(BATCH, 3, 32, 32)
    labels = torch.arange(BATCH) % 10
    loss_fn = nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad()
        loss_fn(model(images), labels).backward()
        optimizer.step()

    return median_s(step, warmup=2, repeats=5)


def depthwise_ms() -> float:
    """3x3 depthwise conv, 144 channels at 32x32 (features.3 of the CIFAR MobileNetV2), batch 128."""
    conv = nn.Conv2d(144, 144, 3, padding=1, groups=144, bias=False)
    x = torch.randn(BATCH, 144, 32, 32, requires_grad=True)

    def run():
        conv.zero_grad()
        x.grad = None
        conv(x).sum().backward()

    return 1e3 * median_s(run, warmup=3, repeats=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "batch": BATCH,
    }
    for name, build in [
        ("resnet18_cifar", cifar_resnet18),
        ("mobilenetv2_cifar", cifar_mobilenet_v2),
        ("swin_t_32", lambda: swin_t(num_classes=10)),
    ]:
        seconds = step_seconds(build())
        results[name] = {"seconds_per_step": round(seconds, 4), "images_per_second": round(BATCH / seconds, 1)}
    results["depthwise_3x3_144x32x32_fwd_bwd_ms"] = round(depthwise_ms(), 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
