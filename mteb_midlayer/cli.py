"""`mteb-midlayer`: verbs that read like the user's jobs.

    mteb-midlayer sweep MODEL      score every layer (and dim) of a model on MTEB tasks
    mteb-midlayer metrics MODEL    unsupervised layer metrics (entropy, curvature, LiDAR, ...)
    mteb-midlayer table DIR        print the layer x task table of a results folder
    mteb-midlayer mirror TASK...   write tasks' data into the offline layout (--data-dir)
    mteb-midlayer leaderboard DIR... --to OUT   publish Markdown, CSV, HTML and plots
    mteb-midlayer select DIR       choose the layer (and dim): budgets, stability, label-free rules
    mteb-midlayer export MODEL OUT one layer slice as a smaller sentence-transformers model

MODEL is a Hub id, a local path, or `minilm` (the embedded all-MiniLM-L6-v2, no Hub needed).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from .executors import EXECUTORS, make_executor
from .metrics.compute import METRICS
from .model import EMBEDDED_ALIAS
from .pooling import POOLINGS, check_poolings
from .spec import ModelSpec

if TYPE_CHECKING:
    from .series import SeriesResult


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def _positive_int(value: str) -> int:
    """argparse type: an int >= 1 (refused at parse time, not deep inside mteb)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def _poolings(value: str) -> str:
    """argparse type: one pooling, or several comma-separated (all from one forward pass)."""
    try:
        return ",".join(check_poolings(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _output_folder(value: str) -> Path:
    """argparse type: a folder to write into; an existing file is refused."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a file; name a folder for the results")
    return path


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model", nargs="?", default=EMBEDDED_ALIAS, help="Hub id, local path, or 'minilm' (default)"
    )
    p.add_argument("--name", help="model name for result files (default: from the model)")
    p.add_argument("--revision", help="model revision (Hub commit) or a label for a local model")
    p.add_argument(
        "--pooling",
        type=_poolings,
        help=f"{', '.join(POOLINGS)}, or several comma-separated (e.g. mean,weightedmean,last: "
        "each its own slice, all from one forward pass); default: the model's own, else mean",
    )
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--device", help="cuda, cuda:1, cpu... (default: cuda when present)")
    p.add_argument(
        "--dtype",
        help="float32, bfloat16, float16 (default: bf16 on GPUs that support it, fp16 on other "
        "GPUs, fp32 on CPU)",
    )
    p.add_argument("--max-length", type=_positive_int, help="truncate texts to this many tokens")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the model repository's own code (models that need it, e.g. some Hub encoders)",
    )
    _add_prompt_tokens_option(p)
    p.add_argument(  # issue 24: a checkpoint series
        "--revisions",
        help="a checkpoint series of one Hub model, e.g. step1000,step8000,main (a MODEL like "
        "'run/checkpoint-*' is a series of local folders, ordered by step); see docs/checkpoints.md",
    )


def _add_prompt_tokens_option(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--exclude-prompt-tokens",
        dest="include_prompt",
        action="store_false",
        default=None,
        help="leave each text's prompt tokens out of its vector, as sentence-transformers' "
        "Pooling(include_prompt=False) (default: the model's own Pooling setting, else include)",
    )
    group.add_argument(
        "--include-prompt-tokens",
        dest="include_prompt",
        action="store_true",
        default=None,
        help="pool prompt tokens too, whatever the model's Pooling says",
    )


def _add_pass_options(p: argparse.ArgumentParser) -> None:
    """Options of the forward pass that `sweep` and `metrics` share (issue 17, issue 14)."""
    p.add_argument(
        "--final-norm",
        default="last",
        help="'last' (inner layers raw), 'every' (the final norm at every layer, as a truncated "
        "model), or 'last,every' (both slices from one forward pass)",
    )
    p.add_argument(
        "--max-tokens-per-batch",
        type=_positive_int,
        default=None,
        help="batch by a budget of padded tokens (rows x longest text) instead of --batch-size "
        "rows; changes no result",
    )


def _add_task_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", help="comma-separated mteb task names")
    p.add_argument("--benchmark", help="'layer-by-layer-32' or any mteb benchmark name")
    p.add_argument("--data-dir", type=Path, help="offline task data: DIR/<TaskName>/ (see README)")
    p.add_argument(
        "--output",
        type=_output_folder,
        default=Path("results"),
        help="results folder (an mteb ResultCache root)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mteb-midlayer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sweep", help="score every layer (and dim) of a model on MTEB tasks")
    _add_model_options(p)
    _add_task_options(p)
    p.add_argument("--layers", default="all", help="'all' or comma-separated, e.g. 0,3,6 or -1")
    p.add_argument(
        "--fuse",
        help="fused layer slices too (equal-weight mean of their pooled vectors, from the same "
        "pass): e.g. 0+6,4-6 | windows:2 | first-last (docs/fusion.md; not with max pooling)",
    )
    _add_pass_options(p)
    p.add_argument("--dims", help="Matryoshka widths, e.g. 384,128 (default: full width)")
    p.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="L2-normalise after slicing (default: the model's own, e.g. on for all-MiniLM-L6-v2)",
    )
    p.add_argument(
        "--shard-size",
        type=int,
        default=None,
        help="texts per store shard; a crash loses at most one "
        "(default: up to 2048, fewer so that a shard stays under 256 MiB)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="worker processes scoring a task's slices while the next task is encoded "
        "(default: the cores available; 1 = score in this process)",
    )
    p.add_argument(
        "--devices",
        help="encode in one worker process per device, e.g. cuda:0,cuda:1 "
        "(default: in this process, on --device)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (encode and score units, texts and slices per task) and exit",
    )
    p.add_argument(  # issue 14
        "--search-backend",
        choices=["auto", "faiss", "torch"],
        default="auto",
        help="how retrieval/reranking tasks search: faiss (extra 'cpu' or 'gpu'), torch "
        "(mteb's exact default), auto = faiss when installed",
    )
    _add_executor_options(p)

    p = sub.add_parser(
        "metrics", help="unsupervised layer metrics (entropy, curvature, LiDAR, ...)"
    )
    _add_model_options(p)
    _add_task_options(p)
    p.add_argument("--layers", default="all", help="'all' or comma-separated layers")
    _add_pass_options(p)
    p.add_argument(
        "--texts",
        type=Path,
        help="a corpus instead of tasks: plain text (one text a line) or JSON Lines with a 'text' "
        "field; filed as dataset '<file stem>-<hash of its texts>'",
    )
    p.add_argument("--n", type=int, default=1000, help="texts sampled per task")
    p.add_argument(
        "--metrics", default="all", help="'all' or comma-separated: " + ", ".join(METRICS)
    )
    p.add_argument("--alpha", type=float, default=1.0, help="Rényi order of the entropies")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--n-views", type=int, default=16, help="augmented views per text (LiDAR)")
    p.add_argument("--overwrite", action="store_true", help="recompute tasks already done")
    p.add_argument(
        "--devices",
        help="one worker process per device, each computing whole tasks, e.g. cuda:0,cuda:1 "
        "(default: in this process, on --device)",
    )
    _add_executor_options(p)

    p = sub.add_parser("mirror", help="write tasks' data (from the Hub) into the --data-dir layout")
    p.add_argument("tasks", nargs="*", help="mteb task names (or give --benchmark)")
    p.add_argument(
        "--benchmark", help="mirror a benchmark's tasks, e.g. 'layer-by-layer-32' (its subsets)"
    )
    p.add_argument("--to", type=Path, required=True, help="data directory to write into")
    p.add_argument("--overwrite", action="store_true", help="replace existing task folders")
    p.add_argument(
        "--all-splits",
        action="store_true",
        help="all of mteb's eval splits, not only test (classification always adds train)",
    )

    p = sub.add_parser("table", help="print the layer x task table of a results folder")
    p.add_argument("output", type=Path, nargs="?", default=Path("results"))
    p.add_argument("--model", help="model name (default: all)")
    p.add_argument(
        "--csv",
        type=Path,
        help="also write the tables here, as one CSV keyed by model, revision, pooling, "
        "normalize, final_norm, max_length, dtype, prompts, include_prompt and layer",
    )

    _add_leaderboard_parser(sub)
    _add_select_parser(sub)
    _add_export_parser(sub)
    return parser


def _print_table(table: pd.DataFrame) -> None:
    """Print a table; for a layer table, say plainly which layers lack which tasks."""
    with pd.option_context(
        "display.max_columns", 50, "display.width", 200, "display.float_format", "{:.4f}".format
    ):
        print(table.to_string())
    if "missing" in table.columns:
        from .tasks.benchmark import missing_note

        for line in missing_note(table):
            print(f"incomplete: {line}")


def model_spec(args: argparse.Namespace) -> ModelSpec:
    """The one model spec of a command line, built (and validated) once."""
    return ModelSpec(
        source=args.model,
        name=args.name,
        revision=args.revision,
        pooling=args.pooling.split(",")[0] if args.pooling else None,  # several: see _common
        device=args.device,
        dtype=args.dtype,
        max_length=args.max_length,
        trust_remote_code=args.trust_remote_code,
        include_prompt=args.include_prompt,
    )


def _common(args: argparse.Namespace) -> dict:
    """The model and task options that `sweep` and `metrics` share."""
    return dict(
        spec=model_spec(args),
        tasks=_split(args.tasks),
        benchmark=args.benchmark,
        data_dir=args.data_dir,
        output=args.output,
        layers=args.layers,
        batch_size=args.batch_size,
        final_norm=args.final_norm,
        max_tokens_per_batch=args.max_tokens_per_batch,
        pooling=args.pooling,
    )


def _print_failures(failures: dict[str, str]) -> int:
    """One line per failed task on stderr; the exit code (1 if any failed)."""
    for task, reason in failures.items():
        print(f"FAILED {task}: {reason}", file=sys.stderr)
    return 1 if failures else 0


def _series_kwargs(args: argparse.Namespace) -> dict | None:
    """`revisions` for a checkpoint series (issue 24), None for a single model."""
    from .checkpoints import is_pattern

    if getattr(args, "revisions", None) or is_pattern(args.model):
        return {"revisions": args.revisions}
    return None


def _print_series(result: SeriesResult, args: argparse.Namespace) -> int:
    """A series' checkpoint x layer table of the mean score, then its failures."""
    table = result.scores
    columns = [c for c in ("final_norm", "dim", "layer") if c in table.columns]
    wide = table.pivot_table(index="checkpoint", columns=columns, values="mean", sort=False)
    _print_table(wide)
    print(f"\nEncoded {result.n_encoded} new texts; "
          f"{result.recorded.n_recorded} task(s) planned once for the series.")  # fmt: skip
    print(f"Results: {args.output} (series manifest under {args.output / 'series'})")
    return _print_failures(result.failures)


def cmd_sweep(args: argparse.Namespace) -> int:
    from .executors.local import available_cores
    from .sweep import sweep

    series = _series_kwargs(args)
    if series is not None:
        from .series import sweep_series

        table = sweep_series(
            **_common(args),
            **series,
            dims=args.dims,
            normalize=args.normalize,
            shard_size=args.shard_size,
            jobs=args.jobs if args.jobs is not None else available_cores(),
            search_backend=args.search_backend,
        )
        return _print_series(table, args)
    result = sweep(
        **_common(args),
        **executor_kwargs(args),
        dims=args.dims,
        normalize=args.normalize,
        shard_size=args.shard_size,
        jobs=args.jobs if args.jobs is not None else available_cores(),
        devices=args.devices,
        dry_run=args.dry_run,
        search_backend=args.search_backend,  # issue 14
        fuse=args.fuse,
    )
    if args.dry_run:
        print(result.plan.summary())
        return _print_failures(result.failures)
    _print_table(result.scores)
    print(f"\nEncoded {result.n_encoded} new texts; the rest came from the store.")
    print(f"Results: {args.output} (mteb.ResultCache({str(args.output)!r}) reads them)")
    return _print_failures(result.failures)


def cmd_metrics(args: argparse.Namespace) -> int:
    from .executors.local import ProcessExecutor
    from .metrics.run import layer_metrics
    from .sweep import parse_devices

    engine = executor_kwargs(args).get("executor")  # --executor ray | submitit
    devices = parse_devices(args.devices)
    local = ProcessExecutor(devices=devices) if devices and engine is None else None
    run = layer_metrics
    series = _series_kwargs(args)
    if series is not None:  # issue 24: every checkpoint of a series
        import functools

        from .series import metrics_series

        run = functools.partial(metrics_series, **series)
    try:
        df = run(
            **_common(args),
            texts=args.texts,
            n=args.n,
            metrics=args.metrics,
            alpha=args.alpha,
            seed=args.seed,
            n_views=args.n_views,
            overwrite=args.overwrite,
            executor=engine or local,
        )
    finally:
        if local is not None:
            local.shutdown()
    keys = [k for k in ("pooling", "final_norm") if k in df.columns and df[k].nunique() > 1]
    index = [*keys, "dataset", "metric", "variant"]
    wide = df.pivot_table(index=index, columns="layer", values="value")
    _print_table(wide)
    print(f"\nRows: {args.output / 'metrics'} (pd.read_parquet reads the folder)")
    return _print_failures(df.attrs.get("failures") or {})


def cmd_mirror(args: argparse.Namespace) -> int:
    from .tasks.mirror import mirror_tasks

    paths = mirror_tasks(
        args.tasks or None,
        args.to,
        benchmark=args.benchmark,
        overwrite=args.overwrite,
        all_splits=args.all_splits,
    )
    for path in paths:
        files = sorted(str(f.relative_to(path)) for f in path.rglob("*") if f.is_file())
        print(f"wrote {path}: {', '.join(files)}")
    print(f"Use it offline: mteb-midlayer sweep MODEL --data-dir {args.to}")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from .tables import layer_table, scan_results

    scan = scan_results(args.output, model=args.model)
    for line in scan.problems:
        print(f"warning: {line}", file=sys.stderr)
    long = scan.frame
    if long.empty:
        print(f"No layer results under {args.output}.", file=sys.stderr)
        return 1
    keys = [
        "model",
        "revision",
        "pooling",
        "normalize",
        "final_norm",
        "max_length",
        "dtype",
        "prompts",
        "include_prompt",
    ]
    long = long.fillna(
        {"max_length": 0, "dtype": "", "prompts": "", "final_norm": "last", "include_prompt": True}
    )
    tables = {}
    for key, group in long.groupby(keys):
        model, revision, pooling, normalize, final_norm, max_length, dtype, prompts, incl = key
        print(
            f"\n{model} @ {revision}  pooling={pooling} normalize={normalize} "
            f"final_norm={final_norm} max_length={max_length} dtype={dtype} prompts={prompts}"
            + ("" if incl else " include_prompt=False")
        )
        tables[key] = layer_table(group)
        _print_table(tables[key])
    if args.csv:
        # Every configuration in one file, so none overwrites another.
        from .inert import write_csv

        write_csv(pd.concat(tables, names=keys), args.csv, index=True)
        print(f"\nwrote {args.csv}")
    return 0


# ---- executors: where the units of `sweep` and `metrics` run (mteb_midlayer/executors/)


def _add_executor_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "executor",
        "where the units run; the results folder must be on a filesystem every "
        "worker sees (checked with a probe file)",
    )
    g.add_argument(
        "--executor",
        choices=list(EXECUTORS),
        default="local",
        help="local (this machine, the default), ray (pip install 'mteb-midlayer[ray]'), "
        "submitit (Slurm job arrays; pip install 'mteb-midlayer[slurm]')",
    )
    g.add_argument(
        "--ray-address",
        help="join this Ray cluster (e.g. auto, ray://head:10001); default: start a local one",
    )
    g.add_argument("--slurm-partition", help="Slurm partition of the job arrays")
    g.add_argument(
        "--slurm-gpus-per-task",
        type=int,
        default=1,
        help="GPUs per encode job (score jobs take none); default 1",
    )
    g.add_argument(
        "--slurm-time",
        default="60",
        help="time limit per job: minutes, H:MM:SS or D-HH:MM:SS (default 60)",
    )
    g.add_argument(
        "--slurm-folder",
        type=Path,
        help="submitit's logs and pickles (default: OUTPUT/submitit, on the shared filesystem)",
    )


def _executor_options_given(args: argparse.Namespace) -> list[str]:
    """Flags of a distributed executor given without it (they would be ignored silently)."""
    given = []
    if args.ray_address is not None and args.executor != "ray":
        given.append("--ray-address")
    if args.executor != "submitit":
        given += [
            flag
            for flag, value, default in (
                ("--slurm-partition", args.slurm_partition, None),
                ("--slurm-gpus-per-task", args.slurm_gpus_per_task, 1),
                ("--slurm-time", args.slurm_time, "60"),
                ("--slurm-folder", args.slurm_folder, None),
            )
            if value != default
        ]
    return given


def executor_kwargs(args: argparse.Namespace) -> dict:
    """`{"executor": ...}` for `sweep`/`layer_metrics`; empty for the default local run."""
    stray = _executor_options_given(args)
    if stray:
        raise ValueError(
            f"{', '.join(stray)} only apply with another --executor (got {args.executor})"
        )
    if args.executor == "local":
        return {}
    if getattr(args, "devices", None):
        raise ValueError(
            f"--devices is for the local executor (one worker per GPU here); --executor "
            f"{args.executor} places each encode unit on a GPU itself"
        )
    roots = [args.output]
    if args.executor == "ray":
        executor = make_executor("ray", roots=roots, address=args.ray_address)
    else:
        executor = make_executor(
            "submitit",
            roots=roots,
            folder=args.slurm_folder or args.output / "submitit",
            partition=args.slurm_partition,
            gpus_per_task=args.slurm_gpus_per_task,
            time=args.slurm_time,
        )
        print(executor.note, file=sys.stderr)
    return {"executor": executor}


# ---- leaderboard: publish results folders as Markdown, CSV, one HTML page and plots


def _add_leaderboard_parser(sub) -> None:
    p = sub.add_parser(
        "leaderboard", help="publish results folders as Markdown, CSV, an HTML page and plots"
    )
    p.add_argument("results", type=Path, nargs="+", help="results folders (sweep --output)")
    p.add_argument("--to", type=Path, required=True, help="folder to write the leaderboard into")
    p.add_argument(
        "--benchmark",
        default="leaderboard",
        help="name of the page and its files (e.g. the benchmark or data name)",
    )
    p.add_argument("--title", help="page title (default: from --benchmark)")
    p.add_argument("--model", help="only this model (default: all)")
    p.add_argument("--tasks", help="comma-separated: only these tasks")
    p.add_argument(
        "--data",
        default="not stated (pass --data)",
        help="which copy of the task data was scored, for the provenance block",
    )
    p.add_argument(
        "--command",
        dest="producer",
        help="the command that produced the results, for the provenance block "
        "(default: this leaderboard command)",
    )
    p.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib)")


def cmd_leaderboard(args: argparse.Namespace) -> int:
    import shlex

    from .frames import metrics_frame, scores_frame
    from .leaderboard import publish

    scores = scores_frame(args.results, model=args.model, tasks=_split(args.tasks))
    if scores.empty:
        print(f"No layer results under {', '.join(map(str, args.results))}.", file=sys.stderr)
        return 1
    metrics = metrics_frame(args.results, model=args.model)
    tasks = _split(args.tasks)
    if tasks is not None:
        metrics = metrics[metrics["dataset"].isin(tasks)]
    argv = list(sys.argv[1:] if args.argv is None else args.argv)
    if args.producer:  # said once, before this command, not again inside it
        i = argv.index("--command") if "--command" in argv else None
        if i is not None:
            del argv[i : i + 2]
        argv = [a for a in argv if not a.startswith("--command=")]
    command = "mteb-midlayer " + shlex.join(argv)
    if args.producer:
        command = f"{args.producer}; then {command}"
    paths = publish(
        scores,
        metrics,
        args.to,
        benchmark=args.benchmark,
        title=args.title,
        data=args.data,
        command=command,
        with_plots=not args.no_plots,
    )
    lines: dict[Path, str] = {}  # one line per file; a plot's SVG rides on its PNG's line
    for path in paths:
        png = path.with_suffix(".png")
        if path.suffix == ".svg" and png in lines:
            lines[png] = " (and .svg)"
        else:
            lines.setdefault(path, "")
    for path, extra in lines.items():
        print(f"wrote {path}{extra}")
    return 0


# ---------------------------------------------------------------- select and export (issue 12)
def _add_select_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "select", help="choose the layer (and dim): budgets, stability, label-free rules"
    )
    p.add_argument("results", type=Path, nargs="?", default=Path("results"))
    p.add_argument("--model", help="model name (default: all)")
    p.add_argument("--tasks", help="comma-separated mteb task names (default: all present)")
    p.add_argument("--benchmark", help="the tasks of this benchmark, e.g. 'layer-by-layer-32'")
    p.add_argument(
        "--metrics-dir", type=Path, help="metric parquet rows (default: RESULTS/metrics)"
    )
    p.add_argument("--max-dim", type=int, help="budget: widest embedding (storage)")
    p.add_argument("--max-layer", type=int, help="budget: deepest layer (blocks run)")
    p.add_argument("--max-depth", type=float, help="budget: deepest layer as a fraction of L")
    p.add_argument(
        "--prior",
        default="pythia-410m",
        help="row of the prior direction table when no other model gives one "
        "(pythia-410m, pythia-160m, llm2vec)",
    )
    p.add_argument("--json", type=Path, help="also write the full selection here (JSON)")
    p.add_argument(
        "--export", type=Path, help="export the best slice (under the budget) to this folder"
    )
    p.add_argument(
        "--source",
        help="model path or Hub id to export from (default: the model's name; 'minilm' works)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --export folder")
    p.add_argument(
        "--label-free",
        action="store_true",
        help="--model names the judged model (rules still learned on the others in RESULTS); "
        "--export writes its recommended label-free pick (docs/select.md)",
    )
    p.add_argument(
        "--pooling",
        choices=list(POOLINGS),
        help="with --label-free --export: this pooling's row (default: the model's own)",
    )
    p.add_argument(
        "--dim", type=int, help="with --label-free --export: this width (default: full width)"
    )


def _add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="one layer slice as a smaller sentence-transformers model folder"
    )
    p.add_argument("model", help="Hub id, local path, or 'minilm'")
    p.add_argument("out", type=Path, help="folder to write (must be empty or absent)")
    p.add_argument("--layer", type=int, help="1..L, or negative from the end")
    p.add_argument("--fuse", help="a fusion of layers instead of --layer, e.g. 0+6 or 4-6")
    p.add_argument("--dim", type=int, help="keep the first DIM coordinates (default: all)")
    p.add_argument("--pooling", choices=list(POOLINGS))
    p.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="L2-normalise (default: the model's own)",
    )
    p.add_argument("--max-length", type=int, help="truncate texts to this many tokens")
    p.add_argument(
        "--final-norm",
        choices=["last", "every"],
        default="last",
        help="'every': the plain truncated model (final norm kept; loads with "
        "sentence-transformers alone); 'last': the raw inner layer",
    )
    p.add_argument("--revision", help="model revision (Hub commit) or a label for a local model")
    p.add_argument("--results", type=Path, help="results folder: its scores go into the card")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    p.add_argument("--trust-remote-code", action="store_true")
    _add_prompt_tokens_option(p)


def _select_tasks(args: argparse.Namespace) -> list[str] | None:
    if args.benchmark:
        from .tasks.benchmark import get_benchmark

        return [t.metadata.name for t in get_benchmark(args.benchmark).tasks]
    return _split(args.tasks)


def _print_export(result) -> None:
    what = f"layers {result.fuse}" if result.fuse else f"layer {result.layer}"
    print(
        f"wrote {result.path}: {result.model} {what}/{result.n_layers}, "
        f"dim {result.dim}/{result.hidden_size}, pooling={result.pooling}, "
        f"normalize={result.normalize}, final_norm={result.final_norm} "
        f"(max |diff| vs LayerEncoder {result.max_abs_diff:.1e})"
    )
    if result.needs_mteb_midlayer:
        print(
            "note: this decoder slice skips the final norm through "
            "mteb_midlayer.st_modules.RawStreamTransformer: load it with mteb_midlayer installed "
            "and SentenceTransformer(path, trust_remote_code=True)"
        )


def cmd_select(args: argparse.Namespace) -> int:
    from .select import Budget, render, select, to_json

    budget = Budget(max_dim=args.max_dim, max_layer=args.max_layer, max_depth=args.max_depth)
    tasks = _select_tasks(args)
    selection = select(
        args.results,
        model=args.model,
        tasks=tasks,
        metrics_dir=args.metrics_dir,
        budgets=[budget],
        prior=args.prior,
        label_free=args.label_free,
    )
    if not selection.has_scores:
        print(f"No sweep results under {args.results} to choose from:")
        print("\n".join(f"note: {note}" for note in selection.notes))
        if args.json or args.export:  # asked for, not written: never a silent success
            print("nothing written (--json/--export need a swept slice).", file=sys.stderr)
            return 1
        return 0
    print(render(selection))
    if args.label_free and args.export:
        rc = _export_recommended(args, selection)
        if args.json:
            print(f"\nwrote {to_json(selection, args.json)}")
        return rc
    if args.json:
        print(f"\nwrote {to_json(selection, args.json)}")
    if args.export:
        chosen = selection.chosen(budget.label)
        if chosen is None and selection.ranked_on == []:
            print(
                "The configurations share no task, so none is chosen across them: nothing "
                "exported; name one with --model.",
                file=sys.stderr,
            )
            return 1
        if chosen is None:
            print(f"No slice fits the budget {budget.label}: nothing exported.", file=sys.stderr)
            return 1
        from .export import export
        from .model import EMBEDDED_ALIAS, EMBEDDED_NAME
        from .spec import check_model_name, is_local_revision, local_revision_label

        revision = chosen["revision"]
        if args.source is None and is_local_revision(revision):
            # its name (local/<folder name>) is no path: never load whatever sits there now
            raise ValueError(
                f"{chosen['model']} was swept from a local folder ({revision}) that the results "
                "do not locate (moved since?): pass --source with that folder."
            )
        source = args.source or (
            EMBEDDED_ALIAS
            if chosen["model"] == EMBEDDED_NAME
            else check_model_name(chosen["model"])
        )
        result = export(
            source,
            args.export,
            layer=None if chosen.get("fuse") else int(chosen["layer"]),
            fuse=chosen.get("fuse") or None,
            dim=int(chosen["dim"]),
            pooling=chosen["pooling"],
            normalize=bool(chosen["normalize"]),
            overwrite=args.overwrite,
            name=chosen["model"],
            revision=local_revision_label(revision),  # a folder's fingerprint: added on load
            expected_revision=revision,
            results=args.results,
            final_norm=str(chosen.get("final_norm") or "last"),
            max_length=int(chosen.get("max_length") or 0) or None,
            include_prompt=None if bool(chosen.get("include_prompt", True)) else False,
        )
        _print_export(result)
    return 0


def _export_recommended(args: argparse.Namespace, selection) -> int:
    """Export the judged model's recommended label-free pick; mark its row `exported`."""
    from .export import export
    from .model import EMBEDDED_ALIAS, EMBEDDED_NAME, LayerModel
    from .select.recommend import export_row

    rows = selection.recommendation.rows
    models = sorted(rows["model"].unique())
    if rows.empty:
        print(
            "No label-free recommendation to export (it needs two models or more with "
            "scores and metrics in RESULTS): nothing exported.",
            file=sys.stderr,
        )
        return 1
    if args.model is None and len(models) > 1:
        print(
            f"Name the judged model with --model (one of {', '.join(models)}): nothing exported.",
            file=sys.stderr,
        )
        return 1
    name = args.model or models[0]
    source = args.source or (EMBEDDED_ALIAS if name == EMBEDDED_NAME else name)
    # the model's own pooling and normalisation: its default configuration
    lm = LayerModel.load(source, name=name, device="cpu", dtype="float32")
    pooling, normalize = args.pooling or lm.default_pooling, lm.default_normalize
    del lm
    index, notes = export_row(rows, name, pooling=pooling, normalize=normalize, dim=args.dim)
    row = rows.loc[index]
    result = export(
        source,
        args.export,
        layer=int(row["chosen_layer"]),
        dim=int(row["dim"]),
        pooling=row["pooling"],
        normalize=bool(row["normalize"]),
        overwrite=args.overwrite,
        name=name,
        revision=row["revision"],
        results=args.results,
        final_norm=str(row["final_norm"]),
        max_length=int(row["max_length"] or 0) or None,
        include_prompt=None if bool(row["include_prompt"]) else False,
    )
    rows.loc[index, "exported"] = True
    print(
        f"label-free pick of {name}: {row['rule']} -> layer {int(row['chosen_layer'])} "
        f"(regret {row['regret']:.4f}, gain {row['gain']:+.4f})"
    )
    for note in notes:
        print(f"note: {note}")
    _print_export(result)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export

    if (args.layer is None) == (args.fuse is None):
        print("error: give --layer L or --fuse A+B (one of them)", file=sys.stderr)
        return 2
    result = export(
        args.model,
        args.out,
        layer=args.layer,
        fuse=args.fuse,
        dim=args.dim,
        pooling=args.pooling,
        normalize=args.normalize,
        max_length=args.max_length,
        overwrite=args.overwrite,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
        results=args.results,
        final_norm=args.final_norm,
        include_prompt=args.include_prompt,
    )
    _print_export(result)
    return 0


COMMANDS = {
    "sweep": cmd_sweep,
    "metrics": cmd_metrics,
    "table": cmd_table,
    "mirror": cmd_mirror,
    "leaderboard": cmd_leaderboard,
    "select": cmd_select,
    "export": cmd_export,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv  # the exact command, for provenance (None: sys.argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
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
