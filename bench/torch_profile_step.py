"""Where PyTorch spends one training step of the paper's CIFAR ResNet-18 (batch 128, 3x32x32, SGD with
momentum), by operator: torch.profiler's self CPU time per step, averaged over 3 profiled steps after 2
warm-up steps. The lacoot side is `perf record` of `cargo bench --bench train_step` (BENCHMARKS.md).

    python3 bench/torch_profile_step.py --threads 2
"""

import argparse

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torchvision.models import resnet18

BATCH = 128
PROFILED_STEPS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--top", type=int, default=20, help="operators to list")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    images = torch.randn(BATCH, 3, 32, 32)
    labels = torch.arange(BATCH) % 10
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad()
        loss_fn(model(images), labels).backward()
        optimizer.step()

    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(PROFILED_STEPS):
            step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"PyTorch {torch.__version__}, {args.threads} threads: {total / 1e3 / PROFILED_STEPS:.1f} ms of self CPU time per step")
    print("| operator | ms per step | share |")
    print("|---|---:|---:|")
    for event in events[: args.top]:
        per_step = event.self_cpu_time_total / 1e3 / PROFILED_STEPS
        print(f"| `{event.key}` | {per_step:.1f} | {100 * event.self_cpu_time_total / total:.1f} % |")


if __name__ == "__main__":
    main()
