"""A shallow selection-bias tower around any multi-task model (Zhao et al., RecSys 2019, §4.4).

Logged engagement is biased by how items were shown: an item at the top of a slate is clicked
more whatever its relevance. YouTube's ranking model answers with a *shallow tower* fed only with
the features that cause the bias (the position, crossed with the device); its output is added to
the main model's logit during training and left out at serving, so the main model is trained to
explain only what the bias features cannot. The position feature is dropped out (set missing)
10 % of the time in training so the model does not lean on it.

:class:`BiasTower` wraps any :class:`~mtlkit.models.MultiTaskModel`:

* **training** (``model.train()``): for each task it feeds, ``output = base(x_main) + tower(x_bias)``,
  added to the logit of a binary task (so ``P = sigmoid(main + bias)``) and to the value of a
  regression task. Each bias feature is set missing per sample with probability
  ``feature_dropout`` (a categorical one to index 0, its unknown bucket; a numeric one to 0, the
  training mean after standardisation).
* **evaluation, prediction, export** (``model.eval()``), by ``serving``:
  ``"omit"`` (default) gives the main model's outputs alone; ``"missing"`` adds the tower's term
  with every bias feature missing (a constant, as the paper's "position treated as missing");
  ``"reference"`` adds it at ``reference`` values (model-ready: a category index or a
  standardised number per feature; the features not named are missing).

The bias features either are columns of tabular inputs (``features``: names in the
:class:`~mtlkit.data.schema.FeatureSchema`; they are removed from what the base model reads, and
the base model must be built on :func:`split_schema`'s main schema), or come under their own input
key (``input_key``: ``inputs[input_key]`` is a float ``(N, B)`` tensor; the base model reads the
other keys).

Each fed task has its own tower (embeddings of the categorical bias features + numeric ones ->
MLP -> the task's output width): its parameters are task parameters of that task, so
gradient-level balancing methods and per-task optimizers treat them as the task's own.

Feature dropout draws from ``generator`` when one is set, else from torch's default generator
(like ``nn.Dropout``), whose state the trainer's checkpoints save and restore, so resumed
training draws the same masks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mtlkit.data.batch import Inputs
from mtlkit.data.schema import CATEGORICAL, NUMERIC, FeatureSchema
from mtlkit.errors import ShapeError
from mtlkit.models._base import Decoded, MultiTaskModel
from mtlkit.models._blocks import MLP

__all__ = ["BiasTower", "BiasTowerHead", "Serving", "split_schema", "with_bias_tower"]

Serving = Literal["omit", "missing", "reference"]
_SERVING = ("omit", "missing", "reference")


def split_schema(schema: FeatureSchema, features: Sequence[str]) -> tuple[FeatureSchema, FeatureSchema]:
    """``(main, bias)``: the columns of ``schema`` without ``features``, and ``features`` alone.

    Raises:
        ValueError: a feature is not a column of ``schema``, is named twice, or no column is left
            for the main model.
    """
    features = list(features)
    if not features:
        raise ValueError("bias_tower.features: name at least one bias feature (e.g. [position]).")
    dup = sorted({f for f in features if features.count(f) > 1})
    if dup:
        raise ValueError(f"bias_tower.features names {dup} twice.")
    columns = [*schema.categorical, *schema.numeric]
    unknown = [f for f in features if f not in columns]
    if unknown:
        raise ValueError(
            f"bias_tower.features: {unknown} are not columns of the data (its columns: {', '.join(columns)})."
        )
    keep_cat = [(c, k) for c, k in zip(schema.categorical, schema.cardinalities) if c not in features]
    keep_num = [c for c in schema.numeric if c not in features]
    if not keep_cat and not keep_num:
        raise ValueError(
            "bias_tower.features takes every column of the data; the main model would read nothing."
        )
    bias_cat = [(c, k) for c, k in zip(schema.categorical, schema.cardinalities) if c in features]
    bias_num = [c for c in schema.numeric if c in features]
    main = FeatureSchema(tuple(c for c, _ in keep_cat), tuple(k for _, k in keep_cat), tuple(keep_num))
    bias = FeatureSchema(tuple(c for c, _ in bias_cat), tuple(k for _, k in bias_cat), tuple(bias_num))
    return main, bias


class BiasTowerHead(nn.Module):
    """One task's shallow tower: embeddings of the categorical bias features and the numeric ones,
    concatenated, through an MLP to ``out_features`` (the task's output width).

    Args:
        cardinalities: embedding rows of each categorical bias feature (index 0: missing).
        num_numeric: how many numeric bias features.
        out_features: the width of the term added to the task's output.
        dims: hidden widths of the MLP (``[]``: a linear map, as Wide & Deep's wide part).
        embedding_dim: width of each categorical feature's embedding.
    """

    def __init__(
        self,
        cardinalities: Sequence[int],
        num_numeric: int,
        out_features: int = 1,
        *,
        dims: Sequence[int] = (16,),
        embedding_dim: int = 4,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(int(k), embedding_dim) for k in cardinalities)
        width = len(self.embeddings) * embedding_dim + int(num_numeric)
        if width < 1:
            raise ValueError("A bias tower needs at least one bias feature.")
        self.mlp = MLP(width, list(dims), out_features, activation=activation)
        self.out_features = out_features

    def forward(self, categorical: Tensor | None, numeric: Tensor | None) -> Tensor:
        parts = (
            [emb(categorical[:, j]) for j, emb in enumerate(self.embeddings)]
            if categorical is not None
            else []
        )
        if numeric is not None and numeric.shape[1]:
            parts.append(numeric)
        return self.mlp(torch.cat(parts, dim=1))


class BiasTower(MultiTaskModel):
    """A base model plus shallow bias towers whose terms are added in training only (module doc).

    Args:
        base: the main model (built on the main columns, see :func:`split_schema`).
        heads: ``{output: BiasTowerHead}``, one per fed output of ``base``.
        schema: the full tabular schema of the inputs (with ``features``); ``None`` with ``input_key``.
        features: the bias columns of ``schema``.
        input_key: instead of columns: the input key holding a float ``(N, B)`` tensor of bias features.
        feature_dropout: per-sample probability of setting each bias feature missing in training.
        serving: what evaluation adds: ``"omit"`` (nothing), ``"missing"`` or ``"reference"``.
        reference: ``{feature: model-ready value}`` for ``serving="reference"``.
        generator: the generator of the dropout draws (default: torch's default generator).
    """

    def __init__(
        self,
        base: MultiTaskModel,
        heads: Mapping[str, BiasTowerHead],
        *,
        schema: FeatureSchema | None = None,
        features: Sequence[str] = (),
        input_key: str | None = None,
        feature_dropout: float = 0.1,
        serving: Serving = "omit",
        reference: Mapping[str, float] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(base, MultiTaskModel):
            raise TypeError(f"BiasTower wraps a MultiTaskModel; got {type(base).__name__}.")
        if (
            not isinstance(feature_dropout, (int, float))
            or isinstance(feature_dropout, bool)
            or not (0.0 <= feature_dropout < 1.0)
        ):
            raise ValueError(
                f"bias_tower.feature_dropout must be a number in [0, 1); got {feature_dropout!r}."
            )
        if serving not in _SERVING:
            raise ValueError(f"bias_tower.serving must be one of {', '.join(_SERVING)}; got {serving!r}.")
        if not heads:
            raise ValueError("bias_tower.tasks: name at least one task the tower feeds.")
        unknown = [t for t in heads if t not in base.task_names]
        if unknown:
            raise ValueError(
                f"bias_tower.tasks: {unknown} are not outputs of the model ({', '.join(base.task_names)})."
            )
        if (schema is None) == (input_key is None):
            raise ValueError("BiasTower needs either schema and features (tabular columns) or input_key.")
        self.base = base
        self.task_names = base.task_names
        self.heads = nn.ModuleDict(dict(heads))
        self.feature_dropout = float(feature_dropout)
        self.serving: Serving = serving
        self.generator = generator
        self.input_key = input_key
        if schema is not None:
            main, bias = split_schema(schema, features)
            self.schema, self.main_schema, self.bias_schema = schema, main, bias
            cat_index = {c: j for j, c in enumerate(schema.categorical)}
            num_index = {c: j for j, c in enumerate(schema.numeric)}
            self.register_buffer(
                "_main_cat",
                torch.tensor([cat_index[c] for c in main.categorical], dtype=torch.long),
                persistent=False,
            )
            self.register_buffer(
                "_main_num",
                torch.tensor([num_index[c] for c in main.numeric], dtype=torch.long),
                persistent=False,
            )
            self.register_buffer(
                "_bias_cat",
                torch.tensor([cat_index[c] for c in bias.categorical], dtype=torch.long),
                persistent=False,
            )
            self.register_buffer(
                "_bias_num",
                torch.tensor([num_index[c] for c in bias.numeric], dtype=torch.long),
                persistent=False,
            )
            self.features: tuple[str, ...] = (*bias.categorical, *bias.numeric)
        else:
            self.schema = self.main_schema = self.bias_schema = None
            self.features = tuple(str(f) for f in features)  # names of the input_key tensor's columns
        ref = dict(reference or {})
        if serving == "reference":
            if not ref:
                raise ValueError("bias_tower.serving 'reference' needs reference: {feature: value}.")
            bad = [f for f in ref if f not in self.features]
            if bad:
                raise ValueError(
                    f"bias_tower.reference names {bad}, which are not bias features ({', '.join(self.features)})."
                )
        elif ref:
            raise ValueError("bias_tower.reference applies with serving: reference only.")
        self.reference = ref

    # ------------------------------------------------------------------ inputs
    def split_inputs(self, x: Inputs) -> tuple[Inputs, Tensor | None, Tensor | None]:
        """``(main inputs, categorical bias features (N, C) | None, numeric bias features (N, D) | None)``."""
        if not isinstance(x, Mapping):
            raise ShapeError(
                f"BiasTower reads named inputs (tabular columns or the {self.input_key or 'bias'!r} key); "
                f"got {type(x).__name__}."
            )
        if self.input_key is not None:
            if self.input_key not in x:
                raise ShapeError(
                    f"BiasTower: the inputs have no {self.input_key!r} key (got {', '.join(x)})."
                )
            bias = x[self.input_key]
            if bias.ndim != 2:
                raise ShapeError(
                    f"BiasTower: inputs[{self.input_key!r}] must be (N, B); got {tuple(bias.shape)}."
                )
            main = {k: v for k, v in x.items() if k != self.input_key}
            return main, None, bias.float()
        main: dict[str, Tensor] = {}
        cat, num = x.get(CATEGORICAL), x.get(NUMERIC)
        assert self.schema is not None
        if self.schema.num_categorical and (
            cat is None or cat.ndim != 2 or cat.shape[1] != self.schema.num_categorical
        ):
            raise ShapeError(
                f"BiasTower expects inputs['categorical'] of shape (N, {self.schema.num_categorical}) (columns "
                f"{', '.join(self.schema.categorical)}); got {None if cat is None else tuple(cat.shape)}."
            )
        if self.schema.num_numeric and (
            num is None or num.ndim != 2 or num.shape[1] != self.schema.num_numeric
        ):
            raise ShapeError(
                f"BiasTower expects inputs['numeric'] of shape (N, {self.schema.num_numeric}) (columns "
                f"{', '.join(self.schema.numeric)}); got {None if num is None else tuple(num.shape)}."
            )
        if self.main_schema.num_categorical:
            main[CATEGORICAL] = cat.index_select(1, self._main_cat)
        if self.main_schema.num_numeric:
            main[NUMERIC] = num.index_select(1, self._main_num)
        bias_cat = cat.index_select(1, self._bias_cat) if self.bias_schema.num_categorical else None
        bias_num = num.index_select(1, self._bias_num) if self.bias_schema.num_numeric else None
        return main, bias_cat, bias_num

    def _dropped(self, cat: Tensor | None, num: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """Whole-feature dropout: each (sample, bias feature) set missing with probability p."""
        p = self.feature_dropout
        if p == 0.0:
            return cat, num
        out = []
        for t in (cat, num):
            if t is None or t.shape[1] == 0:
                out.append(t)
                continue
            draw = torch.rand(
                t.shape, generator=self.generator, device="cpu" if self.generator is not None else t.device
            )
            keep = draw.to(t.device) >= p
            out.append(torch.where(keep, t, torch.zeros((), dtype=t.dtype, device=t.device)))
        return out[0], out[1]

    def _serving_inputs(self, cat: Tensor | None, num: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """The bias features at serving: all missing, then the reference values."""
        cat = None if cat is None else torch.zeros_like(cat)
        num = None if num is None else torch.zeros_like(num)
        if self.serving == "reference":
            if self.schema is None:
                assert num is not None
                for j, name in enumerate(self.features):
                    if name in self.reference:
                        num[:, j] = float(self.reference[name])
            else:
                assert self.bias_schema is not None
                for j, c in enumerate(self.bias_schema.categorical):
                    if c in self.reference and cat is not None:
                        cat[:, j] = int(self.reference[c])
                for j, c in enumerate(self.bias_schema.numeric):
                    if c in self.reference and num is not None:
                        num[:, j] = float(self.reference[c])
        return cat, num

    def bias_terms(self, cat: Tensor | None, num: Tensor | None) -> dict[str, Tensor]:
        """``{output: (N, width)}``: each fed task's bias term for these (model-ready) bias features."""
        return {t: head(cat, num) for t, head in self.heads.items()}

    def _add(self, outputs: dict[str, Tensor], cat: Tensor | None, num: Tensor | None) -> dict[str, Tensor]:
        if self.training:
            cat, num = self._dropped(cat, num)
        elif self.serving == "omit":
            return outputs
        else:
            cat, num = self._serving_inputs(cat, num)
        out = dict(outputs)
        for t, term in self.bias_terms(cat, num).items():
            value = out[t]
            if value.numel() != term.numel():
                raise ShapeError(
                    f"BiasTower: output {t!r} has shape {tuple(value.shape)}, the bias term {tuple(term.shape)}; "
                    "the tower's width must equal the task's output width."
                )
            out[t] = value + term.reshape(value.shape).to(value.dtype)
        return out

    # ------------------------------------------------------------------ hooks
    @property
    def has_representation(self) -> bool:
        return self.base.has_representation

    def _forward(self, x: Inputs) -> Decoded:
        main, cat, num = self.split_inputs(x)
        parts = self.base.forward_parts(main)
        return self._add(parts.outputs, cat, num), parts.aux

    def _encode(self, x: Inputs) -> tuple[Tensor, Any]:
        main, cat, num = self.split_inputs(x)
        rep, ctx = self.base._encode(main)
        return rep, (ctx, cat, num)

    def _decode(self, rep: Tensor, ctx: Any) -> Decoded:
        base_ctx, cat, num = ctx
        outputs, aux = self.base._decode(rep, base_ctx)
        return self._add(outputs, cat, num), aux

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        self._check_task(task)
        own = list(self.heads[task].parameters()) if task in self.heads else []
        return [*self.base.task_parameters(task), *own]

    def gates(self, x: Inputs) -> dict[str, Tensor]:
        return self.base.gates(self.split_inputs(x)[0])


def with_bias_tower(
    base: MultiTaskModel,
    *,
    tasks: Sequence[str],
    schema: FeatureSchema | None = None,
    features: Sequence[str] = (),
    input_key: str | None = None,
    num_bias_features: int | None = None,
    out_features: Mapping[str, int] | None = None,
    dims: Sequence[int] = (16,),
    embedding_dim: int = 4,
    activation: str = "relu",
    feature_dropout: float = 0.1,
    serving: Serving = "omit",
    reference: Mapping[str, float] | None = None,
    generator: torch.Generator | None = None,
) -> BiasTower:
    """Wrap ``base`` with one shallow bias tower per task in ``tasks`` (see :class:`BiasTower`).

    Args:
        base: the main model; with ``schema`` it must read ``split_schema(schema, features)[0]``.
        tasks: the outputs of ``base`` that get a bias term (binary logits or regression values).
        schema, features: the full tabular schema and the names of its bias columns; or
        input_key, num_bias_features: the input key of a float ``(N, B)`` bias tensor and ``B``.
        out_features: ``{task: width}`` of the term (default 1: a binary task or a scalar regression).
        dims, embedding_dim, activation: the towers' shape.
        feature_dropout, serving, reference, generator: see :class:`BiasTower`.

    Example:
        >>> from mtlkit.data.schema import FeatureSchema
        >>> from mtlkit.models import shared_bottom
        >>> from mtlkit.tasks import Task
        >>> schema = FeatureSchema(("position",), (11,), ("x0", "x1"))
        >>> base = shared_bottom(2, [Task(name="click", kind="binary")])
        >>> model = with_bias_tower(base, tasks=["click"], schema=schema, features=["position"])
        >>> sorted(model.heads)
        ['click']
    """
    widths = dict(out_features or {})
    if schema is not None:
        if not isinstance(schema, FeatureSchema):
            raise TypeError(f"with_bias_tower: schema must be a FeatureSchema; got {type(schema).__name__}.")
        _, bias = split_schema(schema, features)
        cards, num = bias.cardinalities, bias.num_numeric
    else:
        if not isinstance(num_bias_features, int) or num_bias_features < 1:
            raise ValueError(
                f"with_bias_tower: with input_key, num_bias_features (B, an int >= 1) is needed; got {num_bias_features!r}."
            )
        cards, num = (), num_bias_features
        names = [str(f) for f in features] or [f"bias{j}" for j in range(num_bias_features)]
        if len(names) != num_bias_features:
            raise ValueError(
                f"with_bias_tower: features names the {num_bias_features} columns of inputs[{input_key!r}]; got {len(names)} names."
            )
        features = names
    tasks = list(tasks)
    dup = sorted({t for t in tasks if tasks.count(t) > 1})
    if dup:
        raise ValueError(f"bias_tower.tasks names {dup} twice.")
    heads = {
        t: BiasTowerHead(
            cards, num, widths.get(t, 1), dims=dims, embedding_dim=embedding_dim, activation=activation
        )
        for t in tasks
    }
    return BiasTower(
        base,
        heads,
        schema=schema,
        features=features,
        input_key=input_key,
        feature_dropout=feature_dropout,
        serving=serving,
        reference=reference,
        generator=generator,
    )
