"""Every balancing method trains the default preset (shrunk to seconds) end to end without NaN."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
from rich.console import Console

from mtlkit.config import apply_overrides, load_preset, resolve
from mtlkit.experiment import run_experiment
from mtlkit.registries import AGGREGATORS, WEIGHTINGS

EXTRA = {"static": ["weighting.weights={y1: 1.0, y2: 0.5}"]}
SMALL = [
    "seeds=[0]",
    "data.n_train=512",
    "data.n_val=128",
    "data.n_test=128",
    "trainer.epochs=3",
    "trainer.batch_size=64",
]


def run(tmp_path: Path, overrides: list[str]) -> dict:
    raw = load_preset("default")
    raw.pop("compare")
    raw.pop("baseline")
    exp = resolve(apply_overrides(raw, SMALL + overrides))
    result = run_experiment(exp, output_dir=tmp_path, console=Console(file=io.StringIO()), progress=False)
    (r,) = result.runs
    return r.metrics


def assert_finite(metrics: dict) -> None:
    for task, ms in metrics.items():
        for name, v in ms.items():
            assert math.isfinite(v), (task, name, v)


@pytest.mark.parametrize("name", WEIGHTINGS.names())
def test_every_loss_weighting_trains_the_default_preset(name: str, tmp_path: Path) -> None:
    assert_finite(run(tmp_path, [f"weighting.name={name}", *EXTRA.get(name, [])]))


@pytest.mark.parametrize("name", AGGREGATORS.names())
@pytest.mark.parametrize("target", ["parameters", "representation"])
def test_every_aggregator_trains_the_default_preset(name: str, target: str, tmp_path: Path) -> None:
    assert_finite(run(tmp_path, [f"aggregator.name={name}", f"trainer.gradient_target={target}"]))


def test_gradnorm_on_the_representation(tmp_path: Path) -> None:
    assert_finite(run(tmp_path, ["weighting.name=gradnorm", "trainer.gradient_target=representation"]))
