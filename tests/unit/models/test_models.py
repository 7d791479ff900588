"""Models: loop references for the batched MoE code, gates, parameter partitions for every registered model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _architectures import TASKS
from _helpers import ACTIVATIONS as ACT
from _helpers import mlp_params, reference_experts
from mtlkit import Task
from mtlkit.errors import ShapeError
from mtlkit.models import (
    ACTIVATIONS,
    MLP,
    ExpertMLPs,
    ForwardParts,
    MMoE,
    MultiTaskModel,
    OMoE,
    SoftmaxGates,
    forward_parts,
    make_activation,
)
from mtlkit.models._kernels import can_group_mlps
from mtlkit.registries import MODELS


@pytest.mark.parametrize("dims", [(16,), (12, 8), (6, 5, 4)])
def test_expert_bank_equals_loop_reference(dims: tuple[int, ...]) -> None:
    bank = ExpertMLPs(5, 7, dims).double()
    x = torch.randn(9, 7, dtype=torch.float64)
    torch.testing.assert_close(bank(x), torch.stack(reference_experts(bank, x), dim=1))


@pytest.mark.parametrize("activation", sorted(ACT))
@pytest.mark.parametrize("dims", [(6,), (6, 5)])
def test_expert_bank_gradients_equal_loop_reference(activation: str, dims: tuple[int, ...]) -> None:
    bank = ExpertMLPs(3, 4, dims, activation=activation).double()
    x = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(7, 3, dims[-1], dtype=torch.float64)
    params = [x, *bank.parameters()]
    got = torch.autograd.grad((bank(x) * upstream).sum(), params)
    want = torch.autograd.grad((torch.stack(reference_experts(bank, x), dim=1) * upstream).sum(), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_mmoe_equals_per_expert_reference_and_gates_sum_to_one() -> None:
    model = MODELS.build(
        "mmoe", input_dim=10, tasks=TASKS, num_experts=4, expert_dims=(8, 6), tower_dims=(5,)
    ).double()
    x = torch.randn(13, 10, dtype=torch.float64)
    out = model(x)
    experts = torch.stack(reference_experts(model.experts, x), dim=1)  # (N, E, D)
    for t in TASKS:
        gate = model.gate.gates[t.name]
        g = torch.softmax(x @ gate.weight.T + gate.bias, dim=-1)
        mixed = sum(g[:, e : e + 1] * experts[:, e] for e in range(4))
        torch.testing.assert_close(out[t.name], model.towers[t.name](mixed))
        assert out[t.name].shape == (13, t.output_dim)
    gates = model.gates(x)
    assert set(gates) == {t.name for t in TASKS}
    for g in gates.values():
        assert (g >= 0).all()
        torch.testing.assert_close(g.sum(-1), torch.ones(13, dtype=torch.float64))


def test_omoe_equals_reference_with_one_shared_gate() -> None:
    model = MODELS.build("omoe", input_dim=10, tasks=TASKS, num_experts=3, expert_dims=(8,)).double()
    x = torch.randn(6, 10, dtype=torch.float64)
    experts = torch.stack(reference_experts(model.experts, x), dim=1)
    gate = model.gate.gates["shared"]
    g = torch.softmax(x @ gate.weight.T + gate.bias, dim=-1)
    mixed = (g.unsqueeze(-1) * experts).sum(1)
    out = model(x)
    for t in TASKS:
        torch.testing.assert_close(out[t.name], model.towers[t.name](mixed))
    torch.testing.assert_close(model.gates(x)["shared"].sum(-1), torch.ones(6, dtype=torch.float64))
    # the single gate is shared: no task owns it
    shared = {id(p) for p in model.shared_parameters()}
    assert all(id(p) in shared for p in gate.parameters())


def test_user_modules_as_experts_and_towers() -> None:
    experts = [nn.Sequential(nn.Linear(4, 3), nn.Tanh()) for _ in range(2)]
    towers = {"a": nn.Linear(3, 1), "b": nn.Linear(3, 1)}
    model = MMoE(experts, SoftmaxGates(["a", "b"], 4, 2), towers)
    x = torch.randn(5, 4)
    out = model(x)
    g = model.gates(x)
    stacked = torch.stack([e(x) for e in experts], 1)
    torch.testing.assert_close(out["a"], towers["a"]((g["a"].unsqueeze(-1) * stacked).sum(1)))
    omoe = OMoE(experts, SoftmaxGates(["s"], 4, 2), towers)
    assert omoe(x)["b"].shape == (5, 1)


def test_parameter_counts_match_formulas() -> None:
    tasks = (Task(name="y1", kind="regression"), Task(name="y2", kind="regression"))
    d, E, h, tw = 100, 8, 16, 8
    mmoe = MODELS.build("mmoe", input_dim=d, tasks=tasks, num_experts=E, expert_dims=(h,), tower_dims=(tw,))
    expected = E * (d * h + h) + 2 * (d * E + E) + 2 * mlp_params([h, tw, 1])
    assert mmoe.num_parameters() == expected
    omoe = MODELS.build("omoe", input_dim=d, tasks=tasks, num_experts=E, expert_dims=(h,), tower_dims=(tw,))
    assert omoe.num_parameters() == expected - (d * E + E)
    sb = MODELS.build("shared_bottom", input_dim=d, tasks=tasks, bottom_dims=(113,), tower_dims=(8,))
    assert sb.num_parameters() == mlp_params([d, 113]) + 2 * mlp_params([113, 8, 1])
    st = MODELS.build("single_task", input_dim=d, tasks=tasks, hidden_dims=(64,))
    assert st.num_parameters() == 2 * mlp_params([d, 64, 1])


def test_input_shape_errors_are_clear() -> None:
    model = MODELS.build("mmoe", input_dim=10, tasks=TASKS)
    with pytest.raises(ShapeError, match=r"expects inputs with 10 features.*got shape \(4, 9\).*input_dim"):
        model(torch.randn(4, 9))
    sb = MODELS.build("shared_bottom", input_dim=10, tasks=TASKS)
    with pytest.raises(ShapeError, match="takes one feature tensor; got dict"):
        sb({"a": torch.randn(2, 10)})


def test_invalid_model_arguments() -> None:
    with pytest.raises(ValueError, match="num_experts must be an int >= 1; got 0"):
        MODELS.build("mmoe", input_dim=4, tasks=TASKS, num_experts=0)
    with pytest.raises(ValueError, match="activation must be one of"):
        MLP(4, (3,), activation="relux")
    with pytest.raises(ValueError, match=r"hidden_dims must be a list of positive ints"):
        MLP(4, (3, -1))


def test_one_activation_table_gives_the_same_function_in_every_form() -> None:
    """Every activation name works as an MLP layer, an expert bank's function and (where it exists)
    in place, with the same values; the table covers every activation ExpertMLPs is tested with."""
    assert set(ACT) < set(ACTIVATIONS)
    x = torch.linspace(-3, 3, 13, dtype=torch.float64)
    for name, act in ACTIVATIONS.items():
        want = ACT[name](x) if name in ACT else x
        torch.testing.assert_close(make_activation(name)(x), want)
        torch.testing.assert_close(act.function(x), want)
        if act.inplace is not None:
            torch.testing.assert_close(act.inplace(x.clone()), want)
    with pytest.raises(ValueError, match="activation must be one of 'relu'.*got 'relux'"):
        ExpertMLPs(2, 3, (4,), activation="relux")
    with pytest.raises(ValueError, match="activation must be one of"):
        MLP(4, (), 1, activation="relux")  # checked even without hidden layers


def test_can_group_mlps_compares_structure_not_reprs() -> None:
    def mlp(**kw: object) -> MLP:
        return MLP(5, (4, 3), kw.pop("out", 2), **kw)  # type: ignore[arg-type]

    assert can_group_mlps([mlp(), mlp(), mlp(out=6)])  # final widths may differ
    assert not can_group_mlps([mlp(), mlp(activation="tanh")])
    assert not can_group_mlps([mlp(dropout=0.1), mlp(dropout=0.2)])
    assert can_group_mlps([mlp(dropout=0.1), mlp(dropout=0.1)])
    assert not can_group_mlps([mlp(), MLP(5, (4, 4), 2)])
    assert not can_group_mlps([mlp(), nn.Sequential(nn.Linear(5, 2))])
    replaced = mlp()
    replaced.net[1] = nn.Tanh()  # a module swapped after construction
    assert not can_group_mlps([mlp(), replaced])
    wider = mlp()
    wider.net[0] = nn.Linear(5, 7)
    assert not can_group_mlps([mlp(), wider])


class _OwnForward(MultiTaskModel):
    """A model written against the plain contract: it overrides forward(x) -> {task: output}."""

    task_names = ("a", "b")

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        y = self.lin(x)
        return {"a": y[:, 0], "b": y[:, 1]}

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return []


class _Plain(nn.Module):
    def __init__(self, out: object) -> None:
        super().__init__()
        self.out = out

    def forward(self, x: torch.Tensor) -> object:
        return self.out


def test_forward_parts_of_models_without_the_hooks() -> None:
    x = torch.randn(4, 3)
    own = _OwnForward()
    assert not own.has_representation
    for parts in (own.forward_parts(x), own.forward_parts(x, representation=True), forward_parts(own, x)):
        assert parts.aux == {} and parts.representation is None
        assert set(parts.outputs) == {"a", "b"}
        for k, v in own(x).items():
            torch.testing.assert_close(parts.outputs[k], v)
    plain = forward_parts(_Plain({"a": x[:, 0]}), x, representation=True)
    assert isinstance(plain, ForwardParts) and plain.aux == {} and plain.representation is None
    assert set(plain.outputs) == {"a"} and torch.equal(plain.outputs["a"], x[:, 0])
    with pytest.raises(ShapeError, match="returns 'aux/penalty' among its outputs.*subclass mtlkit.models.MultiTaskModel"):
        forward_parts(_Plain({"a": x[:, 0], "aux/penalty": x.sum()}), x)
    with pytest.raises(ShapeError, match="must return a dict \\{task: output\\}; got Tensor"):
        forward_parts(_Plain(x), x)

    class NoHooks(MultiTaskModel):
        task_names = ("a",)

    with pytest.raises(NotImplementedError, match="NoHooks must implement _forward\\(x\\) or _encode/_decode"):
        NoHooks()(x)
