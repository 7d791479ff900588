"""Each task's layers on its own labelled rows (``forward_parts(x, rows=...)``): the labelled rows'
outputs, the masked losses and every gradient equal those of the full computation; rows the task
is not given never reach its parameters; the trainer's :func:`label_rows` against a loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtlkit import Task
from mtlkit.aggregation import PCGrad
from mtlkit.data.batch import Batch
from mtlkit.losses import task_losses
from mtlkit.models._kernels import GATHER_FRACTION
from mtlkit.models.backbones.cnn import SmallCNN
from mtlkit.registries import MODELS
from mtlkit.state import TrainState
from mtlkit.training.balancer import Balancer
from mtlkit.training.optimizers import OptimizerSet
from mtlkit.training.step import label_rows, train_step
from mtlkit.weighting import StaticWeighting

TASKS = [Task(name="a", kind="multiclass", num_classes=4), Task(name="b", kind="binary")]


def _models(dtype: torch.dtype) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    out = {
        "shared_bottom": MODELS.get("shared_bottom")(6, TASKS, bottom_dims=[8], tower_dims=[5]),
        "single_task": MODELS.get("single_task")(6, TASKS, hidden_dims=[7, 3]),
    }
    return {k: m.to(dtype) for k, m in out.items()}


def _batch(n: int, dtype: torch.dtype, flag: torch.Tensor) -> Batch:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g, dtype=dtype)
    return Batch(
        x,
        {"a": torch.randint(0, 4, (n,), generator=g), "b": torch.randint(0, 2, (n,), generator=g).to(dtype)},
        {"a": flag, "b": ~flag},
    )


def _grads(model: nn.Module, batch: Batch, rows) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    model.zero_grad()
    out = model.forward_parts(batch.inputs, rows=rows).outputs
    tl = task_losses(TASKS, out, batch.targets, batch.masks)
    tl.losses.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return tl.losses.detach(), grads, out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["shared_bottom", "single_task"])
def test_rows_give_the_full_computations_losses_and_gradients(name: str, dtype: torch.dtype) -> None:
    n = 40
    flag = torch.arange(n) % 3 == 0  # a: 14 rows, b: 26 rows (both under GATHER_FRACTION)
    batch = _batch(n, dtype, flag)
    model = _models(dtype)[name]
    assert model.accepts_rows
    rows = label_rows(batch, TASKS)
    assert set(rows) == {"a", "b"}
    loss_rows, g_rows, out_rows = _grads(model, batch, rows)
    loss_full, g_full, out_full = _grads(model, batch, None)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(loss_rows, loss_full, rtol=tol, atol=tol)
    assert set(g_rows) == set(g_full) == {n for n, _ in model.named_parameters()}
    for k in g_full:
        scale = g_full[k].abs().max().clamp_min(1e-3)
        assert (g_rows[k] - g_full[k]).abs().max() <= tol * 10 * scale, k
    for t, m in (("a", flag), ("b", ~flag)):
        torch.testing.assert_close(out_rows[t][m], out_full[t][m], rtol=tol, atol=tol)
        assert out_rows[t].shape == out_full[t].shape
        assert torch.all(out_rows[t][~m] == 0)  # the rows a task is not given: zeros, no graph into its layers


def test_rows_outside_the_gather_range_keep_the_full_computation() -> None:
    n = 20
    flag = torch.zeros(n, dtype=torch.bool)
    flag[0] = True  # a: 1 row (< 2), b: 19 rows (> GATHER_FRACTION * n)
    assert GATHER_FRACTION * n < 19
    batch = _batch(n, torch.float64, flag)
    for name, model in _models(torch.float64).items():
        rows = label_rows(batch, TASKS)
        with torch.no_grad():
            got = model.forward_parts(batch.inputs, rows=rows).outputs
            want = model(batch.inputs)
        for t in ("a", "b"):  # every row computed, as without rows
            torch.testing.assert_close(got[t], want[t], rtol=1e-12, atol=1e-12, msg=f"{name}/{t}")


def test_a_task_without_rows_gets_zero_not_missing_gradients() -> None:
    """An optimizer keeps stepping a task's parameters whose gradient is 0 (Adam's momentum), as
    before; only a computed-but-masked task has that, so a task left with < 2 rows runs fully."""
    n = 10
    flag = torch.zeros(n, dtype=torch.bool)  # a: no rows
    batch = _batch(n, torch.float64, flag)
    model = _models(torch.float64)["single_task"]
    _, grads, _ = _grads(model, batch, label_rows(batch, TASKS))
    a_params = [k for k in grads if k.startswith("networks.a.")]
    assert a_params and all(torch.all(grads[k] == 0) for k in a_params)


def test_label_rows_matches_a_loop() -> None:
    tasks = [
        Task(name="r", kind="regression"),
        Task(name="m", kind="multilabel", num_classes=3),
        Task(name="c", kind="multiclass", num_classes=3),
        Task(name="full", kind="binary"),
    ]
    n = 12
    g = torch.Generator().manual_seed(2)
    r = torch.randn(n, generator=g, dtype=torch.float64)
    r[[1, 4]] = float("nan")  # missing by NaN as well as by mask
    m = torch.randint(0, 2, (n, 3), generator=g).double()
    m_mask = torch.rand(n, 3, generator=g) < 0.4  # per-element mask: a row counts if any element is labelled
    m_mask[5] = False
    c = torch.randint(0, 3, (n,), generator=g)
    c[7] = -1  # a missing class label
    batch = Batch(
        torch.zeros(n, 2),
        {"r": r, "m": m, "c": c, "full": torch.ones(n)},
        {"r": torch.arange(n) % 2 == 0, "m": m_mask, "c": torch.ones(n, dtype=torch.bool)},
    )
    got = label_rows(batch, tasks)
    want = {
        "r": [i for i in range(n) if i % 2 == 0 and i not in (1, 4)],
        "m": [i for i in range(n) if bool(m_mask[i].any())],
        "c": [i for i in range(n) if i != 7],
    }
    assert set(got) == set(want)  # "full" has no mask: every row, not listed
    for t, idx in want.items():
        assert got[t].tolist() == idx, t


def test_label_rows_leaves_accelerator_masks_alone() -> None:
    """No host synchronisation per step off the CPU: masks elsewhere give {} (every row)."""
    n = 6
    batch = Batch(
        torch.zeros(n, 2, device="meta"),
        {"a": torch.zeros(n, dtype=torch.long, device="meta")},
        {"a": torch.zeros(n, dtype=torch.bool, device="meta")},
    )
    assert label_rows(batch, TASKS) == {}


def test_train_step_passes_rows_on_the_plain_path_only() -> None:
    n = 12
    batch = _batch(n, torch.float32, torch.arange(n) % 2 == 0)
    for aggregator, want in ((None, 1), (PCGrad(), 0)):
        model = _models(torch.float32)["shared_bottom"]
        seen: list[object] = []
        orig = model._forward_rows

        def spy(x, rows, orig=orig, seen=seen):
            seen.append(rows)
            return orig(x, rows)

        model._forward_rows = spy  # type: ignore[method-assign]
        weighting = StaticWeighting(TASKS, [1.0, 1.0])
        opt = OptimizerSet(model, weighting, ["a", "b"], lambda p: torch.optim.SGD(p, lr=0.1))
        stats = train_step(model, batch, TASKS, Balancer(weighting, aggregator), opt, TrainState())
        assert len(seen) == want  # gradient-level methods take the representation path (every row)
        assert torch.isfinite(stats.losses.losses).all()


def test_small_cnn_channels_last_equals_the_plain_convolutions() -> None:
    torch.manual_seed(0)
    net = SmallCNN((1, 28, 28)).double()
    x = torch.rand(5, 1, 28, 28, dtype=torch.float64)
    conv1, conv2 = net.features[0], net.features[3]
    assert conv1.weight.is_contiguous(memory_format=torch.channels_last)
    f = torch.nn.functional
    h = f.max_pool2d(f.relu(f.conv2d(x, conv1.weight.contiguous(), conv1.bias, padding=2)), 2)
    h = f.max_pool2d(f.relu(f.conv2d(h, conv2.weight.contiguous(), conv2.bias, padding=1)), 2)
    torch.testing.assert_close(net(x), h.reshape(5, -1), rtol=1e-12, atol=1e-12)
    # the state dict loads into a plain (contiguous) copy and back unchanged
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    other = SmallCNN((1, 28, 28)).double()
    other.load_state_dict(state)
    torch.testing.assert_close(other(x), net(x), rtol=1e-12, atol=1e-12)
