"""The synthetic impression log (issue 13 §5): deterministic Parquet shards with a click/conversion funnel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mtlkit.cli.main import main
from mtlkit.data import impression_log
from mtlkit.data.impressions import BLOCK_ROWS
from mtlkit.errors import DataError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _read(files) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in files])


def _auc(score: np.ndarray, label: np.ndarray) -> float:
    """Mann-Whitney AUC (no ties in continuous scores)."""
    r = np.argsort(np.argsort(score)) + 1.0
    pos = label == 1
    n1, n0 = pos.sum(), (~pos).sum()
    return float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def test_the_log_is_independent_of_the_sharding_and_row_count_exact(tmp_path: Path) -> None:
    rows = BLOCK_ROWS + 1_000  # crosses a generator block boundary
    a = impression_log(tmp_path / "a", rows, shard_rows=7_000, seed=3, row_group_rows=4_096)
    b = impression_log(tmp_path / "b", rows, shard_rows=rows, seed=3)
    c = impression_log(tmp_path / "c", rows, shard_rows=30_001, seed=4)
    # shard boundaries: every file but the last holds exactly shard_rows rows
    sizes = [pq.ParquetFile(f).metadata.num_rows for f in a.files]
    assert sizes == [7_000] * (rows // 7_000) + [rows % 7_000]
    assert all(pq.ParquetFile(f).metadata.row_group(0).num_rows <= 4_096 for f in a.files)
    assert len(b.files) == 1
    ta, tb, tc = _read(a.files), _read(b.files), _read(c.files)
    assert ta.num_rows == tb.num_rows == rows
    assert ta.equals(tb)  # same seed: the same log, whatever the shard and row-group sizes
    assert ta["sample_id"].to_pylist() == list(range(rows))
    assert not ta["user_id"].equals(tc["user_id"])  # another seed, another log
    again = impression_log(tmp_path / "a2", rows, shard_rows=7_000, seed=3)
    assert _read(again.files).equals(ta)


def test_funnel_labels_and_learnable_signal(tmp_path: Path) -> None:
    log = impression_log(tmp_path / "log", 60_000, shard_rows=25_000, seed=0, oracle=True)
    t = _read(log.files)
    click = t["click"].to_numpy()
    assert set(np.unique(click)) == {0, 1}
    conv, watch = t["conversion"], t["watch_time"]
    # the funnel: conversion and watch time are labelled exactly on the clicked impressions
    clicked = click == 1
    np.testing.assert_array_equal(conv.is_valid().to_numpy(zero_copy_only=False), clicked)
    np.testing.assert_array_equal(watch.is_valid().to_numpy(zero_copy_only=False), clicked)
    cv = conv.drop_null().to_numpy()
    assert set(np.unique(cv)) <= {0, 1} and 0.05 < cv.mean() < 0.6
    assert 0.01 < click.mean() < 0.10  # a CTR of a few percent
    w = watch.drop_null().to_numpy()
    assert (w > 0).all() and np.mean(w) > 1.5 * np.median(w)  # heavy right tail (lognormal)
    # the labels follow the latent factors: the true probability ranks clicks well above chance
    assert _auc(t["p_click"].to_numpy(), click) > 0.7
    # Zipf-like popularity: the most frequent user is far above the mean count
    _, counts = np.unique(t["user_id"].to_numpy(), return_counts=True)
    assert counts.max() > 20 * counts.mean()
    assert t["user_id"].to_numpy().max() < log.users and t["item_id"].to_numpy().max() < log.items
    assert set(t["device"].unique().to_pylist()) == {"android", "ios", "web"}


def test_the_cli_writes_the_same_log_and_refuses_a_used_folder(tmp_path: Path, capsys) -> None:
    assert main(["generate", "impressions", str(tmp_path / "cli"), "--rows", "5000", "--shard-rows", "2000",
                 "--seed", "9"]) == 0  # fmt: skip
    assert "Wrote 5,000 impressions" in capsys.readouterr().out
    files = sorted((tmp_path / "cli").glob("*.parquet"))
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    ref = impression_log(tmp_path / "py", 5000, shard_rows=5000, seed=9)
    assert _read(files).equals(_read(ref.files))
    assert main(["generate", "impressions", str(tmp_path / "cli"), "--rows", "10"]) == 1
    assert "already holds 3 Parquet file(s)" in capsys.readouterr().err
    with pytest.raises(DataError, match="rows must be an integer >= 1; got 0"):
        impression_log(tmp_path / "z", 0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rows", "0"], "rows must be an integer >= 1; got 0"),
        (["--rows", "10", "--shard-rows", "0"], "shard_rows must be an integer >= 1; got 0"),
        (["--rows", "10", "--seed", "-1"], "seed must be an integer >= 0; got -1"),
    ],
)
def test_bad_arguments_are_refused_clearly_from_the_cli(
    tmp_path: Path, capsys, argv: list[str], message: str
) -> None:
    assert main(["generate", "impressions", str(tmp_path / "log"), *argv]) == 1  # a data error, as in run
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list((tmp_path).glob("log/*.parquet"))


def test_history_and_weight_columns_are_deterministic_whatever_the_sharding(tmp_path: Path) -> None:
    rows = BLOCK_ROWS + 500  # crosses a generator block boundary
    a = impression_log(tmp_path / "a", rows, shard_rows=9_000, seed=2, history=6, weights=True)
    b = impression_log(tmp_path / "b", rows, shard_rows=rows, seed=2, history=6, weights=True, row_group_rows=5_000)
    plain = impression_log(tmp_path / "p", rows, shard_rows=rows, seed=2)
    ta, tb, tp = _read(a.files), _read(b.files), _read(plain.files)
    assert ta.equals(tb)
    assert ta.schema.field("history").type == pa.list_(pa.int64())
    # the optional columns are added, the others are the same log
    assert ta.select(tp.column_names).equals(tp)
    history = ta["history"].to_pylist()
    sizes = np.asarray([len(h) for h in history])
    assert sizes.min() == 1 and sizes.max() == 6
    flat = np.concatenate([np.asarray(h) for h in history])
    assert flat.min() >= 0 and flat.max() < a.items
    users = ta["user_id"].to_numpy()
    first = {}
    for u, h in zip(users.tolist(), history):  # a property of the user: the same list on every row
        assert first.setdefault(u, h) == h
    w = ta["weight"].to_numpy()
    assert w.min() >= 0.5 and w.max() <= 2.0 and np.unique(w).size > 100
    other = impression_log(tmp_path / "o", 2_000, seed=3, history=6, weights=True)
    assert _read(other.files)["weight"].to_pylist() != ta["weight"].to_pylist()[:2_000]


def test_csv_logs_hold_the_same_rows_with_a_delimited_history(tmp_path: Path, capsys) -> None:
    argv = ["generate", "impressions", str(tmp_path / "csv"), "--rows", "3000", "--shard-rows", "2000",
            "--history", "3", "--weights", "--format", "csv"]  # fmt: skip
    assert main(argv) == 0
    assert "as 2 CSV file(s)" in capsys.readouterr().out
    files = sorted((tmp_path / "csv").glob("part-*.csv"))
    assert [f.name for f in files] == ["part-00000.csv", "part-00001.csv"]
    ref = _read(impression_log(tmp_path / "pq", 3000, history=3, weights=True).files)
    import pyarrow.csv as pacsv

    table = pa.concat_tables([pacsv.read_csv(f) for f in files])
    want = ["|".join(str(v) for v in h) for h in ref["history"].to_pylist()]
    assert table["history"].cast(pa.string()).to_pylist() == want
    np.testing.assert_allclose(table["weight"].to_numpy(), ref["weight"].to_numpy())
    assert table["conversion"].null_count == ref["conversion"].null_count > 0  # blank unless clicked
    assert main([*argv[:2], str(tmp_path / "csv2"), "--rows", "5", "--history", "-1"]) == 1
    assert "history must be an integer >= 0; got -1" in capsys.readouterr().err
