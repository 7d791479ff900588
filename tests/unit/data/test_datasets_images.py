"""MNIST + Fashion-MNIST, CIFAR-10 and the batch augmentation: real files (when present) and fake copies."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from _datasets import cifar_batch_bytes, idx_bytes, shared_data, write_fake_cifar, write_fake_mnist
from mtlkit.data import MultiTaskDataset, TensorBatchLoader, images
from mtlkit.data.images import RandomFlipCrop, cifar10, mnist_fashion, read_cifar_batch, read_idx
from mtlkit.data.sources import DataFile, FileSet
from mtlkit.errors import DataError, ShapeError


# ---------------------------------------------------------------------------------------------- IDX
def test_read_idx_round_trip_and_errors(tmp_path: Path) -> None:
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(x)))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz", magic=2051), x)
    with pytest.raises(DataError, match=r"a.gz has IDX magic number 2051, expected 2049 \(labels\)"):
        read_idx(tmp_path / "a.gz", magic=2049)
    (tmp_path / "short").write_bytes(idx_bytes(x)[:-5])
    with pytest.raises(
        DataError, match=r"short: its header announces 2x3x4 values \(24 bytes\) but the file holds 19"
    ):
        read_idx(tmp_path / "short")
    (tmp_path / "cut.gz").write_bytes(gzip.compress(idx_bytes(x) * 50)[:40])
    with pytest.raises(DataError, match=r"cut.gz could not be read .* corrupt or truncated"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "text").write_bytes(b"hello world")
    with pytest.raises(DataError, match=r"text is not an IDX file"):
        read_idx(tmp_path / "text")


# ---------------------------------------------------------------------------------------------- MNIST + Fashion
@pytest.fixture(scope="module")
def real_mnist() -> dict:
    root = shared_data("mnist", "fashion-mnist")
    return {"root": root, "splits": mnist_fashion(path=str(root))}


def test_real_mnist_fashion_counts_match_the_readmes(real_mnist: dict) -> None:
    s = real_mnist["splits"]
    assert set(s.train) == {"mnist", "fashion"} and s.input_spec == (1, 28, 28)
    mnist_train = [5_923, 6_742, 5_958, 6_131, 5_842, 5_421, 5_918, 6_265, 5_851, 5_949]
    mnist_test = [980, 1_135, 1_032, 1_010, 982, 892, 958, 1_028, 974, 1_009]
    for task, train_counts, test_counts in (
        ("mnist", mnist_train, mnist_test),
        ("fashion", [6_000] * 10, [1_000] * 10),
    ):
        tr, va, te = s.train[task], s.val[task], s.test[task]
        assert (len(tr), len(va), len(te)) == (55_000, 5_000, 10_000)
        assert list(tr.targets) == [task]  # each dataset holds its own task's labels only
        both = torch.cat([tr.targets[task], va.targets[task]])
        assert torch.bincount(both, minlength=10).tolist() == train_counts
        assert torch.bincount(te.targets[task], minlength=10).tolist() == test_counts
        assert (
            tr.inputs.dtype == torch.float32
            and float(tr.inputs.min()) >= 0.0
            and float(tr.inputs.max()) == 1.0
        )


def test_real_corrupt_copy_is_named(real_mnist: dict, tmp_path: Path) -> None:
    for folder in ("mnist", "fashion-mnist"):
        shutil.copytree(real_mnist["root"] / folder, tmp_path / folder)
    labels = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    data = gzip.decompress(labels.read_bytes())
    labels.write_bytes(gzip.compress(data[:-100]))
    with pytest.raises(
        DataError,
        match=r"mnist/t10k-labels-idx1-ubyte.gz has 4,491 bytes, expected 4,542: the file is truncated",
    ):
        mnist_fashion(path=str(tmp_path))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: its header announces 10000 values"):
        mnist_fashion(path=str(tmp_path), verify=False)


def test_fake_copy_separate_and_mixed_modes(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path, n_train=50, n_test=20)
    sep = mnist_fashion(path=str(tmp_path), verify=False, n_val=10, n_train=30, label_smoothing=0.01)
    assert {t: len(d) for t, d in sep.train.items()} == {"mnist": 30, "fashion": 30}
    assert {t: len(d) for t, d in sep.val.items()} == {"mnist": 10, "fashion": 10}
    assert all(t.label_smoothing == 0.01 and t.num_classes == 10 for t in sep.tasks)
    mixed = mnist_fashion(path=str(tmp_path), verify=False, n_val=10, n_train=30, mode="mixed")
    assert len(mixed.train) == 60 and mixed.info["mode"] == "mixed"
    ym, yf = mixed.train.targets["mnist"], mixed.train.targets["fashion"]
    # each image is labelled for its own task only: the seed's per-sample task flag
    assert torch.equal(ym[:30], sep.train["mnist"].targets["mnist"]) and bool((ym[30:] == -1).all())
    assert torch.equal(yf[30:], sep.train["fashion"].targets["fashion"]) and bool((yf[:30] == -1).all())
    assert torch.equal(mixed.train.inputs[:30], sep.train["mnist"].inputs)
    # the same seed carves the same validation images; another seed others
    other = mnist_fashion(path=str(tmp_path), verify=False, n_val=10, split_seed=1)
    assert not torch.equal(other.val["mnist"].inputs, sep.val["mnist"].inputs)
    with pytest.raises(DataError, match="n_val must be in"):
        mnist_fashion(path=str(tmp_path), verify=False, n_val=50)


def test_download_puts_each_dataset_in_its_own_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MNIST and Fashion-MNIST files have the same names: each must land in its own folder
    server = write_fake_mnist(tmp_path / "server", n_train=20, n_test=10)
    for attr, folder in (("MNIST_FILES", "mnist"), ("FASHION_MNIST_FILES", "fashion-mnist")):
        files = tuple(
            DataFile(p.name, hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size, url=p.as_uri())
            for p in sorted((server / folder).iterdir())
        )
        monkeypatch.setattr(images, attr, FileSet(folder, files))  # local "server": no network in tests
    root = tmp_path / "data"
    s = mnist_fashion(path=str(root), download=True, n_val=5)
    assert sorted(p.name for p in root.iterdir()) == ["fashion-mnist", "mnist"]
    for task, folder in (("mnist", "mnist"), ("fashion", "fashion-mnist")):
        x = read_idx(root / folder / "train-images-idx3-ubyte.gz")
        got = torch.cat([s.train[task].inputs, s.val[task].inputs]).sum().item()
        assert got == pytest.approx(x.sum() / 255, rel=1e-5)


def test_missing_mnist_files_are_listed_with_the_download_hint(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"mnist: missing file\(s\) train-images-idx3-ubyte.gz .* download=True"
    ):
        mnist_fashion(path=str(tmp_path))


# ---------------------------------------------------------------------------------------------- CIFAR-10
@pytest.fixture(scope="module")
def real_cifar() -> dict:
    root = shared_data("cifar-10")
    return {"root": root, "splits": cifar10(path=str(root))}


def test_real_cifar_batches_match_the_readme(real_cifar: dict) -> None:
    folder = real_cifar["root"] / "cifar-10"
    x1, y1 = read_cifar_batch(folder / "data_batch_1.gz")
    xt, yt = read_cifar_batch(folder / "test_batch.gz")
    assert x1.shape == (10_000, 3, 32, 32) and x1.dtype == np.uint8
    assert np.bincount(y1, minlength=10).tolist() == [1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981]
    assert y1[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3] and yt[:10].tolist() == [
        3,
        8,
        8,
        0,
        6,
        6,
        1,
        6,
        3,
        1,
    ]
    assert np.bincount(yt, minlength=10).tolist() == [1000] * 10
    # published SHA-256 of test image 0's raw RGB bytes (row-major, interleaved channels)
    rgb = np.ascontiguousarray(xt[0].transpose(1, 2, 0)).tobytes()
    assert (
        hashlib.sha256(rgb).hexdigest() == "af12e1241a1e7a0c9ba326825279bef5fe961ceb5f95212a99f9b1f22711f913"
    )


def test_real_cifar_splits_heads_and_normalisation(real_cifar: dict) -> None:
    s = real_cifar["splits"]
    assert (len(s.train), len(s.val), len(s.test)) == (18_000, 2_000, 10_000)
    assert [t.name for t in s.tasks] == ["is_cat", "is_dog"] and s.input_spec == (3, 32, 32)
    # cats + dogs of batches 1 and 2: 1016 + 995 and 937 + 988 (README), split between train and val
    cats = s.train.targets["is_cat"].sum() + s.val.targets["is_cat"].sum()
    dogs = s.train.targets["is_dog"].sum() + s.val.targets["is_dog"].sum()
    assert (int(cats), int(dogs)) == (1016 + 995, 937 + 988)
    assert int(s.test.targets["is_cat"].sum()) == 1000 and int(s.test.targets["is_dog"].sum()) == 1000
    std, mean = torch.std_mean(s.train.inputs.transpose(0, 1).reshape(3, -1), dim=1)
    torch.testing.assert_close(mean, torch.zeros(3), atol=1e-3, rtol=0)
    torch.testing.assert_close(std, torch.ones(3), atol=1e-3, rtol=0)
    assert isinstance(s.train.augment, RandomFlipCrop) and s.val.augment is None and s.test.augment is None


def test_cifar_truncated_corrupt_and_unsafe_files_are_named(tmp_path: Path) -> None:
    folder = write_fake_cifar(tmp_path / "cifar-10", n=20)
    with pytest.raises(
        DataError, match=r"data_batch_1.gz has [\d,]+ bytes, expected 28,276,756: .*truncated"
    ):
        cifar10(path=str(tmp_path))
    data = (folder / "test_batch.gz").read_bytes()
    (folder / "test_batch.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"test_batch.gz could not be read .* corrupt or truncated"):
        cifar10(path=str(tmp_path), verify=False)
    raw = gzip.decompress(data)
    (folder / "test_batch.gz").write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(DataError, match=r"test_batch.gz is not a readable CIFAR-10 batch .* truncated"):
        cifar10(path=str(tmp_path), verify=False)

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("pwned",))

    (folder / "test_batch.gz").write_bytes(gzip.compress(pickle.dumps({b"data": Evil()}, protocol=2)))
    with pytest.raises(DataError, match=r"global __builtin__.print is not allowed in a CIFAR batch"):
        cifar10(path=str(tmp_path), verify=False)
    x = np.zeros((3, 3, 32, 32), dtype=np.uint8)
    (folder / "test_batch.gz").write_bytes(gzip.compress(cifar_batch_bytes(x, np.array([0, 1, 12]))))
    with pytest.raises(DataError, match=r"b'labels' must be 3 class ids in 0..9"):
        cifar10(path=str(tmp_path), verify=False)


def test_cifar_official_layout_missing_files_and_bad_options(tmp_path: Path) -> None:
    official = tmp_path / "cifar-10-batches-py"
    official.mkdir()
    x = np.zeros((4, 3, 32, 32), dtype=np.uint8)
    for name in ("data_batch_1", "data_batch_2", "test_batch"):
        (official / name).write_bytes(cifar_batch_bytes(x, np.array([3, 5, 3, 1])))
    with pytest.raises(DataError, match=r"data_batch_1 has MD5 .*, expected the official c99cafc152244af7"):
        cifar10(path=str(tmp_path))
    s = cifar10(path=str(tmp_path), verify=False, n_val=1)  # the official uncompressed files are read
    assert len(s.train) == 7 and len(s.test) == 4
    with pytest.raises(DataError, match=r"missing data_batch_3 .* download .*cifar-10-python.tar.gz"):
        cifar10(path=str(tmp_path), batches=[3])
    with pytest.raises(DataError, match=r"mtlkit cannot download it"):
        cifar10(path=str(tmp_path / "nothing"), download=True)
    with pytest.raises(DataError, match=r"heads must be distinct CIFAR-10 class names.*Did you mean 'cat'"):
        cifar10(path=str(tmp_path), heads=["cta"])


def test_fake_cifar_heads_and_training_only_augmentation(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path / "cifar-10", n=60)
    s = cifar10(path=str(tmp_path), verify=False, heads=["cat", "dog", "ship"], n_val=20, n_train=80)
    assert [t.name for t in s.tasks] == ["is_cat", "is_dog", "is_ship"] and len(s.train) == 80
    plain = cifar10(path=str(tmp_path), verify=False, n_val=20, augment=False)
    assert plain.train.augment is None and plain.info["augment"] is None


# ---------------------------------------------------------------------------------------------- augmentation
def _reference(images: torch.Tensor, flips: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, p: int, fill):  # type: ignore[no-untyped-def]
    """Per-sample loop: pad, crop, then flip (torchvision's RandomCrop + RandomHorizontalFlip)."""
    n, c, h, w = images.shape
    out = torch.empty_like(images)
    for i in range(n):
        padded = torch.empty(c, h + 2 * p, w + 2 * p)
        padded[:] = torch.as_tensor(fill, dtype=torch.float32).reshape(-1, 1, 1)
        padded[:, p : p + h, p : p + w] = images[i]
        crop = padded[:, int(dy[i]) : int(dy[i]) + h, int(dx[i]) : int(dx[i]) + w]
        out[i] = crop.flip(-1) if bool(flips[i]) else crop
    return out


@pytest.mark.parametrize("padding", [0, 1, 4])
def test_flip_crop_matches_a_per_sample_loop(padding: int) -> None:
    images = torch.randn(16, 3, 7, 9)
    fill = [-1.0, 0.5, 2.0]
    aug = RandomFlipCrop(padding=padding, fill=fill)
    out = aug(images, torch.Generator().manual_seed(3))
    flips, dy, dx = aug.draw(16, torch.Generator().manual_seed(3))  # the same draws
    assert 0 < int(flips.sum()) < 16
    torch.testing.assert_close(out, _reference(images, flips, dy, dx, padding, fill), rtol=0, atol=0)
    if padding == 0:  # flips only: exactly the chosen samples are mirrored, the others untouched
        assert torch.equal(out[flips], images[flips].flip(-1)) and torch.equal(out[~flips], images[~flips])
    again = aug(images, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)
    with pytest.raises(ShapeError, match=r"expects a batch of images \(N, C, H, W\); got \(3, 7, 9\)"):
        aug(images[0], torch.Generator())


def test_loader_augments_training_batches_reproducibly_and_never_evaluation() -> None:
    images = torch.randn(40, 1, 5, 5)
    y = torch.arange(40, dtype=torch.float32)
    ds = MultiTaskDataset(images, {"t": y}, augment=RandomFlipCrop(padding=2))

    def epoch(loader: TensorBatchLoader, e: int) -> tuple[torch.Tensor, torch.Tensor]:
        loader.set_epoch(e)
        batches = list(loader)
        return torch.cat([b.inputs for b in batches]), torch.cat([b.targets["t"] for b in batches])

    train = TensorBatchLoader(ds, 16, shuffle=True, seed=7)
    x0, t0 = epoch(train, 0)
    x0b, t0b = epoch(TensorBatchLoader(ds, 16, shuffle=True, seed=7), 0)
    assert torch.equal(x0, x0b) and torch.equal(t0, t0b)  # the same (seed, epoch): the same batches
    x1, _ = epoch(train, 1)
    assert not torch.equal(x0, images[t0.long()])  # augmented
    assert not torch.equal(x0, x1)
    evaluation = TensorBatchLoader(ds, 16, shuffle=False)
    xe, te = epoch(evaluation, 0)
    assert torch.equal(xe, images) and torch.equal(te, y)  # evaluation: untouched
    forced = TensorBatchLoader(ds, 16, shuffle=False, augment=True)
    assert not torch.equal(epoch(forced, 0)[0], images)
    assert ds[3].inputs.equal(images[3]) and ds.subset([1, 2]).augment is ds.augment
    with pytest.raises(TypeError, match="augment must be callable"):
        MultiTaskDataset(images, {"t": y}, augment="flip")  # type: ignore[arg-type]
