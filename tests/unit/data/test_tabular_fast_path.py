"""The pyarrow fast path of the tabular dataset gives exactly what the csv-module path gives (issue 13 §1)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mtlkit.data.tabular  # noqa: F401  (the module, not the function of the same name)
from mtlkit.data.tabular import tabular

pytest.importorskip("pyarrow")
tabular_module = sys.modules["mtlkit.data.tabular"]

HEAD = "city,age,code,clicked,segment,spend,note\n"
TASKS = {
    "click": {"column": "clicked", "kind": "binary"},
    "segment": {"column": "segment", "kind": "multiclass"},
    "spend": {"column": "spend", "kind": "regression"},
}


def _rows(rng: np.random.Generator, n: int, *, messy: bool) -> str:
    cities = ["paris", "rome", "oslo", "", "?", "lima", "NA"] + (
        [" rome", "rome ", '"a, b"', "é"] if messy else []
    )
    lines = []
    for _ in range(n):
        age = "" if rng.random() < 0.1 else f"{rng.normal(40, 12):.3f}"
        if messy and rng.random() < 0.05:
            age = rng.choice(["NA", "nan", "Null", "?", "1e3", "7"])
        click = str(rng.choice(["0", "1", "", "1.0", "0.0"] if messy else ["0", "1", ""]))
        seg = str(rng.choice(["gold", "silver", "bronze", ""]))
        spend = "" if rng.random() < 0.3 else f"{rng.lognormal(1, 1):.4g}"
        code = str(int(rng.integers(0, 30)))
        lines.append(",".join([str(rng.choice(cities)), age, code, click, seg, spend, "x"]))
    return "".join(line + "\n" for line in lines)


def _load(path: Path, **kw):
    return tabular(train=str(path), tasks=TASKS, categorical=["city", "code"], numeric=["age"], **kw)


def _same(a, b) -> None:
    assert a.preprocessor.state_dict() == b.preprocessor.state_dict()
    assert {**a.info, "files": None} == {**b.info, "files": None} and a.tasks == b.tasks
    for split in ("train", "val", "test"):
        da, db = getattr(a, split), getattr(b, split)
        assert (da is None) == (db is None)
        if da is None:
            continue
        for k in da.inputs:
            assert torch.equal(da.inputs[k], db.inputs[k]), (split, k)
        for k in da.targets:
            torch.testing.assert_close(da.targets[k], db.targets[k], equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("messy", [False, True])
def test_the_fast_path_equals_the_csv_module_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, messy: bool
) -> None:
    rng = np.random.default_rng(int(messy))
    train = tmp_path / "train.csv"
    train.write_text(HEAD + _rows(rng, 600, messy=messy))
    test = tmp_path / "test.csv"
    test.write_text(HEAD + _rows(rng, 100, messy=messy).replace("gold", "silver"))
    taken = []
    real = tabular_module._fast_csv
    monkeypatch.setattr(tabular_module, "_fast_csv", lambda *a, **k: taken.append(real(*a, **k)) or taken[-1])
    fast = _load(train, test=str(test), val_fraction=0.2, min_frequency=2)
    assert len(taken) == 2 and all(t is not None for t in taken)  # both files took the fast path
    monkeypatch.setattr(tabular_module, "_fast_csv", lambda *a, **k: None)
    slow = _load(train, test=str(test), val_fraction=0.2, min_frequency=2)
    _same(fast, slow)
    assert len(fast.train) > 300 and fast.preprocessor.stats["age"][1] > 1.0


def test_irregular_files_fall_back_and_give_the_same_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(5)
    body = _rows(rng, 200, messy=False).splitlines()
    body[3] = ",,,,,,"  # an all-blank row: the csv module skips it
    body[7] = 'paris," 41.5 ",3,1,gold,2.5,"multi\nline"'  # a blank-padded number, a quoted newline
    path = tmp_path / "odd.csv"
    path.write_text(HEAD + "\n".join(body) + "\n")
    fast = _load(path)
    monkeypatch.setattr(tabular_module, "_fast_csv", lambda *a, **k: None)
    _same(fast, _load(path))
    assert len(fast.train) + fast.info["dropped_unlabelled"]["train"] == 199  # the blank row is not a row


def test_string_labels_and_parquet_take_the_fast_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "yn.csv"
    path.write_text(
        "x,ans,k\n" + "".join(f"{i},{'yes' if i % 3 else 'no'},{'ab'[i % 2]}\n" for i in range(50))
    )
    tasks = {"a": {"column": "ans", "kind": "binary", "classes": ["no", "yes"]}}
    fast = tabular(train=str(path), tasks=tasks, numeric=["x"], categorical=["k"])
    assert tabular_module._fast_csv(path, ["x", "k", "ans"], ["x"], ["ans"], ",") is not None
    pq.write_table(pa.table({"x": list(range(50)), "ans": ["yes" if i % 3 else "no" for i in range(50)],
                             "k": ["ab"[i % 2] for i in range(50)]}), tmp_path / "yn.parquet")  # fmt: skip
    par = tabular(train=str(tmp_path / "yn.parquet"), tasks=tasks, numeric=["x"], categorical=["k"])
    monkeypatch.setattr(tabular_module, "_fast_csv", lambda *a, **k: None)
    slow = tabular(train=str(path), tasks=tasks, numeric=["x"], categorical=["k"])
    _same(fast, slow)
    _same(par, slow)
    assert fast.train.targets["a"].tolist()[:4] == [0.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("suffix", [".csv.gz", ".csv.bz2", ".csv.xz"])
def test_compressed_csv_takes_the_fast_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    import bz2
    import gzip
    import lzma

    text = HEAD + _rows(np.random.default_rng(7), 300, messy=True)
    opener = {".csv.gz": gzip.open, ".csv.bz2": bz2.open, ".csv.xz": lzma.open}[suffix]
    path = tmp_path / f"train{suffix}"
    with opener(path, "wt") as fh:
        fh.write(text)
    assert tabular_module._fast_csv(path, ["city", "code", "age", "clicked", "segment", "spend"], ["age"],
                                    ["clicked", "segment", "spend"], ",") is not None  # fmt: skip
    fast = _load(path)
    monkeypatch.setattr(tabular_module, "_fast_csv", lambda *a, **k: None)
    _same(fast, _load(path))
