"""The custom-weighting example in docs/weighting.md runs and plugs into configs."""

from __future__ import annotations

import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[2] / "docs" / "weighting.md"


def test_custom_weighting_example() -> None:
    from mtlkit.config import apply_overrides, load_preset, resolve
    from mtlkit.registries import WEIGHTINGS

    (code,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    ns: dict = {}
    try:
        exec(compile(code, "docs/weighting.md", "exec"), ns)
        w = WEIGHTINGS.build("softmax", tasks=["a", "b"], t=2.0)
        out = w(torch.tensor([1.0, 3.0]))
        torch.testing.assert_close(out.weights, torch.softmax(torch.tensor([0.5, 1.5]), 0))
        raw = load_preset("default")
        raw.pop("compare")
        raw.pop("baseline")
        exp = resolve(apply_overrides(raw, ["weighting.name=softmax", "weighting.t=2.0"]))
        assert exp.config.weighting == {"name": "softmax", "t": 2.0}
    finally:
        if "softmax" in WEIGHTINGS:
            WEIGHTINGS.unregister("softmax")
