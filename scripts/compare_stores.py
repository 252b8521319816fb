"""Do two stores hold the same numbers? Every trial both stores hold (same study, same cell key) is compared: its
config hash, Optuna value and params, and every recorded attribute both have, except timings and provenance
(seconds, dates, revision, host, worker, memory peaks, artifact ids). Attributes only one side records (a field a
later revision added) and trials only the newer store holds (a suite or a tuning claim added later) are listed,
not counted. Exit 1 when a shared trial differs or the older store holds a trial the newer lacks.

What issue 25 ("behaviour and every stored hash unchanged") was checked with: every shipped suite run at
``--profile smoke`` by the revision before the move and by the revision after, each into its own store, then

    python scripts/compare_stores.py sqlite:///before/store.db sqlite:///after/store.db

(A NAS proxy record's Optuna value is its scoring seconds: compared only through its scores.)
"""
from __future__ import annotations

import argparse
import math
import sys

import optuna

NOT_NUMBERS = ("seconds", "finished", "revision", "peak", "hostname", "command", "worker", "artifact", "versions",
               "claim", "heartbeat", "started", "datetime", "rss", "wall")


def trials(url: str) -> dict[tuple[str, object], dict]:
    """(study, cell key or trial number) -> what is compared of that trial."""
    out = {}
    for summary in optuna.get_all_study_summaries(url):
        for t in optuna.load_study(study_name=summary.study_name, storage=url).trials:
            proxy = t.user_attrs.get("kind") == "nas_proxy_scores"
            out[(summary.study_name, t.user_attrs.get("cell", t.number))] = {
                "state": t.state.name, "values": None if proxy else t.values, "params": t.params,
                "attrs": t.user_attrs, "hash": t.user_attrs.get("config_hash")}
    return out


def differences(a, b, path: str = ""):
    """Where ``a`` and ``b`` differ, over the keys both have (NaN equals NaN)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) & set(b), key=str):
            if not any(word in str(k) for word in NOT_NUMBERS):
                yield from differences(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from differences(x, y, f"{path}[{i}]")
    elif a != b and not (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
        yield f"{path}: {str(a)[:80]} != {str(b)[:80]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("older", help="storage URL of the older run")
    parser.add_argument("newer", help="storage URL of the newer run")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    old, new = trials(args.older), trials(args.newer)
    shared = sorted(set(old) & set(new), key=str)
    bad = [key for key in old if key not in new]
    for key in bad:
        print("only in the older store:", key)
    for key in sorted(set(new) - set(old), key=str):
        print("only in the newer store:", key)
    for key in shared:
        found = list(differences(old[key], new[key]))
        if found:
            bad.append(key)
            print("DIFFERS", key, *found[:12], sep="\n    ")
    print(f"{len(old)} trials in the older store, {len(new)} in the newer; {len(shared)} in both, "
          f"{len(shared) - len([k for k in bad if k in new])} of them with the same hash and numbers")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
