"""Paired wins over seeds and the epoch-cap note, against hand computations, and in a real run."""

from __future__ import annotations

import io
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from mtlkit.experiment import run_experiment
from mtlkit.seed_report import cap_bound, cap_note, paired_wins, wins_markdown, wins_table


@dataclass
class _R:
    label: str
    seed: int
    epochs: int
    best_epoch: int | None
    history: list[dict[str, Any]] = field(default_factory=list)


def test_cap_bound_flags_runs_whose_best_epoch_is_the_cap() -> None:
    runs = [
        _R("a", 0, 30, 30),  # trained to the cap and still improving at its last epoch
        _R("a", 1, 30, 24),  # trained to the cap, best earlier: converged
        _R("b", 0, 12, 7),  # early stopping stopped it
        _R("b", 1, 10, 10),  # best = last, but stopped below the cap (another cap for b)
        _R("c", 0, 5, None, [{"epoch": e, "monitor": {"value": v}} for e, v in enumerate([3, 2, 1.5, 1.2, 1.0], 1)]),
        _R("c", 1, 5, None, [{"epoch": e, "monitor": {"value": v}} for e, v in enumerate([3, 2, 1.0, 1.2, 1.1], 1)]),
    ]
    assert cap_bound(runs, {"a": 30, "b": 12, "c": 5}) == ["a seed 0", "c seed 0"]
    assert cap_bound(runs, 10) == ["a seed 0", "b seed 1"]
    note = cap_note(["a seed 0"], 6, 30)
    assert "Epoch cap (30) binding in 1 of 6 runs" in note and "a seed 0" in note
    assert cap_note([], 6, 30) == ""


def _comparison() -> dict[str, Any]:
    # per-seed Δm (seeds 0..4) of three variants against a baseline
    vals = {"base": [0.0, 1.0, -1.0, 0.5, -0.5], "omoe": [5.0, -40.0, 6.0, 7.0, 1.0], "mmoe": [6.0, 8.0, 5.0, 9.0, 2.0]}
    return {
        "baseline": "base",
        "labels": {k: {"seeds": [0, 1, 2, 3, 4], "delta_m_values": v} for k, v in vals.items()},
    }


def test_paired_wins_against_hand_counts() -> None:
    wins = paired_wins(_comparison())
    assert wins is not None
    assert wins["wins"]["mmoe"]["omoe"] == (4, 5)  # seeds 0, 1, 3, 4 (omoe wins seed 2: 6 > 5)
    assert wins["wins"]["omoe"]["mmoe"] == (1, 5)
    assert wins["wins"]["mmoe"]["base"] == (5, 5)
    st = wins["labels"]["omoe"]
    assert (st["median"], st["min"], st["max"]) == (statistics.median([5, -40, 6, 7, 1]), -40.0, 7.0)
    text = io.StringIO()
    Console(file=text, width=80, color_system=None).print(wins_table(wins))
    assert "4/5" in text.getvalue() and "mmoe" in text.getvalue()
    md = wins_markdown(wins)
    assert "| mmoe | +6.0% [+2.0, +9.0] | 5/5 | 4/5 | — |" in md


def test_paired_wins_needs_per_seed_values_and_two_seeds() -> None:
    one = {"baseline": "a", "labels": {"a": {"seeds": [0], "delta_m_values": [0.0]}}}
    assert paired_wins(one) is None
    assert paired_wins({"baseline": None, "labels": {"a": {"seeds": [0, 1]}}}) is None


@pytest.mark.filterwarnings("ignore")
def test_run_output_says_when_the_epoch_cap_bound(tmp_path: Path) -> None:
    config = {
        "name": "cap",
        "seeds": [0, 1],
        "data": {"name": "synthetic_correlation", "n_train": 64, "n_val": 32, "n_test": 32, "dim": 6},
        "model": {"name": "shared_bottom", "bottom_dims": [8], "tower_dims": [4]},
        "optimizer": {"name": "adam", "lr": 0.001},
        "trainer": {"epochs": 1, "batch_size": 32, "early_stopping": {"monitor": "mean/loss", "patience": 2}},
        "compare": {"sb": {}, "st": {"model": {"name": "single_task", "hidden_dims": [8]}}},
        "baseline": "sb",
    }
    out = io.StringIO()
    result = run_experiment(config, output_dir=tmp_path, console=Console(file=out, width=200), progress=False)
    text = out.getvalue()
    # one epoch: every run's best epoch is its last, the cap
    assert "Epoch cap (1) binding in 4 of 4 runs" in text
    assert result.comparison["cap_bound"] == ["sb seed 0", "sb seed 1", "st seed 0", "st seed 1"]
    assert "beats st" in text and "Δm median" in text
    md = (result.run_dir / "comparison.md").read_text()
    assert "Epoch cap (1) binding" in md and "| sb |" in md and "beats sb" in md
    st = result.comparison["labels"]["st"]
    assert len(st["delta_m_values"]) == 2
    assert statistics.stdev(st["delta_m_values"]) == pytest.approx(st["delta_m_std"])
