"""PyTorch + POT on a CUDA GPU: the side of `bench/gpu/run.sh` that lacoot's wgpu numbers are compared with.

Measures, with `torch.cuda.synchronize()` around every timed run (warm-up first, then the median):
- the paper's CIFAR ResNet-18 training step, batch 128, full width: lambda = 0 (cross-entropy only)
  and lambda = 5 (plus POT's `max_sliced_wasserstein_distance` between the input and output of each
  of the four `layerS.1` blocks, 50 projections, captured with forward hooks, the way the authors'
  code trains);
- POT's max-sliced distance forward + backward alone at n = 128, d = 16384, L = 50;
- inference of the full and of the collapsed network (the four `layerS.1` replaced by identity) at
  batch 1 and 64 under `eval()` and `inference_mode`.
Prints one JSON object.

    python3 bench/gpu/torch_cuda.py
"""

import copy
import json
import statistics
import time

import ot
import torch
from torch import nn
from torchvision.models import resnet18

BATCH, PROJECTIONS, LAMBDA = 128, 50, 5.0
BLOCKS = ("layer1", "layer2", "layer3", "layer4")


def median_ms(run, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def cifar_resnet18() -> nn.Module:
    model = resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    return model.cuda()


def train_step_ms(lam: float) -> float:
    model = cifar_resnet18().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    images = torch.randn(BATCH, 3, 32, 32, device="cuda")
    labels = torch.arange(BATCH, device="cuda") % 10
    loss_fn = nn.CrossEntropyLoss()
    captured = []
    if lam > 0:
        for stage in BLOCKS:
            getattr(model, stage)[1].register_forward_hook(
                lambda _m, inputs, output: captured.append((inputs[0], output)))

    def step():
        captured.clear()
        optimizer.zero_grad()
        loss = loss_fn(model(images), labels)
        if lam > 0:
            distances = [
                ot.sliced.max_sliced_wasserstein_distance(
                    x.flatten(1), y.flatten(1), n_projections=PROJECTIONS, p=2)
                for x, y in captured
            ]
            loss = loss + lam * torch.stack(distances).mean()
        loss.backward()
        optimizer.step()
        return loss.item()

    return median_ms(step, warmup=5, repeats=20)


def mswd_ms(dim: int) -> float:
    x = torch.randn(BATCH, dim, device="cuda", requires_grad=True)
    y = torch.relu(torch.randn(BATCH, dim, device="cuda")).requires_grad_()

    def run():
        x.grad = None
        y.grad = None
        ot.sliced.max_sliced_wasserstein_distance(x, y, n_projections=PROJECTIONS, p=2).backward()

    return median_ms(run, warmup=5, repeats=30)


def eval_ms(model: nn.Module, batch: int) -> float:
    images = torch.zeros(batch, 3, 32, 32, device="cuda")
    return median_ms(lambda: model(images), warmup=5, repeats=50)


def main() -> None:
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    result = {"torch": torch.__version__, "pot": ot.__version__,
              "gpu": torch.cuda.get_device_name(0)}
    result["train_step_lambda0_ms"] = round(train_step_ms(0.0), 2)
    result["train_step_lambda5_ms"] = round(train_step_ms(LAMBDA), 2)
    result["mswd_fwd_bwd_d16384_ms"] = round(mswd_ms(16384), 3)
    model = cifar_resnet18().eval()
    collapsed = copy.deepcopy(model)
    for stage in BLOCKS:
        getattr(collapsed, stage)[1] = nn.Identity()
    with torch.inference_mode():
        for name, net in (("full", model), ("collapsed", collapsed)):
            result[f"eval_{name}_batch1_ms"] = round(eval_ms(net, 1), 3)
            result[f"eval_{name}_batch64_ms"] = round(eval_ms(net, 64), 3)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
