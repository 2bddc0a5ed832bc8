"""Backbones, necks and heads composed into one `Network`.

A backbone maps images to a conv map (B, C, H, W); a neck maps that map to the embedding (B, d)
(flatten + linear, pooled + linear, or a method's own pooling such as GSP); an optional head maps
the embedding to logits (B, K) (a learned linear layer or a fixed polytope classifier). Methods
swap necks and heads; `forward_all` exposes all three tensors.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn


class NetworkOutput(NamedTuple):
    feature_map: torch.Tensor  # (B, C, H, W): the last convolutional map
    embedding: torch.Tensor  # (B, d)
    logits: torch.Tensor | None  # (B, K), None without a head


class Network(nn.Module):
    """backbone -> neck -> head. `net(x)` returns logits, or the embedding when there is no head."""

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone, self.neck, self.head = backbone, neck, head

    def forward_all(self, images: torch.Tensor) -> NetworkOutput:
        feature_map = self.backbone(images)
        embedding = self.neck(feature_map)
        logits = self.head(embedding) if self.head is not None else None
        return NetworkOutput(feature_map, embedding, logits)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.forward_all(images)
        return out.logits if out.logits is not None else out.embedding

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.neck(self.backbone(images))


# ----------------------------------------------------------------------------- backbones

def _conv(cin: int, cout: int, act: type[nn.Module] = nn.ReLU, bn: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(act())
    return layers


class LeNetPPTrunk(nn.Sequential):
    """LeNet++ of the Center Loss paper: 3 stages of two conv (32, 64, 128; 5x5) + PReLU + max-pool.

    28x28 inputs give a (widths[-1], 3, 3) map; the embedding layer (`FlattenLinear`) follows.
    BatchNorm after each conv is our addition: it makes the 2-D feature nets train reliably in a
    few CPU epochs (the Caffe original has none). The paper's net costs about 0.5 GFLOP per image
    for a training step; `lenetpp_options()` gives a slimmer variant for CPU profiles.
    """

    def __init__(self, in_channels: int = 1, widths: tuple[int, int, int] = (32, 64, 128),
                 kernel_size: int = 5) -> None:
        if len(widths) != 3 or kernel_size % 2 == 0:
            raise ValueError(f"LeNet++ needs 3 widths and an odd kernel, got {widths}, {kernel_size}")
        layers: list[nn.Module] = []
        cin = in_channels
        for i, width in enumerate(widths):
            for _ in range(2):
                layers += [nn.Conv2d(cin, width, kernel_size, padding=kernel_size // 2, bias=False),
                           nn.BatchNorm2d(width), nn.PReLU(width)]
                cin = width
            layers.append(nn.MaxPool2d(3, 2) if i == 2 else nn.MaxPool2d(2))
        super().__init__(*layers)
        self.out_channels = widths[-1]


def lenetpp_options() -> dict:
    """LeNet++ size for the active profile: the paper's net in `full`, a slimmer one on CPU profiles
    (3x3 kernels, half width in `lab`: about 20x fewer FLOPs, same depth and feature layer)."""
    from labkit.core import config

    return config.pick(quick={"widths": (8, 16, 32), "kernel_size": 3},
                       lab={"widths": (16, 32, 64), "kernel_size": 3},
                       full={"widths": (32, 64, 128), "kernel_size": 5})


class SmallVGG(nn.Sequential):
    """VGG-style blocks (conv3x3-BN-ReLU x2 + max-pool) with widths (32, 64, 128) by default.

    28x28 -> (128, 3, 3); 32x32 -> (128, 4, 4). `pool_last=False` keeps the last block's
    resolution (7x7 on MNIST), useful for class activation maps. `dropout[i]` is a Dropout rate
    after block i (for every block but the last: the last map is the output, which FDL and
    Grad-CAM read before any dropout; put that block's rate in the neck, `FlattenMLP(map_dropout)`).
    """

    def __init__(self, in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128),
                 pool_last: bool = True, dropout: Sequence[float] = ()) -> None:
        if len(dropout) > max(len(widths) - 1, 0):
            raise ValueError(f"{len(widths)} blocks take at most {len(widths) - 1} dropout rates "
                             f"(the last block's goes in the neck), got {tuple(dropout)}")
        layers: list[nn.Module] = []
        cin = in_channels
        for i, width in enumerate(widths):
            layers += _conv(cin, width) + _conv(width, width)
            if pool_last or i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            if i < len(dropout) and dropout[i] > 0:
                layers.append(nn.Dropout(dropout[i]))
            cin = width
        super().__init__(*layers)
        self.out_channels = widths[-1]


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet (depth = 6n + 2; 20 by default), widths 16/32/64 (x `width`)."""

    def __init__(self, in_channels: int = 3, depth: int = 20, width: int = 1) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 56, ...), got {depth}")
        blocks = (depth - 2) // 6
        widths = [16 * width, 32 * width, 64 * width]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for stage, cout in enumerate(widths):
            for b in range(blocks):
                layers.append(_BasicBlock(cin, cout, 2 if stage > 0 and b == 0 else 1))
                cin = cout
        self.stages = nn.Sequential(*layers)
        self.out_channels = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class TorchvisionResNet(nn.Module):
    """torchvision ResNet-18/50 without its pooling and fc; never downloads weights.

    `weights_path`: an optional local state_dict file (torchvision's key names; fc keys ignored).
    """

    def __init__(self, depth: int = 18, in_channels: int = 3, weights_path: str | Path | None = None,
                 small_input: bool = False) -> None:
        super().__init__()
        import torchvision

        builders = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50}
        if depth not in builders:
            raise ValueError(f"torchvision ResNet depth must be 18 or 50, got {depth}")
        net = builders[depth](weights=None)
        if weights_path is not None:
            path = Path(weights_path).expanduser()
            if not path.exists():
                raise FileNotFoundError(f"weights file {path} does not exist")
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            missing = net.load_state_dict(state, strict=False).missing_keys
            missing = [k for k in missing if not k.startswith("fc.")]
            if missing:  # never run silently with random weights
                raise ValueError(f"weights file {path} does not fit torchvision's resnet{depth}: "
                                 f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        if in_channels != 3 or small_input:
            if weights_path is not None:  # say so: the loaded stem is thrown away
                warnings.warn(f"TorchvisionResNet: the stem conv1 is re-initialised at random "
                              f"(in_channels={in_channels}, small_input={small_input}); the "
                              f"rest keeps the weights of {weights_path}", stacklevel=2)
            # Small images: a 3x3 stride-1 stem and no max-pool keep enough resolution.
            kernel, stride, pad = (3, 1, 1) if small_input else (7, 2, 3)
            net.conv1 = nn.Conv2d(in_channels, 64, kernel, stride, pad, bias=False)
            if small_input:
                net.maxpool = nn.Identity()
        self.body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                                  net.layer1, net.layer2, net.layer3, net.layer4)
        self.out_channels = 512 if depth == 18 else 2048

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


# ----------------------------------------------------------------------------- necks

class FlattenLinear(nn.Module):
    """Flatten the conv map and project to the embedding (LeNet++'s `ip1`). No activation after
    it: a fixed classifier needs features of any sign."""

    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, dim)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.linear(feature_map.flatten(1))


class FlattenMLP(nn.Module):
    """[Dropout(map_dropout)] -> Flatten -> Linear -> BatchNorm -> ReLU -> Dropout: the dense head
    of Keras VGG-style classifiers (e.g. the FDL paper's members: Dropout 0.4 on the last pooled
    map, Dense 128, BN, ReLU, Dropout 0.5, softmax)."""

    def __init__(self, in_features: int, dim: int, dropout: float = 0.5,
                 map_dropout: float = 0.0) -> None:
        super().__init__()
        first = [nn.Dropout(map_dropout)] if map_dropout > 0 else []
        self.body = nn.Sequential(*first, nn.Flatten(1), nn.Linear(in_features, dim),
                                  nn.BatchNorm1d(dim), nn.ReLU(inplace=True), nn.Dropout(dropout))

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.body(feature_map)


class PooledLinear(nn.Module):
    """Global average (or max) pooling, then a linear projection to the embedding dim."""

    def __init__(self, in_channels: int, dim: int | None, pool: str = "gap") -> None:
        super().__init__()
        if pool not in ("gap", "gmp"):
            raise ValueError(f"pool must be 'gap' or 'gmp', got {pool!r}")
        self.pool = pool
        self.linear = nn.Linear(in_channels, dim) if dim is not None else nn.Identity()

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        pooled = feature_map.mean((2, 3)) if self.pool == "gap" else feature_map.amax((2, 3))
        return self.linear(pooled)


# ----------------------------------------------------------------------------- small trunks

class MLPTrunk(nn.Module):
    """Flatten + `depth` x (Linear + ReLU); returns (B, width, 1, 1) so a pooled neck follows."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, width: int = 256,
                 depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = in_channels * image_size * image_size
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width), nn.ReLU()]
            fan_in = width
        self.body = nn.Sequential(*layers)
        self.out_channels = width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)[:, :, None, None]


class LeNet5Trunk(nn.Sequential):
    """LeNet-5's convolutions: 5x5 conv (6) + ReLU + max-pool, 5x5 conv (16) + ReLU + max-pool.

    28x28 inputs (padded by 2 as in the original 32x32) give a (16, 5, 5) map."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__(nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
        self.out_channels = 16


def _separable(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class MobileNetLite(nn.Sequential):
    """A small MobileNet-v1: a 3x3 stem, then depthwise-separable blocks (3x3 depthwise + 1x1
    pointwise, BN + ReLU each) with widths `widths` and stride 2 at the first, second and last."""

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = (16, 32, 64, 128, 128)) -> None:
        widths = list(widths)
        if len(widths) < 2:
            raise ValueError(f"MobileNetLite needs a stem width and >= 1 block width, got {widths}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                   nn.BatchNorm2d(widths[0]), nn.ReLU()]
        strided = {1, 2, len(widths) - 1}
        for i in range(1, len(widths)):
            layers += _separable(widths[i - 1], widths[i], 2 if i in strided else 1)
        super().__init__(*layers)
        self.out_channels = widths[-1]


class TinyTrunk(nn.Sequential):
    """Three stride-2 conv3x3-BN-ReLU blocks (28x28 -> 4x4): a CPU-sized backbone.

    Our choice for the lab profile on a shared 2-core CPU (about 3x cheaper per step than the
    slimmest SmallVGG); the comparison is between samplers and losses, not backbones.
    """

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = (16, 32, 64)) -> None:
        layers: list[nn.Module] = []
        cin = in_channels
        for width in widths:
            layers += [nn.Conv2d(cin, width, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU()]
            cin = width
        super().__init__(*layers)
        self.out_channels = cin


# ----------------------------------------------------------------------------- factory

ARCHS = ("lenetpp", "vgg", "resnet20", "resnet18", "resnet50", "mlp", "lenet5", "mobilenet", "tiny")


def build_backbone(arch: str, in_channels: int, image_size: int = 28, **options) -> nn.Module:
    """The backbone `arch` (see `ARCHS`): images (B, C, H, W) -> a map (B, out_channels, h, w)."""
    if arch == "lenetpp":
        return LeNetPPTrunk(in_channels, **options)
    if arch == "vgg":
        return SmallVGG(in_channels, **options)
    if arch == "resnet20":
        return CifarResNet(in_channels, depth=20, **options)
    if arch in ("resnet18", "resnet50"):
        return TorchvisionResNet(int(arch[6:]), in_channels, small_input=image_size <= 64, **options)
    if arch == "mlp":
        return MLPTrunk(in_channels, image_size, **options)
    if arch == "lenet5":
        return LeNet5Trunk(in_channels, **options)
    if arch == "mobilenet":
        return MobileNetLite(in_channels, **options)
    if arch == "tiny":
        return TinyTrunk(in_channels, **options)
    raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode inside the block; every submodule's train/eval mode as before
    afterwards (`model.train(flag)` would push one flag onto all of them, e.g. unfreeze a
    backbone kept in eval mode)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def map_shape(backbone: nn.Module, in_channels: int, image_size: int) -> tuple[int, int, int]:
    """(C, H, W) of the backbone's conv map for a square input of `image_size`."""
    with eval_mode(backbone), torch.no_grad():
        shape = backbone(torch.zeros(1, in_channels, image_size, image_size)).shape[1:]
    return tuple(shape)  # type: ignore[return-value]


def build_network(arch: str, in_channels: int = 1, num_classes: int | None = 10, feat_dim: int = 2,
                  *, neck: nn.Module | str | None = None, head: nn.Module | str | None = "linear",
                  image_size: int = 28, neck_options: dict[str, Any] | None = None,
                  **backbone_options) -> Network:
    """A `Network` for `arch` with a `feat_dim` embedding and, by default, a learned linear head.

    neck: None (LeNet++: flatten + linear; others: GAP + linear), "gap", "gmp", "flatten",
    "flatten_mlp" (flatten + Linear-BN-ReLU-Dropout; `neck_options` go to `FlattenMLP`) or a module.
    head: "linear" (learned, no bias, as in the polytope papers' baselines), None, or a module.
    """
    backbone = build_backbone(arch, in_channels, image_size, **backbone_options)
    channels, height, width = map_shape(backbone, in_channels, image_size)
    if neck is None:
        neck = "flatten" if arch == "lenetpp" else "gap"
    if neck == "flatten":
        neck = FlattenLinear(channels * height * width, feat_dim)
    elif neck == "flatten_mlp":
        neck = FlattenMLP(channels * height * width, feat_dim, **(neck_options or {}))
    elif neck in ("gap", "gmp"):
        neck = PooledLinear(channels, feat_dim, pool=neck)
    elif not isinstance(neck, nn.Module):
        raise ValueError(f"neck must be 'flatten', 'flatten_mlp', 'gap', 'gmp' or an nn.Module, "
                         f"got {neck!r}")
    if head == "linear":
        if not num_classes or num_classes < 2:
            raise ValueError(f"a linear head needs num_classes >= 2, got {num_classes}")
        head = nn.Linear(feat_dim, num_classes, bias=False)
    elif head is not None and not isinstance(head, nn.Module):
        raise ValueError(f"head must be 'linear', None or an nn.Module, got {head!r}")
    return Network(backbone, neck, head)


def he_uniform_(module: nn.Module) -> nn.Module:
    """He-uniform init in place (Keras' HeUniform: U(+-sqrt(6 / fan_in))) of every Conv2d and
    Linear weight in `module`, with zero biases (Keras' default); BatchNorm keeps its 1 / 0."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
