"""Training loggers: objects the :class:`~mtlkit.Trainer` calls after each step and epoch.

A logger keeps logging out of the training loop. The trainer calls :meth:`EpochLogger.watch`
once per ``fit`` with the validation data, :meth:`EpochLogger.log_step` after every
optimisation step, :meth:`EpochLogger.log_epoch` with each epoch's history record, and
:meth:`EpochLogger.flush` when ``fit`` ends. :class:`TensorBoardLogger` is the built-in one
(``Trainer(log_dir=...)``); pass any object with these four methods as ``Trainer(logger=...)``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from mtlkit.analysis.gates import collect_gates, gate_statistics_from_weights
from mtlkit.autograd import BackwardResult
from mtlkit.data.batch import Inputs, as_batch
from mtlkit.distributed import is_main_process
from mtlkit.errors import IncompatibleComponentsError

__all__ = ["EpochLogger", "TensorBoardLogger"]


@runtime_checkable
class EpochLogger(Protocol):
    """What the trainer calls (see the module docstring)."""

    def watch(self, data: Iterable[Any] | None) -> None: ...

    def log_step(self, step: int, result: BackwardResult) -> None: ...

    def log_epoch(self, record: Mapping[str, Any], model: nn.Module) -> None: ...

    def flush(self) -> None: ...


def _rows(x: Inputs) -> int:
    return int(x.shape[0]) if isinstance(x, Tensor) else int(next(iter(x.values())).shape[0])


def _cat(parts: list[Inputs], n: int) -> Inputs:
    if isinstance(parts[0], Tensor):
        return torch.cat(parts)[:n].cpu()  # type: ignore[arg-type]
    return {k: torch.cat([p[k] for p in parts])[:n].cpu() for k in parts[0]}  # type: ignore[index]


class TensorBoardLogger:
    """Writes TensorBoard event files (``tensorboard --logdir DIR``).

    Scalars per epoch (x axis: epoch): ``train_loss/<task>``, ``weight/<task>`` (the epoch's mean
    effective task weight), ``aggregator_weight/<task>`` (the epoch's mean row weight of an
    aggregator that has them: MGDA, IMTL-G...), ``val/<task>/<metric>``, ``lr`` (and
    ``lr/group<i>`` for further parameter groups), ``aux/<name>`` (model penalties),
    ``epoch_seconds``, ``steps/<task>`` (steps each task trained, one-task schedules). Per optimisation step (x axis: step): ``train/total_loss`` every
    ``step_interval`` steps. Gates: when the model has ``gates(x)`` and validation data is given,
    each epoch ``gates/<name>/expert<e>`` histograms of the gate weights on the first
    ``gate_samples`` validation rows (see :func:`mtlkit.analysis.reduce_gate` for non-(N, E)
    gates) and ``gate_effective_experts/<name>``. Under torch.distributed only rank 0 writes.

    Args:
        log_dir: directory of the event files.
        gate_samples: validation rows used for the gate histograms (0: no gate histograms).
        step_interval: write ``train/total_loss`` every this many steps.

    Raises:
        ImportError: tensorboard is not installed (``pip install 'mtlkit[tensorboard]'``).
    """

    def __init__(
        self, log_dir: str | os.PathLike[str], *, gate_samples: int = 512, step_interval: int = 10
    ) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError(
                "TensorBoard logging needs the tensorboard package: pip install 'mtlkit[tensorboard]'"
            ) from None
        if gate_samples < 0:
            raise ValueError(f"gate_samples must be >= 0; got {gate_samples!r}.")
        if step_interval < 1:
            raise ValueError(f"step_interval must be >= 1; got {step_interval!r}.")
        self._writer_cls = SummaryWriter
        self.log_dir = Path(log_dir)
        self.gate_samples = int(gate_samples)
        self.step_interval = int(step_interval)
        self._writer: Any = None
        self._gate_inputs: Inputs | None = None
        self._gates_off = False
        self._agg_sum: Tensor | None = None
        self._agg_steps = 0

    @property
    def writer(self) -> Any:
        """The ``SummaryWriter`` (created on first use, so no empty event file is left behind)."""
        if self._writer is None:
            self._writer = self._writer_cls(str(self.log_dir))
        return self._writer

    def watch(self, data: Iterable[Any] | None) -> None:
        """Keep the first ``gate_samples`` input rows of ``data`` (on the CPU) for the gate histograms.

        One-shot iterators are not read (that would take a batch from the trainer), and the
        global RNG is restored afterwards, so watching does not change the training run.
        """
        if data is None or self.gate_samples == 0:
            return
        parts: list[Inputs] = []
        n = 0
        with torch.random.fork_rng(devices=[]):  # a DataLoader draws its base seed from the global RNG
            it = iter(data)
            if it is data:
                return
            for raw in it:
                x = as_batch(raw).inputs
                parts.append(x)
                n += _rows(x)
                if n >= self.gate_samples:
                    break
        if parts:
            self._gate_inputs = _cat(parts, self.gate_samples)

    def log_step(self, step: int, result: BackwardResult) -> None:
        """Accumulate the aggregator's row weights; write the total loss every ``step_interval`` steps."""
        w = result.aggregator_weights
        if w is not None:
            w = w.detach().double()
            self._agg_sum = w if self._agg_sum is None else self._agg_sum + w
            self._agg_steps += 1
        if step % self.step_interval == 0 and is_main_process():
            self.writer.add_scalar("train/total_loss", float(result.total), step)

    def log_epoch(self, record: Mapping[str, Any], model: nn.Module) -> None:
        """Write one epoch's record (a :meth:`~mtlkit.Trainer.fit` history entry) and the gates."""
        agg, steps = self._agg_sum, self._agg_steps
        self._agg_sum, self._agg_steps = None, 0
        if not is_main_process():
            return
        w, e = self.writer, int(record["epoch"])
        for t, v in record["train"].items():
            w.add_scalar(f"train_loss/{t}", v, e)
        for t, v in record["weights"].items():
            w.add_scalar(f"weight/{t}", v, e)
        if agg is not None and steps:
            for t, v in zip(record["weights"], (agg / steps).tolist()):
                w.add_scalar(f"aggregator_weight/{t}", v, e)
        for t, ms in (record.get("val") or {}).items():
            for m, v in ms.items():
                w.add_scalar(f"val/{t}/{m}", v, e)
        for t, n in (record.get("steps") or {}).items():  # one-task schedules: steps each task got
            w.add_scalar(f"steps/{t}", n, e)
        lrs = record.get("lr") or []
        for i, lr in enumerate(lrs):
            w.add_scalar("lr" if i == 0 else f"lr/group{i}", lr, e)
        for k, v in (record.get("aux") or {}).items():
            w.add_scalar(f"aux/{k}", v, e)
        if "seconds" in record:
            w.add_scalar("epoch_seconds", record["seconds"], e)
        self._log_gates(model, e)

    def _log_gates(self, model: nn.Module, epoch: int) -> None:
        if self._gate_inputs is None or self._gates_off or not callable(getattr(model, "gates", None)):
            return
        try:
            gates = collect_gates(model, self._gate_inputs)
        except IncompatibleComponentsError:  # gates(x) returned {}: nothing to log, ever
            self._gates_off = True
            return
        stats = gate_statistics_from_weights(gates)
        for name, g in gates.items():
            for i in range(g.shape[1]):
                self.writer.add_histogram(f"gates/{name}/expert{i}", g[:, i], epoch)
            self.writer.add_scalar(f"gate_effective_experts/{name}", stats[name].effective_experts, epoch)

    def flush(self) -> None:
        """Flush pending events to disk."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
