"""Bad data files and arrays are refused with a message naming the file, column, row and fix (issue 11 §3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import mtlkit
from mtlkit.data import MultiTaskDataset, TabularPreprocessor
from mtlkit.data.preprocessing import standardisation
from mtlkit.data.sources import read_csv
from mtlkit.data.tabular import read_table, tabular
from mtlkit.errors import DataError
from mtlkit.models import shared_bottom
from mtlkit.tasks import Task

BINARY = {"click": {"column": "clicked", "kind": "binary"}}


def _csv(tmp_path: Path, text: str, name: str = "train.csv", encoding: str = "utf-8") -> str:
    p = tmp_path / name
    p.write_text(text, encoding=encoding)
    return str(p)


def _rows(n: int, *, start: int = 0) -> str:
    return "".join(f"{'abc'[i % 3]},{i % 7 + 0.5},{i % 2},{i * 0.25}\n" for i in range(start, start + n))


HEAD = "city,age,clicked,spend\n"


# ---------------------------------------------------------------------------------------------- 1. labels
def test_a_task_with_only_missing_labels_is_refused_naming_task_column_and_file(tmp_path: Path) -> None:
    train = _csv(tmp_path, "x,y,z\n1,0,\n2,1,\n3,0,NaN\n4,1,\n")
    tasks = {"y": {"column": "y", "kind": "binary"}, "z": {"column": "z", "kind": "regression"}}
    with pytest.raises(DataError) as err:
        tabular(train=train, tasks=tasks, numeric=["x"])
    msg = str(err.value)
    assert "Task 'z' has no label in" in msg and "train.csv" in msg and "column 'z'" in msg
    assert "Fill in labels" in msg


def test_a_validation_file_without_labels_for_a_task_is_refused_instead_of_nan_metrics(
    tmp_path: Path,
) -> None:
    train = _csv(tmp_path, HEAD + _rows(20))
    val = _csv(tmp_path, HEAD + "a,1.5,,2.0\nb,2.5,,3.0\n", "val.csv")
    tasks = {**BINARY, "spend": {"column": "spend", "kind": "regression"}}
    with pytest.raises(
        DataError, match=r"Task 'click' has no label in .*val\.csv \(validation data, 2 rows\)"
    ):
        tabular(train=train, val=val, tasks=tasks, numeric=["age"], categorical=["city"])
    # a held-out fraction without labels for a task: the fix names the fraction
    sparse = HEAD + _rows(20).replace(",0,", ",,").replace(",1,", ",,")
    sparse = sparse.replace("a,0.5,,0.0", "a,0.5,1,0.0").replace("b,1.5,,0.25", "b,1.5,0,0.25")
    with pytest.raises(
        DataError, match=r"Task 'click' has no label in the \d+ (validation|test) rows held out"
    ):
        tabular(
            train=_csv(tmp_path, sparse, "sparse.csv"),
            tasks=tasks,
            numeric=["age"],
            val_fraction=0.2,
            test_fraction=0.2,
            split_seed=3,
        )


def test_non_finite_regression_labels_name_the_row(tmp_path: Path) -> None:
    train = _csv(tmp_path, "x,y\n1,0.5\n2,inf\n3,1.0\n")
    with pytest.raises(DataError, match=r"task 'y' \(column 'y'\) has the label inf in data row 2"):
        tabular(train=train, tasks={"y": {"column": "y", "kind": "regression"}}, numeric=["x"])


# ---------------------------------------------------------------------------------------------- 2. inf
@pytest.mark.parametrize("bad", ["inf", "-inf", "1e400", "-Infinity"])
def test_infinite_numeric_features_are_refused_with_column_and_row(tmp_path: Path, bad: str) -> None:
    rows = _rows(6).splitlines()
    rows[3] = f"c,{bad},1,2.0"
    train = _csv(tmp_path, HEAD + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"train\.csv: numeric column 'age' holds -?inf in data row 4"):
        tabular(train=train, tasks=BINARY, numeric=["age"], categorical=["city"])


def test_preprocessor_refuses_inf_and_keeps_huge_values_finite() -> None:
    pre = TabularPreprocessor(numeric=["v"])
    with pytest.raises(DataError, match=r"numeric column 'v' holds inf in row 3"):
        pre.fit({"v": np.array([1.0, 2.0, np.inf, 4.0])})
    with pytest.raises(DataError, match=r"numeric column 'v' holds -inf in row 1"):
        pre.fit({"v": ["-inf", "2", "3"]})
    # values near the float64 limit: the plain mean and std overflow, the fitted ones stay finite
    huge = np.array([1.5e308, 1.7e308, -1.0e308, 0.5e308])
    with np.errstate(over="ignore"):
        assert not np.isfinite(huge.mean()) or not np.isfinite(huge.std())
    pre.fit({"v": huge})
    mean, std = pre.stats["v"]
    exact_mean = sum(float(v) / 4 for v in huge)  # no overflow: each term is < 1e308
    assert np.isfinite(mean) and np.isfinite(std) and std > 0
    assert abs(mean - exact_mean) <= 1e-12 * 1.7e308
    z = pre.transform({"v": huge})["numeric"][:, 0]
    assert torch.isfinite(z).all()
    ref = (huge / 1e308 - mean / 1e308) / (std / 1e308)  # the same standard scores, computed at scale 1
    np.testing.assert_allclose(z.numpy(), ref, rtol=1e-5, atol=1e-6)
    # standard scores outside float32 are refused (never written as inf or 0)
    pre.fit({"v": np.array([0.0, 1e-30, 2e-30])})
    with pytest.raises(DataError, match=r"row 2 holds 1e\+300.*beyond the float32 range"):
        pre.transform({"v": np.array([0.0, 1e300])})


def test_standardisation_matches_the_two_pass_formula_at_ordinary_scale() -> None:
    x = np.random.default_rng(0).normal(3.0, 2.0, 1000)
    mean, std = standardisation(x)
    np.testing.assert_allclose([mean, std], [x.mean(), x.std()], rtol=1e-12)
    assert standardisation(np.array([5.0, 5.0])) == (5.0, 1.0)
    assert standardisation(np.array([0.0, 0.0])) == (0.0, 1.0)


# ---------------------------------------------------------------------------------------------- 3. sizes
def test_a_one_row_training_file_is_refused_with_sizes_and_fixes(tmp_path: Path) -> None:
    train = _csv(tmp_path, HEAD + _rows(1))
    with pytest.raises(DataError) as err:
        tabular(train=train, tasks=BINARY, numeric=["age"], val_fraction=0.1, test_fraction=0.1)
    msg = str(err.value)
    assert "train.csv has 1 data row, too few to split" in msg
    assert "val_fraction=0.1 holds out round(0.1 x 1) = 0 rows" in msg
    assert "test_fraction=0.1 holds out" in msg
    assert "with these fractions: at least 6 rows in the file" in msg
    assert "val: FILE, test: FILE" in msg and "change val_fraction / test_fraction" in msg
    with pytest.raises(DataError, match=r"1 data row, too few to split: 1 row would be left to train"):
        tabular(train=train, tasks=BINARY, numeric=["age"])
    # the minimum the message names is exact: 5 rows hold out round(0.5) = 0, 6 rows give 4 / 1 / 1
    fractions = {"val_fraction": 0.1, "test_fraction": 0.1}
    with pytest.raises(DataError, match=r"5 data rows, too few to split: val_fraction=0.1 holds out"):
        tabular(train=_csv(tmp_path, HEAD + _rows(5), "five.csv"), tasks=BINARY, numeric=["age"], **fractions)
    ok = tabular(train=_csv(tmp_path, HEAD + _rows(6), "six.csv"), tasks=BINARY, numeric=["age"], **fractions)
    assert (len(ok.train), len(ok.val), len(ok.test)) == (4, 1, 1)


def test_too_few_labelled_training_rows_are_refused(tmp_path: Path) -> None:
    train = _csv(tmp_path, "x,y\n1,1\n2,\n3,\n")
    with pytest.raises(DataError, match=r"only 1 training row\(s\) have a label for any task; .* at least 2"):
        tabular(train=train, tasks={"y": {"column": "y", "kind": "binary"}}, numeric=["x"])


# ---------------------------------------------------------------------------------------------- 4-6. files
def test_duplicate_column_names_are_refused(tmp_path: Path) -> None:
    train = _csv(tmp_path, "x,y,x\n1,0,5\n2,1,6\n3,0,7\n")
    with pytest.raises(
        DataError, match=r"train\.csv has several columns named 'x'; column names must be unique"
    ):
        tabular(train=train, tasks={"y": {"column": "y", "kind": "binary"}}, numeric=["x"])
    with pytest.raises(DataError, match=r"feature column\(s\) \['x'\] are listed more than once"):
        tabular(
            train=_csv(tmp_path, "x,y\n1,0\n2,1\n", "ok.csv"),
            tasks={"y": {"column": "y", "kind": "binary"}},
            numeric=["x"],
            categorical=["x"],
        )


def test_duplicate_parquet_columns_are_refused(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.Table.from_arrays(
        [pa.array([1.0, 2.0]), pa.array([0, 1]), pa.array([3.0, 4.0])], names=["x", "y", "x"]
    )
    pq.write_table(table, tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"d\.parquet has several columns named 'x'"):
        read_table(tmp_path / "d.parquet", ["x", "y"])


def test_header_only_and_empty_files_say_no_data_rows(tmp_path: Path) -> None:
    head = _csv(tmp_path, "x,y\n", "head.csv")
    tasks = {"y": {"column": "y", "kind": "multiclass"}}
    with pytest.raises(DataError, match=r"head\.csv has a header but no data rows"):
        tabular(train=head, tasks=tasks, numeric=["x"])
    train = _csv(tmp_path, "x,y\n1,0\n2,1\n3,2\n")
    with pytest.raises(DataError, match=r"head\.csv has a header but no data rows"):
        tabular(train=train, test=head, tasks=tasks, numeric=["x"])
    with pytest.raises(DataError, match=r"empty\.csv is empty; expected a CSV header row"):
        tabular(train=_csv(tmp_path, "", "empty.csv"), tasks=tasks, numeric=["x"])


def test_parquet_without_rows_says_no_data_rows(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(
        pa.table({"x": pa.array([], pa.float64()), "y": pa.array([], pa.int64())}), tmp_path / "e.parquet"
    )
    with pytest.raises(DataError, match=r"e\.parquet has a header but no data rows"):
        read_table(tmp_path / "e.parquet", ["x", "y"])


def test_a_utf8_bom_is_stripped(tmp_path: Path) -> None:
    train = _csv(tmp_path, "x,y\n1,0\n2,1\n3,0\n", encoding="utf-8-sig")
    assert (tmp_path / "train.csv").read_bytes().startswith(b"\xef\xbb\xbfx,")
    s = tabular(train=train, tasks={"y": {"column": "y", "kind": "binary"}}, numeric=["x"])
    assert s.preprocessor.stats["x"][0] == pytest.approx(2.0)
    assert list(read_csv(Path(train))) == ["x", "y"]


def test_a_missing_column_lists_the_columns_with_repr_and_the_close_match(tmp_path: Path) -> None:
    train = _csv(tmp_path, "\u200bcity,age,clicked\na,1,0\nb,2,1\n")  # a zero-width space before "city"
    with pytest.raises(DataError) as err:
        tabular(train=train, tasks=BINARY, numeric=["age"], categorical=["city"])
    msg = str(err.value)
    assert "has no column(s) 'city'." in msg
    assert "For 'city', did you mean '\\u200bcity'?" in msg  # the invisible character is shown
    assert "Its columns are: '\\u200bcity', 'age', 'clicked'" in msg


def test_a_wrong_delimiter_is_named(tmp_path: Path) -> None:
    train = _csv(tmp_path, "city;age;clicked\na;1;0\nb;2;1\n")
    with pytest.raises(DataError, match=r"the header looks ';'-separated: set delimiter: ';'"):
        tabular(train=train, tasks=BINARY, numeric=["age"], categorical=["city"])
    s = tabular(train=train, tasks=BINARY, numeric=["age"], categorical=["city"], delimiter=";")
    assert len(s.train) == 2
    ragged = _csv(tmp_path, "x,y\n1,0\n\n2,1,7\n", "ragged.csv")
    with pytest.raises(DataError, match=r"ragged\.csv, line 4: 3 fields, expected 2"):  # blank line counted
        read_csv(Path(ragged))


def test_non_numeric_feature_values_name_the_row(tmp_path: Path) -> None:
    train = _csv(tmp_path, "x,y\n1,0\n2,1\nabc,0\n")
    with pytest.raises(
        DataError, match=r"numeric column 'x' holds the non-numeric value 'abc' in data row 3"
    ):
        tabular(train=train, tasks={"y": {"column": "y", "kind": "binary"}}, numeric=["x"])


# ---------------------------------------------------------------------------------------------- 7. files blamed
def test_an_unseen_class_names_the_file_and_row_it_came_from(tmp_path: Path) -> None:
    train = _csv(tmp_path, "x,s\n1,a\n2,b\n3,a\n")
    test = _csv(tmp_path, "x,s\n1,a\n2,c\n", "test.csv")
    tasks = {"s": {"column": "s", "kind": "multiclass"}}
    with pytest.raises(DataError) as err:
        tabular(train=train, test=test, tasks=tasks, numeric=["x"])
    msg = str(err.value)
    assert msg.startswith(f"{test} (test data): task 's' (column 's') has labels ['c']")
    assert f"outside the classes found in the training file {train}" in msg
    assert "(first in data row 2)" in msg
    # a value in rows held out of the training file names that file and its row there
    held = _csv(tmp_path, "x,s\n" + "".join(f"{i},{'ab'[i % 2]}\n" for i in range(9)) + "9,z\n", "held.csv")
    seed = next(s for s in range(50) if 9 in np.random.default_rng(s).permutation(10)[:3])  # row 10 held out
    with pytest.raises(DataError, match=r"held\.csv \(validation data\): .* \(first in data row 10\)"):
        tabular(train=held, tasks=tasks, numeric=["x"], val_fraction=0.3, split_seed=seed)


# ---------------------------------------------------------------------------------------------- 9. dtypes
def test_float64_arrays_and_tensors_train_through_the_python_api() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 5))  # float64
    tasks = (Task(name="r", kind="regression"), Task(name="c", kind="multiclass", num_classes=3))
    targets = {"r": x[:, 0] * 2.0, "c": rng.integers(0, 3, 48)}  # float64 and int64 numpy arrays
    for data in (
        MultiTaskDataset(x, targets, tasks=tasks),
        MultiTaskDataset(
            torch.from_numpy(x), {k: torch.from_numpy(v) for k, v in targets.items()}, tasks=tasks
        ),
    ):
        assert data.inputs.dtype == torch.float32 and data.targets["r"].dtype == torch.float32
        assert data.targets["c"].dtype == torch.int64  # class indices stay integers
        np.testing.assert_allclose(data.inputs.numpy(), x, rtol=1e-6)
        trainer = mtlkit.Trainer(shared_bottom(5, tasks), tasks)
        trainer.fit(data, epochs=1, batch_size=16)
        assert np.isfinite(trainer.evaluate(data)["r"]["mse"])
    named = MultiTaskDataset(
        {"categorical": np.array([[1], [2]]), "numeric": np.array([[0.5], [1.5]])},
        {"r": np.array([1.0, 2.0])},
    )
    assert named.inputs["categorical"].dtype == torch.int64 and named.inputs["numeric"].dtype == torch.float32
    assert named.subset([0]).inputs["numeric"].dtype == torch.float32
    wide = MultiTaskDataset(x, {"r": targets["r"]}, dtype=torch.float64)  # a float64 model's data
    assert wide.inputs.dtype == torch.float64 and wide.subset([0, 1]).inputs.dtype == torch.float64
    with pytest.raises(DataError, match="must hold numbers; got a numpy array of dtype <U1"):
        MultiTaskDataset(np.array([["a"], ["b"]]), {"r": np.array([1.0, 2.0])})
    with pytest.raises(DataError, match="dtype must be a floating torch dtype"):
        MultiTaskDataset(x, {"r": targets["r"]}, dtype=torch.int64)


def test_the_fast_coded_path_refuses_inf_like_the_preprocessor() -> None:
    from mtlkit.data._columns import fit_coded, parse_delimited, transform_coded

    cols = parse_delimited(b"a,1\nb,2\nc,inf\n", ["k", "v"], source="f.data")
    pre = TabularPreprocessor(categorical=["k"], numeric=["v"])
    with pytest.raises(DataError, match=r"f\.data: numeric column 'v' holds inf in row 3"):
        fit_coded(pre, cols, source="f.data")
    good = parse_delimited(b"a,1e308\nb,1.7e308\nc,-1e308\n", ["k", "v"], source="g.data")
    fit_coded(pre, good, source="g.data")
    ref = TabularPreprocessor(categorical=["k"], numeric=["v"]).fit(
        {"k": ["a", "b", "c"], "v": ["1e308", "1.7e308", "-1e308"]}
    )
    assert pre.stats == ref.stats and all(np.isfinite(pre.stats["v"]))
    assert torch.equal(
        transform_coded(pre, good)["numeric"],
        ref.transform({"k": ["a", "b", "c"], "v": ["1e308", "1.7e308", "-1e308"]})["numeric"],
    )
    with pytest.raises(DataError, match=r"h\.data: numeric column 'v' holds -inf in row 2"):
        transform_coded(pre, parse_delimited(b"a,1\nb,-inf\n", ["k", "v"], source="h.data"), source="h.data")


def test_parquet_files_follow_the_same_rules(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    x = [1.0, 2.0, float("inf"), 4.0]
    pq.write_table(pa.table({"x": x, "y": [0, 1, 0, 1]}), tmp_path / "inf.parquet")
    tasks = {"y": {"column": "y", "kind": "binary"}}
    with pytest.raises(DataError, match=r"inf\.parquet: numeric column 'x' holds inf in data row 3"):
        tabular(train=str(tmp_path / "inf.parquet"), tasks=tasks, numeric=["x"])
    pq.write_table(
        pa.table({"x": [1.0, 2.0, 3.0], "y": pa.array([None, None, None], pa.int64())}),
        tmp_path / "nolab.parquet",
    )
    with pytest.raises(DataError, match=r"Task 'y' has no label in .*nolab\.parquet"):
        tabular(train=str(tmp_path / "nolab.parquet"), tasks=tasks, numeric=["x"])
    with pytest.raises(DataError, match=r"has no column\(s\) 'z'\. Its columns are: 'x', 'y'"):
        read_table(tmp_path / "nolab.parquet", ["x", "z"])


def test_config_validation_checks_the_fraction_ranges_as_run_does(tmp_path: Path) -> None:
    from mtlkit.config import load_config
    from mtlkit.errors import ConfigError

    train = _csv(tmp_path, HEAD + _rows(10))
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        f"data:\n  name: tabular\n  train: {train}\n  numeric: [age]\n  val_fraction: 1.5\n"
        "  unknown_fraction: -0.1\n  tasks:\n    click: {column: clicked, kind: binary}\n"
        "model: {name: shared_bottom}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert "data.val_fraction: Input should be less than 1; got 1.5." in str(err.value)
    assert "data.unknown_fraction: Input should be greater than or equal to 0; got -0.1." in str(err.value)
    for bad in ({"val_fraction": 1.5}, {"unknown_fraction": -0.1}):  # the Python API refuses them too
        with pytest.raises(DataError, match="must be"):
            tabular(train=train, tasks=BINARY, numeric=["age"], **bad)
