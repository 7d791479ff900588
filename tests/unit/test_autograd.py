"""mtlkit.backward in gradient mode, checked against plain autograd on the same objective."""

from __future__ import annotations

import pytest
import torch

import mtlkit
from mtlkit import Task, Trainer
from mtlkit.aggregation import Aggregation, Aggregator, Mean, Sum
from mtlkit.errors import IncompatibleComponentsError
from mtlkit.registries import MODELS
from mtlkit.state import TrainState
from mtlkit.weighting import StaticWeighting, UncertaintyWeighting

TASKS = (Task(name="a", kind="regression"), Task(name="b", kind="binary"), Task(name="c", kind="regression"))


def setup(name: str = "shared_bottom", seed: int = 0):
    torch.manual_seed(seed)
    model = MODELS.build(name, input_dim=6, tasks=TASKS).double()
    x = torch.randn(16, 6, dtype=torch.float64)
    targets = {
        "a": torch.randn(16, dtype=torch.float64),
        "b": (torch.rand(16) > 0.5).double(),
        "c": torch.randn(16, dtype=torch.float64),
    }
    return model, x, targets


def grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def reference(model, x, targets, weights=(1.0, 1.0, 1.0)) -> list[torch.Tensor]:
    model.zero_grad()
    tl = mtlkit.task_losses(TASKS, model(x), targets)
    (torch.tensor(weights, dtype=torch.float64) * tl.losses).sum().backward()
    g = grads(model)
    model.zero_grad()
    return g


@pytest.mark.parametrize("name", ["shared_bottom", "mmoe", "omoe"])
@pytest.mark.parametrize("target", ["parameters", "representation"])
def test_sum_aggregator_equals_backprop_of_the_sum(name: str, target: str) -> None:
    model, x, targets = setup(name)
    want = reference(model, x, targets, (2.0, 0.5, 1.0))
    weighting = StaticWeighting(TASKS, [2.0, 0.5, 1.0])
    if target == "representation":
        out, _, rep = model.forward_parts(x, representation=True)
    else:
        rep, out = None, model(x)
    tl = mtlkit.task_losses(TASKS, out, targets)
    res = mtlkit.backward(tl.losses, weighting=weighting, aggregator=Sum(), model=model, representation=rep)
    for g, w in zip(grads(model), want):
        torch.testing.assert_close(g, w)
    assert res.weights.tolist() == [2.0, 0.5, 1.0]


def test_mean_aggregator_scales_shared_but_not_task_parameters() -> None:
    model, x, targets = setup()
    want = reference(model, x, targets)
    tl = mtlkit.task_losses(TASKS, model(x), targets)
    mtlkit.backward(tl.losses, aggregator=Mean(), model=model)
    shared = {id(p) for p in model.shared_parameters()}
    for p, w in zip(model.parameters(), want):
        expected = w / 3 if id(p) in shared else w
        torch.testing.assert_close(p.grad, expected)


def test_tasks_without_labels_are_left_out_of_the_aggregation() -> None:
    model, x, targets = setup()
    targets = {**targets, "b": torch.full((16,), float("nan"), dtype=torch.float64)}
    want = reference(model, x, {"a": targets["a"], "c": targets["c"]})
    tl = mtlkit.task_losses(TASKS, model(x), targets)
    res = mtlkit.backward(tl.losses, aggregator=Mean(), model=model, present=tl.present)
    shared = {id(p) for p in model.shared_parameters()}
    for p, w in zip(model.parameters(), want):
        expected = w / 2 if id(p) in shared else w  # mean over the 2 labelled tasks, not 3
        torch.testing.assert_close(p.grad if p.grad is not None else torch.zeros_like(p), expected)
    assert res.weights.tolist() == [0.5, 0.0, 0.5]


def test_learnable_weighting_gets_its_closed_form_gradient_in_gradient_mode() -> None:
    model, x, targets = setup()
    uw = UncertaintyWeighting(TASKS).double()
    with torch.no_grad():
        uw.log_vars.copy_(torch.tensor([0.2, -0.3, 0.1], dtype=torch.float64))
    tl = mtlkit.task_losses(TASKS, model(x), targets)
    L = tl.losses.detach()
    mtlkit.backward(tl.losses, weighting=uw, aggregator=Sum(), model=model)
    s = uw.log_vars.detach()
    scale = torch.tensor([0.5, 1.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(uw.log_vars.grad, -scale * torch.exp(-s) * L + 0.5)
    # model gradients: the weighted sum with weights scale * exp(-s)
    got = grads(model)
    want = reference(model, x, targets, tuple((scale * torch.exp(-s)).tolist()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_aux_losses_are_added_unweighted() -> None:
    model, x, targets = setup()
    penalty = lambda: sum((p**2).sum() for p in model.shared_parameters())  # noqa: E731
    model.zero_grad()
    tl = mtlkit.task_losses(TASKS, model(x), targets)
    (tl.losses.sum() + 0.1 * penalty()).backward()
    want = grads(model)
    for agg in (None, Sum()):
        model.zero_grad()
        tl = mtlkit.task_losses(TASKS, model(x), targets)
        mtlkit.backward(tl.losses, aggregator=agg, model=model, aux={"l2": 0.1 * penalty()})
        for g, w in zip(grads(model), want):
            torch.testing.assert_close(g, w)


class _LogMean(Aggregator):
    loss_transform = "log"

    def combine(self, jacobian: torch.Tensor, state: TrainState, rows: torch.Tensor) -> Aggregation:
        return Aggregation(jacobian.sum(0), None)


def test_log_loss_transform_scales_rows_by_inverse_loss() -> None:
    model, x, targets = setup()
    tl = mtlkit.task_losses(TASKS, model(x), targets)
    L = tl.losses.detach()
    want = reference(model, x, targets, tuple((1 / L).tolist()))  # d sum log L = sum dL / L
    tl = mtlkit.task_losses(TASKS, model(x), targets)
    mtlkit.backward(tl.losses, aggregator=_LogMean(), model=model)
    for g, w in zip(grads(model), want):
        torch.testing.assert_close(g, w)


def test_incompatible_combinations_are_refused_with_a_reason() -> None:
    single = MODELS.build("single_task", input_dim=6, tasks=TASKS)
    with pytest.raises(IncompatibleComponentsError, match="shares none.*Use a loss weighting"):
        Trainer(single, TASKS, aggregator=Mean(), progress=False)
    with pytest.raises(
        IncompatibleComponentsError, match="no single shared representation.*gradient_target='parameters'"
    ):
        Trainer(single, TASKS, aggregator=Mean(), gradient_target="representation", progress=False)
    sb = MODELS.build("shared_bottom", input_dim=6, tasks=TASKS)
    with pytest.raises(
        IncompatibleComponentsError, match="would be identical to gradient_target='parameters'"
    ):
        Trainer(sb, TASKS, gradient_target="representation", progress=False)
    with pytest.raises(IncompatibleComponentsError, match="shares none"):
        mtlkit.backward(torch.zeros(3, requires_grad=True), aggregator=Mean(), shared_params=[])


@pytest.mark.parametrize("target", ["parameters", "representation"])
def test_trainer_with_an_aggregator_trains(target: str) -> None:
    data = mtlkit.data.synthetic_correlation(600, 0.5, dim=8, seed=0)
    torch.manual_seed(0)
    model = MODELS.build("mmoe", input_dim=8, tasks=data.tasks, num_experts=3)
    t = Trainer(model, data.tasks, aggregator=Mean(), gradient_target=target, progress=False)
    before = t.evaluate(data)["y1"]["mse"]
    hist = t.fit(data, epochs=3, batch_size=64)
    assert t.evaluate(data)["y1"]["mse"] < before
    assert hist[-1]["weights"] == pytest.approx({"y1": 0.5, "y2": 0.5})


def test_a_workspace_reuses_the_jacobian_memory_and_changes_no_gradient() -> None:
    model, x, targets = setup("mmoe")
    weighting = StaticWeighting(TASKS, [2.0, 0.5, 1.0])
    ws = mtlkit.autograd.GradientWorkspace()
    seen = []

    class Spy(Aggregator):
        def combine(self, jacobian, state, rows):
            seen.append(jacobian.data_ptr())
            return Aggregation(jacobian.sum(0), torch.ones(jacobian.shape[0], dtype=jacobian.dtype))

    for tgts in (targets, targets, {**targets, "b": torch.full((16,), float("nan"), dtype=torch.float64)}):
        want = reference(model, x, {k: v for k, v in tgts.items() if not v.isnan().any()}, (2.0, 0.5, 1.0))
        for workspace in (None, ws):
            model.zero_grad(set_to_none=True)
            tl = mtlkit.task_losses(TASKS, model(x), tgts)
            mtlkit.backward(tl, weighting=weighting, aggregator=Spy(), model=model, workspace=workspace)
            for g, w in zip(grads(model), want):
                torch.testing.assert_close(g, w)
    # the three calls with the workspace (3, 3 and 2 rows) used the same memory
    assert seen[1] == seen[3] == seen[5]
    ws.clear()
    assert ws._buffer is None


def test_shared_gradients_add_to_existing_grads_and_are_independent_tensors() -> None:
    model, x, targets = setup()
    want = reference(model, x, targets)
    shared = model.shared_parameters()
    model.zero_grad(set_to_none=True)
    mtlkit.backward(mtlkit.task_losses(TASKS, model(x), targets), aggregator=Sum(), model=model)
    for p, w in zip(model.parameters(), want):
        torch.testing.assert_close(p.grad, w)
    # in-place work on one gradient (clipping, an optimizer) leaves the others alone
    before = [p.grad.clone() for p in shared]
    shared[0].grad.mul_(0.0)
    for p, b in zip(shared[1:], before[1:]):
        torch.testing.assert_close(p.grad, b)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
    # a second backward without zero_grad accumulates, as autograd does
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    mtlkit.backward(mtlkit.task_losses(TASKS, model(x), targets), aggregator=Sum(), model=model)
    for p, w in zip(model.parameters(), want):
        torch.testing.assert_close(p.grad, w + 1)


def test_a_parameter_owned_by_two_tasks_gets_both_gradients() -> None:
    torch.manual_seed(0)
    shared = torch.nn.Linear(4, 3).double()
    head_a, head_b = torch.nn.Linear(3, 1).double(), torch.nn.Linear(3, 1).double()
    both = torch.nn.Parameter(torch.tensor(0.3, dtype=torch.float64))  # used by both heads
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, dtype=torch.float64)

    def losses() -> list[torch.Tensor]:
        h = shared(x)
        return [((head_a(h).squeeze(1) * both - y) ** 2).mean(), ((head_b(h).squeeze(1) + both - y) ** 2).mean()]

    params = [*shared.parameters(), *head_a.parameters(), *head_b.parameters(), both]
    torch.stack(losses()).sum().backward()
    want = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    mtlkit.backward(
        losses(),
        aggregator=Sum(),
        shared_params=list(shared.parameters()),
        task_params=[[*head_a.parameters(), both], [*head_b.parameters(), both]],
    )
    for p, w in zip(params, want):
        torch.testing.assert_close(p.grad, w)
