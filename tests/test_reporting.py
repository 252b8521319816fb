"""The reporting package beyond the few-step report (tests/test_report.py): the one interval formatter prints
what each report printed before it existed, the provenance is assembled in one place, the NAS / tune /
leaderboard reports render from the frames they are handed, and every report directory is written atomically."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tgbench import stats
from tgbench.provenance import report_provenance
from tgbench.reporting import leaderboard as leaderboard_report
from tgbench.kinds.nas_proxy import report as nas_report
from tgbench.kinds.tune import report as tune_report
from tgbench.reporting.frames import ORACLE, RANDOM
from tgbench.reporting.markdown import (PERCENT, PERCENT_BARE, PERCENT_POINTS_DIFFERENCE, RANK_STATISTIC, fmt_ci,
                                        fmt_gflops, fmt_pct_ci)

NAN = math.nan
VALUES = [0.0, 0.5, 0.123456, 0.97312, 1.0, -0.0042, 12.3456, NAN]


# the formatters the reports had before tgbench.reporting, verbatim: fmt_ci's presets must print the same
def _old_fmt_pct_ci(ci):
    if math.isnan(ci.mean):
        return "—"
    if math.isnan(ci.low) or math.isnan(ci.high):
        return f"{100 * ci.mean:.2f} % [n/a]"
    return f"{100 * ci.mean:.2f} % [{100 * ci.low:.2f}, {100 * ci.high:.2f}]"


def _old_nas_fmt_ci(value, low, high, digits=3):
    if math.isnan(value):
        return "n/a"
    if math.isnan(low) or math.isnan(high):
        return f"{value:.{digits}f} [n/a]"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _old_pp(v):
    return "n/a" if math.isnan(v) else f"{100 * v:+.2f}"


def test_the_one_interval_formatter_prints_what_every_report_printed_before():
    for mean in VALUES:
        for low in VALUES:
            for high in VALUES:
                ci = stats.MeanCI(mean, low, high, 3)
                assert fmt_pct_ci(ci) == fmt_ci(mean, low, high, PERCENT) == _old_fmt_pct_ci(ci)
                assert fmt_ci(mean, low, high, RANK_STATISTIC) == _old_nas_fmt_ci(mean, low, high)
                assert fmt_ci(mean, low, high, PERCENT_BARE) == _old_nas_fmt_ci(100 * mean, 100 * low, 100 * high,
                                                                               digits=2)
                assert (fmt_ci(mean, low, high, PERCENT_POINTS_DIFFERENCE)
                        == f"{_old_pp(mean)} [{_old_pp(low)}, {_old_pp(high)}]")
    assert fmt_ci(np.float64(0.5), np.float64(0.25), np.float64(0.75), PERCENT) == "50.00 % [25.00, 75.00]"
    assert [fmt_gflops(f) for f in (NAN, 1.234e9, 5.0e11, 1.5e13)] == ["n/a", "1.23", "500", "15,000"]


def test_report_provenance_is_assembled_in_one_place():
    p = report_provenance(suite="s", profile="smoke", overrides=["a=1"], revisions=["b2", "a1", "b2"],
                          devices=["cpu", "cpu"])
    assert (p.command, p.revision, p.device, p.overrides) == ("tgbench run s --profile smoke", "a1, b2", "cpu",
                                                              ("a=1",))
    meta = p.as_meta()
    assert list(meta) == ["suite", "profile", "revision", "command", "overrides", "machine", "created", "torch",
                          "device"]
    assert meta["torch"] == p.versions["torch"] and meta["created"].endswith("+00:00")
    bare = report_provenance(command="tgbench leaderboard").as_meta()
    assert "device" not in bare and bare["command"] == "tgbench leaderboard" and bare["revision"]


# ----------------------------------------------------------------------------------------- tune


def _tune_inputs(overrides=()) -> tune_report.TuneReportInputs:
    trials = pd.DataFrame({"arm": ["a", "a", "b", "b"], "trial": [0, 1, 0, 1],
                           "status": ["complete", "diverged", "complete", "complete"], "value": [1.0, 5.0, 2.0, 2.5]})
    summary = pd.DataFrame([{"arm": "a", "trials": 2, "diverged": 1, "pruned": 0, "median": 3.0, "q1": 2.0, "q3": 4.0,
                             "iqr": 2.0, "best": 1.0, "median_non_diverged": 1.0},
                            {"arm": "b", "trials": 2, "diverged": 0, "pruned": 0, "median": 2.25, "q1": 2.125,
                             "q3": 2.375, "iqr": 0.25, "best": 2.0, "median_non_diverged": 2.25}])
    meta = {**report_provenance(suite="t", profile="smoke", command="tgbench run t", overrides=overrides,
                                revisions=["abc"]).as_meta(),
            "dataset": "mnist-5k", "protocol": "4 inner steps", "search space": "inner.lr", "store": "sqlite:///x"}
    return tune_report.TuneReportInputs(trials, summary, pd.DataFrame(columns=["arm", "param", "importance"]), 5.0,
                                        meta)


def test_tune_header_keeps_its_order_and_its_one_code_span_of_overrides():
    lines = tune_report.render_markdown(_tune_inputs(("outer.lr=0.1", "inner.steps=4"))).splitlines()
    assert lines[0] == "# tgbench tune report: t"
    keys = [line.split("**")[1] for line in lines if line.startswith("- **")]
    assert keys == ["profile", "revision", "command", "overrides", "machine", "dataset", "created", "protocol",
                    "search space", "store"]
    assert "- **overrides**: `--set outer.lr=0.1 --set inner.steps=4`" in lines
    assert "- **revision**: abc" in lines and "- **command**: `tgbench run t`" in lines
    assert not any("overrides" in line for line in tune_report.render_markdown(_tune_inputs()).splitlines())


def _contents(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_tune_report_that_fails_half_way_leaves_the_previous_one(tmp_path, monkeypatch):
    out = tmp_path / "out"
    written = tune_report.write_report(out, _tune_inputs())
    assert [p.name for p in written] == ["trials.csv", "summary.csv", "importances.csv", "final_loss_boxplot.png",
                                         "report.md"]
    before = _contents(out)

    def broken(*args):
        raise RuntimeError("the figure failed")

    monkeypatch.setattr(tune_report, "tune_loss_box_plot", broken)
    inputs = _tune_inputs()
    with pytest.raises(RuntimeError, match="figure failed"):
        tune_report.write_report(out, tune_report.TuneReportInputs(inputs.trials.assign(value=9.0), inputs.summary,
                                                                   inputs.importances, 5.0, inputs.meta))
    assert _contents(out) == before   # the new trials.csv was staged, never moved in
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ----------------------------------------------------------------------------------------- NAS


def test_the_nas_tables_columns_are_the_metrics_the_kind_computes():
    from tgbench.kinds.nas_proxy import analysis as nas_proxy

    assert list(nas_report.METRIC_HEADERS) == list(nas_proxy.METRICS)
    assert (nas_proxy.ORACLE, nas_proxy.RANDOM) == (ORACLE, RANDOM)   # the search table's arms, named once


def _nas_inputs() -> nas_report.NasReportInputs:
    archs = pd.DataFrame({"arch_id": ["x", "y", "z"], "description": ["X", "Y", "Z"], "val_acc": [0.5, 0.6, 0.7],
                          "test_acc": [0.5, 0.6, 0.7], "gt_seeds": [2, 2, 2], "gt_seconds": [1.0] * 3,
                          "gt_cpu_seconds": [2.0] * 3, "score:p": [1.0, 2.0, 3.0]})
    truth = pd.DataFrame({"arch_id": ["x", "y", "z"], "seed": [0, 0, 0], "seconds": [1.0] * 3,
                          "cpu_seconds": [2.0] * 3})
    metric = {"spearman": 1.0, "spearman_low": NAN, "spearman_high": NAN}
    metric |= {f"{m}{s}": v for m in ("spearman_top50", "kendall", "top10_precision") for s, v in
               (("", 1.0), ("_low", 1.0), ("_high", 1.0))}
    metrics = pd.DataFrame([{"proxy": "p", "family": "f", "n": 3, **metric, "seconds_per_arch": 0.01,
                             "cpu_seconds_per_arch": 0.02, "setup_seconds": 0.0, "total_seconds": 0.03}])
    search = pd.DataFrame([{"proxy": label, "budget": 2, "mean": 0.7, "low": 0.6, "high": 0.7, "repeats": 5,
                            "search_seconds": 1.0} for label in ("p", ORACLE, RANDOM)])
    return nas_report.NasReportInputs(archs, truth, metrics, search, "test_acc",
                                      {"suite": "n", "bootstrap resamples": "50"})


def test_the_nas_report_renders_its_frames(tmp_path):
    text = nas_report.render_markdown(_nas_inputs(), ["scatter.png"])
    assert "| p | f | 1.000 [n/a] | 1.000 [1.000, 1.000] |" in text
    assert f"| {ORACLE} | 70.00 [60.00, 70.00] |" in text
    assert "Ground-truth cost: 2 CPU s (1 wall s) per architecture and seed (mean)." in text
    assert "200 resamples" not in text and "50 resamples" in text
    written = nas_report.write_report(tmp_path / "out", _nas_inputs())
    assert [p.name for p in written] == ["architectures.csv", "ground_truth.csv", "metrics.csv",
                                         "random_search.csv", "scatter.png", "cost.png", "random_search.png",
                                         "report.md"]
    assert all(p.is_file() for p in written) and not list(tmp_path.glob("*.tmp-*"))


# ----------------------------------------------------------------------------------------- leaderboard


def _leaderboard_frame() -> pd.DataFrame:
    from tgbench.leaderboard import Row, Table, leaderboard_frame, mark_pareto

    def row(source, acc, flops, diverged=0):
        return Row(study="s@smoke", suite="s", profile="smoke", source=source, method="m", variant="v|1",
                   config_hash="h", accuracy=stats.mean_ci(acc), seeds_complete=len(acc), seeds_done=len(acc),
                   diverged=diverged, meta_train_seconds=NAN if flops is None else 1.25, flops=flops or NAN,
                   finished="2025-01-01", revisions="abc", devices="cpu")

    first = Table("aaaa1111-smoke", "smoke", {"dataset": "mnist", "partial": True, "suite": "s",
                                              "inner_steps": 4, "batch_size": 8},
                  [row("gtn", [0.9, 0.8], 2e9), row("real", [0.7], 1e9, diverged=1), row("dd", [0.95], 4e9)])
    second = Table("bbbb2222-smoke", "smoke", {"dataset": None, "partial": True, "suite": "t", "inner_steps": 4,
                                               "batch_size": 8}, [row("x", [], None)])
    for table in (first, second):
        mark_pareto(table.rows)
    return leaderboard_frame([first, second])


def test_the_leaderboard_renders_from_its_frame():
    frame = _leaderboard_frame()
    assert list(frame.columns) == leaderboard_report.COLUMNS
    meta = {**report_provenance(command="tgbench leaderboard").as_meta(), "store": "sqlite:///<x.db>"}
    lines = leaderboard_report.render_markdown(frame, meta, ["LB_figures/pareto_aaaa1111-smoke.png", None])
    lines = lines.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("- ")] == [
        "- command", "- store", "- machine", "- torch", "- leaderboard revision", "- created"]
    assert "## mnist · profile `smoke` · protocol `aaaa1111-smoke`" in lines
    assert "## None · profile `smoke` · protocol `bbbb2222-smoke`" in lines   # (a protocol without a dataset)
    assert ("| 2 | real | s | v\\|1 | 70.00 % [n/a] | 1 (+1 diverged) | 1.2 | 1 | ★ | 2025-01-01 | abc | cpu |"
            in lines)
    assert "| 1 | x | s | v\\|1 | — | 0 | n/a | n/a |  | 2025-01-01 | abc | cpu |" in lines
    front = next(line for line in lines if line.startswith("Cost-aware view"))
    assert front.endswith("s/real (70.00 % for 1 GFLOP) → s/gtn (85.00 % for 2 GFLOP) → s/dd (95.00 % for 4 GFLOP).")
    assert lines.count("Accuracy vs meta-training compute, Pareto front in red: "
                       "![pareto](LB_figures/pareto_aaaa1111-smoke.png)") == 1


def test_the_leaderboard_is_written_atomically_next_to_other_reports(tmp_path, monkeypatch):
    frame = _leaderboard_frame()
    meta = {**report_provenance(command="tgbench leaderboard").as_meta(), "store": "x"}
    (tmp_path / "suite").mkdir()   # the folder holds other reports: nothing is staged beside it, nothing touched
    written = leaderboard_report.write_report(tmp_path / "LB.md", frame, meta)
    assert [p.relative_to(tmp_path).as_posix() for p in written] == [
        "LB_figures/pareto_aaaa1111-smoke.png", "LB.csv", "LB_site/pareto_aaaa1111-smoke.png", "LB_site/index.html",
        "LB.md"]
    assert (tmp_path / "LB.csv").read_text(encoding="utf-8") == frame.drop(columns=["report"]).to_csv(index=False)
    before = _contents(tmp_path)

    def broken(*args):
        raise RuntimeError("no figure")

    monkeypatch.setattr(leaderboard_report, "pareto_figure", broken)
    with pytest.raises(RuntimeError):
        leaderboard_report.write_report(tmp_path / "LB.md", frame.assign(rank=7), meta)
    assert _contents(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LB.csv", "LB.md", "LB_figures", "LB_site", "suite"]
