"""Shared-private models: a shared encoder plus one private encoder per task.

Bousmalis et al. ("Domain Separation Networks", NeurIPS 2016) and Liu, Qiu & Huang ("Adversarial
Multi-task Learning for Text Classification", ACL 2017): task ``k`` reads ``[S(x), P_k(x)]``, the
shared features next to its private ones; the optional difference (orthogonality) loss
``sum_k ||S^T P_k||_F^2`` over the batch's feature matrices pushes the private encoders to
capture what the shared one does not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.argcheck import check_model_args
from mtlkit.data.batch import Inputs
from mtlkit.errors import ShapeError
from mtlkit.models._base import Decoded, MultiTaskModel
from mtlkit.models._blocks import MLP
from mtlkit.models._inputs import InputLayerLike, input_width, make_input_layers
from mtlkit.models._kernels import tower_outputs
from mtlkit.registries import MODELS
from mtlkit.tasks import Task, task_names

__all__ = ["SharedPrivate", "orthogonality_penalty", "shared_private"]

AUX_KEY = "orthogonality"


def orthogonality_penalty(shared: Tensor, private: Tensor, /, *, normalize: bool = False) -> Tensor:
    """``||S^T P||_F^2`` for batch feature matrices ``S`` ``(N, d_s)`` and ``P`` ``(N, d_p)``.

    Zero when every shared feature (column of ``S``) is orthogonal, over the batch, to every
    private feature. It grows with the batch size (a sum over samples). With ``normalize=True``
    it is the variant of the Domain Separation Networks code: both matrices' columns are
    centred over the batch and each row scaled to unit norm, and the result is the *mean* of
    the squared entries of ``S^T P`` (bounded, nearly independent of the batch size and widths).
    """
    if shared.ndim != 2 or private.ndim != 2 or shared.shape[0] != private.shape[0]:
        raise ShapeError(
            "orthogonality_penalty takes two (N, d) feature matrices with the same N; got shapes "
            f"{tuple(shared.shape)} and {tuple(private.shape)}."
        )
    if not normalize:
        return (shared.transpose(0, 1) @ private).square().sum()
    s = F.normalize(shared - shared.mean(0, keepdim=True), dim=1)
    p = F.normalize(private - private.mean(0, keepdim=True), dim=1)
    return (s.transpose(0, 1) @ p).square().mean()


class SharedPrivate(MultiTaskModel):
    """``y_k = h_k([S(x), P_k(x)])``: a shared encoder ``S``, private encoders ``P_k``, task heads.

    With ``orthogonality > 0`` the auxiliary losses (:meth:`forward_parts`) hold ``"orthogonality"`` =
    ``orthogonality * sum_k ||S^T P_k||_F^2`` (see :func:`orthogonality_penalty`), which the
    trainer adds to the objective.

    The shared representation is ``S(x)``; behind an input layer it is
    ``[S(e), e]`` with ``e`` the input layer's output, since the private encoders read ``e`` too:
    then every path from the shared parameters to a task goes through the representation.

    Args:
        shared: the shared encoder, ``(N, F) -> (N, d_s)``.
        private: ``{task: encoder}``, each ``(N, F) -> (N, d_p)``.
        heads: ``{task: module}`` mapping ``(N, d_s + d_p)`` to the task's output.
        orthogonality: strength of the difference penalty (>= 0; 0 = off).
        normalize_orthogonality: use the normalised penalty (centred, unit-norm rows, mean
            instead of sum), whose scale does not grow with the batch size.
        input_layer: optional module applied to the inputs first (shared by all encoders).
    """

    def __init__(
        self,
        shared: nn.Module,
        private: Mapping[str, nn.Module],
        heads: Mapping[str, nn.Module],
        *,
        orthogonality: float = 0.0,
        normalize_orthogonality: bool = False,
        input_layer: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if not heads:
            raise ValueError("SharedPrivate needs at least one task head.")
        self.task_names = tuple(heads)
        if set(private) != set(self.task_names):
            raise ValueError(
                f"SharedPrivate needs one private encoder per task {list(self.task_names)}; got {list(private)}."
            )
        if (
            isinstance(orthogonality, bool)
            or not isinstance(orthogonality, (int, float))
            or not orthogonality >= 0
        ):
            raise ValueError(f"SharedPrivate orthogonality must be a float >= 0; got {orthogonality!r}.")
        self.shared = shared
        self.private = nn.ModuleDict({t: private[t] for t in self.task_names})
        self.heads = nn.ModuleDict(dict(heads))
        self.orthogonality = float(orthogonality)
        self.normalize_orthogonality = bool(normalize_orthogonality)
        self.input_layer = input_layer
        self._input_width = input_width(input_layer) if input_layer is not None else 0

    def _outputs(self, s: Tensor, e: Inputs) -> Decoded:
        # private encoders (one input) and heads (inputs of one shape) batched where that pays
        private = tower_outputs(self.private, dict.fromkeys(self.task_names, e))  # type: ignore[arg-type]
        out = tower_outputs(self.heads, {t: torch.cat([s, p], dim=-1) for t, p in private.items()})
        aux: dict[str, Tensor] = {}
        if self.orthogonality > 0:
            terms = [
                orthogonality_penalty(s, p, normalize=self.normalize_orthogonality) for p in private.values()
            ]
            aux[AUX_KEY] = self.orthogonality * sum(terms[1:], terms[0])
        return out, aux

    def _forward(self, x: Inputs) -> Decoded:
        e = self.input_layer(x) if self.input_layer is not None else x
        return self._outputs(self.shared(e), e)

    def _encode(self, x: Inputs) -> tuple[Tensor, Inputs | None]:
        if self.input_layer is None:
            return self.shared(x), x  # the private encoders read x
        e = self.input_layer(x)
        return torch.cat([self.shared(e), e], dim=-1), None

    def _decode(self, rep: Tensor, x: Inputs | None) -> Decoded:
        if x is not None:
            return self._outputs(rep, x)
        w = self._input_width
        return self._outputs(rep[..., :-w], rep[..., -w:])

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        self._check_task(task)
        return [*self.private[task].parameters(), *self.heads[task].parameters()]

    def extra_repr(self) -> str:
        return f"orthogonality={self.orthogonality}, normalize_orthogonality={self.normalize_orthogonality}"


@MODELS.register("shared_private")
def shared_private(
    input_dim: int | None,
    tasks: Sequence[Task],
    *,
    shared_dims: Sequence[int] = (64,),
    private_dims: Sequence[int] = (32,),
    tower_dims: Sequence[int] = (32,),
    orthogonality: float = 0.0,
    normalize_orthogonality: bool = False,
    activation: str = "relu",
    dropout: float = 0.0,
    input_layer: InputLayerLike | None = None,
) -> SharedPrivate:
    """Shared-private: a shared MLP encoder and a private one per task, concatenated for each tower."""
    check_model_args(
        "shared_private",
        shared_dims=shared_dims,
        private_dims=private_dims,
        tower_dims=tower_dims,
        dropout=dropout,
    )
    task_names(tasks)
    (layer,), width = make_input_layers(input_dim, input_layer, who="shared_private")
    shared = MLP(width, shared_dims, activation=activation, dropout=dropout)
    private = {t.name: MLP(width, private_dims, activation=activation, dropout=dropout) for t in tasks}
    heads = {
        t.name: MLP(
            shared.out_features + private[t.name].out_features,
            tower_dims,
            t.output_dim,
            activation=activation,
            dropout=dropout,
        )
        for t in tasks
    }
    return SharedPrivate(
        shared,
        private,
        heads,
        orthogonality=orthogonality,
        normalize_orthogonality=normalize_orthogonality,
        input_layer=layer,
    )
