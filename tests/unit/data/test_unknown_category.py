"""The unknown-category bucket (index 0) is trained, and prediction warns about rows that use it."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import mtlkit
from mtlkit.data import TensorBatchLoader
from mtlkit.data.preprocessing import UnknownCategoryDropout, UnknownCategoryWarning
from mtlkit.data.tabular import tabular
from mtlkit.errors import DataError
from mtlkit.models import shared_bottom
from mtlkit.models.backbones import embedding
from mtlkit.predict import Predictor

TASKS = {"click": {"column": "clicked", "kind": "binary"}}


def _train_file(tmp_path: Path, n: int = 200) -> str:
    rng = np.random.default_rng(0)
    cities, devices = ["paris", "rome", "oslo"], ["ios", "android"]
    lines = ["city,device,age,clicked"]
    for _ in range(n):  # every value known: no missing cell, nothing rare
        c, d, a = rng.choice(cities), rng.choice(devices), rng.normal(40, 10)
        lines.append(f"{c},{d},{a:.1f},{int(c == 'paris' or a > 45)}")
    p = tmp_path / "train.csv"
    p.write_text("\n".join(lines) + "\n")
    return str(p)


def _fit(tmp_path: Path, fraction: float) -> tuple[torch.Tensor, torch.Tensor, object, object]:
    data = tabular(
        train=_train_file(tmp_path), tasks=TASKS, categorical=["city", "device"], numeric=["age"],
        unknown_fraction=fraction,
    )  # fmt: skip
    torch.manual_seed(0)
    front = embedding(data.input_spec, embedding_dim=4)
    model = shared_bottom(None, data.tasks, bottom_dims=[8], tower_dims=[4], input_layer=front)
    unknown_rows = front.offsets.clone()  # index 0 of each column in the shared table
    before = front.table.weight.detach()[unknown_rows].clone()
    mtlkit.Trainer(model, data.tasks, seed=0).fit(data.train, epochs=3, batch_size=32)
    after = front.table.weight.detach()[unknown_rows].clone()
    return before, after, data, model


def test_the_unknown_embedding_row_is_trained_by_default(tmp_path: Path) -> None:
    before, after, data, _ = _fit(tmp_path, 0.01)
    assert (data.train.inputs["categorical"] > 0).all()  # no training row holds index 0 itself
    assert data.train.augment is not None and data.train.augment.fraction == 0.01
    assert data.val is None or data.val.augment is None
    assert (before - after).abs().amax(dim=1).min() > 0  # every column's unknown row moved
    # control: without the dropout nothing reaches the unknown rows (Adam, no weight decay)
    before0, after0, data0, _ = _fit(tmp_path, 0.0)
    assert data0.train.augment is None
    assert torch.equal(before0, after0)


def test_dropout_replaces_the_fraction_seeded_and_only_in_training_batches() -> None:
    codes = torch.randint(1, 5, (20000, 3))
    drop = UnknownCategoryDropout(0.01)
    out = drop({"categorical": codes, "numeric": torch.zeros(20000, 1)}, torch.Generator().manual_seed(1))
    zero = out["categorical"] == 0
    share = zero.float().mean().item()
    assert abs(share - 0.01) < 4 * (0.01 * 0.99 / codes.numel()) ** 0.5  # binomial: within 4 sigma
    assert torch.equal(out["categorical"][~zero], codes[~zero])  # everything else untouched
    again = drop({"categorical": codes}, torch.Generator().manual_seed(1))["categorical"]
    assert torch.equal(again, out["categorical"])  # seeded
    with pytest.raises(DataError, match=r"unknown_fraction must be a number in \[0, 1\); got 1.5"):
        UnknownCategoryDropout(1.5)


def test_loader_applies_the_dropout_to_training_batches_only(tmp_path: Path) -> None:
    data = tabular(
        train=_train_file(tmp_path), tasks=TASKS, categorical=["city", "device"], numeric=["age"],
        unknown_fraction=0.3,
    )  # fmt: skip
    train = TensorBatchLoader(data.train, 200, shuffle=True)
    evaluation = TensorBatchLoader(data.train, 200)
    assert (next(iter(train)).inputs["categorical"] == 0).any()
    assert not (next(iter(evaluation)).inputs["categorical"] == 0).any()


def test_predict_warns_with_the_rows_and_columns_that_hit_the_unknown_bucket(tmp_path: Path) -> None:
    _, _, data, model = _fit(tmp_path, 0.01)
    predictor = Predictor(
        model=model.eval(), tasks=data.tasks, input_spec=data.input_spec, preprocessor=data.preprocessor
    )
    known = {"city": ["rome", "oslo"], "device": ["ios", "ios"], "age": [30.0, 50.0]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known values: no warning
        predictor.predict(known)
    new = {"city": ["berlin", "rome", "lima", ""], "device": ["web", "ios", "ios", "ios"], "age": [30.0] * 4}
    with pytest.warns(UnknownCategoryWarning) as record:
        preds = predictor.predict(new)
    msg = str(record[0].message)
    assert (
        "2 of 4 rows hold categories not seen in training (values per column: 'city': 2, 'device': 1)" in msg
    )
    assert "1 rows have no known category in any column" in msg  # berlin + web
    assert "unknown-category embedding" in msg
    assert preds["click"].shape == (4,) and torch.isfinite(preds["click"]).all()
    # a missing value ("") is not counted as unseen
    per_column, rows = data.preprocessor.unseen_counts(
        {"city": ["", "rome"], "device": ["ios", "?"], "age": [1, 2]}
    )
    assert per_column == {"city": 0, "device": 0} and rows == 0
