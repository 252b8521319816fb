#!/usr/bin/env bash
# The GPU measurement of issues 15 and 28, prepared to run in <= 8 minutes on a lent GPU (the device tool's
# machine: PyTorch there, no network; benchmarks/gpu_carry.sh prepares, here, the wheels in .whl/ and the
# Fashion-MNIST files in gpu_data/ that travel with it). Writes everything to $OUT/gpu.txt; commit it as
# results/performance/gpu.txt.
#   pytest -m cuda                              the GPU tests (smoke suite, float64 finite differences, determinism)
#   benchmarks/compare.py --device cuda         sections 1, 2 and 5: tgbench vs the plain reference, same GPU
#   benchmarks/paper_cell.py --device cuda      the paper profile's GTN cell on fashion_fewstep for 2,000 outer
#                                               iterations (stopped at 230 s of its loop if slower: it says how far
#                                               it got), its s/iteration and validation curve; mnist_fewstep
#                                               (mnist-5k) when the Fashion-MNIST files are not there
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-results/performance}"
mkdir -p "$OUT"
log="$OUT/gpu.txt"
if [ -d .whl ]; then   # the device tool's README: wheels into a folder of their own, found through PYTHONPATH
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl >&2 || exit 1
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
suite=mnist_fewstep; data=()
if [ -d gpu_data/FashionMNIST/raw ]; then suite=fashion_fewstep; data=(--data-root gpu_data)
elif [ -d /usr/share/datasets/fashion-mnist ]; then suite=fashion_fewstep; fi
{
    echo "# benchmarks/gpu_check.sh at revision $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u +%FT%TZ)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
    echo; echo "## timeout 100 pytest -q -m cuda -rs"
    timeout 100 python3 -m pytest -q -m cuda -rs -p no:cacheprovider tests/test_devices.py 2>&1 | tail -15
    echo; echo "## timeout 100 python3 benchmarks/compare.py --device cuda --sections 1,2,5 --iters 3"
    timeout 100 python3 benchmarks/compare.py --device cuda --sections 1,2,5 --iters 3 2>&1
    echo; echo "## timeout 270 python3 -m benchmarks.paper_cell --device cuda --suite $suite --iterations 2000" \
        "--eval-every 250 --time-limit 230 ${data[*]}"
    timeout 270 python3 -m benchmarks.paper_cell --device cuda --suite "$suite" --iterations 2000 --eval-every 250 \
        --time-limit 230 "${data[@]}" 2>&1
} | tee "$log"
