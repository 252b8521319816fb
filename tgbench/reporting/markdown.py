"""Markdown building blocks shared by every report: tables, code spans, numbers, intervals, the provenance header.

Every interval any report prints goes through :func:`fmt_ci`; a report picks how (percent, digits, sign, what a
missing value reads as) with a :class:`CIFormat`, so "97.31 % [96.90, 97.72]" in the few-step table and
"0.812 [0.700, 0.901]" in the NAS table are the same code with different presets.
"""
from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from tgbench.stats import MeanCI

# --------------------------------------------------------------------------------------------- tables


def escape_cell(text: Any) -> str:
    """Markdown table cell: backslashes and pipes escaped, line breaks and other control characters flattened
    to spaces, so no text (a label read back from a store, a suite name) can end a cell or add a row."""
    s = str(text).replace("\\", "\\\\").replace("|", "\\|")
    return "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in s)


def md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """Lines of a Markdown table; every cell through :func:`escape_cell`."""
    lines = ["| " + " | ".join(escape_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(escape_cell(c) for c in r) + " |" for r in rows]
    return lines


def code(text: Any) -> str:
    """An inline code span that survives backticks in ``text`` (a command line may hold some)."""
    s = str(text)
    ticks = "``" if "`" in s else "`"
    pad = " " if ticks == "``" else ""
    return f"{ticks}{pad}{s}{pad}{ticks}"


def figure_links(figures: Iterable[str]) -> list[str]:
    """``![stem](file)`` per figure file name, in order."""
    return [f"![{Path(f).stem}]({f})" for f in figures]


def document(lines: list[str]) -> str:
    """The text of a report file: its lines, exactly one newline at the end."""
    return "\n".join(lines).rstrip("\n") + "\n"


# --------------------------------------------------------------------------------------------- numbers


@dataclass(frozen=True)
class CIFormat:
    """How :func:`fmt_ci` prints an estimate and its interval.

    ``scale`` multiplies every number (100: fractions as percent), ``digits`` after the point, ``unit`` follows
    the estimate (``" %"``), ``signed`` prints ``+`` on positive numbers (differences). ``missing`` is the whole
    text when there is no estimate. ``each_bound``: print every number on its own, ``n/a`` where it is missing
    (``"+1.20 [n/a, n/a]"``), instead of the default one ``[n/a]`` for an estimate without an interval.
    """

    scale: float = 1.0
    digits: int = 3
    unit: str = ""
    signed: bool = False
    missing: str = "n/a"
    each_bound: bool = False

    def number(self, value: float) -> str:
        if math.isnan(value):
            return "n/a"
        sign = "+" if self.signed else ""
        return f"{self.scale * value:{sign}.{self.digits}f}"


# accuracies as fractions -> "97.31 % [96.90, 97.72]", "—" with no complete cell (few-step tables, leaderboard)
PERCENT = CIFormat(scale=100, digits=2, unit=" %", missing="—")
# differences of accuracy in percentage points -> "+1.20 [-0.40, +2.80]" (few-step pairwise comparisons)
PERCENT_POINTS_DIFFERENCE = CIFormat(scale=100, digits=2, signed=True, each_bound=True)
# rank statistics -> "0.812 [0.700, 0.901]" (NAS proxy quality)
RANK_STATISTIC = CIFormat(digits=3)
# accuracies as fractions, printed as percent without the sign -> "97.31 [96.90, 97.72]" (NAS random search)
PERCENT_BARE = CIFormat(scale=100, digits=2)


def fmt_ci(mean: float, low: float, high: float, fmt: CIFormat) -> str:
    """An estimate with its interval: ``"<mean><unit> [<low>, <high>]"``; ``fmt.missing`` without an estimate,
    ``"<mean><unit> [n/a]"`` without an interval (one seed, fewer than 3 architectures)."""
    if fmt.each_bound:
        return f"{fmt.number(mean)}{fmt.unit} [{fmt.number(low)}, {fmt.number(high)}]"
    if math.isnan(mean):
        return fmt.missing
    if math.isnan(low) or math.isnan(high):
        return f"{fmt.number(mean)}{fmt.unit} [n/a]"
    return f"{fmt.number(mean)}{fmt.unit} [{fmt.number(low)}, {fmt.number(high)}]"


def fmt_pct_ci(ci: MeanCI) -> str:
    """A mean with its CI (``tgbench.stats.mean_ci``) of fractions in the :data:`PERCENT` preset: ``"97.31 % [96.90, 97.72]"``,
    ``"—"`` with no data, ``"[n/a]"`` with one value."""
    return fmt_ci(ci.mean, ci.low, ci.high, PERCENT)


def fmt_p(p: float) -> str:
    """A p-value to three significant digits; ``n/a`` where the test was impossible."""
    return "n/a" if math.isnan(p) else f"{p:.3g}"


def fmt_seconds(s: float) -> str:
    """Seconds to three significant digits below 100 s, whole seconds above (no exponent either way)."""
    return f"{s:.3g}" if s < 100 else f"{s:.0f}"


def fmt_gflops(flops: float) -> str:
    """FLOPs as GFLOP: thousands separators from 100 GFLOP, three significant digits below; ``n/a`` unknown."""
    if math.isnan(flops):
        return "n/a"
    giga = flops / 1e9
    return f"{giga:,.0f}" if giga >= 100 else f"{giga:.3g}"


# --------------------------------------------------------------------------------------------- provenance

# the keys header_lines prints first, in this order (under these names); every other key follows, sorted
HEADER_KEYS = ("suite", "profile", "revision", "command", "overrides", "machine", "created")


def overrides_text(overrides: Iterable[str]) -> str:
    """A suite's ``--set KEY=VALUE`` overrides as the header lists them: one code span each."""
    return ", ".join(code(f"--set {o}") for o in overrides)


def header_lines(meta: Mapping[str, Any]) -> list[str]:
    """Title and the provenance list of a suite report (few-step, NAS): the fixed keys first, then any other
    meta keys sorted. ``meta`` is ``tgbench.provenance.Provenance.as_meta()`` plus the kind's own facts."""
    g = meta.get
    lines = [f"# tgbench report: {g('suite', '?')}", ""]
    lines += [
        f"- **suite**: {g('suite', '?')}",
        f"- **profile**: {g('profile', '?')}",
        f"- **revision**: {code(g('revision', '?'))}",
        f"- **command**: {code(g('command', '?'))}",
    ]
    if g("overrides"):  # the suite's `--set KEY=VALUE` overrides (tgbench.suite.loading), part of its cells' hashes
        lines.append(f"- **overrides**: {overrides_text(g('overrides'))}")
    lines += [
        f"- **machine**: {g('machine', '?')}",
        f"- **date**: {g('created', '?')}",
    ]
    lines += [f"- **{k}**: {meta[k]}" for k in sorted(meta, key=str) if k not in HEADER_KEYS]
    return lines + [""]
