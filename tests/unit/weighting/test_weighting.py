"""Loss weightings and the backward entry point against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

import mtlkit
from mtlkit import Task
from mtlkit.errors import ShapeError, UnknownComponentError
from mtlkit.registries import WEIGHTINGS
from mtlkit.weighting import EqualWeighting, StaticWeighting, UncertaintyWeighting

TASKS = (Task(name="depth", kind="regression"), Task(name="seg", kind="multiclass", num_classes=3))


def test_equal_is_the_sum() -> None:
    losses = torch.tensor([1.5, 2.5])
    out = EqualWeighting(TASKS)(losses)
    assert out.total.item() == 4.0
    assert out.weights.tolist() == [1.0, 1.0]


def test_static_weights() -> None:
    w = StaticWeighting(TASKS, {"seg": 0.25})
    out = w(torch.tensor([2.0, 4.0]))
    assert out.total.item() == pytest.approx(2.0 + 1.0)
    with pytest.raises(UnknownComponentError, match="Unknown task in `weights` 'segg'. Did you mean 'seg'"):
        StaticWeighting(TASKS, {"segg": 1.0})
    with pytest.raises(ValueError, match="finite and >= 0"):
        StaticWeighting(TASKS, [1.0, -1.0])


def test_uncertainty_loss_and_gradients_equal_closed_form() -> None:
    uw = UncertaintyWeighting(TASKS).double()
    assert uw.forms == ("regression", "classification")
    s1, s2 = 0.3, -0.2
    with torch.no_grad():
        uw.log_vars.copy_(torch.tensor([s1, s2], dtype=torch.float64))
    L = torch.tensor([2.0, 3.0], dtype=torch.float64, requires_grad=True)
    out = uw(L)
    # Kendall et al. eq. 7/10 with s = log sigma^2: regression 0.5 e^-s L + 0.5 s; classification e^-s L + 0.5 s
    expected = 0.5 * math.exp(-s1) * 2.0 + 0.5 * s1 + math.exp(-s2) * 3.0 + 0.5 * s2
    assert out.total.item() == pytest.approx(expected, rel=1e-12)
    out.total.backward()
    g_s = uw.log_vars.grad.tolist()
    assert g_s[0] == pytest.approx(-0.5 * math.exp(-s1) * 2.0 + 0.5, rel=1e-12)
    assert g_s[1] == pytest.approx(-math.exp(-s2) * 3.0 + 0.5, rel=1e-12)
    assert L.grad.tolist() == pytest.approx([0.5 * math.exp(-s1), math.exp(-s2)], rel=1e-12)
    assert out.weights.tolist() == pytest.approx([0.5 * math.exp(-s1), math.exp(-s2)])


def test_uncertainty_ignores_absent_tasks_entirely() -> None:
    uw = UncertaintyWeighting(TASKS)
    out = uw(torch.tensor([2.0, 0.0]), present=torch.tensor([True, False]))
    out.total.backward()
    assert uw.log_vars.grad[1].item() == 0.0  # no 0.5*s drift while the task has no labels
    assert uw.log_vars.grad[0].item() != 0.0


def test_uncertainty_minimum_is_at_sigma_squared_equal_loss() -> None:
    """For a fixed loss, the optimum of 0.5 e^-s L + 0.5 s is s = log L (sigma^2 = L)."""
    uw = UncertaintyWeighting(["a"], forms={"a": "regression"})
    opt = torch.optim.SGD(uw.parameters(), lr=0.5)
    for _ in range(300):
        opt.zero_grad()
        uw(torch.tensor([4.0])).total.backward()
        opt.step()
    assert uw.log_vars.item() == pytest.approx(math.log(4.0), abs=1e-3)


def test_weighting_checks_loss_shape() -> None:
    with pytest.raises(
        ShapeError, match=r"expects `losses` of shape \(2,\) \(one per task: depth, seg\); got \(3,\)"
    ):
        EqualWeighting(TASKS)(torch.zeros(3))


def test_registry_builders() -> None:
    assert set(WEIGHTINGS.names()) >= {"equal", "static", "uncertainty"}
    uw = WEIGHTINGS.build("uncertainty", tasks=TASKS, form="regression")
    assert uw.forms == ("regression", "regression")


def test_backward_writes_grads_of_the_weighted_sum() -> None:
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    losses = {"depth": (w[0] * 3) ** 2, "seg": w[1] * 5}
    res = mtlkit.backward(losses, weighting=StaticWeighting(TASKS, [2.0, 0.5]))
    # d/dw0 2*(3w0)^2 = 36 w0 = 36; d/dw1 0.5*5 = 2.5
    assert w.grad.tolist() == pytest.approx([36.0, 2.5])
    assert res.total.item() == pytest.approx(2 * 9 + 0.5 * 10)
    assert res.losses.tolist() == pytest.approx([9.0, 10.0])


def test_backward_with_missing_task_in_dict() -> None:
    uw = UncertaintyWeighting(TASKS)
    p = torch.tensor(1.0, requires_grad=True)
    mtlkit.backward({"depth": p * 2}, weighting=uw)
    assert uw.log_vars.grad[1].item() == 0.0
    assert p.grad.item() == pytest.approx(0.5 * 2)
