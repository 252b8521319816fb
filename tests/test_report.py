"""Tests for the few-step report (tgbench.reporting.fewstep, its markdown helpers and figures) on synthetic frames.

Fixture: three sources on mnist ("a_real", "b_gtn", "c_dd") and one on cifar10 ("d_gtn"), 3 seeds each.
c_dd seed 2 is diverged and d_gtn seed 1 failed; both carry a garbage accuracy that would move the mean if
it were (wrongly) included. Insertion order is a, b, c but the mean order is b > c > a.
"""
from __future__ import annotations

import math
import re

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from tgbench import stats
from tgbench.kinds.fewstep import report
from tgbench.reporting import figures, frames, markdown
from tgbench.kinds.fewstep.report import ReportInputs, write_report

ACC = {  # source -> (dataset, per-seed test acc)
    "a_real": ("mnist", [0.90, 0.91, 0.89]),
    "b_gtn": ("mnist", [0.97, 0.975, 0.965]),
    "c_dd": ("mnist", [0.93, 0.94, 0.02]),
    "d_gtn": ("cifar10", [0.55, 0.05, 0.60]),
}
BAD = {("c_dd", 2): "diverged", ("d_gtn", 1): "failed"}
META = {
    "suite": "smoke",
    "profile": "quick",
    "revision": "abc1234",
    "command": "tgbench run suites/smoke.yaml --profile quick",
    "machine": "test-box (2 cpu)",
    "torch": "2.14.1",
    "created": "2025-01-02T03:04:05",
    "note": "synthetic",
}


def _summary() -> pd.DataFrame:
    rows = []
    for source, (ds, accs) in ACC.items():
        for seed, acc in enumerate(accs):
            rows.append(
                dict(
                    source=source,
                    method=source.split("_")[1],
                    variant="default" if source != "b_gtn" else "wide",
                    seed=seed,
                    status=BAD.get((source, seed), "complete"),
                    dataset_resolved=ds,
                    test_acc_final=acc,
                    val_acc_final=acc - 0.01,
                    meta_train_seconds=10.0 * (seed + 1) if source != "a_real" else 0.0,
                    outer_iterations=50,
                )
            )
    return pd.DataFrame(rows)


def _long(column: str, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for source, (_, accs) in ACC.items():
        for seed, acc in enumerate(accs):
            for i in range(n):
                a = acc * (1 - np.exp(-(i + 1) / 3)) + rng.normal(0, 0.005)
                rows.append({"source": source, "seed": seed, column: i, "val_acc": a - 0.01, "test_acc": a})
    return pd.DataFrame(rows)


def _inputs() -> ReportInputs:
    rng = np.random.default_rng(1)
    return ReportInputs(
        summary=_summary(),
        curves=_long("outer_iter", 30),
        steps=_long("inner_step", 11),
        samples={
            "b_gtn": rng.random((3, 10, 1, 8, 8)),  # gray, 10 classes, 3 recorded steps
            "d_gtn": rng.random((2, 10, 3, 8, 8)),  # rgb
        },
        sample_steps={"b_gtn": [0, 5, 10], "d_gtn": [0, 10]},
        meta=dict(META),
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "nested" / "out"  # write_report must create it
    paths = write_report(out, _inputs())
    return out, paths, (out / "report.md").read_text(encoding="utf-8")


def _sections(md: str) -> dict[str, str]:
    parts = md.split("\n## Dataset: ")[1:]
    return {p.split("\n", 1)[0].strip(): p for p in parts}


def _tables(section: str) -> list[list[dict[str, str]]]:
    """All markdown tables in a section, each as a list of {header: cell} rows."""
    tables, block = [], []
    for line in section.splitlines() + [""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif block:
            header, body = block[0], block[2:]
            tables.append([dict(zip(header, r)) for r in body])
            block = []
    return tables


CEILING_ROW = "*data ceiling* (real data, Adam to convergence)"   # the results table's last row (issue 24)


def _arm_rows(section: str) -> list[dict[str, str]]:
    """The results table's rows of arms: every row but the data ceiling's."""
    return [r for r in _tables(section)[0] if r["source"] != CEILING_ROW]


def _fmt(ci: stats.MeanCI) -> str:
    return f"{100 * ci.mean:.2f} % [{100 * ci.low:.2f}, {100 * ci.high:.2f}]"


TEST_COL = "test acc, last inner step (mean % [95 % CI])"
VAL_COL = "val acc (mean % [95 % CI])"


# ----------------------------------------------------------------------------------------- files


def test_writes_all_files_and_returns_them(written):
    out, paths, _ = written
    names = {p.name for p in paths}
    expected = {
        "summary.csv", "steps.csv", "curves.csv", "report.md",
        "curves.png", "inner_steps.png", "samples_b_gtn.png", "samples_d_gtn.png",
        "compute_curves.png", "compute_curves.csv", "equal_compute.csv",   # the equal-compute verdict
    }
    assert names == expected
    assert {p.name for p in out.iterdir()} == expected
    assert all(p.parent == out and p.stat().st_size > 0 for p in paths)


def test_csvs_round_trip(written):
    out, _, _ = written
    inputs = _inputs()
    pd.testing.assert_frame_equal(pd.read_csv(out / "summary.csv"), inputs.summary, check_dtype=False)
    pd.testing.assert_frame_equal(pd.read_csv(out / "steps.csv"), inputs.steps, check_dtype=False)
    pd.testing.assert_frame_equal(pd.read_csv(out / "curves.csv"), inputs.curves, check_dtype=False)


@pytest.mark.parametrize("name", ["curves.png", "inner_steps.png", "samples_b_gtn.png", "samples_d_gtn.png"])
def test_pngs_are_valid_images(written, name):
    out, _, _ = written
    img = mpimg.imread(out / name)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and img.shape[2] in (3, 4)
    assert img[..., :3].std() > 0.01  # not a blank canvas


def test_sample_grid_layout_follows_rows_and_classes(written):
    out, _, _ = written
    h, w = mpimg.imread(out / "samples_b_gtn.png").shape[:2]
    assert w > 2 * h  # 10 class columns, 3 step rows
    h2, _ = mpimg.imread(out / "samples_d_gtn.png").shape[:2]
    assert h2 < h  # 2 rows is shorter than 3


def test_band_figures_have_one_panel_per_dataset(written):
    out, _, _ = written
    h, w = mpimg.imread(out / "curves.png").shape[:2]
    assert w > 2 * h  # two side-by-side panels (mnist, cifar10)


# ----------------------------------------------------------------------------------------- report.md


def test_header_has_provenance(written):
    _, _, md = written
    head = md.split("\n## ", 1)[0]
    assert head.startswith("# tgbench report: smoke")
    for key, value in META.items():
        assert value in head, key
    assert "**date**: 2025-01-02T03:04:05" in head


def test_one_table_per_resolved_dataset(written):
    _, _, md = written
    sections = _sections(md)
    assert sorted(sections) == ["cifar10", "mnist"]
    mnist = _arm_rows(sections["mnist"])
    cifar = _arm_rows(sections["cifar10"])
    assert {r["source"] for r in mnist} == {"a_real", "b_gtn", "c_dd"}
    # the data-ceiling row closes every results table; these inputs have no ceiling stored
    assert _tables(sections["mnist"])[0][-1]["source"] == CEILING_ROW
    assert _tables(sections["mnist"])[0][-1]["variant"] == "not computed"
    assert [r["source"] for r in cifar] == ["d_gtn"]


def test_rows_ordered_by_mean_test_accuracy(written):
    _, _, md = written
    rows = _arm_rows(_sections(md)["mnist"])
    assert [r["source"] for r in rows] == ["b_gtn", "c_dd", "a_real"]
    assert [r["variant"] for r in rows] == ["wide", "default", "default"]


def test_diverged_and_failed_counted_not_averaged(written):
    _, _, md = written
    mnist = {r["source"]: r for r in _tables(_sections(md)["mnist"])[0]}
    cifar = {r["source"]: r for r in _tables(_sections(md)["cifar10"])[0]}
    assert mnist["c_dd"]["diverged"] == "1" and mnist["c_dd"]["seeds completed"] == "2/3"
    assert mnist["a_real"]["diverged"] == "0" and mnist["a_real"]["seeds completed"] == "3/3"
    assert cifar["d_gtn"]["failed"] == "1" and cifar["d_gtn"]["diverged"] == "0"
    assert mnist["c_dd"]["mean meta-train time (s)"] == "15.0"  # seeds 0, 1 only: (10 + 20) / 2


def test_ci_numbers_match_stats_mean_ci(written):
    _, _, md = written
    summary = _summary()
    for ds, section in _sections(md).items():
        for row in _arm_rows(section):
            cells = summary[(summary.source == row["source"]) & (summary.status == "complete")]
            assert row[TEST_COL] == _fmt(stats.mean_ci(cells.test_acc_final))
            assert row[VAL_COL] == _fmt(stats.mean_ci(cells.val_acc_final))
    row = {r["source"]: r for r in _tables(_sections(md)["mnist"])[0]}["c_dd"]
    assert row[TEST_COL].startswith("93.50 %")  # mean of 0.93, 0.94; the diverged 0.02 excluded


def test_p_value_matrix_present_and_consistent(written):
    _, _, md = written
    section = _sections(md)["mnist"]
    assert "Pairwise Welch p-values" in section
    tables = _tables(section)
    assert len(tables) == 4   # results, p-value matrix, pairwise comparisons, equal compute
    matrix = {r["source"]: r for r in tables[1]}
    order = ["b_gtn", "c_dd", "a_real"]
    assert list(matrix) == order and list(tables[1][0])[1:] == order
    summary = _summary()
    ok = summary[summary.status == "complete"]
    acc = {s: ok.loc[ok.source == s, "test_acc_final"] for s in order}
    for a in order:
        assert matrix[a][a] == "—"
        for b in order:
            if a != b:
                assert matrix[a][b] == matrix[b][a] == f"{stats.welch_p(acc[a], acc[b]):.3g}"
    # the comparisons: every pair once, Holm-adjusted over the table's family of pairs
    pairs = {r["pair"]: r for r in tables[2]}
    raw = {(a, b): stats.welch_p(acc[a], acc[b]) for i, a in enumerate(order) for b in order[i + 1:]}
    holm = dict(zip(raw, stats.holm(list(raw.values()))))
    assert set(pairs) == {f"{a} − {b}" for a, b in raw}
    for (a, b), p in raw.items():
        row = pairs[f"{a} − {b}"]
        assert row["Welch p"] == f"{p:.3g}" and row["Holm p"] == f"{holm[a, b]:.3g}"
        assert row["test acc difference (pp [95 % CI])"].startswith(f"{100 * (acc[a].mean() - acc[b].mean()):+.2f} [")
    # single-source dataset: a 1x1 matrix with only the diagonal
    assert [list(r.values()) for r in _tables(_sections(md)["cifar10"])[1]] == [["d_gtn", "—"]]


def test_note_under_table_names_command_and_profile(written):
    _, _, md = written
    section = _sections(md)["mnist"]
    lines = section.splitlines()
    i_note = next(i for i, line in enumerate(lines) if line.startswith("*Produced by"))
    last_table_row = min(i for i, line in enumerate(lines) if line.startswith("| a_real"))  # results table
    assert last_table_row < i_note < lines.index("### Pairwise Welch p-values (mnist)")
    note = lines[i_note]
    assert f"`{META['command']}`" in note and "`quick`" in note
    assert "bootstrap" in note and "excluded" in note


def test_figures_linked_from_report(written):
    _, _, md = written
    for name in ("curves.png", "inner_steps.png", "samples_b_gtn.png", "samples_d_gtn.png"):
        assert f"]({name})" in md


def test_report_md_is_deterministic(tmp_path, written):
    _, _, md = written
    write_report(tmp_path, _inputs())
    assert (tmp_path / "report.md").read_text(encoding="utf-8") == md
    assert md.endswith("\n") and not md.endswith("\n\n")


def test_empty_figure_inputs_skip_figures(tmp_path, written):
    _, _, md = written
    inputs = _inputs()
    inputs.samples, inputs.sample_steps = {}, {}
    inputs.curves = inputs.curves.iloc[0:0]
    inputs.steps = inputs.steps.iloc[0:0]
    paths = write_report(tmp_path, inputs)
    again = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "## Figures" not in again and not list(tmp_path.glob("*.png"))
    assert {p.name for p in paths} == {"summary.csv", "steps.csv", "curves.csv", "report.md"}
    # without curves there is nothing to judge convergence or equal compute by: the flag lines and the
    # equal-compute sections are the only other differences
    flags = ("**Still rising**", "No arm's validation curve", "Gain of the seed-mean validation accuracy")
    without_flags = "\n".join(line for line in md.split("## Figures")[0].splitlines() if not line.startswith(flags))
    equal_compute = re.compile(r"### Equal compute \((.*?)\)\n.*?(?=\n##|\Z)", re.S)
    assert "No complete cell has a curve" in again
    assert (equal_compute.sub("", again).rstrip()
            == equal_compute.sub("", re.sub(r"\n{3,}", "\n\n", without_flags)).rstrip())


def test_convergence_flag_follows_the_seed_mean_validation_curves(written):
    _, _, md = written
    inputs = _inputs()
    complete = frames.complete_only(inputs.curves, inputs.summary)   # (a diverged seed's curve is not averaged in)
    mean = complete.groupby(["source", "outer_iter"], as_index=False)["val_acc"].mean()
    expected = {src for src, g in mean.groupby("source")
                if stats.still_rising(g["outer_iter"].tolist(), g["val_acc"].tolist())}
    flagged = set()
    for section in _sections(md).values():
        line = next((l for l in section.splitlines() if l.startswith("**Still rising**")), "")
        flagged |= {name.strip() for name in line.split(":", 1)[1].split(",")} if line else set()
    assert flagged == expected and flagged   # the fixture has at least one arm still rising
    gains = {src: stats.late_gain(g["outer_iter"].tolist(), g["val_acc"].tolist()) for src, g in mean.groupby("source")}
    lines = " ".join(next(l for l in section.splitlines() if l.startswith("Gain of the seed-mean validation"))
                     for section in _sections(md).values())
    for src, gain in gains.items():   # every arm's late gain is printed (in its dataset's section), in pp
        assert f" {src} {gain.mean * 100:+.2f} [" in lines


# ----------------------------------------------------------------------------------------- helpers


def test_fmt_pct_ci_edge_cases():
    assert markdown.fmt_pct_ci(stats.MeanCI(0.5, 0.4, 0.6, 3)) == "50.00 % [40.00, 60.00]"
    assert markdown.fmt_pct_ci(stats.mean_ci([0.7])) == "70.00 % [n/a]"
    assert markdown.fmt_pct_ci(stats.mean_ci([])) == "—"


def test_source_with_no_complete_cell_sorts_last():
    s = _summary()
    s.loc[s.source == "b_gtn", "status"] = "diverged"
    rows = report.source_rows(s[s.dataset_resolved == "mnist"])
    assert [r.source for r in rows] == ["c_dd", "a_real", "b_gtn"]
    assert rows[-1].n_diverged == 3 and math.isnan(rows[-1].test.mean)


def test_complete_only_drops_non_complete_cells_from_curves():
    kept = frames.complete_only(_long("outer_iter", 2), _summary())
    pairs = set(zip(kept.source, kept.seed))
    assert ("c_dd", 2) not in pairs and ("d_gtn", 1) not in pairs and ("c_dd", 1) in pairs
    assert len(pairs) == 10


def test_band_plot_labels_legend_and_bands():
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    fig = figures.band_plot(_long("inner_step", 4), _summary(), "inner_step", "inner step", "T")
    try:
        axes = {ax.get_title(): ax for ax in fig.axes}
        assert sorted(axes) == ["cifar10", "mnist"]
        mnist = axes["mnist"]
        assert mnist.get_xlabel() == "inner step" and "%" in mnist.get_ylabel()
        labels = [t.get_text() for t in mnist.get_legend().get_texts()]
        assert labels == ["a_real (n=3)", "b_gtn (n=3)", "c_dd (n=2)"]  # diverged seed not drawn
        assert sum(isinstance(c, PolyCollection) for c in mnist.collections) == 3  # one CI band per source
        # the b_gtn mean line is stats.mean_ci_columns over its seeds, in percent
        wide = _long("inner_step", 4).query("source == 'b_gtn'").pivot(index="inner_step", columns="seed",
                                                                       values="test_acc")
        np.testing.assert_allclose(mnist.get_lines()[1].get_ydata(), 100 * wide.mean(axis=1).to_numpy())
    finally:
        plt.close(fig)


def test_band_plot_with_only_diverged_cells_still_draws():
    import matplotlib.pyplot as plt

    s = _summary().assign(status="diverged")
    fig = figures.band_plot(_long("inner_step", 3), s, "inner_step", "inner step", "T")
    try:
        assert [ax.get_title() for ax in fig.axes] == ["(no complete cells)"] and not fig.axes[0].get_lines()
    finally:
        plt.close(fig)


def test_samples_grid_titles_and_row_labels():
    import matplotlib.pyplot as plt

    images = np.random.default_rng(0).random((2, 3, 1, 4, 4))
    fig = figures.samples_grid("g", images, [0, 7])
    try:
        [ax] = fig.axes
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2"]      # one column per class
        assert [t.get_text() for t in ax.get_yticklabels()] == ["step 0", "step 7"]  # one row per step
        mosaic = ax.get_images()[0].get_array()
        assert mosaic.ndim == 2  # gray
        # every sample where its row and column say, unchanged (1-pixel gaps between them)
        for r in range(2):
            for c in range(3):
                assert np.allclose(mosaic[r * 5: r * 5 + 4, c * 5: c * 5 + 4], images[r, c, 0])
    finally:
        plt.close(fig)
    fig = figures.samples_grid("g", np.zeros((1, 2, 3, 4, 4)), None)
    try:
        assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["row 0"]
        assert fig.axes[0].get_images()[0].get_array().shape == (4, 9, 3)  # rgb, channels last
    finally:
        plt.close(fig)


def test_samples_figure_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="1 or 3 channels"):
        figures.samples_figure("x", np.zeros((1, 2, 2, 4, 4)), [0], tmp_path / "x.png")
    with pytest.raises(ValueError, match="rows, classes"):
        figures.samples_figure("x", np.zeros((2, 4, 4)), [0], tmp_path / "x.png")


def test_pipes_in_names_do_not_break_tables():
    s = _summary()
    s.loc[s.source == "a_real", "variant"] = "lr|0.1"
    lines = report.results_table(report.source_rows(s[s.dataset_resolved == "mnist"]))
    assert all(line.count("|") - line.count("\\|") == len(report.RESULTS_HEADER) + 1 for line in lines)
