"""Fitting the preprocessor in one streaming pass equals the in-memory fit (issue 13 §3)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mtlkit.data import TabularPreprocessor
from mtlkit.data.arrow_io import expand_paths
from mtlkit.data.streaming_fit import fit_streaming
from mtlkit.data.streaming_stats import CategoryCounts, RunningMoments
from mtlkit.data.tabular import tabular
from mtlkit.errors import DataError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _assert_same_state(a: TabularPreprocessor, b: TabularPreprocessor) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["vocabularies"] == sb["vocabularies"]  # identical values, identical order
    assert sa["stats"].keys() == sb["stats"].keys()
    for k, (m, s) in sa["stats"].items():
        m2, s2 = sb["stats"][k]
        scale = max(abs(m2), s2)
        assert abs(m - m2) <= 1e-9 * scale and abs(s - s2) <= 1e-9 * s2, (k, m, m2, s, s2)


def _messy_rows(rng: np.random.Generator, n: int) -> list[list[str]]:
    cities = ["paris", " rome", "rome ", "oslo", "", "?", "NA", "berlin", "lima", "Nan", "x y"]
    rows = []
    for _ in range(n):
        age = (
            ""
            if rng.random() < 0.1
            else (f"{rng.normal(40, 12):.4f}" if rng.random() < 0.8 else str(int(rng.integers(18, 90))))
        )
        if rng.random() < 0.03:
            age = " NA "
        code = str(int(rng.zipf(1.6)) % 40) if rng.random() < 0.9 else f"{int(rng.integers(0, 5))}.0"
        label = "" if rng.random() < 0.15 else str(int(rng.random() < 0.3))
        rows.append([str(rng.choice(cities)), age, code, f"{rng.lognormal(3, 1):.6g}", label])
    return rows


def _write_csv_shards(tmp_path: Path, rows: list[list[str]], sizes: list[int]) -> list[Path]:
    head = "city,age,code,price,click\n"
    files, start = [], 0
    for i, k in enumerate(sizes):
        p = tmp_path / f"part-{i}.csv"
        p.write_text(head + "".join(",".join(r) + "\n" for r in rows[start : start + k]))
        files.append(p)
        start += k
    return files


@pytest.mark.parametrize(("min_frequency", "max_categories"), [(1, None), (3, None), (1, 7)])
def test_streaming_fit_over_csv_shards_equals_the_in_memory_fit(
    tmp_path: Path, min_frequency: int, max_categories: int | None
) -> None:
    rng = np.random.default_rng(0)
    rows = _messy_rows(rng, 3000)
    files = _write_csv_shards(tmp_path, rows, [1000, 1, 1500, 499])
    kw = {"categorical": ["city", "code"], "numeric": ["age", "price"], "min_frequency": min_frequency,
          "max_categories": max_categories}  # fmt: skip
    streamed = fit_streaming(tmp_path / "part-*.csv", **kw)
    cols = {
        c: np.array([r[j] for r in rows], dtype=str) for j, c in enumerate(["city", "age", "code", "price"])
    }
    _assert_same_state(streamed, TabularPreprocessor(**kw).fit(cols))
    # an independent count: stripped values, missing markers out, most frequent first, ties by value
    for j, c in ((0, "city"), (2, "code")):
        tally = Counter(r[j].strip() for r in rows if r[j].strip().lower() not in {"", "?", "na", "nan"})
        expected = sorted((v for v, k in tally.items() if k >= min_frequency), key=lambda v: (-tally[v], v))
        assert streamed.vocabularies[c] == expected[:max_categories]
    assert "rome" in streamed.vocabularies["city"]
    assert "?" not in streamed.vocabularies["city"] and "" not in streamed.vocabularies["city"]
    # small blocks (many batches and merges) give the same state
    again = fit_streaming(files, **kw, batch_rows=7)
    _assert_same_state(again, streamed)


def test_streaming_fit_over_parquet_equals_tabular_on_the_labelled_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 4000
    label = np.where(rng.random(n) < 0.2, np.nan, (rng.random(n) < 0.3).astype(float))
    table = pa.table(
        {
            "user": pa.array(rng.zipf(1.4, n) % 300, pa.int64()),
            "device": pa.array(rng.choice(["ios", "android", "web"], n)),
            "x": pa.array(np.where(rng.random(n) < 0.05, np.nan, rng.normal(5, 2, n)), from_pandas=True),
            "click": pa.array(label, from_pandas=True),
        }
    )
    pq.write_table(table, tmp_path / "all.parquet")
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, (lo, hi) in enumerate([(0, 1234), (1234, 1300), (1300, n)]):
        pq.write_table(table.slice(lo, hi - lo), shards / f"p{i}.parquet", row_group_size=100)
    splits = tabular(train=str(tmp_path / "all.parquet"), tasks={"click": {"column": "click", "kind": "binary"}},
                     categorical=["user", "device"], numeric=["x"], min_frequency=2)  # fmt: skip
    streamed = fit_streaming(shards, categorical=["user", "device"], numeric=["x"], min_frequency=2,
                             label_columns=["click"], batch_rows=64)  # fmt: skip
    _assert_same_state(streamed, splits.preprocessor)
    assert streamed.vocabularies["user"][0] == "1"  # integer ids written as in memory (1, not 1.0)
    # max_rows: the first rows only
    first = fit_streaming(shards, categorical=["device"], numeric=["x"], max_rows=1500)
    ref = TabularPreprocessor(categorical=["device"], numeric=["x"]).fit(
        {c: table.column(c).slice(0, 1500).to_numpy(zero_copy_only=False) for c in ("device", "x")}
    )
    _assert_same_state(first, ref)


def test_running_moments_are_stable_at_a_large_offset() -> None:
    rng = np.random.default_rng(2)
    x = 1e6 + rng.normal(0.0, 1.0, 200_003)
    m = RunningMoments()
    for chunk in np.array_split(x, 37):
        m.update(chunk)
    ref_mean, ref_std = float(np.mean(x)), float(np.std(x))
    assert abs(m.mean - ref_mean) <= 1e-12 * abs(ref_mean)
    assert abs(m.standardisation()[1] - ref_std) <= 1e-9 * ref_std
    # the naive one-pass formula loses the spread at this offset: the test can tell the difference
    naive = np.sqrt(max(np.mean(x * x) - np.mean(x) ** 2, 0.0))
    assert abs(naive - ref_std) > 1e-9 * ref_std
    # merging accumulators equals one pass; huge values stay finite
    a, b = RunningMoments(), RunningMoments()
    a.update(x[:1000])
    b.update(x[1000:])
    a.merge(b)
    assert abs(a.standardisation()[1] - ref_std) <= 1e-9 * ref_std
    h = RunningMoments()
    for part in ([1.5e308, 1.7e308], [-1.0e308], [0.5e308]):
        h.update(np.array(part))
    mean, std = h.standardisation()
    assert np.isfinite(mean) and np.isfinite(std)
    exact = sum(v / 4 for v in (1.5e308, 1.7e308, -1.0e308, 0.5e308))
    assert abs(mean - exact) <= 1e-12 * 1.7e308
    c = RunningMoments()
    c.update(np.full(10, 0.1))
    c.update(np.full(3, 0.1))
    assert c.standardisation() == (pytest.approx(0.1, rel=1e-15), 1.0)  # a constant column: std 1
    z = RunningMoments()
    z.update(np.zeros(4))
    assert z.standardisation() == (0.0, 1.0)


def test_category_counts_fold_partial_counts() -> None:
    counts = CategoryCounts(compact_at=4)
    for part in (["a", " a", "b", ""], ["b", "c", "NA", "b"], ["a"] * 5):
        counts.update(pa.array(part))
    values, n = counts.result()
    assert dict(zip(values.tolist(), n.tolist())) == {"a": 7, "b": 3, "c": 1}
    nums = CategoryCounts()
    nums.update(pa.array([3.0, 3.0000000000001, 4.0, None]))
    nums.update(pa.array([3, 5], pa.int64()))
    values, n = nums.result()
    assert dict(zip(values.tolist(), n.tolist())) == {"3": 3, "4": 1, "5": 1}


def test_streaming_fit_errors_name_the_file_and_row(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x,k\n1,a\n2,b\n")
    (tmp_path / "b.csv").write_text("x,k\n1,a\nabc,b\n")
    with pytest.raises(
        DataError, match=r"b\.csv: numeric column 'x' holds the non-numeric value 'abc' in data row 2"
    ):
        fit_streaming(tmp_path, numeric=["x"])
    (tmp_path / "b.csv").write_text("x,k\n1,a\n2,b\n-inf,c\n")
    with pytest.raises(DataError, match=r"b\.csv: numeric column 'x' holds -inf in data row 3"):
        fit_streaming([tmp_path / "a.csv", tmp_path / "b.csv"], numeric=["x"])
    with pytest.raises(DataError, match=r"has no column\(s\) 'y'"):
        fit_streaming(tmp_path / "a.csv", numeric=["y"])
    with pytest.raises(DataError, match=r"matches no file"):
        fit_streaming(str(tmp_path / "*.parquet"), numeric=["x"])
    (tmp_path / "d.csv").write_text("x,x\n1,2\n")
    with pytest.raises(DataError, match=r"d\.csv has several columns named 'x'"):
        fit_streaming(tmp_path / "d.csv", numeric=["x"])
    (tmp_path / "e.csv").write_text("x,k\n,a\nNA,b\n")
    with pytest.raises(DataError, match=r"numeric column 'x' has no values"):
        fit_streaming(tmp_path / "e.csv", numeric=["x"])
    assert expand_paths([tmp_path / "a.csv", str(tmp_path / "b.csv")]) == [
        tmp_path / "a.csv",
        tmp_path / "b.csv",
    ]
    with pytest.raises(DataError, match="listed twice"):
        expand_paths([tmp_path / "a.csv", tmp_path / "a.csv"])


def test_large_integer_ids_stay_distinct_in_both_fits(tmp_path: Path) -> None:
    """Ids beyond 1e12 (and up to 2**62) are distinct categories, in the in-memory and the
    streaming fit alike; before, ``%.12g`` wrote 1000000000001 and 1000000000002 as one value."""
    base = np.array([10**12 + 1, 10**12 + 2, 2**53 + 1, 2**53 + 2, 2**62 + 3, 7], dtype=np.int64)
    users = np.repeat(base, [5, 4, 3, 2, 2, 1])
    n = users.size
    table = pa.table({"user": pa.array(users, pa.int64()), "x": np.arange(n, dtype=float),
                      "click": np.arange(n) % 2})  # fmt: skip
    pq.write_table(table, tmp_path / "ids.parquet", row_group_size=5)
    counts = dict(zip([str(int(v)) for v in base], [5, 4, 3, 2, 2, 1]))
    expected = sorted(counts, key=lambda v: (-counts[v], v))  # by frequency, ties by value; every digit kept
    streamed = fit_streaming(tmp_path / "ids.parquet", categorical=["user"], numeric=["x"])
    assert streamed.vocabularies["user"] == expected
    splits = tabular(train=str(tmp_path / "ids.parquet"), tasks={"click": {"column": "click", "kind": "binary"}},
                     categorical=["user"], numeric=["x"], unknown_fraction=0.0)  # fmt: skip
    assert splits.preprocessor.vocabularies["user"] == expected
    codes = splits.train.inputs["categorical"][:, 0]
    assert codes.unique().numel() == base.size  # six ids, six codes
    # a float column holding integer ids up to 2**53 is written the same way
    from mtlkit.data.preprocessing import number_strings

    assert number_strings(np.array([1e12 + 1, 3.0, 0.5, np.nan])).tolist() == ["1000000000001", "3", "0.5", ""]
