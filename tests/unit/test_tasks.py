"""Tasks: validation, masked losses against hand-computed values, activation, target checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtlkit import Task, TaskKind
from mtlkit.errors import DataError, ShapeError

NAN = float("nan")


def bce(x: float, y: float) -> float:
    """Binary cross-entropy with logits, written out."""
    return -(y * math.log(1 / (1 + math.exp(-x))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-x))))


def test_kind_from_string_and_output_dims() -> None:
    assert Task(name="a", kind="binary").kind is TaskKind.BINARY
    assert Task(name="a", kind="binary").output_dim == 1
    assert Task(name="a", kind="multiclass", num_classes=10).output_dim == 10
    assert Task(name="a", kind="multilabel", num_classes=6).output_dim == 6
    assert Task(name="a", kind="regression", num_outputs=3).output_dim == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "", "kind": "binary"}, "non-empty identifier"),
        ({"name": "a/b", "kind": "binary"}, "identifier"),
        ({"name": "a", "kind": "ranking"}, "kind must be one of 'binary', 'multiclass'"),
        ({"name": "a", "kind": "multiclass"}, "needs num_classes, an int >= 2; got None"),
        ({"name": "a", "kind": "multiclass", "num_classes": 1}, "needs num_classes"),
        ({"name": "a", "kind": "binary", "num_classes": 2}, "takes no num_classes"),
        ({"name": "a", "kind": "regression", "num_classes": 2}, "Use num_outputs"),
        ({"name": "a", "kind": "binary", "label_smoothing": 0.1}, "label_smoothing applies to multiclass"),
        (
            {"name": "a", "kind": "multiclass", "num_classes": 3, "label_smoothing": 1.0},
            r"label_smoothing must be in \[0, 1\)",
        ),
        ({"name": "a", "kind": "binary", "num_outputs": 2}, "num_outputs applies to regression"),
    ],
)
def test_invalid_task_definitions(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Task(**kwargs)


def test_binary_masked_loss_hand_computed() -> None:
    task = Task(name="ctr", kind="binary")
    pred = torch.tensor([0.5, -1.0, 2.0, 0.3], requires_grad=True)
    target = torch.tensor([1.0, NAN, 0.0, NAN])
    loss, count = task.compute_loss(pred, target)
    expected = (bce(0.5, 1.0) + bce(2.0, 0.0)) / 2
    assert count.item() == 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # unlabelled samples get exactly zero gradient
    assert pred.grad[1].item() == 0.0 and pred.grad[3].item() == 0.0
    # labelled: d/dx BCE = sigmoid(x) - y, averaged over 2
    assert pred.grad[0].item() == pytest.approx((torch.sigmoid(torch.tensor(0.5)).item() - 1) / 2, rel=1e-6)


def test_masked_loss_equals_loss_on_labelled_subset_for_every_kind() -> None:
    g = torch.Generator().manual_seed(1)
    n = 32
    keep = torch.rand(n, generator=g) > 0.4
    cases = [
        (
            Task(name="b", kind="binary"),
            torch.randn(n, 1, generator=g),
            (torch.rand(n, generator=g) > 0.5).float(),
        ),
        (
            Task(name="m", kind="multiclass", num_classes=5, label_smoothing=0.1),
            torch.randn(n, 5, generator=g),
            torch.randint(0, 5, (n,), generator=g),
        ),
        (Task(name="r", kind="regression"), torch.randn(n, generator=g), torch.randn(n, generator=g)),
    ]
    for task, pred, target in cases:
        missing = target.clone()
        if task.kind is TaskKind.MULTICLASS:
            missing[~keep] = -1
        else:
            missing = missing.float()
            missing[~keep] = NAN
        loss, count = task.compute_loss(pred, missing)
        sub_pred, sub_t = pred[keep], target[keep]
        if task.kind is TaskKind.BINARY:
            ref = F.binary_cross_entropy_with_logits(sub_pred.reshape(-1), sub_t)
        elif task.kind is TaskKind.MULTICLASS:
            ref = F.cross_entropy(sub_pred, sub_t, label_smoothing=0.1)
        else:
            ref = F.mse_loss(sub_pred, sub_t)
        assert count.item() == keep.sum().item()
        torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-7)
        # explicit mask gives the same as NaN / -1 markers
        loss_mask, _ = task.compute_loss(
            pred, target if task.kind is TaskKind.MULTICLASS else target.float(), keep
        )
        torch.testing.assert_close(loss_mask, ref, rtol=1e-6, atol=1e-7)


def test_multilabel_per_element_mask() -> None:
    task = Task(name="tags", kind="multilabel", num_classes=3)
    pred = torch.tensor([[0.1, -0.2, 0.3], [1.0, 2.0, -1.0]])
    target = torch.tensor([[1.0, NAN, 0.0], [NAN, 1.0, NAN]])
    loss, count = task.compute_loss(pred, target)
    expected = (bce(0.1, 1) + bce(0.3, 0) + bce(2.0, 1)) / 3
    assert count.item() == 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_multioutput_regression_nan_elements() -> None:
    task = Task(name="xy", kind="regression", num_outputs=2)
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[0.0, NAN], [NAN, 1.0]])
    loss, count = task.compute_loss(pred, target)
    assert count.item() == 2
    assert loss.item() == pytest.approx((1.0 + 9.0) / 2)


@pytest.mark.parametrize(
    ("task", "target"),
    [
        (Task(name="b", kind="binary"), torch.full((4,), NAN)),
        (Task(name="m", kind="multiclass", num_classes=3), torch.full((4,), -1)),
        (Task(name="r", kind="regression"), torch.full((4,), NAN)),
        (Task(name="l", kind="multilabel", num_classes=2), torch.full((4, 2), NAN)),
    ],
)
def test_no_labels_gives_zero_loss_and_zero_gradient(task: Task, target: torch.Tensor) -> None:
    pred = torch.randn(4, task.output_dim, requires_grad=True)
    loss, count = task.compute_loss(pred, target)
    assert count.item() == 0
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_label_smoothing_matches_seed_formula() -> None:
    """Seed 000's MNIST example: onehot * (1 - d) + d / C, then softmax cross-entropy."""
    task = Task(name="digit", kind="multiclass", num_classes=10, label_smoothing=0.01)
    logits = torch.randn(6, 10, dtype=torch.float64)
    y = torch.tensor([0, 3, 9, 1, 1, 7])
    smooth = F.one_hot(y, 10).double() * (1 - 0.01) + 0.01 / 10
    ref = -(smooth * torch.log_softmax(logits, -1)).sum(-1).mean()
    loss, _ = task.compute_loss(logits, y)
    torch.testing.assert_close(loss, ref)


def test_custom_loss_is_masked_and_shape_checked() -> None:
    task = Task(name="r", kind="regression", loss=lambda p, t: (p - t).abs())
    loss, _ = task.compute_loss(torch.tensor([1.0, 5.0, 2.0]), torch.tensor([0.0, NAN, 4.0]))
    assert loss.item() == pytest.approx(1.5)
    bad = Task(name="r", kind="regression", loss=lambda p, t: ((p - t) ** 2).mean())
    with pytest.raises(
        ShapeError, match=r"must return per-sample or per-element values \(reduction='none'\)"
    ):
        bad.compute_loss(torch.randn(3), torch.randn(3))


@pytest.mark.parametrize(
    ("task", "pred", "target", "match"),
    [
        (
            Task(name="m", kind="multiclass", num_classes=4),
            torch.randn(5, 3),
            torch.zeros(5),
            r"expects logits of shape \(N, 4\)",
        ),
        (
            Task(name="b", kind="binary"),
            torch.randn(5, 2),
            torch.zeros(5),
            r"one output and one target per sample",
        ),
        (Task(name="r", kind="regression"), torch.randn(5), torch.zeros(4), "disagree on batch size"),
        (Task(name="l", kind="multilabel", num_classes=3), torch.randn(5, 3), torch.zeros(5), r"\(N, 3\)"),
    ],
)
def test_shape_errors_name_the_task(task: Task, pred: torch.Tensor, target: torch.Tensor, match: str) -> None:
    with pytest.raises(ShapeError, match=match) as info:
        task.compute_loss(pred, target)
    assert repr(task.name) in str(info.value)


@pytest.mark.parametrize(
    ("task", "target", "match"),
    [
        (
            Task(name="m", kind="multiclass", num_classes=3),
            torch.tensor([0.0, NAN]),
            r"NaN labels found.*nan_to_num",
        ),
        (
            Task(name="m", kind="multiclass", num_classes=3),
            torch.tensor([0, 3]),
            "class index 3 out of range",
        ),
        (Task(name="m", kind="multiclass", num_classes=3), torch.tensor([0.5, 1.0]), "integer class indices"),
        (Task(name="b", kind="binary"), torch.tensor([0.0, 2.0]), r"must lie in \[0, 1\].*kind='multiclass'"),
        (Task(name="r", kind="regression"), torch.tensor([0.0, float("inf")]), "infinite labels"),
        (Task(name="l", kind="multilabel", num_classes=2), torch.zeros(3), r"shape \(N, 2\)"),
    ],
)
def test_check_targets_rejects_bad_labels(task: Task, target: torch.Tensor, match: str) -> None:
    with pytest.raises(DataError, match=match):
        task.check_targets(target)


def test_activation() -> None:
    assert torch.allclose(Task(name="b", kind="binary").activate(torch.zeros(3, 1)), torch.full((3,), 0.5))
    probs = Task(name="m", kind="multiclass", num_classes=4).activate(torch.randn(2, 4))
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
