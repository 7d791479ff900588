"""The ``tabular`` dataset with ``streaming: true``: what it hands to the stream, what it refuses,
and the fingerprint of streamed splits (file facts, not contents)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mtlkit.data import impression_log
from mtlkit.data.fingerprint import data_fingerprint, fingerprint_changes
from mtlkit.data.streaming_fit import fit_streaming
from mtlkit.data.tabular import tabular
from mtlkit.errors import DataError

TASKS = {"click": {"column": "click", "kind": "binary"}, "watch_time": {"column": "watch_time", "kind": "regression"}}
FEATURES = {"categorical": ["user_id", "device"], "numeric": ["price", "position"]}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imp")
    impression_log(root / "train", rows=1500, shard_rows=500, seed=0)
    impression_log(root / "test", rows=400, shard_rows=400, seed=1)
    return root


def test_streaming_builds_streams_over_every_file(shards: Path) -> None:
    splits = tabular(
        train=str(shards / "train" / "*.parquet"),
        test=[str(shards / "test")],
        tasks=TASKS,
        streaming=True,
        shuffle_buffer=100,
        num_workers=0,
        **FEATURES,
    )
    assert splits.info["streaming"] is True
    assert splits.train.num_rows == 1500 and splits.test.num_rows == 400 and splits.val is None
    assert [f.name for f in splits.train.files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert (splits.train.shuffle_buffer, splits.train.num_workers) == (100, 0)


def test_fit_rows_fits_the_preprocessor_on_the_first_rows(shards: Path) -> None:
    splits = tabular(train=str(shards / "train"), tasks=TASKS, streaming=True, fit_rows=300, num_workers=0, **FEATURES)
    want = fit_streaming(shards / "train", label_columns=["click", "watch_time"], max_rows=300, **FEATURES)
    assert splits.preprocessor.state_dict() == want.state_dict()
    everything = fit_streaming(shards / "train", label_columns=["click", "watch_time"], **FEATURES)
    assert splits.preprocessor.state_dict() != everything.state_dict()  # 300 rows see fewer users


@pytest.mark.parametrize("fraction", ["val_fraction", "test_fraction"])
def test_streaming_refuses_held_out_fractions(shards: Path, fraction: str) -> None:
    with pytest.raises(DataError, match=f"{fraction} cannot be used with streaming: true .* as files"):
        tabular(train=str(shards / "train"), tasks=TASKS, streaming=True, **{fraction: 0.1}, **FEATURES)


def test_streaming_names_the_split_of_a_pattern_that_matches_nothing(shards: Path) -> None:
    with pytest.raises(DataError, match=r"tabular: test: The pattern .*\*\.csv' matches no file"):
        tabular(train=str(shards / "train"), test=str(shards / "test" / "*.csv"), tasks=TASKS, streaming=True, **FEATURES)


def test_without_streaming_several_files_and_streaming_options_are_refused(shards: Path) -> None:
    one = str(shards / "train" / "part-00000.parquet")
    for train in (str(shards / "train"), str(shards / "train" / "*.parquet"), [one]):
        with pytest.raises(DataError, match="names several files .* needs streaming: true"):
            tabular(train=train, tasks=TASKS, **FEATURES)
    for option in ({"fit_rows": 10}, {"num_workers": 0}, {"shuffle_buffer": 10}):
        with pytest.raises(DataError, match=f"{next(iter(option))} applies to streaming: true only"):
            tabular(train=one, tasks=TASKS, **option, **FEATURES)
    assert len(tabular(train=one, tasks=TASKS, **FEATURES).train) == 500  # one file: read in memory as before


def test_fingerprint_of_streams_is_file_facts_and_sees_a_rewritten_shard(shards: Path, tmp_path: Path) -> None:
    folder = tmp_path / "train"
    folder.mkdir()
    for f in sorted((shards / "train").glob("*.parquet")):
        (folder / f.name).write_bytes(f.read_bytes())
    build = lambda: tabular(train=str(folder), tasks=TASKS, streaming=True, num_workers=0, **FEATURES)  # noqa: E731
    before = data_fingerprint(build())
    split = before["splits"]["train"]
    assert split["rows"] == 1500 and split["tensors"] == {}
    facts = list(split["files"].values())
    assert [f["rows"] for f in facts] == [500, 500, 500]
    assert [f["bytes"] for f in facts] == [p.stat().st_size for p in sorted(folder.iterdir())]
    assert fingerprint_changes(before, data_fingerprint(build())) == []

    second = folder / "part-00001.parquet"
    table = pq.read_table(second)
    pq.write_table(table.slice(0, 400), second)
    os.utime(second, ns=(second.stat().st_atime_ns, second.stat().st_mtime_ns + 10**9))
    changes = fingerprint_changes(before, data_fingerprint(build()))
    assert changes == ["the training split had 1500 rows then, 1400 now"]

    pq.write_table(table, second)  # the same rows, written again: the time changed
    changes = fingerprint_changes(before, data_fingerprint(build()))
    assert len(changes) == 1 and "part-00001.parquet changed (size, time or rows)" in changes[0]


def test_a_streamed_auxiliary_task_stays_auxiliary(tmp_path) -> None:
    from mtlkit.data.impressions import impression_log
    from mtlkit.data.streaming import tabular_stream

    log = impression_log(tmp_path / "log", 600, shard_rows=300, seed=0)
    splits = tabular_stream(
        train=[str(f) for f in log.files],
        tasks={
            "click": {"column": "click", "kind": "binary"},
            "device_aux": {"column": "position", "kind": "regression", "auxiliary": True},
        },
        categorical=["device"],
        numeric=["price"],
        num_workers=0,
    )
    assert [t.auxiliary for t in splits.tasks] == [False, True]
