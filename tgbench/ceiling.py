"""The data ceiling of a fewstep suite: its evaluation learner trained to convergence on the whole real training
split, so a report shows how much headroom any teaching method had left.

What "to convergence" means here is the NAS ground-truth protocol, with the same trainer
(:func:`tgbench.proxies.train_real`, which ``tgbench.kinds.nas_proxy`` trains its ground truth with): Adam on
shuffled full batches, validation (and test) accuracy after every epoch, stopped when validation accuracy has not
improved for ``patience`` epochs (at most ``epochs``), and the test accuracy *at the best-validation epoch*
reported (model selection on validation only). Scored with the learner's BN statistics of its last batch, as
every learner of the lesson-statistics protocol is.

The schedule is fixed per profile (:data:`SCHEDULES`, no YAML): ``smoke`` trains one epoch (seconds, so the row
appears in every smoke report; one seed), ``cpu`` up to 20 epochs with patience 3 (2 seeds), ``paper`` up to 30 with patience 5
(3 seeds). It is computed once per
(learner, resolved dataset, schedule) — :func:`ceiling_hash`, its own key, part of no cell's hash — and stored as
:class:`tgbench.records.DataCeiling` records, one per seed, in the study ``data_ceiling`` that every suite shares:
``run_fewstep`` trains the seeds not stored yet (resumable; another worker's claim is left to it) and the report
reads them back (none stored: the report says "not computed").
"""
from __future__ import annotations

import time

from tgbench import device as devices
from tgbench import interrupt
from tgbench.suite.schema import GroundTruthSchedule, Suite
from tgbench.data import Dataset
from tgbench.nn import LearnerSpec
from tgbench.proxies import train_real
from tgbench.records import DataCeiling, Status, cell_key
from tgbench.store import Store, config_hash

CEILING_STUDY = "data_ceiling"   # shared by every suite: one ceiling per (learner, data, schedule)
CEILING_KEY = "ceiling"          # cell keys ceiling|seed=<n>
TRAINER = "adam/train_real/v1"   # bump when train_real changes what it computes

# Adam at the ground-truth defaults (lr 1e-3, batch 128). smoke: one epoch, so the row costs seconds. cpu: up to
# 20 epochs, stopped 3 epochs after validation last improved, 2 seeds — measured at one thread on this 2-core
# machine, the cpu-size learner takes ~55 s per Fashion-MNIST epoch (training + scoring 20k val/test images: 110 s
# for 2 epochs, reaching 89.2 % val), so at most ~37 min for both seeds, once per store. paper (GPU): up to 30
# epochs, patience 5, 3 seeds.
SCHEDULES: dict[str, GroundTruthSchedule] = {
    "smoke": GroundTruthSchedule(epochs=1, patience=None, seeds=1),
    "cpu": GroundTruthSchedule(epochs=20, patience=3, seeds=2),
    "paper": GroundTruthSchedule(epochs=30, patience=5, seeds=3),
}


def ceiling_schedule(profile: str) -> GroundTruthSchedule:
    return SCHEDULES.get(profile, SCHEDULES["cpu"])


def ceiling_spec(suite: Suite) -> LearnerSpec:
    """The suite's reference evaluation learner (its first evaluation architecture), at the suite's weight norm."""
    return suite.evaluation.learner_specs(suite.learner, None)[0]


def ceiling_hash(spec: LearnerSpec, dataset_resolved: str, schedule: GroundTruthSchedule) -> str:
    """What a ceiling seed's result depends on besides the seed: the learner, the data and the schedule."""
    return config_hash({"spec": spec.as_dict(), "data": dataset_resolved,
                        "schedule": schedule.model_dump(mode="json", exclude={"seeds"}), "trainer": TRAINER})


def describe_schedule(schedule: GroundTruthSchedule) -> str:
    stop = (f"early stopping on validation (patience {schedule.patience} epochs, at most {schedule.epochs})"
            if schedule.patience else f"{schedule.epochs} epoch(s), best validation epoch kept")
    return f"Adam lr {schedule.lr:g}, batch {schedule.batch_size}, {stop}"


def ceiling_records(store: Store, suite: Suite, profile: str, dataset_resolved: str) -> list[DataCeiling]:
    """The complete stored ceiling seeds of the suite's learner on ``dataset_resolved`` at ``profile``'s
    schedule, by seed; [] when none is stored (or the store has no ceiling study: older stores)."""
    if CEILING_STUDY not in store.study_names():
        return []
    schedule = ceiling_schedule(profile)
    chash = ceiling_hash(ceiling_spec(suite), dataset_resolved, schedule)
    wanted = {cell_key(CEILING_KEY, seed): {chash} for seed in range(schedule.seeds)}
    found = store.records(store.study(CEILING_STUDY, create=False), wanted)
    return sorted((r for r in found if isinstance(r, DataCeiling) and r.status == Status.COMPLETE),
                  key=lambda r: r.seed)


def ensure_ceiling(store: Store, suite: Suite, profile: str, dataset: Dataset, log=print) -> int:
    """Train every ceiling seed not stored yet (a seed another live worker holds is left to it); returns how many
    were trained now. A failure (or Ctrl-C) marks that seed failed, so the next run trains it again."""
    schedule, spec = ceiling_schedule(profile), ceiling_spec(suite)
    chash = ceiling_hash(spec, dataset.resolved, schedule)
    study = store.study(CEILING_STUDY)
    done = store.done_cells(study)
    todo = [seed for seed in range(schedule.seeds) if (cell_key(CEILING_KEY, seed), chash) not in done]
    if todo:
        log(f"data ceiling: {spec.describe()} on {dataset.resolved}, {describe_schedule(schedule)}; "
            f"{len(todo)} of {schedule.seeds} seed(s) to train (key {chash})")
    trained = 0
    for seed in todo:
        key = cell_key(CEILING_KEY, seed)
        trial = store.claim(study, key, chash, DataCeiling)
        if trial is None:   # stored meanwhile, or another worker trains it
            continue
        start = time.perf_counter()
        with store.failed_if_raised(study, trial, DataCeiling, key, chash):
            with store.heartbeat(trial):
                result = train_real(spec, dataset, schedule, seed)
            interrupt.check()  # a Ctrl-C Python dropped must not leave this seed stored as complete
        store.finish(study, trial, DataCeiling(
            cell=key, config_hash=chash, status=Status.COMPLETE, seed=seed, description=spec.describe(),
            spec=spec.as_dict(), dataset_resolved=dataset.resolved,
            schedule=schedule.model_dump(mode="json", exclude={"seeds"}), seconds=time.perf_counter() - start,
            test_acc_final=result["test_acc"], **result, **devices.facts(dataset.train.x.device)))
        trained += 1
    return trained
