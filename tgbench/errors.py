"""Errors the CLI maps to exit codes.

`BadInput` (exit 2) is anything the user can fix: a config, a flag, missing data, an unknown name. Its
message is the whole story on one line, naming the file and the key at fault. Anything else is a bug or an
environment failure (exit 1).
"""


class BadInput(Exception):
    """User-fixable input problem; the CLI prints ``str(self)`` on one line and exits 2."""


class ConfigError(BadInput):
    """A suite YAML file (or profile override) does not validate."""


class UnknownName(BadInput):
    """A registry lookup failed; the message lists the valid choices and the closest match."""


class DataNotFound(BadInput):
    """A dataset is not on disk, could not be downloaded, and has no fallback."""


class Diverged(Exception):
    """Meta-training produced NaN/inf; the cell is recorded as diverged, the suite goes on."""


class CellsFailed(Exception):
    """Some cells of a suite raised (a plug-in's bug, ``sys.exit`` in a plug-in, an environment failure): each
    was marked failed in the store and the rest of the suite ran; the CLI prints this one line and exits 1."""

    def __init__(self, failures: dict[str, str]):
        self.failures = failures
        (cell, why), *rest = failures.items()
        more = f"; {len(rest)} more cell(s) failed: {', '.join(c for c, _ in rest[:5])}" if rest else ""
        if len(rest) > 5:
            more += ", ..."
        super().__init__(f"{why} in cell {cell}{more} (marked failed in the store; the other cells ran and the "
                         "report counts them; the next run retries them; rerun with TGBENCH_DEBUG=1 for the "
                         "traceback)")
