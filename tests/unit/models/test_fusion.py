"""Score fusion against hand computation, in predict and in the exported ONNX/TorchScript model
(with a bias tower that must not reach the export)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mtlkit.config.check import check_experiment
from mtlkit.config.load import resolve
from mtlkit.errors import ConfigError
from mtlkit.models import FusionTerm, ScoreFusion, fuse
from mtlkit.models.fusion import fusion_terms
from mtlkit.tasks import Task


def test_product_and_sum_match_hand_computation() -> None:
    preds = {
        "click": torch.tensor([0.5, 0.2, 0.9]),
        "watch": torch.tensor([[3.0], [0.0], [-2.0]]),  # (N, 1) regression; the last one below -1
        "like": torch.tensor([0.25, 1.0, 0.04]),
    }
    terms = fusion_terms({"click": 1, "watch": {"weight": 0.5, "transform": "plus_one"}, "like": 0.2})
    got = fuse(preds, terms, "product")
    want = [
        0.5 * math.sqrt(4.0) * 0.25**0.2,
        0.2 * 1.0 * 1.0,
        0.9 * math.sqrt(1e-12) * 0.04**0.2,  # 1 + (-2) clamps at 1e-12
    ]
    torch.testing.assert_close(got, torch.tensor(want), rtol=1e-6, atol=0.0)
    terms = fusion_terms(
        {"click": 2.0, "watch": {"weight": -0.5, "transform": "log1p"}, "like": {"transform": "log"}}
    )
    got = fuse(preds, terms, "sum")
    want = [
        2 * 0.5 - 0.5 * math.log(4.0) + math.log(0.25),
        2 * 0.2 - 0.0 + 0.0,
        2 * 0.9 - 0.5 * math.log(1.0) + math.log(0.04),  # log1p of a negative value clamps at 0
    ]
    torch.testing.assert_close(got, torch.tensor(want), rtol=1e-6, atol=1e-7)


def test_fusion_refuses_bad_terms_clearly() -> None:
    with pytest.raises(ValueError, match="transform must be one of"):
        FusionTerm(1.0, "sqrt")
    with pytest.raises(ValueError, match="finite number"):
        FusionTerm(math.inf)
    with pytest.raises(ValueError, match=r"fusion.terms.click: unknown key\(s\) \['power'\]"):
        fusion_terms({"click": {"power": 2}})
    with pytest.raises(ValueError, match="kind must be 'product' or 'sum'"):
        fuse({"a": torch.ones(2)}, fusion_terms({"a": 1}), "max")  # type: ignore[arg-type]


def test_score_fusion_adds_the_score_in_eval_mode_only() -> None:
    from mtlkit.models import shared_bottom

    tasks = [Task(name="click", kind="binary"), Task(name="watch", kind="regression")]
    base = shared_bottom(3, tasks, bottom_dims=[4], tower_dims=[4])
    model = ScoreFusion(base, {"click": 1, "watch": {"weight": 0.5, "transform": "plus_one"}}, tasks)
    x = torch.randn(6, 3)
    model.train()
    assert set(model(x)) == {"click", "watch"}
    model.eval()
    out = model(x)
    want = torch.sigmoid(out["click"]).reshape(-1) * (1 + out["watch"].reshape(-1)).clamp_min(1e-12) ** 0.5
    torch.testing.assert_close(out["score"], want)
    with pytest.raises(ValueError, match="already a model output"):
        ScoreFusion(base, {"click": 1}, tasks, output="click")
    with pytest.raises(ValueError, match=r"\['clicks'\] are not outputs"):
        ScoreFusion(base, {"clicks": 1}, tasks)
    multi = [Task(name="click", kind="multiclass", num_classes=3), Task(name="watch", kind="regression")]
    with pytest.raises(ValueError, match="fusion takes binary tasks and scalar regressions"):
        ScoreFusion(shared_bottom(3, multi), {"click": 1}, multi)


def _raw(**extra: Any) -> dict[str, Any]:
    return {
        "name": "ytfuse",
        "data": {"name": "youtube_log", "train_slates": 80, "val_slates": 10, "test_slates": 20},
        "model": {
            "name": "mmoe",
            "num_experts": 2,
            "expert_dims": [8],
            "tower_dims": [4],
            "bias_tower": {"features": ["position", "device"], "tasks": ["click"], "dims": [4]},
            "fusion": {
                "kind": "product",
                "terms": {"click": 1, "watch_time": {"weight": 0.5, "transform": "plus_one"}, "like": 0.2},
            },
        },
        "trainer": {"epochs": 1, "batch_size": 256, "device": "cpu"},
        **extra,
    }


def test_yaml_fusion_problems_are_reported_by_validate() -> None:
    raw = _raw()
    raw["model"]["fusion"] = {"kind": "max", "terms": {"clicks": 1}}
    with pytest.raises(ConfigError) as info:
        resolve(raw)
    assert any("model.fusion.kind" in p for p in info.value.problems), info.value.problems
    raw["model"]["fusion"] = {"terms": {"clicks": 1}}
    with pytest.raises(ConfigError) as info:
        check_experiment(resolve(raw))
    assert any("model.fusion.terms: ['clicks'] are not outputs" in p for p in info.value.problems), (
        info.value.problems
    )


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_trained_run_predicts_and_exports_the_score_without_the_bias_tower(tmp_path: Path, fmt: str) -> None:
    pytest.importorskip("onnxruntime")
    from mtlkit.experiment import run_experiment
    from mtlkit.export import example_inputs, export_model, verify_export
    from mtlkit.predict import load_predictor

    result = run_experiment(resolve(_raw(output_dir=str(tmp_path))), progress=False)
    run_dir = Path(result.runs[0].run_dir)
    p = load_predictor(run_dir)
    x = dict(zip(("categorical", "numeric"), example_inputs(p, 9, seed=3)))
    preds = p.predict_inputs(x)
    assert set(preds) == {"click", "watch_time", "like", "score"}
    want = preds["click"] * (1 + preds["watch_time"]).clamp_min(1e-12) ** 0.5 * preds["like"] ** 0.2
    torch.testing.assert_close(preds["score"], want)
    moved = {"categorical": x["categorical"].clone(), "numeric": x["numeric"]}
    moved["categorical"][:, 1] = 1 + (moved["categorical"][:, 1] % 10)  # other positions
    for k, v in p.predict_inputs(moved).items():
        torch.testing.assert_close(v, preds[k])  # the bias tower is left out of predictions
    folder = export_model(p, tmp_path / f"export-{fmt}", format=fmt)
    check = verify_export(folder, p)
    assert check.passed and set(check.outputs) == {"click", "watch_time", "like", "score"}, check.summary()
    assert check.max_rel <= 1e-5
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        a = session.run(["score"], {k: v.numpy() for k, v in x.items()})[0]
        b = session.run(["score"], {k: v.numpy() for k, v in moved.items()})[0]
        assert np.array_equal(a, b)  # the exported graph ignores the bias features
        np.testing.assert_allclose(a, preds["score"].numpy(), rtol=1e-5)
