"""The ranking-metrics example of docs/recsys.md builds, and its tasks report the documented metrics."""

from __future__ import annotations

import re

import numpy as np

from _helpers import REPO
from mtlkit.data.tabular import tabular

DOC = REPO / "docs" / "recsys.md"


def test_the_recsys_ranking_metrics_example_builds(tmp_path) -> None:
    text = DOC.read_text()
    section = text[text.index("## Ranking metrics per task: GAUC, NE, calibration") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    import yaml

    cfg = yaml.safe_load(block.group(1))
    data = cfg["data"]
    assert cfg["trainer"]["early_stopping"]["monitor"] == "click/gauc"
    rng = np.random.default_rng(0)
    n = 60
    cols = {
        "user_id": [f"u{i % 7}" for i in range(n)],
        "city": rng.choice(["a", "b"], n),
        "price": rng.normal(size=n).round(3),
        "clicked": rng.integers(0, 2, n),
        "watch_time": rng.exponential(100, n).round(1),
        "w": rng.uniform(0.1, 2, n).round(3),
    }
    path = tmp_path / "clicks.csv"
    path.write_text(
        ",".join(cols) + "\n" + "".join(",".join(str(c[i]) for c in cols.values()) + "\n" for i in range(n))
    )
    data["train"] = str(path)
    data.pop("name")
    splits = tabular(**data)
    tasks = {t.name: t for t in splits.tasks}
    assert list(tasks["click"].metrics) == ["gauc", "auc", "ne", "calibration", "ece"]
    assert list(tasks["watch"].metrics) == ["mae", "mse"]
    assert splits.train.columns is not None and set(splits.train.columns) == {"user_id"}
