"""The argument checker, the JSON writer, registry metadata and the one list of config sections."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from _helpers import REPO
from mtlkit._registry import Registry
from mtlkit._sections import SECTIONS
from mtlkit.argcheck import check_model_args, positive, positive_int, positive_ints, probability
from mtlkit.cli.main import _FAMILIES
from mtlkit.config.build import schedule_problems
from mtlkit.config.check import check_experiment, device_problem
from mtlkit.config.components import FAMILIES
from mtlkit.config.load import resolve
from mtlkit.config.schema import ExperimentConfig
from mtlkit.errors import ArgumentError, ConfigError
from mtlkit.jsonio import dumps, json_safe, write_json
from mtlkit.registries import AGGREGATORS, WEIGHTINGS
from mtlkit.weighting.gradnorm import GradNorm


def _refuse(name: str) -> None:
    raise AssertionError(f"non-standard JSON constant {name}")


# ---------------------------------------------------------------------------------------------- argcheck
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: positive_int("num_experts", 0), "num_experts must be an int >= 1; got 0."),
        (lambda: positive_int("num_experts", True), "num_experts must be an int >= 1; got True."),
        (lambda: positive_int("n", 2.0), "n must be an int >= 1; got 2.0."),
        (lambda: positive_ints("dims", [4, 0]), "dims must be a list of ints >= 1; got [4, 0]."),
        (lambda: positive_ints("dims", "16"), "dims must be a list of ints >= 1; got '16'."),
        (lambda: probability("dropout", 1.0), "dropout must be a probability in [0, 1); got 1.0."),
        (lambda: probability("dropout", math.nan), "dropout must be a probability in [0, 1); got nan."),
        (lambda: positive("lr", math.inf), "lr must be a finite number > 0; got inf."),
        (lambda: check_model_args("mmoe", num_experts=-1), "mmoe num_experts must be an int >= 1; got -1."),
        (
            lambda: check_model_args("x", num_task_experts={"a": 0}),
            "x num_task_experts.a must be an int >= 1",
        ),
    ],
)
def test_argument_checker_names_argument_constraint_and_value(call: Any, message: str) -> None:
    with pytest.raises(ArgumentError) as info:
        call()
    assert str(info.value).startswith(message)
    assert isinstance(info.value, ValueError)  # `except ValueError` keeps working


def test_argument_checker_accepts_valid_values() -> None:
    assert positive_int("n", 3) == 3 and positive_ints("d", (4, 2)) == [4, 2] and positive_ints("d", []) == []
    assert probability("p", 0.0) == 0.0 and positive("lr", 1e-3) == 1e-3
    check_model_args("mmoe", num_experts=2, expert_dims=[4], tower_dims=[], dropout=0.5, k=1)


# ---------------------------------------------------------------------------------------------- JSON
def test_json_writer_never_emits_nan_or_infinity(tmp_path: Path) -> None:
    data = {
        "nan": math.nan,
        "inf": -math.inf,
        "nested": [{"x": float("nan")}, (1.5, math.inf)],
        "tensor": torch.tensor([1.0, math.nan]),
        "path": tmp_path,
        "device": torch.device("cpu"),
        "ok": [1, True, None, "s"],
    }
    text = dumps(data)
    parsed = json.loads(text, parse_constant=_refuse)
    assert parsed["nan"] is None and parsed["inf"] is None
    assert parsed["nested"] == [{"x": None}, [1.5, None]]
    assert parsed["tensor"] == [1.0, None] and parsed["path"] == str(tmp_path) and parsed["device"] == "cpu"
    assert parsed["ok"] == [1, True, None, "s"]
    write_json(data, tmp_path / "a.json")
    assert json.loads((tmp_path / "a.json").read_text(), parse_constant=_refuse) == parsed
    assert json_safe(2.5) == 2.5 and json_safe(True) is True


def test_no_module_writes_json_without_the_writer() -> None:
    root = REPO / "src" / "mtlkit"
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if p.name != "jsonio.py"
        and "json.dump" in p.read_text(encoding="utf-8").replace("json.dumps(spec", "")
    ]
    assert offenders == ["experiment.py"] or offenders == []  # experiment.py: YAML round trip only
    text = (root / "experiment.py").read_text(encoding="utf-8")
    assert text.count("json.dump") <= 1 and "_json_default" not in text


# ---------------------------------------------------------------------------------------------- registry
def test_registry_entries_carry_class_summary_and_flags() -> None:
    entry = WEIGHTINGS.entry("gradnorm")
    assert entry.cls is GradNorm and entry.flags["requires_gradients"] is True
    assert entry.summary.startswith("GradNorm")
    assert AGGREGATORS.entry("pcgrad").flags.get("requires_all_tasks") is True
    for family in FAMILIES.values():
        for name in family.registry.names():
            e = family.registry.entry(name)
            assert e.name == name and e.builder is family.registry.get(name)
    # mtlkit's weightings and aggregators declare the class they build (tests may register others)
    for reg in (WEIGHTINGS, AGGREGATORS):
        ours = [n for n in reg.names() if reg.get(n).__module__.startswith("mtlkit.")]
        assert len(ours) >= 9 and all(reg.entry(n).cls is not None for n in ours)


def test_registry_never_guesses_the_class_from_annotations() -> None:
    reg: Registry = Registry("widget")

    @reg.register("plain")
    def plain() -> GradNorm:  # annotated, but not declared: no class, no flags
        """Plain."""
        raise NotImplementedError

    @reg.register("declared", cls=GradNorm, summary="Declared one.")
    def declared() -> Any:
        raise NotImplementedError

    assert reg.entry("plain").cls is None and reg.entry("plain").flags == {}
    assert reg.entry("declared").cls is GradNorm and reg.summary("declared") == "Declared one."
    reg.unregister("plain")
    assert "plain" not in reg


def test_an_undeclared_weighting_is_checked_on_the_built_object() -> None:
    @WEIGHTINGS.register("undeclared_gradnorm_for_test")
    def undeclared(tasks: Any) -> Any:
        """GradNorm without a declared class."""
        return GradNorm(tasks)

    try:
        raw = {
            "data": {"name": "synthetic_correlation", "n_train": 64, "n_val": 16, "n_test": 16, "dim": 4},
            "model": {"name": "shared_bottom", "bottom_dims": [4], "tower_dims": [2]},
            "weighting": {"name": "undeclared_gradnorm_for_test"},
            "schedule": {"name": "alternating"},
        }
        experiment = resolve(raw)  # no class declared: nothing guessed before building
        assert schedule_problems(experiment.config) == []
        with pytest.raises(ConfigError, match="schedule: Loss weighting GradNorm weighs the tasks"):
            check_experiment(experiment)
        raw["weighting"] = {"name": "gradnorm"}  # declared: refused before any data is built
        with pytest.raises(ConfigError, match="schedule: Loss weighting GradNorm weighs the tasks"):
            resolve(raw)
    finally:
        WEIGHTINGS.unregister("undeclared_gradnorm_for_test")


# ---------------------------------------------------------------------------------------------- sections
def test_the_section_list_generates_schema_families_and_cli_list() -> None:
    keys = [s.key for s in SECTIONS]
    assert list(FAMILIES) == keys
    fields = list(ExperimentConfig.model_fields)
    assert [f for f in fields if f in keys] == keys
    assert [f.family for f in FAMILIES.values()] == [s.family for s in SECTIONS]
    assert ("presets", *(s.family for s in SECTIONS), "reproductions") == _FAMILIES
    for s in SECTIONS:
        assert ExperimentConfig.model_fields[s.key].is_required() is s.required
    cfg = ExperimentConfig.model_validate({"data": {"name": "d"}, "model": {"name": "m"}})
    assert cfg.weighting == {"name": "equal"} and cfg.backbone is None
    cfg.optimizer["lr"] = 5.0  # defaults are copies, not shared
    assert ExperimentConfig.model_validate({"data": {}, "model": {}}).optimizer["lr"] == 1e-3


def test_device_problem_names_the_fix() -> None:
    assert device_problem("cpu") is None and device_problem("auto") is None
    if not torch.cuda.is_available():
        msg = device_problem("cuda:1")
        assert msg is not None and msg.startswith("trainer.device: 'cuda:1' is not available")
        assert "trainer.device=cpu" in msg
