"""Per-task losses, transforms and sample weights from the tabular data section."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mtlkit.config import load_config
from mtlkit.config.build import build_data
from mtlkit.data.tabular import tabular
from mtlkit.errors import DataError

CSV = """city,age,clicked,watch,spend,w,wc
paris,31,1,120,10.5,1.0,2
rome,45,0,0,,0.5,1
paris,,1,3600,3.0,2.0,1
oslo,22,,15,7.25,1.5,1
rome,50,0,,4.0,0.0,3
paris,38,1,40,1.0,1.0,1
,29,0,2,2.5,3.0,1
oslo,41,1,900,0.0,1.0,1
"""


def _write(tmp_path: Path, text: str = CSV) -> str:
    p = tmp_path / "train.csv"
    p.write_text(text)
    return str(p)


def test_losses_transforms_and_weights_reach_the_tasks_and_the_batches(tmp_path: Path) -> None:
    s = tabular(
        train=_write(tmp_path),
        tasks={
            "click": {
                "column": "clicked",
                "kind": "binary",
                "loss": {"name": "focal", "gamma": 1.5},
                "weight_column": "wc",
            },
            "watch": {
                "column": "watch",
                "kind": "regression",
                "loss": {"name": "huber", "delta": 2.0},
                "transform": "log1p",
            },
            "spend": {"column": "spend", "kind": "regression", "transform": "standardise"},
        },
        categorical=["city"],
        numeric=["age"],
        weights={"column": "w"},
    )
    click, watch, spend = s.tasks
    assert click.loss.to_dict() == {"name": "focal", "gamma": 1.5, "alpha": None}
    assert watch.loss.name == "huber" and watch.transform.name == "log1p"
    labels = torch.tensor([10.5, 3.0, 7.25, 4.0, 1.0, 2.5, 0.0])
    assert spend.transform.mean == pytest.approx(float(labels.mean()))
    assert spend.transform.std == pytest.approx(float(labels.std(unbiased=False)))
    b = s.train.take(torch.arange(len(s.train)))
    assert b.weights is not None
    torch.testing.assert_close(b.weights["click"], torch.tensor([2.0, 1, 1, 1, 3, 1, 1, 1]))
    torch.testing.assert_close(b.weights["watch"], torch.tensor([1.0, 0.5, 2.0, 1.5, 0.0, 1.0, 3.0, 1.0]))
    assert b.weights["spend"] is b.weights["watch"]  # one column, one tensor
    assert s.info["weights"] == {"click": "wc", "watch": "w", "spend": "w"}
    # the loss the trainer computes: weighted huber on log1p of the labels
    pred = torch.zeros(8, 1)
    loss, n = watch.compute_loss(pred, b.targets["watch"], None, b.weights["watch"])
    assert float(n) == pytest.approx(1.0 + 0.5 + 2.0 + 1.5 + 1.0 + 3.0 + 1.0)  # the blank label is out
    y = b.targets["watch"]
    ok = ~torch.isnan(y)
    z = torch.log1p(y[ok])
    h = torch.where(z.abs() <= 2.0, 0.5 * z**2, 2.0 * (z.abs() - 1.0))
    w = b.weights["watch"][ok]
    assert float(loss) == pytest.approx(float((w * h).sum() / w.sum()), rel=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("10.5,1.0,2", "10.5,-1,2"),
            r"train.csv: the sample-weight column 'w' holds '-1' in data row 1; weights must be finite",
        ),
        (("10.5,1.0,2", "10.5,,2"), r"the sample-weight column 'w' holds no value in data row 1"),
        (("4.0,0.0,3", "4.0,x,3"), r"the sample-weight column 'w' holds 'x' in data row 5"),
    ],
)
def test_bad_weights_are_refused_naming_the_file_and_row(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    train = _write(tmp_path, CSV.replace(*change))
    with pytest.raises(DataError, match=message):
        tabular(
            train=train,
            tasks={"c": {"column": "clicked", "kind": "binary"}},
            numeric=["age"],
            weights={"column": "w"},
        )


def test_bad_task_options_are_data_errors_naming_the_task(tmp_path: Path) -> None:
    train = _write(tmp_path)
    with pytest.raises(DataError, match=r"tabular: tasks.c: loss: 'huber' applies to regression tasks"):
        tabular(
            train=train,
            tasks={"c": {"column": "clicked", "kind": "binary", "loss": "huber"}},
            numeric=["age"],
        )
    with pytest.raises(DataError, match=r"tabular: tasks.c: class_weights apply to multiclass tasks only"):
        tabular(
            train=train,
            tasks={"c": {"column": "clicked", "kind": "binary", "class_weights": [1, 2]}},
            numeric=["age"],
        )
    with pytest.raises(DataError, match=r"weight column\(s\) \['clicked'\] are also label columns"):
        tabular(
            train=train,
            tasks={"c": {"column": "clicked", "kind": "binary"}},
            numeric=["age"],
            weights={"column": "clicked"},
        )
    bad = _write(tmp_path, CSV.replace("oslo,22,,15", "oslo,22,,-15"))
    with pytest.raises(DataError, match=r"the poisson loss needs labels >= 0"):
        tabular(
            train=bad,
            tasks={"t": {"column": "watch", "kind": "regression", "loss": "poisson"}},
            numeric=["age"],
        )


def test_streaming_carries_sample_weights_as_the_in_memory_path(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    train = _write(tmp_path)
    tasks = {"c": {"column": "clicked", "kind": "binary"},
             "s": {"column": "spend", "kind": "regression", "weight_column": "wc"}}  # fmt: skip
    kw = {"train": train, "tasks": tasks, "numeric": ["age"], "weights": {"column": "w"}}
    memory = tabular(**kw, unknown_fraction=0.0)
    stream = tabular(**kw, streaming=True, num_workers=0, unknown_fraction=0.0)
    batches = list(stream.train.eval_loader(stream.tasks, 3))  # file order, every row
    got = {t: torch.cat([b.weights[t] for b in batches]) for t in ("c", "s")}
    # the CSV's 8 rows all have a label, so both paths hold the same rows in the same order
    assert torch.equal(got["c"], memory.train.weights["c"].float())
    assert torch.equal(got["s"], memory.train.weights["s"].float())
    assert got["c"].tolist() == [1.0, 0.5, 2.0, 1.5, 0.0, 1.0, 3.0, 1.0]  # the w column, by hand
    assert got["s"].tolist() == [2.0, 1.0, 1.0, 1.0, 3.0, 1.0, 1.0, 1.0]  # wc
    train_batch = next(iter(stream.train.loader(stream.tasks, 8, seed=0)))
    assert sorted(train_batch.weights["c"].tolist()) == sorted(got["c"].tolist())  # shuffled with its rows
    bad = _write(tmp_path, CSV.replace("oslo,41,1,900,0.0,1.0,1", "oslo,41,1,900,0.0,-1.0,1"))
    broken = tabular(train=bad, tasks=tasks, numeric=["age"], weights={"column": "w"}, streaming=True,
                     num_workers=0)  # fmt: skip
    with pytest.raises(DataError, match=r"sample-weight column 'w' holds '-1' in data row 8"):
        list(broken.train.eval_loader(broken.tasks, 4))


def test_streaming_refuses_standardise_clearly(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    train = _write(tmp_path)
    std = {"s": {"column": "spend", "kind": "regression", "transform": "standardise"}}
    with pytest.raises(DataError, match="tasks.s.transform: standardise is not supported with streaming"):
        tabular(train=train, tasks=std, numeric=["age"], streaming=True)
    ok = tabular(
        train=train,
        tasks={"s": {"column": "watch", "kind": "regression", "transform": "log1p"}},
        numeric=["age"],
        streaming=True,
    )
    assert ok.tasks[0].transform.name == "log1p"


def test_the_config_validates_the_new_keys(tmp_path: Path) -> None:
    from mtlkit.errors import ConfigError

    train = _write(tmp_path)
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        f"data:\n  name: csv\n  train: {train}\n  numeric: [age]\n  weights: {{column: w}}\n"
        "  tasks:\n    watch: {column: watch, kind: regression, transform: log1p, loss: {name: huber, delta: 1.0}}\n"
        "model: {name: shared_bottom}\n"
    )
    splits = build_data(load_config(cfg).config.data)
    assert splits.tasks[0].transform.name == "log1p" and math.isclose(
        splits.tasks[0].loss.params["delta"], 1.0
    )
    cfg.write_text(cfg.read_text().replace("transform: log1p", "transform: log2"))
    with pytest.raises(ConfigError, match=r"data.tasks.watch.transform"):
        load_config(cfg)
