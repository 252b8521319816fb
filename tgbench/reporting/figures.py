"""Every matplotlib figure tgbench draws, one function each, and :func:`save_figure`.

A figure function takes frames (and labels) and returns a ``Figure``; the report module that wants it saves it
with :func:`save_figure` (100 dpi, then closed). PNGs are not byte-reproducible (matplotlib metadata, fonts) but
show the same data. Sections: few-step (accuracy bands, the sweep, sample grids), NAS (proxy score vs ground
truth, rank quality vs cost, random search), tune (the loss box plot), leaderboard (accuracy vs compute).

Bands are ``stats.mean_ci`` per point (95 % percentile bootstrap over seeds), computed for all points of a source
at once by ``stats.mean_ci_columns`` (one vectorised scipy.stats.bootstrap call), so they stay fast even for
thousands of outer iterations.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tgbench import stats  # noqa: E402
from tgbench.locations import NAME_LIMIT, safe_name, text_hash  # noqa: E402
from tgbench.records import Status  # noqa: E402
from tgbench.reporting.frames import ORACLE, RANDOM, UNKNOWN_DATASET, complete_only, dataset_of  # noqa: E402
from tgbench.stats import TOP_FRACTION  # noqa: E402


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` at 100 dpi and close it (an open figure per report would pile up in pyplot)."""
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------- few-step
def _band(ax, long: pd.DataFrame, x: str, y: str, label: str) -> None:
    """Mean line and 95 % CI band over seeds of ``long[y]`` against ``long[x]``."""
    wide = long.pivot_table(index=x, columns="seed", values=y, aggfunc="mean").sort_index()
    mean, low, high = stats.mean_ci_columns(wide.to_numpy().T)
    xs = wide.index.to_numpy(dtype=float)
    (line,) = ax.plot(xs, 100 * mean, label=f"{label} (n={wide.shape[1]})")
    ax.fill_between(xs, 100 * low, 100 * high, color=line.get_color(), alpha=0.2, linewidth=0)


def band_plot(long: pd.DataFrame, summary: pd.DataFrame, x: str, xlabel: str, title: str) -> plt.Figure:
    """One panel per resolved dataset, one mean ± 95 % CI line per source (test accuracy, %).

    Only complete cells are drawn (see :func:`tgbench.reporting.frames.complete_only`); the legend gives each
    source's seed count.
    """
    data = complete_only(long, summary).copy()
    ds_of = dataset_of(summary)
    data["_ds"] = [ds_of.get(str(s), UNKNOWN_DATASET) for s in data["source"]]
    panels = sorted(data["_ds"].unique()) or ["(no complete cells)"]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, ds in zip(axes[0], panels):
        part = data[data["_ds"] == ds]
        for source, g in part.groupby("source", sort=True):
            _band(ax, g, x, "test_acc", str(source))
        ax.set(title=ds, xlabel=xlabel, ylabel="test accuracy (%)")
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(title="source (seeds)", fontsize="small")
    fig.suptitle(f"{title}\nmean over seeds, band = 95 % bootstrap CI")
    fig.tight_layout()
    return fig


def sweep_figure(frame: pd.DataFrame, key: str) -> plt.Figure:
    """Test accuracy (non-diverged, mean with CI bars) and divergence rate against the swept value, per arm."""
    fig, (acc_ax, div_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    numeric = pd.to_numeric(frame["value"], errors="coerce")
    for arm, g in frame.assign(_x=numeric).groupby("arm", sort=True):
        g = g.sort_values("_x")
        xs = g["_x"].to_numpy(dtype=float)
        mean = 100 * g["test_acc_mean"].to_numpy(dtype=float)
        err = np.vstack([mean - 100 * g["test_acc_low"].to_numpy(dtype=float),
                         100 * g["test_acc_high"].to_numpy(dtype=float) - mean])
        acc_ax.errorbar(xs, mean, yerr=np.nan_to_num(err), marker="o", capsize=3, label=str(arm))
        div_ax.plot(xs, 100 * g["diverged_fraction"].to_numpy(dtype=float), marker="o", label=str(arm))
    positive = numeric.notna().all() and (numeric > 0).all()
    for ax in (acc_ax, div_ax):
        if positive:  # T doubles: log axis, ticks labelled with the values themselves
            ax.set_xscale("log", base=2)
            ticks = sorted(set(numeric.tolist()))
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    acc_ax.set(ylabel="test accuracy (%), non-diverged runs", title=f"Few-step accuracy vs {key}")
    div_ax.set(ylabel="runs diverged (%)", title=f"Divergence vs {key}", ylim=(-5, 105))
    acc_ax.legend(fontsize=8)
    fig.tight_layout()
    return fig



# sample grids: one PNG per source, under a file name any label maps to safely and distinctly


def sample_file_names(sources) -> dict[str, str]:
    """Source label -> ``samples_<safe name>.png``, distinct even where two labels have the same safe name or
    differ only in case (``"a b"`` / ``"a_b"``, ``"A"`` / ``"a"``): those get ``-<hash of the label>`` too.
    A label with a unique safe name keeps its plain name."""
    safe = {str(s): safe_name(s) for s in sources}
    taken: dict[str, int] = {}
    for name in safe.values():
        taken[name.lower()] = taken.get(name.lower(), 0) + 1
    names = {s: (n if taken[n.lower()] == 1 else f"{n[:NAME_LIMIT]}-{text_hash(s)}") for s, n in safe.items()}
    seen: set[str] = set()
    for s in sorted(names):  # (a label that happens to equal another's disambiguated name)
        base, name, k = names[s], names[s], 1
        while name.lower() in seen:
            name, k = f"{base}-{k}", k + 1
        seen.add(name.lower())
        names[s] = name
    return {s: f"samples_{n}.png" for s, n in names.items()}


def _to_image(x: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(C, H, W) in [0, 1] -> something imshow takes, and the colormap (gray for 1 channel)."""
    x = np.clip(np.asarray(x, dtype=float), 0.0, 1.0)
    if x.shape[0] == 1:
        return x[0], "gray"
    if x.shape[0] == 3:
        return np.transpose(x, (1, 2, 0)), None
    raise ValueError(f"sample images must have 1 or 3 channels, got {x.shape[0]}")


def samples_grid(source: str, images: np.ndarray, steps: list[int] | None) -> plt.Figure:
    """Grid of learned samples: one column per class, one row per recorded inner step (paper Fig. 6).

    Drawn as one mosaic image in one axes (a subplot per sample cost ~0.5 s per figure: a tenth of the smoke
    run), with a one-pixel gap between samples; the x tick labels are the class indices, the y tick labels
    ``"step k"`` (``"row i"`` if ``steps`` is missing or has the wrong length). 1-channel images are drawn in
    gray, 3-channel as RGB; values clipped to [0, 1].
    """
    images = np.asarray(images)
    if images.ndim != 5:
        raise ValueError(f"samples[{source!r}] must be (rows, classes, C, H, W), got shape {images.shape}")
    n_rows, n_cls = images.shape[:2]
    labels = [f"step {k}" for k in steps] if steps is not None and len(steps) == n_rows else None
    labels = labels or [f"row {i}" for i in range(n_rows)]
    tiles = [[_to_image(images[r, c]) for c in range(n_cls)] for r in range(n_rows)]
    cmap = tiles[0][0][1]
    h, w = tiles[0][0][0].shape[:2]
    gap = 1
    shape = (n_rows * (h + gap) - gap, n_cls * (w + gap) - gap) + tiles[0][0][0].shape[2:]
    mosaic = np.ones(shape, dtype=np.float32)  # white gaps
    for r in range(n_rows):
        for c in range(n_cls):
            mosaic[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = tiles[r][c][0]
    cell = min(1.0, 24.0 / max(n_cls, 1))
    fig, ax = plt.subplots(figsize=(cell * n_cls + 1.0, cell * n_rows + 0.8))
    ax.imshow(mosaic, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([c * (w + gap) + (w - 1) / 2 for c in range(n_cls)], [str(c) for c in range(n_cls)], fontsize=8)
    ax.set_yticks([r * (h + gap) + (h - 1) / 2 for r in range(n_rows)], labels, fontsize=8)
    ax.tick_params(length=0)
    ax.xaxis.tick_top()
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(f"Learned samples: {source} (columns = class, rows = inner step)", fontsize=10)
    fig.tight_layout()
    return fig


def samples_figure(source: str, images: np.ndarray, steps: list[int] | None, path: Path) -> Path:
    """Write :func:`samples_grid` to ``path``."""
    return save_figure(samples_grid(source, images, steps), path)



# --------------------------------------------------------------------------------------------- NAS
def nas_scatter_figure(archs: pd.DataFrame, metrics: pd.DataFrame, target: str) -> plt.Figure:
    """One panel per proxy: its score against the ground truth of every architecture, the true top
    :data:`TOP_FRACTION` in red."""
    labels = list(metrics["proxy"])
    cols = min(4, len(labels))
    rows = math.ceil(len(labels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.4 * rows), squeeze=False)
    truth = 100 * archs[target].to_numpy(float)
    k = max(1, round(TOP_FRACTION * len(truth)))
    top = np.zeros(len(truth), bool)
    top[np.argsort(-truth, kind="stable")[:k]] = True
    for ax, (_, m) in zip(axes.flat, metrics.iterrows()):
        score = archs[f"score:{m.proxy}"].to_numpy(float)
        finite = np.isfinite(score)
        ax.scatter(score[finite & ~top], truth[finite & ~top], s=12, alpha=0.6, label="others")
        ax.scatter(score[finite & top], truth[finite & top], s=22, color="tab:red", label=f"true top {k}")
        size = np.abs(score[finite])
        if size.min() > 0 and size.max() / size.min() > 1e3:  # orders of magnitude apart (synflow; jacob_cov's
            if (score[finite] > 0).all():                      # near-singular nets score ~ -1/k = -1e5)
                ax.set_xscale("log")
            else:
                ax.set_xscale("symlog", linthresh=size.min())
        ax.set_title(f"{m.proxy}  ρ={m.spearman:.2f}", fontsize=9)
        ax.set_xlabel("proxy score", fontsize=8)
        ax.set_ylabel(f"ground truth {target} (%)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(labels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Proxy score vs ground truth (red: true top 10 %)")
    fig.tight_layout()
    return fig


def nas_cost_figure(metrics: pd.DataFrame, search: pd.DataFrame, gt_cpu_seconds: float, target: str) -> plt.Figure:
    """Left: Spearman vs CPU cost per architecture. Right: ground truth of the random-search pick vs the whole
    search's cost (setup + N architectures), one line per proxy through the budgets."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 5.5))
    colors = dict(zip(metrics["proxy"], plt.cm.tab20(np.linspace(0, 1, max(len(metrics), 1)))))
    for _, m in metrics.iterrows():
        err = [[m.spearman - m.spearman_low], [m.spearman_high - m.spearman]] if np.isfinite(m.spearman_low) else None
        x = max(m.cpu_seconds_per_arch, 1e-6)
        left.errorbar(x, m.spearman, yerr=err, fmt="o", capsize=3, color=colors[m.proxy])
        left.annotate(m.proxy, (x, m.spearman), fontsize=7, xytext=(4, 3), textcoords="offset points")
    left.axvline(gt_cpu_seconds, color="gray", linestyle="--", label="ground truth (per seed)")
    left.set(xscale="log", xlabel="CPU seconds per architecture (log)", ylabel="Spearman ρ with ground truth",
             title="Rank quality vs cost (error bars: 95 % bootstrap CI)")
    left.legend(fontsize=8)
    for label, g in search.groupby("proxy", sort=False):
        g = g.sort_values("budget")
        if label == RANDOM:   # costs nothing: a reference level, not a point on a log axis
            right.axhline(100 * g["mean"].mean(), color="gray", linestyle="--", label=label)
            continue
        style = {"color": "black", "linestyle": "--"} if label == ORACLE else {"color": colors[label]}
        right.plot(g["search_seconds"].clip(lower=1e-6), 100 * g["mean"], marker="o", markersize=3, label=label,
                   **style)
    right.set(xscale="log", xlabel="cost of the whole search: setup + N architectures (s, log)",
              ylabel=f"ground truth {target} of the pick (%)",
              title="Random-search accuracy vs search cost (points: budgets N)")
    right.legend(fontsize=7, ncol=2)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def nas_search_figure(search: pd.DataFrame, target: str) -> plt.Figure:
    """Ground truth of each proxy's random-search pick against the budget N, with its bootstrap band."""
    fig, ax = plt.subplots(figsize=(8, 5))
    groups = list(search.groupby("proxy", sort=False))
    colors = plt.cm.tab20(np.linspace(0, 1, max(len(groups) - 2, 1)))   # > 10 proxies: no repeated colours
    for i, (label, g) in enumerate(groups):
        g = g.sort_values("budget")
        style = {"color": colors[i % len(colors)]}
        if label in (ORACLE, RANDOM):
            style = {"color": "black" if label == ORACLE else "gray", "linestyle": "--"}
        ax.plot(g["budget"], 100 * g["mean"], marker="o", markersize=3, label=label, **style)
        ax.fill_between(g["budget"], 100 * g["low"], 100 * g["high"], color=style["color"], alpha=0.08, linewidth=0)
    budgets = sorted(search["budget"].unique())
    ax.set(xscale="log", xlabel="search budget N (random candidates)", ylabel=f"ground truth {target} of pick (%)",
           title="Random-search NAS: the proxy's pick of N candidates\n(mean over repeats, band: 95 % bootstrap CI)")
    ax.set_xticks(budgets)
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------- tune
def tune_loss_box_plot(trials: pd.DataFrame, cap: float) -> plt.Figure:
    """Paper Fig. 2: final validation loss per arm, a box over all trials and every trial as a point; diverged
    trials are red crosses (at their recorded value, capped at ``cap``)."""
    arms = list(dict.fromkeys(trials["arm"]))
    fig, ax = plt.subplots(figsize=(2.2 + 1.8 * len(arms), 4.5))
    ax.boxplot([trials.loc[trials["arm"] == a, "value"].to_numpy(dtype=float) for a in arms],
               showfliers=False, widths=0.5)
    ax.set_xticks(range(1, len(arms) + 1), arms)
    rng = np.random.default_rng(0)
    for i, arm in enumerate(arms, start=1):
        g = trials[trials["arm"] == arm]
        xs = i + rng.uniform(-0.12, 0.12, len(g))
        diverged = (g["status"] == Status.DIVERGED.value).to_numpy()
        ax.scatter(xs[~diverged], g["value"].to_numpy(dtype=float)[~diverged], s=18, color="k", alpha=0.7,
                   zorder=3, label="trial" if i == 1 else None)
        if diverged.any():
            ax.scatter(xs[diverged], g["value"].to_numpy(dtype=float)[diverged], s=40, marker="x", color="red",
                       zorder=4, label="diverged")
    ax.axhline(cap, color="red", linestyle=":", linewidth=1, label=f"divergence cap {cap:g}")
    ax.set(ylabel="final validation loss (lower is better)", title="Hyperparameter sensitivity (all tuning trials)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
    ax.grid(alpha=0.3, axis="y")
    handles, labels = ax.get_legend_handles_labels()
    by_label = dict(zip(labels, handles))
    ax.legend(by_label.values(), by_label.keys(), fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------- leaderboard
def pareto_figure(rows: pd.DataFrame, title: str) -> plt.Figure | None:
    """Accuracy (mean with its CI) against meta-training compute of one leaderboard table's rows (the
    leaderboard frame's columns), the Pareto front in red; None when no row has both numbers."""
    known = [r for r in rows.itertuples()
             if not math.isnan(r.meta_train_flops) and not math.isnan(r.test_acc_mean)]
    if not known:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for r in known:
        mean = r.test_acc_mean
        low = mean - (r.test_acc_ci_low if not math.isnan(r.test_acc_ci_low) else mean)
        high = (r.test_acc_ci_high if not math.isnan(r.test_acc_ci_high) else mean) - mean
        ax.errorbar(r.meta_train_flops / 1e9, 100 * mean, yerr=[[100 * low], [100 * high]], fmt="o",
                    capsize=3, color="tab:red" if r.pareto else "tab:blue")
        ax.annotate(f"{r.suite}/{r.source}", (r.meta_train_flops / 1e9, 100 * mean), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    front = sorted((r for r in known if r.pareto), key=lambda r: r.meta_train_flops)
    ax.plot([r.meta_train_flops / 1e9 for r in front], [100 * r.test_acc_mean for r in front], "--",
            color="tab:red", drawstyle="steps-post", label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("meta-training compute per seed (GFLOP, FlopCounterMode)")
    ax.set_ylabel("test accuracy after the last inner step (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------- tuning stage
TUNING_MARKERS = {"complete": ("o", "tab:blue"), "pruned": ("x", "tab:gray"), "diverged": ("v", "tab:red"),
                  "stopped by the budget": ("s", "tab:orange")}


def tuning_trials_figure(tuning: pd.DataFrame) -> plt.Figure:
    """A fewstep suite's tuning stage, one panel per tuned arm: every trial's validation accuracy (at the
    checkpoint where it stopped) against the share of the arm's trial horizon it reached, marked by status
    (complete, pruned, diverged, stopped by the budget); the dashed line is 1 point below the best. ``tuning``:
    the stage's per-arm frame (``tgbench.tuning.tuning_frame``: ``trial_val_acc``, ``trial_outer_iterations``,
    ``trial_status`` JSON lists, ``outer_iterations_per_trial``, ``best_val_acc``)."""
    import json

    arms = [r for r in tuning.itertuples() if r.trials > 0]
    fig, axes = plt.subplots(1, max(1, len(arms)), figsize=(3.2 * max(1, len(arms)), 3.2), squeeze=False,
                             sharey=True)
    for ax, row in zip(axes[0], arms):
        acc = 100 * np.asarray(json.loads(row.trial_val_acc), dtype=float)
        reached = np.asarray(json.loads(row.trial_outer_iterations), dtype=float) / row.outer_iterations_per_trial
        status = json.loads(row.trial_status)
        for name, (marker, colour) in TUNING_MARKERS.items():
            picked = [i for i, s in enumerate(status) if s == name]
            if picked:
                ax.scatter(reached[picked], acc[picked], marker=marker, color=colour, label=name)
        if not math.isnan(row.best_val_acc):
            ax.axhline(100 * row.best_val_acc - 1, color="tab:green", lw=0.8, ls="--", label="best − 1 pt")
        ax.set(title=str(row.arm), xlabel="share of the trial horizon reached", xlim=(-0.05, 1.05))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy (%)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------- few-step: compute
def _compute_band(ax, part: pd.DataFrame, x: str, y: str, label: str) -> None:
    """Mean line and 95 % CI band over seeds of ``y`` against cumulative compute ``x``: the seeds' curves are
    read on the points they all cover (``stats.common_grid``), since their compute differs (wall seconds)."""
    curves = [(g[x].to_numpy(float), g[y].to_numpy(float)) for _, g in part.groupby("seed", sort=True)]
    grid = stats.common_grid(curves)
    grid = grid[grid > 0]   # a log axis: the check before any meta-training (compute 0) is not drawn
    if grid.size == 0:
        return
    mean, low, high = stats.mean_ci_columns(stats.curves_on_grid(curves, grid))
    (line,) = ax.plot(grid, 100 * mean, marker="o" if grid.size < 3 else None, markersize=4,
                      label=f"{label} (n={len(curves)})")
    ax.fill_between(grid, 100 * low, 100 * high, color=line.get_color(), alpha=0.2, linewidth=0)


def compute_curves_figure(long: pd.DataFrame, axes: dict[str, str], labels: dict[str, str]) -> plt.Figure:
    """Validation and test accuracy against cumulative meta-training compute: one row per resolved dataset;
    panels against FLOPs where the dataset's records have them (``axes[dataset] == "flops"``), and always against
    wall seconds. ``long``: ``dataset_resolved, source, seed, val_acc, test_acc, flops, seconds`` of complete
    cells; ``labels``: axis -> its name."""
    panels = {ds: ([("flops", m) for m in ("val_acc", "test_acc")] if axis == "flops" else [])
              + [("seconds", m) for m in ("val_acc", "test_acc")] for ds, axis in axes.items()}
    ncols = max(len(p) for p in panels.values())
    fig, grid = plt.subplots(len(panels), ncols, figsize=(5 * ncols, 4 * len(panels)), squeeze=False)
    for row, (ds, wanted) in zip(grid, sorted(panels.items())):
        data = long[long["dataset_resolved"] == ds]
        for ax, (x, metric) in zip(row, wanted):
            for source, part in data.groupby("source", sort=True):
                _compute_band(ax, part, x, metric, str(source))
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # (labelled minor ticks overlap)
            ax.set(title=f"{ds}: {'validation' if metric == 'val_acc' else 'test'}",
                   xlabel=f"cumulative {labels[x]} (log)", ylabel=f"{metric.split('_')[0]} accuracy (%)")
            ax.grid(alpha=0.3)
            if ax.get_lines():
                ax.legend(title="source (seeds)", fontsize="small")
        for ax in row[len(wanted):]:
            ax.axis("off")
    fig.suptitle("Accuracy during meta-training against its compute\nmean over seeds, band = 95 % bootstrap CI")
    fig.tight_layout()
    return fig
