"""PyTorch's side of `cargo bench --bench eval_forward`: the paper's CIFAR ResNet-18 (width 64,
3x32x32), full and with the four `layerS.1` blocks replaced by identity, under `eval()` and
`inference_mode`, batch 1 and 64, 3 warm-up runs then the median of 30.

    python3 bench/torch_eval_forward.py --threads 2
"""

import argparse
import copy
import json

import torch
from torch import nn
from torch_train_step import median_s
from torchvision.models import resnet18


def median_ms(model: nn.Module, batch: int) -> float:
    images = torch.zeros(batch, 3, 32, 32)
    return 1e3 * median_s(lambda: model(images), warmup=3, repeats=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.eval()
    collapsed = copy.deepcopy(model)
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        getattr(collapsed, stage)[1] = nn.Identity()
    with torch.inference_mode():
        result = {"backend": f"torch-{torch.__version__}", "threads": args.threads}
        result["batch1_ms"] = round(median_ms(model, 1), 2)
        result["batch64_ms"] = round(median_ms(model, 64), 1)
        result["collapsed_batch1_ms"] = round(median_ms(collapsed, 1), 2)
        result["collapsed_batch64_ms"] = round(median_ms(collapsed, 64), 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
