"""A fuzz test over suite *values* (issue 18): Hypothesis builds tiny fewstep suites whose every setting is drawn
from legal, boundary and illegal values (zero, negative, huge, NaN/inf, booleans and strings where numbers are
meant, empty lists), and any suite that ``tgbench validate`` accepts must then run at the smoke profile without
exit 1 (a crash). Exit 0 or exit 2 (bad input, one line, caught before the first cell) are both fine.

Values that validate are kept small enough that a smoke run takes seconds (a huge width or step count is
checked by validation's bounds, which ``test_reliability_inputs.py`` covers one by one).
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import cli as _cli

# Per setting: values a smoke run can take (small), and values at or past its limits. A drawn suite takes good
# values everywhere, then 0-2 settings get a value from the second list, so about half the suites validate.
BAD_NUMBERS = [0, -1, math.nan, math.inf, True, "3", None, [], 10 ** 40]
SETTINGS = {
    "learner": {
        "conv_channels": ([[[2]], [[2, 4]], [[]], [[2], [4]]], [[], [[0]], [[-3]], [[2.5]], [["x"]], [[True]]]),
        "fc_hidden": ([[[4]], [[]], [[4, 4]]], [[], [[0]], [[10 ** 40]]]),
        "kernel_size": ([[3], [1], [5], [3, 5]], [[], [2], [0], ["3"]]),
        "activation": ([["relu"], ["tanh"], ["leaky_relu", "relu"]], [[], ["gelu"], [1]]),
        "batch_norm": ([True, False], [1, "yes", None]),
        "weight_norm": ([True, False], [None, 2]),
        "bn_statistics": (["lesson", "scored_batch"], ["batch", ""]),
    },
    "inner": {
        "steps": ([1, 2, 3], BAD_NUMBERS),
        "batch_size": ([2, 8, 3500], [1, 3501, *BAD_NUMBERS]),
        "lr": ([1e-3, 0.1, 5.0, 1e30], BAD_NUMBERS),
        "momentum": ([0.5, 0.99, 1e-9], [1.0, *BAD_NUMBERS]),
        "optimizer": (["sgd_momentum", "adam"], ["sgd", ""]),
        "learn_lr": ([True, False], ["no", 2]),
        "learn_momentum": ([True, False], [None]),
    },
    "outer": {
        "iterations": ([1, 2], BAD_NUMBERS),
        "lr": ([1e-3, 0.5, 1e30], BAD_NUMBERS),
        "meta_batch_size": ([1, 16, 3500], [3501, *BAD_NUMBERS]),
        "schedule": (["cosine", "constant"], ["linear"]),
        "final_lr_fraction": ([0.0, 0.1, 1.0], [2.0, -0.1, math.nan]),
        "betas": ([[0.9, 0.999], [0.0, 0.0]], [[1.0, 0.5], [0.9], "x"]),
        "grad_clip": ([1.0, None, 1e-30], [0.0, -1.0, math.nan]),
        "meta_gradient": (["backprop", "es", "hybrid"], ["finite_differences"]),
        "population": ([1, 2], [0, -1]),
        "checkpoint_every": ([0, 1, 2], [-1, 0.5]),
        "intermediate_losses": ([True, False], ["x"]),
        "es_pairs": ([1, 2], [0]),
    },
    "evaluation": {
        "seeds": ([1], [0, -1, 10 ** 40, True]),
        "eval_every": ([1, 2, 5], BAD_NUMBERS),
        "eval_learners": ([1, 2], BAD_NUMBERS),
        "final_learners": ([1], BAD_NUMBERS),
        "architectures": ([None, [{"conv_channels": [2, 2]}], [{"activation": "tanh"}, {"conv_channels": []}]],
                          [[{"conv_channels": "abc"}], [{"depth": 2}], []]),
        "held_out": ([{}, {"narrow": {"fc_hidden": [2]}}], [{"x": {"kernel_size": 4}}, []]),
    },
}
PARAMS = {
    "real": {},
    "dataset_distillation": {"init_scale": ([0.1, 1.0, 1e30], BAD_NUMBERS), "learn_labels": ([True, False], [2])},
    "gtn": {"noise_dim": ([2, 4], [0, -1, 2.5]), "fc_hidden": ([4, 8], [0]), "channels": ([[4, 4], [2, 2]],
                                                                                         [[0, 4], [4]]),
            "curriculum": (["full", "none", "shape"], ["nope"]), "weight_norm": ([True, False], [3]),
            "learn_labels": ([True, False], [None])},
}
SMALL_GTN = {"noise_dim": 2, "fc_hidden": 4, "channels": [2, 2]}


def _section(settings: dict) -> st.SearchStrategy:
    """Some of the section's settings, each at a good value."""
    return st.fixed_dictionaries({}, optional={k: st.sampled_from(good) for k, (good, _) in settings.items()})


def _source(method: str) -> st.SearchStrategy:
    params = _section(PARAMS[method]).map(lambda p: {**SMALL_GTN, **p} if method == "gtn" else p)
    return st.fixed_dictionaries({"method": st.just(method), "params": params},
                                 optional={"inner": _section(SETTINGS["inner"]),
                                           "outer": _section(SETTINGS["outer"])})


BAD_SPOTS = [(section, key) for section, keys in SETTINGS.items() for key in keys]


@st.composite
def suites(draw) -> dict:
    raw = {"name": "fuzz", "dataset": {"name": "mnist-5k"},
           "learner": {"conv_channels": [[2]], "fc_hidden": [[4]], **draw(_section(SETTINGS["learner"]))},
           "inner": {"steps": 2, "batch_size": 8, **draw(_section(SETTINGS["inner"]))},
           "outer": {"iterations": 2, "meta_batch_size": 16, **draw(_section(SETTINGS["outer"]))},
           "evaluation": {"seeds": 1, "eval_every": 1, "eval_learners": 1, "final_learners": 1, "held_out": {},
                          "count_flops": False, **draw(_section(SETTINGS["evaluation"]))},
           "sources": draw(st.lists(st.sampled_from(list(PARAMS)).flatmap(_source), min_size=1, max_size=2)),
           "profiles": {"smoke": {}}}
    for section, key in draw(st.lists(st.sampled_from(BAD_SPOTS), max_size=2)):
        raw[section][key] = draw(st.sampled_from(SETTINGS[section][key][1]))
    if draw(st.booleans()):  # or a bad value in a source's own params
        source = draw(st.sampled_from(raw["sources"]))
        if PARAMS[source["method"]]:
            key = draw(st.sampled_from(sorted(PARAMS[source["method"]])))
            source["params"][key] = draw(st.sampled_from(PARAMS[source["method"]][key][1]))
    raw["name"] = draw(st.sampled_from(["fuzz", "fuzz", "", " ", "x" * 300]))
    return raw


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(raw=suites())
def test_a_suite_that_validates_never_crashes_a_smoke_run(raw, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        for i, source in enumerate(raw["sources"]):  # labels keep two sources of one method apart
            source["label"] = f"s{i}"
        path.write_text(yaml.safe_dump(raw, allow_unicode=True))
        code, _, err = _cli(["validate", str(path)], capsys)
        assert code in (0, 2), err
        if code != 0:
            assert len(err.strip().splitlines()) == 1, err
            return
        code, _, err = _cli(["run", str(path), "--profile", "smoke", "--no-progress", "--storage",
                             f"sqlite:///{tmp}/t.db", "--out", f"{tmp}/out", "--artifacts", f"{tmp}/a"], capsys)
        assert code in (0, 2), f"{yaml.safe_dump(raw)}\n{err}"
        if code == 2:
            assert len(err.strip().splitlines()) == 1, err
