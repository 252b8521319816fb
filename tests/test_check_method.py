"""``tgbench check-method``: the shared source battery (``tgbench.testing``) on a ``--methods-dir`` plug-in —
what docs/adding_a_method.md promises a contributor (issue 16)."""
from __future__ import annotations

import pytest

from helpers import cli

pytestmark = pytest.mark.usefixtures("single_thread")

GOOD = '''
import torch
from torch import nn
from tgbench.source import Source, balanced_labels


class Prototypes(Source):
    description = "one learned image per lesson slot"

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        n = ctx.steps * ctx.batch_size
        self.register_buffer("labels", balanced_labels(n, ctx.num_classes).view(ctx.steps, ctx.batch_size))
        self.images = nn.Parameter(torch.randn(ctx.steps, ctx.batch_size, *ctx.image_shape))

    def new_episode(self, generator):
        return torch.randperm(self.ctx.steps, generator=generator, device=generator.device)

    def forward(self, t, episode):
        step = episode[t % len(episode)]
        return self.images[step], self.labels[step]


METHODS = {"prototypes": Prototypes}
'''
# the same method with the device bug the audit exists for: its presentation order is made on torch's default
# device, not the generator's
BROKEN = GOOD.replace("torch.randperm(self.ctx.steps, generator=generator, device=generator.device)",
                      "torch.randperm(self.ctx.steps)").replace('"prototypes"', '"misplaced"')


def test_check_method_runs_the_battery_on_a_plugin_file(tmp_path, capsys):
    (tmp_path / "prototypes.py").write_text(GOOD)
    code, out, err = cli(["check-method", "prototypes", "--methods-dir", str(tmp_path)], capsys)
    assert code == 0, out + err
    lines = out.strip().splitlines()
    for check in ("lessons", "meta-gradient", "determinism", "substituted parameters", "meta-step", "devices"):
        assert any(line.startswith("ok") and check in line for line in lines), out


def test_check_method_fails_a_plugin_that_breaks_the_contract(tmp_path, capsys):
    (tmp_path / "misplaced.py").write_text(BROKEN)
    code, out, err = cli(["check-method", "misplaced", "--methods-dir", str(tmp_path)], capsys)
    assert code == 1
    failed = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(failed) >= 1 and any("devices" in line and "meta" in line for line in failed), out
    assert "1 of" in err or "of 6 checks failed" in err


def test_check_method_of_an_unknown_name_is_exit_2(capsys):
    code, _, err = cli(["check-method", "no_such_method"], capsys)
    assert code == 2 and "no_such_method" in err and len(err.strip().splitlines()) == 1
