"""``python -m tgbench``: the ``tgbench`` command (same arguments, same exit codes)."""
import sys

from tgbench.cli import run_and_exit

if __name__ == "__main__":
    sys.argv[0] = "tgbench"  # records and reports quote the command line: the one a reader can type again
    run_and_exit()
