"""Datasets beyond MNIST, and datasets as plug-ins (issue 17).

* CIFAR-100, SVHN and KMNIST: tiny files are generated in each real on-disk format (CIFAR-100's python pickles,
  SVHN's ``{train,test}_32x32.mat`` MATLAB files via ``scipy.io.savemat``, KMNIST's gzipped IDX files as
  distributed) and loaded through the registry; the arrays are compared with what torchvision's own dataset
  classes read from the same files (and with what was written), so a transposed channel or a dropped label
  would fail.
* A dataset plug-in: the worked example of docs/adding_a_dataset.md (extracted from the doc, so the walkthrough
  cannot drift) registers from a ``--methods-dir`` file and runs its smoke suite end to end; an installed
  package's ``tgbench.datasets`` entry point registers too; a loader whose output breaks the contract, and a
  plugin file that declares nothing usable, are exit 2 with one line naming the dataset or the file.
"""
from __future__ import annotations

import gzip
import os
import pickle
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from helpers import cli
from tgbench import data
from tgbench.data import Dataset, load_dataset
from tgbench.errors import BadInput, DataNotFound
from tgbench.registry import PLUGIN_DECLARATIONS, datasets, load_plugin_dir, methods, proxies
from tgbench.store import Store

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "adding_a_dataset.md"


@pytest.fixture(autouse=True)
def isolated_data(tmp_path, monkeypatch):
    """No test may see the real ~/.cache/tgbench or a TGBENCH_DATA from the environment."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TGBENCH_DATA", raising=False)


@pytest.fixture
def clean_registries():
    """Plugins registered in-process must not leak into other tests (``tgbench list`` counts names)."""
    before = {registry: set(registry.names()) for registry in PLUGIN_DECLARATIONS.values()}
    yield
    for registry, names in before.items():
        for name in set(registry.names()) - names:
            registry.unregister(name)


def pixels(ds: Dataset, x: torch.Tensor) -> np.ndarray:
    """Normalised images back to integer pixel values 0..255."""
    return np.rint(ds.denormalise(x).numpy() * 255).astype(np.uint8)


def train_val_pixels(ds: Dataset) -> list[tuple[bytes, int]]:
    """Every (image bytes, label) of train + val, to compare with the official training set as a multiset."""
    return sorted((img.tobytes(), lbl) for split in (ds.train, ds.val)
                  for img, lbl in zip(pixels(ds, split.x), split.y.tolist()))


def check_normalisation(ds: Dataset, x_test: np.ndarray, mean, std) -> None:
    """The test split is the official test set in order, normalised per channel with the dataset's constants."""
    assert (ds.mean, ds.std) == (mean, std)
    for c, (m, s) in enumerate(zip(mean, std)):
        np.testing.assert_allclose(ds.test.x[:, c].numpy(), (x_test[:, c] / 255 - m) / s, atol=1e-5)


# ------------------------------------------------------------------------------------------ CIFAR-100


def make_cifar100(root: Path, n_train: int = 30, n_test: int = 12, seed: int = 0) -> dict:
    """``root/cifar-100-python/{train,test,meta}`` as the official archive holds them (python pickles of dicts
    with data (N, 3072) rows R plane | G plane | B plane, fine_labels 0..99, coarse_labels 0..19, filenames);
    returns {file: (images (N, 3, 32, 32) uint8, fine labels)}."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    written = {}
    for file, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 3, 32, 32)).astype(np.uint8)
        fine = rng.integers(0, 100, n)
        fine[:2] = (0, 99)  # both ends of the label range
        entry = {"filenames": [f"img_{i}.png" for i in range(n)], "batch_label": f"{file} batch 1 of 1",
                 "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist(),
                 "data": images.reshape(n, 3072)}
        (base / file).write_bytes(pickle.dumps(entry))
        written[file] = (images, fine.tolist())
    meta = {"fine_label_names": [f"class{i}" for i in range(100)],
            "coarse_label_names": [f"group{i}" for i in range(20)]}
    (base / "meta").write_bytes(pickle.dumps(meta))
    return written


def torchvision_cifar100(root: Path, train: bool):
    """torchvision's own CIFAR100 reader on the same files (md5 pins off: the files are generated; they are
    ours, so its plain-pickle reading is safe here)."""
    from torchvision.datasets import CIFAR100

    class Unpinned(CIFAR100):
        train_list = [["train", None]]
        test_list = [["test", None]]
        meta = {**CIFAR100.meta, "md5": None}

    return Unpinned(str(root), train=train)


def test_cifar100_reads_generated_pickles_like_torchvision(tmp_path):
    written = make_cifar100(tmp_path)
    ds = load_dataset("cifar100", data_root=str(tmp_path), seed=0)
    assert (ds.name, ds.resolved, ds.num_classes, ds.image_shape) == ("cifar100", "cifar100", 100, (3, 32, 32))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (27, 3, 12)  # val = 30 // 10
    assert ds.origin == str(tmp_path / "cifar-100-python")

    x_test, y_test = written["test"]
    np.testing.assert_array_equal(pixels(ds, ds.test.x), x_test)  # R, G, B planes kept as CHW
    assert ds.test.y.tolist() == y_test  # the 100 fine labels, not the 20 coarse ones
    check_normalisation(ds, x_test, data.CIFAR100_MEAN, data.CIFAR100_STD)

    # the reference: torchvision's CIFAR100 on the same files gives the same images (HWC) and labels
    ref_test, ref_train = torchvision_cifar100(tmp_path, False), torchvision_cifar100(tmp_path, True)
    np.testing.assert_array_equal(pixels(ds, ds.test.x), ref_test.data.transpose(0, 3, 1, 2))
    assert ds.test.y.tolist() == ref_test.targets
    assert train_val_pixels(ds) == sorted((img.transpose(2, 0, 1).tobytes(), lbl)
                                          for img, lbl in zip(ref_train.data, ref_train.targets))


def test_cifar100_split_is_seeded(tmp_path):
    make_cifar100(tmp_path)
    a, b, c = (load_dataset("cifar100", data_root=str(tmp_path), seed=s) for s in (1, 1, 2))
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.y, b.train.y)
    assert not torch.equal(a.val.x, c.val.x)
    assert torch.equal(a.test.x, c.test.x)  # the official test set whatever the seed


def test_cifar100_missing_file_is_not_found(tmp_path):
    make_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "meta").unlink()
    with pytest.raises(DataNotFound) as info:
        load_dataset("cifar100", data_root=str(tmp_path))
    msg = str(info.value)
    assert "\n" not in msg and "'cifar100' not found" in msg and "cifar-100-python/{train,test,meta}" in msg
    assert load_dataset("cifar100", data_root=str(tmp_path), fallback="mnist-5k").resolved == "mnist-5k"


def test_cifar100_label_out_of_range_is_bad_input_naming_the_file(tmp_path):
    make_cifar100(tmp_path)
    test = tmp_path / "cifar-100-python" / "test"
    entry = pickle.loads(test.read_bytes())
    entry["fine_labels"][3] = 100
    test.write_bytes(pickle.dumps(entry))
    with pytest.raises(BadInput) as info:
        load_dataset("cifar100", data_root=str(tmp_path), fallback="mnist-5k")
    assert not isinstance(info.value, DataNotFound)  # broken files are not hidden by the fallback
    assert str(test) in str(info.value) and "label 100 out of range (classes are 0..99)" in str(info.value)


class _Payload:
    """A pickle that runs code when loaded (it touches the file named ``marker``)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_cifar100_file_that_would_run_code_is_refused_and_never_runs_it(tmp_path):
    make_cifar100(tmp_path)
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "cifar-100-python" / "train"
    evil.write_bytes(pickle.dumps({"data": _Payload(marker), "fine_labels": [0]}))
    pickle.loads(evil.read_bytes())  # live: a plain unpickler (torchvision's) runs it
    assert marker.exists()
    marker.unlink()

    with pytest.raises(BadInput, match=r"train: unreadable as a CIFAR-100 batch: .*refusing to load"):
        load_dataset("cifar100", data_root=str(tmp_path))
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ SVHN


def make_svhn(root: Path, n_train: int = 40, n_test: int = 15, seed: int = 0) -> dict:
    """``root/SVHN/{train,test}_32x32.mat`` as the official files hold them: ``X`` uint8 (32, 32, 3, N) (height,
    width, channel, image), ``y`` (N, 1) digits 1..10 where 10 stands for the digit 0. Returns {split: (images
    (N, 3, 32, 32) uint8, labels 0..9)}."""
    rng = np.random.default_rng(seed)
    folder = root / "SVHN"
    folder.mkdir(parents=True)
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 3, 32, 32)).astype(np.uint8)
        digits = rng.integers(0, 10, n)
        digits[:2] = (0, 9)
        stored = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(n, 1)
        scipy.io.savemat(folder / f"{split}_32x32.mat", {"X": images.transpose(2, 3, 1, 0), "y": stored})
        written[split] = (images, digits.tolist())
    return written


def test_svhn_reads_generated_mat_files_like_torchvision(tmp_path):
    from torchvision.datasets import SVHN

    written = make_svhn(tmp_path)
    ds = load_dataset("svhn", data_root=str(tmp_path), seed=0)
    assert (ds.name, ds.num_classes, ds.image_shape) == ("svhn", 10, (3, 32, 32))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (36, 4, 15)  # val = 40 // 10
    assert ds.origin == str(tmp_path / "SVHN")

    x_test, y_test = written["test"]
    np.testing.assert_array_equal(pixels(ds, ds.test.x), x_test)  # H and W not swapped, channels in order
    assert ds.test.y.tolist() == y_test  # the stored 10 is the digit 0
    assert sorted(set(ds.test.y.tolist())) == sorted(set(y_test)) and 0 in y_test
    check_normalisation(ds, x_test, data.SVHN_MEAN, data.SVHN_STD)

    x_train, y_train = written["train"]
    assert train_val_pixels(ds) == sorted((img.tobytes(), lbl) for img, lbl in zip(x_train, y_train))

    class Unpinned(SVHN):  # torchvision's own reader, md5 pins off (generated files)
        split_list = {k: [url, name, None] for k, (url, name, _) in SVHN.split_list.items()}

    ref = Unpinned(str(tmp_path / "SVHN"), split="test")
    np.testing.assert_array_equal(pixels(ds, ds.test.x), ref.data)
    assert ds.test.y.tolist() == ref.labels.tolist()


def test_svhn_missing_split_is_not_found(tmp_path):
    make_svhn(tmp_path)
    (tmp_path / "SVHN" / "test_32x32.mat").unlink()
    with pytest.raises(DataNotFound) as info:
        load_dataset("svhn", data_root=str(tmp_path))
    assert "'svhn' not found" in str(info.value) and "SVHN/{train,test}_32x32.mat" in str(info.value)


@pytest.mark.parametrize("damage", ["not_a_mat_file", "label_out_of_range", "float_pixels", "fewer_labels"])
def test_broken_svhn_files_are_bad_input_naming_them(tmp_path, damage):
    make_svhn(tmp_path)
    path = tmp_path / "SVHN" / "train_32x32.mat"
    content = scipy.io.loadmat(path)
    x, y = content["X"], content["y"]
    if damage == "not_a_mat_file":
        path.write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    elif damage == "label_out_of_range":
        y[5] = 11
        scipy.io.savemat(path, {"X": x, "y": y})
    elif damage == "float_pixels":
        scipy.io.savemat(path, {"X": x.astype(np.float64) / 255, "y": y})
    else:
        scipy.io.savemat(path, {"X": x, "y": y[:-3]})
    with pytest.raises(BadInput) as info:
        load_dataset("svhn", data_root=str(tmp_path), fallback="mnist-5k")
    assert not isinstance(info.value, DataNotFound)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg, msg
    expected = {"not_a_mat_file": "unreadable", "label_out_of_range": "label 11 out of range",
                "float_pixels": "expected uint8 (32, 32, 3, N)", "fewer_labels": "40 images in X, but 37 labels"}
    assert expected[damage] in msg, msg


# ---------------------------------------------------------------------------------------------- KMNIST


def _idx(array: np.ndarray) -> bytes:
    """IDX bytes: magic 0x0000 08 <ndim> (uint8), big-endian dims, then the pixels."""
    return struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.astype(np.uint8).tobytes()


def make_kmnist_gz(root: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> dict:
    """``root/KMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``: the four files as the KMNIST
    release distributes them (gzipped IDX), and nothing else."""
    rng = np.random.default_rng(seed)
    raw = root / "KMNIST" / "raw"
    raw.mkdir(parents=True)
    written = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8), rng.integers(0, 10, n)
        (raw / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
        (raw / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels)))
        written[prefix] = (images, labels.tolist())
    return written


def test_kmnist_reads_the_distributed_gz_files_through_torchvision(tmp_path):
    from torchvision.datasets import KMNIST

    written = make_kmnist_gz(tmp_path)
    ds = load_dataset("kmnist", data_root=str(tmp_path), seed=0)
    assert (ds.name, ds.num_classes, ds.image_shape) == ("kmnist", 10, (1, 28, 28))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (50, 10, 20)
    assert ds.origin == str(tmp_path / "KMNIST" / "raw")
    x_test, y_test = written["t10k"]
    np.testing.assert_array_equal(pixels(ds, ds.test.x)[:, 0], x_test)
    assert ds.test.y.tolist() == y_test
    check_normalisation(ds, x_test[:, None], data.KMNIST_MEAN, data.KMNIST_STD)

    # decompressed beside the .gz files, as torchvision's download leaves them; torchvision reads the same
    raw = tmp_path / "KMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir() if not p.name.endswith(".gz")) == [
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"]
    ref = KMNIST(str(tmp_path), train=False)
    np.testing.assert_array_equal(pixels(ds, ds.test.x)[:, 0], ref.data.numpy())
    x_train, y_train = written["train"]
    assert train_val_pixels(ds) == sorted((img[None].tobytes(), lbl) for img, lbl in zip(x_train, y_train))
    assert torch.equal(load_dataset("kmnist", data_root=str(tmp_path), seed=0).val.x, ds.val.x)  # 2nd load


def test_kmnist_gz_in_a_read_only_folder_is_read_in_place(tmp_path, monkeypatch):
    written = make_kmnist_gz(tmp_path)
    make_kmnist_gz(tmp_path / "writable")  # the same files, where they can be decompressed
    reference = load_dataset("kmnist", data_root=str(tmp_path / "writable"), seed=3)

    def read_only(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(data, "_gunzip_next_to", read_only)  # (root may write anywhere: simulate the folder)
    ds = load_dataset("kmnist", data_root=str(tmp_path), seed=3)
    assert not any(p.suffix != ".gz" for p in (tmp_path / "KMNIST" / "raw").iterdir())
    np.testing.assert_array_equal(pixels(ds, ds.test.x)[:, 0], written["t10k"][0])
    for name in ("train", "val", "test"):  # the same arrays, the same seeded split
        assert torch.equal(getattr(ds, name).x, getattr(reference, name).x)


def test_kmnist_damaged_gz_is_bad_input_naming_it(tmp_path):
    make_kmnist_gz(tmp_path)
    gz = tmp_path / "KMNIST" / "raw" / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:300])
    with pytest.raises(BadInput) as info:
        load_dataset("kmnist", data_root=str(tmp_path), fallback="mnist-5k")
    assert not isinstance(info.value, DataNotFound) and str(gz) in str(info.value)
    assert not (gz.parent / "train-images-idx3-ubyte").exists()  # no half-written file left behind
    assert not [p for p in gz.parent.iterdir() if "partial" in p.name]


def test_list_datasets_shows_the_new_builtins(capsys):
    code, out, _ = cli(["list", "datasets"], capsys)
    assert code == 0
    assert {"cifar100", "svhn", "kmnist", "cifar10", "mnist", "fashion-mnist", "mnist-5k"} <= set(out.split())


# -------------------------------------------------------------------------------------- dataset plug-ins


def doc_block(lang: str, contains: str) -> str:
    blocks = re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)
    return next(b for b in blocks if contains in b)


DIGITS = doc_block("python", "DATASETS = {")
SUITE = doc_block("yaml", "name: digits_fewstep")


def test_the_documented_dataset_plugin_runs_its_smoke_suite(tmp_path, capsys, monkeypatch, clean_registries):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "sklearn_digits.py").write_text(DIGITS)
    (tmp_path / "digits_fewstep.yaml").write_text(SUITE)
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(["list", "datasets", "--methods-dir", "plugins"], capsys)
    assert code == 0 and "sklearn-digits" in out.split(), err

    db = f"sqlite:///{tmp_path}/store.db"
    code, out, err = cli(["run", "digits_fewstep.yaml", "--profile", "smoke", "--methods-dir", "plugins",
                          "--storage", db, "--out", str(tmp_path / "report"), "--no-progress"], capsys)
    assert code == 0, err
    assert "sklearn-digits (1200 train examples)" in out
    store = Store(db)
    records = store.records(store.study("digits_fewstep@smoke", create=False))
    assert sorted(r.source for r in records) == ["gtn", "real"]
    assert all(r.status == "complete" and r.dataset_resolved == "sklearn-digits" for r in records)
    assert all(0.0 <= r.test_acc_final <= 1.0 for r in records)
    assert (tmp_path / "report" / "report.md").is_file()


def test_documented_loader_meets_the_contract(clean_registries, tmp_path):
    (tmp_path / "sklearn_digits.py").write_text(DIGITS)
    assert load_plugin_dir(tmp_path) == ["sklearn-digits"]
    assert datasets.origin("sklearn-digits") == f"plugin file {tmp_path / 'sklearn_digits.py'}"
    a, b = load_dataset("sklearn-digits", seed=1), load_dataset("sklearn-digits", seed=2)
    assert (len(a.train), len(a.val), len(a.test)) == (1200, 300, 297)
    assert torch.equal(a.test.x, b.test.x) and not torch.equal(a.val.x, b.val.x)
    pool = torch.cat([a.train.x, a.val.x])  # normalised with the statistics of every non-test image
    assert abs(pool.mean().item()) < 1e-4 and pool.std().item() == pytest.approx(1.0, abs=1e-4)


# Each damage turns the documented loader's output into something the contract forbids.
BAD_OUTPUTS = {
    "not_a_dataset": ("return {'train': ds.train}", "the loader returned a dict, not a tgbench.data.Dataset"),
    "float64_images": ("return dataclasses.replace(ds, train=Split(ds.train.x.double(), ds.train.y))",
                       "train.x torch.float64 (1200, 1, 8, 8), expected float32 (N, 1, 8, 8)"),
    "wrong_image_shape": ("return dataclasses.replace(ds, image_shape=(1, 28, 28))",
                          "train.x torch.float32 (1200, 1, 8, 8), expected float32 (N, 1, 28, 28)"),
    "float_labels": ("return dataclasses.replace(ds, val=Split(ds.val.x, ds.val.y.float()))",
                     "val.y torch.float32 (300,), expected int64 (N,) class labels"),
    "label_out_of_range": ("return dataclasses.replace(ds, test=Split(ds.test.x, ds.test.y + 3))",
                           "test.y with label 12, outside 0..9 (num_classes)"),
    "empty_split": ("return dataclasses.replace(ds, val=Split(ds.val.x[:0], ds.val.y[:0]))", "an empty val split"),
    "nan_pixels": ("x = ds.test.x.clone(); x[3, 0, 2, 2] = float('nan')\n"
                   "    return dataclasses.replace(ds, test=Split(x, ds.test.y))", "test.x with NaN or infinite"),
    "std_per_channel": ("return dataclasses.replace(ds, std=(1.0, 1.0, 1.0))", "std (1.0, 1.0, 1.0) with 3 values"),
    "one_class": ("return dataclasses.replace(ds, num_classes=1)", "num_classes 1, expected an int >= 2"),
}


@pytest.mark.parametrize("damage", list(BAD_OUTPUTS))
def test_bad_plugin_output_is_exit_2_with_one_line_naming_the_dataset(tmp_path, capsys, monkeypatch,
                                                                      clean_registries, damage):
    code_line, expected = BAD_OUTPUTS[damage]
    plugin = tmp_path / "plugins" / "bad_digits.py"
    plugin.parent.mkdir()
    plugin.write_text(DIGITS.replace('DATASETS = {"sklearn-digits": load_sklearn_digits}', "") +
                      "\nimport dataclasses\n\n\ndef load_bad(data_root=None, download=False, seed=0):\n"
                      f"    ds = load_sklearn_digits(data_root, download, seed)\n    {code_line}\n\n\n"
                      "DATASETS = {'bad-digits': load_bad}\n")
    (tmp_path / "suite.yaml").write_text(SUITE.replace("sklearn-digits", "bad-digits"))
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(["run", "suite.yaml", "--profile", "smoke", "--methods-dir", "plugins", "--storage",
                          f"sqlite:///{tmp_path}/s.db", "--out", str(tmp_path / "out"), "--no-progress"], capsys)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"dataset 'bad-digits' (plugin file {plugin})" in lines[0] and expected in lines[0], lines[0]


def test_the_unbroken_wrapper_passes(tmp_path, clean_registries):
    """The damages above are the only thing wrong with their plugin (the check is not just refusing wrappers)."""
    (tmp_path / "ok.py").write_text(DIGITS.replace('DATASETS = {"sklearn-digits": load_sklearn_digits}', "") +
                                    "\ndef load_ok(data_root=None, download=False, seed=0):\n"
                                    "    return load_sklearn_digits(data_root, download, seed)\n\n\n"
                                    "DATASETS = {'ok-digits': load_ok}\n")
    load_plugin_dir(tmp_path)
    assert load_dataset("ok-digits").resolved == "ok-digits"


@pytest.mark.parametrize("name, text, expected", [
    ("nothing.py", "X = 1\n", "METHODS, DATASETS, PROXIES, SUITE_KINDS: a plugin file must declare at least one"),
    ("not_a_dict.py", "DATASETS = ['tiny']\n", "DATASETS: must be a non-empty dict"),
    ("empty.py", "DATASETS = {}\n", "DATASETS: must be a non-empty dict"),
    ("not_callable.py", "DATASETS = {'tiny': 42}\n", "DATASETS['tiny']: dataset 'tiny': 42 is not callable"),
    ("taken.py", "def load(data_root=None, download=False, seed=0):\n    pass\nDATASETS = {'mnist': load}\n",
     "DATASETS['mnist']: dataset 'mnist' is already registered"),
    ("bad_proxy.py", "class P:\n    pass\nPROXIES = {'p': P}\n", "not a subclass of Proxy"),
])
def test_bad_plugin_file_is_one_line_naming_it(tmp_path, capsys, clean_registries, name, text, expected):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / name).write_text(text)
    code, _, err = cli(["list", "datasets", "--methods-dir", str(tmp_path / "plugins")], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(tmp_path / "plugins" / name) in lines[0] and expected in lines[0], lines[0]


def test_one_file_declares_every_kind_and_fails_whole(tmp_path, capsys, clean_registries):
    """METHODS, DATASETS and PROXIES from one file; a file with one bad entry registers none of its names."""
    mixed = ("from tgbench.methods.real import RealData\nfrom tgbench.proxies import ParamCount\n"
             "class Real2(RealData):\n    pass\nclass Count2(ParamCount):\n    pass\n"
             "def load(data_root=None, download=False, seed=0):\n    pass\n"
             "METHODS = {'real2': Real2}\nPROXIES = {'count2': Count2}\nDATASETS = {'tiny': load")
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "mixed.py").write_text(mixed + "}\n")
    assert sorted(load_plugin_dir(tmp_path / "good")) == ["count2", "real2", "tiny"]
    assert "real2" in methods and "count2" in proxies and "tiny" in datasets
    assert load_plugin_dir(tmp_path / "good") == ["real2", "tiny", "count2"]  # a second load is a no-op

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "mixed.py").write_text(mixed.replace("real2", "real3").replace("count2", "count3")
                                               .replace("'tiny'", "'tiny3'") + ", 'mnist': load}\n")
    code, _, err = cli(["list", "methods", "--methods-dir", str(tmp_path / "bad")], capsys)
    assert code == 2 and "DATASETS['mnist']" in err and "already registered" in err
    assert "real3" not in methods and "count3" not in proxies and "tiny3" not in datasets  # rolled back
    code, _, err = cli(["list", "methods", "--methods-dir", str(tmp_path / "bad")], capsys)
    assert code == 2 and "already registered" in err  # reported again, not silently skipped


def write_dataset_package(site: Path) -> None:
    """A throwaway installed distribution declaring the documented loader as a ``tgbench.datasets`` entry point
    (what ``pip install`` of a package with that pyproject entry would write)."""
    (site / "digits_plugin").mkdir(parents=True)
    (site / "digits_plugin" / "__init__.py").write_text("")
    (site / "digits_plugin" / "digits.py").write_text(DIGITS)
    info = site / "digits_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: digits-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[tgbench.datasets]\nsklearn-digits = digits_plugin.digits:load_sklearn_digits\n"
        "broken-digits = digits_plugin.digits:TEST_SIZE\n")


def test_an_installed_entry_point_registers_a_dataset(tmp_path):
    site = tmp_path / "site"
    write_dataset_package(site)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        p for p in (os.environ.get("PYTHONPATH"), str(site)) if p))
    script = ("from tgbench.cli import main\nfrom tgbench.data import load_dataset\n"
              "from tgbench.registry import datasets\n"
              "assert main(['list', 'datasets']) == 0\n"
              "ds = load_dataset('sklearn-digits', seed=0)\n"
              "print('loaded', ds.resolved, len(ds.train), datasets.origin('sklearn-digits'))\n"
              "try:\n    load_dataset('broken-digits')\nexcept Exception as exc:\n"
              "    print('refused', type(exc).__name__, exc)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "sklearn-digits" in done.stdout.split()
    assert "loaded sklearn-digits 1200 entry point 'digits_plugin.digits:load_sklearn_digits'" in done.stdout
    assert "refused BadInput dataset 'broken-digits': 'digits_plugin.digits:TEST_SIZE' is not callable" \
        in done.stdout


def test_a_plugin_dataset_reaches_a_fresh_worker_process(tmp_path, clean_registries):
    """A spawned worker starts with only the built-ins: the cell's --methods-dir folders must bring the dataset."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from tgbench.cells import cell_task, run_cell
    from tgbench.suite.loading import load_suite
    from tgbench.worker import WorkerEnv

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "sklearn_digits.py").write_text(DIGITS)
    suite = tmp_path / "digits_fewstep.yaml"
    suite.write_text(SUITE)
    load_plugin_dir(plugins)  # the parent process has it (as after `tgbench run --methods-dir`) ...
    env = WorkerEnv(storage=f"sqlite:///{tmp_path}/store.db", progress=False, threads=1,
                    methods_dirs=(str(plugins),))
    task = cell_task(load_suite(suite, "smoke"), "smoke", "real", 0, env)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:  # ... a fresh one not
        record = pool.submit(run_cell, task).result()
    assert record.status == "complete" and record.dataset_resolved == "sklearn-digits"


def test_images_reach_the_engine_in_one_memory_layout(tmp_path, clean_registries):
    """A convolution follows its input's memory layout, and another layout means other kernels and other low bits
    of the meta-gradient: CIFAR's HWC pickles used to arrive as a channels-last view, and the fake CIFAR smoke
    run's meta-loss differed from the same images in NCHW order after one outer iteration (4.2293396 vs
    4.2293391). Every loader's images are now row-major NCHW, a plug-in's too, values unchanged."""
    from test_data import make_cifar_dataset

    make_cifar_dataset(tmp_path / "cifar", per_batch=8, n_test=10)
    cifar = load_dataset("cifar10", data_root=str(tmp_path / "cifar"))
    permuted = ("\nimport dataclasses\n\n\ndef load_permuted(data_root=None, download=False, seed=0):\n"
                "    ds = load_sklearn_digits(data_root, download, seed)\n"
                "    x = ds.train.x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # a channels-last view\n"
                "    return dataclasses.replace(ds, train=Split(x, ds.train.y))\n\n\n")
    (tmp_path / "ok.py").write_text(DIGITS.replace('DATASETS = {"sklearn-digits"', "OWN = {'sklearn-digits'") + permuted
                                    + "DATASETS = {'permuted-digits': load_permuted, **OWN}\n")
    load_plugin_dir(tmp_path)
    permuted, plain = load_dataset("permuted-digits"), load_dataset("sklearn-digits")
    for ds in (cifar, permuted):
        for split in (ds.train, ds.val, ds.test):
            assert split.x.is_contiguous() and split.y.is_contiguous()
    assert torch.equal(permuted.train.x, plain.train.x)
