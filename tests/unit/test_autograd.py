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
from mtlkit.weighting import EqualWeighting, StaticWeighting, UncertaintyWeighting

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
    assert ws.numel == 3 * sum(p.numel() for p in model.shared_parameters())
    ws.clear()
    assert ws.numel == 0


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
        return [
            ((head_a(h).squeeze(1) * both - y) ** 2).mean(),
            ((head_b(h).squeeze(1) + both - y) ** 2).mean(),
        ]

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


# ---------------------------------------------------------------------------------------------- stages
def _flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def test_stage1_rows_are_each_tasks_scaled_gradient_and_unlabelled_rows_are_zero() -> None:
    from mtlkit.autograd import task_gradients

    model, x, targets = setup("mmoe")
    tl = mtlkit.task_losses(TASKS, model(x), targets)
    shared = model.shared_parameters()
    own = [list(model.task_parameters(t.name)) for t in TASKS]
    scale = torch.tensor([2.0, 5.0, -0.5], dtype=torch.float64)
    jac, own_grads = task_gradients(tl.items, shared, [own[0], own[2]], [0, 2], [True, False], scale)
    want = torch.autograd.grad(tl.items[0], [*shared, *own[0]], retain_graph=True, allow_unused=True)
    torch.testing.assert_close(jac[0], 2.0 * _flat(want[: len(shared)]))
    for g, w in zip(own_grads[0], want[len(shared) :]):
        torch.testing.assert_close(g, 2.0 * w)
    assert jac.shape == (2, sum(p.numel() for p in shared))
    assert torch.count_nonzero(jac[1]) == 0 and own_grads[1] == [None] * len(own[2])


def test_stage2_the_identity_reduction_keeps_the_labelled_rows_unchanged() -> None:
    from mtlkit.distributed import GradientReduction

    red = GradientReduction()
    losses = torch.tensor([0.5, 1.0, 2.0])
    present = torch.tensor([True, False, True])
    assert red.global_losses(losses, None, present) == (losses, None, present, None)
    assert red.rows(present, 3) == ([0, 2], [True, True])
    assert red.rows(None, 3) == ([0, 1, 2], [True, True, True])
    jac = torch.randn(2, 4)
    out = red.reduce(jac, [[None], [None]], [[], []], losses, present, [0, 2])
    assert out.jacobian is jac and out.rows == [0, 2] and out.losses is losses and out.counts is None
    v = torch.randn(4)
    assert red.this_rank(v) is v


def test_stage3_combine_weighs_the_rows_then_aggregates() -> None:
    from mtlkit.autograd import combine, loss_weights
    from mtlkit.distributed import Reduced

    torch.manual_seed(0)
    jac = torch.randn(2, 5, dtype=torch.float64)
    own = [[torch.randn(3, dtype=torch.float64)], [None]]
    losses = torch.tensor([0.5, 4.0, 2.0], dtype=torch.float64)
    present = torch.tensor([True, False, True])
    weighting = StaticWeighting(TASKS, [2.0, 0.5, 3.0]).double()
    # weights known first (one process): folded into the rows by stage 1, so combine only aggregates
    early = loss_weights(losses, present, weighting, Mean(), None)
    assert early.scale.tolist() == [2.0, 0.5, 3.0] and early.weighted is not None
    out = combine(Reduced(jac.clone(), own, losses, present, None, [0, 2]), early, weighting, Mean(), None)
    torch.testing.assert_close(out.vector, jac.mean(0))
    torch.testing.assert_close(out.effective, torch.tensor([1.0, 0.0, 1.5], dtype=torch.float64))
    torch.testing.assert_close(out.aggregator_weights, torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64))
    # weights after the reduction: combine scales the rows (and the task gradients) itself
    red = Reduced(jac.clone(), [list(g) for g in own], losses, present, None, [0, 2])
    out = combine(red, None, weighting, Sum(), None)
    torch.testing.assert_close(out.vector, 2.0 * jac[0] + 3.0 * jac[1])
    torch.testing.assert_close(red.own[0][0], 2.0 * own[0][0])
    # the log transform: d log L = dL / L, applied once whichever way the weights come
    red = Reduced(jac.clone(), [[None], [None]], losses, present, None, [0, 2])
    out = combine(red, None, EqualWeighting(TASKS).double(), _LogMean(), None)
    torch.testing.assert_close(out.vector, jac[0] / 0.5 + jac[1] / 2.0)
    # no labelled task: nothing to write
    red = Reduced(jac[:0], [], losses, torch.zeros(3, dtype=torch.bool), None, [])
    assert combine(red, None, weighting, Sum(), None).vector is None


def test_stage4_writes_the_update_the_task_gradients_and_the_aux_loss() -> None:
    from mtlkit.autograd import Combined, write_gradients
    from mtlkit.distributed import GradientReduction, Reduced

    a = torch.nn.Parameter(torch.zeros(2, 3))
    b = torch.nn.Parameter(torch.zeros(4))
    head = torch.nn.Parameter(torch.ones(2))
    head.grad = torch.ones(2)  # accumulated onto, as autograd does
    weighting = EqualWeighting(TASKS)
    weighted = weighting(torch.ones(3), present=None, state=None)
    vector = torch.arange(10.0)
    aux = (b**2).sum() + b.sum()  # gradient 1 at b = 0
    combined = Combined(vector, weighted, torch.ones(3), None)
    reduced = Reduced(torch.zeros(1, 10), [[torch.full((2,), 3.0)]], torch.ones(3), None, None, [0])
    write_gradients(combined, reduced, weighting, [[head]], [a, b], None, aux, GradientReduction())
    torch.testing.assert_close(a.grad, vector[:6].view(2, 3))
    torch.testing.assert_close(b.grad, vector[6:] + 1.0)
    torch.testing.assert_close(head.grad, torch.full((2,), 4.0))
    a.grad.mul_(0.0)  # each .grad is its own view: clearing one leaves the others alone
    assert b.grad.abs().sum() > 0


def test_fused_reduction_gives_the_count_weighted_mean_over_ranks() -> None:
    """Two ranks simulated in one process: rank 1's buffer recorded, then added by rank 0's all-reduce."""
    from mtlkit.distributed import FusedReduction

    class FakeSync:
        world_size = 2

        def __init__(self, other=None):
            self.other, self.seen = other, None

        def sum_(self, buf):
            self.seen = buf.clone()
            return buf.add_(self.other) if self.other is not None else buf

    torch.manual_seed(0)
    g = [torch.randn(3, 4, dtype=torch.float64) for _ in range(2)]  # per rank, per task gradients
    h = [torch.randn(3, 2, dtype=torch.float64) for _ in range(2)]  # a task parameter per task
    L = [torch.tensor([0.3, 0.7, 0.0]), torch.tensor([0.5, 0.0, 0.0])]
    n = [torch.tensor([2.0, 3.0, 0.0]), torch.tensor([6.0, 0.0, 0.0])]  # task 2 labelled nowhere
    params = [[torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))] for _ in range(3)]

    def run(rank, sync):
        red = FusedReduction(sync, n[rank])
        losses = L[rank].double()
        red.global_losses(losses, None, None)
        rows, labelled = red.rows(None, 3)
        assert rows == [0, 1, 2] and labelled == (n[rank] > 0).tolist()
        scale = red.row_scale(losses)
        jac = g[rank] * scale[:, None]  # what stage 1 computes: rows scaled by the label counts
        own = [[h[rank][k] * scale[k] if labelled[k] else None] for k in range(3)]
        return red.reduce(jac, own, params, losses, None, rows)

    record = FakeSync()
    run(1, record)
    out = run(0, FakeSync(record.seen))
    total = n[0] + n[1]
    assert out.rows == [0, 1] and out.counts.tolist() == total.tolist()
    assert out.present.tolist() == [True, True, False]
    want_l = (n[0] * L[0] + n[1] * L[1])[:2] / total[:2]
    torch.testing.assert_close(out.losses[:2], want_l.double())
    for k in (0, 1):
        torch.testing.assert_close(out.jacobian[k], (n[0][k] * g[0][k] + n[1][k] * g[1][k]) / total[k])
        torch.testing.assert_close(out.own[k][0], (n[0][k] * h[0][k] + n[1][k] * h[1][k]) / total[k])
