"""Parameter-sharing architectures against independent computations: hand-worked penalties,
loop references of the forward passes, parameter-count formulas, ownership by use."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mtlkit
from _architectures import TASKS
from _helpers import REPO, n_params
from _helpers import mlp_params as mlp_count
from _helpers import param_ids as ids
from mtlkit import Task
from mtlkit.aggregation import AGGREGATORS
from mtlkit.data.schema import FeatureSchema
from mtlkit.errors import IncompatibleComponentsError, ShapeError
from mtlkit.models import (
    MTAN,
    CrossStitch,
    CrossStitchUnit,
    EmbeddingFrontEnd,
    Hierarchical,
    SharedPrivate,
    SoftSharing,
)
from mtlkit.models.mtan import AttentionModule
from mtlkit.models.shared_private import orthogonality_penalty
from mtlkit.models.soft_sharing import l2_coupling, trace_norm_coupling
from mtlkit.registries import MODELS

D = 10


def linear_chain(mlp: nn.Module) -> list[nn.Linear]:
    return [m for m in mlp.modules() if isinstance(m, nn.Linear)]


def run_mlp(mlp: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """An :class:`MLP` by hand: ReLU after every linear layer except an output layer."""
    layers = linear_chain(mlp)
    ends_on_linear = isinstance(list(mlp.net)[-1], nn.Linear)
    for i, lin in enumerate(layers):
        h = h @ lin.weight.T + lin.bias
        if not (ends_on_linear and i == len(layers) - 1):
            h = torch.relu(h)
    return h


def task_losses_of(model: nn.Module, x: torch.Tensor, targets: dict[str, torch.Tensor], tasks=TASKS):
    return mtlkit.task_losses(tasks, model(x), targets)


def make_targets(n: int, gen: torch.Generator, tasks=TASKS) -> dict[str, torch.Tensor]:
    out = {}
    for t in tasks:
        if t.kind == "multiclass":
            out[t.name] = torch.randint(0, t.output_dim, (n,), generator=gen)
        elif t.kind == "binary":
            out[t.name] = (torch.rand(n, generator=gen) > 0.5).double()
        else:
            out[t.name] = torch.randn(n, generator=gen, dtype=torch.float64)
    return out


# ---------------------------------------------------------------------------------------------- soft sharing


def test_l2_coupling_hand_worked_and_pairwise_loop() -> None:
    w = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]])  # three tasks, one 1x2 weight each
    # ||w1-w2||^2 = 2, ||w1-w3||^2 = 1, ||w2-w3||^2 = 1
    assert l2_coupling(w).item() == pytest.approx(4.0)
    stacked = torch.randn(4, 5, 3, dtype=torch.float64)
    loop = sum(((stacked[i] - stacked[j]) ** 2).sum() for i, j in itertools.combinations(range(4), 2))
    torch.testing.assert_close(l2_coupling(stacked), loop)


def test_trace_norm_coupling_hand_worked_and_eigen_reference() -> None:
    # orthogonal rows: singular values are the row norms 3 and 4
    assert trace_norm_coupling(torch.tensor([[[3.0, 0.0]], [[0.0, 4.0]]])).item() == pytest.approx(7.0)
    # rank one: [1, 1] and [2, 2] -> one singular value ||(1, 2)|| * ||(1, 1)|| = sqrt(10)
    rank1 = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    assert trace_norm_coupling(rank1).item() == pytest.approx(math.sqrt(10.0))
    stacked = torch.randn(3, 4, 6, dtype=torch.float64)
    m = stacked.reshape(3, -1)
    want = torch.linalg.eigvalsh(m @ m.T).clamp_min(0).sqrt().sum()  # singular values from the Gram matrix
    torch.testing.assert_close(trace_norm_coupling(stacked), want)


@pytest.mark.parametrize("penalty", ["l2", "trace"])
def test_soft_sharing_penalty_equals_its_formula_over_hidden_weights(penalty: str) -> None:
    model = MODELS.build(
        "soft_sharing", input_dim=D, tasks=TASKS, hidden_dims=(6, 5), penalty=penalty, strength=0.3
    ).double()
    x = torch.randn(7, D, dtype=torch.float64)
    out = model(x)
    total = torch.zeros((), dtype=torch.float64)
    for layer in range(2):  # the two hidden layers; the output layers (widths 1, 4, 1) stay free
        ws = [linear_chain(model.networks[t.name])[layer].weight for t in TASKS]
        if penalty == "l2":
            total = total + sum(((a - b) ** 2).sum() for a, b in itertools.combinations(ws, 2))
        else:
            total = total + torch.linalg.svdvals(torch.stack([w.flatten() for w in ws])).sum()
    torch.testing.assert_close(model.forward_parts(x).aux["soft_sharing"], 0.3 * total)
    for t in TASKS:  # each task's output is its own network alone
        torch.testing.assert_close(out[t.name], run_mlp(model.networks[t.name][0], x))


def test_soft_sharing_ties_input_layer_copies_and_counts_parameters() -> None:
    schema = FeatureSchema(categorical=("a", "b"), cardinalities=(5, 3), numeric=("n",))
    model = MODELS.build(
        "soft_sharing",
        input_dim=None,
        tasks=TASKS,
        hidden_dims=(6,),
        input_layer=lambda: EmbeddingFrontEnd(schema, 2),
    )
    assert model.tied == ("0.table.weight", "1.net.0.weight")
    tables = [model.networks[t.name][0].table for t in TASKS]
    assert len({id(t) for t in tables}) == 3  # one copy per task
    free = MODELS.build(
        "soft_sharing",
        input_dim=None,
        tasks=TASKS,
        hidden_dims=(6,),
        input_layer=lambda: EmbeddingFrontEnd(schema, 2),
        tie_input_layer=False,
    )
    assert free.tied == ("1.net.0.weight",)
    width = 2 * 2 + 1
    want = sum(8 * 2 + mlp_count([width, 6, t.output_dim]) for t in TASKS)
    assert n_params(model) == want
    assert model.shared_parameters() == []


def test_soft_sharing_refuses_gradient_methods_and_trains_with_the_penalty() -> None:
    model = MODELS.build("soft_sharing", input_dim=D, tasks=TASKS, hidden_dims=(4,), strength=0.5)
    with pytest.raises(IncompatibleComponentsError, match="shares none .*Use a loss weighting"):
        mtlkit.Trainer(model, TASKS, aggregator=AGGREGATORS.build("mgda", tasks=TASKS), progress=False)
    # loss weighting: the gradient is that of (sum of losses + strength * penalty)
    model.double()
    gen = torch.Generator().manual_seed(0)
    x, targets = torch.randn(9, D, generator=gen, dtype=torch.float64), make_targets(9, gen)
    want = torch.autograd.grad(
        task_losses_of(model, x, targets).losses.sum() + 0.5 * model.coupling_penalty(),
        list(model.parameters()),
    )
    preds, aux, _ = model.forward_parts(x)
    assert set(aux) == {"soft_sharing"}
    model.zero_grad()
    mtlkit.backward(mtlkit.task_losses(TASKS, preds, targets), aux=aux)
    for p, w in zip(model.parameters(), want):
        torch.testing.assert_close(p.grad, w)


def _column_distance(model: SoftSharing) -> float:
    return float(sum(l2_coupling(model.stacked(n)).detach() for n in model.tied))


def test_soft_sharing_penalty_pulls_the_task_networks_together_in_training() -> None:
    data = mtlkit.data.synthetic_correlation(128, 0.5, dim=6)
    distances = {}
    for strength in (0.0, 1.0):
        torch.manual_seed(0)
        model = MODELS.build(
            "soft_sharing", input_dim=6, tasks=data.tasks, hidden_dims=(8,), strength=strength
        )
        start = _column_distance(model)
        trainer = mtlkit.Trainer(
            model, data.tasks, optimizer=lambda p: torch.optim.SGD(p, lr=0.05), progress=False, device="cpu"
        )
        trainer.fit(data, epochs=2, batch_size=32)
        distances[strength] = _column_distance(model)
        if strength:
            assert "soft_sharing" in trainer.history[-1]["aux"]
    assert distances[1.0] < 0.2 * start
    assert distances[1.0] < 0.2 * distances[0.0]


def test_soft_sharing_errors() -> None:
    nets = {"a": nn.Linear(3, 2), "b": nn.Linear(3, 2)}
    with pytest.raises(ValueError, match="penalty must be one of 'l2', 'trace'; got 'l1'"):
        SoftSharing(nets, penalty="l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="strength must be a float >= 0; got -1"):
        SoftSharing(nets, strength=-1)
    with pytest.raises(
        ValueError, match="tied parameter 'bias' must exist with one shape .*a: \\(2,\\), b: \\(3,\\)"
    ):
        SoftSharing({"a": nn.Linear(3, 2), "b": nn.Linear(3, 3)}, tied=["bias"])
    with pytest.raises(ValueError, match="no parameters to couple"):
        SoftSharing({"a": nn.Linear(3, 2), "b": nn.Linear(4, 2)})
    with pytest.raises(ValueError, match="at least one hidden layer"):
        MODELS.build("soft_sharing", input_dim=D, tasks=TASKS, hidden_dims=())
    assert "soft_sharing" not in SoftSharing(nets, strength=0.0).forward_parts(torch.randn(2, 3)).aux


# ---------------------------------------------------------------------------------------------- cross-stitch


def cross_stitch_reference(model: CrossStitch, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Task-by-task loops over layers and columns, from the columns' weights and stitch matrices."""
    T = len(model.task_names)
    layers = [model.columns.expert_layers(k) for k in range(T)]
    hs = [x] * T
    for depth in range(model.num_layers):
        hs = [torch.relu(hs[k] @ layers[k][depth][0] + layers[k][depth][1]) for k in range(T)]
        a = model.stitches[depth].matrix()  # a[k, j]: a scalar, or one weight per unit (broadcast)
        hs = [sum(a[k, j] * hs[j] for j in range(T)) for k in range(T)]
    return {t: run_mlp(model.heads[t], hs[k]) for k, t in enumerate(model.task_names)}


@pytest.mark.parametrize("per_unit", [False, True])
def test_cross_stitch_with_identity_stitches_equals_independent_networks(per_unit: bool) -> None:
    model = MODELS.build(
        "cross_stitch",
        input_dim=D,
        tasks=TASKS,
        hidden_dims=(6, 5),
        tower_dims=(3,),
        alpha_same=1.0,
        per_unit=per_unit,
    ).double()
    x = torch.randn(8, D, dtype=torch.float64)
    out = model(x)
    for k, t in enumerate(model.task_names):
        h = x
        for w, b in model.columns.expert_layers(k):  # column k alone
            h = torch.relu(h @ w + b)
        torch.testing.assert_close(out[t], run_mlp(model.heads[t], h))


@pytest.mark.parametrize("per_unit", [False, True])
def test_cross_stitch_equals_loop_reference_with_mixing(per_unit: bool) -> None:
    model = MODELS.build(
        "cross_stitch", input_dim=D, tasks=TASKS, hidden_dims=(6, 5, 4), per_unit=per_unit
    ).double()
    with torch.no_grad():
        for s in model.stitches:
            for row in s.rows.values():
                row.uniform_(-1, 1)
    x = torch.randn(8, D, dtype=torch.float64)
    out, want = model(x), cross_stitch_reference(model, x)
    for t in model.task_names:
        torch.testing.assert_close(out[t], want[t])
    dec, _, rep = model.forward_parts(x, representation=True)
    assert rep.shape == (8, 3, 4)
    for t in model.task_names:
        torch.testing.assert_close(dec[t], out[t])


def test_cross_stitch_init_ownership_and_parameter_count() -> None:
    model = MODELS.build("cross_stitch", input_dim=D, tasks=TASKS, hidden_dims=(6, 5), tower_dims=(3,))
    a = model.stitch_matrices()[0].detach()
    want = torch.full((3, 3), 0.05)
    want.fill_diagonal_(0.9)
    torch.testing.assert_close(a, want)
    torch.testing.assert_close(a.sum(1), torch.ones(3))
    for t in TASKS:
        owned = ids(model.task_parameters(t.name))
        assert owned == ids([*model.heads[t.name].parameters(), model.stitches[-1].rows[t.name]])
    shared = ids(model.shared_parameters())
    assert shared == ids([*model.columns.parameters(), *model.stitches[0].parameters()])
    columns = 3 * mlp_count([D, 6, 5])
    heads = sum(mlp_count([5, 3, t.output_dim]) for t in TASKS)
    assert n_params(model) == columns + 2 * 3 * 3 + heads
    per_unit = MODELS.build(
        "cross_stitch", input_dim=D, tasks=TASKS, hidden_dims=(6, 5), tower_dims=(3,), per_unit=True
    )
    assert n_params(per_unit) == columns + 3 * 3 * (6 + 5) + heads
    gates = model.gates(torch.randn(4, D))
    assert set(gates) == {"stitch0", "stitch1"} and gates["stitch0"].shape == (4, 3, 3)


def test_cross_stitch_with_conv_columns_and_per_channel_units() -> None:
    names = ("a", "b")
    torch.manual_seed(1)
    columns = {t: [nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)] for t in names}
    stitches = [CrossStitchUnit(names, 3, alpha_same=0.7) for _ in range(2)]
    heads = {t: nn.Sequential(nn.Flatten(), nn.Linear(3 * 5 * 5, 1)) for t in names}
    model = CrossStitch(columns, heads, stitches=stitches).double()
    with torch.no_grad():
        stitches[0].rows["a"].uniform_(-1, 1)
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    hs = [columns[t][0](x) for t in names]
    for depth in range(2):
        if depth:
            hs = [columns[t][depth](hs[k]) for k, t in enumerate(names)]
        a = stitches[depth].matrix()  # (T, T, C): channel c of column k mixes channel c of every column
        hs = [sum(a[k, j].view(1, 3, 1, 1) * hs[j] for j in range(2)) for k in range(2)]
    out = model(x)
    for k, t in enumerate(names):
        torch.testing.assert_close(out[t], heads[t](hs[k]))


def test_cross_stitch_gradient_methods_at_representation_match_the_plain_gradient() -> None:
    # the summing aggregator at the representation must reproduce the plain backward pass: every
    # shared parameter lies upstream of the representation, every task-owned one is reached by its own loss
    model = MODELS.build("cross_stitch", input_dim=D, tasks=TASKS, hidden_dims=(5, 4)).double()
    gen = torch.Generator().manual_seed(3)
    x, targets = torch.randn(6, D, generator=gen, dtype=torch.float64), make_targets(6, gen)
    want = torch.autograd.grad(task_losses_of(model, x, targets).losses.sum(), list(model.parameters()))
    dec, _, rep = model.forward_parts(x, representation=True)
    tl = mtlkit.task_losses(TASKS, dec, targets)
    model.zero_grad()
    mtlkit.backward(tl, aggregator=AGGREGATORS.build("sum", tasks=TASKS), model=model, representation=rep)
    for p, w in zip(model.parameters(), want):
        torch.testing.assert_close(p.grad, w)


def test_cross_stitch_errors() -> None:
    names = ("a", "b")
    cols = {t: [nn.Linear(3, 3)] for t in names}
    heads = {t: nn.Linear(3, 1) for t in names}
    with pytest.raises(ValueError, match="one cross-stitch unit per column layer \\(1\\); got 2"):
        CrossStitch(cols, heads, stitches=[CrossStitchUnit(names), CrossStitchUnit(names)])
    with pytest.raises(ValueError, match="same number \\(>= 1\\) of layers per task"):
        CrossStitch({"a": [nn.Linear(3, 3)], "b": []}, heads)
    with pytest.raises(ValueError, match="must mix the tasks \\['a', 'b'\\] in that order"):
        CrossStitch(cols, heads, stitches=[CrossStitchUnit(("b", "a"))])
    with pytest.raises(ValueError, match="alpha_same must be in \\[0, 1\\]; got 1.5"):
        CrossStitchUnit(names, alpha_same=1.5)
    unit = CrossStitchUnit(names, 4)
    with pytest.raises(
        ShapeError, match="4 channels expects \\(T, N, 4, ...\\) activations; got \\(2, 5, 3\\)"
    ):
        unit(torch.randn(2, 5, 3))


# ---------------------------------------------------------------------------------------------- MTAN


def batch_norm_by_hand(z: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Training-mode batch norm from the batch's mean and biased variance."""
    mean = z.mean(dim=(0, 2, 3), keepdim=True)
    var = ((z - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    shape = (1, -1, 1, 1)
    return (z - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(shape) + bn.bias.view(shape)


def conv1x1_by_hand(z: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    w = conv.weight[:, :, 0, 0]  # (out, in)
    return torch.einsum("oi,nihw->nohw", w, z) + conv.bias.view(1, -1, 1, 1)


def test_attention_module_equals_hand_computation() -> None:
    att = AttentionModule(6, 3).double()
    with torch.no_grad():
        for m in att.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    x = torch.randn(4, 6, 5, 5, dtype=torch.float64)
    conv1, bn1, _, conv2, bn2, _ = att.net
    hidden = torch.clamp_min(batch_norm_by_hand(conv1x1_by_hand(x, conv1), bn1), 0.0)
    want = 1.0 / (1.0 + torch.exp(-batch_norm_by_hand(conv1x1_by_hand(hidden, conv2), bn2)))
    got = att(x)
    torch.testing.assert_close(got, want)
    assert got.shape == (4, 3, 5, 5) and bool(((got > 0) & (got < 1)).all())


def test_mtan_task_paths_follow_the_attention_equations() -> None:
    model = MODELS.build("mtan", input_spec=(3, 8, 8), tasks=TASKS, channels=(4, 6, 5)).double()
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    out = model(x)
    # shared encoder: (u_j, p_j); the next block reads maxpool(p_j)
    feats, h = [], x
    for block in model.blocks:
        u = block.first(h)
        p = block.second(u)
        feats.append((u, p))
        h = F.max_pool2d(p, 2)
    assert [tuple(u.shape[1:]) for u, _ in feats] == [(4, 8, 8), (6, 4, 4), (5, 2, 2)]
    gates = model.gates(x)
    for t in TASKS:
        prev = None
        masks = []
        for j, (u, p) in enumerate(feats):
            a = model.attention[t.name][j](u if j == 0 else torch.cat([u, prev], dim=1))
            masks.append(a)
            prev = model.shared_f[j](a * p)  # shared f, then pooled except after the last block
            if j < 2:
                prev = F.max_pool2d(prev, 2)
        pooled = prev.mean(dim=(2, 3))  # global average pooling
        torch.testing.assert_close(out[t.name], run_mlp(model.heads[t.name][2], pooled))
        for j, a in enumerate(masks):
            torch.testing.assert_close(gates[f"{t.name}/block{j}"], a.mean(dim=(2, 3)))


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_mtan_image_shapes_parameter_count_and_ownership(shape: tuple[int, int, int]) -> None:
    chans = (4, 8, 8)
    model = MODELS.build("mtan", input_spec=shape, tasks=TASKS, channels=chans)
    out = model(torch.randn(2, *shape))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"ctr": (2, 1), "topic": (2, 4), "value": (2, 1)}

    def conv(a: int, b: int, k: int) -> int:
        return a * b * k * k + b

    bn = 2  # per channel: weight, bias
    C = shape[0]
    encoder = sum(conv(a, b, 3) + bn * b + conv(b, b, 3) + bn * b for a, b in zip((C, *chans), chans))
    f_blocks = sum(conv(a, b, 3) + bn * b for a, b in zip(chans, (*chans[1:], chans[-1])))
    attention = sum(
        conv(c if j == 0 else 2 * c, c, 1) + bn * c + conv(c, c, 1) + bn * c for j, c in enumerate(chans)
    )
    heads = sum(chans[-1] * t.output_dim + t.output_dim for t in TASKS)
    assert n_params(model) == encoder + f_blocks + 3 * attention + heads
    for t in TASKS:
        assert ids(model.task_parameters(t.name)) == ids(
            [*model.attention[t.name].parameters(), *model.heads[t.name].parameters()]
        )
    assert ids(model.shared_parameters()) == ids([*model.blocks.parameters(), *model.shared_f.parameters()])


def test_mtan_errors() -> None:
    with pytest.raises(ValueError, match="mtan takes images, an input_spec \\(C, H, W\\)"):
        MODELS.build("mtan", input_spec=10, tasks=TASKS)
    with pytest.raises(ValueError, match="too often for 4x4 images; use at most 3 channels entries"):
        MODELS.build("mtan", input_spec=(1, 4, 4), tasks=TASKS, channels=(2, 2, 2, 2, 2))
    model = MODELS.build("mtan", input_spec=(1, 8, 8), tasks=TASKS, channels=(2,))
    with pytest.raises(
        ShapeError, match="MTAN expects image batches of shape \\(N, 1, 8, 8\\); got \\(2, 64\\)"
    ):
        model(torch.randn(2, 64))
    assert isinstance(model, MTAN)


# ---------------------------------------------------------------------------------------------- hierarchical
def three_level_hierarchy() -> nn.Module:
    """Three shared layers: ctr reads the first, topic the second, value (unnamed) the top."""
    return MODELS.build(
        "hierarchical", input_dim=D, tasks=TASKS, hidden_dims=(7, 6, 5), task_depths={"ctr": 1, "topic": 2}, tower_dims=(3,)
    )



def test_hierarchical_outputs_read_the_stack_at_each_tasks_depth() -> None:
    model = three_level_hierarchy().double()
    assert model.depths == {"ctr": 1, "topic": 2, "value": 3}  # unnamed tasks attach at the top
    x = torch.randn(9, D, dtype=torch.float64)
    out = model(x)
    stack = [linear_chain(layer)[0] for layer in model.layers]
    for t in TASKS:
        h = x
        for lin in stack[: model.depths[t.name]]:
            h = torch.relu(h @ lin.weight.T + lin.bias)
        torch.testing.assert_close(out[t.name], run_mlp(model.heads[t.name], h))


def test_hierarchical_ownership_by_use_and_parameter_count() -> None:
    model = three_level_hierarchy()
    layers = model.layers
    # layer 1: all three tasks; layer 2: topic and value (shared); layer 3: value only (owned)
    assert ids(model.shared_parameters()) == ids([*layers[0].parameters(), *layers[1].parameters()])
    assert ids(model.task_parameters("value")) == ids(
        [*model.heads["value"].parameters(), *layers[2].parameters()]
    )
    assert ids(model.task_parameters("topic")) == ids(model.heads["topic"].parameters())
    stack = mlp_count([D, 7, 6, 5])
    widths = {"ctr": 7, "topic": 6, "value": 5}
    heads = sum(mlp_count([widths[t.name], 3, t.output_dim]) for t in TASKS)
    assert n_params(model) == stack + heads
    # the top layer's gradient comes from 'value' alone
    out = model(torch.randn(4, D))
    model.zero_grad()
    out["topic"].sum().backward()
    assert all(p.grad is None for p in layers[2].parameters())


def test_hierarchical_errors() -> None:
    with pytest.raises(ValueError, match="task_depths names unknown task 'topc'. Did you mean 'topic'?"):
        MODELS.build("hierarchical", input_dim=D, tasks=TASKS, task_depths={"topc": 1})
    with pytest.raises(
        ValueError, match="depths must be ints in 1..2 \\(the stack has 2 layers\\); got \\{'ctr': 3\\}"
    ):
        MODELS.build("hierarchical", input_dim=D, tasks=TASKS, hidden_dims=(4, 4), task_depths={"ctr": 3})
    heads = {"a": nn.Linear(4, 1), "b": nn.Linear(4, 1)}
    with pytest.raises(ValueError, match="top 1 of the 2 layers would never be used"):
        Hierarchical([nn.Linear(4, 4), nn.Linear(4, 4)], heads, {"a": 1, "b": 1})
    with pytest.raises(ValueError, match="needs a depth for every task"):
        Hierarchical([nn.Linear(4, 4)], heads, {"a": 1})


# ---------------------------------------------------------------------------------------------- shared-private


def test_orthogonality_penalty_hand_worked_and_loop_reference() -> None:
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0], [1.0]])  # S^T P = [[1], [1]]
    assert orthogonality_penalty(s, p).item() == pytest.approx(2.0)
    assert orthogonality_penalty(torch.tensor([[1.0, 0.0]]).T, torch.tensor([[0.0, 1.0]]).T).item() == 0.0
    S, P = torch.randn(7, 3, dtype=torch.float64), torch.randn(7, 2, dtype=torch.float64)
    loop = sum(sum(S[n, i] * P[n, j] for n in range(7)) ** 2 for i in range(3) for j in range(2))
    torch.testing.assert_close(orthogonality_penalty(S, P), loop)
    with pytest.raises(ShapeError, match="two \\(N, d\\) feature matrices with the same N"):
        orthogonality_penalty(S, P[:3])


def test_normalized_orthogonality_penalty_hand_worked_and_loop_reference() -> None:
    # centred S rows: (-1, -1), (1, 1) -> unit rows (-1, -1)/sqrt2, (1, 1)/sqrt2; centred P: -1, 1 -> -1, 1
    # S^T P = (sqrt2, sqrt2): mean of squares 2
    s, p = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[0.0], [2.0]])
    assert orthogonality_penalty(s, p, normalize=True).item() == pytest.approx(2.0)
    S, P = torch.randn(7, 3, dtype=torch.float64), torch.randn(7, 2, dtype=torch.float64)

    def unit_rows(m: torch.Tensor) -> list[list[float]]:
        cols = [sum(float(m[n, i]) for n in range(7)) / 7 for i in range(m.shape[1])]
        rows = [[float(m[n, i]) - cols[i] for i in range(m.shape[1])] for n in range(7)]
        return [[v / math.sqrt(sum(u * u for u in r)) for v in r] for r in rows]

    su, pu = unit_rows(S), unit_rows(P)
    loop = sum(sum(su[n][i] * pu[n][j] for n in range(7)) ** 2 for i in range(3) for j in range(2)) / 6
    assert orthogonality_penalty(S, P, normalize=True).item() == pytest.approx(loop)
    model = MODELS.build(
        "shared_private", input_dim=D, tasks=TASKS, orthogonality=0.5, normalize_orthogonality=True
    )
    x = torch.randn(5, D)
    sh = model.shared(x)
    want = sum(orthogonality_penalty(sh, model.private[t.name](x), normalize=True) for t in TASKS)
    torch.testing.assert_close(model.forward_parts(x).aux["orthogonality"], 0.5 * want)


@pytest.mark.parametrize("with_input_layer", [False, True])
def test_shared_private_outputs_penalty_and_representation(with_input_layer: bool) -> None:
    kwargs = {"input_dim": D}
    x = torch.randn(6, D, dtype=torch.float64)
    if with_input_layer:
        schema = FeatureSchema(categorical=("a",), cardinalities=(5,), numeric=("n", "m"))
        kwargs = {"input_dim": None, "input_layer": EmbeddingFrontEnd(schema, 3)}
        x = {"categorical": torch.randint(0, 5, (6, 1)), "numeric": torch.randn(6, 2, dtype=torch.float64)}
    model = MODELS.build(
        "shared_private",
        tasks=TASKS,
        shared_dims=(5,),
        private_dims=(4,),
        tower_dims=(3,),
        orthogonality=0.2,
        **kwargs,
    ).double()
    out, out_aux, _ = model.forward_parts(x)
    e = model.input_layer(x) if with_input_layer else x
    s = run_mlp(model.shared, e)
    penalty = torch.zeros((), dtype=torch.float64)
    for t in TASKS:
        p = run_mlp(model.private[t.name], e)
        torch.testing.assert_close(out[t.name], run_mlp(model.heads[t.name], torch.cat([s, p], dim=1)))
        penalty = penalty + ((s.T @ p) ** 2).sum()
    torch.testing.assert_close(out_aux["orthogonality"], 0.2 * penalty)
    dec, dec_aux, rep = model.forward_parts(x, representation=True)
    assert rep.shape == (6, 5 + (model.input_layer.out_features if with_input_layer else 0))
    assert set(dec) == set(out) and set(dec_aux) == set(out_aux)
    for k in out:
        torch.testing.assert_close(dec[k], out[k])
    torch.testing.assert_close(dec_aux["orthogonality"], out_aux["orthogonality"])
    # the summing aggregator at the representation reproduces the plain gradient of losses + penalty
    targets = make_targets(6, torch.Generator().manual_seed(2))
    tl = task_losses_of(model, x, targets)
    want = torch.autograd.grad(
        tl.losses.sum() + model.forward_parts(x).aux["orthogonality"], list(model.parameters())
    )
    preds, aux, rep = model.forward_parts(x, representation=True)
    model.zero_grad()
    mtlkit.backward(
        mtlkit.task_losses(TASKS, preds, targets),
        aggregator=AGGREGATORS.build("sum", tasks=TASKS),
        model=model,
        representation=rep,
        aux=aux,
    )
    for p, w in zip(model.parameters(), want):
        torch.testing.assert_close(p.grad, w)


def test_shared_private_parameter_count_ownership_and_errors() -> None:
    model = MODELS.build(
        "shared_private", input_dim=D, tasks=TASKS, shared_dims=(5,), private_dims=(4,), tower_dims=(3,)
    )
    want = mlp_count([D, 5]) + 3 * mlp_count([D, 4]) + sum(mlp_count([9, 3, t.output_dim]) for t in TASKS)
    assert n_params(model) == want
    assert ids(model.shared_parameters()) == ids(model.shared.parameters())
    assert "orthogonality" not in model.forward_parts(torch.randn(2, D)).aux  # off by default
    with pytest.raises(ValueError, match="orthogonality must be a float >= 0; got -0.1"):
        SharedPrivate(nn.Linear(2, 2), {"a": nn.Linear(2, 2)}, {"a": nn.Linear(4, 1)}, orthogonality=-0.1)
    with pytest.raises(ValueError, match="one private encoder per task \\['a'\\]; got \\['b'\\]"):
        SharedPrivate(nn.Linear(2, 2), {"b": nn.Linear(2, 2)}, {"a": nn.Linear(4, 1)})


# ---------------------------------------------------------------------------------------------- configs


def test_sharing_models_build_from_configs() -> None:
    from mtlkit.config.build import build_model
    from mtlkit.config.components import FAMILIES, validate_component
    from mtlkit.data import MultiTaskDataset
    from mtlkit.data.splits import DataSplits
    from mtlkit.errors import ConfigError

    spec, problems = validate_component(
        {"name": "hierarchical", "hidden_dims": [8, 4], "task_depths": {"y1": 1}}, FAMILIES["model"], "model"
    )
    assert problems == [] and spec is not None and spec["task_depths"] == {"y1": 1}
    _, problems = validate_component({"name": "soft_sharing", "penalty": "l1"}, FAMILIES["model"], "model")
    assert (
        len(problems) == 1 and problems[0].startswith("model.penalty:") and "'l2' or 'trace'" in problems[0]
    )
    _, problems = validate_component({"name": "mtan", "chanels": [4]}, FAMILIES["model"], "model")
    assert problems and "Did you mean 'channels'?" in problems[0]

    tasks = (Task(name="a", kind="binary"), Task(name="b", kind="regression"))
    targets = {"a": torch.ones(4), "b": torch.zeros(4)}
    flat = MultiTaskDataset(torch.randn(4, 6), targets, tasks=tasks)
    flat_splits = DataSplits(flat, None, None, tasks, 6)
    for name in ("soft_sharing", "cross_stitch", "hierarchical", "shared_private"):
        model = build_model({"name": name, "activation": "tanh"}, flat_splits)
        assert set(model(flat.inputs)) == {"a", "b"}
    images = MultiTaskDataset(torch.randn(4, 1, 8, 8), targets, tasks=tasks)
    image_splits = DataSplits(images, None, None, tasks, (1, 8, 8))
    model = build_model({"name": "mtan", "channels": [2, 3]}, image_splits)
    assert isinstance(model, MTAN) and set(model(images.inputs)) == {"a", "b"}
    with pytest.raises(ConfigError, match="'mtan' builds its own input network and takes no backbone"):
        build_model({"name": "mtan"}, image_splits, backbone={"name": "flatten"})


def test_docs_example_runs() -> None:
    doc = REPO / "docs" / "arch_sharing.md"
    (code,) = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    ns: dict = {}
    exec(compile(code, "docs/arch_sharing.md", "exec"), ns)
    assert {k: tuple(v.shape) for k, v in ns["stitches"].items()} == {
        "stitch0": (4, 2, 2),
        "stitch1": (4, 2, 2),
    }
    assert ns["penalty"] > 0
