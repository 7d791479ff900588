"""Image datasets: MNIST + Fashion-MNIST (two tasks, two datasets) and CIFAR-10 (is-cat / is-dog).

- ``mnist_fashion``: the pairing of the founding blog post (seed 000): MNIST digits and
  Fashion-MNIST articles, two 10-class tasks with *separate* datasets learned by one shared CNN.
  ``mode="separate"`` gives one dataset per task (``DataSplits.train == {"mnist": ...,
  "fashion": ...}``, for trainers that sample tasks); ``mode="mixed"`` concatenates them into one
  dataset in which each image carries only its own task's label (the other is -1, missing), the
  seed's per-sample task flag, which any trainer can use.
- ``cifar10``: binary heads such as seed 003's is-cat and is-dog on a shared image extractor, with
  per-channel normalisation (training statistics) and random flips + padded crops in training.

Images are held as float32 tensors of the whole split (a few hundred MB at most), so a batch is
one index operation; the augmentation (:class:`RandomFlipCrop`) is one vectorised gather per batch.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from mtlkit.data.dataset import MultiTaskDataset
from mtlkit.data.sources import DATA_ENV, DataFile, FileSet, locate, read_bytes, resolve_root
from mtlkit.data.splits import DataSplits
from mtlkit.errors import DataError, ShapeError, did_you_mean
from mtlkit.registries import DATASETS
from mtlkit.tasks import Task

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_FILES",
    "FASHION_MNIST_FILES",
    "MNIST_FILES",
    "RandomFlipCrop",
    "cifar10",
    "mnist_fashion",
    "read_cifar_batch",
    "read_idx",
]

# ---------------------------------------------------------------------------------------------- files
_OSSCI = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_ZALANDO = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"

MNIST_FILES = FileSet(
    "mnist",
    (
        DataFile("train-images-idx3-ubyte.gz", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                 9_912_422, _OSSCI + "train-images-idx3-ubyte.gz"),
        DataFile("train-labels-idx1-ubyte.gz", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                 28_881, _OSSCI + "train-labels-idx1-ubyte.gz"),
        DataFile("t10k-images-idx3-ubyte.gz", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                 1_648_877, _OSSCI + "t10k-images-idx3-ubyte.gz"),
        DataFile("t10k-labels-idx1-ubyte.gz", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                 4_542, _OSSCI + "t10k-labels-idx1-ubyte.gz"),
    ),
    description="MNIST handwritten digits (LeCun et al. 1998), original IDX files",
)  # fmt: skip
"""MNIST, as on yann.lecun.com (downloaded from the torchvision/ossci mirror)."""

FASHION_MNIST_FILES = FileSet(
    "fashion-mnist",
    (
        DataFile("train-images-idx3-ubyte.gz", "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                 26_421_880, _ZALANDO + "train-images-idx3-ubyte.gz"),
        DataFile("train-labels-idx1-ubyte.gz", "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                 29_515, _ZALANDO + "train-labels-idx1-ubyte.gz"),
        DataFile("t10k-images-idx3-ubyte.gz", "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                 4_422_102, _ZALANDO + "t10k-images-idx3-ubyte.gz"),
        DataFile("t10k-labels-idx1-ubyte.gz", "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                 5_148, _ZALANDO + "t10k-labels-idx1-ubyte.gz"),
    ),
    description="Fashion-MNIST (Xiao et al. 2017), Zalando's IDX files",
)  # fmt: skip
"""Fashion-MNIST, as in zalandoresearch/fashion-mnist."""

CIFAR10_FILES = FileSet(
    "cifar-10",
    (
        DataFile("batches.meta.gz", "33427efa7068283af41c28f7df6fd21c03642f5920b0cb8337871aef82614ae4", 170),
        DataFile("data_batch_1.gz", "c368c4be88bf71ab0fe52769620770af9e5a58b3cf87587f5e1c5f6cf482ad02", 28_276_756),
        DataFile("data_batch_2.gz", "1c57921a67f360cbfa94547fa757f89035cfe038df2312d32e8957fcb4456636", 28_314_239),
        DataFile("test_batch.gz", "1d20d9492ad72817746bd6f07c34055c55481b9d584c91d5cf943e87d61fac37", 28_302_643),
    ),
    description="CIFAR-10 python batches, gzipped (rebuilt copies: filenames field differs from the originals)",
)  # fmt: skip
"""The gzipped CIFAR-10 batches of ``shared/data/cifar-10`` (pixels and labels identical to the
originals, the pickles not byte-identical). The official uncompressed batches of
``cifar-10-python.tar.gz`` are accepted too and checked against their official MD5s."""

CIFAR10_OFFICIAL_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# ---------------------------------------------------------------------------------------------- IDX
_IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path, *, magic: int | None = None) -> np.ndarray:
    """Read an IDX file (the MNIST format), plain or gzipped.

    Args:
        path: the file.
        magic: the expected magic number (2051 for images, 2049 for labels), checked if given.

    Raises:
        DataError: the file is unreadable, has another magic number, or holds fewer or more
            bytes than its header announces (truncated or corrupt); the message names the file.
    """
    data = read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DataError(
            f"{path} is not an IDX file (it starts with {data[:4].hex() or 'nothing'}); the file is corrupt "
            "or not the original."
        )
    found = int.from_bytes(data[:4], "big")
    if magic is not None and found != magic:
        raise DataError(
            f"{path} has IDX magic number {found}, expected {magic} "
            f"({'images' if magic == 2051 else 'labels' if magic == 2049 else 'another IDX file'}); "
            "is it the right file?"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} ends inside its IDX header ({len(data)} bytes): the file is truncated.")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(
            f"{path}: its header announces {'x'.join(map(str, dims))} values ({expected:,} bytes) but the file "
            f"holds {len(data) - header:,} bytes of data: the file is truncated or corrupt. Replace it."
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _read_idx_pair(files: dict[str, Path], prefix: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(files[f"{prefix}-images-idx3-ubyte.gz"], magic=2051)
    labels_path = files[f"{prefix}-labels-idx1-ubyte.gz"]
    labels = read_idx(labels_path, magic=2049)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{labels_path}: {labels.shape[0]:,} labels for {images.shape[0]:,} images (shape {images.shape}); "
            "the image and label files do not belong together."
        )
    if labels.size and int(labels.max()) >= classes:
        raise DataError(f"{labels_path} holds label {int(labels.max())}, outside 0..{classes - 1}.")
    return images, labels.astype(np.int64)


# ---------------------------------------------------------------------------------------------- splits
def _split_train(
    n: int, n_val: int, n_train: int | None, seed: int, who: str
) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, val rows): ``n_val`` rows carved from a seeded permutation, then ``n_train`` of the rest."""
    if not 0 <= n_val < n:
        raise DataError(f"{who}: n_val must be in [0, {n}); got {n_val!r}.")
    if n_train is not None and n_train < 1:
        raise DataError(f"{who}: n_train must be >= 1 or None (all rows); got {n_train!r}.")
    perm = np.random.default_rng(seed).permutation(n)
    val, rest = perm[:n_val], perm[n_val:]
    if n_train is not None:
        rest = rest[:n_train]
    return np.sort(rest), np.sort(val)


def _subsample(n: int, k: int | None, seed: int, who: str) -> np.ndarray:
    if k is None or k >= n:
        return np.arange(n)
    if k < 1:
        raise DataError(f"{who}: n_test must be >= 1 or None (all rows); got {k!r}.")
    return np.sort(np.random.default_rng([seed, 1]).permutation(n)[:k])


# ---------------------------------------------------------------------------------------------- MNIST + Fashion
def _images(x: np.ndarray, rows: np.ndarray) -> Tensor:
    """uint8 (N, H, W) rows -> float32 (n, 1, H, W) in [0, 1]."""
    return torch.from_numpy(x[rows]).unsqueeze(1).float().div_(255.0)


@DATASETS.register("mnist_fashion")
def mnist_fashion(
    *,
    path: str | None = None,
    download: bool = False,
    verify: bool = True,
    mode: Literal["separate", "mixed"] = "separate",
    n_train: int | None = None,
    n_val: int = 5000,
    n_test: int | None = None,
    label_smoothing: float = 0.0,
    split_seed: int = 0,
) -> DataSplits:
    """MNIST + Fashion-MNIST: two 10-class tasks with separate datasets on one shared network (seed 000).

    Args:
        path: a folder holding ``mnist/`` and ``fashion-mnist/`` (default: ``$MTLKIT_DATA``).
        download: fetch absent files from their public mirrors (never done otherwise).
        verify: check the files' SHA-256 checksums.
        mode: ``"separate"``: ``train``/``val``/``test`` are ``{"mnist": dataset, "fashion":
            dataset}``, each dataset holding one task's samples and labels; ``"mixed"``: one
            dataset of both, each sample labelled for its own task only (-1 = missing for the other).
        n_train: training images per task (a seeded subset; None = all that remain after ``n_val``).
        n_val: validation images per task, carved from the official training set.
        n_test: test images per task (a seeded subset of the official test set; None = all 10,000).
        label_smoothing: the tasks' cross-entropy label smoothing (seed 000 uses 0.01).
        split_seed: seeds the validation carve-out and the subsets.

    Returns:
        DataSplits with images of shape ``(1, 28, 28)`` scaled to [0, 1].
    """
    started = time.perf_counter()
    if mode not in ("separate", "mixed"):
        raise DataError(f"mnist_fashion: mode must be 'separate' or 'mixed'; got {mode!r}.")
    root = resolve_root(path)  # the parent of mnist/ and fashion-mnist/
    parts: dict[str, dict[str, tuple[Tensor, Tensor]]] = {"train": {}, "val": {}, "test": {}}
    for task, fileset in (("mnist", MNIST_FILES), ("fashion", FASHION_MNIST_FILES)):
        files = locate(fileset, root / fileset.folder, download=download, verify=verify)
        x_train, y_train = _read_idx_pair(files, "train", 10)
        x_test, y_test = _read_idx_pair(files, "t10k", 10)
        train_rows, val_rows = _split_train(len(y_train), n_val, n_train, split_seed, "mnist_fashion")
        test_rows = _subsample(len(y_test), n_test, split_seed, "mnist_fashion")
        parts["train"][task] = (_images(x_train, train_rows), torch.from_numpy(y_train[train_rows]))
        parts["val"][task] = (_images(x_train, val_rows), torch.from_numpy(y_train[val_rows]))
        parts["test"][task] = (_images(x_test, test_rows), torch.from_numpy(y_test[test_rows]))
    tasks = tuple(
        Task(name=t, kind="multiclass", num_classes=10, label_smoothing=label_smoothing)
        for t in ("mnist", "fashion")
    )

    def separate(split: str) -> dict[str, MultiTaskDataset] | None:
        if not len(parts[split]["mnist"][1]):
            return None
        return {
            t.name: MultiTaskDataset(parts[split][t.name][0], {t.name: parts[split][t.name][1]}, tasks=(t,))
            for t in tasks
        }

    def mixed(split: str) -> MultiTaskDataset | None:
        (xm, ym), (xf, yf) = parts[split]["mnist"], parts[split]["fashion"]
        if not len(ym):
            return None
        targets = {
            "mnist": torch.cat([ym, torch.full_like(yf, -1)]),
            "fashion": torch.cat([torch.full_like(ym, -1), yf]),
        }
        return MultiTaskDataset(torch.cat([xm, xf]), targets, tasks=tasks)

    make = separate if mode == "separate" else mixed
    train, val, test = make("train"), make("val"), make("test")
    assert train is not None
    info = {
        "dataset": "mnist+fashion-mnist",
        "mode": mode,
        "rows": {s: {t: len(parts[s][t][1]) for t in ("mnist", "fashion")} for s in parts},
        "pixels": "float32 in [0, 1]",
        "load_seconds": round(time.perf_counter() - started, 3),
    }
    return DataSplits(train=train, val=val, test=test, tasks=tasks, input_spec=(1, 28, 28), info=info)


# ---------------------------------------------------------------------------------------------- CIFAR-10
class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches only: numpy array reconstruction (and bytes decoding) are the only
    globals allowed, so a malicious file cannot run code."""

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # how Python 3 writes bytes in protocol 2 pickles
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch (plain or gzipped): uint8 images ``(N, 3, 32, 32)`` and int64 labels.

    Raises:
        DataError: the file is unreadable, truncated, or not a CIFAR-10 batch; the message names it.
    """
    raw = read_bytes(path)
    try:
        batch = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
        raise DataError(
            f"{path} is not a readable CIFAR-10 batch ({type(exc).__name__}: {exc}); the file is truncated, "
            "corrupt or not a CIFAR-10 batch. Replace it."
        ) from None
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(b"labels") if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = (
            f"shape {data.shape}, dtype {data.dtype}" if isinstance(data, np.ndarray) else type(data).__name__
        )
        raise DataError(f"{path}: b'data' must be a uint8 array of shape (N, 3072); got {got}.")
    y = np.asarray(labels, dtype=np.int64) if isinstance(labels, list) else None
    if y is None or y.shape != (data.shape[0],) or (y.size and (y.min() < 0 or y.max() > 9)):
        raise DataError(f"{path}: b'labels' must be {data.shape[0]} class ids in 0..9.")
    return data.reshape(-1, 3, 32, 32), y


def _cifar_path(root: Path, name: str) -> Path | None:
    """The batch ``name`` (e.g. ``data_batch_1``) gzipped or plain, in ``root`` or its official subfolder."""
    for folder in (root, root / "cifar-10-batches-py"):
        for p in (folder / f"{name}.gz", folder / name):
            if p.is_file():
                return p
    return None


def _verify_cifar(path: Path, name: str) -> None:
    """The listed gzipped copies by SHA-256, the official uncompressed batches by their MD5."""
    if path.suffix == ".gz":
        if path.name not in {f.name for f in CIFAR10_FILES.files}:
            raise DataError(
                f"{path}: no checksum is known for this file, so it cannot be verified; pass verify=False "
                f"(data.verify=false) to use it, or use the official uncompressed {name}."
            )
        locate(CIFAR10_FILES, path.parent, names=[path.name], verify=True)
        return
    digest = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
    if digest != CIFAR10_OFFICIAL_MD5[name]:
        raise DataError(
            f"{path} has MD5 {digest}, expected the official {CIFAR10_OFFICIAL_MD5[name]}: the file is "
            "corrupt, truncated or a different version. Replace it, or pass verify=False."
        )


@DATASETS.register("cifar10", aliases=("cifar",))
def cifar10(
    *,
    path: str | None = None,
    download: bool = False,
    verify: bool = True,
    heads: Sequence[str] = ("cat", "dog"),
    batches: Sequence[int] = (1, 2),
    n_train: int | None = None,
    n_val: int = 2000,
    n_test: int | None = None,
    augment: bool = True,
    padding: int = 4,
    split_seed: int = 0,
) -> DataSplits:
    """CIFAR-10 with one binary head per named class (default: seed 003's is_cat and is_dog).

    Args:
        path: the CIFAR-10 folder or its parent (default: ``$MTLKIT_DATA``); either this project's
            gzipped batches or the official ``cifar-10-batches-py`` folder.
        download: not possible (CIFAR-10 is one 163 MB tarball); the error says how to get it.
        verify: check the files' checksums.
        heads: class names, one binary task ``is_<name>`` each.
        batches: the training batches to read (1..5; ``shared/data`` holds 1 and 2).
        n_train: training images (a seeded subset; None = all that remain after ``n_val``).
        n_val: validation images carved from the training batches.
        n_test: test images (a seeded subset; None = all 10,000).
        augment: random horizontal flips and random crops with ``padding`` in training.
        padding: crop padding in pixels (filled with black, as torchvision pads before normalising).
        split_seed: seeds the validation carve-out and the subsets.

    Returns:
        DataSplits with normalised float32 images ``(3, 32, 32)`` (per-channel mean and std of the
        training images) and binary targets.
    """
    started = time.perf_counter()
    unknown = [h for h in heads if h not in CIFAR10_CLASSES]
    if unknown or not heads or len(set(heads)) != len(heads):
        hint = did_you_mean(unknown[0], CIFAR10_CLASSES) if unknown else ""
        raise DataError(
            f"cifar10: heads must be distinct CIFAR-10 class names; got {list(heads)}.{hint} "
            f"Classes: {', '.join(CIFAR10_CLASSES)}."
        )
    bad = [b for b in batches if b not in (1, 2, 3, 4, 5)]
    if bad or not batches or len(set(batches)) != len(batches):
        raise DataError(f"cifar10: batches must be distinct numbers in 1..5; got {list(batches)}.")
    if padding < 0:
        raise DataError(f"cifar10: padding must be >= 0; got {padding!r}.")
    root = resolve_root(path, CIFAR10_FILES)
    names = [*(f"data_batch_{b}" for b in batches), "test_batch"]
    found = {n: _cifar_path(root, n) for n in names}
    missing = [n for n, p in found.items() if p is None]
    if missing:
        why = "mtlkit cannot download it (download=True has no effect): " if download else ""
        raise DataError(
            f"cifar10: missing {', '.join(missing)} (as <name>.gz or the official uncompressed <name>) in {root}. "
            f"CIFAR-10 comes as one tarball: {why}download {CIFAR10_URL}, extract it and set the data path "
            f"(or {DATA_ENV}) to the extracted cifar-10-batches-py folder or its parent."
        )
    if verify:
        for n, p in found.items():
            _verify_cifar(p, n)  # type: ignore[arg-type]
    train_parts = [read_cifar_batch(found[f"data_batch_{b}"]) for b in batches]  # type: ignore[arg-type]
    x_all = np.concatenate([p[0] for p in train_parts])
    y_all = np.concatenate([p[1] for p in train_parts])
    x_test, y_test = read_cifar_batch(found["test_batch"])  # type: ignore[arg-type]
    train_rows, val_rows = _split_train(len(y_all), n_val, n_train, split_seed, "cifar10")
    test_rows = _subsample(len(y_test), n_test, split_seed, "cifar10")

    x_train = x_all[train_rows]
    mean, std = np.zeros(3), np.zeros(3)
    for c in range(3):  # one channel at a time in float64: exact and bounded memory
        channel = x_train[:, c].astype(np.float64)
        mean[c], std[c] = channel.mean() / 255.0, channel.std() / 255.0
    std = np.where(std > 0, std, 1.0)  # a constant channel is only centred
    scale = torch.tensor(1.0 / (255.0 * std), dtype=torch.float32).view(1, 3, 1, 1)
    shift = torch.tensor(mean / std, dtype=torch.float32).view(1, 3, 1, 1)

    def images(x: np.ndarray) -> Tensor:
        return torch.from_numpy(x).float().mul_(scale).sub_(shift)

    tasks = tuple(Task(name=f"is_{h}", kind="binary") for h in heads)
    classes = [CIFAR10_CLASSES.index(h) for h in heads]

    def dataset(x: np.ndarray, y: np.ndarray, *, train: bool) -> MultiTaskDataset:
        targets = {t.name: torch.from_numpy((y == c).astype(np.float32)) for t, c in zip(tasks, classes)}
        aug = RandomFlipCrop(padding=padding, fill=(-mean / std).tolist()) if (train and augment) else None
        return MultiTaskDataset(images(x), targets, tasks=tasks, augment=aug)

    train = dataset(x_train, y_all[train_rows], train=True)
    val = dataset(x_all[val_rows], y_all[val_rows], train=False) if len(val_rows) else None
    test = dataset(x_test[test_rows], y_test[test_rows], train=False)
    info = {
        "dataset": "cifar-10",
        "heads": {t.name: CIFAR10_CLASSES[c] for t, c in zip(tasks, classes)},
        "batches": list(batches),
        "rows": {"train": len(train), "val": len(val) if val is not None else 0, "test": len(test)},
        "positive_rate": {t.name: float(train.targets[t.name].mean()) for t in tasks},
        "normalisation": {"mean": mean.round(6).tolist(), "std": std.round(6).tolist()},
        "augment": {"flip": True, "crop_padding": padding} if augment else None,
        "load_seconds": round(time.perf_counter() - started, 3),
    }
    return DataSplits(train=train, val=val, test=test, tasks=tasks, input_spec=(3, 32, 32), info=info)


# ---------------------------------------------------------------------------------------------- augmentation
class RandomFlipCrop:
    """Random horizontal flips and random crops with padding, for a whole ``(N, C, H, W)`` batch at once.

    Each sample is padded by ``padding`` pixels on every side (with ``fill``, one value per
    channel or one for all), cropped back to ``H x W`` at a random offset in ``[0, 2*padding]``,
    then flipped left-right with probability 1/2: torchvision's ``RandomCrop(padding=p)`` followed
    by ``RandomHorizontalFlip()``, done as one gather with no per-sample Python. All randomness
    comes from ``generator`` (the loader seeds one per epoch), so epochs are reproducible.

    Args:
        padding: pixels of padding per side (0 = flips only).
        flip: flip samples with probability 1/2.
        fill: padding value(s); for normalised images use the normalised black ``-mean/std``.
    """

    def __init__(self, *, padding: int = 4, flip: bool = True, fill: float | Sequence[float] = 0.0) -> None:
        if not isinstance(padding, int) or padding < 0:
            raise ValueError(f"RandomFlipCrop padding must be an int >= 0; got {padding!r}.")
        self.padding, self.flip = padding, flip
        self.fill = torch.as_tensor(fill, dtype=torch.float32).reshape(-1)

    def draw(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """The random choices for ``n`` samples: ``(flips (n,) bool, dy (n,), dx (n,))``."""
        flips = torch.rand(n, generator=generator) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
        dy = torch.randint(0, 2 * self.padding + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * self.padding + 1, (n,), generator=generator)
        return flips, dy, dx

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        if not isinstance(images, Tensor) or images.ndim != 4:
            got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ShapeError(f"RandomFlipCrop expects a batch of images (N, C, H, W); got {got}.")
        n, c, h, w = images.shape
        if self.fill.numel() not in (1, c):
            raise ShapeError(f"RandomFlipCrop fill has {self.fill.numel()} values for {c} channels.")
        flips, dy, dx = (t.to(images.device) for t in self.draw(n, generator))
        p = self.padding
        padded = self.fill.to(images).reshape(1, -1, 1, 1).expand(n, c, h + 2 * p, w + 2 * p).clone()
        padded[:, :, p : p + h, p : p + w] = images
        ar_h = torch.arange(h, device=images.device)
        ar_w = torch.arange(w, device=images.device)
        rows = dy[:, None] + ar_h  # (n, h)
        cols = dx[:, None] + torch.where(flips[:, None], (w - 1) - ar_w, ar_w)  # (n, w)
        flat = padded.reshape(n, c, -1)
        index = (rows[:, :, None] * (w + 2 * p) + cols[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
        return flat.gather(2, index).reshape(n, c, h, w)

    def __repr__(self) -> str:
        return f"RandomFlipCrop(padding={self.padding}, flip={self.flip}, fill={self.fill.tolist()})"
