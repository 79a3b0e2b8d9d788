"""PyTorch references for lacoot's architectures (torchvision layouts and key names).

Writes tests/fixtures/torch/{resnet18_cifar,mobilenetv2_cifar,mobilenetv2_imagenet,swin_t}/:
small-width, randomly initialised torchvision models (weights, and batch-norm statistics made
non-trivial), inputs, eval-mode logits (also with blocks replaced by identity), and expected.json
with the full-size models' parameter and MAC counts (which need no weights). Run from the
repository root:
    python3 -m pip install torch torchvision safetensors && python3 tools/make_torch_fixtures.py
"""

import json
import os

import numpy as np
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn
from torchvision.models import mobilenet_v2, swin_t
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.models.mobilenetv2 import MobileNetV2
from torchvision.models.swin_transformer import ShiftedWindowAttention, SwinTransformer

OUT = os.path.join("tests", "fixtures", "torch")

# The paper's CIFAR MobileNetV2: the second stage keeps stride 1 (and the stem too, below).
CIFAR_SETTING = [
    [1, 16, 1, 1],
    [6, 24, 2, 1],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


def randomise(model: nn.Module, seed: int) -> None:
    """Non-trivial values everywhere: biases, norm scales and running statistics included."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif name.endswith("running_mean") or name.endswith("bias"):
                tensor.copy_(0.1 * noise)
            elif tensor.dim() == 1:
                tensor.copy_(1.0 + 0.1 * noise)
            else:
                fan_in = tensor[0].numel() if tensor.dim() > 1 else 1
                tensor.copy_(noise / np.sqrt(fan_in))
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.num_batches_tracked.fill_(100)


def conv_linear_macs(model: nn.Module, size: int, channels: int = 3) -> dict:
    """Per-image MACs of convolutions and linear layers, and of the attention products."""
    counts = {"conv_linear": 0, "attention": 0}

    def conv_hook(module, inputs, output):
        counts["conv_linear"] += output.numel() * module.weight[0].numel()

    def linear_hook(module, inputs, output):
        counts["conv_linear"] += output.numel() * module.in_features

    hooks = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            hooks.append(module.register_forward_hook(linear_hook))
        elif isinstance(module, ShiftedWindowAttention):

            def attention_hook(module, inputs, output):
                _, h, w, c = inputs[0].shape
                wh, ww = module.window_size
                padded = (-(-h // wh) * wh) * (-(-w // ww) * ww)
                # The functional attention bypasses the qkv and proj modules' hooks: count them
                # here, over the padded tokens they run on.
                counts["conv_linear"] += padded * 4 * c * c
                # q @ k^T and attn @ v: each window of N tokens costs N * N * C twice.
                counts["attention"] += 2 * padded * wh * ww * c

            hooks.append(module.register_forward_hook(attention_hook))
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, channels, size, size))
    for hook in hooks:
        hook.remove()
    return counts


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save(directory: str, model: nn.Module, extra: dict, pth: str | None = None) -> None:
    """Writes the weights as safetensors and, when `pth` is "plain" or "backbone", also as a
    torch.save file (with every key prefixed by `backbone.` for the latter)."""
    os.makedirs(directory, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(directory, "weights.safetensors"))
    if pth == "backbone":
        prefixed = {f"backbone.{k}": v for k, v in state.items()}
        torch.save(prefixed, os.path.join(directory, "weights_backbone_prefix.pth"))
    elif pth == "plain":
        torch.save(model.state_dict(), os.path.join(directory, "weights.pth"))
    with open(os.path.join(directory, "expected.json"), "w") as f:
        json.dump(extra, f, indent=2)
        f.write("\n")


def logits(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(x).numpy()


def mobilenet_fixture(name: str, cifar: bool, size: int, seed: int) -> None:
    torch.manual_seed(seed)
    setting = CIFAR_SETTING if cifar else None
    model = MobileNetV2(num_classes=10, width_mult=0.25, inverted_residual_setting=setting)
    if cifar:
        model.features[0][0].stride = (1, 1)
    randomise(model, seed)
    directory = os.path.join(OUT, name)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
    results = {"logits_eval": logits(model, x)}
    # The paper's unit: the depthwise conv + BN + ReLU6 of stride-1 blocks (conv.1, or conv.0 when
    # the block has no expansion); and a whole residual block.
    depthwise = model.features[5].conv[1]
    model.features[5].conv[1] = nn.Identity()
    expanded_free = model.features[1].conv[0]
    model.features[1].conv[0] = nn.Identity()
    results["logits_eval_without_features.1.conv.0_features.5.conv.1"] = logits(model, x)
    model.features[5].conv[1] = depthwise
    model.features[1].conv[0] = expanded_free
    block = model.features[6]
    model.features[6] = nn.Identity()
    results["logits_eval_without_features.6"] = logits(model, x)
    model.features[6] = block
    full = mobilenet_v2()
    macs = conv_linear_macs(full, 224)
    save(
        directory,
        model,
        {
            "width_mult": 0.25,
            "input_size": size,
            "parameters": parameters(model),
            "macs": conv_linear_macs(model, size)["conv_linear"],
            "torchvision_mobilenet_v2_parameters": parameters(full),
            "torchvision_mobilenet_v2_macs": macs["conv_linear"],
            "torch_version": torch.__version__,
            "torchvision_version": torchvision.__version__,
        },
        pth="backbone" if cifar else None,
    )
    np.save(os.path.join(directory, "input.npy"), x.numpy())
    for key, value in results.items():
        np.save(os.path.join(directory, f"{key}.npy"), value)


def cifar_resnet18(width: int, num_classes: int = 10) -> ResNet:
    """torchvision's ResNet-18 with the paper's CIFAR stem (3x3 stride-1 conv, the max-pool kept) and
    stage widths width, 2 width, 4 width, 8 width (torchvision's is width 64)."""
    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    model.inplanes = width
    model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
    model.bn1 = nn.BatchNorm2d(width)
    model.layer1 = model._make_layer(BasicBlock, width, 2)
    model.layer2 = model._make_layer(BasicBlock, 2 * width, 2, stride=2)
    model.layer3 = model._make_layer(BasicBlock, 4 * width, 2, stride=2)
    model.layer4 = model._make_layer(BasicBlock, 8 * width, 2, stride=2)
    model.fc = nn.Linear(8 * width, num_classes)
    return model


def resnet_fixture(seed: int) -> None:
    torch.manual_seed(seed)
    width = 8
    model = cifar_resnet18(width)
    randomise(model, seed)
    directory = os.path.join(OUT, "resnet18_cifar")
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed + 1))
    results = {"logits_eval": logits(model, x)}
    kept = (model.layer3[1], model.layer4[1])
    model.layer3[1] = nn.Identity()
    model.layer4[1] = nn.Identity()
    results["logits_eval_without_layer3.1_layer4.1"] = logits(model, x)
    model.layer3[1], model.layer4[1] = kept
    full = cifar_resnet18(64)
    save(
        directory,
        model,
        {
            "width": width,
            "input_size": 32,
            "parameters": parameters(model),
            "macs": conv_linear_macs(model, 32)["conv_linear"],
            "full_width_parameters": parameters(full),
            "full_width_macs": conv_linear_macs(full, 32)["conv_linear"],
            "torch_version": torch.__version__,
            "torchvision_version": torchvision.__version__,
        },
        pth="plain",
    )
    np.save(os.path.join(directory, "input.npy"), x.numpy())
    for key, value in results.items():
        np.save(os.path.join(directory, f"{key}.npy"), value)


def swin_fixture(seed: int) -> None:
    torch.manual_seed(seed)
    embed_dim = 12
    model = SwinTransformer(
        patch_size=[4, 4],
        embed_dim=embed_dim,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=[7, 7],
        stochastic_depth_prob=0.2,
        num_classes=10,
    )
    randomise(model, seed)
    directory = os.path.join(OUT, "swin_t")
    os.makedirs(directory, exist_ok=True)
    expected = {
        "embed_dim": embed_dim,
        "parameters": parameters(model),
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
    }
    for size in (32, 64):
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed + size))
        np.save(os.path.join(directory, f"input_{size}.npy"), x.numpy())
        np.save(os.path.join(directory, f"logits_eval_{size}.npy"), logits(model, x))
        block = model.features[5][3]
        model.features[5][3] = nn.Identity()
        np.save(os.path.join(directory, f"logits_eval_{size}_without_features.5.3.npy"), logits(model, x))
        model.features[5][3] = block
        expected[f"macs_{size}"] = conv_linear_macs(model, size)
    full = swin_t()
    expected["torchvision_swin_t_parameters"] = parameters(full)
    expected["torchvision_swin_t_macs_224"] = conv_linear_macs(full, 224)
    save(directory, model, expected, pth="plain")


def main() -> None:
    resnet_fixture(10)
    mobilenet_fixture("mobilenetv2_cifar", cifar=True, size=32, seed=11)
    mobilenet_fixture("mobilenetv2_imagenet", cifar=False, size=64, seed=12)
    swin_fixture(13)


if __name__ == "__main__":
    main()
