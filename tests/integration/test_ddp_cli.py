"""``torchrun --nproc_per_node=2 -m mtlkit run``: the same metrics as one process on the global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

CONFIG = """
name: ddp
seed: 0
data: {name: synthetic_correlation, correlation: 0.5, n_train: 512, n_val: 128, n_test: 128, dim: 8, seed: 0}
model: {name: mmoe, num_experts: 3, expert_dims: [8], tower_dims: [4]}
aggregator: {name: pcgrad}
optimizer: {name: adam, lr: 0.01}
trainer: {epochs: 2, batch_size: 32, device: cpu}
"""


def _metrics(root: Path) -> dict:
    (run,) = [p for p in root.iterdir() if p.is_dir()]
    return json.loads((run / "metrics.json").read_text())["metrics"]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_torchrun_two_processes_match_one_process(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = [str(cfg), "--no-progress"]
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
         "-m", "mtlkit", "run", *common, "--out", str(tmp_path / "ddp")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("Run directory:") == 1  # rank 0 alone prints and writes
    single = subprocess.run(
        [sys.executable, "-m", "mtlkit", "run", *common, "--out", str(tmp_path / "single"), "trainer.batch_size=64"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = _metrics(tmp_path / "ddp"), _metrics(tmp_path / "single")
    assert a.keys() == b.keys() == {"y1", "y2"}
    for task in a:
        for name, value in b[task].items():
            assert a[task][name] == pytest.approx(value, rel=1e-5), (task, name)


def test_world_size_without_rank_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from mtlkit.distributed import init_from_env
    from mtlkit.errors import DistributedError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(DistributedError, match="torchrun --nproc_per_node"):
        init_from_env(device="cpu")


def test_cuda_asked_without_cuda_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from mtlkit.distributed import init_from_env
    from mtlkit.errors import DistributedError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DistributedError, match="no CUDA device"):
        init_from_env(device="cuda")
