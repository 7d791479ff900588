"""Input layers (backbones) in front of an architecture: one shared, or one per task."""

from __future__ import annotations

import copy
from collections.abc import Callable

from torch import nn

__all__ = ["InputLayerLike", "input_width", "make_input_layers"]

InputLayerLike = nn.Module | Callable[[], nn.Module]
"""A backbone module with ``out_features``, or a zero-argument factory that builds a fresh one."""


def input_width(layer: nn.Module) -> int:
    """``layer.out_features``, checked."""
    width = getattr(layer, "out_features", None)
    if not isinstance(width, int) or width < 1:
        raise ValueError(
            f"An input layer must have an int attribute out_features (the width of its output); "
            f"{type(layer).__name__} has {width!r}."
        )
    return width


def _fresh_copy(layer: nn.Module) -> nn.Module:
    out = copy.deepcopy(layer)
    for m in out.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
    return out


def make_input_layers(
    input_dim: int | None, input_layer: InputLayerLike | None, *, copies: int = 1, who: str = "model"
) -> tuple[list[nn.Module | None], int]:
    """``copies`` input layers and the feature width the architecture is built on.

    Args:
        input_dim: width of flat raw features; used when there is no input layer.
        input_layer: a module or a factory; a factory is called once per copy, a module is used
            for the first copy and re-initialised deep copies for the others (independent
            per-task front ends, e.g. for the single-task baseline).
        copies: how many independent input layers the architecture needs (1 = shared).
        who: the model's name, for messages.
    """
    if input_layer is None:
        if not isinstance(input_dim, int) or isinstance(input_dim, bool) or input_dim < 1:
            raise ValueError(
                f"{who} needs input_dim, the width of the input features (an int >= 1), or an input_layer "
                f"(a backbone such as the embedding front end for tabular data); got input_dim={input_dim!r}."
            )
        return [None] * copies, input_dim
    if isinstance(input_layer, nn.Module):
        layers = [input_layer] + [_fresh_copy(input_layer) for _ in range(copies - 1)]
    elif callable(input_layer):
        layers = [input_layer() for _ in range(copies)]
        if not all(isinstance(m, nn.Module) for m in layers):
            raise TypeError(f"{who}: the input_layer factory must return nn.Modules.")
    else:
        raise TypeError(
            f"{who}: input_layer must be an nn.Module or a factory returning one; got {type(input_layer).__name__}."
        )
    return list(layers), input_width(layers[0])
