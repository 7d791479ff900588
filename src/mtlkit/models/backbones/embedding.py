"""The embedding front end for tabular (recommender) data: categorical embeddings + numeric columns."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mtlkit.argcheck import positive_int
from mtlkit.data.schema import CATEGORICAL, NUMERIC, FeatureSchema, InputSpec, describe_input_spec
from mtlkit.errors import ShapeError
from mtlkit.registries import BACKBONES

__all__ = ["EmbeddingFrontEnd", "embedding"]


class EmbeddingFrontEnd(nn.Module):
    """Embeds every categorical column and concatenates the embeddings with the numeric columns.

    All columns share one embedding table with per-column offsets, so the lookup of a whole batch
    is a single gather: ``(N, C)`` indices -> ``(N, C, d)`` -> ``(N, C*d)``, then the numeric
    ``(N, D)`` columns are appended: ``out_features = C*d + D``. Index 0 of every column is its
    unknown bucket (unseen, rare or missing values), as produced by
    :class:`~mtlkit.data.preprocessing.TabularPreprocessor`.

    Args:
        schema: the columns and their cardinalities.
        embedding_dim: ``d``, the width of each column's embedding.
        check_indices: check each batch's indices against the cardinalities (one comparison per
            batch; turn off to avoid the host synchronisation on accelerators).
    """

    def __init__(self, schema: FeatureSchema, embedding_dim: int = 8, *, check_indices: bool = True) -> None:
        super().__init__()
        if not isinstance(schema, FeatureSchema):
            raise TypeError(f"EmbeddingFrontEnd needs a FeatureSchema; got {type(schema).__name__}.")
        if not isinstance(embedding_dim, int) or embedding_dim < 1:
            raise ValueError(f"embedding_dim must be an int >= 1; got {embedding_dim!r}.")
        self.schema, self.embedding_dim, self.check_indices = schema, embedding_dim, check_indices
        cards = list(schema.cardinalities)
        starts = [sum(cards[:i]) for i in range(len(cards))]
        self.register_buffer("offsets", torch.tensor(starts, dtype=torch.long), persistent=False)
        self.register_buffer("cardinalities", torch.tensor(cards, dtype=torch.long), persistent=False)
        total = sum(cards)
        self.table = nn.Embedding(total, embedding_dim) if total else None
        self.out_features = schema.num_categorical * embedding_dim + schema.num_numeric

    def forward(self, x: Mapping[str, Tensor]) -> Tensor:
        if not isinstance(x, Mapping):
            raise ShapeError(
                "The embedding front end takes named inputs {'categorical': (N, C) long, 'numeric': (N, D) "
                f"float}}; got {type(x).__name__}. Preprocess raw columns with TabularPreprocessor."
            )
        parts: list[Tensor] = []
        s = self.schema
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
            assert self.table is not None
            emb = self.table(codes.long() + self.offsets)  # (N, C, d): one gather for every column
            parts.append(emb.reshape(codes.shape[0], -1))
        if s.num_numeric:
            num = x.get(NUMERIC)
            if num is None or num.ndim != 2 or num.shape[1] != s.num_numeric:
                got = "nothing" if num is None else f"shape {tuple(num.shape)}"
                raise ShapeError(
                    f"The embedding front end expects inputs['numeric'] of shape (N, {s.num_numeric}) "
                    f"(columns {', '.join(s.numeric)}); got {got}."
                )
            parts.append(num.to(self.table.weight.dtype if self.table is not None else num.dtype))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def extra_repr(self) -> str:
        s = self.schema
        return (
            f"categorical={s.num_categorical}, numeric={s.num_numeric}, embedding_dim={self.embedding_dim}, "
            f"out_features={self.out_features}"
        )


@BACKBONES.register("embedding")
def embedding(
    input_spec: InputSpec, *, embedding_dim: int = 8, check_indices: bool = True
) -> EmbeddingFrontEnd:
    """Embeddings of categorical columns (unknown bucket 0) concatenated with numeric columns."""
    positive_int("embedding_dim", embedding_dim, who="embedding")
    if not isinstance(input_spec, FeatureSchema):
        raise ValueError(
            f"the embedding backbone takes tabular inputs (a FeatureSchema); got {describe_input_spec(input_spec)}."
        )
    return EmbeddingFrontEnd(input_spec, embedding_dim, check_indices=check_indices)
