"""CTR/CVR data for ESMM-style models: the Ali-CCP and AliExpress samples, and the shared task sets.

Every impression has a click label; a conversion can only follow a click. The targets are

- ``ctr``: click (all impressions);
- ``ctcvr``: click AND conversion (all impressions);
- ``cvr``: conversion given click, defined on clicked impressions only (NaN elsewhere).

Task sets train different losses on the same targets (see :func:`ctr_cvr_tasks`): ``"esmm"``
trains ``ctr`` and ``ctcvr`` over all impressions and only evaluates ``cvr`` (Ma et al. 2018);
``"clicked_cvr"`` trains ``ctr`` and a ``cvr`` loss on clicked impressions only and only evaluates
``ctcvr`` (the paper's BASE). Both give the same task names, so runs compare directly.
``"funnel"`` has ``ctr`` and ``ctcvr`` as logits (AITM, or any model with one logit per task).

The real samples (``ali_ccp_sample``, ``aliexpress_sample``) are read from the path the user gives
(or ``$MTLKIT_DATA``), checked against their SHA-256 and parsed into tabular inputs
(:class:`~mtlkit.data.preprocessing.TabularPreprocessor`, fitted on the training file).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from mtlkit.data._checks import Fraction
from mtlkit.data.dataset import MultiTaskDataset
from mtlkit.data.preprocessing import TabularPreprocessor, UnknownCategoryDropout
from mtlkit.data.sources import DataFile, FileSet, locate, read_csv
from mtlkit.data.splits import DataSplits
from mtlkit.errors import DataError
from mtlkit.registries import DATASETS
from mtlkit.tasks import Task

__all__ = [
    "ALIEXPRESS_SAMPLE",
    "ALI_CCP_SAMPLE",
    "TaskSet",
    "ali_ccp_sample",
    "aliexpress_sample",
    "ctr_cvr_targets",
    "ctr_cvr_tasks",
]

TaskSet = Literal["esmm", "clicked_cvr", "funnel"]


def ctr_cvr_tasks(task_set: TaskSet = "esmm") -> tuple[Task, ...]:
    """The tasks of CTR/CVR data (``ctr``, ``ctcvr``, ``cvr``), trained as ``task_set`` says.

    - ``"esmm"``: ``ctr`` (logits) and ``ctcvr`` (a probability) are trained over all impressions;
      ``cvr`` (a probability) is evaluated only (``Task(train=False)``). For the ``esmm`` model.
    - ``"clicked_cvr"``: ``ctr`` and ``cvr`` are trained, ``cvr`` on clicked impressions only
      (its labels are NaN elsewhere); ``ctcvr`` is evaluated only. With the ``esmm`` model this
      is the paper's BASE: the same network, pCTCVR = pCTR x pCVR, but the CVR tower learns from
      clicked impressions.
    - ``"funnel"``: ``ctr`` and ``ctcvr``, both logits trained over all impressions, no ``cvr``:
      the steps of a conversion funnel for AITM, or for any model with one logit per task.
    """
    if task_set == "funnel":
        return (Task(name="ctr", kind="binary"), Task(name="ctcvr", kind="binary"))
    if task_set not in ("esmm", "clicked_cvr"):
        raise ValueError(f"task_set must be 'esmm', 'clicked_cvr' or 'funnel'; got {task_set!r}.")
    esmm = task_set == "esmm"
    return (
        Task(name="ctr", kind="binary"),
        Task(name="ctcvr", kind="binary", logits=False, train=esmm),
        Task(name="cvr", kind="binary", logits=False, train=not esmm),
    )


def ctr_cvr_targets(click: Tensor, conversion: Tensor, *, source: str = "data") -> dict[str, Tensor]:
    """``{"ctr", "ctcvr", "cvr"}`` float targets from 0/1 click and conversion labels.

    Raises:
        DataError: a label is not 0/1, or a conversion has no click.
    """
    click, conversion = click.float().reshape(-1), conversion.float().reshape(-1)
    for name, y in (("click", click), ("conversion", conversion)):
        bad = ~((y == 0) | (y == 1))
        if bad.any():
            row = int(bad.nonzero()[0])
            raise DataError(f"{source}: {name} labels must be 0 or 1; row {row} has {y[row].item()!r}.")
    orphan = (conversion > 0) & (click == 0)
    if orphan.any():
        row = int(orphan.nonzero()[0])
        raise DataError(
            f"{source}: row {row} has a conversion without a click; CTR/CVR data needs conversion <= click."
        )
    return {
        "ctr": click,
        "ctcvr": conversion,
        "cvr": torch.where(click > 0, conversion, torch.full_like(conversion, float("nan"))),
    }


# ---------------------------------------------------------------------------------------------- real samples
_RECHUB = "https://raw.githubusercontent.com/datawhalechina/torch-rechub/5a73b2eebc3a670dc64c54971cc06a78ddd55394/examples/ranking/data"

ALI_CCP_SAMPLE = FileSet(
    "ali-ccp-sample",
    (
        DataFile(
            "ali_ccp_train_sample.csv",
            "1c1d125bcdfca70c8f5ed24f6221acadab3e19b70e0b06b3eb3adb2af7a0f9b5",
            10_450,
            f"{_RECHUB}/ali-ccp/ali_ccp_train_sample.csv",
        ),
        DataFile(
            "ali_ccp_val_sample.csv",
            "1236e1504b76bf7ceb48dbe3d999ae8b49f61fcda2d684578320fd9fc7821104",
            5_396,
            f"{_RECHUB}/ali-ccp/ali_ccp_val_sample.csv",
        ),
        DataFile(
            "ali_ccp_test_sample.csv",
            "9764a9b8e53b25f85c00e08a89f65ecfadab100cb0834161bd7ef671b7702a09",
            5_432,
            f"{_RECHUB}/ali-ccp/ali_ccp_test_sample.csv",
        ),
    ),
    "Ali-CCP (ESMM paper data), 100/50/50-impression sample preprocessed by torch-rechub",
)

ALIEXPRESS_SAMPLE = FileSet(
    "aliexpress-sample",
    (
        DataFile(
            "aliexpress_train_sample.csv",
            "9a602d2bd6012b23898437f60977135b65e75c3414bf19cac0d70408b12035ef",
            46_177,
            f"{_RECHUB}/aliexpress/aliexpress_train_sample.csv",
        ),
        DataFile(
            "aliexpress_test_sample.csv",
            "c264673dc08e68d1c6153b48c9039a3ea4d3ff3106b071550db34e311e25d529",
            9_399,
            f"{_RECHUB}/aliexpress/aliexpress_test_sample.csv",
        ),
    ),
    "AliExpress (US) search impressions, 100/20-row sample from torch-rechub",
)

ALI_CCP_SPARSE = (
    *("101", "121", "122", "124", "125", "126", "127", "128", "129"),  # user and user profile
    *("205", "206", "207", "210", "216"),  # item, category, shop, intention node, brand
    *("508", "509", "702", "853", "301"),  # user-item cross features, position
    *("109_14", "110_14", "127_14", "150_14"),  # 14-day behaviour history
)
ALI_CCP_DENSE = ("D109_14", "D110_14", "D127_14", "D150_14", "D508", "D509", "D702", "D853")
ALIEXPRESS_SPARSE = tuple(f"categorical_{i}" for i in range(1, 17))
ALIEXPRESS_DENSE = tuple(f"numerical_{i}" for i in range(1, 64))


def _read_table(
    path: Path, categorical: Sequence[str], numeric: Sequence[str], click: str, conversion: str
) -> tuple[dict[str, np.ndarray], Tensor, Tensor]:
    """Columns and the two label vectors of one CTR/CVR CSV file; errors name the file."""
    cols = read_csv(path)
    missing = [c for c in (*categorical, *numeric, click, conversion) if c not in cols]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; the file is not in the expected format "
            f"(found {len(cols)} columns: {', '.join(list(cols)[:6])}...)."
        )
    labels = []
    for name in (click, conversion):
        try:
            labels.append(torch.from_numpy(cols[name].astype(np.float32)))
        except ValueError:
            raise DataError(f"{path}: column {name!r} holds non-numeric labels.") from None
    for name in numeric:
        try:
            cols[name].astype(np.float64)
        except ValueError:
            raise DataError(f"{path}: numeric column {name!r} holds non-numeric values.") from None
    return cols, labels[0], labels[1]


def _build_splits(
    fileset: FileSet,
    files: Mapping[str, str | None],
    categorical: Sequence[str],
    numeric: Sequence[str],
    click: str,
    conversion: str,
    path: str | os.PathLike[str] | None,
    download: bool,
    verify: bool,
    task_set: TaskSet,
    min_frequency: int,
    unknown_fraction: float,
) -> DataSplits:
    tasks = ctr_cvr_tasks(task_set)
    names = [f for f in files.values() if f is not None]
    paths = locate(fileset, path, names=names, download=download, verify=verify)
    tables = {split: _read_table(paths[f], categorical, numeric, click, conversion) for split, f in files.items() if f}
    pre = TabularPreprocessor(categorical=categorical, numeric=numeric, min_frequency=min_frequency)
    pre.fit(tables["train"][0])
    parts: dict[str, MultiTaskDataset] = {}
    counts: dict[str, dict[str, int]] = {}
    for split, (cols, y_click, y_conv) in tables.items():
        source = str(paths[files[split]])  # type: ignore[index]
        targets = ctr_cvr_targets(y_click, y_conv, source=source)
        augment = UnknownCategoryDropout(unknown_fraction) if split == "train" and unknown_fraction else None
        parts[split] = MultiTaskDataset(pre.transform(cols), targets, tasks=tasks, augment=augment)
        counts[split] = {
            "impressions": len(y_click),
            "clicks": int(y_click.sum()),
            "conversions": int(y_conv.sum()),
        }
    return DataSplits(
        train=parts["train"],
        val=parts.get("val"),
        test=parts.get("test"),
        tasks=tasks,
        input_spec=pre.schema,
        info={"dataset": fileset.folder, "description": fileset.description, "task_set": task_set, "counts": counts},
        preprocessor=pre,
    )


@DATASETS.register("ali_ccp_sample", aliases=("ali_ccp",))
def ali_ccp_sample(
    path: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
    verify: bool = True,
    task_set: TaskSet = "esmm",
    min_frequency: int = 1,
    unknown_fraction: Fraction = 0.01,
) -> DataSplits:
    """Ali-CCP sample (ESMM paper data): 100/50/50 impressions; tasks ctr, ctcvr (trained) and cvr (evaluated only).

    Files (``ali-ccp-sample/`` under ``path`` or ``$MTLKIT_DATA``): ``ali_ccp_{train,val,test}_sample.csv``
    from torch-rechub (commit 5a73b2e). Inputs: 23 categorical fields (user, item, shop, brand,
    cross features, history) and 8 dense fields; labels ``click`` and ``purchase``.

    Args:
        path: the folder holding the files (or its parent); default ``$MTLKIT_DATA``.
        download: fetch missing files from torch-rechub on GitHub (never done otherwise).
        verify: check every file's size and SHA-256.
        task_set: ``"esmm"``, ``"clicked_cvr"`` or ``"funnel"`` (see :func:`ctr_cvr_tasks`).
        min_frequency: categories seen fewer times in training map to the unknown bucket.
        unknown_fraction: share of the training categories replaced by the unknown bucket in each
            epoch (:class:`~mtlkit.data.preprocessing.UnknownCategoryDropout`); 0 turns it off.
    """
    files = {"train": "ali_ccp_train_sample.csv", "val": "ali_ccp_val_sample.csv", "test": "ali_ccp_test_sample.csv"}
    columns = (ALI_CCP_SPARSE, ALI_CCP_DENSE, "click", "purchase")
    return _build_splits(ALI_CCP_SAMPLE, files, *columns, path, download, verify, task_set, min_frequency, unknown_fraction)


@DATASETS.register("aliexpress_sample", aliases=("aliexpress",))
def aliexpress_sample(
    path: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
    verify: bool = True,
    task_set: TaskSet = "esmm",
    min_frequency: int = 1,
    unknown_fraction: Fraction = 0.01,
) -> DataSplits:
    """AliExpress sample (US search logs): 100/20 impressions; tasks ctr, ctcvr (trained) and cvr (evaluated only).

    Files (``aliexpress-sample/`` under ``path`` or ``$MTLKIT_DATA``): ``aliexpress_{train,test}_sample.csv``
    from torch-rechub (commit 5a73b2e). Inputs: 16 categorical and 63 numeric columns (``search_id``
    is a row identifier and is left out, as in MTReclib); labels ``click`` and ``conversion``.
    There is no validation file (``val`` is None).

    Args:
        path: the folder holding the files (or its parent); default ``$MTLKIT_DATA``.
        download: fetch missing files from torch-rechub on GitHub (never done otherwise).
        verify: check every file's size and SHA-256.
        task_set: ``"esmm"``, ``"clicked_cvr"`` or ``"funnel"`` (see :func:`ctr_cvr_tasks`).
        min_frequency: categories seen fewer times in training map to the unknown bucket.
        unknown_fraction: share of the training categories replaced by the unknown bucket in each
            epoch (:class:`~mtlkit.data.preprocessing.UnknownCategoryDropout`); 0 turns it off.
    """
    files = {"train": "aliexpress_train_sample.csv", "val": None, "test": "aliexpress_test_sample.csv"}
    columns = (ALIEXPRESS_SPARSE, ALIEXPRESS_DENSE, "click", "conversion")
    return _build_splits(ALIEXPRESS_SAMPLE, files, *columns, path, download, verify, task_set, min_frequency, unknown_fraction)
