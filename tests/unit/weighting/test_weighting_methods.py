"""Loss-level methods of issue 3 against hand-worked values and reference implementations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtlkit.state import TrainState
from mtlkit.weighting import DWA, FAMO, GLS, IMTLL, RLW, GradNorm

NAMES = ("a", "b")


def test_dwa_uniform_for_two_epochs_then_softmax_of_ratios() -> None:
    dwa = DWA(NAMES, temperature=2.0)
    L = torch.tensor([3.0, 1.0])
    for history in [(), ((5.0, 5.0),)]:
        out = dwa(L, state=TrainState(epoch_losses=history))
        assert out.weights.tolist() == [1.0, 1.0]
    # epoch t-2: (2, 1); epoch t-1: (1, 1) -> ratios (0.5, 1)
    out = dwa(L, state=TrainState(epoch_losses=((2.0, 1.0), (1.0, 1.0))))
    e = [math.exp(0.5 / 2), math.exp(1.0 / 2)]
    expected = [2 * v / sum(e) for v in e]
    assert out.weights.tolist() == pytest.approx(expected)
    assert out.total.item() == pytest.approx(3 * expected[0] + expected[1])
    assert sum(out.weights.tolist()) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="temperature` must be > 0"):
        DWA(NAMES, temperature=0)


def test_rlw_is_softmax_of_the_generators_normal_draws() -> None:
    rlw = RLW(("a", "b", "c"))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    out = rlw(torch.tensor([1.0, 2.0, 3.0]), state=TrainState(generator=g1))
    expected = torch.softmax(torch.randn(3, generator=g2, dtype=torch.float64), 0).float()
    torch.testing.assert_close(out.weights, expected)
    assert out.weights.sum().item() == pytest.approx(1.0)
    out = rlw(
        torch.tensor([1.0, 0.0, 3.0]),
        present=torch.tensor([True, False, True]),
        state=TrainState(generator=g1),
    )
    assert out.weights[1].item() == 0.0
    assert out.weights.sum().item() == pytest.approx(1.0)


def test_gls_is_the_geometric_mean_with_its_gradient() -> None:
    L = torch.tensor([2.0, 8.0, 4.0], requires_grad=True)
    out = GLS(("a", "b", "c"))(L)
    assert out.total.item() == pytest.approx((2 * 8 * 4) ** (1 / 3))
    out.total.backward()
    assert L.grad.tolist() == pytest.approx([4 / (3 * 2), 4 / (3 * 8), 4 / (3 * 4)])
    assert out.weights.tolist() == pytest.approx(L.grad.tolist())
    # absent tasks leave the product
    out = GLS(("a", "b", "c"))(torch.tensor([2.0, 0.0, 8.0]), present=torch.tensor([True, False, True]))
    assert out.total.item() == pytest.approx(4.0)


def test_imtl_l_gradients_closed_form() -> None:
    imtl = IMTLL(NAMES)
    with torch.no_grad():
        imtl.scales.copy_(torch.tensor([0.5, -1.0]))
    L = torch.tensor([2.0, 3.0], requires_grad=True)
    out = imtl(L)
    assert out.total.item() == pytest.approx(math.exp(0.5) * 2 - 0.5 + math.exp(-1) * 3 + 1)
    out.total.backward()
    assert imtl.scales.grad.tolist() == pytest.approx([math.exp(0.5) * 2 - 1, math.exp(-1) * 3 - 1])
    assert L.grad.tolist() == pytest.approx([math.exp(0.5), math.exp(-1)])


def test_gradnorm_hand_worked_weight_gradient_and_renormalisation() -> None:
    gn = GradNorm(NAMES, alpha=1.0)
    J = torch.tensor([[3.0, 0.0], [0.0, 1.0]])  # gradient norms 3 and 1
    gn(torch.tensor([2.0, 2.0]), jacobian=J)  # first step records L(0) = (2, 2)
    out = gn(torch.tensor([2.0, 1.0]), jacobian=J)
    # L~ = (1, 0.5), r = (4/3, 2/3), G = (3, 1), mean 2, targets (8/3, 4/3): d L_grad / d w = (+3, -1)
    assert out.aux.item() == pytest.approx(abs(3 - 8 / 3) + abs(1 - 4 / 3))
    out.aux.backward()
    assert gn.loss_weights.grad.tolist() == pytest.approx([3.0, -1.0])
    with torch.no_grad():
        gn.loss_weights -= 0.1 * gn.loss_weights.grad
    gn.after_step(None)
    assert gn.loss_weights.tolist() == pytest.approx([0.7 * 2 / 1.8, 1.1 * 2 / 1.8])
    assert gn.loss_weights.sum().item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="needs the per-task gradients"):
        gn(torch.tensor([1.0, 1.0]))


def test_famo_follows_the_authors_update_rule() -> None:
    """Against the reference algorithm written with torch.optim.Adam and autograd, as in the authors' code."""
    famo = FAMO(("a", "b", "c"), gamma=0.01, w_lr=0.025)
    w = torch.zeros(3, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.025, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        before = torch.rand(3, generator=g) + 0.5
        after = before * (0.5 + torch.rand(3, generator=g))
        out = famo(before)
        # reference weighting: z / (c D)
        z = F.softmax(w.detach(), -1)
        D = before + 1e-8
        torch.testing.assert_close(out.weights, z / ((z / D).sum() * D))
        torch.testing.assert_close(out.total, (D.log() * z / (z / D).sum()).sum())
        famo.after_step(after)
        delta = (before + 1e-8).log() - (after + 1e-8).log()
        d = torch.autograd.grad(F.softmax(w, -1), w, grad_outputs=delta)[0]
        opt.zero_grad()
        w.grad = d
        opt.step()
        torch.testing.assert_close(famo.logits, w.detach(), rtol=1e-5, atol=1e-7)


def test_famo_first_step_hand_worked() -> None:
    famo = FAMO(NAMES, gamma=0.0, w_lr=0.025)
    famo(torch.tensor([2.0, 1.0]))
    famo.after_step(torch.tensor([1.0, 1.0]))
    # delta = (log 2, 0); softmax-Jacobian^T delta = (+, -); Adam's first step moves each logit by lr
    assert famo.logits.tolist() == pytest.approx([-0.025, 0.025], abs=1e-6)


def test_famo_next_batch_uses_the_next_losses_without_an_extra_forward() -> None:
    same, nxt = FAMO(NAMES), FAMO(NAMES, update="next_batch")
    assert same.requires_post_step_losses and not nxt.requires_post_step_losses
    seq = [torch.tensor([2.0, 1.0]), torch.tensor([1.0, 1.0]), torch.tensor([0.8, 0.9])]
    nxt(seq[0])
    nxt.after_step(None)
    nxt(seq[1])  # updates the logits with (before=seq[0], after=seq[1]) first
    same(seq[0])
    same.after_step(seq[1])
    torch.testing.assert_close(nxt.logits, same.logits)
    with pytest.raises(ValueError, match="`update` must be 'same_batch' or 'next_batch'"):
        FAMO(NAMES, update="later")
