"""ESMM and AITM against independent computations; evaluation-only tasks (Task(train=False))."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mtlkit
from _helpers import param_ids as ids
from mtlkit import Task
from mtlkit.config import resolve
from mtlkit.data import Batch, MultiTaskDataset
from mtlkit.errors import ConfigError, IncompatibleComponentsError
from mtlkit.losses import task_losses
from mtlkit.metrics.collection import MultiTaskMetrics
from mtlkit.models import AITM, ESMM, AdaptiveInformationTransfer, MultiTaskModel, aitm, esmm, shared_bottom
from mtlkit.weighting import UncertaintyWeighting

ESMM_TASKS = (
    Task(name="ctr", kind="binary"),
    Task(name="ctcvr", kind="binary", logits=False),
    Task(name="cvr", kind="binary", logits=False, train=False),
)
CLICKED_TASKS = (
    Task(name="ctr", kind="binary"),
    Task(name="ctcvr", kind="binary", logits=False, train=False),
    Task(name="cvr", kind="binary", logits=False),
)
FUNNEL = (Task(name="click", kind="binary"), Task(name="cart", kind="binary"), Task(name="buy", kind="binary"))
SMALL_SB = {"name": "shared_bottom", "bottom_dims": [8], "tower_dims": [4]}
SMALL_MMOE = {"name": "mmoe", "num_experts": 3, "expert_dims": [6], "tower_dims": [4]}


def ctr_targets(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    click = (torch.rand(n, generator=g) < 0.5).float()
    conv = click * (torch.rand(n, generator=g) < 0.5).float()
    return {"ctr": click, "ctcvr": conv, "cvr": torch.where(click > 0, conv, torch.full_like(conv, math.nan))}


# ---------------------------------------------------------------------------------------------- ESMM outputs
@pytest.mark.parametrize("base", [SMALL_SB, SMALL_MMOE, {"name": "single_task", "hidden_dims": [5]}])
def test_esmm_ctcvr_is_exactly_ctr_times_cvr(base: dict) -> None:
    model = esmm(6, ESMM_TASKS, base=base)
    x = torch.randn(9, 6)
    out = model(x)
    assert set(out) == {"ctr", "cvr", "ctcvr"}
    raw = model.base(x)  # the base's two logits, computed on their own
    torch.testing.assert_close(out["ctr"], raw["ctr"], rtol=0, atol=0)
    assert torch.equal(out["cvr"], torch.sigmoid(raw["cvr"]))
    assert torch.equal(out["ctcvr"], torch.sigmoid(out["ctr"]) * out["cvr"])
    assert ((out["ctcvr"] <= out["cvr"]) & (out["ctcvr"] <= torch.sigmoid(out["ctr"]))).all()


def test_esmm_predictions_are_probabilities_for_every_output() -> None:
    model = esmm(6, ESMM_TASKS, base=SMALL_SB)
    trainer = mtlkit.Trainer(model, ESMM_TASKS, progress=False, device="cpu")
    x = torch.randn(7, 6)
    pred = trainer.predict(x)
    out = model(x)
    torch.testing.assert_close(pred["ctr"], torch.sigmoid(out["ctr"]).reshape(-1))
    torch.testing.assert_close(pred["cvr"], out["cvr"].reshape(-1))
    torch.testing.assert_close(pred["ctcvr"], pred["ctr"] * pred["cvr"])


# ---------------------------------------------------------------------------------------------- ESMM training
def reference_ctcvr_loss(model: ESMM, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """ESMM's CTCVR loss written out by hand from the shared-bottom base's modules (float64)."""
    base = model.base
    h = base.bottom.net.double()(x.double())
    a_ctr = base.towers["ctr"].net.double()(h).reshape(-1)
    a_cvr = base.towers["cvr"].net.double()(h).reshape(-1)
    p = (torch.sigmoid(a_ctr) * torch.sigmoid(a_cvr)).clamp(1e-7, 1 - 1e-7)
    return -(y * p.log() + (1 - y) * (1 - p).log()).mean()


def test_esmm_cvr_tower_is_trained_only_through_ctcvr() -> None:
    torch.manual_seed(0)
    model = esmm(6, ESMM_TASKS, base=SMALL_SB)
    x, targets = torch.randn(16, 6), ctr_targets(16)
    cvr_tower = list(model.base.towers["cvr"].parameters())
    # 1) the CTR loss never reaches the CVR tower
    out = model(x)
    loss_ctr, _ = ESMM_TASKS[0].compute_loss(out["ctr"], targets["ctr"])
    grads = torch.autograd.grad(loss_ctr, cvr_tower, allow_unused=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)
    # 2) a training step gives the CVR tower exactly the gradient of the CTCVR loss written by hand
    trainer = mtlkit.Trainer(model, ESMM_TASKS, progress=False, device="cpu", optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
    trainer.train_step(Batch(x, targets))
    got = [p.grad.clone() for p in cvr_tower]
    ref_model = model.double()
    want = torch.autograd.grad(reference_ctcvr_loss(ref_model, x, targets["ctcvr"].double()), cvr_tower)
    model.float()
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w.float(), rtol=1e-4, atol=1e-6)
    # 3) the (evaluation-only) cvr labels change nothing
    flipped = dict(targets, cvr=1 - targets["cvr"])
    trainer.train_step(Batch(x, flipped))
    for g, p in zip(got, cvr_tower):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)


def test_esmm_ownership_follows_the_trained_outputs() -> None:
    model = esmm(6, ESMM_TASKS, base=SMALL_MMOE)
    base = model.base
    ctr_part = ids(base.task_parameters("ctr"))  # ctr gate + ctr tower
    cvr_part = ids(base.task_parameters("cvr"))
    assert ids(model.task_parameters("ctcvr")) == cvr_part  # CVR tower: only ctcvr is trained through it
    assert model.task_parameters("ctr") == [] and model.task_parameters("cvr") == []
    assert ctr_part <= ids(model.shared_parameters())  # CTR tower feeds both trained losses
    base_model = esmm(6, CLICKED_TASKS, base=SMALL_MMOE)  # the paper's BASE: CVR trained on clicks
    assert ids(base_model.task_parameters("ctr")) == ids(base_model.base.task_parameters("ctr"))
    assert ids(base_model.task_parameters("cvr")) == ids(base_model.base.task_parameters("cvr"))
    assert base_model.task_parameters("ctcvr") == []
    both = ESMM(shared_bottom(6, [Task(name="ctr", kind="binary"), Task(name="cvr", kind="binary")]),
                trained=["ctr", "cvr", "ctcvr"])  # fmt: skip
    assert all(both.task_parameters(t) == [] for t in both.task_names)


def check_representation(model: MultiTaskModel, x: torch.Tensor, tasks, targets) -> None:
    """Every shared parameter lies before the representation, every task-owned one after it: the gradient of
    each trained loss w.r.t. the shared parameters, taken through the representation (chain rule),
    equals the direct gradient, and the owned parameters get none through it."""
    shared = [p for p in model.shared_parameters() if p.requires_grad]
    out, _, rep = model.forward_parts(x, representation=True)
    direct_out = model(x)
    for key in direct_out:  # the representation path's outputs == forward(x)
        torch.testing.assert_close(out[key], direct_out[key], rtol=1e-5, atol=1e-6)
    for task in tasks:
        if not task.train:
            continue
        loss, _ = task.compute_loss(out[task.output_key], targets[task.target_key])
        (g_rep,) = torch.autograd.grad(loss, rep, retain_graph=True)
        via = torch.autograd.grad(rep, shared, grad_outputs=g_rep, retain_graph=True, allow_unused=True)
        direct_loss, _ = task.compute_loss(direct_out[task.output_key], targets[task.target_key])
        direct = torch.autograd.grad(direct_loss, shared, retain_graph=True, allow_unused=True)
        for a, b in zip(via, direct):
            a = torch.zeros(()) if a is None else a
            b = torch.zeros(()) if b is None else b
            torch.testing.assert_close(torch.broadcast_to(a, torch.broadcast_shapes(a.shape, b.shape)),
                                       torch.broadcast_to(b, torch.broadcast_shapes(a.shape, b.shape)),
                                       rtol=1e-4, atol=1e-6)  # fmt: skip
        owned = [p for t in model.task_names for p in model.task_parameters(t)]
        if owned:
            back = torch.autograd.grad(rep, owned, grad_outputs=g_rep, retain_graph=True, allow_unused=True)
            assert all(g is None or torch.count_nonzero(g) == 0 for g in back)


@pytest.mark.parametrize("tasks", [ESMM_TASKS, CLICKED_TASKS], ids=["esmm", "clicked_cvr"])
@pytest.mark.parametrize("base", [SMALL_SB, SMALL_MMOE], ids=["shared_bottom", "mmoe"])
def test_esmm_representation_holds_every_shared_parameter(base: dict, tasks) -> None:
    model = esmm(6, tasks, base=base)
    assert model.has_representation
    check_representation(model, torch.randn(10, 6), tasks, ctr_targets(10))


def test_esmm_over_a_base_without_representation_refuses_representation_methods() -> None:
    model = esmm(6, ESMM_TASKS, base={"name": "single_task", "hidden_dims": [4]})
    assert not model.has_representation
    agg = mtlkit.aggregation.AGGREGATORS.build("pcgrad", tasks=ESMM_TASKS)
    with pytest.raises(IncompatibleComponentsError, match="no single shared representation"):
        mtlkit.Trainer(model, ESMM_TASKS, aggregator=agg, gradient_target="representation", progress=False)
    # on parameters it works: the CTR network is shared by the ctr and ctcvr losses
    assert ids(model.base.task_parameters("ctr")) <= ids(model.shared_parameters())
    trainer = mtlkit.Trainer(model, ESMM_TASKS, aggregator=agg, progress=False, device="cpu")
    trainer.train_step(Batch(torch.randn(8, 6), ctr_targets(8)))


def test_esmm_builder_validates_tasks_and_base() -> None:
    with pytest.raises(ValueError, match=r"declare it as Task\(name='ctcvr', kind='binary', logits=False\)"):
        esmm(6, (Task(name="ctr", kind="binary"), Task(name="ctcvr", kind="binary")))
    with pytest.raises(ValueError, match=r"declare it as Task\(name='ctr', kind='binary'\)"):
        esmm(6, (Task(name="ctr", kind="binary", logits=False),))
    with pytest.raises(ValueError, match="none of the tasks \\['click'\\] is its CTR task 'ctr'.*model.funnel.*ctr=/cvr=/ctcvr="):
        esmm(6, (Task(name="click", kind="binary"),))
    with pytest.raises(ValueError, match="base.num_expert: unknown parameter for model 'mmoe'. Did you mean 'num_experts'"):
        esmm(6, ESMM_TASKS, base={"name": "mmoe", "num_expert": 2})
    with pytest.raises(ValueError, match="not esmm itself"):
        esmm(6, ESMM_TASKS, base={"name": "esmm"})
    with pytest.raises(ValueError, match="the outputs 'ctr' .* and 'cvr'"):
        ESMM(shared_bottom(6, [Task(name="a", kind="binary"), Task(name="cvr", kind="binary")]))
    # renamed roles
    model = esmm(6, (Task(name="click", kind="binary"), Task(name="buy", kind="binary", logits=False)),
                 ctr="click", ctcvr="buy", cvr="buy_given_click", base="shared_bottom")  # fmt: skip
    assert set(model(torch.randn(3, 6))) == {"click", "buy", "buy_given_click"}


def test_nested_base_in_configs_is_validated_with_defaults() -> None:
    raw = {
        "data": {"name": "synthetic_ctr_cvr", "n_train": 64, "n_val": 16, "n_test": 16},
        "model": {"name": "esmm", "base": {"name": "mmoe", "num_experts": 4}},
    }
    cfg = resolve(raw).config
    assert cfg.model["base"]["name"] == "mmoe" and cfg.model["base"]["num_experts"] == 4
    assert list(cfg.model["base"]["expert_dims"]) == [16]  # the base's defaults are filled in
    assert resolve({**raw, "model": {"name": "esmm"}}).config.model["base"]["name"] == "shared_bottom"
    with pytest.raises(ConfigError) as info:
        resolve({**raw, "model": {"name": "esmm", "base": {"name": "mmoe", "num_expert": 4}}})
    assert any(
        p.startswith("model.base: base.num_expert: unknown parameter for model 'mmoe'. Did you mean 'num_experts'?")
        for p in info.value.problems
    )
    # a variant that renames the nested base replaces it (its old parameters do not leak in)
    exp = resolve({**raw, "compare": {"independent": {"model": {"base": {"name": "single_task"}}}, "mmoe": {}}})
    assert exp.variants["independent"].model["base"] == {
        "name": "single_task", "hidden_dims": (64, 32), "activation": "relu", "dropout": 0.0,
    }  # fmt: skip
    assert exp.variants["mmoe"].model["base"]["num_experts"] == 4


# ---------------------------------------------------------------------------------------------- evaluation-only tasks
def test_evaluation_only_task_has_no_loss_but_has_metrics() -> None:
    out = {"ctr": torch.randn(6, 1), "ctcvr": torch.rand(6, 1) * 0.5, "cvr": torch.rand(6, 1)}
    targets = ctr_targets(6, seed=3)
    tl = task_losses(ESMM_TASKS, out, targets)
    assert tl.losses[2].item() == 0.0 and tl.counts[2].item() == 0.0
    assert tl.present.tolist() == [True, True, False]
    want, n = ESMM_TASKS[2].compute_loss(out["cvr"], targets["cvr"])  # what it would be if trained
    assert n > 0 and want > 0
    metrics = MultiTaskMetrics(ESMM_TASKS)
    metrics.update(out, targets)
    res = metrics.compute()
    assert res["cvr"]["loss"] == pytest.approx(want.item(), rel=1e-6)  # evaluated on its labels
    with pytest.raises(ValueError, match="train must be True or False; got 'no'"):
        Task(name="x", kind="binary", train="no")  # type: ignore[arg-type]


def test_evaluation_only_task_counts_as_absent_for_weightings() -> None:
    model = esmm(6, ESMM_TASKS, base=SMALL_SB)
    weighting = UncertaintyWeighting(ESMM_TASKS)
    before = [p.detach().clone() for p in weighting.parameters()]
    data = MultiTaskDataset(torch.randn(64, 6), ctr_targets(64), tasks=ESMM_TASKS)
    trainer = mtlkit.Trainer(model, ESMM_TASKS, weighting=weighting, progress=False, device="cpu")
    history = trainer.fit(data, data, epochs=2, batch_size=16)
    (log_var,) = list(weighting.parameters())
    assert log_var[2] == before[0][2]  # cvr: never in the objective
    assert (log_var[:2] != before[0][:2]).all()
    assert math.isnan(history[-1]["train"]["cvr"]) and not math.isnan(history[-1]["train"]["ctcvr"])
    assert set(history[-1]["val"]["cvr"]) == {"loss", "auc", "accuracy", "logloss"}


# ---------------------------------------------------------------------------------------------- AITM
def test_ait_module_matches_a_per_sample_loop() -> None:
    torch.manual_seed(1)
    ait = AdaptiveInformationTransfer(5).double().requires_grad_(False)
    p, q = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    z, w = ait(p, q)
    W1, W2, W3 = ait.h1.weight, ait.h2.weight, ait.h3.weight
    for i in range(4):
        scores = [float((W2 @ u) @ (W3 @ u)) / math.sqrt(5) for u in (p[i], q[i])]
        e = [math.exp(s - max(scores)) for s in scores]
        weights = [v / sum(e) for v in e]
        want = weights[0] * (W1 @ p[i]) + weights[1] * (W1 @ q[i])
        torch.testing.assert_close(z[i], want)
        torch.testing.assert_close(w[i], torch.tensor(weights, dtype=torch.float64))


def test_aitm_forward_matches_a_reference_and_the_calibrator() -> None:
    torch.manual_seed(2)
    model = aitm(6, FUNNEL, tower_dims=(8, 4), alpha=0.6).double()
    x = torch.randn(10, 6, dtype=torch.float64)
    out = model(x)
    zs, z = [], None
    for t in ("click", "cart", "buy"):  # the funnel written out
        q = model.towers[t](x)
        z = q if z is None else model.ait[t](model.transfers[t](z), q)[0]
        zs.append(z)
    logits = [model.heads[t](zz) for t, zz in zip(("click", "cart", "buy"), zs)]
    for t, a in zip(("click", "cart", "buy"), logits):
        torch.testing.assert_close(out[t], a)
    probs = [torch.sigmoid(a).reshape(-1).detach() for a in logits]
    calib = sum(torch.clamp(probs[t] - probs[t - 1], min=0).mean().item() for t in (1, 2))
    assert model.forward_parts(x).aux["calibrator"].item() == pytest.approx(0.6 * calib, rel=1e-12)
    assert "calibrator" not in aitm(6, FUNNEL, tower_dims=(4,), alpha=0.0).forward_parts(x.float()).aux


def test_aitm_calibrator_hand_worked() -> None:
    model = aitm(3, FUNNEL[:2], tower_dims=(2,), alpha=0.5)
    with torch.no_grad():  # constant heads: p_click = sigmoid(0) = 0.5, p_cart = sigmoid(log 3) = 0.75
        for t, b in (("click", 0.0), ("cart", math.log(3.0))):
            model.heads[t].weight.zero_()
            model.heads[t].bias.fill_(b)
    aux = model.forward_parts(torch.randn(5, 3)).aux
    assert aux["calibrator"].item() == pytest.approx(0.5 * (0.75 - 0.5))
    with torch.no_grad():
        model.heads["cart"].bias.fill_(-1.0)  # later step less likely: no penalty
    assert model.forward_parts(torch.randn(5, 3)).aux["calibrator"].item() == 0.0


def test_aitm_information_flows_forward_only_and_ownership() -> None:
    model = aitm(6, FUNNEL, tower_dims=(4,))
    out = model(torch.randn(8, 6))
    click_tower = list(model.towers["click"].parameters())
    g = torch.autograd.grad(out["buy"].sum(), click_tower, retain_graph=True)
    assert all(torch.count_nonzero(t) > 0 for t in g)  # the last step learns through the first tower
    later = list(model.towers["buy"].parameters()) + list(model.ait["buy"].parameters())
    g = torch.autograd.grad(out["click"].sum(), later, retain_graph=True, allow_unused=True)
    assert all(t is None or torch.count_nonzero(t) == 0 for t in g)  # never backwards
    assert ids(model.task_parameters("click")) == ids(model.heads["click"].parameters())
    last = (model.towers["buy"], model.transfers["buy"], model.ait["buy"], model.heads["buy"])
    assert ids(model.task_parameters("buy")) == {id(p) for m in last for p in m.parameters()}
    gates = model.gates(torch.randn(8, 6))
    assert set(gates) == {"cart", "buy"}
    torch.testing.assert_close(gates["buy"].sum(1), torch.ones(8))
    check_representation(model, torch.randn(8, 6), FUNNEL, {t.name: torch.randint(0, 2, (8,)).float() for t in FUNNEL})


def test_aitm_trains_with_its_calibrator_added_to_the_objective() -> None:
    torch.manual_seed(3)
    model = aitm(6, FUNNEL[:2], tower_dims=(4,), alpha=0.6)
    x = torch.randn(12, 6)
    y = {"click": torch.ones(12), "cart": torch.ones(12)}
    trainer = mtlkit.Trainer(model, FUNNEL[:2], progress=False, device="cpu", optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
    step = trainer.train_step(Batch(x, y))
    got = [p.grad.clone() for p in model.parameters()]
    out, aux, _ = model.forward_parts(x)
    total = sum(F.binary_cross_entropy_with_logits(out[t].reshape(-1), y[t]) for t in ("click", "cart"))
    total = total + aux["calibrator"]
    want = torch.autograd.grad(total, list(model.parameters()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)
    assert set(step.aux) == {"calibrator"}


def test_aitm_rejects_what_it_cannot_model() -> None:
    with pytest.raises(ValueError, match=r"task 'y' is regression.*Task\(name='y', kind='binary'\)"):
        aitm(4, (FUNNEL[0], Task(name="y", kind="regression")))
    with pytest.raises(ValueError, match="with logits=False"):
        aitm(4, (FUNNEL[0], Task(name="y", kind="binary", logits=False)))
    with pytest.raises(ValueError, match="at least two tasks; got 1"):
        aitm(4, FUNNEL[:1])
    with pytest.raises(ValueError, match="`alpha` must be a float >= 0; got -1"):
        aitm(4, FUNNEL, alpha=-1)
    with pytest.raises(ValueError, match="transfers must be keyed by the tasks"):
        AITM({"a": nn.Identity(), "b": nn.Identity()}, {}, {"b": nn.Identity()}, {"a": nn.Identity(), "b": nn.Identity()})
