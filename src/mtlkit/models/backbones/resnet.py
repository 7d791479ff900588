"""A small ResNet for 32x32 images (He et al. 2016, section 4.2: ResNet-20/32/44/56 for CIFAR-10).

``depth = 6n + 2``: a 3x3 stem convolution, three stages of ``n`` basic blocks with ``width``,
``2*width`` and ``4*width`` channels (the second and third start with stride 2), then global
average pooling, so ``out_features = 4 * width`` (64 for the paper's width 16). Every
convolution is 3x3 without bias and followed by batch normalisation.

Shortcuts: the paper's CIFAR networks use option A (identity; where the shape changes, the input is
subsampled by 2 and zero-padded with new channels, no parameters), the default here; ``shortcut="conv"``
uses option B (a 1x1 convolution + batch norm where the shape changes). Written in the project
because torchvision has no CPU build here; torchvision's ResNets are the ImageNet variants anyway.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.data.schema import InputSpec
from mtlkit.models.backbones.cnn import _check_images, image_shape
from mtlkit.registries import BACKBONES

__all__ = ["BasicBlock", "ResNet", "resnet"]


class BasicBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))`` with 3x3 convolutions."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, shortcut: Literal["pad", "conv"]
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride, self.extra = stride, out_channels - in_channels
        self.project: nn.Module | None = None
        if shortcut == "conv" and (stride != 1 or in_channels != out_channels):
            self.project = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def shortcut(self, x: Tensor) -> Tensor:
        if self.project is not None:
            return self.project(x)
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            x = F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return x

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A CIFAR-style ResNet of ``depth = 6n + 2`` layers, ending in global average pooling.

    Args:
        in_shape: ``(C, H, W)`` of the input images (any size; 32x32 is what it was made for).
        depth: 8, 14, 20, 26, 32, 44, 56, ... (``6n + 2``).
        width: channels of the first stage (16 in the paper); the stages have width, 2x, 4x.
        shortcut: ``"pad"`` (option A, parameter-free) or ``"conv"`` (option B, 1x1 projections).
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        *,
        depth: int = 20,
        width: int = 16,
        shortcut: Literal["pad", "conv"] = "pad",
    ) -> None:
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(
                f"ResNet depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56...); got {depth!r}."
            )
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"ResNet width must be an int >= 1; got {width!r}.")
        if shortcut not in ("pad", "conv"):
            raise ValueError(f"ResNet shortcut must be 'pad' or 'conv'; got {shortcut!r}.")
        c, _, _ = in_shape
        self.in_shape, self.depth, self.width = in_shape, depth, width
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        channels = width
        for stage in range(3):
            out = width * 2**stage
            for i in range(n):
                blocks.append(BasicBlock(channels, out, 2 if (stage > 0 and i == 0) else 1, shortcut))
                channels = out
        self.blocks = nn.Sequential(*blocks)
        self.out_features = channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        z = self.blocks(self.stem(_check_images(x, self.in_shape, "resnet")))
        return z.mean(dim=(2, 3))

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, depth={self.depth}, width={self.width}, out_features={self.out_features}"


@BACKBONES.register("resnet")
def resnet(
    input_spec: InputSpec, *, depth: int = 20, width: int = 16, shortcut: Literal["pad", "conv"] = "pad"
) -> ResNet:
    """A small CIFAR ResNet (depth 6n+2, He et al. 2016) with global average pooling."""
    return ResNet(image_shape(input_spec, "resnet"), depth=depth, width=width, shortcut=shortcut)
