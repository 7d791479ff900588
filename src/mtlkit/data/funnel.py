"""Funnel tasks from raw label columns: the labels ESMM and AITM train on, derived from click and purchase.

A click log holds a ``click`` label on every impression and a ``purchase`` label only where
``click = 1`` (blank elsewhere). ``model: {name: esmm, funnel: {ctr: click, cvr: purchase}}``
names those two tasks of the data; :func:`funnel_splits` turns the data's tasks and labels into
the model's:

======================  ====================================  =====================================
task                    label                                 ESMM / AITM
======================  ====================================  =====================================
``ctr`` (click)         click, every impression               logit, trained (both)
``cvr`` (purchase)      purchase on clicked rows only         ESMM: pCVR (a probability), evaluated
                        (blank elsewhere)                     only; AITM: no such output (dropped)
``ctcvr`` (new task)    click AND purchase, every impression  ESMM: pCTCVR = pCTR x pCVR (a
                        (click = 0 gives 0)                   probability), trained; AITM: the
                                                              purchase step's logit, trained
other tasks             unchanged                             passed through the base unchanged
======================  ====================================  =====================================

Label rules (row by row): ``ctcvr = 0`` where ``click = 0`` (whatever ``purchase`` holds: blank or
0); ``ctcvr = purchase`` where ``click = 1`` (blank when the purchase label is blank); blank where
``click`` is blank. Refused with the file and data row: ``purchase = 1`` where ``click = 0`` (a
conversion without a click) and a ``purchase`` label where ``click`` is blank. ``purchase = 0`` on
a non-clicked row is accepted (logs such as Ali-CCP label every impression) and, as a blank, is
not a CVR label: pCVR is evaluated on the clicked rows only (the ESMM paper's protocol).

The sample weights of ``ctcvr`` (an impression-level task) are those of ``ctr``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mtlkit.errors import DataError
from mtlkit.tasks import Task, TaskKind

__all__ = ["FUNNEL_MODELS", "FunnelLabels", "funnel_problems", "funnel_splits", "parse_funnel"]

FUNNEL_MODELS = ("esmm", "aitm")
"""The models that take a ``funnel:``."""

_KEYS = ("ctr", "cvr", "ctcvr")


@dataclass(frozen=True)
class FunnelLabels:
    """The funnel of one model: which data tasks are its CTR and CVR steps, and its rule for labels.

    Attributes:
        model: ``esmm`` (pCVR kept as an evaluation-only output) or ``aitm`` (no pCVR output).
        ctr: the click task of the data.
        cvr: the purchase task of the data (labelled on clicked rows).
        ctcvr: the name of the derived click-and-purchase task.
    """

    model: str
    ctr: str
    cvr: str
    ctcvr: str = "ctcvr"

    @property
    def keeps_cvr(self) -> bool:
        """Whether the model has a pCVR output (ESMM) evaluated on the clicked rows."""
        return self.model == "esmm"

    def derive(self, click: np.ndarray, purchase: np.ndarray, where: Callable[[int], str]) -> dict[str, np.ndarray]:
        """``{ctcvr: labels[, cvr: labels on clicked rows]}`` from the raw float labels (NaN = blank).

        ``where(i)`` names row ``i`` in errors (``"data.csv: data row 8"``).
        """
        click = np.asarray(click, dtype=np.float32)
        purchase = np.asarray(purchase, dtype=np.float32)
        unclicked, clicked, blank = click == 0, click == 1, np.isnan(click)
        bought = purchase == 1
        for bad, what in (
            (unclicked & bought, f"is 1 where {self.ctr!r} is 0: a conversion without a click"),
            (blank & ~np.isnan(purchase), f"is labelled where {self.ctr!r} is blank: the funnel needs the click"),
        ):
            rows = np.flatnonzero(bad)
            if rows.size:
                raise DataError(
                    f"{where(int(rows[0]))}: the funnel's cvr task {self.cvr!r} {what} "
                    f"({rows.size} row(s) like this). Label {self.cvr!r} only on clicked rows (blank or 0 "
                    f"elsewhere), or fix the row's {self.ctr!r} label; or check model.funnel's ctr/cvr."
                )
        ctcvr = np.where(unclicked, np.float32(0), np.where(clicked, purchase, np.float32(np.nan)))
        out = {self.ctcvr: ctcvr.astype(np.float32)}
        if self.keeps_cvr:
            out[self.cvr] = np.where(clicked, purchase, np.float32(np.nan)).astype(np.float32)
        return out

    def tasks(self, tasks: Sequence[Task]) -> tuple[Task, ...]:
        """The model's tasks from the data's (checked by :func:`funnel_problems` first)."""
        by_name = {t.name: t for t in tasks}
        out: list[Task] = []
        for t in tasks:
            if t.name == self.ctr:
                out.append(dataclasses.replace(t, logits=True, train=True))
                if self.model == "aitm":
                    step = by_name[self.cvr]
                    out.append(dataclasses.replace(step, name=self.ctcvr, output=None, target=None, logits=True))
                else:
                    out.append(Task(name=self.ctcvr, kind="binary", logits=False, auxiliary=t.auxiliary))
            elif t.name == self.cvr:
                if self.keeps_cvr:  # pCVR: evaluated on clicked rows, learnt only through pCTCVR
                    out.append(dataclasses.replace(t, logits=False, train=False))
            else:
                out.append(t)
        return tuple(out)


def parse_funnel(model: str, spec: Any) -> tuple[FunnelLabels | None, list[str]]:
    """The funnel of ``model.funnel`` (``{ctr: <task>, cvr: <task>, ctcvr: <new name>}``) and its
    problems (``model.funnel...: ...``) that need no data."""
    if not isinstance(spec, Mapping):
        return None, [f"model.funnel: must be a mapping {{ctr: <click task>, cvr: <purchase task>}}; got {spec!r}."]
    problems = [
        f"model.funnel.{k}: unknown key. Allowed: {', '.join(_KEYS)}." for k in spec if k not in _KEYS
    ]
    for k in ("ctr", "cvr"):
        if k not in spec:
            problems.append(f"model.funnel.{k}: missing; name the data's {'click' if k == 'ctr' else 'purchase'} task.")
    for k in _KEYS:
        if k in spec and not isinstance(spec[k], str):
            problems.append(f"model.funnel.{k}: must be a task name; got {spec[k]!r}.")
    if problems:
        return None, problems
    funnel = FunnelLabels(model, spec["ctr"], spec["cvr"], spec.get("ctcvr", "ctcvr"))
    names = (funnel.ctr, funnel.cvr, funnel.ctcvr)
    if len(set(names)) != 3:
        problems.append(
            f"model.funnel: ctr, cvr and ctcvr must be three different names; got ctr={funnel.ctr!r}, "
            f"cvr={funnel.cvr!r}, ctcvr={funnel.ctcvr!r}."
        )
    return funnel, problems


def funnel_problems(funnel: FunnelLabels, tasks: Sequence[Task]) -> list[str]:
    """Every reason the data's ``tasks`` cannot feed ``funnel`` (all at once)."""
    by_name = {t.name: t for t in tasks}
    listed = ", ".join(f"{t.name} ({t.kind.value})" for t in tasks)
    problems = []
    for key in ("ctr", "cvr"):
        name = getattr(funnel, key)
        task = by_name.get(name)
        if task is None:
            close = difflib.get_close_matches(name, list(by_name), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            problems.append(f"model.funnel.{key}: {name!r} is not a task of the data ({listed}).{hint}")
        elif task.kind is not TaskKind.BINARY:
            problems.append(
                f"model.funnel.{key}: task {name!r} is {task.kind.value}; a funnel step is a binary label "
                f"(0/1). Declare it kind: binary in the data section, or name another task."
            )
        elif not task.logits:
            problems.append(f"model.funnel.{key}: task {name!r} already predicts a probability; declare it plainly.")
    if funnel.ctcvr in by_name:
        problems.append(
            f"model.funnel.ctcvr: {funnel.ctcvr!r} is already a task of the data; the funnel derives it from "
            f"{funnel.ctr!r} and {funnel.cvr!r}. Choose another name (model.funnel.ctcvr: <name>)."
        )
    cvr = by_name.get(funnel.cvr)
    if funnel.keeps_cvr and cvr is not None and cvr.kind is TaskKind.BINARY:
        set_options = [k for k in ("pos_weight", "transform") if getattr(cvr, k) is not None]
        if cvr.loss is not None and cvr.pos_weight is None:  # (pos_weight sets the bce loss itself)
            set_options.insert(0, "loss")
        if set_options:
            problems.append(
                f"model.funnel.cvr: task {funnel.cvr!r} sets {', '.join(set_options)}, but under esmm pCVR is "
                f"evaluated only (it learns through pCTCVR, trained with BCE); remove them from the data's "
                f"task {funnel.cvr!r}."
            )
    for key in ("ctr", "cvr"):
        task = by_name.get(getattr(funnel, key))
        if task is not None and (task.output is not None or task.target is not None):
            problems.append(f"model.funnel.{key}: task {task.name!r} must read its own output and column.")
    return problems


def funnel_splits(funnel: FunnelLabels, splits: Any) -> Any:
    """The data of ``splits`` (a :class:`~mtlkit.data.splits.DataSplits`) as the funnel model sees
    it: the model's tasks (:meth:`FunnelLabels.tasks`) and each split's derived labels. In-memory
    datasets get the labels now; streams derive them batch by batch while encoding."""
    problems = funnel_problems(funnel, splits.tasks)
    if problems:
        from mtlkit.errors import ConfigError

        raise ConfigError(problems)
    tasks = funnel.tasks(splits.tasks)
    parts = {}
    for what in ("train", "val", "test"):
        data = getattr(splits, what)
        parts[what] = None if data is None else _split(funnel, data, tasks, what)
    info = {**splits.info, "funnel": {"model": funnel.model, "ctr": funnel.ctr, "cvr": funnel.cvr,
                                      "ctcvr": funnel.ctcvr}}  # fmt: skip
    return dataclasses.replace(splits, **parts, tasks=tasks, info=info)


def _split(funnel: FunnelLabels, data: Any, tasks: tuple[Task, ...], what: str) -> Any:
    from mtlkit.data.dataset import MultiTaskDataset
    from mtlkit.data.streaming import TabularStream

    if isinstance(data, MultiTaskDataset):
        return _dataset(funnel, data, tasks, what)
    if isinstance(data, TabularStream):
        out = copy.copy(data)
        out.tasks = tasks
        out.encoder = copy.copy(data.encoder)
        out.encoder.funnel = funnel
        weights = {k: v for k, v in data.encoder.weights.items() if k != funnel.cvr or funnel.keeps_cvr}
        if funnel.ctr in weights:
            weights[funnel.ctcvr] = weights[funnel.ctr]
        out.encoder.weights = weights
        return out
    raise DataError(
        f"model.funnel: the {what} split is {type(data).__name__}; a funnel derives its labels from one dataset "
        "or stream per split (tabular data, in memory or streaming), not from per-task datasets."
    )


def _dataset(funnel: FunnelLabels, ds: Any, tasks: tuple[Task, ...], what: str) -> Any:
    from mtlkit.data.dataset import MultiTaskDataset

    if ds.masks:
        raise DataError("model.funnel: the dataset carries label masks; give missing labels as NaN instead.")
    for name in (funnel.ctr, funnel.cvr):
        if name not in ds.targets:
            raise DataError(f"model.funnel: the {what} split has no labels of task {name!r}.")
    origin = ds.info.get("origin")
    if origin is not None and len(origin.rows) == len(ds):
        where: Callable[[int], str] = lambda i: f"{origin.file}: {origin.row(i)}"  # noqa: E731
    else:
        where = lambda i: f"the {what} split: row {i}"  # noqa: E731
    derived = funnel.derive(ds.targets[funnel.ctr].numpy(), ds.targets[funnel.cvr].numpy(), where)
    dtype = ds.targets[funnel.ctr].dtype
    targets = {k: v for k, v in ds.targets.items() if k != funnel.cvr or funnel.keeps_cvr}
    targets.update({k: torch.from_numpy(v).to(dtype) for k, v in derived.items()})
    weights: Mapping[str, torch.Tensor] | None = ds.weights
    if weights is not None:
        weights = {k: v for k, v in weights.items() if k != funnel.cvr or funnel.keeps_cvr}
        if funnel.ctr in weights:
            weights[funnel.ctcvr] = weights[funnel.ctr]
    return MultiTaskDataset(
        ds.inputs,
        targets,
        tasks=tasks,
        info=ds.info,
        augment=ds.augment,
        dtype=ds.dtype,
        weights=weights or None,
        columns=ds.columns,  # group ids of grouped metrics (gauc)
    )
