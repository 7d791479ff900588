"""Feature specs: stable hashing, list pooling, per-column widths, shared tables, init, numeric
transforms, in-memory vs streaming encodings, state and export (issue 14 §1, §6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlkit import Task
from mtlkit.data import TabularPreprocessor
from mtlkit.data.features import auto_dim
from mtlkit.data.hashing import fnv1a_64, hash_codes
from mtlkit.data.schema import CATEGORICAL, NUMERIC, FeatureSchema, ListInput
from mtlkit.data.tabular import tabular
from mtlkit.errors import DataError
from mtlkit.models._inputs import make_input_layers
from mtlkit.models.backbones import EmbeddingFrontEnd, embedding

REPO = Path(__file__).resolve().parents[3]


def fnv_reference(s: str) -> int:
    """FNV-1a 64 written out byte by byte (independent of the vectorised implementation)."""
    h = 14695981039346656037
    for b in s.encode("utf-8"):
        h = ((h ^ b) * 1099511628211) % 2**64
    return h


# ---------------------------------------------------------------------------------------------- hashing
def test_fnv1a_matches_published_vectors_and_a_byte_loop() -> None:
    # published FNV-1a 64 test vectors (www.isthe.com/chongo/tech/comp/fnv)
    assert [int(h) for h in fnv1a_64(np.array(["", "a", "foobar"]))] == [
        0xCBF29CE484222325,
        0xAF63DC4C8601EC8C,
        0x85944171F73967E8,
    ]
    rng = np.random.default_rng(0)
    alphabet = list("abcXYZ019 _-|é中🙂")
    words = ["".join(rng.choice(alphabet, rng.integers(1, 40))) for _ in range(300)]
    got = fnv1a_64(np.array(words))
    assert [int(h) for h in got] == [fnv_reference(w) for w in words]
    codes = hash_codes(np.array(words), 1000)
    assert codes.tolist() == [1 + fnv_reference(w) % 1000 for w in words]


def test_hash_codes_are_identical_in_another_process() -> None:
    words = ["user_1", "user_2", "Zürich", "42", "a|b", "x" * 70]
    code = (
        "import json, sys, numpy as np; from mtlkit.data.hashing import hash_codes; "
        f"print(json.dumps(hash_codes(np.array({words!r}), 1000003).tolist()))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout) == hash_codes(np.array(words), 1000003).tolist()
    assert json.loads(out.stdout) == [1 + fnv_reference(w) % 1000003 for w in words]


# ---------------------------------------------------------------------------------------------- preprocessing
def columns(n: int = 40, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    items = np.array([f"i{k}" for k in range(12)])
    hist = ["|".join(rng.choice(items, rng.integers(0, 6))) for _ in range(n)]
    return {
        "device": rng.choice(["ios", "android", "web"], n).astype(str),
        "user": np.array([f"u{k}" for k in rng.integers(0, 30, n)]),
        "item": rng.choice(items, n).astype(str),
        "history": np.array(hist),
        "price": rng.normal(10, 3, n),
        "watch": rng.exponential(100, n),
        "age": rng.uniform(10, 70, n),
    }


SPEC_CAT = [
    "device",
    {"name": "user", "hash_buckets": 64, "dim": 4},
    {"name": "item", "dim": 6},
    {"name": "history", "list": True, "delimiter": "|", "pooling": "mean", "share": "item"},
]
SPEC_NUM = ["price", {"name": "watch", "transform": "log1p"}, {"name": "age", "bucketize": [18, 25, 35, 50]}]


def fitted() -> TabularPreprocessor:
    return TabularPreprocessor(categorical=SPEC_CAT, numeric=SPEC_NUM).fit(columns())


def test_numeric_transforms_match_hand_formulas() -> None:
    cols = columns()
    pre = fitted()
    out = pre.transform(cols)
    lw = np.log1p(cols["watch"])
    want = (lw - lw.mean()) / lw.std()
    np.testing.assert_allclose(out[NUMERIC][:, 1].numpy(), want, rtol=1e-5, atol=1e-5)
    bins = out[CATEGORICAL][:, 3].numpy()
    want_bins = np.array([1 + sum(a >= b for b in (18, 25, 35, 50)) for a in cols["age"]])
    np.testing.assert_array_equal(bins, want_bins)
    missing = pre.transform({**cols, "age": np.where(np.arange(40) == 0, np.nan, cols["age"])})
    assert int(missing[CATEGORICAL][0, 3]) == 0
    with pytest.raises(DataError, match=r"'watch' has transform log1p but holds -1.0 in row 2"):
        pre.transform({**cols, "watch": np.where(np.arange(40) == 1, -1.0, cols["watch"])})


def test_unseen_values_go_to_the_unknown_bucket_and_hashing_never_fails() -> None:
    pre = fitted()
    new = {k: v[:3].copy() for k, v in columns().items()}
    new["device"] = np.array(["tv", *new["device"][1:]])  # "tv": unseen in training
    new["user"] = np.array(["u-never-seen", "", "u1"])
    new["history"] = np.array(["i1|zzz", "", "zzz|?"])
    out = pre.transform(new)
    assert int(out[CATEGORICAL][0, 0]) == 0
    assert out[CATEGORICAL][:, 1].tolist() == [
        1 + fnv_reference("u-never-seen") % 64,
        0,
        1 + fnv_reference("u1") % 64,
    ]
    item_index = {v: i + 1 for i, v in enumerate(pre.vocabularies["item"])}
    hist = out["list:history"]
    assert hist[0, :2].tolist() == [item_index["i1"], 0]  # unseen element: the unknown bucket
    assert (hist[1] == -1).all()  # an empty list: padding only
    assert hist[2, 0].item() == 0 and (hist[2, 1:] == -1).all()  # "?" is a missing value, dropped
    per_column, rows = pre.unseen_counts(new)
    assert per_column["device"] == 1 and per_column["user"] == 0 and per_column["history"] == 2
    assert rows == 2


def test_shared_vocabulary_is_fitted_on_every_column_that_shares_it() -> None:
    cols = columns()
    cols["history"][0] = "only-in-history"
    pre = TabularPreprocessor(categorical=SPEC_CAT, numeric=SPEC_NUM).fit(cols)
    assert "only-in-history" in pre.vocabularies["item"]
    assert "history" not in pre.vocabularies and "user" not in pre.vocabularies


def test_state_round_trip_and_plain_state_unchanged() -> None:
    pre = fitted()
    again = TabularPreprocessor.from_state_dict(json.loads(json.dumps(pre.state_dict())))
    cols = columns(25, 3)
    a, b = pre.transform(cols), again.transform(cols)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.schema == pre.schema
    plain = TabularPreprocessor(categorical=["device"], numeric=["price"]).fit(cols)
    assert "features" not in plain.state_dict()  # old form: nothing new in the saved state


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"name": "history", "list": True, "share": "nope"}, "shares the table of 'nope'"),
        ({"name": "user", "hash_buckets": 0}, r"categorical\[1\] \('user'\).hash_buckets"),
        ({"name": "user", "pooling": "mean"}, "apply to list columns only"),
        ({"name": "user", "share": "item", "dim": 3}, "takes its dim from it"),
        ({"name": "user", "hash_buckets": 9, "min_frequency": 2}, "a hashed column has none"),
        ({"name": "user", "hashbuckets": 5}, "Allowed keys"),
    ],
)
def test_bad_specs_are_refused_naming_the_column(entry: dict, match: str) -> None:
    with pytest.raises(DataError, match=match):
        TabularPreprocessor(categorical=["item", entry], numeric=[])


def test_bad_numeric_specs_are_refused() -> None:
    with pytest.raises(DataError, match="strictly increasing"):
        TabularPreprocessor(numeric=[{"name": "age", "bucketize": [3, 1]}])
    with pytest.raises(DataError, match="dim applies to bucketized columns only"):
        TabularPreprocessor(numeric=[{"name": "age", "dim": 3}])


# ---------------------------------------------------------------------------------------------- front end
def test_per_column_widths_and_the_auto_rule() -> None:
    schema = fitted().schema
    assert schema.categorical == ("device", "user", "item", "age")
    assert schema.dims == (0, 4, 6, 0)
    assert schema.lists == (ListInput("history", schema.cardinalities[2], 5, "mean", 6, "item"),)
    front = embedding(schema, embedding_dim=8)
    # device 8 + user 4 + item 6 + age bins 8, history 6 (item's table), 2 numeric
    assert front.out_features == 8 + 4 + 6 + 8 + 6 + 2
    assert sorted(t.embedding_dim for t in front.tables()) == [4, 6, 8]
    out = front(fitted().transform(columns(9, 1)))
    assert out.shape == (9, front.out_features)
    auto = embedding(FeatureSchema(("a", "b"), (10, 1_000_001), ()), embedding_dim="auto")
    assert auto.out_features == auto_dim(10) + auto_dim(1_000_001) == 11 + 64
    assert auto_dim(10) == round(6 * 10**0.25)


def test_shared_tables_share_parameters() -> None:
    pre = fitted()
    front = embedding(pre.schema)
    x = pre.transform(columns(6, 2))
    item_table = next(t for t in front.tables() if t.embedding_dim == 6)
    assert (
        sum(t.num_embeddings for t in front.tables() if t.embedding_dim == 6) == pre.schema.cardinalities[2]
    )
    # a history holding only item k pools (mean) to item k's embedding
    k = int(x[CATEGORICAL][0, 2])
    x["list:history"] = torch.full_like(x["list:history"], -1)
    x["list:history"][:, 0] = x[CATEGORICAL][:, 2]
    out = front(x)
    item_cols = slice(8 + 4, 8 + 4 + 6)
    hist_cols = slice(8 + 4 + 6 + 8, 8 + 4 + 6 + 8 + 6)
    torch.testing.assert_close(out[:, hist_cols], out[:, item_cols])
    out[0, hist_cols].sum().backward()
    grad = item_table.weight.grad
    assert grad is not None and grad[k].abs().sum() > 0  # the history trains item's rows


def pool_reference(weight: torch.Tensor, codes: torch.Tensor, mode: str) -> torch.Tensor:
    rows = []
    for r in codes.tolist():
        vals = [weight[c] for c in r if c >= 0]
        if not vals:
            rows.append(torch.zeros(weight.shape[1], dtype=weight.dtype))
        elif mode == "sum":
            rows.append(torch.stack(vals).sum(0))
        elif mode == "mean":
            rows.append(torch.stack(vals).mean(0))
        else:
            rows.append(torch.stack(vals).amax(0))
    return torch.stack(rows)


@pytest.mark.parametrize("mode", ["mean", "sum", "max"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pooled_list_embeddings_equal_a_per_row_loop(mode: str, dtype: torch.dtype) -> None:
    schema = FeatureSchema((), (), ("x",), lists=(ListInput("h", 20, 7, mode, 5),))
    front = EmbeddingFrontEnd(schema, init_std=1.0).to(dtype)
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 20, (33, 7), generator=g)
    codes[torch.rand(33, 7, generator=g) < 0.4] = -1
    codes[3] = -1  # an empty row
    x = {"list:h": codes, NUMERIC: torch.zeros(33, 1, dtype=dtype)}
    want = pool_reference(front.table.weight.detach(), codes, mode)
    scale = want.abs().max()
    got = front(x)[:, :5].detach()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6 * float(scale))
    from mtlkit.models.backbones.embedding import _masked_pool  # the export path

    masked = _masked_pool(front.table.weight.detach(), codes, codes >= 0, mode)
    torch.testing.assert_close(masked, want, rtol=0, atol=1e-6 * float(scale))


def test_tables_start_with_std_1e_4_also_after_a_reset() -> None:
    front = embedding(FeatureSchema(("a", "b"), (5000, 3000), ()), embedding_dim=16)
    w = front.table.weight.detach()
    assert abs(float(w.std()) - 1e-4) < 5e-6 and abs(float(w.mean())) < 5e-6
    layers, _ = make_input_layers(None, front, copies=2)
    w2 = layers[1].table.weight.detach()
    assert not torch.equal(w, w2) and abs(float(w2.std()) - 1e-4) < 5e-6
    wide = embedding(FeatureSchema(("a",), (20000,), ()), init_std=0.01)
    assert abs(float(wide.table.weight.detach().std()) - 0.01) < 5e-4


# ---------------------------------------------------------------------------------------------- data sources
def write_data(tmp_path: Path, n: int = 300) -> dict[str, Path]:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    cols = columns(n, 7)
    rng = np.random.default_rng(1)
    cols["click"] = (rng.random(n) < 0.3).astype(int)
    csv = tmp_path / "train.csv"
    keys = list(cols)
    with csv.open("w") as fh:
        fh.write(",".join(keys) + "\n")
        for i in range(n):
            fh.write(",".join(str(cols[k][i]) for k in keys) + "\n")
    lists = [h.split("|") if h else [] for h in cols["history"]]
    table = pa.table(
        {**{k: cols[k] for k in keys if k != "history"}, "history": pa.array(lists, pa.list_(pa.string()))}
    )
    pq.write_table(table, tmp_path / "train.parquet", row_group_size=70)
    return {"csv": csv, "parquet": tmp_path / "train.parquet"}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_in_memory_and_streaming_encodings_are_equal(fmt: str, tmp_path: Path) -> None:
    path = str(write_data(tmp_path)[fmt])
    kw = {
        "tasks": {"click": {"column": "click", "kind": "binary"}},
        "categorical": SPEC_CAT,
        "numeric": SPEC_NUM,
        "unknown_fraction": 0.0,
    }
    mem = tabular(train=path, **kw)
    streamed = tabular(train=path, streaming=True, shuffle_buffer=64, num_workers=0, **kw)
    a, b = mem.preprocessor.state_dict(), streamed.preprocessor.state_dict()
    assert a["vocabularies"] == b["vocabularies"] and a["list_lengths"] == b["list_lengths"]
    for c in a["stats"]:
        np.testing.assert_allclose(a["stats"][c], b["stats"][c], rtol=1e-12)
    assert mem.input_spec == streamed.input_spec
    chunks = [x for x, _ in streamed.train.chunks(50)]
    got = {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
    want = mem.train.inputs
    assert got.keys() == want.keys() == {CATEGORICAL, NUMERIC, "list:history"}
    for k in got:
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-6)
    pre = TabularPreprocessor(categorical=SPEC_CAT, numeric=SPEC_NUM).fit(columns(300, 7))
    assert torch.equal(pre.transform(columns(300, 7))["list:history"], want["list:history"])


# ---------------------------------------------------------------------------------------------- export
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_model_with_hashed_and_list_inputs_exports_and_checks(fmt: str, tmp_path: Path) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    from mtlkit.errors import IncompatibleComponentsError
    from mtlkit.export import export_model, verify_export
    from mtlkit.predict import Predictor
    from mtlkit.registries import MODELS

    pre = fitted()
    schema = pre.schema
    tasks = (Task(name="click", kind="binary"), Task(name="watch", kind="regression"))
    torch.manual_seed(0)
    model = MODELS.build(
        "mmoe",
        input_dim=None,
        tasks=tasks,
        num_experts=2,
        input_layer=lambda: embedding(schema, init_std=0.1),
    )
    predictor = Predictor(model=model, tasks=tasks, input_spec=schema, preprocessor=pre)
    folder = export_model(predictor, tmp_path / fmt, format=fmt)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [i["name"] for i in manifest["inputs"]] == [CATEGORICAL, "list:history", NUMERIC]
    check = verify_export(folder, predictor, n=9)
    assert check.passed, check.summary()
    if fmt == "onnx":
        with pytest.raises(IncompatibleComponentsError, match="embed_preprocessing supports plain"):
            export_model(predictor, tmp_path / "raw", embed_preprocessing=True)


def test_list_cells_as_python_lists_equal_delimited_strings() -> None:
    pre = fitted()
    cols = columns(12, 4)
    as_lists = {**cols, "history": [h.split("|") if h else [] for h in cols["history"]]}
    a, b = pre.transform(cols), pre.transform(as_lists)
    assert torch.equal(a["list:history"], b["list:history"])


def test_predict_files_reads_parquet_list_columns(tmp_path: Path) -> None:
    from mtlkit.predict import Predictor
    from mtlkit.registries import MODELS

    pq = pytest.importorskip("pyarrow.parquet")
    path = write_data(tmp_path, n=120)["parquet"]
    pre = fitted()
    tasks = (Task(name="click", kind="binary"),)
    schema = pre.schema
    model = MODELS.build(
        "mmoe", input_dim=None, tasks=tasks, num_experts=2, input_layer=lambda: embedding(schema)
    )
    predictor = Predictor(model=model, tasks=tasks, input_spec=schema, preprocessor=pre)
    out = predictor.predict_files(path, tmp_path / "p.parquet", batch_size=50)
    got = pq.read_table(out).column("click").to_numpy()
    table = pq.read_table(path)
    raw = {
        c: table.column(c).to_numpy(zero_copy_only=False)
        for c in pre.categorical + pre.numeric
        if c != "history"
    }
    raw["history"] = table.column("history").to_pylist()
    want = predictor.predict(raw)["click"].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_per_column_min_frequency_and_max_categories() -> None:
    cols = {"a": np.array(["x", "x", "x", "y", "y", "z"]), "b": np.array(["p", "p", "q", "r", "s", "t"])}
    pre = TabularPreprocessor(
        categorical=[{"name": "a", "min_frequency": 2}, {"name": "b", "max_categories": 2}], min_frequency=1
    ).fit(cols)
    assert pre.vocabularies == {"a": ["x", "y"], "b": ["p", "q"]}  # b: the most frequent, ties by value
    back = TabularPreprocessor.from_state_dict(pre.state_dict())
    assert back.features == pre.features
