"""`mteb-midlayer`: verbs that read like the user's jobs (flags and exit codes: docs/cli.md).

Each verb parses its flags, builds the library's options, makes one library call and prints.
MODEL is a Hub id, a local path, or `minilm` (the embedded all-MiniLM-L6-v2, no Hub needed).
Exit codes: 0 done; 1 the job ran but a task failed or nothing matched; 2 bad usage or an
error; 130 interrupted (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import functools
import logging
import shlex
import sys
from pathlib import Path

from .devices import passive_omp_wait

passive_omp_wait()  # the CLI starts work: before the imports below load torch (see devices.py)

import pandas as pd

from . import frames
from .checkpoints import is_pattern
from .devices import available_cores
from .executors import ENGINE_FLAGS, EXECUTORS, executor_from_flags
from .metrics.compute import METRICS
from .model import EMBEDDED_ALIAS
from .options import MetricOptions, PassOptions
from .pooling import POOLINGS, check_poolings
from .search import SEARCH_BACKENDS
from .spec import ModelSpec

#: The library's defaults, which the flags take (none is typed twice; `--jobs` is the one
#: documented exception: every core here, 1 in `sweep()`).
PASS, MEASURE = PassOptions(), MetricOptions()


def _split(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _bounded_int(low: int):
    """An argparse type: an int >= `low`, refused at parse time (not deep inside mteb)."""

    def parse(value: str) -> int:
        if not value.strip().lstrip("+-").isdecimal():
            raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}")
        if int(value) < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {int(value)}")
        return int(value)

    return parse


#: The two integer types of every flag (a signed `--layer` is resolved by the library).
positive_int, nonneg_int = _bounded_int(1), _bounded_int(0)


def _poolings(value: str) -> str:
    """argparse type: one pooling, or several comma-separated (all from one forward pass)."""
    try:
        return ",".join(check_poolings(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _output_folder(value: str) -> Path:
    """argparse type: a folder to write into; an existing file is refused."""
    if Path(value).exists() and not Path(value).is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a file; name a folder for the results")
    return Path(value)


#: Flags passed on under their own name (dest = the library's parameter), one tuple per call.
_SPEC_FLAGS = ("name", "revision", "device", "dtype", "max_length", "trust_remote_code")
_SPEC_FLAGS += ("include_prompt",)
_RUN_FLAGS = ("benchmark", "data_dir", "output", "layers", "batch_size", "final_norm", "pooling")
_RUN_FLAGS += ("max_tokens_per_batch",)
SWEEP_FLAGS = ("dims", "normalize", "shard_size", "jobs", "search_backend")
METRICS_FLAGS = ("texts", "n", "metrics", "alpha", "seed", "n_views", "overwrite", "fuse")
_SELECT_FLAGS = ("model", "metrics_dir", "prior", "label_free", "benchmark")
_SHIP_FLAGS = ("label_free", "model", "source", "pooling", "dim", "overwrite", "results")
_ENGINE = tuple(flag for flags in ENGINE_FLAGS.values() for flag in flags)
#: `leaderboard`'s flags echoed in its provenance line when not at these defaults.
PAGE, NO_DATA = "leaderboard", "not stated (pass --data)"
_ECHOED = dict(page=PAGE, title=None, model=None, tasks=None, data=NO_DATA)


def _add_prompt_tokens_option(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    for flag, action, text in (
        ("--exclude-prompt-tokens", "store_false", "leave prompt tokens out of the vector"),
        ("--include-prompt-tokens", "store_true", "pool prompt tokens too"),
    ):
        group.add_argument(flag, dest="include_prompt", action=action, default=None, help=text)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=EMBEDDED_ALIAS, help="Hub id, path, or 'minilm'")
    p.add_argument("--name", help="model name for result files (default: from the model)")
    p.add_argument("--revision", help="Hub commit, or a label for a local model")
    p.add_argument("--pooling", type=_poolings, help=f"{', '.join(POOLINGS)}; a,b: one slice each")
    p.add_argument("--batch-size", type=positive_int, default=PASS.batch_size)
    p.add_argument("--device", help="cuda, cuda:1, cpu... (default: cuda when present)")
    p.add_argument("--dtype", help="float32, bfloat16, float16 (default: per device)")
    p.add_argument("--max-length", type=positive_int, help="truncate texts to this many tokens")
    p.add_argument("--trust-remote-code", action="store_true", help="run the repository's code")
    _add_prompt_tokens_option(p)
    p.add_argument("--revisions", help="a checkpoint series: step1000,main (docs/checkpoints.md)")
    p.add_argument("--final-norm", default=PASS.final_norm, help="'last', 'every' or 'last,every'")
    p.add_argument("--max-tokens-per-batch", type=positive_int, help="batch by padded tokens")
    p.add_argument("--tasks", help="comma-separated mteb task names")
    p.add_argument("--benchmark", help="'layer-by-layer-32' or any mteb benchmark name")
    p.add_argument("--data-dir", type=Path, help="offline task data: DIR/<TaskName>/")
    p.add_argument("--output", type=_output_folder, default=Path("results"), help="results folder")
    p.add_argument("--layers", default=PASS.layers, help="'all', or e.g. 0,3,6 or -1 (the last)")
    p.add_argument("--devices", help="one worker process per device, e.g. cuda:0,cuda:1")
    g = p.add_argument_group("executor", "where units run (a filesystem every worker sees)")
    g.add_argument("--executor", choices=list(EXECUTORS), default="local")
    g.add_argument("--ray-address", help="join this Ray cluster (default: start a local one)")
    g.add_argument("--slurm-partition", help="Slurm partition of the job arrays")
    g.add_argument("--slurm-gpus-per-task", type=nonneg_int, help="GPUs per encode job (1)")
    g.add_argument("--slurm-time", help="minutes, H:MM:SS or D-HH:MM:SS per job (60)")
    g.add_argument("--slurm-folder", type=Path, help="submitit's files (default: OUTPUT/submitit)")


def _add_run_parsers(sub) -> None:
    p = sub.add_parser("sweep", help="score every layer (and dim) of a model on MTEB tasks")
    _add_run_options(p)
    p.add_argument("--fuse", help="fused slices too: 0+6,4-6 | windows:2 | first-last")
    p.add_argument("--dims", help="Matryoshka widths, e.g. 384,128 (default: full width)")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--shard-size", type=positive_int, help="texts per store shard")
    jobs = f"scoring processes (default: {available_cores()}, the cores here; 1: in-process)"
    p.add_argument("--jobs", type=positive_int, default=available_cores(), help=jobs)
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--search-backend", choices=SEARCH_BACKENDS, default=PASS.search_backend)
    p = sub.add_parser("metrics", help="unsupervised layer metrics (entropy, curvature, ...)")
    _add_run_options(p)
    p.add_argument("--fuse", help="fused slices' pooled-vector metrics too: 0+6 | windows:2 | ...")
    p.add_argument("--texts", type=Path, help="a corpus (text lines or JSON Lines) for tasks")
    p.add_argument("--n", type=positive_int, default=MEASURE.n, help="texts sampled per task")
    p.add_argument("--metrics", default=MEASURE.metrics, help="'all' or: " + ", ".join(METRICS))
    p.add_argument("--alpha", type=float, default=MEASURE.alpha, help="entropies' Rényi order")
    p.add_argument("--seed", type=nonneg_int, default=MEASURE.seed)
    p.add_argument("--n-views", type=positive_int, default=MEASURE.n_views, help="LiDAR's views")
    p.add_argument("--overwrite", action="store_true", help="recompute tasks already done")
    p = sub.add_parser("mirror", help="write tasks' data (from the Hub) into the --data-dir layout")
    p.add_argument("tasks", nargs="*", help="mteb task names (or give --benchmark)")
    p.add_argument("--benchmark", help="mirror a benchmark's tasks, e.g. 'layer-by-layer-32'")
    p.add_argument("--to", type=Path, required=True, help="data directory to write into")
    p.add_argument("--overwrite", action="store_true", help="replace existing task folders")
    p.add_argument("--all-splits", action="store_true", help="every eval split, not only test")


def _add_read_parsers(sub) -> None:
    p = sub.add_parser("table", help="print the layer x task table of a results folder")
    p.add_argument("output", type=Path, nargs="?", default=Path("results"))
    p.add_argument("--model", help="model name (default: all)")
    p.add_argument("--csv", type=Path, help="also write every configuration's table here")
    p = sub.add_parser("leaderboard", help="publish Markdown, CSV, an HTML page and plots")
    p.add_argument("results", type=Path, nargs="+", help="results folders (sweep --output)")
    p.add_argument("--to", type=Path, required=True, help="folder to write the leaderboard into")
    p.add_argument("--page", default=PAGE, help="name of the page and its files")
    p.add_argument("--benchmark", dest="old_page", help=argparse.SUPPRESS)  # --page's old name
    p.add_argument("--title", help="page title (default: from --page)")
    p.add_argument("--model", help="only this model (default: all)")
    p.add_argument("--tasks", help="comma-separated: only these tasks")
    p.add_argument("--data", default=NO_DATA, help="which copy of the task data was scored")
    p.add_argument("--command", dest="producer", help="the command that made the results")
    p.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib)")
    p = sub.add_parser("select", help="choose the layer (and dim): budgets, rules, stability")
    p.add_argument("results", type=Path, nargs="?", default=Path("results"))
    p.add_argument("--model", help="model name (default: all; with --label-free: the judged one)")
    p.add_argument("--tasks", help="comma-separated mteb task names (default: all present)")
    p.add_argument("--benchmark", help="the tasks of this benchmark, e.g. 'layer-by-layer-32'")
    p.add_argument("--metrics-dir", type=Path, help="metric rows (default: RESULTS/metrics)")
    p.add_argument("--max-dim", type=nonneg_int, help="budget: widest embedding")
    p.add_argument("--max-layer", type=nonneg_int, help="budget: deepest layer")
    p.add_argument("--max-depth", type=float, help="budget: deepest layer as a fraction of L")
    p.add_argument("--prior", default="pythia-410m", help="pythia-410m, pythia-160m, llm2vec")
    p.add_argument("--json", type=Path, help="also write the full selection here (JSON)")
    p.add_argument("--export", type=Path, help="export the best slice to this folder")
    p.add_argument("--source", help="model path or Hub id to export from (default: its name)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --export folder")
    p.add_argument("--label-free", action="store_true", help="export the label-free pick")
    p.add_argument("--pooling", choices=list(POOLINGS), help="label-free export: this pooling")
    p.add_argument("--dim", type=positive_int, help="label-free export: this width")
    p = sub.add_parser("export", help="one layer slice as a sentence-transformers model folder")
    p.add_argument("model", help="Hub id, local path, or 'minilm'")
    p.add_argument("out", type=Path, help="folder to write (must be empty or absent)")
    which = p.add_mutually_exclusive_group(required=True)  # one of them, refused at parse time
    which.add_argument("--layer", type=int, help="1..L, or negative from the end")
    which.add_argument("--fuse", help="a fusion of layers instead of --layer, e.g. 0+6 or 4-6")
    p.add_argument("--dim", type=positive_int, help="keep the first DIM coordinates")
    p.add_argument("--pooling", choices=list(POOLINGS))
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--max-length", type=positive_int, help="truncate texts to this many tokens")
    p.add_argument("--final-norm", choices=["last", "every"], default="last")
    p.add_argument("--revision", help="Hub commit, or a label for a local model")
    p.add_argument("--results", type=Path, help="results folder: its scores go into the card")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    p.add_argument("--trust-remote-code", action="store_true")
    _add_prompt_tokens_option(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mteb-midlayer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_parsers(sub)
    _add_read_parsers(sub)
    return parser


def _pick(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    return {name: getattr(args, name) for name in names}


def model_spec(args: argparse.Namespace) -> ModelSpec:
    """The one model spec of a command line (several poolings: it loads with the first)."""
    pooling = args.pooling.split(",")[0] if args.pooling else None
    return ModelSpec(source=args.model, pooling=pooling, **_pick(args, _SPEC_FLAGS))


def _common(args: argparse.Namespace) -> dict:
    """The model, task and pass options that `sweep` and `metrics` share."""
    return dict(spec=model_spec(args), tasks=_split(args.tasks), **_pick(args, _RUN_FLAGS))


def executor_kwargs(args: argparse.Namespace) -> dict:
    """`{"executor": ...}` for `sweep`/`layer_metrics`; empty for the default local run."""
    flags = _pick(args, _ENGINE)
    executor = executor_from_flags(args.executor, args.output, devices=args.devices, **flags)
    if note := getattr(executor, "note", None):
        print(note, file=sys.stderr)
    return {"executor": executor} if executor else {}


def _failures(failures: dict[str, str] | None) -> int:
    """One line per failed task on stderr; the exit code (1 if any failed)."""
    for task, reason in (failures or {}).items():
        print(f"FAILED {task}: {reason}", file=sys.stderr)
    return 1 if failures else 0


def _is_series(args: argparse.Namespace) -> bool:
    return bool(args.revisions) or is_pattern(args.model)


def cmd_sweep(args: argparse.Namespace) -> int:
    from . import series
    from .sweep import sweep

    options = _pick(args, SWEEP_FLAGS)
    if _is_series(args):
        result = series.sweep_series(**_common(args), revisions=args.revisions, **options)
        print(frames.table_text(frames.checkpoint_table(result.scores)))
        print(f"\nEncoded {result.n_encoded} new texts; "
              f"{result.recorded.n_recorded} task(s) planned once for the series.")  # fmt: skip
        print(f"Results: {args.output} (series manifest under {args.output / 'series'})")
        return _failures(result.failures)
    more = dict(devices=args.devices, dry_run=args.dry_run, fuse=args.fuse)
    result = sweep(**_common(args), **executor_kwargs(args), **options, **more)
    if args.dry_run:
        print(result.plan.summary())
        return _failures(result.failures)
    print(frames.table_text(result.scores))
    print(f"\nEncoded {result.n_encoded} new texts; the rest came from the store.")
    print(f"Results: {args.output} (mteb.ResultCache({str(args.output)!r}) reads them)")
    return _failures(result.failures)


def cmd_metrics(args: argparse.Namespace) -> int:
    from . import series
    from .metrics.run import layer_metrics

    run = layer_metrics
    if _is_series(args):  # every checkpoint of a series
        run = functools.partial(series.metrics_series, revisions=args.revisions)
    options = _pick(args, METRICS_FLAGS) | executor_kwargs(args)
    result = run(**_common(args), **options, devices=args.devices)
    print(frames.table_text(frames.metrics_table(result.metrics)))
    print(f"\nRows: {args.output / 'metrics'} (pd.read_parquet reads the folder)")
    return _failures(result.failures)


def cmd_mirror(args: argparse.Namespace) -> int:
    from .tasks.mirror import mirror_tasks

    options = _pick(args, ("benchmark", "overwrite", "all_splits"))
    paths = mirror_tasks(args.tasks or None, args.to, **options)
    for path in paths:
        files = sorted(str(f.relative_to(path)) for f in path.rglob("*") if f.is_file())
        print(f"wrote {path}: {', '.join(files)}")
    print(f"Use it offline: mteb-midlayer sweep MODEL --data-dir {args.to}")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    problems: list[str] = []
    scores = frames.scores_frame(args.output, model=args.model, problems=problems)
    for line in problems:
        print(f"warning: {line}", file=sys.stderr)
    if scores.empty:
        print(f"No layer results under {args.output}.", file=sys.stderr)
        return 1
    tables = frames.config_tables(scores)
    for key, table in tables.items():
        print(f"\n{frames.config_heading(key)}")
        print(frames.table_text(table))
    if args.csv:  # every configuration in one file, so none overwrites another
        from .inert import write_csv

        write_csv(pd.concat(tables, names=frames.CONFIG_COLUMNS), args.csv, index=True)
        print(f"\nwrote {args.csv}")
    return 0


def _leaderboard_command(args: argparse.Namespace) -> str:
    """The provenance line: the producing command, then this one as parsed (`--page` for the
    deprecated `--benchmark`; `--command` is said once, before it)."""
    words = ["leaderboard", *map(str, args.results), "--to", str(args.to)]
    for dest, default in _ECHOED.items():
        if getattr(args, dest) != default:
            words += [f"--{dest}", str(getattr(args, dest))]
    words += ["--no-plots"] if args.no_plots else []
    command = "mteb-midlayer " + shlex.join(words)
    return f"{args.producer}; then {command}" if args.producer else command


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from .leaderboard import publish, written_lines

    if args.old_page:  # `--benchmark` is mteb's benchmark in every other verb
        print("warning: leaderboard --benchmark is deprecated; use --page", file=sys.stderr)
        args.page = args.old_page
    chosen = dict(model=args.model, tasks=_split(args.tasks))
    scores = frames.scores_frame(args.results, **chosen)
    if scores.empty:
        print(f"No layer results under {', '.join(map(str, args.results))}.", file=sys.stderr)
        return 1
    metrics = frames.metrics_frame(args.results, **chosen)
    command, with_plots = _leaderboard_command(args), not args.no_plots
    page = dict(benchmark=args.page, title=args.title, data=args.data)
    paths = publish(scores, metrics, args.to, **page, command=command, with_plots=with_plots)
    print("\n".join(written_lines(paths)))
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from .select import Budget, NothingToExport, render, select, ship, to_json

    budget = Budget(max_dim=args.max_dim, max_layer=args.max_layer, max_depth=args.max_depth)
    tasks, options = _split(args.tasks), _pick(args, _SELECT_FLAGS)
    selection = select(args.results, tasks=tasks, budgets=[budget], **options)
    if not selection.has_scores:
        print(f"No sweep results under {args.results} to choose from:")
        print("\n".join(f"note: {note}" for note in selection.notes))
        if args.json or args.export:  # asked for, not written: say so
            print("nothing written (--json/--export need a swept slice).", file=sys.stderr)
        return 1
    print(render(selection))
    code = 0
    try:
        if args.export:
            shipped = ship(selection, args.export, budget=budget, **_pick(args, _SHIP_FLAGS))
            print("\n".join([*shipped.lines, shipped.result.summary()]))
    except NothingToExport as exc:
        print(f"{exc}: nothing exported.", file=sys.stderr)
        code = 1
    finally:
        if args.json:
            print(f"\nwrote {to_json(selection, args.json)}")
    return code


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export

    # every flag of `export` is an argument of the library's `export`, under the same name
    options = {k: v for k, v in vars(args).items() if k not in ("command", "verbose")}
    print(export(options.pop("model"), options.pop("out"), **options).summary())
    return 0


#: verb -> its function (`cmd_<verb>`).
COMMANDS = {k.removeprefix("cmd_"): f for k, f in list(globals().items()) if k.startswith("cmd_")}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # a clear one-line error; -v shows the traceback
        if args.verbose:
            raise
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
