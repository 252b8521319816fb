#!/usr/bin/env bash
# Prepare, here, what benchmarks/gpu_check.sh needs on a lent GPU machine, which has PyTorch, pandas, SciPy,
# matplotlib, pytest, ... but no network and none of tgbench's other dependencies:
#   .whl/       wheels (Python 3.12, x86-64 Linux) of optuna, pydantic and what they need that is not there
#               (the versions installed in this environment, so that the GPU runs what the tests here ran);
#   gpu_data/   Fashion-MNIST's four IDX files (Debian's dataset-fashion-mnist) as torchvision lays them out,
#               for the paper profile's GTN cell on fashion_fewstep (--data-root gpu_data).
# Both are git-ignored; together ~40 MB, under the device tool's 64 MiB carry limit. Then, with the device tool:
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl", "gpu_data"], timeout_s=540)
# and commit $OUT/gpu.txt as results/performance/gpu.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
# what the GPU machine's image lacks (the device tool's KINDS.md lists what it has), with its needs
packages="optuna alembic colorlog mako sqlalchemy pydantic pydantic-core annotated-types typing-inspection"
rm -rf .whl && mkdir .whl
for name in $packages; do
    version="$("$python" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")"
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "$name==$version"
done
fashion=/usr/share/datasets/fashion-mnist   # (tgbench.data.DEBIAN_FASHION_MNIST)
if [ -d "$fashion" ]; then
    rm -rf gpu_data && mkdir -p gpu_data/FashionMNIST/raw && cp "$fashion"/*-ubyte.gz gpu_data/FashionMNIST/raw/
else
    echo "note: no $fashion (apt-get install dataset-fashion-mnist): gpu_check.sh will time mnist_fewstep instead" >&2
fi
du -sh .whl gpu_data 2>/dev/null || true
