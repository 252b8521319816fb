"""``tgbench list datasets`` says, for each registered dataset, whether it loads here, its size and where it was
found (issue 26), instead of names only."""
from __future__ import annotations

import pytest

from tgbench.data import load_dataset
from tgbench.registry import PLUGIN_DECLARATIONS

from helpers import cli

NEVER_HERE = '''
from tgbench.errors import DataNotFound

def load(data_root=None, download=False, seed=0):
    raise DataNotFound("never here")

DATASETS = {"never-here": load}
'''


@pytest.fixture
def clean_registries():
    before = {registry: set(registry.names()) for registry in PLUGIN_DECLARATIONS.values()}
    yield
    for registry, names in before.items():
        for name in set(registry.names()) - names:
            registry.unregister(name)


def test_list_datasets_says_what_is_here_its_size_and_where(tmp_path, capsys, clean_registries):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "never.py").write_text(NEVER_HERE)
    code, out, err = cli(["list", "datasets", "--methods-dir", str(tmp_path / "plugins"),
                          "--data-root", str(tmp_path)], capsys)
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines()}
    five_k = load_dataset("mnist-5k")
    sizes = "/".join(f"{len(s):,}" for s in (five_k.train, five_k.val, five_k.test))
    assert lines["mnist-5k"].split(None, 1)[1].startswith(f"available: {sizes} train/val/test images 1x28x28")
    assert five_k.origin in lines["mnist-5k"]
    assert "not here" in lines["never-here"] and str(tmp_path) in lines["never-here"]
    assert all(" available: " in line or " not here " in line or " unusable: " in line for line in lines.values())
