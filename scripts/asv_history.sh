#!/usr/bin/env bash
# Benchmark past revisions of main into results/asv/ (kept in git: the project's speed history on this machine).
#
#   scripts/asv_history.sh [--quick] REV...        e.g. scripts/asv_history.sh $(git rev-list -n 5 main)
#   scripts/asv_history.sh --compare OLD NEW       benchmark both (quick), then `asv compare OLD NEW`; the exit
#                                                  status is NEW's benchmarks' (.ci/run: HEAD~1 HEAD)
#   ASV_RESULTS=DIR ...                            results elsewhere than results/asv/ (CI: a scratch folder)
#
# Each revision is checked out into a temporary git worktree and benchmarked with *its own* benchmarks/ against
# *its own* code, in the current Python environment (`asv run --python=same`, the code put first on PYTHONPATH):
# no per-commit virtualenv, so no torch download. `--set-commit-hash` files the results under that revision, so
# `asv publish` / `asv compare` see a normal history. Run nothing else on the machine meanwhile (2 cores: another
# torch process slows small convolutions >10x); the numbers are this machine's (results/asv/<machine>/machine.json).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
results="$(realpath -m "${ASV_RESULTS:-$root/results/asv}")"   # (CI points this at a scratch folder)
quick=()
compare=()
if [ "${1:-}" = "--quick" ]; then quick=(--quick); shift; fi
if [ "${1:-}" = "--compare" ]; then quick=(--quick); compare=("$2" "$3"); shift; fi
[ $# -gt 0 ] || { echo "usage: $0 [--quick] REV... | --compare OLD NEW" >&2; exit 2; }
asv machine --yes --machine "${ASV_MACHINE:-reference-2core}" >/dev/null
scratch="$(mktemp -d)"
last_status=0
trap 'for w in "$scratch"/*/; do git -C "$root" worktree remove --force "$w" 2>/dev/null || true; done; rm -rf "$scratch"' EXIT
for rev in "$@"; do
    hash="$(git rev-parse "$rev")"
    tree="$scratch/${hash:0:10}"
    git worktree add -q --detach "$tree" "$hash"
    # the revision's own asv.conf.json, with results written here (asv resolves paths against the config file)
    python - "$tree/asv.conf.json" "$results" "$root/.asv/html" <<'PY'
import json, sys
path, results, html = sys.argv[1:4]
conf = json.load(open(path))
conf["results_dir"], conf["html_dir"] = results, html
json.dump(conf, open(path, "w"), indent=4)
PY
    echo "== asv run at ${hash:0:10} ($(git log -1 --format=%s "$hash" | cut -c1-70))" >&2
    status=0
    (cd "$tree" && PYTHONPATH="$tree${PYTHONPATH:+:$PYTHONPATH}" asv run --python=same "${quick[@]}" \
        --machine "${ASV_MACHINE:-reference-2core}" --set-commit-hash "$hash" --show-stderr) || status=$?
    if [ "$status" != 0 ]; then
        echo "warning: some benchmarks failed at ${hash:0:10} (asv exit $status; recorded as failed)" >&2
        last_status=$status
    else
        last_status=0
    fi
done
if [ ${#compare[@]} -eq 2 ]; then
    # report-only (machines are noisy); the exit status is the newer revision's benchmarks' (they must all run)
    echo "== asv compare ${compare[0]} ${compare[1]} (quick mode: one sample each; ratios are indicative only)"
    asv compare --config "$scratch/$(git rev-parse "${compare[1]}" | cut -c1-10)/asv.conf.json" \
        --machine "${ASV_MACHINE:-reference-2core}" "$(git rev-parse "${compare[0]}")" \
        "$(git rev-parse "${compare[1]}")" || echo "warning: asv compare failed" >&2
    exit "$last_status"
fi
