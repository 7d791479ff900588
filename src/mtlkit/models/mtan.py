"""MTAN: Multi-Task Attention Network (Liu, Johns & Davison, CVPR 2019).

A shared convolutional encoder forms a global feature pool; each task has a soft-attention
module at every encoder block that selects features from it. At block ``j`` with shared
features ``u_j`` (the block's first convolution) and ``p_j`` (its output), task ``k`` computes

    a_k^j = sigmoid(BN(conv1x1(ReLU(BN(conv1x1([u_j, a^_k^{j-1}]))))))   (just u_j at j = 0)
    a^_k^j = pool(f_j(a_k^j * p_j))

where ``f_j`` is a 3x3 convolution + BN + ReLU to the next block's width, shared by the tasks
(as in the authors' code), and ``pool`` is 2x2 max pooling (not after the last block). For
classification each task ends with global average pooling and a linear head (as in the
authors' Visual Decathlon model); the SegNet decoder of their image-to-image model is not
included.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.argcheck import check_model_args
from mtlkit.data.batch import Inputs
from mtlkit.data.schema import InputSpec, describe_input_spec
from mtlkit.errors import ShapeError
from mtlkit.models._base import Decoded, MultiTaskModel, params_of
from mtlkit.models._blocks import MLP, _dims
from mtlkit.registries import MODELS
from mtlkit.tasks import Task, task_names

__all__ = ["MTAN", "AttentionModule", "ConvBlock", "conv_bn_relu", "mtan"]


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution (padding 1) -> BatchNorm -> ReLU: the paper's convolutional layer."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class ConvBlock(nn.Module):
    """One shared encoder block: ``u = conv_a(x)``, ``p = conv_b(u)``; returns ``(u, p)``.

    Attention modules read ``u`` and mask ``p``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.first = conv_bn_relu(in_channels, out_channels)
        self.second = conv_bn_relu(out_channels, out_channels)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        u = self.first(x)
        return u, self.second(u)


class AttentionModule(nn.Module):
    """Soft attention mask: ``sigmoid(BN(conv1x1(ReLU(BN(conv1x1(x))))))``, values in (0, 1).

    Args:
        in_channels: channels of the input (the shared features, concatenated with the previous
            attended features after the first block).
        channels: channels of the mask (those of the features it multiplies).
    """

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, channels, kernel_size=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=1),
            nn.BatchNorm2d(channels),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MTAN(MultiTaskModel):
    """Multi-Task Attention Network over a shared convolutional encoder.

    Args:
        blocks: the shared encoder blocks; block ``j`` maps its input to ``(u_j, p_j)`` and the
            next block reads ``pool(p_j)``.
        attention: ``{task: [module per block]}``; module ``j`` maps ``u_j`` (``j = 0``) or
            ``[u_j, a^^{j-1}]`` (channel concatenation) to a mask shaped like ``p_j``.
        shared_f: one module per block mapping the masked ``p_j`` to the width of ``u_{j+1}``
            (the last one: to the head's input width); shared by the tasks.
        heads: ``{task: module}`` mapping the last attended features ``(N, C, H, W)`` to the output.
        input_shape: ``(C, H, W)`` of one image, checked on every batch.

    ``gates(x)`` returns each task's mean attention per channel, ``"<task>/block<j>"``: ``(N, C_j)``,
    the mask of block ``j`` averaged over its positions (the channels play the experts' part in
    :func:`mtlkit.analysis.gate_statistics`: which features of the shared pool the task selects).
    There is no single shared representation (the shared ``f`` blocks sit on
    the task paths), so representation-level gradient methods are refused; parameter-level ones work.
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        attention: Mapping[str, Sequence[nn.Module]],
        shared_f: Sequence[nn.Module],
        heads: Mapping[str, nn.Module],
        *,
        input_shape: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        if not heads:
            raise ValueError("MTAN needs at least one task head.")
        self.task_names = tuple(heads)
        L = len(blocks)
        if L < 1:
            raise ValueError("MTAN needs at least one encoder block.")
        if set(attention) != set(self.task_names):
            raise ValueError(
                f"MTAN needs attention modules for every task {list(self.task_names)}; got {list(attention)}."
            )
        wrong = {t: len(attention[t]) for t in self.task_names if len(attention[t]) != L}
        if wrong or len(shared_f) != L:
            raise ValueError(
                f"MTAN needs one attention module per task and one shared f block per encoder block ({L}); got "
                f"attention { ({t: len(attention[t]) for t in self.task_names}) }, f blocks {len(shared_f)}."
            )
        self.blocks = nn.ModuleList(list(blocks))
        self.attention = nn.ModuleDict({t: nn.ModuleList(list(attention[t])) for t in self.task_names})
        self.shared_f = nn.ModuleList(list(shared_f))
        self.heads = nn.ModuleDict(dict(heads))
        self.input_shape = tuple(input_shape) if input_shape is not None else None

    def _check(self, x: Inputs) -> Tensor:
        if (
            not isinstance(x, Tensor)
            or x.ndim != 4
            or (self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape)
        ):
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            want = (
                "(N, C, H, W)"
                if self.input_shape is None
                else f"(N, {', '.join(map(str, self.input_shape))})"
            )
            raise ShapeError(f"MTAN expects image batches of shape {want}; got {got}.")
        return x

    def shared_features(self, x: Inputs) -> list[tuple[Tensor, Tensor]]:
        """``[(u_j, p_j)]`` of every shared encoder block."""
        h = self._check(x)
        feats: list[tuple[Tensor, Tensor]] = []
        for j, block in enumerate(self.blocks):
            u, p = block(h)
            feats.append((u, p))
            if j < len(self.blocks) - 1:
                h = F.max_pool2d(p, 2)
        return feats

    def _task_path(self, task: str, feats: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, list[Tensor]]:
        """Task ``task``'s last attended features and its masks."""
        masks: list[Tensor] = []
        prev: Tensor | None = None
        last = len(feats) - 1
        for j, (u, p) in enumerate(feats):
            inp = u if prev is None else torch.cat([u, prev], dim=1)
            mask = self.attention[task][j](inp)
            masks.append(mask)
            prev = self.shared_f[j](mask * p)
            if j < last:
                prev = F.max_pool2d(prev, 2)
        assert prev is not None
        return prev, masks

    def _forward(self, x: Inputs) -> Decoded:
        feats = self.shared_features(x)
        return {t: self.heads[t](self._task_path(t, feats)[0]) for t in self.task_names}, {}

    def gates(self, x: Inputs) -> dict[str, Tensor]:
        feats = self.shared_features(x)
        out: dict[str, Tensor] = {}
        for t in self.task_names:
            for j, mask in enumerate(self._task_path(t, feats)[1]):
                out[f"{t}/block{j}"] = mask.mean(dim=(2, 3))  # (N, C_j): mean attention per channel
        return out

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        self._check_task(task)
        return params_of(self.attention[task], self.heads[task])


def _image_shape(input_spec: InputSpec) -> tuple[int, int, int]:
    if (
        isinstance(input_spec, tuple)
        and len(input_spec) == 3
        and all(isinstance(s, int) and s >= 1 for s in input_spec)
    ):
        return input_spec  # type: ignore[return-value]
    raise ValueError(
        f"mtan takes images, an input_spec (C, H, W); got {describe_input_spec(input_spec)}. "
        "For flat or tabular features use an MLP architecture (e.g. cross_stitch, shared_bottom)."
    )


@MODELS.register("mtan")
def mtan(
    input_spec: InputSpec,
    tasks: Sequence[Task],
    *,
    channels: Sequence[int] = (16, 32, 64),
    tower_dims: Sequence[int] = (),
    activation: str = "relu",
    dropout: float = 0.0,
) -> MTAN:
    """MTAN (Liu et al. 2019): shared conv encoder, per-task attention at every block (images)."""
    check_model_args("mtan", channels=channels, tower_dims=tower_dims, dropout=dropout)
    task_names(tasks)
    C, H, W = _image_shape(input_spec)
    widths = _dims(channels, "mtan channels")
    if not widths:
        raise ValueError("mtan needs at least one encoder block; got channels=[].")
    shrink = 2 ** (len(widths) - 1)
    if min(H, W) < shrink:
        most = max(1, int(math.log2(min(H, W))) + 1)
        raise ValueError(
            f"mtan: {len(widths)} blocks halve the image {len(widths) - 1} times, too often for {H}x{W} images; "
            f"use at most {most} channels entries."
        )
    blocks = [ConvBlock(a, b) for a, b in zip([C, *widths], widths)]
    # f_j maps the attended block-j features to block j+1's width (the last keeps its width)
    shared_f = [conv_bn_relu(w, nxt) for w, nxt in zip(widths, [*widths[1:], widths[-1]])]
    attention = {
        t.name: [AttentionModule(w if j == 0 else 2 * w, w) for j, w in enumerate(widths)] for t in tasks
    }
    heads = {
        t.name: nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            MLP(widths[-1], tower_dims, t.output_dim, activation=activation, dropout=dropout),
        )
        for t in tasks
    }
    return MTAN(blocks, attention, shared_f, heads, input_shape=(C, H, W))
