"""Named per-task losses, positive/class weights and sample weights against hand formulas and
torch's reference modules, with missing labels masked out."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtlkit import Task, task_losses
from mtlkit.errors import DataError

NAN = math.nan


def _close(a: torch.Tensor | float, b: torch.Tensor | float, rel: float = 1e-5) -> None:
    a, b = float(a), float(b)
    assert abs(a - b) <= rel * max(1.0, abs(b)), (a, b)


# ------------------------------------------------------------------ binary
def test_focal_matches_the_hand_formula_with_missing_labels() -> None:
    x = torch.tensor([2.0, -1.0, 0.5, 3.0])
    y = torch.tensor([1.0, 0.0, NAN, 0.0])
    task = Task(name="c", kind="binary", loss={"name": "focal", "gamma": 2.0, "alpha": 0.25})
    loss, n = task.compute_loss(x, y)
    terms = []
    for xi, yi in [(2.0, 1.0), (-1.0, 0.0), (3.0, 0.0)]:  # the NaN row is left out
        p = 1 / (1 + math.exp(-xi))
        pt = p if yi == 1 else 1 - p
        at = 0.25 if yi == 1 else 0.75
        terms.append(-at * (1 - pt) ** 2 * math.log(pt))
    _close(loss, sum(terms) / 3)
    assert float(n) == 3


def test_focal_with_gamma_0_and_no_alpha_is_bce() -> None:
    x, y = torch.randn(7), torch.tensor([1.0, 0, 1, 1, 0, 0, 1])
    task = Task(name="c", kind="binary", loss={"name": "focal", "gamma": 0})
    _close(task.compute_loss(x, y)[0], F.binary_cross_entropy_with_logits(x, y))


def test_pos_weight_matches_torch_bce_with_logits() -> None:
    x, y = torch.randn(6), torch.tensor([1.0, 0, 1, 0, 0, 1])
    task = Task(name="c", kind="binary", pos_weight=3.0)
    ref = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(3.0))(x, y)
    _close(task.compute_loss(x, y)[0], ref)
    probs = Task(name="p", kind="binary", logits=False, pos_weight=3.0)  # on probabilities too
    _close(probs.compute_loss(torch.sigmoid(x), y)[0], ref, rel=1e-4)


# ------------------------------------------------------------------ multiclass
def test_class_weights_and_label_smoothing_match_torch_cross_entropy() -> None:
    x = torch.randn(8, 3)
    y = torch.tensor([0, 2, 1, 1, 0, 2, 2, 1])
    cw = (1.0, 2.0, 0.5)
    task = Task(name="m", kind="multiclass", num_classes=3, class_weights=cw, label_smoothing=0.1)
    ref = torch.nn.CrossEntropyLoss(weight=torch.tensor(cw), label_smoothing=0.1)(x, y)
    loss, n = task.compute_loss(x, y)
    _close(loss, ref)
    _close(n, sum(cw[i] for i in y.tolist()))  # the count is the class-weight sum, as torch's mean
    named = Task(
        name="m", kind="multiclass", num_classes=3, loss={"name": "cross_entropy", "label_smoothing": 0.1}
    )
    _close(named.compute_loss(x, y)[0], F.cross_entropy(x, y, label_smoothing=0.1))


def test_class_weights_with_a_missing_label_and_sample_weights() -> None:
    x = torch.randn(4, 2)
    y = torch.tensor([0, 1, -1, 1])
    w = torch.tensor([2.0, 1.0, 5.0, 0.5])
    task = Task(name="m", kind="multiclass", num_classes=2, class_weights=(1.0, 3.0))
    loss, n = task.compute_loss(x, y, None, w)
    nll = -torch.log_softmax(x, dim=1)
    num = 2.0 * 1.0 * nll[0, 0] + 1.0 * 3.0 * nll[1, 1] + 0.5 * 3.0 * nll[3, 1]
    den = 2.0 * 1.0 + 1.0 * 3.0 + 0.5 * 3.0
    _close(loss, num / den)
    _close(n, den)


# ------------------------------------------------------------------ regression
def test_huber_and_mse_match_torch() -> None:
    x, y = torch.tensor([0.0, 1.0, 5.0]), torch.tensor([0.5, NAN, 1.0])
    huber = Task(name="r", kind="regression", loss={"name": "huber", "delta": 1.0})
    # |0 - 0.5| = 0.5 <= 1: 0.125; |5 - 1| = 4 > 1: 1 * (4 - 0.5) = 3.5
    _close(huber.compute_loss(x, y)[0], (0.125 + 3.5) / 2)
    _close(Task(name="r", kind="regression", loss="mse").compute_loss(x, y)[0], (0.25 + 16.0) / 2)


def test_poisson_matches_torch_and_predicts_exp() -> None:
    x, y = torch.tensor([0.1, 1.5, -0.3]), torch.tensor([0.0, 3.0, 1.0])
    task = Task(name="n", kind="regression", loss="poisson")
    _close(task.compute_loss(x, y)[0], F.poisson_nll_loss(x, y, log_input=True, full=False))
    torch.testing.assert_close(task.activate(x.reshape(-1, 1)), torch.exp(x))
    with pytest.raises(DataError, match="needs labels >= 0"):
        task.check_targets(torch.tensor([1.0, -2.0]))


def test_tweedie_hand_formula_and_its_minimum_at_the_mean() -> None:
    rho = 1.3
    x, y = torch.tensor([0.2, -0.5]), torch.tensor([2.0, 0.0])
    task = Task(name="t", kind="regression", loss={"name": "tweedie", "power": rho})
    want = [
        -yi * math.exp(xi * (1 - rho)) / (1 - rho) + math.exp(xi * (2 - rho)) / (2 - rho)
        for xi, yi in zip(x.tolist(), y.tolist())
    ]
    _close(task.compute_loss(x, y)[0], sum(want) / 2)
    # the loss of a label y is smallest at the output log(y): the model outputs the log-mean
    z = torch.tensor([math.log(2.0)], requires_grad=True)
    task.compute_loss(z, torch.tensor([2.0]))[0].backward()
    assert abs(float(z.grad)) < 1e-5


# ------------------------------------------------------------------ sample weights
def test_sample_weights_give_the_weighted_mean_over_labelled_rows() -> None:
    x = torch.tensor([0.0, 1.0, 2.0, 3.0])
    y = torch.tensor([1.0, NAN, 0.0, 3.0])
    w = torch.tensor([0.5, 10.0, 2.0, 0.25])
    task = Task(name="r", kind="regression")
    loss, n = task.compute_loss(x, y, None, w)
    _close(loss, (0.5 * 1.0 + 2.0 * 4.0 + 0.25 * 0.0) / (0.5 + 2.0 + 0.25))
    _close(n, 2.75)
    zero, n0 = task.compute_loss(x, y, None, torch.zeros(4))
    assert float(zero) == 0 and float(n0) == 0


def test_task_losses_take_weights_per_task_and_refuse_unknown_keys() -> None:
    tasks = (Task(name="a", kind="binary"), Task(name="b", kind="regression"))
    out = {"a": torch.randn(3, 1), "b": torch.randn(3, 1)}
    targets = {"a": torch.tensor([1.0, 0.0, 1.0]), "b": torch.tensor([1.0, 2.0, 3.0])}
    w = torch.tensor([1.0, 3.0, 0.0])
    tl = task_losses(tasks, out, targets, None, {"a": w})
    bce = F.binary_cross_entropy_with_logits(out["a"].squeeze(1), targets["a"], reduction="none")
    _close(tl.losses[0], (bce * w).sum() / w.sum())
    _close(tl.losses[1], F.mse_loss(out["b"].squeeze(1), targets["b"]))  # unweighted task
    assert tl.counts.tolist() == [4.0, 3.0]
    with pytest.raises(DataError, match="Sample weights are keyed by task name; 'aa' is no task"):
        task_losses(tasks, out, targets, None, {"aa": w})


def test_multilabel_weights_broadcast_over_the_labels() -> None:
    x = torch.randn(2, 3)
    y = torch.tensor([[1.0, 0.0, NAN], [0.0, 1.0, 1.0]])
    w = torch.tensor([2.0, 1.0])
    task = Task(name="ml", kind="multilabel", num_classes=3)
    loss, n = task.compute_loss(x, y, None, w)
    e = F.binary_cross_entropy_with_logits(x, torch.nan_to_num(y), reduction="none")
    want = (2 * (e[0, 0] + e[0, 1]) + (e[1, 0] + e[1, 1] + e[1, 2])) / (2 * 2 + 3)
    _close(loss, want)
    _close(n, 7.0)


# ------------------------------------------------------------------ transforms
def test_log1p_transform_trains_on_log1p_and_predicts_on_the_label_scale() -> None:
    task = Task(name="watch", kind="regression", transform="log1p")
    y = torch.tensor([0.0, 9.0, 99.0])
    z = torch.tensor([0.5, 2.0, 4.0])
    _close(task.compute_loss(z, y)[0], F.mse_loss(z, torch.log1p(y)))
    torch.testing.assert_close(task.activate(torch.log1p(y).reshape(-1, 1)), y)
    tiny = torch.tensor([1e-7, -1e-6, 3e-5, 20.0], dtype=torch.float64)  # the inverse is expm1, digits kept
    torch.testing.assert_close(task.transform.inverse(tiny), torch.expm1(tiny), rtol=1e-12, atol=0)
    with pytest.raises(DataError, match="log1p needs labels > -1"):
        task.check_targets(torch.tensor([1.0, -3.0]))


def test_standardise_transform_is_fitted_and_inverted() -> None:
    from mtlkit.transforms import TargetTransform

    y = torch.tensor([1.0, 3.0, NAN, 5.0])
    tf = TargetTransform.fit("standardise", y)
    _close(tf.mean, 3.0)
    _close(tf.std, math.sqrt(8 / 3))
    task = Task(name="v", kind="regression", transform=tf.to_dict())  # as read back from signature.json
    z = tf.forward(torch.tensor([1.0, 3.0, 5.0]))
    _close(task.compute_loss(z, torch.tensor([1.0, 3.0, 5.0]))[0], 0.0)
    torch.testing.assert_close(task.activate(z.reshape(-1, 1)), torch.tensor([1.0, 3.0, 5.0]))


# ------------------------------------------------------------------ refused settings
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "binary", "loss": "focall"}, "unknown loss 'focall'. Did you mean 'focal'"),
        ({"kind": "binary", "loss": "huber"}, "'huber' applies to regression tasks, not to a binary task"),
        ({"kind": "regression", "loss": {"name": "tweedie", "power": 2.0}}, "power must be in \\(1, 2\\)"),
        ({"kind": "regression", "loss": {"name": "huber", "delt": 1}}, "takes no parameter 'delt'"),
        ({"kind": "binary", "loss": "focal", "pos_weight": 2.0}, "focal weighs the positives with alpha"),
        ({"kind": "regression", "pos_weight": 2.0}, "pos_weight applies to binary and multilabel"),
        ({"kind": "multiclass", "num_classes": 3, "class_weights": [1, 2]}, "one weight per class \\(3\\)"),
        ({"kind": "binary", "transform": "log1p"}, "transform applies to regression tasks only"),
        ({"kind": "regression", "transform": "standardise"}, "needs the training labels' mean and std"),
        (
            {
                "kind": "regression",
                "loss": "poisson",
                "transform": {"name": "standardise", "mean": 0, "std": 1},
            },
            "standardised labels are negative",
        ),
    ],
)
def test_bad_loss_settings_are_refused_with_the_fix(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Task(name="x", **kwargs)
