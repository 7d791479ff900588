"""census-income (MMoE paper 6.3): the real files (when present) and small fake copies."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from _datasets import census_row, shared_data, write_fake_census
from mtlkit.data import census
from mtlkit.data._columns import CodedColumn, fit_coded, transform_coded
from mtlkit.data.census import census_income, read_census
from mtlkit.data.preprocessing import TabularPreprocessor
from mtlkit.errors import DataError
from mtlkit.registries import DATASETS


# ---------------------------------------------------------------------------------------------- real files
@pytest.fixture(autouse=True, scope="module")
def _private_cache(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Every test of this module uses its own parsed-file cache (never the user's)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MTLKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def census_test_file() -> dict:
    """The real test file alone (99,762 rows, quick to parse), checksum verified."""
    root = shared_data("census-income")
    path = census._files(root, download_missing=False, verify=True)["test"]
    return {"root": root, "columns": census._parse("test", path, check_content=False)}


def test_real_test_file_parses_with_the_readme_counts(census_test_file: dict) -> None:
    cols = census_test_file["columns"]
    assert set(cols) == set(census.COLUMNS) - {"instance_weight"}
    assert len(cols["age"]) == 99_762
    income, marital = cols["income_50k"].strings(), cols["marital_stat"].strings()
    assert sorted(set(income.tolist())) == ["- 50000.", "50000+."]
    assert (income == "50000+.").sum() == 6_186  # 6.20 %, as the .names file states
    assert (marital == "Never married").sum() == 43_143
    assert len(cols["education"].values) == 17


def test_real_fast_preprocessing_equals_the_string_path(census_test_file: dict) -> None:
    rows = np.arange(0, 99_762, 37)  # a spread-out sample
    features = (*census.CATEGORICAL_COLUMNS, "education", *census.NUMERIC_COLUMNS)
    cols = {c: census_test_file["columns"][c].take(rows) for c in features}
    strings = {c: col.strings() for c, col in cols.items()}
    kw = {"categorical": (*census.CATEGORICAL_COLUMNS, "education"), "numeric": census.NUMERIC_COLUMNS}
    ref = TabularPreprocessor(**kw).fit(strings)
    fast = TabularPreprocessor(**kw)
    fit_coded(fast, cols)
    assert fast.state_dict() == ref.state_dict()
    a, b = transform_coded(fast, cols), ref.transform(strings)
    assert torch.equal(a["categorical"], b["categorical"]) and torch.equal(a["numeric"], b["numeric"])
    # and the fitted state round-trips through JSON to the same transform
    back = TabularPreprocessor.from_state_dict(json.loads(json.dumps(fast.state_dict())))
    c = transform_coded(back, cols)
    assert torch.equal(a["categorical"], c["categorical"]) and torch.equal(a["numeric"], c["numeric"])


@pytest.fixture(scope="module")
def real() -> dict:
    """The whole dataset: group 1 parsed once (a cache miss), group 2 and the raw columns from that cache."""
    root = shared_data("census-income")
    g1 = census_income(path=str(root), group=1)
    g2 = census_income(path=str(root), group=2)
    train_cols, test_cols, info = read_census(root)
    return {"root": root, "g1": g1, "g2": g2, "train": train_cols, "test": test_cols, "info": info}


@pytest.mark.slow
def test_real_row_counts_and_label_counts_match_the_readme(real: dict) -> None:
    g1 = real["g1"]
    assert (len(g1.train), len(g1.val), len(g1.test)) == (199_523, 49_881, 49_881)
    assert [t.name for t in g1.tasks] == ["income", "never_married"]
    # README: train income 50000+ 12,382, never married 86,485; test 6,186 and 43,143
    assert int(g1.train.targets["income"].sum()) == 12_382
    assert int(g1.train.targets["never_married"].sum()) == 86_485
    assert int(g1.val.targets["income"].sum() + g1.test.targets["income"].sum()) == 6_186
    assert int(g1.val.targets["never_married"].sum() + g1.test.targets["never_married"].sum()) == 43_143
    assert g1.info["cache"] == "miss" and real["g2"].info["cache"] == "hit"
    assert g1.info["dropped_unlabelled"] == 0


@pytest.mark.slow
def test_real_distinct_values_match_the_names_file(real: dict) -> None:
    names = (real["root"] / "census-income" / "census-income.names").read_text(errors="replace")
    counts = [int(m) for m in re.findall(r"\|\s+(\d+) distinct values for attribute #\d+", names)]
    attributes = [c for c in census.COLUMNS if c not in ("instance_weight", "income_50k")]
    assert len(counts) == len(attributes) == 40
    for name, expected in zip(attributes, counts):
        assert len(real["train"][name].values) == expected, name
    assert sorted(real["test"]["income_50k"].values.tolist()) == ["- 50000.", "50000+."]
    assert len(real["test"]["age"]) == 99_762


@pytest.mark.slow
def test_real_inputs_exclude_the_groups_labels_and_preprocessing_is_fitted_on_train(real: dict) -> None:
    g1, g2 = real["g1"], real["g2"]
    s1, s2 = g1.input_spec.categorical, g2.input_spec.categorical
    assert "education" in s1 and "income_50k" not in s1 and "marital_stat" not in s1
    assert "education" not in s2 and "income_50k" in s2 and "marital_stat" not in s2
    for schema in (g1.input_spec, g2.input_spec):
        assert "instance_weight" not in (*schema.categorical, *schema.numeric)
        assert schema.numeric == census.NUMERIC_COLUMNS
    num = g1.train.inputs["numeric"].double()
    torch.testing.assert_close(num.mean(0), torch.zeros(7, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        num.std(0, correction=0), torch.ones(7, dtype=torch.float64), atol=1e-5, rtol=0
    )
    assert g1.preprocessor.schema == g1.input_spec
    # group 2: education >= college; the paper gives no value list, the README lists six degrees
    edu = real["train"]["education"]
    college = np.isin(edu.values, census.COLLEGE_VALUES)[edu.codes]
    assert int(g2.train.targets["college"].sum()) == int(college.sum())
    assert g2.info["main_task"] == "college" and g2.info["positive_rate"]["train"][
        "college"
    ] == pytest.approx(college.mean())


@pytest.mark.slow
def test_real_preprocessor_round_trips_through_json_and_is_reused(real: dict, tmp_path: Path) -> None:
    pre = real["g1"].preprocessor
    (tmp_path / "preprocessor.json").write_text(json.dumps(pre.state_dict()))
    back = TabularPreprocessor.from_state_dict(json.loads((tmp_path / "preprocessor.json").read_text()))
    rows = np.arange(500)
    cols = {c: real["test"][c].take(rows) for c in (*pre.categorical, *pre.numeric)}
    a, b = transform_coded(pre, cols), transform_coded(back, cols)
    assert torch.equal(a["categorical"], b["categorical"]) and torch.equal(a["numeric"], b["numeric"])
    # the builder reuses a saved preprocessor instead of fitting one (here: on a 1,000-row subset)
    small = census_income(path=str(real["root"]), n_train=1000, preprocessor=str(tmp_path))
    assert len(small.train) == 1000
    assert small.preprocessor.state_dict() == pre.state_dict()
    refit = census_income(path=str(real["root"]), n_train=1000)
    assert refit.preprocessor.state_dict() != pre.state_dict()
    with pytest.raises(DataError, match="saved for other data"):
        census_income(path=str(real["root"]), group=2, preprocessor=str(tmp_path))


def test_truncated_and_corrupt_copies_name_the_file(census_test_file: dict, tmp_path: Path) -> None:
    src = census_test_file["root"] / "census-income"
    folder = tmp_path / "census-income"
    folder.mkdir()
    data = (src / "census-income.test.gz").read_bytes()
    (folder / "census-income.test.gz").write_bytes(data[: len(data) // 2])
    write_fake_census(tmp_path / "fake")
    shutil.copy(tmp_path / "fake" / "census-income.data", folder / "census-income.data")
    with pytest.raises(
        DataError, match=r"census-income.test.gz has 1,630,708 bytes, expected 3,261,416: .*truncated"
    ):
        read_census(tmp_path, cache=False)
    with pytest.raises(DataError, match=r"census-income.test.gz could not be read .* corrupt or truncated"):
        read_census(tmp_path, cache=False, verify=False)
    # another compression of other content fails the content check (UCI's .gz would pass it)
    (folder / "census-income.test.gz").write_bytes(data)
    with pytest.raises(
        DataError, match=r"census-income.data decompresses to .* not the original census-income training"
    ):
        read_census(tmp_path, cache=False)


# ---------------------------------------------------------------------------------------------- fake files
def test_fake_copy_gives_labels_by_the_papers_rules(tmp_path: Path) -> None:
    write_fake_census(tmp_path / "census-income", n_train=300, n_test=101)
    s = census_income(path=str(tmp_path), verify=False, cache=False)
    cols, _, _ = read_census(tmp_path, verify=False, cache=False)
    inc = cols["income_50k"].strings()
    assert torch.equal(s.train.targets["income"], torch.tensor((inc == "50000+.").astype(np.float32)))
    mar = cols["marital_stat"].strings()
    assert torch.equal(
        s.train.targets["never_married"], torch.tensor((mar == "Never married").astype(np.float32))
    )
    assert (len(s.val), len(s.test)) == (50, 51)  # the test file split 1:1 (odd count: one more in test)
    g2 = census_income(path=str(tmp_path), verify=False, cache=False, group=2, some_college=True)
    edu = cols["education"].strings()
    expected = np.isin(edu, [*census.COLLEGE_VALUES, census.SOME_COLLEGE]).astype(np.float32)
    assert torch.equal(g2.train.targets["college"], torch.tensor(expected))
    assert DATASETS.get("census") is census_income


def test_unlabelled_rows_are_excluded_and_missing_labels_are_nan(tmp_path: Path) -> None:
    folder = write_fake_census(tmp_path / "census-income", n_train=40, n_test=10)
    rng = np.random.default_rng(5)
    extra = [
        census_row(rng, income_50k="?", marital_stat="?"),  # no label at all: dropped
        census_row(rng, income_50k="?", marital_stat="Never married"),  # income missing: NaN
    ]
    with (folder / "census-income.data").open("a") as fh:
        fh.write("\n".join(extra) + "\n")
    s = census_income(path=str(tmp_path), verify=False, cache=False)
    assert len(s.train) == 41 and s.info["dropped_unlabelled"] == 1
    assert torch.isnan(s.train.targets["income"]).sum() == 1
    assert s.train.targets["never_married"][torch.isnan(s.train.targets["income"])].item() == 1.0


def test_unexpected_label_values_and_bad_rows_are_errors(tmp_path: Path) -> None:
    folder = write_fake_census(tmp_path / "census-income", n_train=20, n_test=10)
    rng = np.random.default_rng(1)
    with (folder / "census-income.data").open("a") as fh:
        fh.write(census_row(rng, income_50k="lots") + "\n")
    with pytest.raises(DataError, match=r"column 'income_50k' holds the unexpected value 'lots'"):
        census_income(path=str(tmp_path), verify=False, cache=False)
    with (folder / "census-income.test").open("a") as fh:
        fh.write("1, 2, 3\n")
    with pytest.raises(DataError, match=r"census-income.test, line 11: 3 fields, expected 42"):
        read_census(tmp_path, verify=False, cache=False)


def test_missing_files_say_what_to_put_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(
        DataError,
        match=r"missing census-income.data.bz2 \(2,651,475 bytes; or UCI's census-income.data.gz\) and "
        r"census-income.test.gz .* download=True \(--download",
    ):
        census_income(path=str(tmp_path))
    monkeypatch.delenv("MTLKIT_DATA", raising=False)
    with pytest.raises(DataError, match=r"No data directory given.*MTLKIT_DATA"):
        census_income()
    with pytest.raises(DataError, match="group must be 1 or 2"):
        census_income(path=str(tmp_path), group=3)  # type: ignore[arg-type]


def test_the_cache_is_keyed_by_file_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTLKIT_CACHE", str(tmp_path / "cache"))
    folder = write_fake_census(tmp_path / "census-income", n_train=30, n_test=10)
    a, _, info = read_census(tmp_path, verify=False)
    assert info["cache"] == "miss"
    b, _, info = read_census(tmp_path, verify=False)
    assert info["cache"] == "hit"
    for c in a:
        np.testing.assert_array_equal(a[c].strings(), b[c].strings())
    # a new file content misses the cache; entries written unverified are not trusted when verifying
    write_fake_census(folder, n_train=30, n_test=10, seed=9)
    c, _, info = read_census(tmp_path, verify=False)
    assert info["cache"] == "miss" and not np.array_equal(c["age"].strings(), a["age"].strings())
    assert census._from_arrays({"__verified__": np.array(False)}, verified=True) is None
    gz = tmp_path / "gz" / "census-income"
    gz.mkdir(parents=True)
    (gz / "census-income.data.gz").write_bytes(gzip.compress((folder / "census-income.data").read_bytes()))
    shutil.copy(folder / "census-income.test", gz)
    d, _, _ = read_census(tmp_path / "gz", verify=False, cache=False)  # UCI's compression works too
    np.testing.assert_array_equal(d["age"].strings(), c["age"].strings())
    assert isinstance(d["age"], CodedColumn)


def test_download_fetches_the_uci_files_into_the_dataset_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = write_fake_census(tmp_path / "server", n_train=30, n_test=10)
    for name in ("census-income.data", "census-income.test"):
        (server / f"{name}.gz").write_bytes(gzip.compress((server / name).read_bytes()))
    monkeypatch.setattr(census, "UCI_URL", server.as_uri() + "/")  # a local "server": no network in tests
    root = tmp_path / "data"
    root.mkdir()
    s = census_income(path=str(root), download=True, verify=False, cache=False)
    assert sorted(p.name for p in (root / "census-income").iterdir()) == [
        "census-income.data.gz",
        "census-income.test.gz",
    ]
    assert len(s.train) == 30
