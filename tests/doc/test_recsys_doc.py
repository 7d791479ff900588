"""The ranking YAML examples of README.md and docs/recsys.md are valid configs (validate's checks)."""

from __future__ import annotations

import re

import pytest
import yaml

from _helpers import REPO
from mtlkit.config.check import check_experiment
from mtlkit.config.load import resolve
from mtlkit.models import BiasTower, ScoreFusion


def _blocks(path: str) -> list[str]:
    text = (REPO / path).read_text()
    return [
        b for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S) if "bias_tower" in b or "fusion" in b
    ]


@pytest.mark.parametrize("path", ["README.md", "docs/recsys.md"])
def test_ranking_yaml_examples_validate(path: str) -> None:
    from mtlkit.config.build import build_model

    blocks = _blocks(path)
    assert blocks, path
    for block in blocks:
        raw = yaml.safe_load(block)
        raw.setdefault("data", {"name": "youtube_log"})
        raw["data"] = {**raw["data"], "train_slates": 50, "val_slates": 10, "test_slates": 10}
        model = raw["model"]
        if "bias_tower" in model:  # docs show a commented-out reference
            model["bias_tower"].pop("reference", None)
        experiment = resolve(raw)
        data = check_experiment(experiment)
        built = build_model(next(iter(experiment.variants.values())).model, next(iter(data.values())))
        if "fusion" in model:
            assert isinstance(built, ScoreFusion)
        if "bias_tower" in model:
            assert isinstance(built.base if isinstance(built, ScoreFusion) else built, BiasTower)
