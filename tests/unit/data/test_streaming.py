"""Streaming tabular data: encoding equal to the in-memory path, every row once per epoch on any
number of ranks and workers, reproducible order, exact mid-epoch start, training end to end, and
clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

import mtlkit
from mtlkit.data.arrow_io import BatchOrigin
from mtlkit.data.impressions import impression_log
from mtlkit.data.preprocessing import TabularPreprocessor
from mtlkit.data.stream_encode import StreamEncoder
from mtlkit.data.streaming import TabularStream, tabular_stream
from mtlkit.data.tabular import read_table, tabular
from mtlkit.errors import DataError

CAT = ["user_id", "item_id", "position"]
NUM = ["price", "user_activity"]
TASKS = {
    "ctr": {"column": "click", "kind": "binary"},
    "cvr": {"column": "conversion", "kind": "binary"},
    "watch": {"column": "watch_time", "kind": "regression"},
    "device": {"column": "device", "kind": "multiclass"},
}
ID_TASK = {"sid": {"column": "sample_id", "kind": "regression"}}  # the sample id as a target: which rows came


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2,300 rows in 3 Parquet files (900, 900, 500 rows) of row groups of 250 (the last ones shorter)."""
    d = tmp_path_factory.mktemp("log")
    impression_log(d, 2300, shard_rows=900, row_group_rows=250, seed=3)
    return d


@pytest.fixture(scope="module")
def csv_dir(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same rows as CSV files (one gzip-compressed); blanks for nulls."""
    d = tmp_path_factory.mktemp("csv")
    for i, f in enumerate(sorted(log_dir.glob("*.parquet"))):
        name = d / (f"part-{i}.csv.gz" if i == 1 else f"part-{i}.csv")
        with pa.CompressedOutputStream(str(name), "gzip") if i == 1 else pa.OSFile(str(name), "wb") as out:
            pacsv.write_csv(pq.read_table(f), out)
    return d


def _one_file(src: Path, dest: Path) -> Path:
    tables = [pq.read_table(f) for f in sorted(src.glob("*.parquet"))]
    pq.write_table(pa.concat_tables(tables), dest)
    return dest


def _stream(train: Path | list[Path], tasks=None, **kw):
    kw.setdefault("num_workers", 0)
    kw.setdefault("shuffle_buffer", 300)
    return tabular_stream(
        train=train, tasks=tasks or {**TASKS, **ID_TASK}, categorical=CAT, numeric=NUM, **kw
    )


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal values and dtypes (NaN equal to NaN)."""
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def _cat(batches) -> dict[str, torch.Tensor]:
    out = {}
    for b in batches:
        for k, v in {**b.inputs, **{f"y:{t}": x for t, x in b.targets.items()}}.items():
            out.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------- encoding
@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_encoding_equals_the_in_memory_tabular_dataset(
    fmt: str, log_dir: Path, csv_dir: Path, tmp_path: Path
) -> None:
    single = _one_file(log_dir, tmp_path / "all.parquet")
    if fmt == "csv":
        pacsv.write_csv(pq.read_table(single), tmp_path / "all.csv")
        single = tmp_path / "all.csv"
    files = sorted(log_dir.glob("*.parquet")) if fmt == "parquet" else sorted(csv_dir.iterdir())
    memory = tabular(train=str(single), tasks={**TASKS, **ID_TASK}, categorical=CAT, numeric=NUM)
    fitted = _stream(files).preprocessor  # fitted in one streaming pass: equal up to float64 round-off
    assert fitted.vocabularies == memory.preprocessor.vocabularies
    for c, (mean, std) in memory.preprocessor.stats.items():
        assert fitted.stats[c] == pytest.approx((mean, std), rel=1e-12)
    saved = tmp_path / "preprocessor.json"
    saved.write_text(json.dumps(memory.preprocessor.state_dict()))
    splits = _stream(files, preprocessor=saved)  # the same state: the encoding must agree exactly
    assert splits.tasks == memory.tasks
    got = _cat(splits.train.eval_loader(splits.tasks, 128))
    ds = memory.train
    order = torch.argsort(got["y:sid"])  # the same rows, compared by sample id
    assert torch.equal(got["y:sid"][order], ds.targets["sid"])
    assert torch.equal(got["categorical"][order], ds.inputs["categorical"])
    assert torch.equal(got["numeric"][order], ds.inputs["numeric"])
    for t in TASKS:
        _same(got[f"y:{t}"][order], ds.targets[t])


def test_encoder_equals_preprocessor_transform_on_messy_values() -> None:
    table = pa.table(
        {
            "city": [" paris", "rome ", "NA", None, "oslo", "?", "paris", "berlin"],
            "code": [3.0, 3.0000000000001, None, 7.0, 2.5, 3.0, 1e20, 4.0],
            "age": ["1.5", " 2", "", "nan", "-3e2", "NULL", "4", "0"],
            "n": [1, 2, None, 4, 5, 6, 7, 8],
        }
    )
    train = {
        "city": ["paris", "rome", "oslo", "rome", ""],
        "code": ["3", "7", "2.5", "3", "1e+20"],
        "age": ["1", "2", "3", "", "7"],
        "n": [1.0, 5.0, 9.0, 2.0, 3.0],
    }
    pre = TabularPreprocessor(categorical=["city", "code"], numeric=["age", "n"]).fit(train)
    got = StreamEncoder(pre).features(table, BatchOrigin(Path("x.parquet"), 0))
    raw = {
        "city": np.array([("" if v is None else v) for v in table["city"].to_pylist()]),
        "code": table["code"].to_numpy(zero_copy_only=False),
        "age": np.array(table["age"].to_pylist()),
        "n": table["n"].cast(pa.float64()).fill_null(np.nan).to_numpy(),
    }
    expect = pre.transform(raw)
    assert np.array_equal(got["categorical"], expect["categorical"].numpy())
    assert np.array_equal(got["numeric"], expect["numeric"].numpy())
    assert got["categorical"][:, 0].tolist()[:4] == [
        pre.vocabularies["city"].index("paris") + 1,
        pre.vocabularies["city"].index("rome") + 1,
        0,
        0,
    ]


# ---------------------------------------------------------------------------------------------- order
@pytest.mark.parametrize("ranks", [1, 2, 3])
@pytest.mark.parametrize("workers", [0, 2])
def test_every_row_exactly_once_per_epoch_with_equal_steps(log_dir: Path, ranks: int, workers: int) -> None:
    splits = _stream(log_dir, tasks=ID_TASK, num_workers=workers)
    stream = splits.train
    seen, steps = [], set()
    for rank in range(ranks):
        loader = stream.loader(splits.tasks, 64, seed=5, num_replicas=ranks, rank=rank)
        loader.set_epoch(1)
        batches = list(loader)
        assert len(batches) == len(loader)
        steps.add(len(batches))
        assert all(1 <= len(b) <= 65 for b in batches)
        seen.append(torch.cat([b.targets["sid"] for b in batches]))
    ids = torch.cat(seen).long()
    assert len(steps) == 1
    assert sorted(ids.tolist()) == list(range(2300))
    assert not torch.equal(ids, torch.arange(2300))  # shuffled


def test_same_seed_same_batches_for_any_workers_and_epochs_differ(log_dir: Path) -> None:
    splits = _stream(log_dir, num_workers=0, shuffle_buffer=200)
    stream = splits.train
    runs = {}
    for workers in (0, 2, 3):
        stream.num_workers = workers
        loader = stream.loader(splits.tasks, 100, seed=2)
        loader.set_epoch(3)
        runs[workers] = list(loader)
    for other in (2, 3):
        assert len(runs[other]) == len(runs[0])
        for a, b in zip(runs[0], runs[other]):
            for k in a.inputs:
                assert torch.equal(a.inputs[k], b.inputs[k])
            for k in a.targets:
                _same(a.targets[k], b.targets[k])
    stream.num_workers = 0
    loader = stream.loader(splits.tasks, 100, seed=2)
    loader.set_epoch(4)
    other_epoch = torch.cat([b.targets["sid"] for b in loader])
    this_epoch = torch.cat([b.targets["sid"] for b in runs[0]])
    assert not torch.equal(other_epoch, this_epoch)
    assert sorted(other_epoch.tolist()) == sorted(this_epoch.tolist())
    # the unknown-category dropout of the training stream is on (about 1 % of the cells)
    codes = torch.cat([b.inputs["categorical"] for b in runs[0]])
    plain = _cat(stream.eval_loader(splits.tasks, 500))
    order_a, order_b = torch.argsort(this_epoch), torch.argsort(plain["y:sid"])
    dropped = codes[order_a] != plain["categorical"][order_b]
    assert torch.all(codes[order_a][dropped] == 0)
    assert 0.002 < dropped.float().mean().item() < 0.03


@pytest.mark.parametrize(("start", "workers"), [(0, 0), (3, 0), (7, 2), (11, 0), (14, 0)])
def test_set_start_gives_the_rest_of_the_epoch(log_dir: Path, start: int, workers: int) -> None:
    splits = _stream(log_dir, tasks=ID_TASK, shuffle_buffer=250, num_workers=workers)
    loader = splits.train.loader(splits.tasks, 80, seed=9, num_replicas=2, rank=1)
    loader.set_epoch(2)
    full = list(loader)
    loader.set_start(start)
    rest = list(loader)
    assert len(rest) == len(full) - start
    for a, b in zip(full[start:], rest):
        assert torch.equal(a.targets["sid"], b.targets["sid"]) and torch.equal(
            a.inputs["numeric"], b.inputs["numeric"]
        )
    assert len(list(loader)) == len(full)  # set_start applies to one iteration


def test_eval_shares_are_contiguous_and_unpadded(log_dir: Path) -> None:
    splits = _stream(log_dir, tasks=ID_TASK)
    parts = [
        torch.cat(
            [b.targets["sid"] for b in splits.train.eval_loader(splits.tasks, 100, num_replicas=3, rank=r)]
        )
        for r in range(3)
    ]
    assert torch.equal(torch.cat(parts), torch.arange(2300, dtype=torch.float32))
    chunks = list(splits.train.chunks(400, keep=["sample_id", "device"]))
    ids = np.concatenate([kept["sample_id"] for _, kept in chunks])
    assert np.array_equal(ids, np.arange(2300)) and all(len(i["numeric"]) <= 400 for i, _ in chunks)
    assert set(np.concatenate([kept["device"] for _, kept in chunks]).tolist()) <= {"android", "ios", "web"}


# ---------------------------------------------------------------------------------------------- training
def test_trainer_fits_and_evaluates_an_mmoe_on_a_stream(log_dir: Path, tmp_path: Path) -> None:
    from mtlkit.models import EmbeddingFrontEnd, mmoe

    impression_log(tmp_path / "val", 600, shard_rows=400, row_group_rows=200, seed=4)
    tasks = {k: TASKS[k] for k in ("ctr", "watch")}
    splits = tabular_stream(
        train=log_dir,
        val=tmp_path / "val",
        tasks=tasks,
        categorical=CAT,
        numeric=NUM,
        shuffle_buffer=500,
        num_workers=0,
    )
    torch.manual_seed(0)
    model = mmoe(None, splits.tasks, input_layer=lambda: EmbeddingFrontEnd(splits.input_spec, 4))
    trainer = mtlkit.Trainer(
        model, splits.tasks, progress=False, optimizer=lambda p: torch.optim.Adam(p, lr=0.01)
    )
    history = trainer.fit(splits.train, splits.val, epochs=2, batch_size=128)
    first, last = history[0]["train"], history[-1]["train"]
    assert last["watch"] < first["watch"]
    metrics = trainer.evaluate(splits.val)
    assert set(metrics) == {"ctr", "watch"} and 0.0 <= metrics["ctr"]["auc"] <= 1.0
    preds = trainer.predict(splits.val, batch_size=256)
    assert preds["ctr"].shape[0] == 600


# ---------------------------------------------------------------------------------------------- errors
def test_a_missing_column_names_the_file_and_the_closest_column(log_dir: Path) -> None:
    with pytest.raises(DataError, match=r"part-00000\.parquet.*'user_idd'.*user_id"):
        tabular_stream(train=log_dir, tasks=TASKS, categorical=["user_idd"], numeric=NUM)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_non_numeric_value_in_the_second_file_is_named(tmp_path: Path, workers: int) -> None:
    good = tmp_path / "a.csv"
    good.write_text("x,c,y\n1,a,0\n2,b,1\n3,a,1\n")
    bad = tmp_path / "b.csv"
    bad.write_text("x,c,y\n4,a,0\n5,b,1\nfive,a,1\n")
    spec = {"tasks": {"y": {"column": "y", "kind": "binary"}}, "categorical": ["c"], "numeric": ["x"]}
    with pytest.raises(DataError, match=r"b\.csv.*'x'.*'five'.*data row 3"):  # found by the fit pass
        tabular_stream(train=[good, bad], **spec)
    clean = tabular_stream(train=good, num_workers=0, **spec)
    stream = TabularStream(
        [good, bad],
        tasks=clean.tasks,
        labels=clean.train.encoder.labels,
        preprocessor=clean.preprocessor,
        num_workers=workers,
        shuffle_buffer=2,
    )
    with pytest.raises(DataError, match=r"b\.csv.*'x'.*'five'.*data row 3") as err:  # found when streaming
        list(stream.loader(clean.tasks, 2, seed=0))
    assert "Traceback" not in str(err.value)


def test_a_bad_label_is_named_with_its_file_and_row(tmp_path: Path) -> None:
    good = tmp_path / "a.csv"
    good.write_text("x,y\n1,0\n2,1\n")
    bad = tmp_path / "b.csv"
    bad.write_text("x,y\n4,0\n5,2\n")
    splits = tabular_stream(
        train=[good, bad], tasks={"y": {"column": "y", "kind": "binary"}}, numeric=["x"], num_workers=0
    )
    with pytest.raises(DataError, match=r"b\.csv.*'y'.*'2'.*data row 2.*0/1"):
        list(splits.train.eval_loader(splits.tasks, 10))


def test_fewer_rows_than_ranks_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "tiny.csv"
    f.write_text("x,y\n1,0\n2,1\n")
    splits = tabular_stream(
        train=f, tasks={"y": {"column": "y", "kind": "binary"}}, numeric=["x"], num_workers=0
    )
    with pytest.raises(DataError, match="2 row.*3 processes"):
        splits.train.loader(splits.tasks, 4, seed=0, num_replicas=3, rank=0)


def test_streams_refuse_per_task_schedules(log_dir: Path) -> None:
    splits = _stream(log_dir, tasks=ID_TASK)
    assert isinstance(splits.train, TabularStream)
    with pytest.raises(DataError, match="'alternating'.*joint"):
        splits.train.task_datasets(splits.tasks, schedule="alternating")


def test_unlabelled_rows_are_kept(tmp_path: Path) -> None:
    f = tmp_path / "d.csv"
    f.write_text("x,y,z\n1,0,\n2,,\n3,1,2.5\n4,,\n")
    splits = tabular_stream(
        train=f,
        tasks={"y": {"column": "y", "kind": "binary"}, "z": {"column": "z", "kind": "regression"}},
        numeric=["x"],
        num_workers=0,
    )
    (batch,) = list(splits.train.eval_loader(splits.tasks, 10))
    assert len(batch) == 4
    assert torch.isnan(batch.targets["y"][[1, 3]]).all() and batch.targets["y"][[0, 2]].tolist() == [0.0, 1.0]
    assert read_table(f, ["x"])["x"].shape == (4,)


def test_integer_multiclass_labels_get_the_classes_of_tabular(tmp_path: Path) -> None:
    f = tmp_path / "m.csv"
    f.write_text("x,k\n1,0\n2,2\n3, 1.0\n4,2\n")
    for spec in (
        {"column": "k", "kind": "multiclass"},
        {"column": "k", "kind": "multiclass", "num_classes": 5},
    ):
        streamed = tabular_stream(train=f, tasks={"k": spec}, numeric=["x"], num_workers=0)
        memory = tabular(train=str(f), tasks={"k": spec}, numeric=["x"])
        assert streamed.tasks == memory.tasks
        assert streamed.info["tasks"]["k"]["classes"] == memory.info["tasks"]["k"]["classes"]
        (batch,) = list(streamed.train.eval_loader(streamed.tasks, 10))
        _same(batch.targets["k"], memory.train.targets["k"])
        assert batch.targets["k"].tolist() == [0, 2, 1, 2]


def test_a_parquet_row_group_is_read_once_per_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    impression_log(tmp_path / "big", 1200, shard_rows=1200, row_group_rows=600, seed=1)
    splits = _stream(tmp_path / "big", tasks=ID_TASK, shuffle_buffer=50)  # 24 windows over 2 row groups
    reads = []
    original = pq.ParquetFile.read_row_group

    def counting(self, i, *args, **kwargs):
        reads.append(i)
        return original(self, i, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counting)
    loader = splits.train.loader(splits.tasks, 64, seed=0)
    assert sum(len(b) for b in loader) == 1200
    assert sorted(reads) == [0, 1]


@pytest.mark.parametrize("workers", [0, 2])
def test_iterating_leaves_the_global_generator_alone(log_dir: Path, workers: int) -> None:
    """Dropout draws from torch's global generator: a loader that drew from it too (the DataLoader's
    worker seed) would make a resumed epoch draw other dropout masks than the uninterrupted one."""
    splits = _stream(log_dir, tasks=ID_TASK, num_workers=workers)
    loader = splits.train.loader(splits.tasks, 500, seed=1)
    torch.manual_seed(3)
    before = torch.get_rng_state()
    assert len(list(loader)) == len(loader)
    loader.set_start(2)
    assert len(list(loader)) == len(loader) - 2
    assert torch.equal(torch.get_rng_state(), before)


def test_stream_batches_are_not_rechecked_but_a_bad_label_still_stops_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mtlkit.tasks import Task
    from mtlkit.training import Joint

    good = tmp_path / "a.csv"
    good.write_text("x,y\n" + "".join(f"{i},{i % 2}\n" for i in range(40)))
    bad = tmp_path / "b.csv"
    bad.write_text("x,y\n1,0\n2,1\n3,2\n4,0\n")
    spec = {"tasks": {"y": {"column": "y", "kind": "binary"}}, "numeric": ["x"], "num_workers": 0}
    clean = tabular_stream(train=good, **spec)
    assert Joint().bind(clean.train, clean.tasks, batch_size=8).validate is False  # encoded = validated
    calls = []
    check = Task.check_targets
    monkeypatch.setattr(
        Task, "check_targets", lambda self, *a, **kw: calls.append(1) or check(self, *a, **kw)
    )
    front = lambda: mtlkit.models.EmbeddingFrontEnd(clean.input_spec, 2)  # noqa: E731
    model = mtlkit.models.shared_bottom(
        None, clean.tasks, bottom_dims=(4,), tower_dims=(2,), input_layer=front
    )
    mtlkit.Trainer(model, clean.tasks, progress=False).fit(clean.train, epochs=1, batch_size=8)
    assert calls == []
    splits = tabular_stream(train=[good, bad], **spec)  # the label is found when its batch is encoded
    trainer = mtlkit.Trainer(model, splits.tasks, progress=False)
    with pytest.raises(DataError, match=r"b\.csv.*'y'.*'2'.*data row 3"):
        trainer.fit(splits.train, epochs=1, batch_size=8)


def test_a_task_without_any_label_in_the_training_files_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "d.csv"
    f.write_text("x,y,z\n1,0,\n2,1,NA\n3,1,\n4,0,nan\n")
    tasks = {"y": {"column": "y", "kind": "binary"}, "z": {"column": "z", "kind": "regression"}}
    message = (
        r"Task 'z' has no label in .*d\.csv \(training data, 4 rows\): every value of column 'z' is blank, NA "
        r"or NaN\. Fill in labels"
    )
    with pytest.raises(DataError, match=message):
        tabular_stream(train=f, tasks=tasks, numeric=["x"], num_workers=0)
    with pytest.raises(DataError, match=message):  # the fit pass stops early: the column alone is read
        tabular_stream(train=f, tasks=tasks, numeric=["x"], num_workers=0, fit_rows=1)
    g = tmp_path / "e.csv"
    g.write_text("x,y,z\n1,0,\n2,1,\n3,1,\n4,0,2.5\n")  # its only label after the fit rows
    splits = tabular_stream(train=[f, g], tasks=tasks, numeric=["x"], num_workers=0, fit_rows=1)
    assert splits.train.num_rows == 8
    saved = tmp_path / "pre.json"
    saved.write_text(json.dumps(splits.preprocessor.state_dict()))
    with pytest.raises(DataError, match=message):  # a given preprocessor: no fit pass
        tabular_stream(train=f, tasks=tasks, numeric=["x"], num_workers=0, preprocessor=saved)
