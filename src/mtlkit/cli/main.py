"""``mtlkit run | list | evaluate | validate | export | predict | reproduce | generate``."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from mtlkit import __version__
from mtlkit._sections import SECTIONS
from mtlkit.errors import ConfigError, MtlkitError, RunDirectoryError, UnknownComponentError

__all__ = ["main"]

_FAMILIES = ("presets", *(s.family for s in SECTIONS), "reproductions")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mtlkit",
        description="Multi-task learning on PyTorch: train, compare and evaluate multi-task models.",
    )
    p.add_argument("--version", action="version", version=f"mtlkit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="train an experiment (default: the 'default' preset)",
        description="Train every variant and seed of an experiment and print a comparison table. "
        "Override any config value with dotted.key=value, e.g. trainer.epochs=5 model.num_experts=4.",
    )
    run.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value ...]")
    run.add_argument("--preset", help="a bundled preset (see `mtlkit list presets`)")
    run.add_argument("--out", help="parent directory of the run directory (default: the config's output_dir)")
    run.add_argument("--no-progress", action="store_true", help="no live progress bar")
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run directory: finished runs are kept, an interrupted one continues "
        "from its last checkpoint, the others are trained (its config.yaml is used; no config or overrides)",
    )
    run.add_argument(
        "--allow-data-change",
        action="store_true",
        help="with --resume: continue even though the data differs from the fingerprint the run recorded",
    )
    run.add_argument("--data", metavar="PATH", help="the data folder (same as data.path=PATH)")
    run.add_argument(
        "--download",
        action="store_true",
        help="fetch missing dataset files from their public source (same as data.download=true)",
    )
    _add_threads_option(run, "torch intra-op threads (default and 0: torch's default, one per core)")

    val = sub.add_parser(
        "validate",
        help="check a config as `run` would (without training) and print it fully resolved",
        description="Build everything `mtlkit run` builds (the data, each model on the meta device, optimizers, "
        "schedulers, loss weighting, early stopping, device) without training, and report every problem at "
        "once. Exit code 0: `run` accepts the config; 2: it refuses it.",
    )
    val.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value ...]")
    val.add_argument("--preset")
    val.add_argument("--data", metavar="PATH", help="the data folder (same as data.path=PATH)")

    ls = sub.add_parser(
        "list",
        help="list presets, " + ", ".join(s.family for s in SECTIONS) + " and reproductions",
    )
    ls.add_argument("what", nargs="?", choices=_FAMILIES, help="only this family")

    ev = sub.add_parser("evaluate", help="evaluate the checkpoints of a run directory")
    ev.add_argument("run_dir")
    ev.add_argument("--split", default="test", choices=("test", "val", "train"))

    ex = sub.add_parser(
        "export",
        help="export a trained model (ONNX or TorchScript) with its preprocessing and a manifest",
        description="Export the model of a run directory (best weights) to RUN_DIR/export-<format>/ "
        "(or --out): the model file, manifest.json and, for tabular data, preprocessor.json.",
    )
    ex.add_argument(
        "run_dir", help="a run directory (for comparisons: one variant/seed, e.g. RUN/mmoe/seed0)"
    )
    ex.add_argument("--format", default="onnx", choices=("onnx", "torchscript"))
    ex.add_argument("--out", help="export folder (default: RUN_DIR/export-<format>)")
    ex.add_argument("--logits", action="store_true", help="export raw outputs, not probabilities")
    ex.add_argument(
        "--embed-preprocessing",
        action="store_true",
        help="ONNX, tabular data: the graph reads raw columns (categorical strings, numeric values)",
    )
    ex.add_argument(
        "--exporter",
        default="trace",
        choices=("trace", "dynamo"),
        help="ONNX exporter: TorchScript tracing (default, fast) or torch.export-based (needs onnxscript)",
    )
    ex.add_argument(
        "--check",
        action="store_true",
        help="compare the export with the eager model on random inputs (raw columns with "
        "--embed-preprocessing); fails above a relative error of 1e-5 (float32 outputs)",
    )

    pr = sub.add_parser(
        "predict",
        help="predict every task for the rows of CSV / Parquet files of any size",
        description="Read raw columns from INPUT (a CSV or Parquet file, a folder, or a glob pattern such as "
        "'data/*.parquet'), apply the run's saved preprocessing and model, and write one column per prediction "
        "(probabilities for classification tasks) to --out, chunk by chunk, rows in input order.",
    )
    pr.add_argument(
        "run_dir", help="a run directory (for comparisons: one variant/seed, e.g. RUN/mmoe/seed0)"
    )
    pr.add_argument(
        "input",
        metavar="INPUT",
        help="CSV with a header row (may be .gz/.bz2/.xz) or Parquet: a file, a folder or a glob pattern",
    )
    pr.add_argument(
        "--out", required=True, help="the predictions file: Parquet if it ends in .parquet, else CSV"
    )
    pr.add_argument(
        "--keep", action="append", default=[], metavar="COLUMN", help="copy this input column to the output"
    )
    pr.add_argument(
        "--ignore-extra", action="store_true", help="CSV input: drop columns the model does not read"
    )
    pr.add_argument("--batch-size", type=int, default=4096, help="rows per model call (default 4096)")

    rep = sub.add_parser(
        "reproduce",
        help="re-run a published experiment and write its tables and plots (see --list)",
        description="Run a named reproduction (mtlkit reproduce --list shows them) and write its tables "
        "(markdown, CSV, JSON), plots (PNG) and report.md into one run directory. The default finishes in "
        "minutes on 2 CPU cores; --full runs the paper's scale. Overrides (dotted.key=value) apply to every "
        "experiment config of the reproduction, e.g. trainer.epochs=5.",
    )
    rep.add_argument("name", nargs="?", help="the reproduction (see --list)")
    rep.add_argument("args", nargs="*", metavar="key=value", help="config overrides for every experiment")
    rep.add_argument("--list", action="store_true", help="list the reproductions and exit")
    rep.add_argument(
        "--full", action="store_true", help="the paper's scale (hours) instead of the quick default"
    )
    rep.add_argument("--seeds", type=int, metavar="N", help="number of seeds (0..N-1; default: the recipe's)")
    rep.add_argument("--out", default="runs", help="parent directory of the run directory (default: runs)")
    rep.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="finish an interrupted reproduction (its settings come from RUN_DIR/reproduction.json; finished "
        "runs are kept, interrupted ones continue from their last checkpoint), then write the report",
    )
    rep.add_argument(
        "--report",
        metavar="RUN_DIR",
        help="write the report of the runs finished so far in RUN_DIR (nothing is trained; the missing runs are named)",
    )
    rep.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="train N experiments at once, each in its own process with --threads threads (default 1), "
        "e.g. --jobs 2 --threads 1 on 2 cores",
    )
    rep.add_argument("--no-progress", action="store_true", help="one line per experiment, no live bar")
    _add_threads_option(
        rep,
        "torch intra-op threads (default: the reproduction's, 1 for the small MLP ones; 0: torch's default)",
    )
    gen = sub.add_parser("generate", help="write a synthetic data set to files (see generate impressions)")
    gen_sub = gen.add_subparsers(dest="what", metavar="KIND", required=True)
    imp = gen_sub.add_parser(
        "impressions",
        help="a synthetic impression log (click / conversion funnel, watch time) as Parquet shards",
        description="Write a synthetic impression log as OUT_DIR/part-NNNNN.parquet (see "
        "mtlkit.data.impression_log). Deterministic from --seed, whatever --shard-rows.",
    )
    imp.add_argument("out_dir", metavar="OUT_DIR", help="an empty (or new) folder for the shards")
    imp.add_argument("--rows", type=int, required=True, help="number of impressions")
    imp.add_argument(
        "--shard-rows", type=int, default=1_000_000, help="rows per Parquet file (default 1,000,000)"
    )
    imp.add_argument("--seed", type=int, default=0)
    imp.add_argument("--users", type=int, help="distinct user ids (default rows/20 within 1,000..1,000,000)")
    imp.add_argument("--items", type=int, help="distinct item ids (default rows/100 within 200..200,000)")
    imp.add_argument("--oracle", action="store_true", help="also write the true p_click and p_conversion")
    imp.add_argument("--history", type=int, default=0, metavar="N",
                     help="also write a history list column of up to N recent item ids per user")  # fmt: skip
    imp.add_argument("--weights", action="store_true", help="also write a weight column (sample weights)")
    imp.add_argument("--format", choices=("parquet", "csv"), default="parquet", dest="file_format",
                     help="file format (csv: the history as a '|'-separated string)")  # fmt: skip
    yt = gen_sub.add_parser(
        "youtube-log",
        help="logged ranking slates with position bias and the known truth, as one CSV",
        description="Write logged slates (clicks biased by position, watch time and likes on clicks, and "
        "the unbiased truth columns) as one CSV; see mtlkit.data.youtube. Deterministic from --seed.",
    )
    yt.add_argument("out", metavar="OUT_CSV", help="the CSV file to write")
    yt.add_argument("--slates", type=int, default=1000, help="number of slates (default 1000)")
    yt.add_argument("--slate-size", type=int, default=10, help="impressions per slate (default 10)")
    yt.add_argument("--eta", type=float, default=1.0, help="position-bias exponent (default 1.0)")
    yt.add_argument("--seed", type=int, default=0)
    return p


def _add_threads_option(parser: argparse.ArgumentParser, help: str) -> None:
    """``--threads N`` (``run`` and ``reproduce``); read back with :func:`_threads`."""
    parser.add_argument("--threads", type=int, metavar="N", help=help)


def _threads(ns: argparse.Namespace, default: int | None = None) -> int | None:
    """The torch intra-op thread count ``--threads`` asks for (None: leave torch's)."""
    if ns.threads is None:
        return default
    if ns.threads < 0:
        raise ConfigError([f"--threads: must be >= 0 (0: torch's default); got {ns.threads}."])
    return None if ns.threads == 0 else ns.threads


def _split_args(args: Sequence[str]) -> tuple[str | None, list[str]]:
    paths = [a for a in args if "=" not in a]
    overrides = [a for a in args if "=" in a]
    if len(paths) > 1:
        raise ConfigError([f"expected at most one config file; got {paths}. Overrides look like key=value."])
    return (paths[0] if paths else None), overrides


def _cmd_run(ns: argparse.Namespace, console: Console) -> int:
    from mtlkit.utils import torch_threads

    with torch_threads(_threads(ns)):
        return _run(ns, console)


def _run(ns: argparse.Namespace, console: Console) -> int:
    from mtlkit.config.load import load_config
    from mtlkit.experiment import run_experiment

    progress = False if ns.no_progress else None
    if ns.resume is not None:
        from mtlkit.experiment import resume_experiment

        if ns.args or ns.preset or ns.out or ns.data or ns.download:
            raise ConfigError(
                [
                    "--resume uses the run's own config.yaml; give no config file, --preset, --out, --data, "
                    "--download or overrides."
                ]
            )
        resume_experiment(
            ns.resume, console=console, progress=progress, allow_data_change=ns.allow_data_change
        )
        return 0
    if ns.allow_data_change:
        raise ConfigError(["--allow-data-change applies to --resume RUN_DIR only."])
    path, overrides = _split_args(ns.args)
    if ns.data:
        overrides.insert(0, f"data.path={ns.data}")
    if ns.download:
        overrides.insert(0, "data.download=true")
    experiment = load_config(path, preset=ns.preset, overrides=overrides)
    run_experiment(experiment, output_dir=ns.out, console=console, progress=progress)
    return 0


def _cmd_validate(ns: argparse.Namespace, console: Console) -> int:
    from mtlkit.config.check import check_experiment
    from mtlkit.config.load import load_config

    path, overrides = _split_args(ns.args)
    if ns.data:
        overrides.insert(0, f"data.path={ns.data}")
    experiment = load_config(path, preset=ns.preset, overrides=overrides)
    check_experiment(experiment)  # the checks of `mtlkit run`, without training
    console.print(f"# {experiment.source}: valid ({len(experiment.variants)} run(s) per seed)")
    console.print(yaml.safe_dump(experiment.to_dict(), sort_keys=False), markup=False, highlight=False)
    return 0


def _cmd_list(ns: argparse.Namespace, console: Console) -> int:
    from mtlkit.config.components import FAMILIES
    from mtlkit.config.load import list_presets

    wanted = [ns.what] if ns.what else list(_FAMILIES)
    sections = {f.family: f.registry for f in FAMILIES.values()}
    for what in wanted:
        table = Table(title=what, title_justify="left", show_header=False, box=None, padding=(0, 2))
        table.add_column("name", style="bold")
        table.add_column("description")
        if what == "reproductions":
            _reproductions_table(console)
            console.print()
            continue
        if what == "presets":
            for name, desc in list_presets().items():
                table.add_row(name, desc)
        else:
            reg = sections[what]
            for name in reg.names():
                table.add_row(name, reg.summary(name))
        console.print(table)
        console.print()
    return 0


def _reproductions_table(console: Console, title: str = "reproductions") -> None:
    from mtlkit.reproduce import list_reproductions

    table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2))
    table.add_column("name", style="bold")
    table.add_column("minutes", justify="right")
    table.add_column("description")
    for name, info in list_reproductions().items():
        table.add_row(name, f"~{info['minutes']:g} min", info["summary"])
    console.print(table)


def _cmd_reproduce(ns: argparse.Namespace, console: Console) -> int:
    from mtlkit.reproduce import REPRODUCTIONS, report_reproduction, resume_reproduction, run_reproduction

    if ns.list:
        _reproductions_table(console)
        console.print("Estimated wall time of the default run on 2 CPU cores (measured on a shared machine).")
        return 0
    if ns.jobs < 1:
        raise ConfigError([f"--jobs: must be >= 1; got {ns.jobs}."])
    command = "mtlkit " + shlex.join(ns.argv)
    if ns.resume is not None or ns.report is not None:
        flag, run_dir = ("--resume", ns.resume) if ns.resume is not None else ("--report", ns.report)
        given = [n for n, v in (("a name", ns.name), ("--full", ns.full or None), ("--seeds", ns.seeds)) if v]
        if ns.args or given or (ns.resume is not None and ns.report is not None):
            clash = (
                given
                + (["key=value overrides"] if ns.args else [])
                + (["--report"] if flag == "--resume" and ns.report else [])
            )
            raise ConfigError(
                [
                    f"reproduce {flag}: the reproduction and its settings come from {run_dir}/reproduction.json; "
                    f"drop {', '.join(clash)} (start a new reproduction to change them)."
                ]
            )
        if ns.report is not None:
            report_reproduction(ns.report, console=console, command=command)
            return 0
        name = _recorded_name(ns.resume)
        recipe = REPRODUCTIONS.get(name) if name in REPRODUCTIONS else None
        resume_reproduction(
            ns.resume,
            console=console,
            progress=False if ns.no_progress else None,
            threads=_threads(ns, default=getattr(recipe, "threads", None)),
            command=command,
            jobs=ns.jobs,
        )
        return 0
    if ns.name is None:
        raise ConfigError(["reproduce: name a reproduction (mtlkit reproduce --list shows them)."])
    if "=" in ns.name:  # `mtlkit reproduce key=value`: no name given
        raise ConfigError(
            [f"reproduce: the first argument must be a reproduction name; got {ns.name!r} (see --list)."]
        )
    bad = [a for a in ns.args if "=" not in a]
    if bad:
        raise ConfigError([f"reproduce: expected key=value overrides after the name; got {bad}."])
    if ns.seeds is not None and ns.seeds < 1:
        raise ConfigError([f"--seeds: must be >= 1; got {ns.seeds}."])
    recipe = REPRODUCTIONS.get(ns.name)
    threads = _threads(ns, default=recipe.threads)
    run_reproduction(
        ns.name,
        full=ns.full,
        seeds=ns.seeds,
        overrides=ns.args,
        output_dir=ns.out,
        console=console,
        progress=False if ns.no_progress else None,
        threads=threads,
        command=command,
        jobs=ns.jobs,
    )
    return 0


def _recorded_name(run_dir: str) -> str | None:
    """The reproduction named in ``run_dir/reproduction.json`` (None if unreadable: the resume
    itself then says what is wrong)."""
    import json

    try:
        return str(
            json.loads((Path(run_dir) / "reproduction.json").read_text(encoding="utf-8"))["reproduction"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _cmd_evaluate(ns: argparse.Namespace, console: Console) -> int:
    from mtlkit.experiment import evaluate_run_dir

    evaluate_run_dir(ns.run_dir, split=ns.split, console=console)
    return 0


def _cmd_export(ns: argparse.Namespace, console: Console) -> int:
    from mtlkit.export import export_model, verify_export
    from mtlkit.predict import load_predictor

    predictor = load_predictor(ns.run_dir)
    assert predictor.run_dir is not None
    folder = export_model(
        predictor,
        ns.out or predictor.run_dir / f"export-{ns.format}",
        format=ns.format,
        activate=not ns.logits,
        embed_preprocessing=ns.embed_preprocessing,
        exporter=ns.exporter,
    )
    console.print(f"Exported {ns.format} to {folder}", highlight=False)
    if ns.check:
        check = verify_export(folder, predictor)
        console.print(check.summary(), highlight=False)
        if not check.passed:
            print(f"error: the export differs from the eager model: {check.summary()}", file=sys.stderr)
            return 1
    return 0


def _cmd_predict(ns: argparse.Namespace, console: Console) -> int:
    from mtlkit.predict import load_predictor

    if ns.batch_size < 1:
        raise ConfigError([f"--batch-size: must be >= 1; got {ns.batch_size}."])
    predictor = load_predictor(ns.run_dir)
    out = predictor.predict_files(
        ns.input, ns.out, keep=ns.keep, ignore_extra=ns.ignore_extra, batch_size=ns.batch_size
    )
    console.print(f"Wrote predictions to {out}", highlight=False)
    return 0


def _cmd_generate(ns: argparse.Namespace, console: Console) -> int:
    from mtlkit.data.impressions import impression_log

    if ns.what == "youtube-log":
        from mtlkit.data.youtube import write_csv, youtube_log

        ylog = youtube_log(ns.slates, slate_size=ns.slate_size, eta=ns.eta, seed=ns.seed)
        write_csv(ylog, ns.out)
        console.print(f"Wrote {len(ylog):,} impressions ({ns.slates:,} slates) to {ns.out}", highlight=False)
        return 0

    log = impression_log(
        ns.out_dir, ns.rows, shard_rows=ns.shard_rows, seed=ns.seed, users=ns.users, items=ns.items, oracle=ns.oracle,
        history=ns.history, weights=ns.weights, file_format=ns.file_format,
    )  # fmt: skip
    console.print(
        f"Wrote {log.rows:,} impressions ({log.users:,} users, {log.items:,} items) as {len(log.files)} {'CSV' if ns.file_format == 'csv' else 'Parquet'} "
        f"file(s) in {ns.out_dir}",
        highlight=False,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mtlkit`` command; returns the exit code."""
    parser = _parser()
    ns, extra = parser.parse_known_args(argv)
    # `run cfg.yaml --out runs model.x=1`: positionals after an option arrive as extras
    if extra and ns.command in ("run", "validate", "reproduce") and not any(a.startswith("-") for a in extra):
        ns.args = [*ns.args, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    console = Console(width=None if sys.stdout.isatty() else 120)
    if ns.command is None:
        parser.print_help()
        return 2
    if ns.command == "reproduce":
        ns.argv = list(argv if argv is not None else sys.argv[1:])
    handlers = {
        "run": _cmd_run,
        "list": _cmd_list,
        "evaluate": _cmd_evaluate,
        "validate": _cmd_validate,
        "export": _cmd_export,
        "predict": _cmd_predict,
        "reproduce": _cmd_reproduce,
        "generate": _cmd_generate,
    }
    try:
        return handlers[ns.command](ns, console)
    except (ConfigError, UnknownComponentError) as exc:
        if os.environ.get("MTLKIT_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MtlkitError as exc:
        if os.environ.get("MTLKIT_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        if not _print_reproduction_hint(exc, "is incomplete"):
            _print_resume_hint(
                getattr(exc, "run_dir", None), "is incomplete", command=isinstance(exc, RunDirectoryError)
            )
        return 1
    except ImportError as exc:  # an optional dependency (e.g. onnx for export)
        if os.environ.get("MTLKIT_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print("interrupted", file=sys.stderr)
        if not _print_reproduction_hint(exc, "was interrupted"):
            _print_resume_hint(getattr(exc, "run_dir", None), "was interrupted")
        return 130
    except OSError as exc:  # a file or folder that cannot be read or written
        if os.environ.get("MTLKIT_DEBUG"):
            raise
        from mtlkit.training.run_lock import os_error_message

        where = exc.filename if exc.filename is not None else "a file"
        print(f"error: {os_error_message(exc, where, 'read or write')}", file=sys.stderr)
        return 1


def _print_reproduction_hint(exc: BaseException, what: str) -> bool:
    """After an interrupted or failed ``mtlkit reproduce``: how to continue the whole reproduction."""
    root = getattr(exc, "reproduction_dir", None)
    if root is None:
        return False
    print(f"reproduction {str(root)!r} {what}; continue it with:", file=sys.stderr)
    print(f"  mtlkit reproduce --resume {shlex.quote(str(root))}", file=sys.stderr)
    return True


def _print_resume_hint(run_dir: object, what: str, *, command: bool = True) -> None:
    """After an interrupted or failed ``mtlkit run``: the run directory and (``command``: a full
    disk, an unwritable folder, Ctrl-C) how to continue it once the cause is fixed."""
    if run_dir is None:
        return
    if not command:
        print(f"run directory {str(run_dir)!r} {what} (no metrics.json for the failed run).", file=sys.stderr)
        return
    print(f"run directory {str(run_dir)!r} {what}; continue it with:", file=sys.stderr)
    print(f"  mtlkit run --resume {shlex.quote(str(run_dir))}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
