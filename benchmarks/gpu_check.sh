#!/usr/bin/env bash
# The one GPU measurement of issue 15, prepared to run in <= 8 minutes on a lent GPU (the device tool's machine:
# torch preinstalled; optuna, pydantic, mlxtend and their dependencies carried as wheels in wheels/ and installed
# here without network). Writes everything to $OUT/gpu.txt; commit it as results/performance/gpu.txt.
#   pytest -m cuda                              the GPU tests (smoke suite, float64 finite differences, determinism)
#   benchmarks/compare.py --device cuda         sections 1, 2 and 5: tgbench vs the plain reference, same GPU
#   benchmarks/paper_cell.py --device cuda      the paper-profile GTN cell: s/iteration, curve, 2000-it estimate
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-results/performance}"
mkdir -p "$OUT"
log="$OUT/gpu.txt"
if [ -d wheels ]; then python -m pip install -q --no-index --find-links wheels -e ".[test]" >&2 || exit 1; fi
{
    echo "# benchmarks/gpu_check.sh at revision $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u +%FT%TZ)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
    echo; echo "## timeout 150 pytest -q -m cuda -rs"
    timeout 150 python -m pytest -q -m cuda -rs -p no:cacheprovider tests/test_devices.py 2>&1 | tail -15
    echo; echo "## timeout 150 python benchmarks/compare.py --device cuda --sections 1,2,5 --iters 3"
    timeout 150 python benchmarks/compare.py --device cuda --sections 1,2,5 --iters 3 2>&1
    echo; echo "## timeout 150 python -m benchmarks.paper_cell --device cuda --iterations 200 --eval-every 50"
    timeout 150 python -m benchmarks.paper_cell --device cuda --iterations 200 --eval-every 50 2>&1
} | tee "$log"
