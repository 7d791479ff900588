"""Dataset, loader and the MMoE synthetic generator."""

from __future__ import annotations

import pytest
import torch

from mtlkit import Task
from mtlkit.data import (
    Batch,
    MultiTaskDataset,
    TensorBatchLoader,
    as_batch,
    collate,
    pearson,
    synthetic_correlation,
)
from mtlkit.errors import DataError


def make(n: int = 10) -> MultiTaskDataset:
    x = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)
    return MultiTaskDataset(x, {"a": torch.arange(n).float(), "b": torch.arange(n) % 3})


def test_loader_covers_every_sample_once_and_shuffles_by_epoch() -> None:
    ds = make(10)
    loader = TensorBatchLoader(ds, 4, shuffle=True, seed=3)
    assert len(loader) == 3
    seen = torch.cat([b.targets["a"] for b in loader])
    assert sorted(seen.tolist()) == list(range(10))
    first = torch.cat([b.targets["a"] for b in loader])
    assert torch.equal(seen, first)  # same epoch -> same order
    loader.set_epoch(1)
    second = torch.cat([b.targets["a"] for b in loader])
    assert not torch.equal(first, second)
    # rows stay aligned between inputs and targets
    for b in loader:
        assert torch.equal(b.inputs[:, 0] / 3, b.targets["a"])


def test_drop_last_and_distributed_shards() -> None:
    ds = make(10)
    assert len(TensorBatchLoader(ds, 4, drop_last=True)) == 2
    shards = [
        torch.cat([b.targets["a"] for b in TensorBatchLoader(ds, 2, num_replicas=3, rank=r)])
        for r in range(3)
    ]
    assert all(len(s) == 4 for s in shards)  # ceil(10/3), padded by wrapping
    assert set(torch.cat(shards).tolist()) == set(range(10))


def test_torch_dataloader_with_collate_gathers_whole_batches() -> None:
    ds = make(10)
    dl = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate)
    batches = list(dl)
    assert isinstance(batches[0], Batch) and len(batches[0]) == 4
    assert torch.equal(batches[0].targets["b"], torch.tensor([0, 1, 2, 0]))


def test_as_batch_accepts_tuples_and_dicts() -> None:
    x, t = torch.zeros(2, 3), {"a": torch.zeros(2)}
    assert len(as_batch((x, t))) == 2
    assert as_batch({"inputs": x, "targets": t}).targets.keys() == {"a"}
    with pytest.raises(TypeError, match="collate_fn=mtlkit.data.collate"):
        as_batch([x])


def test_dataset_validation_errors() -> None:
    with pytest.raises(DataError, match="have 3 rows but inputs have 4"):
        MultiTaskDataset(torch.zeros(4, 2), {"a": torch.zeros(3)})
    with pytest.raises(DataError, match="must be a torch.Tensor"):
        MultiTaskDataset(torch.zeros(4, 2), {"a": [0, 1, 2, 3]})
    with pytest.raises(DataError, match="masks name tasks without targets"):
        MultiTaskDataset(torch.zeros(2, 2), {"a": torch.zeros(2)}, masks={"b": torch.ones(2)})
    task = Task(name="c", kind="multiclass", num_classes=2)
    with pytest.raises(DataError, match="class index 5 out of range"):
        MultiTaskDataset(torch.zeros(2, 2), {"c": torch.tensor([0, 5])}, tasks=[task])
    ds = make(4)
    with pytest.raises(DataError, match="has no targets in this dataset"):
        ds.validate([Task(name="zzz", kind="binary")])


def test_split_and_subset() -> None:
    ds = make(10)
    a, b = ds.split([7, 3], seed=0)
    assert len(a) == 7 and len(b) == 3
    assert sorted(torch.cat([a.targets["a"], b.targets["a"]]).tolist()) == list(range(10))
    with pytest.raises(ValueError, match="sum to 10"):
        ds.split([5, 4])


def test_synthetic_generator_follows_the_paper_construction() -> None:
    ds = synthetic_correlation(2000, 0.3, dim=20, m=0, noise_std=0.0, seed=5)
    assert ds.info["weight_cosine"] == pytest.approx(0.3, abs=1e-9)
    # With m=0 and no noise, y_k = w_k^T x exactly: recover w by least squares and check |w| = c = 1.
    x = ds.inputs.double()
    for name in ("y1", "y2"):
        w = torch.linalg.lstsq(x, ds.targets[name].double().unsqueeze(1)).solution.squeeze(1)
        assert w.norm().item() == pytest.approx(1.0, abs=1e-4)
    w1 = torch.linalg.lstsq(x, ds.targets["y1"].double().unsqueeze(1)).solution.squeeze(1)
    w2 = torch.linalg.lstsq(x, ds.targets["y2"].double().unsqueeze(1)).solution.squeeze(1)
    assert (w1 @ w2).item() == pytest.approx(0.3, abs=1e-4)


def test_synthetic_label_correlation_falls_with_p() -> None:
    corr = [synthetic_correlation(20_000, p, seed=0).info["label_correlation"] for p in (1.0, 0.9, 0.5, 0.0)]
    assert corr[0] > 0.9
    assert corr[0] > corr[1] > corr[2] > corr[3]
    # the reported value is the Pearson correlation of the labels produced
    ds = synthetic_correlation(500, 0.5, seed=1)
    assert ds.info["label_correlation"] == pytest.approx(
        pearson(ds.targets["y1"], ds.targets["y2"]), abs=1e-6
    )


def test_synthetic_is_seeded_and_validates_arguments() -> None:
    a = synthetic_correlation(50, 0.5, seed=7)
    b = synthetic_correlation(50, 0.5, seed=7)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets["y1"], b.targets["y1"])
    with pytest.raises(ValueError, match=r"correlation must be in \[-1, 1\]"):
        synthetic_correlation(50, 1.5)
