"""Issue 24's verdict machinery: the equal-compute statistics (curves read at a compute budget, where two curves
cross), the equal-compute table and compute-axis figure of a fewstep report, the data-ceiling row (computed once,
stored, read back; an old store renders without it), and dataset distillation's pixel step size and the movement
it reports."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import yaml

from tgbench import stats
from tgbench.builders import build_trainer
from tgbench.ceiling import CEILING_STUDY, ceiling_hash, ceiling_schedule, ceiling_spec
from tgbench.cli import main
from tgbench.suite.by_kind import suite_from_dict
from tgbench.data import load_dataset
from tgbench.records import DataCeiling, FewstepCell, Status, cell_key, record_from_attrs
from tgbench.kinds.fewstep.report import ReportInputs, render_markdown
from tgbench.store import Store

from test_records import OLD_STORE, REPO, rebuild


# ------------------------------------------------------------------------------------------ statistics
def test_a_curve_is_read_linearly_between_its_points_and_held_at_its_end():
    curve = ([0, 10, 20], [0.1, 0.5, 0.7])
    assert stats.interpolate_at(curve, 5) == (pytest.approx(0.3), True)
    assert stats.interpolate_at(curve, 15) == (pytest.approx(0.6), True)
    assert stats.interpolate_at(curve, 20) == (pytest.approx(0.7), True)
    assert stats.interpolate_at(curve, 30) == (pytest.approx(0.7), False)     # ended before the budget
    assert stats.interpolate_at(([3, 1, 2], [0.3, 0.1, 0.2]), 1.5)[0] == pytest.approx(0.15)  # unsorted input
    value, reached = stats.interpolate_at(([], []), 1)
    assert math.isnan(value) and not reached


def test_a_budget_is_read_on_every_seed_and_averaged_with_its_ci():
    seeds = [([0, 10], [0.0, 1.0]), ([0, 20], [0.0, 1.0]), ([0, 5], [0.5, 0.5])]
    ci, reached = stats.value_at_budget(seeds, 10)
    assert ci.mean == pytest.approx((1.0 + 0.5 + 0.5) / 3) and ci.n == 3 and not reached  # seed 3 ended at 5
    assert ci.low <= ci.mean <= ci.high
    assert stats.value_at_budget(seeds[:2], 10)[1] is True


def test_the_mean_curve_covers_only_the_range_every_seed_reached():
    grid, mean = stats.mean_curve([([0, 1, 2], [0, 1, 2]), ([0, 2, 4], [2, 2, 2])])
    assert grid.tolist() == [0, 1, 2] and mean.tolist() == [1.0, 1.5, 2.0]


@pytest.mark.parametrize("a, b, expected", [
    (([0, 1, 2], [0, 1, 2]), ([0, 1, 2], [1, 1, 1]), [1.0]),                 # meet at a shared point
    (([0, 2], [0, 2]), ([0, 2], [1.5, 0.5]), [1.0]),                         # between points: x = 1.5 - x / 2
    (([0, 1, 2], [0, 2, 0]), ([0, 2], [1, 1]), [0.5, 1.5]),                  # up through and back down
    (([0, 1, 2], [0, 1, 0]), ([0, 2], [1, 1]), []),                          # touches without crossing
    (([0, 10], [0, 1]), ([0, 10], [0.5, 2]), []),                            # one stays below the other
    (([0, 4], [0, 4]), ([2, 3], [3, 2]), [2.5]),                             # only inside the common range
])
def test_crossings_are_where_the_difference_changes_sign(a, b, expected):
    assert stats.crossings(a, b) == pytest.approx(expected)


# ------------------------------------------------------------------------------------------ the report's table
def _inputs(flops: dict[str, float] | None) -> ReportInputs:
    """Two arms x 2 seeds: ``slow`` (100 outer iterations) rises 0.1 -> 0.9 linearly; ``fast`` (10 iterations)
    stays at 0.5 after a first check of 0.3."""
    summary, curves, compute = [], [], []
    for source, iterations, points in (("slow", 100, [(0, 0.1), (50, 0.5), (100, 0.9)]),
                                       ("fast", 10, [(0, 0.3), (10, 0.5)])):
        for seed in (0, 1):
            summary.append({"source": source, "method": "real", "variant": "default", "seed": seed,
                            "status": "complete", "dataset_resolved": "d", "test_acc_final": points[-1][1],
                            "val_acc_final": points[-1][1], "meta_train_seconds": iterations / 10.0,
                            "outer_iterations": iterations, "peak_rss_mb": 1.0, "revision": "r", "arm": source,
                            "sweep_value": None})
            curves += [{"source": source, "seed": seed, "outer_iter": it, "val_acc": acc, "test_acc": acc}
                       for it, acc in points]
            compute.append({"source": source, "seed": seed,
                            "meta_train_flops": math.nan if flops is None else flops[source]})
    return ReportInputs(pd.DataFrame(summary), pd.DataFrame(curves), pd.DataFrame(), meta={"profile": "smoke"},
                        compute=pd.DataFrame(compute))


def test_the_equal_compute_table_reads_each_arm_at_shares_of_the_largest_arms_flops():
    md = render_markdown(_inputs({"slow": 1e12, "fast": 1e11}), [])
    table = md.split("### Equal compute (d)")[1]
    # budgets 0.1, 0.3, 1 TFLOP: slow is at 0.1 + 0.8 * share; fast reached 0.1 TFLOP only (0.5 from then on)
    assert "| slow | 1 TFLOP | 18.00 % [18.00, 18.00] | 34.00 % [34.00, 34.00] | 90.00 % [90.00, 90.00] |" in table
    assert "| fast | 100 GFLOP | 50.00 % [50.00, 50.00] | 50.00 % [50.00, 50.00] ‡ | 50.00 % [50.00, 50.00] ‡ |" \
        in table
    assert "meta-training FLOPs" in table and "wall seconds of meta-training" not in table
    # slow passes fast's final 0.5 at 0.5 TFLOP, but fast's curve ends at 0.1 TFLOP: inside the range both cover
    # slow stays below, so no crossing is claimed
    assert "No two arms' seed-mean test curves cross" in table
    assert "**At equal compute**: at 10 % fast leads (50.00 %, 32.00 pp above slow); at 30 % fast leads " \
           "(50.00 %, 16.00 pp above slow); at 100 % slow leads (90.00 %, 40.00 pp above fast)." in table


def test_without_flop_counts_the_table_is_on_wall_seconds_and_says_so():
    md = render_markdown(_inputs(None), [])
    table = md.split("### Equal compute (d)")[1]
    assert "**The axis is wall seconds of meta-training**" in table
    assert "| slow | 10 s | 18.00 %" in table and "| fast | 1 s |" in table
    assert "Data ceiling: not computed" in md


# ------------------------------------------------------------------------------------------ dataset distillation
def _dd_suite(scale: float):
    return suite_from_dict({
        "name": "dd", "dataset": {"name": "mnist-5k"},
        "learner": {"conv_channels": [[4]], "fc_hidden": [[8]]}, "inner": {"steps": 2, "batch_size": 10},
        "outer": {"iterations": 3, "meta_batch_size": 16},
        "sources": [{"method": "dataset_distillation", "params": {} if scale == 1 else {"pixel_lr_scale": scale}}]})


def test_a_larger_pixel_step_moves_the_pixels_by_that_factor():
    """Measured, not assumed: one outer Adam step of the reparametrised pixels moves them ``pixel_lr_scale``
    times as far as the plain parametrisation (Adam is invariant to the gradient's scale up to eps), and after
    three steps they have still moved several times as far."""
    data = load_dataset("mnist-5k", seed=0)
    moved = {}
    for scale in (1.0, 8.0):
        suite = _dd_suite(scale)
        trainer = build_trainer(suite, suite.sources[0], data, 0)
        initial = trainer.teacher.source.pixels().detach().clone()
        steps = []
        for _ in range(3):
            trainer.step()
            steps.append(trainer.teacher.source.diagnostics())
        # the diagnostic is what it says: mean |x - x0| / std(x0) of the pixels the lessons present
        change = (trainer.teacher.source.pixels().detach() - initial).abs().mean().item()
        assert steps[-1]["pixel_mean_abs_change"] == pytest.approx(change, rel=1e-5)
        assert steps[-1]["pixel_movement"] == pytest.approx(change / initial.std().item(), rel=1e-5)
        moved[scale] = steps
    assert moved[8.0][0]["pixel_mean_abs_change"] / moved[1.0][0]["pixel_mean_abs_change"] == pytest.approx(8, rel=0.01)
    assert moved[8.0][-1]["pixel_movement"] > 4 * moved[1.0][-1]["pixel_movement"]


def test_the_pixel_step_changes_no_stored_hash_and_no_saved_teacher():
    """Params hold what the user wrote: the new default is in no arm's dump (so in no cell hash); the init buffer
    is not persistent, so a saved teacher is its learned pixels as before."""
    suite = _dd_suite(1.0)
    assert suite.sources[0].model_dump(mode="json")["params"] == {}
    data = load_dataset("mnist-5k", seed=0)
    teacher = build_trainer(suite, suite.sources[0], data, 0).teacher
    assert set(teacher.source.state_dict()) == {"labels", "images"}


# ------------------------------------------------------------------------------------------ end to end
TINY = {
    "name": "eq_few", "dataset": {"name": "mnist-5k"},
    "learner": {"conv_channels": [[4]], "fc_hidden": [[8]]},
    "inner": {"steps": 2, "batch_size": 10}, "outer": {"iterations": 4, "meta_batch_size": 16},
    "evaluation": {"seeds": 2, "eval_every": 2, "eval_learners": 1, "final_learners": 1, "held_out": {},
                   "count_flops": False},
    "sources": [{"method": "real"},
                {"method": "dataset_distillation", "params": {"pixel_lr_scale": 4.0}}],
    "profiles": {"smoke": {}},
}


def _ceiling_trials(url: str) -> int:
    store = Store(url)
    return len(store.study(CEILING_STUDY, create=False).get_trials()) if CEILING_STUDY in store.study_names() else 0


@pytest.mark.slow
def test_a_fewstep_run_reports_equal_compute_the_ceiling_and_dds_movement_and_stores_the_ceiling_once(
        tmp_path, capsys):
    path, url = tmp_path / "eq.yaml", f"sqlite:///{tmp_path}/s.db"
    path.write_text(yaml.safe_dump(TINY))
    run = ["run", str(path), "--profile", "smoke", "--no-progress", "--storage", url, "--out", str(tmp_path / "o")]
    assert main(run) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "data ceiling:" in out
    schedule = ceiling_schedule("smoke")
    assert _ceiling_trials(url) == schedule.seeds
    md = (tmp_path / "o" / "report.md").read_text()
    assert "### Equal compute (mnist-5k)" in md and "**At equal compute**" in md
    assert (tmp_path / "o" / "compute_curves.png").stat().st_size > 0 and "compute_curves.png" in md
    equal = pd.read_csv(tmp_path / "o" / "equal_compute.csv")
    assert set(equal["source"]) == {"real", "dataset_distillation"} and len(equal) == 6
    # the ceiling row: the stored seeds' test accuracy, as the report shows it
    store = Store(url)
    suite = suite_from_dict({k: v for k, v in TINY.items() if k != "profiles"})
    chash = ceiling_hash(ceiling_spec(suite), "mnist-5k", schedule)
    ceiling = [r for r in store.records(store.study(CEILING_STUDY, create=False)) if r.config_hash == chash]
    assert len(ceiling) == schedule.seeds and all(r.status == Status.COMPLETE for r in ceiling)
    mean = stats.mean_ci([r.test_acc for r in ceiling])
    row = next(line for line in md.splitlines() if line.startswith("| *data ceiling*"))
    shown = (f"[{100 * mean.low:.2f}, {100 * mean.high:.2f}]" if len(ceiling) > 1 else "[n/a]")  # (1 seed: no CI)
    assert f"{100 * mean.mean:.2f} % {shown}" in row
    # DD's movement reaches the report: the cells' stored diagnostics, averaged
    cells = [r for r in store.records(store.study("eq_few@smoke", create=False))
             if isinstance(r, FewstepCell) and r.source == "dataset_distillation"]
    movement = sum(r.diagnostics["pixel_movement"] for r in cells) / len(cells)
    assert movement > 0
    assert f"**dataset_distillation**: its pixels moved {100 * movement:.1f} % of their initial" in md
    # a rerun finds everything stored: no cell and no ceiling seed is trained again
    assert main(run) == 0
    assert "data ceiling:" not in capsys.readouterr().out and _ceiling_trials(url) == schedule.seeds


@pytest.mark.slow
def test_a_store_written_before_the_ceiling_still_renders_saying_it_was_not_computed(tmp_path, capsys):
    rebuild(json.loads(OLD_STORE.read_text()), f"sqlite:///{tmp_path}/old.db")
    code = main(["report", str(REPO / "suites" / "mnist_fewstep.yaml"), "--profile", "smoke", "--storage",
                 f"sqlite:///{tmp_path}/old.db", "--artifacts", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert code == 0, capsys.readouterr().err
    md = (tmp_path / "o" / "report.md").read_text()
    assert "| *data ceiling* (real data, Adam to convergence) | not computed |" in md
    assert "**Data ceiling: not computed**" in md
    assert "### Equal compute" in md and "**The axis is wall seconds of meta-training**" in md


def test_a_ceiling_record_round_trips():
    record = DataCeiling(cell=cell_key("ceiling", 1), config_hash="h", status=Status.COMPLETE, seed=1,
                         test_acc_final=0.9, test_acc=0.9, val_acc=0.91, epochs_run=4.0, schedule={"lr": 1e-3},
                         curve=[{"epoch": 1.0, "val_acc": 0.9, "test_acc": 0.9}])
    attrs = {**json.loads(json.dumps(record.fields())), "status": record.status.value}
    back = record_from_attrs(attrs, CEILING_STUDY)
    assert type(back) is DataCeiling and back.model_dump() == record.model_dump()


def test_the_data_ceiling_script_computes_the_row_alone_and_reads_it_back(tmp_path):
    """``scripts/data_ceiling.py``: the ceiling without the suite's cells (how README's mnist-5k headroom figure
    was measured); a second call trains nothing and prints the stored seeds' numbers."""
    import subprocess
    import sys
    path, url = tmp_path / "eq.yaml", f"sqlite:///{tmp_path}/s.db"
    path.write_text(yaml.safe_dump(TINY))
    command = [sys.executable, str(REPO / "scripts" / "data_ceiling.py"), str(path), "--profile", "smoke",
               "--storage", url]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "data ceiling:" in first.stdout and "seed 0: test" in first.stdout
    assert _ceiling_trials(url) == ceiling_schedule("smoke").seeds
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "data ceiling:" not in again.stdout
    assert again.stdout.splitlines()[-2:] == first.stdout.splitlines()[-2:]   # the stored seed, read back
    assert _ceiling_trials(url) == ceiling_schedule("smoke").seeds
