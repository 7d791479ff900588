"""User tabular data (CSV / Parquet) with a config naming the columns and tasks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlkit.config import load_config
from mtlkit.config.build import build_data
from mtlkit.data import TabularPreprocessor
from mtlkit.data.tabular import read_table, tabular
from mtlkit.errors import ConfigError, DataError

CSV = """city,age,clicked,segment,spend,note
paris,31,1,gold,10.5,a
rome,45,0,silver,,b
paris,,1,gold,3.0,c
oslo,22,,bronze,7.25,d
rome,50,0,,,e
paris,38,1,silver,1.0,f
,29,0,gold,2.5,g
oslo,41,1,bronze,0.0,h
"""
TASKS = {
    "click": {"column": "clicked", "kind": "binary"},
    "segment": {"column": "segment", "kind": "multiclass"},
    "spend": {"column": "spend", "kind": "regression"},
}


def _write(tmp_path: Path, text: str = CSV, name: str = "train.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_features_labels_and_missing_values(tmp_path: Path) -> None:
    s = tabular(train=str(_write(tmp_path)), tasks=TASKS, categorical=["city"], numeric=["age"])
    d = s.train
    assert len(d) == 8 and s.val is None and s.test is None
    assert [t.kind.value for t in s.tasks] == ["binary", "multiclass", "regression"]
    torch.testing.assert_close(
        d.targets["click"], torch.tensor([1, 0, 1, float("nan"), 0, 1, 0, 1]), equal_nan=True
    )
    # string classes sorted: bronze=0, gold=1, silver=2; a blank label is -1 (missing)
    assert s.info["tasks"]["segment"]["classes"] == ["bronze", "gold", "silver"]
    assert d.targets["segment"].tolist() == [1, 2, 1, 0, -1, 2, 1, 0]
    assert s.tasks[1].num_classes == 3
    torch.testing.assert_close(
        d.targets["spend"],
        torch.tensor([10.5, float("nan"), 3.0, 7.25, float("nan"), 1.0, 2.5, 0.0]),
        equal_nan=True,
    )
    # preprocessing as TabularPreprocessor fitted on the training rows
    ref = TabularPreprocessor(categorical=["city"], numeric=["age"]).fit(
        {"city": np.array(["paris", "rome", "paris", "oslo", "rome", "paris", "", "oslo"]),
         "age": np.array(["31", "45", "", "22", "50", "38", "29", "41"])}
    )  # fmt: skip
    assert s.preprocessor.state_dict() == ref.state_dict()
    assert s.input_spec == ref.schema


def test_unlabelled_rows_are_left_out_and_splits_are_carved(tmp_path: Path) -> None:
    text = CSV + "rome,33,,,,z\n"  # no label for any task
    s = tabular(
        train=str(_write(tmp_path, text)),
        tasks=TASKS,
        categorical=["city"],
        numeric=["age"],
        val_fraction=0.25,
        test_fraction=0.25,
    )
    total = len(s.train) + len(s.val) + len(s.test)
    assert total == 8 and sum(s.info["dropped_unlabelled"].values()) == 1
    assert len(s.val) + (s.info["dropped_unlabelled"]["val"]) == 2  # round(0.25 * 9) rows held out
    again = tabular(
        train=str(_write(tmp_path, text)), tasks=TASKS, numeric=["age"], val_fraction=0.25, test_fraction=0.25
    )
    assert torch.equal(again.val.targets["segment"], s.val.targets["segment"])  # deterministic


def test_label_encodings_and_errors(tmp_path: Path) -> None:
    train = _write(tmp_path)
    with pytest.raises(
        DataError, match=r"task 'c' \(column 'segment'\) has labels \['bronze', 'gold', 'silver'\] outside"
    ):
        tabular(train=str(train), tasks={"c": {"column": "segment", "kind": "binary"}}, numeric=["age"])
    yn = _write(tmp_path, "x,ans\n1,yes\n2,no\n3, yes\n4,\n5,no\n", "yn.csv")
    s = tabular(
        train=str(yn),
        tasks={"a": {"column": "ans", "kind": "binary", "classes": ["no", "yes"]}},
        numeric=["x"],
    )
    assert s.train.targets["a"].tolist() == [1.0, 0.0, 1.0, 0.0] and s.info["tasks"]["a"]["classes"] == [
        "no",
        "yes",
    ]
    with pytest.raises(
        DataError, match=r"test\.csv \(test data\): task 'a' .* has labels \['maybe'\] outside its classes \['no', 'yes'\] "
        r"\(first in data row 1\)"
    ):
        tabular(
            train=str(yn),
            tasks={"a": {"column": "ans", "kind": "binary", "classes": ["no", "yes"]}},
            numeric=["x"],
            test=str(_write(tmp_path, "x,ans\n1,maybe\n", "test.csv")),
        )
    with pytest.raises(DataError, match=r"labels \['bronze'\] outside"):
        tabular(
            train=str(train), tasks={"c": {"column": "segment", "kind": "multiclass", "classes": ["gold", "silver"]}},
            numeric=["age"],
        )  # fmt: skip
    ints = _write(tmp_path, "x,y\n1,0\n2,2\n3,1.0\n4,\n", "ints.csv")
    s = tabular(
        train=str(ints), tasks={"y": {"column": "y", "kind": "multiclass", "num_classes": 4}}, numeric=["x"]
    )
    assert s.train.targets["y"].tolist() == [0, 2, 1] and s.tasks[0].num_classes == 4  # row 4: no label
    with pytest.raises(DataError, match="also listed as features"):
        tabular(train=str(train), tasks=TASKS, numeric=["age", "spend"])
    with pytest.raises(
        DataError, match=r"tasks.t.kind: Input should be 'binary', 'multiclass' or 'regression'"
    ):
        tabular(train=str(train), tasks={"t": {"column": "spend", "kind": "ordinal"}}, numeric=["age"])
    with pytest.raises(DataError, match=r"has no column\(s\) 'agee'\. For 'agee', did you mean 'age'\? Its columns are: 'city', 'age'"):
        tabular(train=str(train), tasks=TASKS, numeric=["agee"])
    with pytest.raises(DataError, match="no such data file"):
        tabular(train=str(tmp_path / "nope.csv"), tasks=TASKS, numeric=["age"])
    with pytest.raises(DataError, match="regression but its column 'note' holds the non-numeric label 'a' in data row 1"):
        tabular(train=str(train), tasks={"n": {"column": "note", "kind": "regression"}}, numeric=["age"])


def test_parquet_gives_the_same_data_as_csv(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "city": ["paris", "rome", "paris", "oslo", "rome", "paris", None, "oslo"],
            "age": [31, 45, None, 22, 50, 38, 29, 41],
            "clicked": [1, 0, 1, None, 0, 1, 0, 1],
            "segment": ["gold", "silver", "gold", "bronze", None, "silver", "gold", "bronze"],
            "spend": [10.5, None, 3.0, 7.25, None, 1.0, 2.5, 0.0],
        }
    )
    pq.write_table(table, tmp_path / "train.parquet")
    a = tabular(train=str(tmp_path / "train.parquet"), tasks=TASKS, categorical=["city"], numeric=["age"])
    b = tabular(train=str(_write(tmp_path)), tasks=TASKS, categorical=["city"], numeric=["age"])
    assert a.preprocessor.state_dict() == b.preprocessor.state_dict()
    for k in ("categorical", "numeric"):
        assert torch.equal(a.train.inputs[k], b.train.inputs[k])
    for t in TASKS:
        torch.testing.assert_close(a.train.targets[t], b.train.targets[t], equal_nan=True)
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"bad.parquet could not be read as Parquet"):
        read_table(tmp_path / "bad.parquet", ["age"])


def test_parquet_without_pyarrow_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "t.parquet").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match=r"needs pyarrow: pip install 'mtlkit\[parquet\]'"):
        read_table(tmp_path / "t.parquet", ["a"])


def test_saved_preprocessor_is_reused(tmp_path: Path) -> None:
    first = tabular(train=str(_write(tmp_path)), tasks=TASKS, categorical=["city"], numeric=["age"])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "preprocessor.json").write_text(json.dumps(first.preprocessor.state_dict()))
    shifted = CSV.replace("paris,31", "berlin,99").replace("rome,45", "berlin,98")
    refit = tabular(
        train=str(_write(tmp_path, shifted, "t2.csv")), tasks=TASKS, categorical=["city"], numeric=["age"]
    )
    reused = tabular(
        train=str(_write(tmp_path, shifted, "t2.csv")),
        tasks=TASKS,
        categorical=["city"],
        numeric=["age"],
        preprocessor=str(tmp_path / "run"),
    )
    assert (
        reused.preprocessor.state_dict() == first.preprocessor.state_dict() != refit.preprocessor.state_dict()
    )
    with pytest.raises(DataError, match="was fitted on columns"):
        tabular(train=str(_write(tmp_path)), tasks=TASKS, numeric=["age"], preprocessor=str(tmp_path / "run"))


def test_config_validates_the_task_columns(tmp_path: Path) -> None:
    cfg = tmp_path / "exp.yaml"
    train = _write(tmp_path)
    cfg.write_text(
        f"data:\n  name: csv\n  train: {train}\n  numeric: [age]\n  categorical: [city]\n"
        "  tasks:\n    click: {column: clicked, kind: binary, colour: red}\nmodel: {name: shared_bottom}\n"
    )
    with pytest.raises(ConfigError, match=r"data.tasks.click.colour: unknown parameter"):
        load_config(cfg)
    cfg.write_text(cfg.read_text().replace(", colour: red", ""))
    exp = load_config(cfg)
    splits = build_data(exp.config.data)
    assert [t.name for t in splits.tasks] == ["click"] and len(splits.train) == 7
