"""mtlkit.analysis: gate statistics against hand computations, and the plots' data."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import mtlkit
from mtlkit.analysis import (
    QUANTILE_LEVELS,
    GateStats,
    final_values,
    gate_statistics,
    gate_statistics_from_weights,
    plot_final_loss_histogram,
    plot_gate_distributions,
    plot_gate_means,
    plot_loss_curves,
    plot_weight_trajectories,
    reduce_gate,
    series,
    write_experiment_plots,
)
from mtlkit.errors import IncompatibleComponentsError, ShapeError
from mtlkit.models import MultiTaskModel

PNG = b"\x89PNG\r\n\x1a\n"

# four samples, three experts: one-hot, half/half, uniform, one-hot
FIXED = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.0, 0.0, 1.0]])


def test_fixed_gates_hand_computed() -> None:
    st = gate_statistics_from_weights({"a": FIXED}, bins=2)["a"]
    assert st.name == "a" and st.num_samples == 4 and st.num_experts == 3 and st.is_distribution
    torch.testing.assert_close(st.mean, torch.tensor([11 / 24, 5 / 24, 1 / 3], dtype=torch.float64))
    # per-sample entropies 0, ln 2, ln 3, 0
    assert st.entropy == pytest.approx(math.log(6) / 4)
    assert st.effective_experts == pytest.approx(6 ** (1 / 4))
    m = [11 / 24, 5 / 24, 1 / 3]
    assert st.marginal_entropy == pytest.approx(-sum(p * math.log(p) for p in m))
    assert st.marginal_effective_experts == pytest.approx(math.exp(st.marginal_entropy))
    # population std of expert 0's weights (1, 1/2, 1/3, 0)
    x0 = [1, 0.5, 1 / 3, 0]
    mu = sum(x0) / 4
    assert float(st.std[0]) == pytest.approx(math.sqrt(sum((v - mu) ** 2 for v in x0) / 4))
    # bins [0, .5), [.5, 1]: expert 0 -> {1/3, 0} and {1, .5}; expert 1 -> 3 and 1; expert 2 -> 3 and 1
    torch.testing.assert_close(st.bin_edges, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    assert st.counts.tolist() == [[2, 2], [3, 1], [3, 1]]
    ref = np.quantile(FIXED.double().numpy(), QUANTILE_LEVELS, axis=0)
    np.testing.assert_allclose(st.quantiles.numpy(), ref)


def test_extremes_of_entropy() -> None:
    one_hot = torch.eye(4)[torch.tensor([0, 1, 2, 3, 0])]
    st = gate_statistics_from_weights(one_hot)["gate"]
    assert st.entropy == 0.0 and st.effective_experts == 1.0
    assert st.marginal_effective_experts == pytest.approx(
        math.exp(-(0.4 * math.log(0.4) + 3 * 0.2 * math.log(0.2)))
    )
    uniform = torch.full((3, 5), 0.2)
    st = gate_statistics_from_weights(uniform)["gate"]
    assert st.effective_experts == pytest.approx(5.0) and st.marginal_effective_experts == pytest.approx(5.0)


def test_attention_maps_are_reduced_per_channel() -> None:
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(6, 3, 4, 5, generator=g) * 2  # sigmoid-like masks, here up to 2: not a distribution
    expect = torch.stack([torch.stack([maps[n, c].mean() for c in range(3)]) for n in range(6)])
    torch.testing.assert_close(reduce_gate(maps), expect)
    st = gate_statistics_from_weights({"att": maps}, bins=4)["att"]
    assert not st.is_distribution
    torch.testing.assert_close(st.mean, expect.double().mean(0))
    # entropy of each sample's channel profile normalised to sum 1
    p = expect.double() / expect.double().sum(1, keepdim=True)
    assert st.entropy == pytest.approx(float((-(p * p.log()).sum(1)).mean()))
    # values beyond 1: the histogram spans (min, max) and holds every sample
    assert float(st.bin_edges[0]) == pytest.approx(float(expect.min()))
    assert float(st.bin_edges[-1]) == pytest.approx(float(expect.max()))
    assert st.counts.sum(1).tolist() == [6, 6, 6]
    assert reduce_gate(torch.tensor([0.2, 0.8])).shape == (2, 1)


def test_value_range_clamps_into_edge_bins_and_negative_weights_have_no_entropy() -> None:
    w = torch.tensor([[-1.0, 2.0], [0.25, 0.75]])
    st = gate_statistics_from_weights(w, bins=2, value_range=(0.0, 1.0))["gate"]
    assert st.counts.tolist() == [[2, 0], [0, 2]]  # -1 -> first bin, 2 -> last bin
    assert st.entropy == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))  # the valid row
    st = gate_statistics_from_weights(torch.tensor([[-1.0, 2.0]]))["gate"]
    assert math.isnan(st.entropy) and math.isnan(st.effective_experts)


def test_gate_statistics_errors() -> None:
    with pytest.raises(ValueError, match="bins must be an int >= 1; got 0"):
        gate_statistics_from_weights(FIXED, bins=0)
    with pytest.raises(ShapeError, match=r"gates\(x\)\['g'\] must be a tensor with a batch dimension"):
        gate_statistics_from_weights({"g": torch.tensor(1.0)})
    with pytest.raises(ShapeError, match="gate 'g' has NaN or infinite values"):
        gate_statistics_from_weights({"g": torch.tensor([[math.nan, 1.0]])})
    with pytest.raises(IncompatibleComponentsError, match="Linear has no gates"):
        gate_statistics(nn.Linear(3, 2), torch.zeros(2, 3))
    data = mtlkit.data.synthetic_correlation(32, 0.5, dim=4)
    model = mtlkit.models.shared_bottom(4, data.tasks)
    with pytest.raises(IncompatibleComponentsError, match=r"SharedBottom.gates\(x\) returned no gates"):
        gate_statistics(model, data)


class FixedGates(MultiTaskModel):
    """Gates that are a known function of the input: softmax of the first 3 columns (task a) and of
    minus those (task b); counts its forward calls."""

    def __init__(self) -> None:
        super().__init__()
        self.task_names = ("a", "b")
        self.lin = nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"a": self.lin(x)[:, :1], "b": self.lin(x)[:, 1:]}

    def gates(self, x: Tensor) -> dict[str, Tensor]:
        self.calls += 1
        assert not self.training
        return {"a": torch.softmax(x[:, :3], -1), "b": torch.softmax(-x[:, :3], -1)}

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return []


def test_gate_statistics_over_data_equals_direct_computation() -> None:
    x = torch.randn(10, 4)
    model = FixedGates().train()
    stats = gate_statistics(model, x, batch_size=3, bins=5)
    assert model.calls == 4 and model.training  # 3 + 3 + 3 + 1 rows; training mode restored
    direct = gate_statistics_from_weights(
        {"a": torch.softmax(x[:, :3], -1), "b": torch.softmax(-x[:, :3], -1)}, bins=5
    )
    for name in ("a", "b"):
        got, want = stats[name], direct[name]
        torch.testing.assert_close(got.mean, want.mean, rtol=1e-6, atol=1e-7)
        assert got.counts.tolist() == want.counts.tolist()
        assert got.entropy == pytest.approx(want.entropy, rel=1e-6)
    # max_samples stops early; a dataset, a batch iterable and a dict of inputs all work
    few = gate_statistics(model, x, batch_size=4, max_samples=6)["a"]
    assert few.num_samples == 6
    torch.testing.assert_close(few.mean, torch.softmax(x[:6, :3], -1).double().mean(0), rtol=1e-6, atol=1e-7)


def test_gate_statistics_of_mmoe_on_a_dataset_and_a_loader() -> None:
    data = mtlkit.data.synthetic_correlation(96, 0.5, dim=6)
    model = mtlkit.models.mmoe(6, data.tasks, num_experts=3)
    with torch.no_grad():
        want = gate_statistics_from_weights(model.gates(data.inputs))
    for source in (data, mtlkit.data.TensorBatchLoader(data, 40, shuffle=False)):
        got = gate_statistics(model, source)
        assert list(got) == ["y1", "y2"]
        for name in got:
            torch.testing.assert_close(got[name].mean, want[name].mean, rtol=1e-5, atol=1e-6)
            assert got[name].counts.tolist() == want[name].counts.tolist()


def test_gate_stats_dict_round_trip() -> None:
    st = gate_statistics_from_weights({"a": FIXED})["a"]
    back = GateStats.from_dict(json.loads(json.dumps(st.to_dict())))
    assert back.name == "a" and back.counts.tolist() == st.counts.tolist()
    torch.testing.assert_close(back.quantiles, st.quantiles)
    assert back.entropy == st.entropy and back.is_distribution


# ---------------------------------------------------------------------------------------- plots


def _history(train: list[float], val: list[float], w: list[float]) -> list[dict]:
    return [
        {
            "epoch": i + 1,
            "train": {"y1": t, "y2": 2 * t},
            "val": {"y1": {"loss": v, "mse": v}, "y2": {"loss": 2 * v, "mse": 2 * v}},
            "weights": {"y1": a, "y2": 1 - a},
        }
        for i, (t, v, a) in enumerate(zip(train, val, w))
    ]


HIST = {
    "A": [
        _history([3.0, 2.0, 1.0], [3.5, 2.5, 2.0], [0.5, 0.6, 0.7]),
        _history([5.0, 4.0], [5.5, 4.5], [0.5, 0.4]),
    ],
    "B": [_history([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5])],
}


def _line(ax, label: str):
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == label]
    return line


def test_series_mean_and_std_over_ragged_seeds() -> None:
    x, values, mean, std = series(HIST["A"], lambda r: r["train"]["y1"])
    assert x.tolist() == [1, 2, 3]
    np.testing.assert_array_equal(values, [[3.0, 2.0, 1.0], [5.0, 4.0, np.nan]])
    np.testing.assert_allclose(mean, [4.0, 3.0, 1.0])  # epoch 3: only the first seed
    np.testing.assert_allclose(std[:2], [math.sqrt(2), math.sqrt(2)])
    assert math.isnan(std[2])


def test_loss_curves_plot_the_input(tmp_path: Path) -> None:
    fig = plot_loss_curves(HIST, path=tmp_path / "curves.png", show_seeds=True)
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG
    ax1, ax2 = fig.axes[:2]
    assert ax1.get_title() == "y1" and ax2.get_title() == "y2"
    train = _line(ax1, "A train")
    assert list(train.get_xdata()) == [1, 2, 3] and train.get_linestyle() == "-"
    np.testing.assert_allclose(train.get_ydata(), [4.0, 3.0, 1.0])
    val = _line(ax2, "A val")
    np.testing.assert_allclose(val.get_ydata(), [2 * 4.5, 2 * 3.5, 2 * 2.0])
    assert val.get_linestyle() == "--"
    np.testing.assert_allclose(_line(ax1, "B train").get_ydata(), [1.0, 1.0, 1.0])
    # show_seeds: the two seeds of A, thin; B has one seed and no extra line
    seeds = [ln for ln in ax1.get_lines() if ln.get_label() == "_nolegend_" and ln.get_linestyle() == "-"]
    assert sorted(list(ln.get_ydata()[:2]) for ln in seeds) == [[3.0, 2.0], [5.0, 4.0]]
    # a validation metric: no training curve
    fig = plot_loss_curves(HIST, metric="mse", tasks=["y2"])
    assert [ln.get_label() for ln in fig.axes[0].get_lines()] == ["A val", "B val"]


def test_weight_trajectories_plot_the_input() -> None:
    fig = plot_weight_trajectories(HIST)
    ax_a, ax_b = fig.axes[:2]
    assert ax_a.get_title() == "A"
    np.testing.assert_allclose(_line(ax_a, "y1").get_ydata(), [0.5, 0.5, 0.7])
    np.testing.assert_allclose(_line(ax_a, "y2").get_ydata(), [0.5, 0.5, 0.3])
    np.testing.assert_allclose(_line(ax_b, "y1").get_ydata(), [0.5, 0.5, 0.5])


def test_gate_plots_show_the_statistics(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    stats = gate_statistics_from_weights(
        {"a": torch.softmax(torch.randn(50, 3, generator=g), -1), "b": FIXED}, bins=4
    )
    fig = plot_gate_distributions(stats, path=tmp_path / "box.png")
    assert (tmp_path / "box.png").read_bytes()[:8] == PNG
    for ax, st in zip(fig.axes, stats.values()):
        lines = [tuple(ln.get_ydata()) for ln in ax.get_lines()]
        for e in range(st.num_experts):
            med = float(st.quantiles[QUANTILE_LEVELS.index(0.5), e])
            assert (pytest.approx(med), pytest.approx(med)) in lines
    # histograms from the dict form (as read back from gates.json)
    fig = plot_gate_distributions({k: v.to_dict() for k, v in stats.items()}, kind="hist")
    patches = {p.get_label(): p for p in fig.axes[1].patches}
    values, edges, _ = patches["expert 0"].get_data()
    np.testing.assert_allclose(values, np.array([1, 1, 1, 1]) / 4)  # expert 0 of FIXED: 0, 1/3, .5, 1
    np.testing.assert_allclose(edges, [0, 0.25, 0.5, 0.75, 1])
    with pytest.raises(ValueError, match="kind must be 'box' or 'hist'; got 'pie'"):
        plot_gate_distributions(stats, kind="pie")
    fig = plot_gate_means(stats)
    np.testing.assert_allclose(
        fig.axes[0].get_images()[0].get_array(), np.stack([s.mean.numpy() for s in stats.values()])
    )


def test_final_loss_histogram(tmp_path: Path) -> None:
    finals = final_values(HIST)
    assert finals == {
        "A": [pytest.approx(1.5), pytest.approx(6.0)],
        "B": [pytest.approx(1.5)],
    }  # mean of y1, y2
    assert final_values(HIST, task="y2", split="val", metric="mse") == {"A": [4.0, 9.0], "B": [2.0]}
    fig = plot_final_loss_histogram({"A": [1.0, 2.0, 4.0, 4.0, math.nan], "B": [3.0]}, bins=3, strip_max_runs=0)
    patches = {p.get_label(): p for p in fig.axes[0].patches}
    values, edges, _ = patches["A"].get_data()
    np.testing.assert_allclose(edges, [1, 2, 3, 4])
    assert values.tolist() == [1, 1, 2]  # [1,2): 1.0; [2,3): 2.0; [3,4]: 4.0 twice; NaN left out
    assert patches["B"].get_data()[0].tolist() == [0, 0, 1]
    assert fig.axes[0].get_legend() is None  # one row per model, named on the y axis
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["A", "B"]
    # few runs per model (the default): every run a dot in its model's row
    fig = plot_final_loss_histogram({"A": [1.0, 2.0, math.nan], "B": [3.0]})
    dots = {c.get_label(): np.asarray(c.get_offsets())[:, 0].tolist() for c in fig.axes[0].collections}
    assert sorted(dots["A"]) == [1.0, 2.0] and dots["B"] == [3.0]
    with pytest.raises(ValueError, match="needs at least one finite value"):
        plot_final_loss_histogram({"A": [math.nan]})


def test_write_experiment_plots(tmp_path: Path) -> None:
    paths = write_experiment_plots(tmp_path / "plots", HIST, title="demo")
    assert sorted(p.name for p in paths.values()) == ["final_loss.png", "loss_curves.png", "weights.png"]
    for p in paths.values():
        data = p.read_bytes()
        assert data[:8] == PNG and len(data) > 1000


def test_missing_matplotlib_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match=r"Plotting needs matplotlib: pip install 'mtlkit\[plot\]'"):
        plot_loss_curves(HIST)


def test_custom_reduce_for_spatial_maps() -> None:
    maps = torch.rand(5, 4, 6)  # (N, H, W) spatial attention, no channel axis
    mean_attention = lambda g: g.flatten(1).mean(1, keepdim=True)  # noqa: E731
    st = gate_statistics_from_weights({"t/block0": maps}, reduce=mean_attention)["t/block0"]
    assert st.num_experts == 1
    torch.testing.assert_close(st.mean, maps.double().mean((1, 2)).mean().reshape(1))
    model = FixedGates()
    st = gate_statistics(model, torch.randn(7, 4), reduce=lambda g: g[:, :2], batch_size=3)["a"]
    assert st.num_experts == 2 and st.num_samples == 7
    with pytest.raises(
        ShapeError, match=r"reduce must map gate 'g' \(5, 4, 6\) to \(N, E\) = \(5, E\); got \(5,\)"
    ):
        gate_statistics_from_weights({"g": maps}, reduce=lambda g: g.flatten(1).mean(1))
