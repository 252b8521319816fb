"""``tgbench`` command line. Exit codes: 0 success, 2 bad input (one line naming the file and key), 1 anything
else, 130 interrupted by Ctrl-C, 143 by SIGTERM."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from tgbench import installed_version, interrupt
from tgbench.errors import BadInput, CellsFailed

SUITES_DIR = Path("suites")  # a folder of the user's own suites in the current directory (`tgbench list suites`)
MAX_SEEDS = 1000  # --seeds above this is a typo (each seed is a full meta-training per source), not a plan


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit 2 (no usage dump)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        print(f"tgbench: error: {self.prog}: {message}", file=sys.stderr)
        sys.exit(2)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", help="suite YAML file, or the name of an installed suite (tgbench list suites), e.g. "
                                 "mnist_fewstep; a file that exists wins over a name")
    p.add_argument("--profile", choices=("smoke", "cpu", "paper"),
                   help="profile to apply (default: cpu, or paper when CUDA is available)")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///results/tgbench.db, or $TGBENCH_STORAGE)")
    p.add_argument("--seeds", type=_seed_count, help=f"number of seeds, 1..{MAX_SEEDS} (overrides evaluation.seeds)")
    p.add_argument("--out", help="report directory (default: results/<suite>/<profile>/)")
    p.add_argument("--artifacts", help="directory of the teacher artifact store (default: next to the SQLite file)")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="auto (default: the first CUDA GPU, else the CPU), cpu, cuda or cuda:N "
                                    "(also $TGBENCH_DEVICE); with --jobs and several GPUs each worker gets one")


def _add_methods_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods-dir", action="append", default=[], metavar="DIR",
                   help="register the plug-ins of every *.py file in DIR (each declares METHODS, DATASETS and/or "
                        "PROXIES = {name: ...}); "
                        "repeatable")


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="override one suite setting after the profile is applied, e.g. --set outer.iterations=50 "
                        "or --set sources.gtn.params.noise_dim=64 (dotted key, YAML value; validated like the file; "
                        "part of the cells' config hash); repeatable")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _seed_count(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_SEEDS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_SEEDS}, got {value}")
    return value


def distinct_stores(urls: list[str] | None) -> list[str] | None:
    """``--storage`` values with repeats of one store dropped (``--storage A --storage ./A`` named the same
    SQLite file twice and doubled every leaderboard row); an SQLite file is the same store under any path."""
    if not urls:
        return urls
    seen: dict[str, str] = {}
    for url in urls:
        path = url.removeprefix("sqlite:///").split("?", 1)[0] if url.startswith("sqlite:///") else None
        seen.setdefault(os.path.realpath(path) if path else url, url)
    return list(seen.values())


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tgbench", description="Benchmark teaching-data methods under one few-step protocol.")
    parser.add_argument("--version", action="version", version=f"tgbench {installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a suite's unfinished cells, then write its report")
    _add_common(run)
    run.add_argument("--jobs", type=_positive_int, default=1, help="worker processes (default 1)")
    run.add_argument("--data-root", help="directory holding datasets (also $TGBENCH_DATA, ~/.cache/tgbench)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--log", action="append", default=[], choices=("tensorboard", "wandb"),
                     help="stream each cell's meta-loss, validation accuracy and samples to TensorBoard (event files "
                          "under the report directory) or Weights & Biases (offline unless logged in); repeatable")
    run.add_argument("--tf32", action="store_true", help="allow TF32 matmul/conv on CUDA (faster; changes the "
                                                         "numbers, so every record says so)")

    validate = sub.add_parser("validate", help="parse and validate a suite (every profile) without running it")
    validate.add_argument("suite", help="suite YAML file or installed suite name")

    config = sub.add_parser("config", help="print the suite as it would run (profile, --set, include: applied) as "
                                           "YAML, and each arm's hash: the key of its cells in the store")
    config.add_argument("suite", help="suite YAML file or installed suite name")
    config.add_argument("--profile", choices=("smoke", "cpu", "paper"),
                        help="profile to apply (default: none, the suite as written)")

    report = sub.add_parser("report", help="(re)build a suite's report from the store")
    _add_common(report)

    listing = sub.add_parser("list", help="list registered names")
    listing.add_argument("what", choices=("methods", "suites", "datasets", "proxies", "kinds"))
    listing.add_argument("--data-root", help="datasets: a directory to search first (also $TGBENCH_DATA, "
                                             "~/.cache/tgbench)")

    board = sub.add_parser("leaderboard", help="rank every finished few-step arm in the store, per protocol")
    board.add_argument("--storage", action="append", help="Optuna storage URL, repeatable to merge stores "
                                                          "(default: sqlite:///results/tgbench.db or $TGBENCH_STORAGE)")
    board.add_argument("--artifacts", help="directory of the teacher artifact store (default: next to each SQLite)")
    board.add_argument("--out", help="Markdown file; CSV, figures and the web page <stem>_site/index.html go next "
                                     "to it (default: results/LEADERBOARD.md)")
    board.add_argument("--from-csv", metavar="CSV", help="only (re)write the web page, from the CSV of a leaderboard "
                                                         "written before, beside its Markdown --out (no store read)")
    board.add_argument("--keep", metavar="CSV", help="also keep the tables of an earlier leaderboard's CSV that the "
                                                     "stores do not hold (their stores may be gone), after the "
                                                     "stores' tables")

    export = sub.add_parser("export", help="save one cell's trained teacher (weights, curriculum, lr/momentum)")
    export.add_argument("--suite", required=True, help="suite YAML file, installed suite name or stored suite name")
    export.add_argument("--profile", choices=("smoke", "cpu", "paper"), help="profile (default: cpu, or paper on CUDA)")
    export.add_argument("--source", required=True, help="source label in the suite, e.g. gtn")
    export.add_argument("--seed", type=int, default=0, help="cell seed (default 0)")
    export.add_argument("--out", required=True, help="file to write, e.g. teacher.pt")
    export.add_argument("--format", choices=("teacher", "tensors", "dd-ranking", "dc-bench"), default="teacher",
                        help="teacher: the full teacher, for `tgbench teach` (default); the data it teaches as plain "
                             "tensors, which the `external` source reads back: tensors (tgbench's dict: images, "
                             "labels, lr, momentum), dd-ranking (a folder of images.pt, labels.pt, lr.pt), dc-bench "
                             "(--out X.pt: {'data': [(images, labels)]}; else a folder of images_best.pt, "
                             "labels_best.pt)")
    export.add_argument("--data-root", help="all but teacher: directory holding the dataset the teacher draws from")
    export.add_argument("--storage", help="Optuna storage URL (default: sqlite:///results/tgbench.db, or "
                                          "$TGBENCH_STORAGE)")
    export.add_argument("--artifacts", help="directory of the teacher artifact store (default: next to the SQLite)")

    teach = sub.add_parser("teach", help="train a model from scratch on an exported teacher's data; print its accuracy")
    teach.add_argument("teacher", help="file written by `tgbench export`")
    teach.add_argument("--model", help="package.module:ClassName or path/to/file.py:ClassName, an nn.Module built "
                                       "as Class(image_shape, num_classes) returning logits (default: the suite's "
                                       "evaluation learners)")
    teach.add_argument("--steps", type=_positive_int, help="inner steps (default: the teacher's T)")
    teach.add_argument("--learners", type=_positive_int, help="fresh models to average (default: the suite's "
                                                              "evaluation.final_learners)")
    teach.add_argument("--data-root", help="directory holding datasets (also $TGBENCH_DATA, ~/.cache/tgbench)")

    check = sub.add_parser("check-method", help="run the shared source battery on a registered method (e.g. a "
                                                 "--methods-dir plug-in); exit 1 if a check fails")
    check.add_argument("method", help="registered method name")

    for p in (run, validate, config, report, listing, board, export, teach, check):
        _add_methods_dir(p)
    for p in (run, report, export, teach):
        _add_device(p)
    for p in (run, validate, config, report, export):
        _add_overrides(p)
    return parser


def _print_registry(registry, tag=lambda cls: "") -> None:
    """Each registered name with its description and its options (``Params`` fields with defaults)."""
    for name in registry.names():
        cls = registry.get(name)
        print(f"{name:24s} {tag(cls)}{cls.description}")
        for field, info in cls.Params.model_fields.items():
            print(f"{'':26s}{field} = {'(required)' if info.is_required() else repr(info.default)}")


def _list(what: str) -> int:
    """Print the registered ``what``; exit code 1 when a suite tgbench ships does not load (a broken install:
    e.g. a wheel missing a subpackage), after listing them all. A broken suite of the current directory's
    suites/ is the user's own file: flagged INVALID in the listing, exit 0."""
    from tgbench.registry import methods, proxies, suite_kinds

    if what == "kinds":
        for name in suite_kinds.names():
            kind = suite_kinds.get(name)
            section = f"`{kind.section}:`" if kind.section else ""
            print(f"{name:12s} {section:8s} {kind.summary}")
    elif what == "methods":
        _print_registry(methods)
    elif what == "datasets":
        _list_datasets(None)
    elif what == "proxies":
        _print_registry(proxies, tag=lambda cls: f"[{cls.family}] ")
    else:
        from tgbench.suite.loading import load_suite
        from tgbench.suite.names import installed_suites

        # the installed suites by name (what `tgbench run NAME` takes), then the current directory's suites/*.yaml
        # that are not those same files (in the repository, suites/ is the installed folder), by path
        installed = installed_suites()
        shipped = {p.resolve() for p in installed.values()}
        local = [(str(p), p) for p in sorted(SUITES_DIR.glob("*.yaml")) if p.resolve() not in shipped]
        broken_installed = []
        for label, path in [*installed.items(), *local]:
            try:
                suite = load_suite(path)
                print(f"{label:36s} {suite.kind:9s} {suite.description}")
            except BadInput as exc:
                print(f"{label:36s} INVALID: {exc}")
                if label in installed:
                    broken_installed.append(label)
        if broken_installed:
            print(f"tgbench: error: {len(broken_installed)} of the {len(installed)} suites tgbench ships do not load "
                  f"({', '.join(broken_installed)}): a broken install; reinstall tgbench", file=sys.stderr)
            return 1
    return 0


def _list_datasets(data_root: str | None) -> int:
    """Each registered dataset, whether it loads here (searching ``data_root`` first), its size and where it was
    found (each is loaded to tell: a dataset on disk is read once here)."""
    from tgbench.data import availability
    from tgbench.registry import datasets

    for name in datasets.names():
        print(f"{name:16s} {availability(name, data_root)}", flush=True)
    return 0


def _check_method(name: str) -> int:
    from tgbench.registry import methods
    from tgbench.testing import battery

    methods.get(name, "check-method")  # an unknown name is bad input (exit 2), with the close names
    checks = battery(name)
    for check in checks:
        print(check)
    failed = sum(not c.passed for c in checks)
    if failed:
        print(f"tgbench: check-method {name}: {failed} of {len(checks)} checks failed", file=sys.stderr)
    return 1 if failed else 0


def _check_storage(args: argparse.Namespace) -> None:
    """Refuse an in-memory SQLite ``--storage`` (or ``$TGBENCH_STORAGE``) before any command starts: each cell
    and worker opens the store by URL, so each would get a private empty database (a run would never end)."""
    if not hasattr(args, "storage"):
        return
    urls = args.storage if isinstance(args.storage, list) else [args.storage]
    if any(urls) or os.environ.get("TGBENCH_STORAGE"):
        from tgbench.store import refuse_in_memory, resolve_url

        for url in urls or [None]:
            refuse_in_memory(resolve_url(url))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with interrupt.handled():
        try:
            return _dispatch(args)
        finally:
            if "tgbench.store" in sys.modules:   # (a command that opened no store need not import Optuna for this)
                sys.modules["tgbench.store"].close_stores()


def _dispatch(args: argparse.Namespace) -> int:
    try:
        _check_storage(args)
        if hasattr(args, "device"):  # a device this machine lacks is bad input, refused before any work
            from tgbench.device import resolve

            resolve(args.device)
        if args.methods_dir:
            from tgbench.registry import load_plugin_dir

            for folder in args.methods_dir:
                load_plugin_dir(folder)
        if args.command in ("run", "report", "validate", "config"):
            from tgbench.suite.names import resolve_suite

            args.suite = str(resolve_suite(args.suite))  # a name -> the installed file; a path stays itself
        if args.command == "validate":
            from tgbench.fit import check_values
            from tgbench.suite.loading import load_suite
            from tgbench.suite.names import PROFILES

            suite = load_suite(args.suite, overrides=args.overrides)
            check_values(args.suite, args.overrides)  # what validates but cannot run (tgbench.fit)
            print(f"{args.suite}: ok ({suite.kind}, {len(suite.sources)} sources, profiles: "
                  f"{', '.join(p for p in PROFILES if p in suite.profiles) or 'none'}"
                  f"{f', {len(suite.overrides)} --set override(s)' if suite.overrides else ''})")
        elif args.command == "config":
            from tgbench.show_config import show_config

            print(show_config(args.suite, args.profile, tuple(args.overrides)))
        elif args.command == "list":
            code = _list_datasets(args.data_root) if args.what == "datasets" else _list(args.what)
            if code:
                return code
        elif args.command in ("run", "report"):
            from tgbench.runner import RunOptions, report_suite, run_suite

            opts = RunOptions(profile=args.profile, storage=args.storage, seeds=args.seeds, out=args.out,
                              artifacts_dir=args.artifacts, device=args.device, overrides=tuple(args.overrides))
            if args.command == "run":
                opts.jobs, opts.data_root, opts.progress = args.jobs, args.data_root, not args.no_progress
                opts.tf32, opts.loggers = args.tf32, tuple(args.log)
                from tgbench.trackers import check_available

                check_available(opts.loggers)
                opts.methods_dirs = tuple(str(Path(d).resolve()) for d in args.methods_dir)
                run_suite(args.suite, opts)
            else:
                from tgbench.store import require_existing

                # a report only reads: a store path that does not exist is a typo, not an empty store to create
                require_existing(args.storage, f"run the suite first (tgbench run {args.suite}) or pass the "
                                               "--storage it used")
                report_suite(args.suite, opts)
        elif args.command == "leaderboard":
            from tgbench.leaderboard import build_leaderboard, build_page_from_csv
            from tgbench.provenance import command_line

            if args.from_csv and (args.storage or args.artifacts or args.keep):
                raise BadInput("--from-csv reads no store: drop --storage, --artifacts and --keep")
            if args.from_csv:
                build_page_from_csv(args.from_csv, args.out, command=command_line())
            else:
                build_leaderboard(distinct_stores(args.storage), args.out, args.artifacts, command=command_line(),
                                  keep_csv=args.keep)
        elif args.command == "export":
            from tgbench.suite.loading import load_suite
            from tgbench.suite.names import installed_suites, resolve_suite
            from tgbench.teach import export_teacher

            from tgbench.device import resolve
            from tgbench.provenance import default_profile

            profile = args.profile or default_profile(resolve(args.device))
            # a file or an installed suite names its study (after any --set, which may change `name`); any other
            # bare name is taken as a study name as before (its file may be gone: export reads only the store)
            # (the suite at the profile, so that the cell of its current configuration is the one exported)
            if args.overrides or Path(args.suite).exists() or args.suite in installed_suites():
                args.suite = load_suite(resolve_suite(args.suite), profile, overrides=args.overrides)
            if args.format == "teacher":
                export_teacher(args.suite, profile, args.source, args.seed, args.out, args.storage, args.artifacts)
            else:  # the teacher first (a temporary file), then the lessons it teaches
                import tempfile

                from tgbench.teach import export_lessons

                with tempfile.TemporaryDirectory() as scratch:
                    teacher_file = Path(scratch) / "teacher.pt"
                    export_teacher(args.suite, profile, args.source, args.seed, str(teacher_file), args.storage,
                                   args.artifacts, log=lambda *a, **k: None)
                    export_lessons(teacher_file, args.out, data_root=args.data_root, layout=args.format)
        elif args.command == "check-method":
            return _check_method(args.method)
        elif args.command == "teach":
            from tgbench.teach import teach

            teach(args.teacher, args.model, steps=args.steps, learners=args.learners, data_root=args.data_root,
                  device=args.device)
        interrupt.check()  # a signal Python dropped (see tgbench.interrupt) and no later check saw
    except BadInput as exc:
        print(f"tgbench: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `tgbench list methods | head`: the reader left; not an error (and no flush error at exit)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:  # (further signals while we shut down are ignored: tgbench.interrupt)
        signum = interrupt.received() or signal.SIGINT
        how = "" if signum == signal.SIGINT else f" ({signal.Signals(signum).name})"
        print(f"tgbench: interrupted{how}; running cells are marked failed and will re-run next time",
              file=sys.stderr)
        return interrupt.exit_code()
    except CellsFailed as exc:  # the suite went on past them; the report is written
        print(f"tgbench: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug or an environment failure: one line (the traceback under TGBENCH_DEBUG=1)
        if os.environ.get("TGBENCH_DEBUG"):
            raise
        message = str(exc).splitlines()[0] if str(exc) else ""
        print(f"tgbench: error: {type(exc).__name__}: {message} (rerun with TGBENCH_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1
    return 0


def run_and_exit(argv: list[str] | None = None) -> None:
    """The ``tgbench`` command: ``main``, then exit with its code. After Ctrl-C or SIGTERM, once the run has marked
    its cells failed and said so, the process ends at once (``os._exit``) instead of going through the
    interpreter's shutdown, which joins the ``--jobs`` pool's manager thread: whatever leaves that thread waiting
    (a worker killed while sending its result; a task the pool had queued with no worker left to take it — the
    cause of CI's two hangs, fixed in ``tgbench.pool._top_up``) must not keep a stopped run from exiting.
    Everything that matters is in the store already; only the output streams need flushing."""
    code = main(argv)
    if code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run_and_exit()
