"""The funnel YAML of README.md is the `funnel` preset's, and docs/recsys.md's resolves as a config."""

from __future__ import annotations

import re

import yaml

from _helpers import REPO
from mtlkit.config.load import load_preset, resolve


def _funnel_blocks(path: str) -> list[dict]:
    text = (REPO / path).read_text()
    return [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S) if "funnel:" in b]


def test_readme_shows_the_funnel_preset() -> None:
    (block,) = _funnel_blocks("README.md")
    preset = load_preset("funnel")
    assert block["model"] == preset["model"]
    assert block["data"] == preset["data"]
    assert block["backbone"] == preset["backbone"]


def test_the_recsys_funnel_example_is_a_valid_config() -> None:
    (block,) = _funnel_blocks("docs/recsys.md")
    cfg = resolve(block).config
    assert cfg.model["funnel"] == {"ctr": "click", "cvr": "purchase"}
    assert cfg.model["base"]["name"] == "mmoe"
