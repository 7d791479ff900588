"""One property suite run on every registered architecture (timm/sklearn style).

A new model is tested by registering it. Models whose builder needs more than flat features and
the default tasks add an entry to ``CASES`` in ``tests/_architectures.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import mtlkit
from _architectures import N, build
from _helpers import assert_rel_close
from mtlkit.data import Batch
from mtlkit.errors import IncompatibleComponentsError, UnknownComponentError
from mtlkit.registries import MODELS


def predictions(model: nn.Module, x: Any) -> dict[str, torch.Tensor]:
    return model(x)


@pytest.mark.parametrize("name", MODELS.names())
def test_outputs_cover_every_task_with_its_shape(name: str) -> None:
    model, case = build(name)
    gen = torch.Generator().manual_seed(1)
    out = predictions(model, case.inputs(N, gen))
    for t in case.tasks:
        assert t.output_key in out, f"{name}: no output for task {t.name}"
        o = out[t.output_key]
        assert o.shape[0] == N and o.numel() == N * t.output_dim
        assert torch.isfinite(o).all()


@pytest.mark.parametrize("name", MODELS.names())
def test_shared_and_task_parameters_are_disjoint_and_complete(name: str) -> None:
    model, _ = build(name)
    all_ids = [id(p) for p in model.parameters()]
    shared = [id(p) for p in model.shared_parameters()]
    owned = [id(p) for t in model.task_names for p in model.task_parameters(t)]
    assert len(owned) == len(set(owned)), "a parameter is owned by two tasks"
    assert len(shared) == len(set(shared))
    assert not set(owned) & set(shared), "a parameter is both shared and owned by a task"
    assert sorted(owned + shared) == sorted(all_ids), "some parameter is neither shared nor owned"
    with pytest.raises(UnknownComponentError, match="Unknown task 'nope'"):
        model.task_parameters("nope")


@pytest.mark.parametrize("name", MODELS.names())
def test_a_task_loss_never_reaches_another_tasks_parameters(name: str) -> None:
    model, case = build(name)
    gen = torch.Generator().manual_seed(2)
    out = predictions(model, case.inputs(N, gen))
    by_output = {t.output_key: t.name for t in case.tasks if t.train}  # evaluation-only tasks have no loss
    for key, o in out.items():
        if key not in by_output:
            continue
        model.zero_grad(set_to_none=True)
        o.float().sum().backward(retain_graph=True)
        for other in model.task_names:
            if other == by_output[key]:
                continue
            for p in model.task_parameters(other):
                assert p.grad is None or torch.count_nonzero(p.grad) == 0, (
                    f"{name}: the output {key!r} reaches parameters of task {other!r}"
                )


@pytest.mark.parametrize("name", MODELS.names())
def test_state_dict_round_trip(name: str) -> None:
    model, case = build(name, seed=0)
    clone, _ = build(name, seed=1)
    clone.load_state_dict(model.state_dict())
    model.eval()
    clone.eval()
    x = case.inputs(5, torch.Generator().manual_seed(3))
    a, b = predictions(model, x), predictions(clone, x)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


@pytest.mark.parametrize("name", MODELS.names())
def test_gates_are_tensors_over_the_batch(name: str) -> None:
    model, case = build(name)
    gates = model.gates(case.inputs(N, torch.Generator().manual_seed(4)))
    assert isinstance(gates, dict)
    for key, g in gates.items():
        assert isinstance(g, torch.Tensor) and g.shape[0] == N, f"{name}: gate {key!r}"
        assert torch.isfinite(g).all()


@pytest.mark.parametrize(
    "setup",
    ["uncertainty", "mgda", "pcgrad@representation"],
)
@pytest.mark.parametrize("name", MODELS.names())
def test_trains_with_missing_labels_and_any_balancing(name: str, setup: str) -> None:
    model, case = build(name)
    gen = torch.Generator().manual_seed(5)
    batches = [Batch(case.inputs(N, gen), case.targets(case.tasks, N, gen)) for _ in range(3)]
    method, _, target = setup.partition("@")
    kwargs: dict[str, Any] = {"progress": False, "device": "cpu"}
    if method == "uncertainty":
        kwargs["weighting"] = mtlkit.weighting.UncertaintyWeighting(case.tasks)
    else:
        kwargs["aggregator"] = mtlkit.aggregation.AGGREGATORS.build(method, tasks=case.tasks)
        kwargs["gradient_target"] = target or "parameters"
    shares = any(p.requires_grad for p in model.shared_parameters())
    has_rep = model.has_representation
    if method != "uncertainty" and (not shares or (target == "representation" and not has_rep)):
        # refused at construction, saying why and what to use instead
        with pytest.raises(IncompatibleComponentsError, match="Use"):
            mtlkit.Trainer(model, case.tasks, **kwargs)
        return
    trainer = mtlkit.Trainer(model, case.tasks, **kwargs)
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit(batches, epochs=2)
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after)), f"{name}: nothing was trained"
    metrics = trainer.evaluate(batches)
    assert set(metrics) == {t.name for t in case.tasks}


def _double(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.double() if x.is_floating_point() else x
    return {k: _double(v) for k, v in x.items()}


def _objective(outputs: dict[str, torch.Tensor], aux: dict[str, torch.Tensor]) -> torch.Tensor:
    """A fixed random projection of every output (the same one for both paths), plus the aux losses."""
    gen = torch.Generator().manual_seed(11)
    total = torch.zeros((), dtype=torch.float64)
    for key in sorted(outputs):
        o = outputs[key]
        total = total + (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
    return total + sum(aux[k] for k in sorted(aux))


@pytest.mark.parametrize("name", MODELS.names())
def test_forward_parts_equals_the_forward_and_the_representation_path_the_plain_path(name: str) -> None:
    """For every model: ``forward_parts(x).outputs == model(x)``; the representation path (what
    gradient-level methods run) gives the plain path's outputs, auxiliary losses and parameter
    gradients (float64); it returns a representation exactly when the model says it has one, and
    the outputs depend on the parameters only through it and the task-owned modules."""
    model, case = build(name)
    model.double()
    x = _double(case.inputs(N, torch.Generator().manual_seed(6)))
    out = model(x)
    plain = model.forward_parts(x)
    assert isinstance(plain, mtlkit.models.ForwardParts) and plain.representation is None
    assert set(plain.outputs) == set(out)
    for key in out:
        assert_rel_close(plain.outputs[key], out[key], f"{name}: forward_parts(x).outputs[{key!r}] vs model(x)")
    for key, value in plain.aux.items():
        assert value.ndim == 0 and torch.isfinite(value), f"{name}: aux {key!r} is not a finite scalar"
    rep_path = model.forward_parts(x, representation=True)
    assert (rep_path.representation is not None) == model.has_representation
    assert set(rep_path.outputs) == set(out) and set(rep_path.aux) == set(plain.aux)
    for key in out:
        assert_rel_close(rep_path.outputs[key], out[key], f"{name}: representation path output {key!r}")
    for key in plain.aux:
        assert_rel_close(rep_path.aux[key], plain.aux[key], f"{name}: representation path aux {key!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    want = torch.autograd.grad(_objective(*model.forward_parts(x)[:2]), params, allow_unused=True)
    got = torch.autograd.grad(_objective(*rep_path[:2]), params, allow_unused=True)
    for i, (g, w) in enumerate(zip(got, want)):
        g = torch.zeros_like(params[i]) if g is None else g
        w = torch.zeros_like(params[i]) if w is None else w
        assert_rel_close(g, w, f"{name}: gradient of parameter {i}")


@pytest.mark.parametrize("name", MODELS.names())
def test_the_trainer_adds_exactly_the_models_aux_losses(name: str) -> None:
    """The auxiliary losses the trainer reports for a step are the model's ``forward_parts(x).aux``
    (with a loss weighting, the plain path, and with an aggregator, the gradient path)."""
    model, case = build(name)
    gen = torch.Generator().manual_seed(7)
    batch = Batch(case.inputs(N, gen), case.targets(case.tasks, N, gen))
    with torch.no_grad():
        want = model.forward_parts(batch.inputs).aux
    kwargs: dict[str, Any] = {"progress": False, "device": "cpu", "optimizer": lambda p: torch.optim.SGD(p, lr=0.0)}
    step = mtlkit.Trainer(model, case.tasks, **kwargs).train_step(batch)
    assert set(step.aux) == set(want)
    for key in want:
        assert_rel_close(step.aux[key].detach(), want[key], f"{name}: aux {key!r}", rtol=1e-5)
    if any(p.requires_grad for p in model.shared_parameters()):
        agg = mtlkit.aggregation.AGGREGATORS.build("sum", tasks=case.tasks)
        step = mtlkit.Trainer(model, case.tasks, aggregator=agg, **kwargs).train_step(batch)
        assert set(step.aux) == set(want)
        for key in want:
            assert_rel_close(step.aux[key].detach(), want[key], f"{name}: aux {key!r} (gradient path)", rtol=1e-5)
