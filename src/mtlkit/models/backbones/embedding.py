"""The embedding front end for tabular (recommender) data: categorical embeddings + numeric columns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.argcheck import positive_int
from mtlkit.data.schema import CATEGORICAL, NUMERIC, FeatureSchema, InputSpec, ListInput, describe_input_spec
from mtlkit.errors import ShapeError
from mtlkit.registries import BACKBONES

__all__ = ["DEFAULT_INIT_STD", "EmbeddingFrontEnd", "embedding"]


DEFAULT_INIT_STD = 1e-4
"""Embedding tables start as N(0, 1e-4**2), the default of DeepCTR(-Torch) (``init_std=0.0001``) and
FuxiCTR (``normal_(std=1e-4)``): with ``nn.Embedding``'s N(0, 1) the embeddings dwarf the
standardised numeric inputs and early training is noisy."""


class _Table(nn.Embedding):
    """An embedding table initialised N(0, init_std**2) (also by ``reset_parameters``)."""

    init_std: float = DEFAULT_INIT_STD

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.normal_(0.0, self.init_std)


def _table(rows: int, dim: int, std: float, sparse: bool) -> _Table:
    t = _Table.__new__(_Table)
    t.init_std = std
    _Table.__init__(t, rows, dim, sparse=sparse)
    return t


class EmbeddingFrontEnd(nn.Module):
    """Embeds every categorical column and concatenates the embeddings with the numeric columns.

    Tables of the same width live in one ``nn.Embedding`` with per-table row offsets, so the lookup
    of the single-valued columns is one gather per width: ``(N, C)`` indices -> ``(N, C, d)``; with
    one width (the default) the output is ``(N, C*d)`` then the numeric ``(N, D)`` columns. List
    columns (``inputs["list:<name>"]``, ``(N, L)`` with -1 padding) are pooled (mean, sum or max
    over the row's values; a row without values gives zeros) with ``embedding_bag`` and offsets
    (a masked gather while exporting); a column with ``table`` set reads the named column's rows.
    Index 0 of every table is its unknown bucket (unseen, rare or missing values), as produced by
    :class:`~mtlkit.data.preprocessing.TabularPreprocessor`. ``out_features`` is the sum of the
    columns' widths plus ``D``; the output holds the single-valued columns in schema order, then
    the list columns, then the numeric ones.

    Args:
        schema: the columns, their cardinalities and (optionally) widths, shared tables and lists.
        embedding_dim: the width of columns without their own ``dim``: an int, or ``"auto"`` for
            :func:`~mtlkit.data.features.auto_dim` of the table's cardinality.
        check_indices: check each batch's indices against the cardinalities (one comparison per
            batch; turn off to avoid the host synchronisation on accelerators).
        init_std: tables start N(0, init_std**2) (:data:`DEFAULT_INIT_STD`).
        sparse: sparse gradients for the tables (``nn.Embedding(sparse=True)``; needs an optimizer
            that takes them: the trainer steps them with ``SparseAdam``, see
            :mod:`mtlkit.training.sparse_optim`).
    """

    def __init__(
        self,
        schema: FeatureSchema,
        embedding_dim: int | str = 8,
        *,
        check_indices: bool = True,
        init_std: float = DEFAULT_INIT_STD,
        sparse: bool = False,
    ) -> None:
        super().__init__()
        from mtlkit.data.features import auto_dim

        if not isinstance(schema, FeatureSchema):
            raise TypeError(f"EmbeddingFrontEnd needs a FeatureSchema; got {type(schema).__name__}.")
        if embedding_dim != "auto" and (
            not isinstance(embedding_dim, int) or isinstance(embedding_dim, bool) or embedding_dim < 1
        ):
            raise ValueError(f"embedding_dim must be an int >= 1 or 'auto'; got {embedding_dim!r}.")
        if not isinstance(init_std, (int, float)) or isinstance(init_std, bool) or not init_std > 0:
            raise ValueError(f"init_std must be a number > 0; got {init_std!r}.")
        self.schema, self.embedding_dim, self.check_indices = schema, embedding_dim, check_indices
        self.sparse = bool(sparse)
        # every table: its rows and width, in order of first use
        cols = [
            (
                name,
                card,
                (schema.dims[j] if schema.dims else 0),
                (schema.tables[j] if schema.tables else "") or name,
            )
            for j, (name, card) in enumerate(zip(schema.categorical, schema.cardinalities))
        ] + [(x.name, x.cardinality, x.dim, x.table or x.name) for x in schema.lists]
        own = {name: (card, dim) for name, card, dim, table in cols if table == name}
        widths: dict[str, int] = {}
        for table, (card, dim) in own.items():
            widths[table] = dim or (auto_dim(card) if embedding_dim == "auto" else int(embedding_dim))
        groups: list[int] = list(dict.fromkeys(widths.values()))
        rows = dict.fromkeys(groups, 0)
        place: dict[str, tuple[int, int]] = {}  # table -> (group, row offset)
        for table, (card, _) in own.items():
            g = groups.index(widths[table])
            place[table] = (g, rows[widths[table]])
            rows[widths[table]] += card
        tables = [_table(rows[d], d, float(init_std), self.sparse) for d in groups]
        self.table = tables[0] if tables else None
        self.extra_tables = nn.ModuleList(tables[1:])
        self.widths = groups
        cat = [(place[t][0], place[t][1], widths[t]) for _, _, _, t in cols[: schema.num_categorical]]
        self._cat_groups = [[j for j, c in enumerate(cat) if c[0] == g] for g in range(len(groups))]
        self._list_place = [place[t] for _, _, _, t in cols[schema.num_categorical :]]
        self.register_buffer("offsets", torch.tensor([c[1] for c in cat], dtype=torch.long), persistent=False)
        self.register_buffer(
            "cardinalities", torch.tensor(list(schema.cardinalities), dtype=torch.long), persistent=False
        )
        self.out_features = (
            sum(c[2] for c in cat)
            + sum(widths[t] for *_, t in cols[schema.num_categorical :])
            + schema.num_numeric
        )

    def tables(self) -> list[nn.Embedding]:
        """The embedding tables, one per width."""
        return [t for t in [self.table, *self.extra_tables] if t is not None]

    def forward(self, x: Mapping[str, Tensor]) -> Tensor:
        if not isinstance(x, Mapping):
            raise ShapeError(
                "The embedding front end takes named inputs {'categorical': (N, C) long, 'numeric': (N, D) "
                f"float}}; got {type(x).__name__}. Preprocess raw columns with TabularPreprocessor."
            )
        parts: list[Tensor] = []
        s = self.schema
        tables = self.tables()
        if s.num_categorical:
            codes = x.get(CATEGORICAL)
            if codes is None or codes.ndim != 2 or codes.shape[1] != s.num_categorical:
                got = "nothing" if codes is None else f"shape {tuple(codes.shape)}"
                raise ShapeError(
                    f"The embedding front end expects inputs['categorical'] of shape (N, {s.num_categorical}) "
                    f"(columns {', '.join(s.categorical)}); got {got}."
                )
            if codes.is_floating_point() or codes.dtype == torch.bool:
                raise ShapeError(
                    f"inputs['categorical'] must hold integer category indices; got dtype {codes.dtype}."
                )
            if self.check_indices:
                bad = (codes < 0) | (codes >= self.cardinalities)
                if bool(bad.any()):
                    col = int(bad.any(0).nonzero()[0])
                    v = int(codes[:, col][bad[:, col]][0])
                    raise ShapeError(
                        f"Categorical column {s.categorical[col]!r} has index {v}, outside 0..{s.cardinalities[col] - 1}. "
                        "Encode raw values with the TabularPreprocessor fitted on the training data."
                    )
            idx = codes.long() + self.offsets
            if len(tables) == 1:
                emb = tables[0](idx)  # (N, C, d): one gather for every column
                parts.append(emb.reshape(codes.shape[0], -1))
            else:  # one gather per width, then the columns in schema order
                cols: list[Tensor | None] = [None] * s.num_categorical
                for g, members in enumerate(self._cat_groups):
                    if members:
                        emb = tables[g](idx[:, members])
                        for k, j in enumerate(members):
                            cols[j] = emb[:, k]
                parts.append(torch.cat([c for c in cols if c is not None], dim=1))
        for spec, (g, offset) in zip(s.lists, self._list_place):
            parts.append(self._pool(x, spec, tables[g], offset))
        if s.num_numeric:
            num = x.get(NUMERIC)
            if num is None or num.ndim != 2 or num.shape[1] != s.num_numeric:
                got = "nothing" if num is None else f"shape {tuple(num.shape)}"
                raise ShapeError(
                    f"The embedding front end expects inputs['numeric'] of shape (N, {s.num_numeric}) "
                    f"(columns {', '.join(s.numeric)}); got {got}."
                )
            parts.append(num.to(tables[0].weight.dtype if tables else num.dtype))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def _pool(self, x: Mapping[str, Tensor], spec: ListInput, table: nn.Embedding, offset: int) -> Tensor:
        codes = x.get(spec.key)
        if codes is None or codes.ndim != 2:
            got = "nothing" if codes is None else f"shape {tuple(codes.shape)}"
            raise ShapeError(
                f"The embedding front end expects inputs[{spec.key!r}] of shape (N, L) (the values of list column "
                f"{spec.name!r}, -1 padding); got {got}."
            )
        if codes.is_floating_point() or codes.dtype == torch.bool:
            raise ShapeError(
                f"inputs[{spec.key!r}] must hold integer category indices; got dtype {codes.dtype}."
            )
        codes = codes.long()
        if self.check_indices:
            bad = (codes < -1) | (codes >= spec.cardinality)
            if bool(bad.any()):
                v = int(codes[bad][0])
                raise ShapeError(
                    f"List column {spec.name!r} has index {v}, outside -1 (padding) .. {spec.cardinality - 1}. "
                    "Encode raw values with the TabularPreprocessor fitted on the training data."
                )
        mask = codes >= 0
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return _masked_pool(table.weight, codes + offset, mask, spec.pooling)
        counts = mask.sum(1)
        starts = torch.cumsum(counts, 0) - counts
        return F.embedding_bag(
            codes[mask] + offset, table.weight, starts, mode=spec.pooling, sparse=self.sparse
        )

    def extra_repr(self) -> str:
        s = self.schema
        lists = f", lists={len(s.lists)}" if s.lists else ""
        return (
            f"categorical={s.num_categorical}, numeric={s.num_numeric}{lists}, embedding_dim={self.embedding_dim}, "
            f"out_features={self.out_features}"
        )


def _masked_pool(weight: Tensor, idx: Tensor, mask: Tensor, mode: str) -> Tensor:
    """Pooling of padded rows by a masked gather (what ``embedding_bag`` computes; exportable)."""
    emb = F.embedding(idx.clamp_min(0) * mask, weight)  # (N, L, d); padding reads row 0, masked out
    m = mask.unsqueeze(-1)
    if mode == "max":
        top = emb.masked_fill(~m, float("-inf")).amax(1)
        return torch.where(mask.any(1, keepdim=True), top, torch.zeros_like(top))
    total = (emb * m.to(emb.dtype)).sum(1)
    if mode == "sum":
        return total
    return total / mask.sum(1, keepdim=True).clamp_min(1).to(emb.dtype)


@BACKBONES.register("embedding")
def embedding(
    input_spec: InputSpec,
    *,
    embedding_dim: int | Literal["auto"] = 8,
    check_indices: bool = True,
    init_std: float = DEFAULT_INIT_STD,
    sparse_embeddings: bool = False,
) -> EmbeddingFrontEnd:
    """Embeddings of categorical columns (unknown bucket 0) concatenated with numeric columns.

    ``embedding_dim``: the width of columns without their own ``dim`` (``auto``: from each table's
    cardinality); ``init_std``: tables start N(0, init_std**2); ``sparse_embeddings``: sparse table
    gradients, stepped by ``SparseAdam`` (:mod:`mtlkit.training.sparse_optim`)."""
    if embedding_dim != "auto":
        positive_int("embedding_dim", embedding_dim, who="embedding")
    if not isinstance(input_spec, FeatureSchema):
        raise ValueError(
            f"the embedding backbone takes tabular inputs (a FeatureSchema); got {describe_input_spec(input_spec)}."
        )
    return EmbeddingFrontEnd(
        input_spec, embedding_dim, check_indices=check_indices, init_std=init_std, sparse=sparse_embeddings
    )
