"""The synthetic data of the MMoE paper (Ma et al., KDD 2018, section 3.2), with controlled task correlation."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtlkit.data.dataset import MultiTaskDataset
from mtlkit.data.splits import DataSplits
from mtlkit.registries import DATASETS
from mtlkit.tasks import Task

__all__ = ["pearson", "synthetic_correlation", "synthetic_correlation_splits"]


def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two 1-D tensors (computed in float64)."""
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    denom = a.norm() * b.norm()
    return float((a @ b / denom).item()) if denom > 0 else math.nan


def synthetic_correlation(
    n_samples: int,
    correlation: float,
    *,
    dim: int = 100,
    c: float = 1.0,
    m: int = 10,
    noise_std: float = 0.1,
    seed: int = 0,
    task_names: tuple[str, str] = ("y1", "y2"),
    shape_seed: int | None = None,
) -> MultiTaskDataset:
    """Two regression tasks whose correlation is controlled by ``correlation`` (the paper's p).

    Generation (MMoE paper, section 3.2):

    1. ``u1, u2`` are orthogonal unit vectors in R^dim (Gram-Schmidt on Gaussian draws).
    2. ``w1 = c * u1``, ``w2 = c * (p * u1 + sqrt(1 - p^2) * u2)``.
    3. ``x ~ N(0, I_dim)``.
    4. ``y_k = w_k^T x + sum_{i=1..m} sin(alpha_i * w_k^T x + beta_i) + eps``, with
       ``alpha_i, beta_i ~ N(0, 1)`` shared by both tasks and ``eps ~ N(0, noise_std^2)``
       (the paper's N(0, 0.01) is ``noise_std = 0.1``).

    Because of the sine terms, the Pearson correlation of the labels is not exactly ``p``, but it
    falls monotonically as ``p`` does. The value produced is stored in
    ``dataset.info["label_correlation"]``.

    Args:
        n_samples: number of samples.
        correlation: p, the cosine between ``w1`` and ``w2``, in [-1, 1].
        dim: input dimension d.
        c: scale of the weight vectors.
        m: number of sine terms.
        noise_std: standard deviation of the label noise.
        seed: everything (u, alpha, beta, x, noise) is drawn from a generator seeded with it.
        task_names: names of the two regression tasks.
        shape_seed: if given, ``alpha, beta`` (the shape of the sine terms, the paper's "given
            parameters") are drawn from a generator seeded with it instead, so data sets of
            different ``seed`` follow the same distribution (u, x and the noise still come from
            ``seed``, exactly as without ``shape_seed``).

    Returns:
        A :class:`MultiTaskDataset` with inputs ``(n_samples, dim)`` (float32), two regression
        targets ``(n_samples,)`` and ``tasks`` describing them.
    """
    if not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"synthetic_correlation: n_samples must be an int >= 2; got {n_samples!r}.")
    if not -1.0 <= correlation <= 1.0:
        raise ValueError(f"synthetic_correlation: correlation must be in [-1, 1]; got {correlation!r}.")
    if not isinstance(dim, int) or dim < 2:
        raise ValueError(
            f"synthetic_correlation: dim must be an int >= 2 (two orthogonal vectors); got {dim!r}."
        )
    if not isinstance(m, int) or m < 0:
        raise ValueError(f"synthetic_correlation: m must be an int >= 0; got {m!r}.")
    if noise_std < 0:
        raise ValueError(f"synthetic_correlation: noise_std must be >= 0; got {noise_std!r}.")
    if len(task_names) != 2 or task_names[0] == task_names[1]:
        raise ValueError(f"synthetic_correlation: task_names must be two distinct names; got {task_names!r}.")

    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    # Orthonormal u1, u2 by Gram-Schmidt.
    a, b = torch.randn(dim, generator=g, dtype=f64), torch.randn(dim, generator=g, dtype=f64)
    u1 = a / a.norm()
    b = b - (b @ u1) * u1
    u2 = b / b.norm()
    p = float(correlation)
    w1 = c * u1
    w2 = c * (p * u1 + math.sqrt(max(0.0, 1.0 - p * p)) * u2)
    alpha = torch.randn(m, generator=g, dtype=f64)
    beta = torch.randn(m, generator=g, dtype=f64)
    if shape_seed is not None:
        shape = torch.Generator().manual_seed(shape_seed)
        alpha = torch.randn(m, generator=shape, dtype=f64)
        beta = torch.randn(m, generator=shape, dtype=f64)
    x = torch.randn(n_samples, dim, generator=g, dtype=f64)

    def label(w: Tensor) -> Tensor:
        z = x @ w  # (n,)
        waves = torch.sin(z[:, None] * alpha[None, :] + beta[None, :]).sum(dim=1)
        return z + waves + noise_std * torch.randn(n_samples, generator=g, dtype=f64)

    y1, y2 = label(w1), label(w2)
    tasks = tuple(Task(name=n, kind="regression") for n in task_names)
    info = {
        "generator": "synthetic_correlation",
        "correlation": p,
        "label_correlation": pearson(y1, y2),
        "weight_cosine": float((w1 @ w2 / (w1.norm() * w2.norm())).item()),
        "dim": dim,
        "seed": seed,
        "shape_seed": shape_seed,
        "alpha": alpha.tolist(),
        "beta": beta.tolist(),
    }
    return MultiTaskDataset(
        x.float(), {task_names[0]: y1.float(), task_names[1]: y2.float()}, tasks=tasks, info=info
    )


@DATASETS.register("synthetic_correlation", aliases=("synthetic",))
def synthetic_correlation_splits(
    *,
    correlation: float = 0.5,
    n_train: int = 10_000,
    n_val: int = 2_000,
    n_test: int = 2_000,
    dim: int = 100,
    c: float = 1.0,
    m: int = 10,
    noise_std: float = 0.1,
    seed: int = 0,
    shape_seed: int | None = None,
) -> DataSplits:
    """MMoE paper synthetic regression pair with controlled task correlation (Ma et al. 2018, 3.2)."""
    for name, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if v < (1 if name == "n_train" else 0):
            raise ValueError(
                f"synthetic_correlation: {name} must be >= {1 if name == 'n_train' else 0}; got {v}."
            )
    full = synthetic_correlation(
        n_train + n_val + n_test,
        correlation,
        dim=dim,
        c=c,
        m=m,
        noise_std=noise_std,
        seed=seed,
        shape_seed=shape_seed,
    )
    train, val, test = full.split([n_train, n_val, n_test])
    assert full.tasks is not None
    return DataSplits(
        train=train,
        val=val if n_val else None,
        test=test if n_test else None,
        tasks=full.tasks,
        input_spec=dim,
        info=dict(full.info),
    )
