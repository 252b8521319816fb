#!/usr/bin/env bash
# Start, or resume, a long suite run in the background (issue 28's headline and generator-size runs): hours of
# CPU carried across interruptions by the store's resume and the cells' saved states (`outer.save_every`).
#
#   scripts/long_run.sh SUITE [PROFILE] [REVISION] [JOBS]      e.g. scripts/long_run.sh fashion_generator_size
#   scripts/long_run.sh --status [SUITE [PROFILE]]                 (no SUITE: every run under the runs folder)
#   scripts/long_run.sh --move-to REVISION SUITE [PROFILE]       (a stopped run's code to REVISION; see below)
#
# Everything lives OUTSIDE the checkout, under ${TGBENCH_RUNS:-~/runs}/SUITE-PROFILE/:
#   code/     a clone of this repository at one revision (REVISION, default HEAD; kept once the run exists,
#             revisions.log says which and when),
#   venv/     a virtual environment with that clone installed (pip takes torch from local disk where it can),
#   store.db  the experiment store, artifacts/ the teachers and saved states, report/ the report, run.log.
# Running the same command again (on this machine, after a stop, a kill or a reboot) resumes the run where its
# store and saved states left it; while it is running, the command says so and starts nothing. JOBS (default 2)
# worker processes at one torch thread each: two cells side by side on a 2-core machine. The run starts at the
# lowest CPU priority (nice ${TGBENCH_NICE:-19}, for the process and its scheduling group): the machine's other
# work (tests, CI, a session's commands) goes first and the run takes the idle cores, so it need not be stopped
# for them (timings still need it paused: kill -STOP / -CONT -PGID).
# --move-to carries a stopped run on at another revision, for a fix that changes no number of it (a bug in how
# it resumes, say): every record in the store names the revision that wrote it (the report lists them all), a
# tuning study refuses to go on under another configuration hash, and a saved state that no longer fits its
# cell is ignored (that cell starts again), so a move that did change the experiment shows rather than mixes.
set -euo pipefail

if [ "${1:-}" = "--move-to" ]; then
    [ -n "${3:-}" ] || { echo "usage: scripts/long_run.sh --move-to REVISION SUITE [PROFILE]" >&2; exit 2; }
    revision=$2
    root="${TGBENCH_RUNS:-$HOME/runs}/$3-${4:-cpu}"
    [ -d "$root/code" ] || { echo "long_run.sh: no run at $root" >&2; exit 2; }
    if [ -f "$root/pid" ] && kill -0 "$(cat "$root/pid")" 2>/dev/null; then
        echo "long_run.sh: $root is running (pid $(cat "$root/pid")): stop it first (kill -TERM -$(cat "$root/pid"))" >&2
        exit 2
    fi
    repo="$(cd "$(dirname "$0")/.." && pwd)"
    sha="$(git -C "$repo" rev-parse "$revision")"
    old="$(git -C "$root/code" rev-parse HEAD)"
    git -C "$root/code" fetch -q "$repo" "$sha"
    git -C "$root/code" checkout -q --detach "$sha"
    "$root/venv/bin/pip" install -q -e "$root/code" > "$root/pip.log" 2>&1   # (its dependencies may have changed)
    echo "$(date -u +%FT%TZ) moved from $old to $sha" >> "$root/revisions.log"
    echo "$(basename "$root"): code moved from ${old:0:7} to ${sha:0:7}; resume it with: $0 $3 ${4:-cpu}"
    exit 0
fi

if [ "${1:-}" = "--status" ] && [ -z "${2:-}" ]; then
    # every run under the runs folder, one after another
    for dir in "${TGBENCH_RUNS:-$HOME/runs}"/*-*/; do
        [ -d "$dir/code" ] || continue
        name="$(basename "$dir")"
        echo "== ${name%-*} @ ${name##*-}"
        "$0" --status "${name%-*}" "${name##*-}"
    done
    exit 0
fi
if [ "${1:-}" = "--status" ]; then
    root="${TGBENCH_RUNS:-$HOME/runs}/$2-${3:-cpu}"
    if [ -f "$root/pid" ] && kill -0 "$(cat "$root/pid")" 2>/dev/null; then echo "running (pid $(cat "$root/pid"))"
    else echo "not running"; fi
    [ -f "$root/revisions.log" ] && cat "$root/revisions.log"
    [ -f "$root/run.log" ] && tail -n 5 "$root/run.log"
    # how far each unfinished cell got: its last saved state (every outer.save_every iterations)
    if [ -x "$root/venv/bin/python" ] && [ -d "$root/artifacts/saved_states" ]; then
        "$root/venv/bin/python" - "$root/artifacts/saved_states" <<'PY'
import sys, time
from pathlib import Path
import torch
for path in sorted(Path(sys.argv[1]).glob("*/*.pt")):
    curve = torch.load(path, map_location="cpu", weights_only=True)["state"]["loop"]["curve"]
    last = curve[-1] if curve else {}
    age = (time.time() - path.stat().st_mtime) / 60
    print(f"saved state {path.stem}: iteration {last.get('outer_iter', 0)}, val acc {last.get('val_acc', float('nan')):.4f}"
          f" ({age:.0f} min ago)")
PY
    fi
    exit 0
fi

suite=${1:?usage: scripts/long_run.sh SUITE [PROFILE] [REVISION] [JOBS]}
profile=${2:-cpu}
revision=${3:-HEAD}
jobs=${4:-2}
repo="$(cd "$(dirname "$0")/.." && pwd)"
root="${TGBENCH_RUNS:-$HOME/runs}/$suite-$profile"
mkdir -p "$root"

if [ -f "$root/pid" ] && kill -0 "$(cat "$root/pid")" 2>/dev/null; then
    echo "$suite @ $profile is running already (pid $(cat "$root/pid")); log: $root/run.log"
    exit 0
fi
if [ ! -d "$root/code" ]; then
    # a clone, not a worktree: the run must not depend on the checkout it was started from (laid anew each session)
    sha="$(git -C "$repo" rev-parse "$revision")"
    git clone -q --no-local "$repo" "$root/code"
    git -C "$root/code" checkout -q --detach "$sha"
    echo "$(date -u +%FT%TZ) started at $sha" >> "$root/revisions.log"
fi
if [ ! -x "$root/venv/bin/tgbench" ]; then
    python3 -m venv "$root/venv"
    "$root/venv/bin/pip" install -q --upgrade pip
    "$root/venv/bin/pip" install -q -e "$root/code"
fi
echo "$suite @ $profile at revision $(git -C "$root/code" rev-parse --short HEAD), $jobs worker(s); log: $root/run.log"
cd "$root"
# setsid: the run outlives the shell that started it; one torch thread per worker process; nice: see above
OMP_NUM_THREADS=1 setsid nohup nice -n "${TGBENCH_NICE:-19}" "$root/venv/bin/tgbench" run "$root/code/tgbench/suites/$suite.yaml" \
    --profile "$profile" --storage "sqlite:///$root/store.db" --artifacts "$root/artifacts" --out "$root/report" \
    --jobs "$jobs" --no-progress >> "$root/run.log" 2>&1 < /dev/null &
echo $! > "$root/pid"
# setsid made the run a session of its own, and where the kernel groups sessions for scheduling (autogroup) a
# session's nice counts only inside it: the run's group would get half the CPU whatever its nice (measured: the
# tests under `.ci/run` took 11 min instead of 4:30 beside it). Lower the group's weight too, where there is one.
# (Once setsid has made the new session: before that, the file is this script's group.)
run=$!
for _ in $(seq 50); do [ "$(ps -o sid= -p "$run" | tr -d ' ')" = "$run" ] && break; sleep 0.1; done
[ -w "/proc/$run/autogroup" ] && echo "${TGBENCH_NICE:-19}" > "/proc/$run/autogroup" 2>/dev/null || true
