"""Backbones in front of architectures: the config `backbone:` section and `input_layer=`."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

import mtlkit
from mtlkit.config import resolve
from mtlkit.config.build import build_data, build_model
from mtlkit.data import DataSplits, MultiTaskDataset, TabularPreprocessor
from mtlkit.errors import ConfigError
from mtlkit.models import EmbeddingFrontEnd, mmoe, shared_bottom, single_task
from mtlkit.registries import DATASETS


def _tabular(n: int = 64) -> DataSplits:
    rng = np.random.default_rng(0)
    cols = {"c1": rng.choice(["a", "b", "c"], n), "c2": rng.integers(0, 5, n), "x": rng.normal(size=n)}
    pre = TabularPreprocessor(categorical=["c1", "c2"], numeric=["x"]).fit(cols)
    tasks = (mtlkit.Task(name="ctr", kind="binary"), mtlkit.Task(name="v", kind="regression"))
    targets = {
        "ctr": torch.from_numpy((cols["x"] > 0).astype(np.float32)),
        "v": torch.from_numpy(cols["x"]).float(),
    }
    ds = MultiTaskDataset(pre.transform(cols), targets, tasks=tasks)
    return DataSplits(ds, ds, None, tasks, pre.schema, preprocessor=pre)


@pytest.fixture
def tabular_dataset() -> Iterator[str]:
    DATASETS.register("tiny_tabular_test")(lambda: _tabular())
    yield "tiny_tabular_test"
    DATASETS.unregister("tiny_tabular_test")


def _cfg(**kw: object) -> dict:
    return {"data": {"name": "tiny_tabular_test"}, "model": {"name": "mmoe", "num_experts": 2}, **kw}


def test_tabular_data_gets_the_embedding_front_end_by_default(tabular_dataset: str) -> None:
    cfg = resolve(_cfg()).config
    splits = build_data(cfg.data)
    model = build_model(cfg.model, splits, cfg.backbone)
    assert isinstance(model.input_layer, EmbeddingFrontEnd)
    assert model.input_layer.out_features == 2 * 8 + 1
    out = model(splits.train.inputs)
    assert out["ctr"].shape == (64, 1)
    # the embeddings are shared parameters, owned by no task
    shared = {id(p) for p in model.shared_parameters()}
    assert id(model.input_layer.table.weight) in shared


def test_backbone_section_sets_its_parameters_and_is_validated(tabular_dataset: str) -> None:
    cfg = resolve(_cfg(backbone={"name": "embedding", "embedding_dim": 3})).config
    assert cfg.backbone == {
        "name": "embedding",
        "embedding_dim": 3,
        "check_indices": True,
        "init_std": 1e-4,
        "sparse_embeddings": False,
    }
    model = build_model(
        {"name": "shared_bottom", "bottom_dims": [8], "tower_dims": [4]}, build_data(cfg.data), cfg.backbone
    )
    assert model.input_layer.out_features == 2 * 3 + 1
    with pytest.raises(
        ConfigError, match=r"backbone.embeding_dim: unknown parameter .* Did you mean 'embedding_dim'"
    ):
        resolve(_cfg(backbone={"name": "embedding", "embeding_dim": 3}))
    with pytest.raises(ConfigError, match=r"backbone.name: unknown backbone 'embed'"):
        resolve(_cfg(backbone={"name": "embed"}))


def test_wrong_backbone_for_the_data_is_a_config_error() -> None:
    cfg = resolve(
        {
            "data": {"name": "synthetic_correlation", "n_train": 32, "n_val": 0, "n_test": 0, "dim": 8},
            "model": {"name": "mmoe"},
            "backbone": {"name": "embedding"},
        }
    ).config
    with pytest.raises(
        ConfigError, match=r"backbone \(embedding\): the embedding backbone takes tabular inputs"
    ):
        build_model(cfg.model, build_data(cfg.data), cfg.backbone)


def test_single_task_builds_one_independent_front_end_per_task(tabular_dataset: str) -> None:
    splits = _tabular()
    assert splits.input_spec is not None
    torch.manual_seed(0)
    model = single_task(
        None, splits.tasks, hidden_dims=(4,), input_layer=lambda: EmbeddingFrontEnd(splits.input_spec)
    )
    fronts = [model.networks[t][0] for t in ("ctr", "v")]
    assert fronts[0] is not fronts[1]
    assert not torch.equal(fronts[0].table.weight, fronts[1].table.weight)
    assert model.shared_parameters() == []  # nothing shared
    # a module instance is copied and re-initialised for the other tasks
    model2 = single_task(
        None, splits.tasks, hidden_dims=(4,), input_layer=EmbeddingFrontEnd(splits.input_spec)
    )
    a, b = (model2.networks[t][0].table.weight for t in ("ctr", "v"))
    assert a.shape == b.shape and not torch.equal(a, b)


def test_models_with_an_input_layer_train_end_to_end() -> None:
    splits = _tabular()
    assert splits.input_spec is not None
    for build in (mmoe, shared_bottom):
        torch.manual_seed(0)
        model = build(None, splits.tasks, input_layer=lambda: EmbeddingFrontEnd(splits.input_spec, 4))
        trainer = mtlkit.Trainer(model, splits.tasks, progress=False, aggregator=mtlkit.aggregation.MGDA())
        before = model.input_layer.table.weight.detach().clone()
        trainer.fit(splits.train, epochs=1, batch_size=16)
        assert not torch.equal(before, model.input_layer.table.weight)


def test_missing_input_dim_and_layer_is_explained() -> None:
    with pytest.raises(ValueError, match="needs input_dim, the width of the input features"):
        mmoe(None, _tabular().tasks)
    with pytest.raises(ValueError, match="int attribute out_features"):
        shared_bottom(None, _tabular().tasks, input_layer=torch.nn.Identity())
