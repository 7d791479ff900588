"""Training-step time with each task's layers on its own labelled rows vs on every row.

Seed 000's setting: MNIST digits and Fashion-MNIST articles pooled in batches of 100 (each image
labelled for one task, the label mask is the task flag), trained by

* *shared CNN*: one CNN (conv 5x5 (32) - pool - conv 3x3 (64) - pool) and a 1024-512 tower per
  task with dropout 0.5;
* *single-task*: one such CNN and tower per task.

Both run the same full training step (forward, masked task losses, backward, Adam step) on the
same batches, interleaved, in one process, in two ways:

* *rows* (mtlkit's trainer): :func:`mtlkit.training.label_rows` gives each task's labelled rows and
  the model computes that task's own layers (its tower; for single-task, its whole network) on
  those rows only (``forward_parts(x, rows=...)``);
* *all rows*: every task's layers on every row of the batch, the loss masking the rows of the
  other task (what the trainer did before, and what a model without ``_forward_rows`` does).

A third variant, *rows, NCHW*, is *rows* with the CNN's weights in the default contiguous (NCHW)
layout instead of SmallCNN's channels-last weights; ``all rows / NCHW`` is what both changes
together gained over the code before them.

    python benchmarks/bench_task_rows.py [--threads 2] [--repeats 9] [--device cuda]
"""

from __future__ import annotations

import argparse
import platform

import torch

import mtlkit
from _timing import time_interleaved
from mtlkit import Task
from mtlkit.data.batch import Batch
from mtlkit.losses import task_losses
from mtlkit.models.backbones.cnn import SmallCNN
from mtlkit.registries import MODELS
from mtlkit.training.step import label_rows


def build(name: str) -> tuple[torch.nn.Module, list[Task]]:
    tasks = [
        Task(name="mnist", kind="multiclass", num_classes=10),
        Task(name="fashion", kind="multiclass", num_classes=10),
    ]
    cnn = SmallCNN((1, 28, 28))
    if name == "shared_cnn":
        model = MODELS.get("shared_bottom")(
            None, tasks, bottom_dims=[], tower_dims=[1024, 512], dropout=0.5, input_layer=cnn
        )
    else:
        model = MODELS.get("single_task")(None, tasks, hidden_dims=[1024, 512], dropout=0.5, input_layer=cnn)
    return model, tasks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    n = args.batch
    x = torch.rand(n, 1, 28, 28, generator=g).to(dev)
    flag = torch.rand(n, generator=g) < 0.5
    y = torch.randint(0, 10, (n,), generator=g)
    batch = Batch(
        x,
        {"mnist": y.to(dev), "fashion": y.to(dev)},
        {"mnist": flag.to(dev), "fashion": (~flag).to(dev)},
    )
    # the rows come from the CPU masks (label_rows gives {} for masks on an accelerator: no sync)
    host = Batch(x.cpu(), {"mnist": y, "fashion": y}, {"mnist": flag, "fashion": ~flag})
    print(
        f"mtlkit {mtlkit.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"device {dev}, {torch.get_num_threads()} threads, batch {n} ({int(flag.sum())} mnist / "
        f"{int((~flag).sum())} fashion)"
    )
    print(
        "| model | rows ms/step | all rows ms/step | rows, NCHW ms/step | all rows / rows | NCHW / rows | all rows, NCHW / rows |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in ("shared_cnn", "single_task"):
        variants = {}
        for key, use_rows, nchw in (
            ("rows", True, False),
            ("all", False, False),
            ("nchw", True, True),
            ("all_nchw", False, True),
        ):
            torch.manual_seed(0)
            model, tasks = build(name)
            if nchw:
                for m in model.modules():
                    if isinstance(m, torch.nn.Conv2d):
                        m.weight.data = m.weight.data.contiguous()
            model.to(dev).train()
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)

            def step(use_rows: bool = use_rows, model=model, tasks=tasks, opt=opt) -> None:
                rows = (
                    {k: v.to(dev, non_blocking=True) for k, v in label_rows(host, tasks).items()}
                    if use_rows
                    else None
                )
                out = model.forward_parts(batch.inputs, rows=rows).outputs
                tl = task_losses(tasks, out, batch.targets, batch.masks)
                opt.zero_grad()
                tl.losses.sum().backward()
                opt.step()

            variants[key] = step
        t = time_interleaved(variants, steps=args.steps, repeats=args.repeats, warmup=3, device=args.device)
        r = t["rows"]
        print(
            f"| {name} | {r * 1e3:.1f} | {t['all'] * 1e3:.1f} | {t['nchw'] * 1e3:.1f} | {t['all'] / r:.2f}x "
            f"| {t['nchw'] / r:.2f}x | {t['all_nchw'] / r:.2f}x |"
        )


if __name__ == "__main__":
    main()
