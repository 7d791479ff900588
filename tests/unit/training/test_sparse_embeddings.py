"""Sparse-gradient embedding tables stepped by SparseAdam beside a dense optimizer (issue 14 §7)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mtlkit.data.schema import CATEGORICAL, NUMERIC, FeatureSchema
from mtlkit.models.backbones import embedding
from mtlkit.training.optimizers import OptimizerSet
from mtlkit.training.sparse_optim import SparseDenseOptimizer, sparse_parameters


class Net(nn.Module):
    def __init__(self, sparse: bool) -> None:
        super().__init__()
        self.front = embedding(
            FeatureSchema(("a", "b"), (50, 30), ("x",)),
            embedding_dim=4,
            init_std=0.1,
            sparse_embeddings=sparse,
        )
        self.head = nn.Linear(self.front.out_features, 1)

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.front(x)).squeeze(1)


def batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    codes = torch.stack(
        [torch.randint(0, 10, (16,), generator=g), torch.randint(0, 30, (16,), generator=g)], 1
    )
    return {CATEGORICAL: codes, NUMERIC: torch.randn(16, 1, generator=g)}


def step(opts: OptimizerSet, model: nn.Module, x: dict[str, torch.Tensor]) -> None:
    opts.zero_grad()
    model(x).pow(2).mean().backward()
    opts.step()


def test_sparse_tables_get_sparse_adam_and_the_first_step_equals_dense_adam() -> None:
    torch.manual_seed(0)
    sparse = Net(sparse=True)
    dense = Net(sparse=False)
    dense.load_state_dict(copy.deepcopy(sparse.state_dict()))
    factory = lambda ps: torch.optim.Adam(ps, lr=0.01)  # noqa: E731
    s_opts = OptimizerSet(sparse, nn.Module(), ["t"], factory)
    d_opts = OptimizerSet(dense, nn.Module(), ["t"], factory)
    opt = s_opts.optimizers[None]
    assert isinstance(opt, SparseDenseOptimizer) and isinstance(opt.sparse, torch.optim.SparseAdam)
    assert [id(p) for p in sparse_parameters(sparse)] == [id(sparse.front.table.weight)]
    before = sparse.front.table.weight.detach().clone()
    x = batch(0)
    step(s_opts, sparse, x)
    step(d_opts, dense, x)
    assert sparse.front.table.weight.grad is None or sparse.front.table.weight.grad.is_sparse
    assert (sparse.front.table.weight.detach() - before).abs().max() > 0.5 * 0.01  # a real Adam step
    for (name, p), q in zip(sparse.named_parameters(), dense.parameters()):
        # SparseAdam adds eps before the bias correction of the second moment (Adam after it): the
        # first steps differ by about lr * eps * 32 / |grad|, far below 1e-3 * lr here
        torch.testing.assert_close(p, q, rtol=0, atol=1e-3 * 0.01, msg=name)
    used = torch.unique(torch.cat([x[CATEGORICAL][:, 0], x[CATEGORICAL][:, 1] + 50]))
    unused = torch.ones(80, dtype=torch.bool)
    unused[used] = False
    changed = (sparse.front.table.weight.detach() != before).any(1)
    assert changed[used].all() and not changed[unused].any()  # rows 10..49 of column a never used


def test_schedulers_state_and_weighting_parameters_reach_both_optimizers() -> None:
    model = Net(sparse=True)
    weighting = nn.Module()
    weighting.w = nn.Parameter(torch.zeros(1))
    opts = OptimizerSet(
        model,
        weighting,
        ["t"],
        lambda ps: torch.optim.Adam(ps, lr=0.1),
        lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5),
    )
    opt = opts.optimizers[None]
    assert any(p is weighting.w for g in opt.dense.param_groups for p in g["params"])
    step(opts, model, batch(1))
    opts.end_epoch(0.0)
    assert opts.learning_rates() == pytest.approx([0.05] * len(opt.param_groups))
    assert opt.sparse.param_groups[0]["lr"] == pytest.approx(0.05)
    state = opt.state_dict()
    again = OptimizerSet(model, weighting, ["t"], lambda ps: torch.optim.Adam(ps, lr=0.1))
    again.load_state_dict({"optimizer": state, "task_optimizers": None})
    assert again.optimizers[None].sparse.state_dict()["state"].keys() == state["sparse"]["state"].keys()


def test_grad_clipping_with_sparse_tables_is_refused() -> None:
    with pytest.raises(ValueError, match="grad_clip_norm needs dense gradients"):
        OptimizerSet(Net(sparse=True), nn.Module(), ["t"], None, clip_norm=1.0)


def test_gradient_aggregators_with_sparse_tables_are_refused() -> None:
    from mtlkit import Task
    from mtlkit.aggregation import AGGREGATORS
    from mtlkit.registries import MODELS
    from mtlkit.training.trainer import Trainer

    tasks = [Task(name="a", kind="regression"), Task(name="b", kind="regression")]
    schema = FeatureSchema(("c",), (50,), ("x",))
    model = MODELS.build(
        "mmoe",
        input_dim=None,
        tasks=tasks,
        num_experts=2,
        input_layer=lambda: embedding(schema, sparse_embeddings=True),
    )
    with pytest.raises(ValueError, match="combines dense per-task gradients"):
        Trainer(model, tasks, aggregator=AGGREGATORS.build("pcgrad", tasks=tasks), device="cpu")
