"""A fewstep suite's data ceiling alone: its evaluation learner trained to convergence on the real training split
(``tgbench.ceiling``: Adam, best-validation epoch), without running the suite's cells — how much headroom a dataset
leaves any teaching method. ``tgbench run`` computes the same row once per store; this computes (or reads back)
only it and prints each seed's accuracies and their mean. Run from anywhere:

    python scripts/data_ceiling.py mnist_fewstep --profile cpu --storage sqlite:////tmp/ceiling.db
"""
from __future__ import annotations

import argparse
import statistics

from tgbench.ceiling import ceiling_records, describe_schedule, ceiling_schedule, ensure_ceiling
from tgbench.data import load_dataset
from tgbench.store import Store
from tgbench.suite.loading import load_suite
from tgbench.suite.names import resolve_suite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", help="suite YAML file or installed suite name")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--storage", required=True, help="the store to compute into or read from (an Optuna URL)")
    args = parser.parse_args()
    suite = load_suite(resolve_suite(args.suite), args.profile, [])
    dataset = load_dataset(suite.dataset.name, download=suite.dataset.download, fallback=suite.dataset.fallback,
                           seed=0)
    store = Store(args.storage)
    ensure_ceiling(store, suite, args.profile, dataset)
    records = ceiling_records(store, suite, args.profile, dataset.resolved)
    print(f"{suite.name} @ {args.profile} on {dataset.resolved} ({len(dataset.train)} train examples), "
          f"{describe_schedule(ceiling_schedule(args.profile))}:")
    for record in records:
        print(f"  seed {record.seed}: test {100 * record.test_acc:.2f} %, val {100 * record.val_acc:.2f} % "
              f"(best epoch {record.best_epoch:.0f} of {record.epochs_run:.0f})")
    print(f"  mean test {100 * statistics.mean(r.test_acc for r in records):.2f} %")


if __name__ == "__main__":
    main()
