"""CGC, PLE, stacked MMoE and DSelect-k against loop references, hand-worked cases and formulas."""

from __future__ import annotations

import itertools
import math
import sys
from typing import Any

import pytest
import torch
from torch import nn

import mtlkit
from _helpers import mlp_params
from _helpers import reference_experts as ref_experts
from mtlkit import Task
from mtlkit.data import Batch
from mtlkit.errors import IncompatibleComponentsError, ShapeError
from mtlkit.models import (
    CGC,
    MLP,
    PLE,
    DSelectK,
    DSelectKGate,
    ExpertMLPs,
    ExtractionNetwork,
    MMoE,
    SoftmaxGates,
    StackedMMoE,
)
from mtlkit.models._blocks import SoftmaxGate
from mtlkit.models._kernels import (
    can_group_mlps,
    gate_outputs,
    grouped_expert_outputs,
    grouped_mlp_outputs,
    tower_outputs,
)
from mtlkit.models.dselect import binary_codes, selector_outputs, smooth_step
from mtlkit.registries import MODELS

F64 = torch.float64
TASKS = (
    Task(name="a", kind="binary"),
    Task(name="b", kind="regression"),
    Task(name="c", kind="multiclass", num_classes=4),
)
NAMES = tuple(t.name for t in TASKS)


# ---------------------------------------------------------------------- independent references
def ref_softmax_gate(gate: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    logits = x @ gate.weight.T + gate.bias
    e = torch.exp(logits - logits.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def ref_mix(w: torch.Tensor, experts: list[torch.Tensor]) -> torch.Tensor:
    out = torch.zeros_like(experts[0])
    for i, e in enumerate(experts):
        out = out + w[:, i : i + 1] * e
    return out


def ref_ple(model: PLE, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """PLE written out level by level, expert by expert."""
    names = model.task_names
    task_in = dict.fromkeys(names, x)
    shared_in = x
    gates: dict[str, torch.Tensor] = {}
    L = len(model.levels)
    for j, level in enumerate(model.levels, 1):
        prefix = "" if j == L else f"level{j}/"
        own = {
            t: ref_experts(level.task_experts[t], task_in[t]) if t in level.task_experts else []
            for t in names
        }
        shared = ref_experts(level.shared_experts, shared_in) if level.shared_experts is not None else []
        new = {}
        for t in names:
            w = ref_softmax_gate(level.task_gates[t], task_in[t])
            gates[prefix + t] = w
            new[t] = ref_mix(w, own[t] + shared)
        if level.shared_gate is not None:
            w = ref_softmax_gate(level.shared_gate, shared_in)
            gates[prefix + "shared"] = w
            shared_in = ref_mix(w, [e for t in names for e in own[t]] + shared)
        task_in = new
    return {t: model.towers[t](task_in[t]) for t in names}, gates


def dependencies(model: nn.Module, x: Any) -> dict[int, set[str]]:
    """For every parameter, the tasks whose output has a non-zero gradient on it."""
    preds = model(x)
    params = list(model.parameters())
    deps: dict[int, set[str]] = {id(p): set() for p in params}
    for t in model.task_names:
        grads = torch.autograd.grad(preds[t].sum(), params, retain_graph=True, allow_unused=True)
        for p, g in zip(params, grads):
            if g is not None and torch.count_nonzero(g) > 0:
                deps[id(p)].add(t)
    return deps


def assert_ownership_is_exact(model: nn.Module, x: Any) -> None:
    """Owned parameters reach their task only; every other parameter reaches two tasks or more."""
    deps = dependencies(model, x)
    owned = {id(p): t for t in model.task_names for p in model.task_parameters(t)}
    for p in model.parameters():
        d = deps[id(p)]
        if id(p) in owned:
            assert d == {owned[id(p)]}, f"a parameter of task {owned[id(p)]} reaches {sorted(d)}"
        else:
            assert len(d) >= 2, (
                f"a shared parameter {tuple(p.shape)} reaches only {sorted(d)}: it should be owned"
            )


def tower_params(width: int, tower_dims: list[int]) -> int:
    return sum(mlp_params([width, *tower_dims, t.output_dim]) for t in TASKS)


# ---------------------------------------------------------------------- grouped experts
@pytest.mark.parametrize("dims", [(6,), (6, 5)])
def test_grouped_expert_banks_equal_each_bank_alone(dims: tuple[int, ...]) -> None:
    banks = [ExpertMLPs(n, 4, dims, activation="tanh").double() for n in (2, 1, 3)]
    xs = [torch.randn(7, 4, dtype=F64) for _ in banks]
    # one input read by every bank, and one input per bank
    for inputs, per_bank in ((xs[0], [xs[0]] * 3), (xs, xs)):
        out = grouped_expert_outputs(banks, inputs)
        want = torch.stack([e for b, x in zip(banks, per_bank) for e in ref_experts(b, x)], dim=1)
        torch.testing.assert_close(out, want)
        params = [p for b in banks for p in b.parameters()]
        up = torch.randn_like(want)
        got_g = torch.autograd.grad((out * up).sum(), params)
        want_g = torch.autograd.grad((want * up).sum(), params)
        for a, b in zip(got_g, want_g):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("tower_dims", [(), (5,), (5, 3)])
def test_grouped_towers_equal_each_tower_alone(tower_dims: tuple[int, ...]) -> None:
    towers = [MLP(6, tower_dims, out, activation="tanh").double() for out in (1, 4, 2)]
    assert can_group_mlps(towers)
    xs = [torch.randn(7, 6, dtype=F64) for _ in towers]
    got = grouped_mlp_outputs(towers, xs)
    want = [m(x) for m, x in zip(towers, xs)]
    params = [p for m in towers for p in m.parameters()]
    ups = [torch.randn_like(w) for w in want]
    g_got = torch.autograd.grad(sum((o * u).sum() for o, u in zip(got, ups)), params)
    g_want = torch.autograd.grad(sum((o * u).sum() for o, u in zip(want, ups)), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b)
    # towers of different shapes are evaluated one by one
    mixed = {"a": towers[0], "b": MLP(6, (4,), 1).double()}
    assert not can_group_mlps(list(mixed.values()))
    out = tower_outputs(mixed, {"a": xs[0], "b": xs[1]})
    torch.testing.assert_close(out["b"], mixed["b"](xs[1]))


def test_batched_gates_equal_each_gate_alone() -> None:
    x = torch.randn(6, 5, dtype=F64)
    cases = [
        ([SoftmaxGate(5, n).double() for n in (3, 2, 4)], [x, x, x]),  # one input: one product
        ([SoftmaxGate(5, 3).double() for _ in range(3)], [torch.randn(6, 5, dtype=F64) for _ in range(3)]),
        ([SoftmaxGate(5, n).double() for n in (3, 2)], [x, torch.randn(6, 5, dtype=F64)]),  # one by one
    ]
    for gates, inputs in cases:
        got = gate_outputs(gates, inputs)
        for g, xi, w in zip(gates, inputs, got):
            torch.testing.assert_close(w, ref_softmax_gate(g, xi))
        params = [p for g in gates for p in g.parameters()]
        ups = [torch.randn_like(w) for w in got]
        g_got = torch.autograd.grad(sum((w * u).sum() for w, u in zip(got, ups)), params)
        ref = [ref_softmax_gate(g, xi) for g, xi in zip(gates, inputs)]
        g_want = torch.autograd.grad(sum((w * u).sum() for w, u in zip(ref, ups)), params)
        for a, b in zip(g_got, g_want):
            torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------- CGC / PLE
def test_cgc_equals_loop_reference_and_decode_of_encode() -> None:
    model = MODELS.build(
        "cgc", input_dim=10, tasks=TASKS, num_task_experts=2, num_shared_experts=3, expert_dims=(8, 6)
    ).double()
    assert isinstance(model, CGC)
    x = torch.randn(9, 10, dtype=F64)
    want, want_gates = ref_ple(model, x)
    out = model(x)
    for t in NAMES:
        torch.testing.assert_close(out[t], want[t])
    gates = model.gates(x)
    assert set(gates) == set(NAMES)
    for t in NAMES:
        assert gates[t].shape == (9, 5)
        torch.testing.assert_close(gates[t], want_gates[t])
    dec, _, rep = model.forward_parts(x, representation=True)
    assert rep.shape == (9, 3, 6)
    for t, o in dec.items():
        torch.testing.assert_close(o, want[t])


def test_ple_equals_loop_reference_with_unequal_task_expert_counts() -> None:
    model = MODELS.build(
        "ple",
        input_dim=7,
        tasks=TASKS,
        num_levels=3,
        num_task_experts={"a": 1, "b": 0, "c": 3},
        num_shared_experts=2,
        expert_dims=(6, 5),
        activation="tanh",
    ).double()
    assert type(model) is PLE
    x = torch.randn(8, 7, dtype=F64)
    want, want_gates = ref_ple(model, x)
    out = model(x)
    for t in NAMES:
        torch.testing.assert_close(out[t], want[t])
    gates = model.gates(x)
    assert set(gates) == set(want_gates)
    assert gates["level1/shared"].shape == (8, 1 + 0 + 3 + 2) and gates["b"].shape == (8, 2)
    for k, g in gates.items():
        torch.testing.assert_close(g, want_gates[k])
        torch.testing.assert_close(g.sum(-1), torch.ones(8, dtype=F64))
    assert "level3/shared" not in gates and "shared" not in gates  # the last level has no shared gate


def test_ple_without_shared_experts_equals_independent_per_task_moes() -> None:
    torch.manual_seed(0)
    d, D, m = 6, 5, 3
    # independent per-task two-level MoEs, written as separate modules
    nets = {
        t.name: {
            "experts": [ExpertMLPs(m, d, (D,)), ExpertMLPs(m, D, (D,))],
            "gates": [nn.Linear(d, m), nn.Linear(D, m)],
            "tower": MLP(D, (4,), t.output_dim),
        }
        for t in TASKS
    }
    levels = [
        ExtractionNetwork(
            {t: nets[t]["experts"][j] for t in NAMES},
            None,
            {t: SoftmaxGate(nets[t]["gates"][j].in_features, m) for t in NAMES},
        )
        for j in range(2)
    ]
    for j, level in enumerate(levels):
        for t in NAMES:
            level.task_gates[t].load_state_dict(nets[t]["gates"][j].state_dict())
    model = PLE(levels, {t: nets[t]["tower"] for t in NAMES}).double()
    for net in nets.values():
        for mod in [*net["experts"], *net["gates"], net["tower"]]:
            mod.double()
    x = torch.randn(10, d, dtype=F64)
    out = model(x)
    for t in NAMES:
        h = x
        for bank, gate in zip(nets[t]["experts"], nets[t]["gates"]):
            g = torch.softmax(gate(h), dim=-1)
            h = (g.unsqueeze(-1) * bank(h)).sum(1)
        torch.testing.assert_close(out[t], nets[t]["tower"](h))
    # nothing crosses between tasks: every parameter belongs to one task
    assert model.shared_parameters() == []
    built = MODELS.build("ple", input_dim=d, tasks=TASKS, num_levels=3, num_shared_experts=0)
    assert built.shared_parameters() == []
    assert all(lv.shared_gate is None and lv.shared_experts is None for lv in built.levels)


@pytest.mark.parametrize(
    ("num_levels", "m_t", "m_s"),
    [(1, 2, 1), (2, 2, 1), (3, 2, 2), (3, 0, 2), (3, 2, 0), (4, {"a": 1, "b": 0, "c": 2}, 2)],
)
def test_ple_task_ownership_is_exactly_what_reaches_one_task(num_levels: int, m_t: Any, m_s: int) -> None:
    torch.manual_seed(1)
    model = MODELS.build(
        "ple",
        input_dim=5,
        tasks=TASKS,
        num_levels=num_levels,
        num_task_experts=m_t,
        num_shared_experts=m_s,
        expert_dims=(4,),
        tower_dims=(3,),
        activation="tanh",
    ).double()
    assert_ownership_is_exact(model, torch.randn(6, 5, dtype=F64))


def test_ple_ownership_by_level() -> None:
    """The hand-derived rule: task k owns its last-level experts and gate, its gate one level below
    (feeding only its own last level), and nothing lower."""
    model = MODELS.build(
        "ple", input_dim=5, tasks=TASKS, num_levels=3, num_task_experts=1, num_shared_experts=1
    )
    owned = {id(p) for p in model.task_parameters("a")}
    lv = model.levels

    def owns(mod: nn.Module) -> bool:
        return all(id(p) in owned for p in mod.parameters())

    assert owns(model.towers["a"]) and owns(lv[2].task_experts["a"]) and owns(lv[2].task_gates["a"])
    assert owns(lv[1].task_gates["a"])
    assert not any(id(p) in owned for p in lv[1].task_experts["a"].parameters())
    assert not any(id(p) in owned for p in lv[0].task_gates["a"].parameters())
    assert not any(id(p) in owned for p in lv[0].task_experts["a"].parameters())


def test_cgc_and_ple_parameter_counts_match_formulas() -> None:
    d, h1, h2, T, m_t, m_s, tw = 10, 8, 6, 3, 2, 3, [4]
    expert = mlp_params([d, h1, h2])
    cgc = MODELS.build(
        "cgc",
        input_dim=d,
        tasks=TASKS,
        num_task_experts=m_t,
        num_shared_experts=m_s,
        expert_dims=(h1, h2),
        tower_dims=tw,
    )
    gates = T * (d * (m_t + m_s) + (m_t + m_s))
    assert cgc.num_parameters() == (T * m_t + m_s) * expert + gates + tower_params(h2, tw)

    counts = {"a": 1, "b": 0, "c": 2}
    ple = MODELS.build(
        "ple",
        input_dim=d,
        tasks=TASKS,
        num_levels=3,
        num_task_experts=counts,
        num_shared_experts=m_s,
        expert_dims=(h1, h2),
        tower_dims=tw,
    )
    E = sum(counts.values()) + m_s
    expected = tower_params(h2, tw)
    for level, width in enumerate([d, h2, h2]):
        expected += E * mlp_params([width, h1, h2])
        expected += sum(width * (counts[t] + m_s) + counts[t] + m_s for t in NAMES)
        if level < 2:  # shared gates between levels, over all E experts
            expected += width * E + E
    assert ple.num_parameters() == expected


def test_ple_with_one_level_is_cgc_with_the_same_parameters() -> None:
    torch.manual_seed(3)
    a = MODELS.build("ple", input_dim=6, tasks=TASKS, num_levels=1)
    torch.manual_seed(3)
    b = MODELS.build("cgc", input_dim=6, tasks=TASKS)
    assert type(a) is CGC
    x = torch.randn(4, 6)
    for t in NAMES:
        torch.testing.assert_close(a(x)[t], b(x)[t])


def test_ple_batches_experts_of_all_tasks_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Default MLP experts of every task and the shared ones go through one grouped call per level."""
    ple_module = sys.modules["mtlkit.models.ple"]  # (the package attribute `ple` is the builder)

    calls = []
    real = ple_module.grouped_expert_outputs

    def spy(banks: Any, inputs: Any) -> torch.Tensor:
        calls.append(len(banks))
        return real(banks, inputs)

    monkeypatch.setattr(ple_module, "grouped_expert_outputs", spy)
    model = MODELS.build("ple", input_dim=6, tasks=TASKS, num_levels=3)
    model(torch.randn(4, 6))
    assert calls == [4, 4, 4]  # three task banks + the shared bank, once per level


def test_cgc_and_ple_errors() -> None:
    with pytest.raises(ValueError, match=r"tasks \['a', 'b', 'c'\] have no experts .* no shared experts"):
        MODELS.build("cgc", input_dim=4, tasks=TASKS, num_task_experts=0, num_shared_experts=0)
    with pytest.raises(ValueError, match="ple num_levels must be an int >= 1; got 0"):
        MODELS.build("ple", input_dim=4, tasks=TASKS, num_levels=0)
    with pytest.raises(ValueError, match=r"num_task_experts names unknown tasks \['z'\]"):
        MODELS.build("ple", input_dim=4, tasks=TASKS, num_task_experts={"a": 1, "b": 1, "c": 1, "z": 1})
    with pytest.raises(ValueError, match=r"num_task_experts gives no count for tasks \['c'\]"):
        MODELS.build("ple", input_dim=4, tasks=TASKS, num_task_experts={"a": 1, "b": 1})
    with pytest.raises(ValueError, match="num_shared_experts must be an int >= 0; got -1"):
        MODELS.build("cgc", input_dim=4, tasks=TASKS, num_shared_experts=-1)
    level = ExtractionNetwork({}, ExpertMLPs(2, 4, (3,)), {"a": SoftmaxGate(4, 2)}, SoftmaxGate(4, 2))
    with pytest.raises(ValueError, match="last PLE level must have no shared gate"):
        PLE([level], {"a": nn.Linear(3, 1)})
    top = ExtractionNetwork({}, ExpertMLPs(2, 3, (3,)), {"a": SoftmaxGate(3, 2)})
    bottom = ExtractionNetwork({"a": ExpertMLPs(1, 4, (3,))}, None, {"a": SoftmaxGate(4, 1)})
    with pytest.raises(ValueError, match="level 2 has shared experts, but level 1 has no shared gate"):
        PLE([bottom, top], {"a": nn.Linear(3, 1)})
    wrong = CGC(
        ExtractionNetwork({"a": ExpertMLPs(2, 4, (3,))}, None, {"a": SoftmaxGate(4, 3)}),
        {"a": nn.Linear(3, 1)},
    )
    with pytest.raises(
        ShapeError, match=r"gate of task 'a' gives 3 weights, but the task mixes 2 own and 0 shared"
    ):
        wrong(torch.randn(2, 4))
    assert not wrong.has_representation  # no shared experts: no shared representation
    one = [Task(name="a", kind="regression")]
    pcgrad = mtlkit.aggregation.AGGREGATORS.build("pcgrad", tasks=one)
    with pytest.raises(IncompatibleComponentsError, match="no single shared representation.*'parameters'"):
        mtlkit.Trainer(wrong, one, aggregator=pcgrad, gradient_target="representation", progress=False)


# ---------------------------------------------------------------------- stacked MMoE
def test_stacked_mmoe_equals_loop_reference() -> None:
    model = MODELS.build(
        "stacked_mmoe",
        input_dim=7,
        tasks=TASKS,
        num_levels=3,
        num_experts=[3, 4, 2],
        expert_dims=(6, 5),
        activation="tanh",
    ).double()
    assert isinstance(model, StackedMMoE)
    x = torch.randn(8, 7, dtype=F64)
    z = dict.fromkeys(NAMES, x)
    want_gates = {}
    for j in range(3):
        prefix = "" if j == 2 else f"level{j + 1}/"
        new = {}
        for t in NAMES:
            w = ref_softmax_gate(model.level_gates[j][t], z[t])
            want_gates[prefix + t] = w
            new[t] = ref_mix(w, ref_experts(model.experts[j], z[t]))
        z = new
    out, gates = model(x), model.gates(x)
    assert set(gates) == set(want_gates)
    for t in NAMES:
        torch.testing.assert_close(out[t], model.towers[t](z[t]))
    for k, g in gates.items():
        torch.testing.assert_close(g, want_gates[k])


def test_stacked_mmoe_with_one_level_equals_mmoe() -> None:
    stacked = MODELS.build("stacked_mmoe", input_dim=6, tasks=TASKS, num_levels=1, num_experts=3).double()
    gates = SoftmaxGates(list(NAMES), 6, 3).double()
    for t in NAMES:
        gates.gates[t].load_state_dict(stacked.level_gates[0][t].state_dict())
    mmoe = MMoE(stacked.experts[0], gates, dict(stacked.towers.items()))
    x = torch.randn(5, 6, dtype=F64)
    for t in NAMES:
        torch.testing.assert_close(stacked(x)[t], mmoe(x)[t])


@pytest.mark.parametrize("num_levels", [1, 3])
def test_stacked_mmoe_ownership_is_exact(num_levels: int) -> None:
    torch.manual_seed(2)
    model = MODELS.build(
        "stacked_mmoe",
        input_dim=5,
        tasks=TASKS,
        num_levels=num_levels,
        num_experts=3,
        expert_dims=(4,),
        activation="tanh",
    ).double()
    assert_ownership_is_exact(model, torch.randn(6, 5, dtype=F64))


def test_stacked_mmoe_parameter_count_and_errors() -> None:
    d, h, counts, tw = 9, 6, [3, 5, 2], [4]
    model = MODELS.build(
        "stacked_mmoe",
        input_dim=d,
        tasks=TASKS,
        num_levels=3,
        num_experts=counts,
        expert_dims=(h,),
        tower_dims=tw,
    )
    expected = tower_params(h, tw)
    for n, width in zip(counts, [d, h, h]):
        expected += n * mlp_params([width, h]) + len(TASKS) * (width * n + n)
    assert model.num_parameters() == expected
    with pytest.raises(
        ValueError, match=r"num_experts must be an int or one count per level \(3\); got \[2, 2\]"
    ):
        MODELS.build("stacked_mmoe", input_dim=d, tasks=TASKS, num_levels=3, num_experts=[2, 2])
    with pytest.raises(ValueError, match="num_levels must be an int >= 1; got 0"):
        MODELS.build("stacked_mmoe", input_dim=d, tasks=TASKS, num_levels=0)


# ---------------------------------------------------------------------- DSelect-k
def test_smooth_step_hand_values() -> None:
    t = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 5.0], dtype=F64, requires_grad=True)
    s = smooth_step(t, gamma=2.0)
    # cubic region (-1, 1): -2 t^3 / 8 + 3 t / 4 + 1/2
    want = torch.tensor([0.0, 0.0, 0.15625, 0.5, 0.84375, 1.0, 1.0], dtype=F64)
    torch.testing.assert_close(s, want)
    (grad,) = torch.autograd.grad(s.sum(), t)
    # S'(t) = -6 t^2 / 8 + 3/4: 0 at the ends of the cubic region, 3/4 at 0, none outside
    torch.testing.assert_close(grad, torch.tensor([0.0, 0.0, 0.5625, 0.75, 0.5625, 0.0, 0.0], dtype=F64))


def test_binary_codes_by_hand() -> None:
    assert binary_codes(5).int().tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1], [1, 0, 0]]
    assert binary_codes(2).int().tolist() == [[0], [1]]
    assert binary_codes(1).shape == (1, 0)


@pytest.mark.parametrize("n", [1, 6, 8])
def test_selectors_equal_loop_over_experts_and_bits(n: int) -> None:
    gamma = 1.5
    m = math.ceil(math.log2(n)) if n > 1 else 0
    z = torch.randn(4, 3, m, dtype=F64) * 0.6
    r = selector_outputs(z, binary_codes(n), gamma)
    s = smooth_step(z, gamma)
    want = torch.ones(4, 3, n, dtype=F64)
    for a, i, expert in itertools.product(range(4), range(3), range(n)):
        for j in range(m):
            bit = (expert >> (m - 1 - j)) & 1
            want[a, i, expert] *= s[a, i, j] if bit else 1 - s[a, i, j]
    torch.testing.assert_close(r, want)
    if n == 2**m:  # every code reaches an expert: each selector is a distribution
        torch.testing.assert_close(r.sum(-1), torch.ones(4, 3, dtype=F64))
    else:
        assert (r.sum(-1) <= 1).all() and (r.sum(-1) < 1).any()


def ref_dselect_weights(gate: DSelectKGate, x: torch.Tensor) -> torch.Tensor:
    """Expert weights of one gate from its parameters, by the paper's formula."""
    if gate.gating == "static":
        z, alpha = (
            gate.z.unsqueeze(0).expand(x.shape[0], -1, -1),
            gate.alpha.unsqueeze(0).expand(x.shape[0], -1),
        )
    else:
        z = (x @ gate.z.weight.T + gate.z.bias).reshape(x.shape[0], gate.k, gate.num_bits)
        alpha = x @ gate.alpha.weight.T + gate.alpha.bias
    r = selector_outputs(z, binary_codes(gate.num_experts), gate.gamma)
    sm = torch.exp(alpha) / torch.exp(alpha).sum(-1, keepdim=True)
    return sum(sm[:, i : i + 1] * r[:, i] for i in range(gate.k))


@pytest.mark.parametrize("gating", ["per_example", "static"])
def test_dselect_k_equals_reference_and_decode_of_encode(gating: str) -> None:
    model = MODELS.build(
        "dselect_k", input_dim=7, tasks=TASKS, num_experts=6, k=2, gamma=0.8, gating=gating, expert_dims=(5,)
    ).double()
    model.eval()
    for g in model.task_gates.values():  # move the selectors off their near-uniform start
        for p in g.parameters():
            p.data.uniform_(-0.5, 0.5)
    x = torch.randn(9, 7, dtype=F64)
    experts = ref_experts(model.experts, x)
    out, gates = model(x), model.gates(x)
    assert set(out) == set(NAMES)
    assert not model.forward_parts(x).aux  # no auxiliary losses outside training
    for t in NAMES:
        w = ref_dselect_weights(model.task_gates[t], x)
        torch.testing.assert_close(gates[t], w)
        torch.testing.assert_close(out[t], model.towers[t](ref_mix(w, experts)))
    dec, dec_aux, _ = model.forward_parts(x, representation=True)
    assert not dec_aux
    for t, o in dec.items():
        torch.testing.assert_close(o, out[t])


def test_dselect_k_regularizers_by_hand() -> None:
    lam = 0.3
    model = MODELS.build("dselect_k", input_dim=4, tasks=TASKS, num_experts=6, k=3, entropy_reg=lam).double()
    for p in model.task_gates.parameters():
        p.data.uniform_(-0.4, 0.4)
    x = torch.randn(5, 4, dtype=F64)
    out, aux, _ = model.forward_parts(x)  # training mode: regularizers included
    dec, dec_aux, _ = model.forward_parts(x, representation=True)
    assert set(dec_aux) == set(aux)
    sel = model.selectors(x)
    for t in NAMES:
        r = sel[t]  # (N, k, n)
        entropy = -(r * torch.log(r + 1e-6)).sum((1, 2)).mean()
        torch.testing.assert_close(aux[f"dselect_entropy/{t}"], lam * entropy)
        torch.testing.assert_close(dec_aux[f"dselect_entropy/{t}"], lam * entropy)
        unreachable = (1 / r.sum(-1) - 1).sum(-1).mean()
        torch.testing.assert_close(aux[f"dselect_unreachable/{t}"], unreachable)
        torch.testing.assert_close(dec_aux[f"dselect_unreachable/{t}"], unreachable)
    for t, o in dec.items():
        torch.testing.assert_close(o, out[t])
    eight = MODELS.build("dselect_k", input_dim=4, tasks=TASKS, num_experts=8, entropy_reg=0.0)
    assert not eight.forward_parts(torch.randn(2, 4)).aux  # power of two and no entropy term: no aux


def test_dselect_k_saturated_selectors_use_exactly_k_experts() -> None:
    """By construction: logits beyond +-gamma/2 make every smooth-step 0 or 1."""
    n, k, gamma = 8, 3, 1.0
    model = MODELS.build("dselect_k", input_dim=5, tasks=TASKS[:1], num_experts=n, k=k, gamma=gamma).double()
    model.eval()
    gate = model.task_gates["a"]
    chosen = [1, 4, 6]  # codes 001, 100, 110
    bias = torch.tensor([[gamma / 2 if int(b) else -gamma for b in f"{e:03b}"] for e in chosen], dtype=F64)
    alpha = torch.tensor([0.2, -0.1, 0.5], dtype=F64)
    with torch.no_grad():
        gate.z.weight.zero_()
        gate.z.bias.copy_(bias.reshape(-1))
        gate.alpha.weight.zero_()
        gate.alpha.bias.copy_(alpha)
    x = torch.randn(10, 5, dtype=F64)
    w = model.gates(x)["a"]
    want = torch.zeros(10, n, dtype=F64)
    want[:, chosen] = torch.softmax(alpha, 0)
    torch.testing.assert_close(w, want, rtol=0, atol=0)
    assert ((w > 0).sum(-1) == k).all()
    sel = model.selectors(x)["a"]
    assert ((sel == 0) | (sel == 1)).all() and (sel.sum(-1) == 1).all()
    experts = ref_experts(model.experts, x)
    mixed = sum(want[:, e : e + 1] * experts[e] for e in chosen)
    torch.testing.assert_close(model(x)["a"], model.towers["a"](mixed))


class _Features(nn.Module):
    """Parameter-free experts: expert l returns input feature l."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(-1)


def test_dselect_k_static_gates_train_to_exactly_k_experts() -> None:
    """Targets that each mix two features: training the static gates with the entropy regularizer
    selects exactly those two experts per task, with the right weights, and binary smooth-steps."""
    torch.manual_seed(0)
    n = 8
    gates = {t: DSelectKGate(None, n, 2, gating="static") for t in ("p", "q")}
    model = DSelectK(_Features(), gates, {"p": nn.Identity(), "q": nn.Identity()}, entropy_reg=0.01).double()
    x = torch.randn(32, n, dtype=F64)
    y = {"p": 0.6 * x[:, 2] + 0.4 * x[:, 5], "q": 0.5 * x[:, 1] + 0.5 * x[:, 6]}
    opt = torch.optim.Adam(model.parameters(), lr=0.04)
    for _ in range(150):
        preds, aux, _ = model.forward_parts(x)
        loss = sum(((preds[t].squeeze(-1) - y[t]) ** 2).mean() for t in y) + sum(aux.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    w = model.gates(x[:1])
    for t, experts, weights in (("p", [2, 5], [0.6, 0.4]), ("q", [1, 6], [0.5, 0.5])):
        assert torch.nonzero(w[t][0]).flatten().tolist() == experts
        torch.testing.assert_close(w[t][0, experts], torch.tensor(weights, dtype=F64), atol=0.02, rtol=0)
        sel = model.selectors(x[:1])[t]
        assert ((sel == 0) | (sel == 1)).all()


@pytest.mark.parametrize("gating", ["per_example", "static"])
def test_dselect_k_ownership_and_parameter_count(gating: str) -> None:
    torch.manual_seed(4)
    d, h, n, k, tw = 5, 4, 6, 2, [3]
    model = MODELS.build(
        "dselect_k",
        input_dim=d,
        tasks=TASKS,
        num_experts=n,
        k=k,
        gating=gating,
        expert_dims=(h,),
        tower_dims=tw,
        activation="tanh",
    ).double()
    for p in model.task_gates.parameters():
        p.data.uniform_(-0.3, 0.3)
    model.eval()
    assert_ownership_is_exact(model, torch.randn(6, d, dtype=F64))
    m = 3  # ceil(log2 6)
    gate = (d * k * m + k * m + d * k + k) if gating == "per_example" else (k * m + k)
    assert model.num_parameters() == n * mlp_params([d, h]) + len(TASKS) * gate + tower_params(h, tw)


def test_dselect_k_errors() -> None:
    with pytest.raises(ValueError, match=r"k must be an int in \[1, num_experts=4\]; got 5"):
        MODELS.build("dselect_k", input_dim=3, tasks=TASKS, num_experts=4, k=5)
    with pytest.raises(ValueError, match="gamma must be a float > 0; got 0"):
        MODELS.build("dselect_k", input_dim=3, tasks=TASKS, gamma=0)
    with pytest.raises(ValueError, match="gating must be 'per_example' or 'static'; got 'sparse'"):
        MODELS.build("dselect_k", input_dim=3, tasks=TASKS, gating="sparse")
    with pytest.raises(ValueError, match="entropy_reg must be a float >= 0; got -1"):
        MODELS.build("dselect_k", input_dim=3, tasks=TASKS, entropy_reg=-1)
    with pytest.raises(TypeError, match=r"gates must be DSelectKGate modules; those of \['a'\]"):
        DSelectK(ExpertMLPs(2, 3, (2,)), {"a": nn.Linear(3, 2)}, {"a": nn.Linear(2, 1)})  # type: ignore[dict-item]


def test_dselect_k_regularizer_reaches_the_trainer_with_a_gradient_method() -> None:
    model = MODELS.build("dselect_k", input_dim=6, tasks=TASKS, num_experts=5, entropy_reg=0.05)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 6, generator=gen)
    targets = {"a": (torch.rand(8, generator=gen) > 0.5).float(), "b": torch.randn(8, generator=gen)}
    trainer = mtlkit.Trainer(
        model,
        TASKS,
        aggregator=mtlkit.aggregation.AGGREGATORS.build("mgda", tasks=TASKS),
        progress=False,
        device="cpu",
    )
    step = trainer.train_step(Batch(x, targets))
    assert {f"dselect_entropy/{t}" for t in NAMES} | {f"dselect_unreachable/{t}" for t in NAMES} == set(
        step.aux
    )


# ---------------------------------------------------------------------- registry, configs, input layers
@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("cgc", CGC),
        ("ple", PLE),
        ("stacked_mmoe", StackedMMoE),
        ("multilevel_mmoe", StackedMMoE),
        ("dselect_k", DSelectK),
    ],
)
def test_registry_names_and_input_layer(name: str, cls: type) -> None:
    assert name in MODELS
    front = nn.Linear(7, 10)  # a stand-in backbone with out_features
    model = MODELS.build(name, input_dim=None, tasks=TASKS, input_layer=front)
    assert isinstance(model, cls)
    out = model(torch.randn(4, 7))
    assert out["c"].shape == (4, 4)
    shared = {id(p) for p in model.shared_parameters()}
    assert all(id(p) in shared for p in front.parameters())


def test_configs_build_the_moe_family() -> None:
    from mtlkit.config import resolve
    from mtlkit.config.build import build_data, build_model

    data = {"name": "synthetic_correlation", "n_train": 32, "n_val": 8, "n_test": 8, "dim": 6}
    specs = {
        "ple": {
            "name": "ple",
            "num_levels": 3,
            "num_task_experts": {"y1": 1, "y2": 2},
            "num_shared_experts": 1,
        },
        "dselect": {"name": "dselect_k", "num_experts": 6, "k": 3, "gating": "static"},
        "stacked": {"name": "stacked_mmoe", "num_experts": [2, 3]},
    }
    for spec in specs.values():
        cfg = resolve({"data": data, "model": spec}).variants["experiment"]
        splits = build_data(cfg.data)
        model = build_model(cfg.model, splits)
        out = model(splits.train.take(torch.arange(4)).inputs.float())
        assert set(out) == {"y1", "y2"}
