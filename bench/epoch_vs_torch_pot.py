"""One training epoch of the reference setting, lacoot against PyTorch + POT, one right after the other.

The reference setting (issue "Training at PyTorch's speed on CPU", RESULTS.md): full Fashion-MNIST
(Debian's copy: `apt-get install dataset-fashion-mnist`; 54 000 training images after holding out
6 000 for validation), the paper's CIFAR ResNet-18 at width 16 (3x3 stem at stride 1, max-pool
kept), batch 128, SGD lr 0.1 momentum 0.9 weight decay 1e-4, random crop (padding 4) + horizontal
flip, lambda = 1 on the four `layerS.1` blocks with 50 fresh directions per step, then one pass over
the validation split.

PyTorch's side trains the way the authors' code does: forward hooks capture each regularised
block's input and output, and POT's `ot.sliced.max_sliced_wasserstein_distance` (torch backend)
gives the distance; the batches come from tensors already in memory (no DataLoader workers), which
favours PyTorch. lacoot's side is `lacoot train ... --epochs 1`, timed as a whole command and by
its own `seconds` in metrics.jsonl. Prints one JSON object.

    python3 -m pip install torch torchvision POT
    cargo build --release
    python3 bench/epoch_vs_torch_pot.py --threads 2 --lacoot target/release/lacoot
"""

import argparse
import gzip
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import ot
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

DATA = Path("/usr/share/datasets/fashion-mnist")
BATCH, WIDTH, LAMBDA, PROJECTIONS, VALIDATION = 128, 16, 1.0, 50, 6000


def read_idx(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


class CifarResNet18(nn.Module):
    """torchvision's ResNet-18 blocks at a chosen width, with the paper's CIFAR stem."""

    def __init__(self, width: int, channels: int, classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, planes_in = [], width
        for stage, stride in enumerate([1, 2, 2, 2]):
            planes = width * 2**stage
            down = None
            if stride != 1 or planes_in != planes:
                down = nn.Sequential(nn.Conv2d(planes_in, planes, 1, stride, bias=False),
                                     nn.BatchNorm2d(planes))
            layers.append(nn.Sequential(BasicBlock(planes_in, planes, stride, down),
                                        BasicBlock(planes, planes)))
            planes_in = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes_in, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with 4 pixels of zero padding, and a horizontal flip half of the time."""
    n, _, h, w = images.shape
    padded = nn.functional.pad(images, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=generator)
    dx = torch.randint(0, 9, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    out[flip] = out[flip].flip(-1)
    return out


def torch_epoch_seconds(threads: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    images = torch.from_numpy(read_idx(DATA / "train-images-idx3-ubyte.gz").copy()).float() / 255
    labels = torch.from_numpy(read_idx(DATA / "train-labels-idx1-ubyte.gz").astype(np.int64))
    order = torch.randperm(len(labels))
    validation, train = order[:VALIDATION], order[VALIDATION:]
    mean, std = images[train].mean(), images[train].std()
    images = ((images - mean) / std).unsqueeze(1)
    model = CifarResNet18(WIDTH, 1, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    captured = []
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        getattr(model, stage)[1].register_forward_hook(
            lambda _m, inputs, output: captured.append((inputs[0], output)))
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    model.train()
    shuffled = train[torch.randperm(len(train), generator=generator)]
    batches = len(shuffled) // BATCH
    for b in range(batches):
        index = shuffled[b * BATCH:(b + 1) * BATCH]
        captured.clear()
        optimizer.zero_grad()
        loss = loss_fn(model(augment(images[index], generator)), labels[index])
        distances = [ot.sliced.max_sliced_wasserstein_distance(
            x.flatten(1), y.flatten(1), n_projections=PROJECTIONS, p=2) for x, y in captured]
        loss = loss + LAMBDA * torch.stack(distances).mean()
        loss.backward()
        optimizer.step()
        loss.item()
    trained = time.perf_counter() - start
    model.eval()
    right = 0
    with torch.inference_mode():
        for b in range(0, VALIDATION, BATCH):
            index = validation[b:b + BATCH]
            right += (model(images[index]).argmax(1) == labels[index]).sum().item()
    total = time.perf_counter() - start
    return {"train_seconds": round(trained, 1), "epoch_seconds": round(total, 1),
            "batches": batches, "validation_accuracy": right / VALIDATION}


def lacoot_epoch_seconds(binary: Path, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run"
        command = [str(binary), "train", "--model", "resnet18", "--width", str(WIDTH),
                   "--data", "fashion-mnist", "--epochs", "1", "--lambda", str(LAMBDA),
                   "--blocks", "paper", "--out", str(run)]
        start = time.perf_counter()
        subprocess.run(command, check=True, env={"RAYON_NUM_THREADS": str(threads)},
                       stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    return {"epoch_seconds": round(metrics["seconds"], 1), "command_seconds": round(wall, 1),
            "validation_accuracy": metrics["validation_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2, help="threads for both")
    parser.add_argument("--lacoot", type=Path, help="the lacoot binary (omit to time PyTorch only)")
    args = parser.parse_args()
    result = {"threads": args.threads, "torch": torch.__version__, "pot": ot.__version__}
    if args.lacoot is not None:
        result["lacoot"] = lacoot_epoch_seconds(args.lacoot, args.threads)
    result["torch_pot"] = torch_epoch_seconds(args.threads)
    if args.lacoot is not None:
        result["ratio"] = round(
            result["lacoot"]["epoch_seconds"] / result["torch_pot"]["epoch_seconds"], 2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
