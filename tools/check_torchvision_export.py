#!/usr/bin/env python3
"""Checks a `lacoot export --format torchvision` folder in PyTorch.

Runs the folder's load_model.py (torchvision model, removed blocks replaced by nn.Identity(),
weights loaded with strict names), feeds it the reference batch lacoot wrote
(reference.safetensors: `input`, `logits`) and compares the logits. Exits 1 when they differ by
more than --atol + --rtol * max |lacoot's logits| (f32 steps grow with the logits' scale). With --pth, also saves the state_dict as model.pth.

Needs torch, torchvision and safetensors (pip install torch torchvision safetensors).

    python3 tools/check_torchvision_export.py runs/fm/collapse/model-torchvision [--pth]
"""

import argparse
import pathlib
import runpy
import sys

import torch
from safetensors.torch import load_file


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=pathlib.Path, help="the folder lacoot export wrote")
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--rtol", type=float, default=1e-6)
    parser.add_argument("--pth", action="store_true", help="also write model.pth (torch.save)")
    args = parser.parse_args()

    loader = args.folder / "load_model.py"
    if not loader.is_file():
        print(f"error: {loader}: no such file (not a lacoot torchvision export?)", file=sys.stderr)
        return 1
    model = runpy.run_path(str(loader))["model"]
    reference = load_file(args.folder / "reference.safetensors")
    with torch.inference_mode():
        logits = model(reference["input"])
    expected = reference["logits"]
    difference = (logits - expected).abs()
    tolerance = args.atol + args.rtol * expected.abs().max()
    print(
        f"{args.folder}: PyTorch {torch.__version__} logits {tuple(logits.shape)}, "
        f"max |difference| to lacoot's {difference.max().item():.3g}"
    )
    if args.pth:
        path = args.folder / "model.pth"
        torch.save(model.state_dict(), path)
        print(f"wrote {path}")
    if not bool((difference <= tolerance).all()):
        print("error: PyTorch's logits differ from lacoot's", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
