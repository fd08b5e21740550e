"""Backbones: the CIFAR-stem ResNets and a small ConvNet sized for the CPU default."""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm

_RESNETS = {"resnet18": tvm.resnet18, "resnet34": tvm.resnet34, "resnet50": tvm.resnet50}


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallConvNet(nn.Module):
    """Three stages of two 3x3 convs (widths w, 2w, 4w), stride 2 between stages, global average pool.

    Sized so that SimCLR on 8x8 digits trains in minutes on two CPU cores.
    """

    def __init__(self, in_channels: int, width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, w), _conv_bn_relu(w, w),
            _conv_bn_relu(w, 2 * w, stride=2), _conv_bn_relu(2 * w, 2 * w),
            _conv_bn_relu(2 * w, 4 * w, stride=2), _conv_bn_relu(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.out_dim = 4 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _cifar_resnet(name: str, in_channels: int) -> tuple[nn.Module, int]:
    net = _RESNETS[name](weights=None)
    # The CIFAR stem: small images lose too much to a 7x7 stride-2 conv and a max-pool.
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    out_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, out_dim


def build_backbone(name: str, in_channels: int, width: int = 32) -> tuple[nn.Module, int]:
    """Return the backbone and the dimension of its output features."""
    if name == "small":
        net = SmallConvNet(in_channels, width)
        return net, net.out_dim
    if name in _RESNETS:
        return _cifar_resnet(name, in_channels)
    raise ValueError(f"unknown backbone {name!r}; choose small, {', '.join(_RESNETS)}")
