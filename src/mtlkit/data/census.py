"""UCI Census-Income (KDD), the real data of the MMoE paper (Ma et al., KDD 2018, section 6.3).

Two task groups, each a main task plus the auxiliary task "never married":

- group 1: ``income`` (income > $50K, main) and ``never_married``;
- group 2: ``college`` (education at least college, main) and ``never_married``.

The label source columns of the group's tasks are removed from the inputs (group 1 drops
``income_50k`` and ``marital_stat``; group 2 drops ``education`` and ``marital_stat``), and so is
``instance_weight`` (a sampling weight, not a feature; ``sample_weight=True`` makes it the
sample weight of both tasks' losses and metrics). The other 7 numeric columns are
standardised and the 31 or 32 categorical ones are embedded, with the preprocessing fitted on the
training rows only. As in the paper, all 199,523 training rows are used for training and the
99,762 test rows are split 1:1 into validation and test (a permutation seeded by ``split_seed``).

The paper does not list which education values count as "college"; here they are the six
degree values (associate, bachelor, master, professional school, doctorate);
``some_college=True`` also counts "Some college but no degree".

Parsing the 104 MB training file takes a few seconds (bzip2 decompression dominates), so the
parsed columns are cached (see :mod:`mtlkit.data.cache`); later loads take well under a second.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from mtlkit.data import cache as _cache
from mtlkit.data._checks import Fraction
from mtlkit.data._columns import CodedColumn, fit_coded, parse_delimited, transform_coded
from mtlkit.data.dataset import MultiTaskDataset
from mtlkit.data.preprocessing import TabularPreprocessor, UnknownCategoryDropout
from mtlkit.data.sources import (
    DATA_ENV,
    DataFile,
    FileSet,
    download,
    download_folder,
    locate,
    read_bytes,
    resolve_root,
    sha256sum,
)
from mtlkit.data.splits import DataSplits
from mtlkit.data.tabular import load_preprocessor
from mtlkit.errors import DataError
from mtlkit.registries import DATASETS
from mtlkit.tasks import Task

__all__ = [
    "CATEGORICAL_COLUMNS",
    "COLLEGE_VALUES",
    "COLUMNS",
    "FILES",
    "NUMERIC_COLUMNS",
    "census_income",
    "read_census",
]

COLUMNS: tuple[str, ...] = (
    "age", "class_worker", "det_ind_code", "det_occ_code", "education", "wage_per_hour", "hs_college",
    "marital_stat", "major_ind_code", "major_occ_code", "race", "hisp_origin", "sex", "union_member",
    "unemp_reason", "full_or_part_emp", "capital_gains", "capital_losses", "stock_dividends",
    "tax_filer_stat", "region_prev_res", "state_prev_res", "det_hh_fam_stat", "det_hh_summ",
    "instance_weight", "mig_chg_msa", "mig_chg_reg", "mig_move_reg", "mig_same", "mig_prev_sunbelt",
    "num_emp", "fam_under_18", "country_father", "country_mother", "country_self", "citizenship",
    "own_or_self", "vet_question", "vet_benefits", "weeks_worked", "year", "income_50k",
)  # fmt: skip
"""The 42 fields of a row (names as in keras-mmoe and the MMoE demos)."""

NUMERIC_COLUMNS: tuple[str, ...] = (
    "age", "wage_per_hour", "capital_gains", "capital_losses", "stock_dividends", "num_emp", "weeks_worked",
)  # fmt: skip
"""Numeric attributes (standardised). The integer-coded det_ind_code, det_occ_code, own_or_self,
vet_benefits and year are categorical."""

LABEL_COLUMNS: tuple[str, ...] = ("income_50k", "marital_stat", "education")
"""The columns the tasks' labels come from."""

DROPPED_COLUMNS: tuple[str, ...] = ("instance_weight",)
"""Never used as features."""

CATEGORICAL_COLUMNS: tuple[str, ...] = tuple(
    c for c in COLUMNS if c not in NUMERIC_COLUMNS + LABEL_COLUMNS + DROPPED_COLUMNS
)
"""Categorical attributes other than the label columns (the group's other label column is added)."""

INCOME_VALUES = {"- 50000.": 0.0, "50000+.": 1.0}
MARITAL_VALUES = (
    "Never married", "Married-civilian spouse present", "Married-spouse absent", "Separated", "Divorced",
    "Widowed", "Married-A F spouse present",
)  # fmt: skip
COLLEGE_VALUES: tuple[str, ...] = (
    "Associates degree-academic program",
    "Associates degree-occup /vocational",
    "Bachelors degree(BA AB BS)",
    "Masters degree(MA MS MEng MEd MSW MBA)",
    "Prof school degree (MD DDS DVM LLB JD)",
    "Doctorate degree(PhD EdD)",
)
"""Education values that count as "at least college" (group 2's main task)."""
SOME_COLLEGE = "Some college but no degree"
OTHER_EDUCATION = (
    "Children", "Less than 1st grade", "1st 2nd 3rd or 4th grade", "5th or 6th grade", "7th and 8th grade",
    "9th grade", "10th grade", "11th grade", "12th grade no diploma", "High school graduate",
)  # fmt: skip

UCI_URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/census-income-mld/"

FILES = FileSet(
    "census-income",
    (
        DataFile(
            "census-income.data.bz2",
            "18871717881a27d471fbcd7448541e181e32bbbc9b7d900824742c28e14e4469",
            2_651_475,
        ),
        DataFile(
            "census-income.test.gz",
            "5ac4cacd3ca9f1ecb10de1a0a41e4ac68fdc419e3fec190f5c0c6cc03b2ea659",
            3_261_416,
            url=UCI_URL + "census-income.test.gz",
        ),
        DataFile(
            "census-income.names",
            "d6fea52977f68504ab3149351980458e09bfc3116808da8986646710d254ef98",
            14_892,
            url=UCI_URL + "census-income.names",
        ),
    ),
    description="UCI Census-Income (KDD), as used in the MMoE paper",
)
"""The files as in ``shared/data/census-income`` (the training file bzip2-compressed)."""

# Any other compression of the same content is accepted too (UCI serves census-income.data.gz):
# such files are checked by the SHA-256 of their decompressed content.
_CANDIDATES = {
    "train": ("census-income.data.bz2", "census-income.data.gz", "census-income.data"),
    "test": ("census-income.test.gz", "census-income.test"),
}
_CONTENT = {  # sha256, bytes and rows of the decompressed files
    "train": ("3676a81db7d3528f3f8b9f3c699d0f0aa28db45e6e994fa0b8ed38327539ee86", 103_874_469, 199_523),
    "test": ("98402b1ab879573d0a7f38a699a40258080e25e33d3401e7bf9c96d3fa0fab8c", 51_918_813, 99_762),
}
_DOWNLOADS = {"train": "census-income.data.gz", "test": "census-income.test.gz"}
_PARSER_VERSION = 1
_USED = tuple(c for c in COLUMNS if c not in DROPPED_COLUMNS)


def _files(path: str | os.PathLike[str] | None, *, download_missing: bool, verify: bool) -> dict[str, Path]:
    root = resolve_root(path, FILES)
    found = {
        role: next((root / n for n in names if (root / n).is_file()), None)
        for role, names in _CANDIDATES.items()
    }
    missing = [role for role, p in found.items() if p is None]
    if missing and download_missing:
        folder = download_folder(root, FILES)
        for role in missing:
            dest = folder / _DOWNLOADS[role]
            download(UCI_URL + _DOWNLOADS[role], dest)
            found[role] = dest
        missing = []
    if missing:
        what = {
            "train": "census-income.data.bz2 (2,651,475 bytes; or UCI's census-income.data.gz)",
            "test": "census-income.test.gz (3,261,416 bytes)",
        }
        raise DataError(
            f"census-income: missing {' and '.join(what[r] for r in missing)} in {root}. Put the file(s) "
            f"there, or pass download=True (--download / data.download=true) to fetch them from the UCI "
            f"repository ({UCI_URL}). Set the data path (or {DATA_ENV}) to the folder holding them, or to "
            "its parent."
        )
    out: dict[str, Path] = {}
    known = {f.name for f in FILES.files}
    for role, p in found.items():
        assert p is not None
        if verify and p.name in known:
            locate(FILES, root, names=[p.name], verify=True)  # size and SHA-256 of the file itself
        out[role] = p
    return out


def _parse(role: str, path: Path, *, check_content: bool) -> dict[str, CodedColumn]:
    data = read_bytes(path)
    if check_content:
        sha, size, _ = _CONTENT[role]
        if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
            raise DataError(
                f"{path} decompresses to {len(data):,} bytes that are not the original census-income "
                f"{'training' if role == 'train' else 'test'} file ({size:,} bytes): the file is corrupt, "
                "truncated or a different version. Replace it, or pass verify=False to skip the check."
            )
    return parse_delimited(data, COLUMNS, usecols=_USED, source=str(path))


def read_census(
    path: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
    verify: bool = True,
    cache: bool = True,
) -> tuple[dict[str, CodedColumn], dict[str, CodedColumn], dict[str, Any]]:
    """The training and test files as coded columns (every column but ``instance_weight``).

    Args:
        path: the census-income folder or its parent (default: ``$MTLKIT_DATA``).
        download: fetch absent files from the UCI repository.
        verify: check the files (SHA-256 of the file, or of its decompressed content for other
            compressions) and the row counts.
        cache: read and write the parsed columns in the cache (:mod:`mtlkit.data.cache`).

    Returns:
        ``(train_columns, test_columns, info)``; ``info`` holds the load time and cache use.
    """
    started = time.perf_counter()
    paths = _files(path, download_missing=download, verify=verify)
    known = {f.name for f in FILES.files}
    out: list[dict[str, CodedColumn]] = []
    hits: list[bool] = []
    for role in ("train", "test"):
        p = paths[role]
        check_content = verify and p.name not in known
        key = f"{role}-{sha256sum(p)[:40]}-v{_PARSER_VERSION}"
        arrays = _cache.load_arrays("census-income", key) if cache else None
        columns = _from_arrays(arrays, verified=verify) if arrays is not None else None
        hits.append(columns is not None)
        if columns is None:
            columns = _parse(role, p, check_content=check_content)
            if cache:
                _cache.save_arrays("census-income", key, _to_arrays(columns, verified=verify))
        rows = len(next(iter(columns.values())))
        expected = _CONTENT[role][2]
        if verify and rows != expected:
            raise DataError(
                f"{p} has {rows:,} rows, expected {expected:,}: the file is truncated or not the original."
            )
        out.append(columns)
    info = {
        "load_seconds": time.perf_counter() - started,
        "cache": "off" if not cache else ("hit" if all(hits) else "miss"),
        "files": {role: str(p) for role, p in paths.items()},
    }
    return out[0], out[1], info


def _to_arrays(columns: Mapping[str, CodedColumn], *, verified: bool) -> dict[str, np.ndarray]:
    arrays = {"__verified__": np.array(verified)}
    for name, col in columns.items():
        arrays[f"{name}.values"] = col.values
        arrays[f"{name}.codes"] = col.codes
    return arrays


def _from_arrays(arrays: Mapping[str, np.ndarray], *, verified: bool) -> dict[str, CodedColumn] | None:
    if verified and not bool(arrays.get("__verified__", False)):
        return None  # written without verification: parse (and check) again
    try:
        columns = {c: CodedColumn(arrays[f"{c}.values"], arrays[f"{c}.codes"]) for c in _USED}
    except KeyError:
        return None
    if len({len(c) for c in columns.values()}) != 1:
        return None
    return columns


def _instance_weights(
    path: str | os.PathLike[str] | None, *, verify: bool, cache: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The ``instance_weight`` column of the training and test files as float64 (cached apart from
    the other columns, which never include it)."""
    paths = _files(path, download_missing=False, verify=False)  # read_census has checked them
    out = []
    for role in ("train", "test"):
        p = paths[role]
        key = f"weights-{role}-{sha256sum(p)[:40]}-v{_PARSER_VERSION}"
        arrays = _cache.load_arrays("census-income", key) if cache else None
        if arrays is None or "w" not in arrays:
            parsed = parse_delimited(read_bytes(p), COLUMNS, usecols=("instance_weight",), source=str(p))
            col = parsed["instance_weight"]
            try:
                per_value = col.values.astype(np.float64)
            except ValueError:
                raise DataError(
                    f"{p}: the instance_weight column holds non-numeric values; the file is not the original "
                    "census-income data."
                ) from None
            arrays = {"w": per_value[col.codes]}
            if cache:
                _cache.save_arrays("census-income", key, arrays)
        w = np.asarray(arrays["w"], dtype=np.float64)
        if not np.all(np.isfinite(w) & (w >= 0)):
            raise DataError(f"{p}: instance_weight holds negative or non-finite values; the file is corrupt.")
        out.append(w)
    return out[0], out[1]


# ---------------------------------------------------------------------------------------------- labels
def _label(col: CodedColumn, mapping: Mapping[str, float], *, column: str) -> np.ndarray:
    """Per-row float labels from a per-value mapping; missing markers -> NaN; unknown values raise."""
    missing = col.missing_values()
    lookup = np.full(col.values.shape[0], np.nan, dtype=np.float32)
    used = np.bincount(col.codes, minlength=col.values.shape[0]) > 0
    for i, v in enumerate(col.values.tolist()):
        if missing[i]:
            continue
        if v not in mapping:
            if not used[i]:
                continue
            raise DataError(
                f"census-income: column {column!r} holds the unexpected value {v!r} "
                f"(expected one of {sorted(mapping)}); the file is not the original census-income data."
            )
        lookup[i] = mapping[v]
    return lookup[col.codes]


def _labels(columns: Mapping[str, CodedColumn], group: int, some_college: bool) -> dict[str, np.ndarray]:
    never = {v: float(v == "Never married") for v in MARITAL_VALUES}
    if group == 1:
        main = ("income", _label(columns["income_50k"], INCOME_VALUES, column="income_50k"))
    else:
        college = dict.fromkeys(COLLEGE_VALUES, 1.0) | dict.fromkeys(OTHER_EDUCATION, 0.0)
        college[SOME_COLLEGE] = 1.0 if some_college else 0.0
        main = ("college", _label(columns["education"], college, column="education"))
    return {main[0]: main[1], "never_married": _label(columns["marital_stat"], never, column="marital_stat")}


# ---------------------------------------------------------------------------------------------- builder
@DATASETS.register("census_income", aliases=("census",))
def census_income(
    *,
    path: str | None = None,
    download: bool = False,
    verify: bool = True,
    group: Literal[1, 2] = 1,
    n_train: int | None = None,
    some_college: bool = False,
    min_frequency: int = 1,
    unknown_fraction: Fraction = 0.01,
    split_seed: int = 0,
    cache: bool = True,
    preprocessor: str | None = None,
    sample_weight: bool = False,
) -> DataSplits:
    """UCI Census-Income (KDD), MMoE paper 6.3: income or college (main) + never married (auxiliary).

    Args:
        path: the census-income folder or its parent (default: ``$MTLKIT_DATA``).
        download: fetch absent files from the UCI repository (never done otherwise).
        verify: check checksums and row counts.
        group: 1 = ``income`` + ``never_married``; 2 = ``college`` + ``never_married``.
        n_train: train on a random subset of this many training rows (quick runs); None = all.
        some_college: count "Some college but no degree" as college (group 2).
        min_frequency: categories seen fewer times in training map to the unknown bucket.
        unknown_fraction: share of the training categories replaced by the unknown bucket in each
            epoch (:class:`~mtlkit.data.preprocessing.UnknownCategoryDropout`); 0 turns it off.
        split_seed: seeds the 1:1 validation/test split of the test file and the ``n_train`` subset.
        cache: use the parsed-file cache (:mod:`mtlkit.data.cache`).
        preprocessor: a saved preprocessor (``preprocessor.json`` or the run directory holding it)
            to use instead of fitting one, so that a trained model sees the inputs it was trained on.
        sample_weight: weigh every row by its ``instance_weight`` (the census sampling weight) in
            both tasks' losses and metrics (weighted means); off by default, as in the paper.

    Returns:
        DataSplits with tabular inputs (a FeatureSchema) and the fitted TabularPreprocessor.
    """
    if group not in (1, 2):
        raise DataError(f"census_income: group must be 1 or 2; got {group!r}.")
    if n_train is not None and n_train < 1:
        raise DataError(f"census_income: n_train must be >= 1 or None (all rows); got {n_train!r}.")
    train_cols, test_cols, load = read_census(path, download=download, verify=verify, cache=cache)
    weights = _instance_weights(path, verify=verify, cache=cache) if sample_weight else None
    started = time.perf_counter()
    removed = ("income_50k", "marital_stat") if group == 1 else ("education", "marital_stat")
    categorical = tuple(c for c in COLUMNS if c not in NUMERIC_COLUMNS + DROPPED_COLUMNS + removed)

    def labelled(cols: Mapping[str, CodedColumn]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        ys = _labels(cols, group, some_college)
        keep = ~np.all(np.stack([np.isnan(y) for y in ys.values()]), axis=0)
        return ys, np.flatnonzero(keep)

    y_train, train_rows = labelled(train_cols)
    y_test, test_rows = labelled(test_cols)
    dropped = len(train_cols["age"]) + len(test_cols["age"]) - len(train_rows) - len(test_rows)
    rng = np.random.default_rng(split_seed)
    if n_train is not None and n_train < len(train_rows):
        train_rows = np.sort(rng.permutation(train_rows)[:n_train])
    perm = np.random.default_rng(split_seed).permutation(test_rows)
    half = len(perm) // 2
    val_rows, test_rows = np.sort(perm[:half]), np.sort(perm[half:])

    features = (*categorical, *NUMERIC_COLUMNS)
    if preprocessor is not None:
        pre = load_preprocessor(preprocessor, categorical=categorical, numeric=NUMERIC_COLUMNS)
    else:
        pre = TabularPreprocessor(
            categorical=categorical, numeric=NUMERIC_COLUMNS, min_frequency=min_frequency
        )
        fit_coded(
            pre, {c: train_cols[c].take(train_rows) for c in features}, source="census-income training data"
        )
    task_names = tuple(y_train)
    tasks = tuple(Task(name=t, kind="binary") for t in task_names)

    def dataset(
        cols: Mapping[str, CodedColumn],
        ys: Mapping[str, np.ndarray],
        rows: np.ndarray,
        augment: Any = None,
        w: np.ndarray | None = None,
    ) -> MultiTaskDataset:
        inputs = transform_coded(pre, {c: cols[c].take(rows) for c in features})
        targets = {t: torch.from_numpy(np.ascontiguousarray(ys[t][rows])) for t in task_names}
        sw = None if w is None else torch.from_numpy(np.ascontiguousarray(w[rows]))
        return MultiTaskDataset(inputs, targets, tasks=tasks, augment=augment, weights=sw)

    dropout = UnknownCategoryDropout(unknown_fraction) if unknown_fraction else None
    w_train, w_test = weights if weights is not None else (None, None)
    train = dataset(train_cols, y_train, train_rows, dropout, w_train)
    val = dataset(test_cols, y_test, val_rows, None, w_test)
    test = dataset(test_cols, y_test, test_rows, None, w_test)

    def rates(ds: MultiTaskDataset) -> dict[str, float]:
        return {t: float(torch.nanmean(ds.targets[t].double())) for t in task_names}

    info = {
        "dataset": "census-income",
        "group": group,
        "main_task": task_names[0],
        "auxiliary_task": "never_married",
        "rows": {"train": len(train), "val": len(val), "test": len(test)},
        "positive_rate": {"train": rates(train), "val": rates(val), "test": rates(test)},
        "removed_columns": [*removed, *DROPPED_COLUMNS],
        "categorical": list(categorical),
        "numeric": list(NUMERIC_COLUMNS),
        "dropped_unlabelled": int(dropped),
        "some_college": some_college,
        "sample_weight": "instance_weight" if sample_weight else None,
        "load_seconds": round(load["load_seconds"], 3),
        "preprocess_seconds": round(time.perf_counter() - started, 3),
        "cache": load["cache"],
    }
    return DataSplits(
        train=train, val=val, test=test, tasks=tasks, input_spec=pre.schema, info=info, preprocessor=pre
    )
