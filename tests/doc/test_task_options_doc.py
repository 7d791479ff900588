"""The per-task options example of docs/recsys.md builds (every key is accepted and means what it says)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import yaml

from _helpers import REPO
from mtlkit.data.tabular import tabular

DOC = REPO / "docs" / "recsys.md"


def test_the_recsys_task_options_example_builds(tmp_path: Path) -> None:
    text = DOC.read_text()
    section = text[text.index("## Per-task losses, transforms and sample weights") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    data = yaml.safe_load(block.group(1))["data"]
    rng = np.random.default_rng(0)
    n = 60
    cols = {
        "user_id": [f"u{i % 7}" for i in range(n)],
        "city": rng.choice(["a", "b"], n),
        "price": rng.normal(size=n).round(3),
        "clicked": rng.integers(0, 2, n),
        "bought": rng.integers(0, 2, n),
        "watch_time": rng.exponential(100, n).round(1),
        "views": rng.poisson(3, n),
        "spend": rng.normal(50, 10, n).round(2),
        "topic": rng.integers(0, 3, n),
        "w": rng.uniform(0.1, 2, n).round(3),
        "w_buy": rng.uniform(0.1, 2, n).round(3),
    }
    path = tmp_path / "clicks.csv"
    path.write_text(
        ",".join(cols) + "\n" + "".join(",".join(str(c[i]) for c in cols.values()) + "\n" for i in range(n))
    )
    data = {k: v for k, v in data.items() if k != "name"} | {"train": str(path)}
    splits = tabular(**data)
    tasks = {t.name: t for t in splits.tasks}
    assert tasks["click"].loss.name == "focal" and tasks["buy"].pos_weight == 5.0
    assert tasks["watch"].transform.name == "log1p" and tasks["views"].link == "log"
    assert tasks["spend"].transform.name == "standardise" and tasks["topic"].class_weights == (1.0, 2.0, 4.0)
    assert splits.info["weights"]["buy"] == "w_buy" and splits.info["weights"]["click"] == "w"
