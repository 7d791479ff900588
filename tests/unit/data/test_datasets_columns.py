"""The vectorised delimited-text parser, preprocessing on coded columns, and the parsed-file cache."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlkit.data import _columns, cache
from mtlkit.data._columns import CodedColumn, fit_coded, parse_delimited, transform_coded
from mtlkit.data.preprocessing import TabularPreprocessor
from mtlkit.errors import DataError

NAMES = ["num", "word", "code", "text"]


def _random_text(rng: np.random.Generator, n: int) -> tuple[bytes, list[list[str]]]:
    words = ["a", "bb", "Never married", "?", "", "x y z", "Some college but no degree", "é", "50000+."]
    rows = []
    for _ in range(n):
        rows.append(
            [
                f"{rng.normal() * 100:.3f}",
                str(rng.choice(words)),
                str(rng.integers(0, 30)),
                "long-" + "q" * int(rng.integers(0, 40)),
            ]
        )
    lines = []
    for r in rows:
        sep = str(rng.choice([",", ", ", " ,  "]))
        lines.append(sep.join(r) + str(rng.choice(["\n", "\r\n"])))
        if rng.random() < 0.05:
            lines.append("\n" if rng.random() < 0.5 else "   \n")  # blank lines are skipped
    return "".join(lines).encode(), rows


def test_parse_matches_the_csv_module_on_messy_text() -> None:
    rng = np.random.default_rng(0)
    data, rows = _random_text(rng, 500)
    cols = parse_delimited(data, NAMES, source="t.csv")
    reference = [
        [c.strip() for c in r]
        for r in csv.reader(io.StringIO(data.decode(), newline=""))
        if any(x.strip() for x in r)
    ]
    assert len(reference) == len(rows) == 500
    for j, name in enumerate(NAMES):
        expected = np.array([r[j] for r in reference], dtype=str)
        np.testing.assert_array_equal(cols[name].strings(), expected)
        assert list(cols[name].values) == sorted(set(expected.tolist()))  # distinct and sorted


def test_usecols_no_trailing_newline_and_single_column() -> None:
    cols = parse_delimited(b"1,a\n2,b", ["x", "y"], usecols=["y"])
    assert list(cols) == ["y"] and cols["y"].strings().tolist() == ["a", "b"]
    one = parse_delimited(b"p\nq\np\n", ["only"])
    assert one["only"].strings().tolist() == ["p", "q", "p"]
    with pytest.raises(ValueError, match=r"usecols \['z'\] are not among the names"):
        parse_delimited(b"1,2\n", ["x", "y"], usecols=["z"])


def test_rows_with_the_wrong_number_of_fields_are_named_by_line() -> None:
    with pytest.raises(DataError, match=r"t.csv, line 3: 2 fields, expected 3 .*truncated"):
        parse_delimited(b"1,2,3\n4,5,6\n7,8\n", ["a", "b", "c"], source="t.csv")
    with pytest.raises(DataError, match=r"line 2: 4 fields, expected 3"):
        parse_delimited(b"1,2,3\n4,5,6,7\n", ["a", "b", "c"], source="t.csv")
    with pytest.raises(DataError, match=r"not valid utf-8 text .* corrupt"):
        parse_delimited(b"1,\xff\xfe\n", ["a", "b"], source="t.csv")


def test_a_hash_collision_falls_back_to_exact_grouping(monkeypatch: pytest.MonkeyPatch) -> None:
    # With the mixing constant 0 every word has weight 1, so two fields whose 8-byte words are
    # swapped hash alike; the exact check must still keep them apart.
    monkeypatch.setattr(_columns, "_MIX", np.uint64(0))
    a, b = "AAAAAAAABBBBBBBB", "BBBBBBBBAAAAAAAA"
    cols = parse_delimited(f"{a}\n{b}\n{a}\n".encode(), ["f"])
    assert cols["f"].values.tolist() == [a, b]
    assert cols["f"].codes.tolist() == [0, 1, 0]


def _coded(values: np.ndarray) -> CodedColumn:
    uniq, inv = np.unique(values, return_inverse=True)
    return CodedColumn(uniq, inv.astype(np.int32))


@pytest.mark.parametrize("min_frequency", [1, 3])
def test_coded_preprocessing_equals_tabular_preprocessor(min_frequency: int) -> None:
    rng = np.random.default_rng(1)
    n = 400
    raw = {
        "color": rng.choice(
            ["red", "blue", "green", "?", "teal", "NA"], n, p=[0.4, 0.3, 0.2, 0.05, 0.03, 0.02]
        ),
        "size": rng.choice(["1", "2", "3", "10"], n),
        "age": np.where(rng.random(n) < 0.1, "?", np.char.mod("%.2f", rng.normal(40, 10, n))),
        "flat": np.full(n, "5"),  # zero variance: std falls back to 1
    }
    train_rows = rng.permutation(n)[:300]
    other_rows = np.setdiff1d(np.arange(n), train_rows)
    kw = {"categorical": ["color", "size"], "numeric": ["age", "flat"], "min_frequency": min_frequency}
    ref = TabularPreprocessor(**kw).fit({k: v[train_rows] for k, v in raw.items()})
    coded = {k: _coded(v) for k, v in raw.items()}
    fast = TabularPreprocessor(**kw)
    fit_coded(fast, {k: c.take(train_rows) for k, c in coded.items()})
    assert fast.vocabularies == ref.vocabularies
    assert fast.stats == ref.stats  # bit-identical means and stds
    for rows in (train_rows, other_rows):
        expected = ref.transform({k: v[rows] for k, v in raw.items()})
        got = transform_coded(fast, {k: c.take(rows) for k, c in coded.items()})
        torch.testing.assert_close(got["categorical"], expected["categorical"], rtol=0, atol=0)
        torch.testing.assert_close(got["numeric"], expected["numeric"], rtol=0, atol=0)


def test_coded_numeric_column_with_text_is_named() -> None:
    pre = TabularPreprocessor(numeric=["age"])
    with pytest.raises(DataError, match=r"census: numeric column 'age' holds a non-numeric value 'old'"):
        fit_coded(pre, {"age": _coded(np.array(["1", "old"]))}, source="census")
    with pytest.raises(DataError, match="not fitted"):
        transform_coded(TabularPreprocessor(numeric=["age"]), {"age": _coded(np.array(["1"]))})


def test_cache_round_trip_and_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTLKIT_CACHE", str(tmp_path / "c"))
    assert cache.cache_dir() == tmp_path / "c"
    assert cache.load_arrays("kind", "k1") is None
    arrays = {"a.values": np.array(["x", "yy"]), "a.codes": np.array([1, 0, 1], dtype=np.int16)}
    path = cache.save_arrays("kind", "k1", arrays)
    assert path == tmp_path / "c" / "kind" / "k1.npz"
    back = cache.load_arrays("kind", "k1")
    assert back is not None and set(back) == set(arrays)
    for k in arrays:
        np.testing.assert_array_equal(back[k], arrays[k])
    assert back["a.codes"].dtype == np.int16
    path.write_bytes(b"not a zip file")  # a damaged entry reads as absent (and is rewritten)
    assert cache.load_arrays("kind", "k1") is None
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache directory should be")
    monkeypatch.setenv("MTLKIT_CACHE", str(blocked))
    assert cache.save_arrays("kind", "k2", arrays) is None  # unwritable: skipped, no error
    monkeypatch.delenv("MTLKIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "mtlkit"
