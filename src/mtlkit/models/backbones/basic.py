"""The simplest backbone: flatten each sample to a vector."""

from __future__ import annotations

import math

from torch import Tensor, nn

from mtlkit.data.schema import InputSpec, describe_input_spec
from mtlkit.errors import ShapeError
from mtlkit.registries import BACKBONES

__all__ = ["Flatten", "flatten"]


class Flatten(nn.Module):
    """``(N, *shape) -> (N, prod(shape))``; checks the per-sample shape."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.out_features = math.prod(self.shape)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or tuple(x.shape[1:]) != self.shape:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ShapeError(
                f"Flatten backbone expects inputs of shape (N, {', '.join(map(str, self.shape))}); got {got}."
            )
        return x.reshape(x.shape[0], -1)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, out_features={self.out_features}"


@BACKBONES.register("flatten")
def flatten(input_spec: InputSpec) -> Flatten:
    """Flatten each sample (e.g. an image) to a vector; no parameters."""
    if isinstance(input_spec, int):
        return Flatten((input_spec,))
    if isinstance(input_spec, tuple):
        return Flatten(input_spec)
    raise ValueError(
        f"the flatten backbone takes tensor inputs; got {describe_input_spec(input_spec)}. "
        "Use the 'embedding' backbone for tabular data."
    )
