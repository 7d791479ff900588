"""End to end: ESMM and AITM on CTR/CVR data, through the Python API and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mtlkit
from _datasets import shared_data as _shared_data
from mtlkit.cli.main import main
from mtlkit.config import load_config, resolve
from mtlkit.config.build import build_data, build_model
from mtlkit.models import AITM, ESMM

pytestmark = pytest.mark.usefixtures("one_thread")


def shared_data() -> Path:
    return _shared_data("ali-ccp-sample", "aliexpress-sample")


def test_ali_ccp_esmm_preset_runs_through_the_cli(tmp_path: Path) -> None:
    root = shared_data()
    argv = ["run", "--preset", "ali-ccp-esmm", f"data.path={root}", "trainer.epochs=2", "--out", str(tmp_path)]
    assert main([*argv, "--no-progress"]) == 0
    (run_dir,) = tmp_path.iterdir()
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["split"] == "test" and set(record["metrics"]) == {"ctr", "ctcvr", "cvr"}
    assert record["data"]["counts"]["test"] == {"impressions": 50, "clicks": 2, "conversions": 1}
    history = json.loads((run_dir / "history.json").read_text())
    # evaluated, never trained: its NaN training loss is written as null (strict JSON)
    assert len(history) == 2 and history[-1]["train"]["cvr"] is None
    assert main(["evaluate", str(run_dir)]) == 0


def test_esmm_over_mmoe_with_embeddings_and_a_gradient_method_on_aliexpress() -> None:
    root = shared_data()
    raw = {
        "data": {"name": "aliexpress_sample", "path": str(root)},
        "model": {"name": "esmm", "base": {"name": "mmoe", "num_experts": 2, "expert_dims": [8], "tower_dims": [4]}},
        "backbone": {"name": "embedding", "embedding_dim": 3},
    }
    exp = resolve(raw).config
    splits = build_data(exp.data)
    torch.manual_seed(0)
    model = build_model(exp.model, splits, exp.backbone)
    assert isinstance(model, ESMM) and model.base.input_layer is not None  # the embeddings sit in the base
    emb = model.base.input_layer.table.weight
    assert id(emb) in {id(p) for p in model.shared_parameters()}
    agg = mtlkit.aggregation.AGGREGATORS.build("pcgrad", tasks=splits.tasks)
    trainer = mtlkit.Trainer(
        model, splits.tasks, aggregator=agg, gradient_target="representation", progress=False, device="cpu"
    )
    before = emb.detach().clone()
    trainer.fit(splits.train, epochs=2, batch_size=32)
    assert not torch.equal(before, emb)
    pred = trainer.predict(splits.test)
    assert set(pred) == {"ctr", "cvr", "ctcvr"} and all(v.shape == (20,) for v in pred.values())
    torch.testing.assert_close(pred["ctcvr"], pred["ctr"] * pred["cvr"])


def test_aitm_on_the_ali_ccp_funnel_from_a_config(tmp_path: Path) -> None:
    root = shared_data()
    overrides = [
        f"data.path={root}",
        "data.task_set=funnel",
        "model.name=aitm",
        "model.tower_dims=[16,8]",
        "trainer.epochs=2",
    ]
    exp = load_config(preset="ali-ccp-esmm", overrides=overrides)
    cfg = exp.config
    splits = build_data(cfg.data)
    model = build_model(cfg.model, splits, cfg.backbone)
    assert isinstance(model, AITM) and model.task_names == ("ctr", "ctcvr")
    assert main(["run", "--preset", "ali-ccp-esmm", *overrides, "--out", str(tmp_path), "--no-progress"]) == 0
    (run_dir,) = tmp_path.iterdir()
    history = json.loads((run_dir / "history.json").read_text())
    assert history[-1]["aux"]["calibrator"] >= 0.0


def test_esmm_preset_compares_esmm_with_the_clicked_only_model(tmp_path: Path) -> None:
    overrides = [
        "data.n_train=1500",
        "data.n_val=300",
        "data.n_test=1000",
        "trainer.epochs=2",
        "seeds=[0]",
    ]
    assert main(["run", "--preset", "esmm", *overrides, "--out", str(tmp_path), "--no-progress"]) == 0
    (root,) = tmp_path.iterdir()
    comparison = json.loads((root / "comparison.json").read_text())
    assert list(comparison["labels"]) == ["clicked_cvr", "esmm"] and comparison["baseline"] == "clicked_cvr"
    for label in ("clicked_cvr", "esmm"):
        metrics = comparison["labels"][label]["metrics"]
        assert set(metrics) == {"ctr", "ctcvr", "cvr"} and comparison["labels"][label]["split"] == "test"
        assert 0.0 <= metrics["cvr"]["auc"]["mean"] <= 1.0
    assert comparison["labels"]["clicked_cvr"]["delta_m"] == 0.0
    assert comparison["data"]["test_cvr"] == "entire_space"


# ---------------------------------------------------------------------------------------------- ESMM's claim
def train_pair(
    data: dict, *, epochs: int, seed: int, early_stopping: bool
) -> dict[str, dict[str, dict[str, float]]]:
    """Test metrics of ESMM and of the clicked-only model (the same network, CVR trained on clicks)."""
    from mtlkit.data import synthetic_ctr_cvr_splits
    from mtlkit.models import esmm
    from mtlkit.training.early_stopping import EarlyStopping

    out = {}
    for task_set in ("esmm", "clicked_cvr"):
        splits = synthetic_ctr_cvr_splits(task_set=task_set, seed=seed, **data)
        torch.manual_seed(seed)
        model = esmm(splits.input_dim, splits.tasks, base={"name": "shared_bottom"})
        trainer = mtlkit.Trainer(model, splits.tasks, progress=False, device="cpu", seed=seed)
        stop = EarlyStopping(monitor="mean/loss", patience=3) if early_stopping else None
        trainer.fit(splits.train, splits.val, epochs=epochs, batch_size=256, early_stopping=stop)
        out[task_set] = trainer.evaluate(splits.test) | {"oracle": {"auc": splits.info["oracle_test_cvr_auc"]}}
    return out


def test_esmm_pctcvr_beats_the_clicked_only_model_over_all_impressions() -> None:
    # 3,000 impressions (about 300 clicks), a fixed budget of 30 epochs. Measured over seeds 0-4:
    # ctcvr AUC ESMM - clicked-only = +0.015, +0.011, +0.012, +0.012, +0.013 (docs/recsys.md).
    res = train_pair({"n_train": 3000, "n_val": 0, "n_test": 10000}, epochs=30, seed=0, early_stopping=False)
    esmm, clicked = res["esmm"], res["clicked_cvr"]
    assert esmm["ctcvr"]["auc"] > clicked["ctcvr"]["auc"] + 0.005
    # both pCVRs rank the latent conversions of all impressions well above chance, below the oracle
    for r in (esmm, clicked):
        assert 0.6 < r["cvr"]["auc"] < r["oracle"]["auc"]


@pytest.mark.slow
def test_esmm_claim_on_the_preset_protocol() -> None:
    """The esmm preset's protocol (early stopping on observable validation losses), three seeds.

    Measured (docs/recsys.md): ESMM's pCTCVR AUC is higher in every seed, but its entire-space pCVR
    AUC is lower than the clicked-only model's (0.7285 vs 0.7350 on average): the ESMM claim does
    not reproduce under fair model selection when conversions are missing at random given the
    features. If this assertion starts failing, ESMM's pCVR improved: update the docs.
    """
    data = {"n_train": 20000, "n_val": 5000, "n_test": 20000}
    runs = [train_pair(data, epochs=30, seed=s, early_stopping=True) for s in (0, 1, 2)]
    for r in runs:
        assert r["esmm"]["ctcvr"]["auc"] > r["clicked_cvr"]["ctcvr"]["auc"]
    mean = {k: sum(r[k]["cvr"]["auc"] for r in runs) / len(runs) for k in ("esmm", "clicked_cvr")}
    assert mean["clicked_cvr"] >= mean["esmm"]


@pytest.mark.slow
def test_esmm_pcvr_wins_when_the_clicked_only_model_overfits() -> None:
    """A fixed budget of 20 epochs without model selection: the clicked-only CVR tower overfits its
    2,000 clicked samples and ESMM's entire-space pCVR ranks better in every seed (docs/recsys.md)."""
    data = {"n_train": 20000, "n_val": 0, "n_test": 20000}
    for seed in (0, 1, 2):
        r = train_pair(data, epochs=20, seed=seed, early_stopping=False)
        assert r["esmm"]["cvr"]["auc"] > r["clicked_cvr"]["cvr"]["auc"]


def test_docs_example_runs() -> None:
    import re

    doc = Path(__file__).resolve().parents[2] / "docs" / "recsys.md"
    (code,) = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    namespace: dict = {}
    exec(compile(code, str(doc), "exec"), namespace)
    assert set(namespace["metrics"]) == {"ctr", "ctcvr", "cvr"}
