"""The youtube-ranking reproduction: its plan, its helpers, and (slow) a tiny end-to-end run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlkit.data.schema import FeatureSchema
from mtlkit.models import ScoreFusion, shared_bottom, split_schema, with_bias_tower
from mtlkit.reproduce import Settings, plan_reproduction, run_reproduction
from mtlkit.reproduce.youtube_ranking import MODELS, YoutubeRanking, position_effect, spearman
from mtlkit.tasks import Task


def test_plan_compares_four_models_on_a_fresh_log_per_seed() -> None:
    jobs = YoutubeRanking().plan(Settings())
    assert len(jobs) == 5  # at least 5 seeds by default
    assert [j.config["data"]["seed"] for j in jobs] == [0, 1, 2, 3, 4]
    for job in jobs:
        compare = job.config["compare"]
        assert set(compare) == {"shared_bottom", "shared_bottom+tower", "mmoe", "mmoe+tower"}
        assert compare["mmoe"]["model"]["bias_tower"] is None
        tower = compare["mmoe+tower"]["model"]["bias_tower"]
        assert (
            tower["features"] == ["position", "device"] and tower["feature_dropout"] == 0.1
        )  # the paper's 10 %
        assert compare["mmoe+tower"]["model"]["name"] == MODELS["mmoe"]["name"]
    _, _, planned = plan_reproduction("youtube-ranking", seeds=2)
    for _, experiment in planned:
        assert set(experiment.variants) == {"shared_bottom", "shared_bottom+tower", "mmoe", "mmoe+tower"}


def test_spearman_against_hand_values() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # one swap among 4: 1 - 6 * sum d^2 / (n (n^2 - 1)) = 1 - 6 * 2 / 60
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # ties take their mean rank: ranks (1.5, 1.5, 3) vs (1, 2, 3)
    x, y = np.array([1.5, 1.5, 3.0]) - 2, np.array([1.0, 2.0, 3.0]) - 2
    assert spearman([5, 5, 7], [1, 2, 3]) == pytest.approx(
        float((x * y).sum() / math.sqrt((x * x).sum() * (y * y).sum()))
    )
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_position_effect_reads_the_tower_behind_the_fusion() -> None:
    schema = FeatureSchema(("device", "position"), (4, 6), ("x",))
    main, _ = split_schema(schema, ["position", "device"])
    tasks = [Task(name="click", kind="binary")]
    base = shared_bottom(None, tasks, input_layer=_front(main))
    tower = with_bias_tower(base, tasks=["click"], schema=schema, features=["position", "device"], dims=[])
    model = ScoreFusion(tower, {"click": 1}, tasks)
    head = tower.heads["click"]
    with torch.no_grad():
        head.embeddings[0].weight.zero_()
        head.embeddings[1].weight.copy_(
            torch.arange(6.0).reshape(6, 1).repeat(1, head.embeddings[1].weight.shape[1])
        )
        head.mlp.net[0].weight.fill_(0.0)
        head.mlp.net[0].weight[:, head.embeddings[0].weight.shape[1] :] = -1.0  # -(sum of position embedding)
    effect = position_effect(model, 5)
    assert effect is not None and effect.shape == (3, 5)
    width = head.embeddings[1].weight.shape[1]
    np.testing.assert_allclose(effect, np.tile(-width * np.arange(5.0), (3, 1)), atol=1e-6)
    assert position_effect(base, 5) is None


def _front(schema: FeatureSchema) -> torch.nn.Module:
    from mtlkit.models.backbones import EmbeddingFrontEnd

    return EmbeddingFrontEnd(schema, 2)


@pytest.mark.slow  # ~30 s: 4 models trained on a tiny log, then scored against the truth
def test_tiny_reproduction_writes_every_table_and_the_plot(tmp_path: Path) -> None:
    result = run_reproduction(
        "youtube-ranking",
        seeds=1,
        overrides=["data.train_slates=300", "data.val_slates=50", "data.test_slates=100", "trainer.epochs=2"],
        output_dir=tmp_path,
        progress=False,
    )
    files = result.report.files
    for stem in ("a_relevance", "b_position", "c_objectives", "d_fusion", "runs"):
        assert f"{stem}_md" in files and files[f"{stem}_md"].is_file()
    assert files["position_effect"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = result.report.markdown
    assert "(a) Click prediction vs the unbiased relevance" in md and "(d) Fused score" in md
