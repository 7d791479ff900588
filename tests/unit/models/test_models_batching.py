"""Performance restructurings of the architectures (issue 4, section 5), each checked against the
computation it replaces: batched towers against tower-by-tower evaluation, the
representation path (input layer once) against the input layer evaluated again for decoding, the selector product against ``prod``, MTAN's per-channel gates
against the masks."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.profiler import profile

import mtlkit
from _architectures import N, build
from mtlkit import Task
from mtlkit.aggregation import Sum
from mtlkit.analysis import gate_statistics
from mtlkit.data.schema import FeatureSchema
from mtlkit.models import MLP, EmbeddingFrontEnd, _kernels
from mtlkit.models._kernels import (
    batch_towers,
    can_group_mlps,
    grouped_mlp_outputs,
    grouped_mlp_stacked,
    stacked_tower_outputs,
    tower_outputs,
)
from mtlkit.models.dselect import binary_codes, selector_outputs, smooth_step
from mtlkit.registries import MODELS
from mtlkit.weighting import EqualWeighting

F64 = torch.float64
TASKS = (Task(name="a", kind="binary"), Task(name="b", kind="regression"), Task(name="c", kind="binary"))


def grads_of(outputs: list[torch.Tensor], wrt: list[torch.Tensor], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Gradients of a fixed random projection of ``outputs`` (the same projection every call)."""
    gen = torch.Generator().manual_seed(seed)
    total = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outputs)
    return torch.autograd.grad(total, wrt, allow_unused=True)


def assert_all_close(got: Any, want: Any) -> None:
    for a, b in zip(got, want, strict=True):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------- grouped MLPs


@pytest.mark.parametrize("tower_dims", [(), (5,), (5, 3)])
def test_grouped_mlps_on_one_shared_input_equal_each_mlp_alone(tower_dims: tuple[int, ...]) -> None:
    towers = [MLP(6, tower_dims, out, activation="tanh").double() for out in (1, 4, 2)]
    x = torch.randn(7, 6, dtype=F64, requires_grad=True)
    got = grouped_mlp_outputs(towers, x)  # one tensor: read by every MLP
    want = [m(x) for m in towers]
    assert_all_close(got, want)
    wrt = [x, *(p for m in towers for p in m.parameters())]
    assert_all_close(grads_of(got, wrt), grads_of(want, wrt))


def test_grouped_mlps_on_a_strided_stack_equal_each_mlp_alone() -> None:
    towers = [MLP(6, (5,), out).double() for out in (1, 3)]
    base = torch.randn(7, 2, 6, dtype=F64, requires_grad=True)
    h = base.transpose(0, 1)  # (K, N, d) view of an (N, K, d) tensor, as MMoE's mixtures
    out = grouped_mlp_stacked(towers, h)
    assert out.shape == (2, 7, 3)
    torch.testing.assert_close(out[0, :, :1], towers[0](h[0]))
    torch.testing.assert_close(out[1], towers[1](h[1]))
    assert bool((out[0, :, 1:] == 0).all())  # zero-padded to the widest output
    got = list(stacked_tower_outputs(dict(zip("xy", towers)), "xy", h, batched=True).values())
    want = [towers[0](h[0]), towers[1](h[1])]
    wrt = [base, *(p for m in towers for p in m.parameters())]
    assert_all_close(grads_of(got, wrt), grads_of(want, wrt))
    with pytest.raises(ValueError, match="one row of h per task \\(3\\); got \\(2, 7, 6\\)"):
        stacked_tower_outputs(dict(zip("xyz", [*towers, towers[0]])), "xyz", h)


def spy_grouped(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the calls of the grouped-MLP functions (still computing their results)."""
    calls: list[str] = []
    for fn in ("grouped_mlp_outputs", "grouped_mlp_stacked"):
        real = getattr(_kernels, fn)

        def wrapped(*args: Any, _real: Any = real, _fn: str = fn) -> Any:
            calls.append(_fn)
            return _real(*args)

        monkeypatch.setattr(_kernels, fn, wrapped)
    return calls


def test_towers_are_batched_on_accelerators_and_looped_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not batch_towers(torch.zeros(1))
    assert batch_towers(torch.zeros(1, device="meta"))
    towers = {t: MLP(6, (5,), out).double() for t, out in zip("xyz", (1, 4, 2))}
    x = torch.randn(7, 6, dtype=F64)
    xs = {t: torch.randn(7, 6, dtype=F64) for t in towers}
    stacked = torch.randn(3, 7, 6, dtype=F64)
    loop = {
        "shared": {t: m(x) for t, m in towers.items()},
        "own": {t: m(xs[t]) for t, m in towers.items()},
        "stacked": {t: m(stacked[k]) for k, (t, m) in enumerate(towers.items())},
    }
    calls = spy_grouped(monkeypatch)
    for batched in (None, False, True):  # None: the default, the loop on the CPU
        got = {
            "shared": tower_outputs(towers, dict.fromkeys(towers, x), batched=batched),
            "own": tower_outputs(towers, xs, batched=batched),
            "stacked": stacked_tower_outputs(towers, list(towers), stacked, batched=batched),
        }
        for case, outs in loop.items():
            for t, want in outs.items():
                torch.testing.assert_close(got[case][t], want)
        assert calls == (["grouped_mlp_outputs"] * 2 + ["grouped_mlp_stacked"] if batched else [])
        calls.clear()


def test_every_model_gives_the_same_outputs_and_gradients_with_batched_towers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batched_somewhere = set()
    for name in MODELS.names():
        results = []
        for batched in (False, True):
            model, case = build(name)
            monkeypatch.setattr(_kernels, "batch_towers", lambda _x, b=batched: b)
            calls = spy_grouped(monkeypatch)
            out = model(case.inputs(N, torch.Generator().manual_seed(1)))
            params = [p for p in model.parameters() if p.requires_grad]
            results.append(({k: v.detach() for k, v in out.items()}, grads_of(list(out.values()), params)))
            monkeypatch.undo()
            if calls:
                assert batched, f"{name}: towers batched on the CPU"
                batched_somewhere.add(name)
        (loop_out, loop_grads), (bat_out, bat_grads) = results
        assert loop_out.keys() == bat_out.keys()
        for k in loop_out:
            torch.testing.assert_close(bat_out[k], loop_out[k], msg=f"{name}: output {k}")
        assert_all_close(bat_grads, loop_grads)
    # every architecture with MLP towers of one shape (a module dict of groupable MLPs) batches them
    want = {n for n in MODELS.names() if has_groupable_towers(build(n)[0])}
    assert batched_somewhere == want
    assert len(want) >= len(MODELS.names()) // 2  # the structural rule is not vacuous


def has_groupable_towers(model: nn.Module) -> bool:
    return any(
        isinstance(m, nn.ModuleDict) and len(m) > 1 and can_group_mlps(list(m.values())) for m in model.modules()
    )


def test_hierarchical_batches_the_heads_attached_at_one_depth(monkeypatch: pytest.MonkeyPatch) -> None:
    model = MODELS.build("hierarchical", input_dim=10, tasks=TASKS, hidden_dims=(8, 6), task_depths={"a": 1})
    x = torch.randn(5, 10)
    want = model(x)
    calls = spy_grouped(monkeypatch)
    monkeypatch.setattr(_kernels, "batch_towers", lambda _x: True)
    got = model(x)
    assert calls == ["grouped_mlp_outputs"]  # b and c at depth 2: one batched call; a alone at depth 1
    for t in want:
        torch.testing.assert_close(got[t], want[t])


# ------------------------------------------------------------------------------- representation path


def _with_representation() -> list[str]:
    return [n for n in MODELS.names() if build(n)[0].has_representation]


@pytest.mark.parametrize("name", _with_representation())
def test_representation_path_is_deterministic_and_matches_the_plain_path(name: str) -> None:
    model, case = build(name)
    x = case.inputs(N, torch.Generator().manual_seed(1))
    out, aux, rep = model.forward_parts(x, representation=True)
    out2, aux2, rep2 = model.forward_parts(x, representation=True)
    plain = model.forward_parts(x)
    assert rep is not None and plain.representation is None
    torch.testing.assert_close(rep, rep2)
    assert out.keys() == out2.keys() == plain.outputs.keys()
    assert aux.keys() == aux2.keys() == plain.aux.keys()
    for k in out:
        torch.testing.assert_close(out[k], out2[k])
        torch.testing.assert_close(out[k], plain.outputs[k])


class Counting(nn.Module):
    """An input layer that counts its calls."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0
        self.out_features = inner.out_features

    def forward(self, x: Any) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


SCHEMA = FeatureSchema(categorical=("u", "i", "c"), cardinalities=(5, 7, 3), numeric=("p", "q"))
GATED = {
    "mmoe": {"num_experts": 3, "expert_dims": (6,), "tower_dims": (4,)},
    "cgc": {"num_task_experts": 1, "num_shared_experts": 2, "expert_dims": (6,), "tower_dims": (4,)},
    "dselect_k": {"num_experts": 3, "k": 2, "entropy_reg": 0.1, "expert_dims": (6,), "tower_dims": (4,)},
}


def tabular(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, c, (n,), generator=gen) for c in SCHEMA.cardinalities], dim=1)
    return {"categorical": cat, "numeric": torch.randn(n, 2, generator=gen, dtype=F64)}


def gated(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layer = Counting(EmbeddingFrontEnd(SCHEMA, 3))
    return MODELS.build(name, input_dim=None, tasks=TASKS, input_layer=layer, **GATED[name]).double()


@pytest.mark.parametrize("name", list(GATED))
def test_both_paths_run_the_input_layer_once(name: str) -> None:
    model = gated(name)
    layer = model.input_layer
    x = tabular(6)
    model.forward_parts(x, representation=True)
    assert layer.calls == 1
    model(x)
    assert layer.calls == 2


def test_esmm_over_a_gated_base_runs_the_input_layer_once() -> None:
    layer = Counting(EmbeddingFrontEnd(SCHEMA, 3))
    tasks = (
        Task(name="ctr", kind="binary"),
        Task(name="ctcvr", kind="binary", logits=False),
        Task(name="cvr", kind="binary", logits=False, train=False),
    )
    base = {"name": "mmoe", "num_experts": 2, "expert_dims": [4], "tower_dims": [3]}
    model = MODELS.build("esmm", input_dim=None, tasks=tasks, base=base, input_layer=layer).double()
    x = tabular(5)
    out = model.forward_parts(x, representation=True).outputs
    assert layer.calls == 1  # the base's features pass from its _encode to both of its _decode calls
    want = model(x)
    for k in want:
        torch.testing.assert_close(out[k], want[k])


def targets(n: int, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "a": (torch.rand(n, generator=gen) > 0.5).double(),
        "b": torch.randn(n, generator=gen, dtype=F64),
        "c": (torch.rand(n, generator=gen) > 0.5).double(),
    }


def step_grads(model: nn.Module, x: Any, target: str, *, one_pass: bool) -> list[torch.Tensor]:
    """Gradients of one gradient-level backward (Sum aggregator) through the representation path
    or with the input layer evaluated again for the decoding (the former Trainer path)."""
    model.zero_grad()
    if one_pass:
        preds, aux, rep = model.forward_parts(x, representation=True)
    else:
        rep, _ = model._encode(x)
        preds, aux = model._decode(rep, model.input_layer(x))  # the input layer evaluated again
    tl = mtlkit.task_losses(TASKS, preds, targets(6))
    mtlkit.backward(
        tl.losses,
        weighting=EqualWeighting(TASKS),
        aggregator=Sum(),
        model=model,
        representation=rep if target == "representation" else None,
        aux=aux or None,
    )
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


@pytest.mark.parametrize("name", list(GATED))
@pytest.mark.parametrize("target", ["representation", "parameters"])
def test_one_input_layer_pass_gives_the_gradients_of_two(name: str, target: str) -> None:
    model = gated(name)
    x = tabular(6)
    want = step_grads(model, x, target, one_pass=False)
    got = step_grads(model, x, target, one_pass=True)
    assert_all_close(got, want)
    table = model.input_layer.inner.table.weight
    assert float(dict(zip(map(id, model.parameters()), got))[id(table)].abs().sum()) > 0


@pytest.mark.parametrize("name", ["mmoe", "cgc"])
def test_representation_gradient_reaches_the_input_layer_through_the_shared_experts_only(name: str) -> None:
    """The documented semantics, computed independently: with representation-level methods the input
    layer learns only through the shared representation; the paths through the gates (and CGC's
    task experts) give per-task gradients that are not aggregated, so they do not reach it."""
    model = gated(name)
    x = tabular(6)
    got = step_grads(model, x, "representation", one_pass=True)
    table = model.input_layer.inner.table.weight
    model.zero_grad()
    rep, h = model._encode(x)  # h: the input layer's output, which the representation is computed from
    out, _ = model._decode(rep, h.detach())  # gates (and task experts) see the features as constants
    tl = mtlkit.task_losses(TASKS, out, targets(6))
    tl.losses.sum().backward()
    torch.testing.assert_close(dict(zip(map(id, model.parameters()), got))[id(table)], table.grad)


def test_trainer_takes_the_one_pass_path(monkeypatch: pytest.MonkeyPatch) -> None:
    model = gated("mmoe")
    calls: list[int] = []
    real = model.forward_parts
    monkeypatch.setattr(model, "forward_parts", lambda x, **kw: calls.append(kw) or real(x, **kw))
    trainer = mtlkit.Trainer(model, TASKS, aggregator=Sum(), gradient_target="representation", progress=False)
    trainer.train_step(mtlkit.data.Batch(tabular(6), targets(6)))
    assert calls == [{"representation": True}] and model.input_layer.calls == 1


# ------------------------------------------------------------------------------- DSelect-k selectors


def test_selector_product_equals_prod_without_a_host_synchronisation() -> None:
    gamma = 1.0
    codes = binary_codes(6)  # m = 3 bits
    z = torch.randn(20, 2, 3, dtype=F64) * 0.4
    z[:5] = torch.tensor([0.7, -0.9, 0.6], dtype=F64)  # saturated: exact zeros and ones
    z.requires_grad_(True)
    got = selector_outputs(z, codes, gamma)
    s = smooth_step(z, gamma).unsqueeze(-2)
    want = torch.where(codes, s, 1 - s).prod(-1)
    torch.testing.assert_close(got, want)
    assert bool((got[:5] == 0).any())  # the saturated rows hold exact zeros
    assert_all_close(grads_of([got], [z]), grads_of([want], [z]))
    with profile() as prof:
        selector_outputs(z, codes, gamma).sum().backward()
    assert not [e.name for e in prof.events() if e.name in ("aten::item", "aten::_local_scalar_dense")]
    with profile() as prof:
        s = smooth_step(z, gamma).unsqueeze(-2)
        torch.where(codes, s, 1 - s).prod(-1).sum().backward()
    assert [e.name for e in prof.events() if e.name == "aten::_local_scalar_dense"]  # what prod() did
    one = selector_outputs(torch.zeros(4, 2, 0), binary_codes(1), gamma)
    torch.testing.assert_close(one, torch.ones(4, 2, 1))


# ------------------------------------------------------------------------------- MTAN gates


def test_mtan_gates_give_one_weight_per_channel_for_the_gate_statistics() -> None:
    model = MODELS.build("mtan", input_spec=(3, 8, 8), tasks=TASKS, channels=(4, 6))
    x = torch.randn(5, 3, 8, 8)
    gates = model.gates(x)
    assert {k: tuple(v.shape) for k, v in gates.items()} == {
        f"{t.name}/block{j}": (5, c) for t in TASKS for j, c in enumerate((4, 6))
    }
    # task b's second attention mask, computed from the model's public modules (the MTAN paper's path)
    (u0, p0), (u1, _) = model.shared_features(x)
    mask0 = model.attention["b"][0](u0)
    prev = torch.nn.functional.max_pool2d(model.shared_f[0](mask0 * p0), 2)
    mask1 = model.attention["b"][1](torch.cat([u1, prev], dim=1))
    torch.testing.assert_close(gates["b/block1"], mask1.mean(dim=(2, 3)))
    model.eval()
    stats = gate_statistics(model, x)
    assert stats["a/block0"].num_experts == 4 and stats["c/block1"].num_experts == 6
    torch.testing.assert_close(stats["a/block1"].mean, model.gates(x)["a/block1"].double().mean(0))
