"""Under torch.distributed the streaming preprocessor is fitted once, on rank 0, and broadcast:
the other ranks never read the training rows for it (the 20M-row torchrun run held every
rank's category counts, twice the memory of one process), get the same fitted state, and see
rank 0's data error instead of waiting forever."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
TASKS = {"ctr": {"column": "click", "kind": "binary"}}


def _worker(rank: int, port: int, files: str, out: str, bad: bool) -> None:
    import mtlkit.data.streaming as streaming
    from mtlkit.errors import DataError

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    calls = []
    real = streaming.fit_streaming

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kwargs)

    streaming.fit_streaming = counted
    result: dict = {"rank": rank}
    try:
        splits = streaming.tabular_stream(
            train=files,
            tasks=TASKS,
            categorical=["user_id"] if bad else ["user_id", "device"],
            numeric=["device"] if bad else ["price"],  # text in a numeric column: the fit pass fails
            num_workers=0,
        )
        result["state"] = splits.preprocessor.state_dict()
    except DataError as exc:
        result["error"] = str(exc)
    finally:
        result["fits"] = len(calls)
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("bad", [False, True], ids=["fit", "error"])
def test_rank_zero_fits_and_broadcasts_the_preprocessor(tmp_path: Path, bad: bool) -> None:
    from mtlkit.data.impressions import impression_log
    from mtlkit.data.streaming_fit import fit_streaming

    log = impression_log(tmp_path / "log", 900, shard_rows=300, seed=1)
    files = str(tmp_path / "log" / "*.parquet")
    mp.spawn(_worker, args=(_free_port(), files, str(tmp_path), bad), nprocs=WORLD, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))
    if bad:
        # rank 0's fit pass fails; rank 1 gets its message instead of waiting for the broadcast
        assert "non-numeric" in r0["error"] and r0["fits"] == 1
        assert "rank 0 could not fit the preprocessor" in r1["error"] and "non-numeric" in r1["error"]
        assert r1["fits"] == 0
        return
    assert r0["fits"] == 1 and r1["fits"] == 0  # rank 1 never read the rows for the fit
    assert r0["state"] == r1["state"]
    single = fit_streaming(log.files, categorical=["user_id", "device"], numeric=["price"],
                           label_columns=["click"]).state_dict()  # fmt: skip
    assert r0["state"]["vocabularies"] == single["vocabularies"]
