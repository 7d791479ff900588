"""census-income's instance_weight as the sample weight (``sample_weight: true``), on fake files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from _datasets import write_fake_census
from mtlkit.data.census import COLUMNS, census_income


def _weights_of(folder: Path, name: str) -> np.ndarray:
    i = COLUMNS.index("instance_weight")
    lines = (folder / name).read_text().splitlines()
    return np.array([float(line.split(", ")[i]) for line in lines])


def test_instance_weight_becomes_both_tasks_sample_weight(tmp_path: Path) -> None:
    folder = write_fake_census(tmp_path / "census-income", n_train=120, n_test=41)
    plain = census_income(path=str(tmp_path), verify=False, cache=False)
    assert plain.train.weights is None and plain.info["sample_weight"] is None
    s = census_income(path=str(tmp_path), verify=False, cache=False, sample_weight=True)
    assert s.info["sample_weight"] == "instance_weight"
    w = s.train.weights
    assert w is not None and set(w) == {"income", "never_married"} and w["income"] is w["never_married"]
    # every training row is labelled in the fake file: the weights are the column, in file order
    assert len(s.train) == 120
    torch.testing.assert_close(
        w["income"].double(), torch.from_numpy(_weights_of(folder, "census-income.data"))
    )
    test_w = _weights_of(folder, "census-income.test")
    assert s.val.weights is not None and s.test.weights is not None
    got = sorted([*s.val.weights["income"].tolist(), *s.test.weights["income"].tolist()])
    assert got == sorted(test_w.tolist())
    # the features are unchanged: instance_weight is never an input
    torch.testing.assert_close(s.train.inputs["numeric"], plain.train.inputs["numeric"])
