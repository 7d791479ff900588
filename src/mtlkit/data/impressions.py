"""A synthetic impression log (ESMM-style click / conversion funnel) written as Parquet shards.

``impression_log(out_dir, rows, shard_rows=..., seed=...)`` writes ``part-00000.parquet``,
``part-00001.parquet``, ... with ``shard_rows`` rows each (the last one holds the rest), one row
per impression:

============  ======================  ===================================================
column        type                    meaning
============  ======================  ===================================================
sample_id     int64                   the row's index in the whole log (0, 1, 2, ...)
user_id       int64                   Zipf-like popularity (rank ``k`` drawn with
                                      probability about ``1 / k``) over ``users`` ids
item_id       int64                   the same over ``items`` ids
device        string                  ``android`` / ``ios`` / ``web``
position      int64                   the slot on the page, 1..20 (lower clicks more)
price         float64                 the item's price, lognormal (a property of the item)
user_activity float64                 the user's log-activity (a property of the user)
click         int8                    1 = clicked
conversion    int8, null unless click the funnel: labelled only on clicked impressions
watch_time    float64, null unless    heavy-tailed (lognormal) seconds watched
              click
history       list<int64> (optional)  ``history=H``: the user's recent item ids, 1..H of them
                                      (a property of the user, popular items likelier)
weight        float64 (optional)      ``weights=True``: a sample weight in [0.5, 2.0]
                                      (a function of ``seed`` and ``sample_id``)
============  ======================  ===================================================

``file_format="csv"`` writes ``part-NNNNN.csv`` files instead, the history as one
``|``-separated string per row (``"17|4|230"``: the delimited list column of
:mod:`mtlkit.data.features`).

The labels come from known latent factors, so models can learn them: user and item embeddings
(``dim`` = 8, derived from the ids by hashing, no table held in memory), with
``P(click) = sigmoid(b + <u, i> + position and device effects)`` (a CTR of a few percent),
``P(conversion | click) = sigmoid(b' + <u', i> - price effect)`` and a lognormal watch time whose
location follows ``<u, i>``. ``oracle=True`` adds the true probabilities as ``p_click`` and
``p_conversion`` (an upper bound for any model's AUC).

Determinism: rows are generated in fixed blocks of :data:`BLOCK_ROWS` rows, block ``b`` from a
generator seeded with ``(seed, b)``, so the log depends on ``seed``, ``rows``, ``users`` and
``items`` only, never on ``shard_rows`` or ``row_group_rows``. Memory stays bounded by one block
whatever ``rows`` is: shards are written block by block and never held whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mtlkit.errors import DataError
from mtlkit.jsonio import write_json

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["BLOCK_ROWS", "DEVICES", "ImpressionLog", "impression_log", "impression_schema"]

BLOCK_ROWS = 65_536
"""Rows generated per random block (fixed: part of the log's definition, not a tuning knob)."""

DEVICES = ("android", "ios", "web")
_DIM = 8
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class ImpressionLog:
    """What :func:`impression_log` wrote: the shard paths, row count and vocabulary sizes."""

    files: tuple[Path, ...]
    rows: int
    users: int
    items: int
    seed: int


def _default_users(rows: int) -> int:
    return int(min(1_000_000, max(1_000, rows // 20)))


def _default_items(rows: int) -> int:
    return int(min(200_000, max(200, rows // 100)))


# ---------------------------------------------------------------------------------------------- hashing
def _splitmix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 (wraps modulo 2**64)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _uniform(ids: np.ndarray, salt: int, k: int) -> np.ndarray:
    """A uniform (0, 1) value per id, column ``k``, stream ``salt``: a pure function of its arguments."""
    with np.errstate(over="ignore"):
        key = (
            ids.astype(np.uint64) * np.uint64(64)
            + np.uint64(k)
            + np.uint64(salt) * np.uint64(0x632BE59BD9B4E019)
        )
    return ((_splitmix(key) >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def _embedding(ids: np.ndarray, salt: int, scale: float, dim: int = _DIM) -> np.ndarray:
    """A standard-normal ``(n, dim)`` embedding per id (Box-Muller on hashed uniforms), times ``scale``.

    Computed once per distinct id of ``ids``."""
    uniq, inverse = np.unique(ids, return_inverse=True)
    out = np.empty((uniq.shape[0], dim + dim % 2))
    for k in range(0, dim, 2):
        r = np.sqrt(-2.0 * np.log(_uniform(uniq, salt, k)))
        angle = 2.0 * np.pi * _uniform(uniq, salt, k + 1)
        out[:, k], out[:, k + 1] = r * np.cos(angle), r * np.sin(angle)
    return out[inverse.reshape(-1), :dim] * scale


def _popular(rng: np.random.Generator, n: int, count: int, salt: int) -> np.ndarray:
    """``count`` ids out of ``n`` with Zipf-like popularity: rank ``floor(n ** u)`` (probability about
    ``1 / rank``), mapped to an id by a fixed bijection so popular ids are spread over the range."""
    rank = np.minimum(np.floor(np.exp(rng.random(count) * np.log(n + 1.0))).astype(np.int64) - 1, n - 1)
    mult = 2_654_435_761 % n or 1
    while np.gcd(mult, n) != 1:
        mult += 1
    return (rank * mult + salt) % n


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _history(user: np.ndarray, seed: int, items: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, item ids)`` of each row's history: 1..``length`` popular-skewed item ids per user,
    a pure function of the user id and ``seed`` (hashed, no random stream consumed)."""
    uniq, inverse = np.unique(user, return_inverse=True)
    sizes = 1 + np.minimum((_uniform(uniq, 7 + seed * 4, 63) * length).astype(np.int64), length - 1)
    mult = 2_654_435_761 % items or 1
    while np.gcd(mult, items) != 1:
        mult += 1
    ranks = np.stack([_uniform(uniq, 8 + seed * 4, k) for k in range(length)], axis=1)  # (U, length)
    ranks = np.minimum(np.floor(np.exp(ranks * np.log(items + 1.0))).astype(np.int64) - 1, items - 1)
    ids = (ranks * mult + 101) % items  # the bijection of _popular (salt 101, as item_id)
    per_row = sizes[inverse.reshape(-1)]
    offsets = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int32)
    take = np.arange(length)[None, :] < per_row[:, None]
    return offsets, ids[inverse.reshape(-1)][take]


def _block(
    seed: int, b: int, start: int, count: int, users: int, items: int, oracle: bool, history: int = 0,
    weights: bool = False,
) -> dict:
    """Rows ``start .. start+count`` of block ``b`` (a pure function of its arguments)."""
    rng = np.random.default_rng([seed, b])
    user = _popular(rng, users, count, salt=17)
    item = _popular(rng, items, count, salt=101)
    device = rng.integers(0, len(DEVICES), count)
    position = rng.integers(1, 21, count)
    u_click = _embedding(user, 1 + seed * 4, 0.55)
    u_conv = _embedding(user, 2 + seed * 4, 0.5)
    v = _embedding(item, 3 + seed * 4, 0.55)
    activity = np.log1p(np.exp(_embedding(user, 4 + seed * 4, 1.0, 1)[:, 0] + 1.0))
    price = np.exp(3.0 + 0.8 * _embedding(item, 5 + seed * 4, 1.0, 1)[:, 0])
    affinity = np.einsum("nd,nd->n", u_click, v)
    logit_click = (
        -3.6 + 1.6 * affinity - 0.06 * (position - 1) + np.array([0.0, 0.25, -0.3])[device] + 0.3 * activity
    )
    p_click = _sigmoid(logit_click)
    click = rng.random(count) < p_click
    p_conv = _sigmoid(-1.5 + 1.5 * np.einsum("nd,nd->n", u_conv, v) - 0.35 * (np.log(price) - 3.0))
    conv = rng.random(count) < p_conv
    watch = np.exp(rng.normal(3.0 + 0.6 * affinity, 1.2))
    cols = {
        "sample_id": np.arange(start, start + count, dtype=np.int64),
        "user_id": user,
        "item_id": item,
        "device": device,
        "position": position.astype(np.int64),
        "price": np.round(price, 2),
        "user_activity": activity,
        "click": click.astype(np.int8),
        "conversion": np.where(click, conv, False).astype(np.int8),
        "watch_time": watch,
        "_clicked": click,
    }
    if oracle:
        cols["p_click"], cols["p_conversion"] = p_click, p_conv
    if history:
        cols["history"] = _history(user, seed, items, history)
    if weights:
        sid = cols["sample_id"]
        cols["weight"] = np.round(0.5 + 1.5 * _uniform(sid, 9 + seed * 4, 0), 3)
    return cols


def impression_schema(*, oracle: bool = False, history: bool = False, weights: bool = False) -> pa.Schema:
    """The Parquet schema of the log (a ``pyarrow.Schema``)."""
    import pyarrow as pa

    fields = [
        ("sample_id", pa.int64()),
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("device", pa.string()),
        ("position", pa.int64()),
        ("price", pa.float64()),
        ("user_activity", pa.float64()),
        ("click", pa.int8()),
        ("conversion", pa.int8()),
        ("watch_time", pa.float64()),
    ]
    if oracle:
        fields += [("p_click", pa.float64()), ("p_conversion", pa.float64())]
    if history:
        fields.append(("history", pa.list_(pa.int64())))
    if weights:
        fields.append(("weight", pa.float64()))
    return pa.schema(fields)


def _table(cols: dict, schema: pa.Schema, lo: int, hi: int) -> pa.Table:
    import pyarrow as pa

    clicked = ~cols["_clicked"][lo:hi]
    arrays = []
    for field in schema:
        if field.name == "history":
            offsets, ids = cols["history"]
            arrays.append(
                pa.ListArray.from_arrays(
                    pa.array(offsets[lo : hi + 1] - offsets[lo]), pa.array(ids[offsets[lo] : offsets[hi]], pa.int64())
                )
            )
            continue
        x = cols[field.name][lo:hi]
        if field.name == "device":
            arrays.append(
                pa.DictionaryArray.from_arrays(pa.array(x.astype(np.int32)), pa.array(DEVICES)).cast(
                    pa.string()
                )
            )
        elif field.name in ("conversion", "watch_time"):
            arrays.append(pa.array(x, type=field.type, mask=clicked))
        else:
            arrays.append(pa.array(x, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


class _CsvWriter:
    """Writes tables to one CSV file (header once), list columns as ``|``-separated strings."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        self.lists = [f.name for f in schema if pa.types.is_list(f.type)]
        fields = [pa.field(f.name, pa.string()) if f.name in self.lists else f for f in schema]
        self.writer = pacsv.CSVWriter(str(path), pa.schema(fields))
        self.schema = pa.schema(fields)

    def write_table(self, table: pa.Table, row_group_size: int | None = None) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        for name in self.lists:
            text = pc.binary_join(pc.cast(table.column(name), pa.list_(pa.string())), "|")
            table = table.set_column(table.schema.get_field_index(name), name, text)
        self.writer.write_table(table.cast(self.schema))

    def close(self) -> None:
        self.writer.close()


def impression_log(
    out_dir: str | Path,
    rows: int,
    *,
    shard_rows: int = 1_000_000,
    seed: int = 0,
    users: int | None = None,
    items: int | None = None,
    row_group_rows: int = BLOCK_ROWS,
    oracle: bool = False,
    compression: str = "zstd",
    history: int = 0,
    weights: bool = False,
    file_format: str = "parquet",
) -> ImpressionLog:
    """Write a synthetic impression log of ``rows`` rows as Parquet shards in ``out_dir``.

    Args:
        out_dir: the folder for ``part-NNNNN.parquet`` (created; must hold no Parquet files yet, so
            shards of an earlier, longer log cannot mix in).
        rows: the number of impressions.
        shard_rows: rows per file (the last file holds the rest).
        seed: the log's seed (same seed and sizes, same log, whatever the sharding).
        users: distinct user ids to draw from (default ``rows / 20`` clipped to 1,000 .. 1,000,000).
        items: distinct item ids (default ``rows / 100`` clipped to 200 .. 200,000).
        row_group_rows: the largest Parquet row group (the streaming reader's shuffle unit).
        oracle: also write the true ``p_click`` and ``p_conversion``.
        compression: Parquet compression codec.
        history: write a ``history`` list column of up to this many recent item ids per user
            (0: none).
        weights: write a ``weight`` column of sample weights in [0.5, 2.0].
        file_format: ``parquet`` (default) or ``csv`` (``part-NNNNN.csv``, the history as a
            ``|``-separated string; ``row_group_rows`` and ``compression`` do not apply).

    Returns:
        An :class:`ImpressionLog` with the shard paths. A ``_log.json`` beside them records the
        parameters.
    """
    import pyarrow.parquet as pq

    for name, value, low in (
        ("rows", rows, 1),
        ("shard_rows", shard_rows, 1),
        ("row_group_rows", row_group_rows, 1),
        ("seed", seed, 0),
        ("history", history, 0),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise DataError(f"impression_log: {name} must be an integer >= {low}; got {value!r}.")
    if file_format not in ("parquet", "csv"):
        raise DataError(f"impression_log: file_format must be 'parquet' or 'csv'; got {file_format!r}.")
    users = _default_users(rows) if users is None else users
    items = _default_items(rows) if items is None else items
    for name, value in (("users", users), ("items", items)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise DataError(f"impression_log: {name} must be an integer >= 1; got {value!r}.")
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise DataError(f"impression_log: {out} exists and is not a folder; choose another output folder.")
    out.mkdir(parents=True, exist_ok=True)
    old = sorted([*out.glob("*.parquet"), *out.glob("part-*.csv")])
    if old:
        raise DataError(
            f"impression_log: {out} already holds {len(old)} {'Parquet' if old[0].suffix == '.parquet' else 'CSV'} file(s) ({old[0].name}, ...); write the log "
            "into an empty folder (or delete the old shards), so shards of two logs cannot mix."
        )
    schema = impression_schema(oracle=oracle, history=history > 0, weights=weights)
    files: list[Path] = []
    writer = None
    in_shard = 0
    try:
        for b in range(-(-rows // BLOCK_ROWS)):
            start = b * BLOCK_ROWS
            count = min(BLOCK_ROWS, rows - start)
            cols = _block(seed, b, start, count, users, items, oracle, history, weights)
            lo = 0
            while lo < count:
                if writer is None:
                    files.append(out / f"part-{len(files):05d}.{file_format}")
                    writer = (
                        pq.ParquetWriter(files[-1], schema, compression=compression)
                        if file_format == "parquet"
                        else _CsvWriter(files[-1], schema)
                    )
                    in_shard = 0
                hi = min(count, lo + shard_rows - in_shard)
                writer.write_table(_table(cols, schema, lo, hi), row_group_size=row_group_rows)
                in_shard += hi - lo
                lo = hi
                if in_shard == shard_rows:
                    writer.close()
                    writer = None
    finally:
        if writer is not None:
            writer.close()
    meta = {"rows": rows, "shard_rows": shard_rows, "seed": seed, "users": users, "items": items,
            "oracle": oracle, "history": history, "weights": weights, "files": [f.name for f in files], "generator": "mtlkit.data.impression_log"}  # fmt: skip
    write_json(meta, out / "_log.json", indent=2)
    return ImpressionLog(files=tuple(files), rows=rows, users=users, items=items, seed=seed)
