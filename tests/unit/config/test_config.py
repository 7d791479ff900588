"""Config loading, overrides, variants and error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlkit.config import apply_overrides, list_presets, load_config, load_preset, resolve
from mtlkit.config.load import merge_variant
from mtlkit.errors import ConfigError
from mtlkit.registries import MODELS

BASE = {
    "data": {"name": "synthetic_correlation", "n_train": 64, "n_val": 16, "n_test": 16, "dim": 8},
    "model": {"name": "mmoe", "num_experts": 2},
}


def problems_of(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        resolve(raw)
    return info.value.problems


def test_every_bundled_preset_validates() -> None:
    presets = list_presets()
    assert "default" in presets
    for name in presets:
        exp = resolve(load_preset(name), source=name)
        assert exp.variants


def test_default_preset_compares_four_models() -> None:
    exp = load_config()
    assert list(exp.variants) == ["single_task", "shared_bottom", "omoe", "mmoe"]
    assert exp.variants["shared_bottom"].model == {
        "name": "shared_bottom",
        "bottom_dims": [113],
        "tower_dims": [8],
        "activation": "relu",
        "dropout": 0.0,
    }
    assert exp.variants["mmoe"].model["num_experts"] == 8
    assert exp.config.data["correlation"] == 0.5


def test_defaults_are_filled_in_and_aliases_resolved() -> None:
    exp = resolve({**BASE, "model": {"name": "moe"}, "weighting": {"name": "uw"}})
    cfg = exp.variants["experiment"]
    assert cfg.model["name"] == "omoe" and cfg.model["num_experts"] == 8
    assert cfg.weighting == {"name": "uncertainty", "form": "auto", "init_log_var": 0.0}
    assert cfg.optimizer["name"] == "adam" and cfg.optimizer["lr"] == 1e-3


def test_all_problems_reported_at_once_with_paths_and_suggestions() -> None:
    raw = {
        **BASE,
        "model": {"name": "mmoe", "num_expert": 4, "dropout": "lots"},
        "trainr": {},
        "trainer": {"epochs": 0, "device": "gpu", "early_stopping": {"monitor": "loss", "patiense": 2}},
        "optimizer": {"name": "adamm"},
        "weighting": {"name": "equal", "alpha": 1},
    }
    problems = problems_of(raw)
    text = "\n".join(problems)
    assert "model.num_expert: unknown parameter for model 'mmoe'. Did you mean 'num_experts'?" in text
    assert "model.dropout: Input should be a valid number" in text and "got 'lots'" in text
    assert "trainr: unknown key. Did you mean 'trainer'?" in text
    assert "trainer.epochs: Input should be greater than 0; got 0." in text
    assert "trainer.device: must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'; got 'gpu'." in text
    assert "trainer.early_stopping.monitor: must look like '<task>/<metric>'" in text
    assert "trainer.early_stopping.patiense: unknown key. Did you mean 'patience'?" in text
    assert "optimizer.name: unknown optimizer 'adamm'. Did you mean 'adam'? Available: adagrad, adam" in text
    assert "weighting.alpha: unknown parameter for loss weighting 'equal'. Allowed: (none)." in text
    assert len(problems) == 9


def test_missing_sections_and_bad_types() -> None:
    problems = problems_of({"model": {"name": "mmoe"}, "data": "synthetic"})
    assert any(p.startswith("data: Input should be a valid dictionary") for p in problems)
    problems = problems_of({"data": {"name": "synthetic_correlation"}})
    assert "model: required key is missing." in problems
    problems = problems_of({**BASE, "model": {"num_experts": 3}})
    names = ", ".join(MODELS.names())  # every registered model, whichever exist
    assert problems == [
        f"model: must be a mapping with a 'name' key, one of: {names}; got {{'num_experts': 3}}."
    ]


def test_overrides_parse_yaml_values_and_rename_resets_section() -> None:
    raw = apply_overrides(
        BASE, ["model.num_experts=3", "trainer.epochs=2", "model.expert_dims=[4, 4]", "seeds=[1,2]"]
    )
    assert raw["model"] == {"name": "mmoe", "num_experts": 3, "expert_dims": [4, 4]}
    assert raw["trainer"] == {"epochs": 2} and raw["seeds"] == [1, 2]
    raw = apply_overrides(BASE, ["model.name=shared_bottom", "model.bottom_dims=[32]"])
    assert raw["model"] == {"name": "shared_bottom", "bottom_dims": [32]}
    with pytest.raises(ConfigError, match="overrides look like dotted.key=value"):
        apply_overrides(BASE, ["model.num_experts"])
    with pytest.raises(ConfigError, match=r"model.name: is 'mmoe', not a section"):
        apply_overrides(BASE, ["model.name.x=1"])


def test_variants_merge_and_replace_components() -> None:
    variant = merge_variant(
        {**BASE, "compare": {}}, {"model": {"name": "shared_bottom"}, "trainer": {"epochs": 3}}
    )
    assert variant["model"] == {"name": "shared_bottom"} and "compare" not in variant
    same = merge_variant(BASE, {"model": {"num_experts": 5}})
    assert same["model"] == {"name": "mmoe", "num_experts": 5}
    raw = {**BASE, "compare": {"a": {}, "b": {"model": {"name": "omoe", "towers": 3}}}, "baseline": "c"}
    problems = problems_of(raw)
    assert (
        "compare.b: model.towers: unknown parameter for model 'omoe'. Did you mean 'tower_dims'?"
        in problems[0]
    )
    assert any(p.startswith("baseline: 'c' is not a compare label") for p in problems)


def test_yaml_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: mmoe\ndata: [")
    with pytest.raises(ConfigError, match="invalid YAML at line"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="unknown preset 'defualt'. Did you mean 'default'"):
        load_config(preset="defualt")
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(lst)
