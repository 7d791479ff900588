"""Multi-label benchmarks from MULAN (yeast, scene, emotions) in ARFF format.

Each dataset is one multilabel task (``labels``, one output per label) or, with
``as_binary_tasks=True``, one binary task per label, the usual way to treat multi-label
classification as multi-task learning. Labels are the attributes named in the dataset's MULAN
label file (``<name>.xml``); every other attribute is a numeric feature, standardised with the
training statistics. The official train/test split is kept; the validation set is carved from the
training file (a permutation seeded by ``split_seed``).
"""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from mtlkit.data.dataset import MultiTaskDataset
from mtlkit.data.preprocessing import TabularPreprocessor
from mtlkit.data.sources import DataFile, FileSet, locate, open_text
from mtlkit.data.splits import DataSplits
from mtlkit.data.tabular import load_preprocessor
from mtlkit.errors import DataError
from mtlkit.registries import DATASETS
from mtlkit.tasks import Task

__all__ = ["MULTILABEL_FILES", "Arff", "multilabel", "read_arff", "read_mulan_labels"]

_MULAN = "https://raw.githubusercontent.com/tsoumakas/mulan/43f6389095ad71984264db4387a8074b22bc7d4a/data/multi-label/"


def _files(name: str, sizes: dict[str, tuple[str, int]]) -> FileSet:
    return FileSet(
        name,
        tuple(DataFile(f, sha, size, url=f"{_MULAN}{name}/{f}") for f, (sha, size) in sizes.items()),
        description=f"MULAN multi-label dataset {name} (ARFF, official train/test split)",
    )


MULTILABEL_FILES: dict[str, FileSet] = {
    "yeast": _files("yeast", {
        "yeast-train.arff": ("e759dc991ff54694a4ff9c4314f3be0d6fd2b1994a4b563f57e416394c6aebbd", 1_501_117),
        "yeast-test.arff": ("4aaac102bff9669a765bf0b378602e5cc8c3b181048282e2f003117b496d552a", 918_515),
        "yeast.xml": ("c3056cc26444b5158b1588d1b73bec9c45429e10f0957ad085903423cb81f247", 526),
    }),
    "scene": _files("scene", {
        "scene-train.arff": ("b53ba93bdf412de922e3960389bcee24744fa3e872ce610511fc1d750888b64d", 3_127_968),
        "scene-test.arff": ("ea38d20296b3ff7e220f477a3b802a9bcb2d768881fe6ee163efbc97ea527a42", 3_090_742),
        "scene.xml": ("55d8b247b949ad5c52e5a73d8c6775ec6e5469ce9682465b45b333b68ee4bcc5", 285),
    }),
    "emotions": _files("emotions", {
        "emotions-train.arff": ("bbe704106c79bb8fb99c1d1d2e9bde081d6a2daeb01f100862f11fd91a3c1f98", 252_080),
        "emotions-test.arff": ("f13d4b746b7b5c8eb484bd751d6ac463d4560dff998a93516a5c1fe35daf6c8f", 132_007),
        "emotions.xml": ("dbce8e6ccbbb2fcbfd9e9edbb230d7ed12692c6e13f59fdbc0161fa9b6cf2dc0", 323),
    }),
}  # fmt: skip
"""The files of each dataset (as in the MULAN repository, pinned to one commit)."""


# ---------------------------------------------------------------------------------------------- ARFF
@dataclass(frozen=True)
class Arff:
    """A parsed ARFF file.

    Attributes:
        relation: the ``@relation`` name.
        names: attribute names, in column order.
        nominal: per attribute, its declared values (``None`` for numeric attributes).
        data: ``(rows, attributes)`` float64; nominal values whose declared values are all
            numbers (such as ``{0,1}``) keep their value, other nominal values become the index
            of the value in the declaration; ``?`` is NaN.
    """

    relation: str
    names: tuple[str, ...]
    nominal: tuple[tuple[str, ...] | None, ...]
    data: np.ndarray


def _unquote(s: str) -> str:
    s = s.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        return s[1:-1]
    return s


_ATTRIBUTE = re.compile(r"""^@attribute\s+('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S+)\s+(.+)$""", re.IGNORECASE)
_NUMERIC = {"numeric", "real", "integer"}


def read_arff(path: Path) -> Arff:
    """Read a (possibly compressed) ARFF file with numeric and nominal attributes, dense or sparse rows.

    Raises:
        DataError: the header is malformed, an attribute type is unsupported (string, date), a
            row has the wrong number of values or a value is not valid for its attribute; the
            message names the file and line.
    """
    names: list[str] = []
    nominal: list[tuple[str, ...] | None] = []
    relation = ""
    rows: list[list[str]] = []
    lines: list[int] = []
    in_data = False
    with open_text(path) as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line or line.startswith("%"):
                continue
            if not in_data:
                low = line.lower()
                if low.startswith("@relation"):
                    relation = _unquote(line[len("@relation") :])
                elif low.startswith("@attribute"):
                    m = _ATTRIBUTE.match(line)
                    if m is None:
                        raise DataError(f"{path}, line {lineno}: malformed @attribute declaration {line!r}.")
                    name, kind = _unquote(m.group(1)), m.group(2).strip()
                    if kind.startswith("{") and kind.endswith("}"):
                        nominal.append(tuple(_unquote(v) for v in kind[1:-1].split(",")))
                    elif kind.lower() in _NUMERIC:
                        nominal.append(None)
                    else:
                        raise DataError(
                            f"{path}, line {lineno}: attribute {name!r} has type {kind!r}; only numeric and "
                            "nominal attributes are supported."
                        )
                    names.append(name)
                elif low.startswith("@data"):
                    in_data = True
                else:
                    raise DataError(f"{path}, line {lineno}: unexpected header line {line[:60]!r}.")
                continue
            rows.append(
                _sparse_row(line, names, nominal, path, lineno) if line.startswith("{") else line.split(",")
            )
            lines.append(lineno)
    if not in_data:
        raise DataError(f"{path} has no @data section: the file is truncated or not an ARFF file.")
    width = len(names)
    for r, lineno in zip(rows, lines):
        if len(r) != width:
            raise DataError(
                f"{path}, line {lineno}: {len(r)} values, expected {width} (one per @attribute). "
                "The file is truncated or corrupt."
            )
    cells = np.array(rows, dtype=str).reshape(len(rows), width)
    data = np.empty(cells.shape, dtype=np.float64)
    for j, (name, values) in enumerate(zip(names, nominal)):
        col = np.char.strip(cells[:, j])
        col = np.char.strip(np.char.strip(col, "'"), '"')
        missing = col == "?"
        if values is not None:
            numeric_values = all(_is_number(v) for v in values)
            lookup = {v: (float(v) if numeric_values else float(i)) for i, v in enumerate(values)}
            out = np.array([lookup.get(v, np.nan) for v in col.tolist()])
            bad = ~missing & np.isnan(out)
        else:
            out = np.full(col.shape[0], np.nan)
            bad = np.zeros(col.shape[0], dtype=bool)
            try:
                out[~missing] = col[~missing].astype(np.float64)
            except ValueError:
                bad = ~missing & ~np.array([_is_number(v) for v in col.tolist()])
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{path}, line {lines[i]}: value {str(col[i])!r} is not valid for attribute {name!r}"
                + (f" (one of {', '.join(values)})." if values is not None else " (numeric).")
            )
        data[:, j] = np.where(missing, np.nan, out)
    return Arff(relation, tuple(names), tuple(nominal), data)


def _is_number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def _sparse_row(
    line: str, names: list[str], nominal: list[tuple[str, ...] | None], path: Path, lineno: int
) -> list[str]:
    """``{i v, j w}`` -> a dense row; omitted values are 0 (the first declared value for nominal attributes)."""
    if not line.endswith("}"):
        raise DataError(
            f"{path}, line {lineno}: a sparse row must end with '}}'; the file is truncated or corrupt."
        )
    row = ["0" if v is None else v[0] for v in nominal]
    body = line[1:-1].strip()
    for item in body.split(",") if body else []:
        parts = item.strip().split(None, 1)
        try:
            index = int(parts[0])
            value = parts[1]
        except (ValueError, IndexError):
            raise DataError(f"{path}, line {lineno}: malformed sparse entry {item.strip()!r}.") from None
        if not 0 <= index < len(names):
            raise DataError(f"{path}, line {lineno}: sparse index {index} outside 0..{len(names) - 1}.")
        row[index] = value
    return row


def read_mulan_labels(path: Path) -> list[str]:
    """The label attribute names of a MULAN label file (``<labels><label name=...>``, nested or flat)."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DataError(f"{path} is not a readable MULAN label file ({exc}).") from None
    names = [el.get("name") for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "label"]
    if not names or any(n is None for n in names):
        raise DataError(f'{path} names no labels (expected <label name="..."> elements).')
    return [str(n) for n in names]


# ---------------------------------------------------------------------------------------------- builder
def _task_name(label: str, taken: set[str]) -> str:
    name = re.sub(r"[^A-Za-z0-9_\-]", "_", label)
    if not re.match(r"^[A-Za-z_]", name):
        name = f"label_{name}"
    base, k = name, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


@DATASETS.register("multilabel", aliases=("mulan",))
def multilabel(
    *,
    dataset: Literal["yeast", "scene", "emotions"] = "yeast",
    path: str | None = None,
    download: bool = False,
    verify: bool = True,
    as_binary_tasks: bool = False,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    preprocessor: str | None = None,
) -> DataSplits:
    """MULAN multi-label benchmark (yeast, scene, emotions): one multilabel task or one binary task per label.

    Args:
        dataset: which benchmark.
        path: the dataset's folder or its parent (default: ``$MTLKIT_DATA``).
        download: fetch absent files from the MULAN repository (never done otherwise).
        verify: check the files' SHA-256 checksums.
        as_binary_tasks: one binary task per label (named after the labels) instead of one
            multilabel task ``labels``.
        val_fraction: share of the official training file used for validation.
        split_seed: seeds the validation carve-out.
        preprocessor: a saved preprocessor (``preprocessor.json`` or the run directory holding it)
            to use instead of fitting one.
    """
    started = time.perf_counter()
    if dataset not in MULTILABEL_FILES:
        raise DataError(f"multilabel: dataset must be one of {sorted(MULTILABEL_FILES)}; got {dataset!r}.")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"multilabel: val_fraction must be in [0, 1); got {val_fraction!r}.")
    files = locate(MULTILABEL_FILES[dataset], path, download=download, verify=verify)
    train_arff = read_arff(files[f"{dataset}-train.arff"])
    test_arff = read_arff(files[f"{dataset}-test.arff"])
    label_names = read_mulan_labels(files[f"{dataset}.xml"])
    if test_arff.names != train_arff.names:
        raise DataError(f"{files[f'{dataset}-test.arff']} declares other attributes than the training file.")
    absent = [n for n in label_names if n not in train_arff.names]
    if absent:
        raise DataError(
            f"{files[f'{dataset}.xml']} names labels {absent} that are not attributes of the data."
        )
    label_cols = [j for j, n in enumerate(train_arff.names) if n in set(label_names)]  # data column order
    feature_cols = [j for j in range(len(train_arff.names)) if j not in set(label_cols)]
    features = [train_arff.names[j] for j in feature_cols]
    labels = [train_arff.names[j] for j in label_cols]

    def rows_with_labels(arff: Arff) -> np.ndarray:
        return np.flatnonzero(~np.isnan(arff.data[:, label_cols]).all(axis=1))

    train_rows, test_rows = rows_with_labels(train_arff), rows_with_labels(test_arff)
    dropped = len(train_arff.data) + len(test_arff.data) - len(train_rows) - len(test_rows)
    perm = np.random.default_rng(split_seed).permutation(train_rows)
    n_val = round(val_fraction * len(perm))
    val_rows, train_rows = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    if preprocessor is not None:
        pre = load_preprocessor(preprocessor, categorical=(), numeric=features)
    else:
        pre = TabularPreprocessor(numeric=features).fit(
            {f: train_arff.data[train_rows, j] for f, j in zip(features, feature_cols)}
        )
    taken: set[str] = set()
    task_of = {label: _task_name(label, taken) for label in labels}
    if as_binary_tasks:
        tasks = tuple(Task(name=task_of[label], kind="binary") for label in labels)
    else:
        tasks = (Task(name="labels", kind="multilabel", num_classes=len(labels)),)

    def make(arff: Arff, rows: np.ndarray) -> MultiTaskDataset:
        inputs = pre.transform({f: arff.data[rows, j] for f, j in zip(features, feature_cols)})
        y = torch.from_numpy(arff.data[np.ix_(rows, label_cols)].astype(np.float32))
        if as_binary_tasks:
            targets = {task_of[label]: y[:, k].contiguous() for k, label in enumerate(labels)}
        else:
            targets = {"labels": y}
        return MultiTaskDataset(inputs, targets, tasks=tasks)

    train = make(train_arff, train_rows)
    val = make(train_arff, val_rows) if len(val_rows) else None
    test = make(test_arff, test_rows)
    y_train = train_arff.data[np.ix_(train_rows, label_cols)]
    info = {
        "dataset": dataset,
        "labels": {label: task_of[label] for label in labels} if as_binary_tasks else labels,
        "features": len(features),
        "rows": {"train": len(train), "val": len(val) if val is not None else 0, "test": len(test)},
        "label_cardinality": {
            "train": float(np.nansum(y_train) / len(train_rows)),
            "test": float(np.nansum(test_arff.data[np.ix_(test_rows, label_cols)]) / max(len(test_rows), 1)),
        },
        "dropped_unlabelled": int(dropped),
        "load_seconds": round(time.perf_counter() - started, 3),
    }
    return DataSplits(
        train=train, val=val, test=test, tasks=tasks, input_spec=pre.schema, info=info, preprocessor=pre
    )
