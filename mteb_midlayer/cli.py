"""`mteb-midlayer`: verbs that read like the user's jobs.

    mteb-midlayer sweep MODEL      score every layer (and dim) of a model on MTEB tasks
    mteb-midlayer metrics MODEL    unsupervised layer metrics (entropy, curvature, LiDAR, ...)
    mteb-midlayer table DIR        print the layer x task table of a results folder
    mteb-midlayer mirror TASK...   write tasks' data into the offline layout (--data-dir)

MODEL is a Hub id, a local path, or `minilm` (the embedded all-MiniLM-L6-v2, no Hub needed).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

from .metrics.driver import METRICS
from .model import EMBEDDED_ALIAS


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model", nargs="?", default=EMBEDDED_ALIAS, help="Hub id, local path, or 'minilm' (default)"
    )
    p.add_argument("--name", help="model name for result files (default: from the model)")
    p.add_argument("--revision", help="model revision (Hub commit) or a label for a local model")
    p.add_argument(
        "--pooling",
        choices=["mean", "cls", "last", "max"],
        help="default: the model's own, else mean",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", help="cuda, cuda:1, cpu... (default: cuda when present)")
    p.add_argument(
        "--dtype", help="float32, bfloat16, float16 (default: bf16 on capable GPUs, else fp32)"
    )
    p.add_argument("--max-length", type=int, help="truncate texts to this many tokens")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the model repository's own code (models that need it, e.g. some Hub encoders)",
    )


def _add_task_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", help="comma-separated mteb task names")
    p.add_argument("--benchmark", help="'layer-by-layer-32' or any mteb benchmark name")
    p.add_argument("--data-dir", type=Path, help="offline task data: DIR/<TaskName>/ (see README)")
    p.add_argument(
        "--output",
        type=Path,
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
    p.add_argument(  # issue 14
        "--search-backend",
        choices=["auto", "faiss", "torch"],
        default="auto",
        help="how retrieval/reranking tasks search: faiss (extra 'cpu' or 'gpu'), torch "
        "(mteb's exact default), auto = faiss when installed",
    )

    p = sub.add_parser(
        "metrics", help="unsupervised layer metrics (entropy, curvature, LiDAR, ...)"
    )
    _add_model_options(p)
    _add_task_options(p)
    p.add_argument("--layers", default="all", help="'all' or comma-separated layers")
    p.add_argument("--n", type=int, default=1000, help="texts sampled per task")
    p.add_argument(
        "--metrics", default="all", help="'all' or comma-separated: " + ", ".join(METRICS)
    )
    p.add_argument("--alpha", type=float, default=1.0, help="Rényi order of the entropies")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--n-views", type=int, default=16, help="augmented views per text (LiDAR)")
    p.add_argument("--overwrite", action="store_true", help="recompute tasks already done")

    p = sub.add_parser("mirror", help="write tasks' data (from the Hub) into the --data-dir layout")
    p.add_argument("tasks", nargs="+", help="mteb task names")
    p.add_argument("--to", type=Path, required=True, help="data directory to write into")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument(
        "--all-splits", action="store_true", help="all of mteb's eval splits, not only test"
    )

    p = sub.add_parser("table", help="print the layer x task table of a results folder")
    p.add_argument("output", type=Path, nargs="?", default=Path("results"))
    p.add_argument("--model", help="model name (default: all)")
    p.add_argument(
        "--csv",
        type=Path,
        help="also write the tables here, as one CSV keyed by model, revision, pooling, "
        "normalize and layer",
    )

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


def _common(args: argparse.Namespace) -> dict:
    """The model and task options that `sweep` and `metrics` share."""
    return dict(
        tasks=_split(args.tasks),
        benchmark=args.benchmark,
        data_dir=args.data_dir,
        output=args.output,
        layers=args.layers,
        pooling=args.pooling,
        name=args.name,
        revision=args.revision,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        max_length=args.max_length,
        trust_remote_code=args.trust_remote_code,
    )


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import sweep

    table = sweep(
        args.model,
        **_common(args),
        dims=args.dims,
        normalize=args.normalize,
        shard_size=args.shard_size,
        search_backend=args.search_backend,  # issue 14
    )
    _print_table(table)
    print(f"\nEncoded {table.attrs.get('n_encoded', 0)} new texts; the rest came from the store.")
    print(f"Results: {args.output} (mteb.ResultCache({str(args.output)!r}) reads them)")
    failures = table.attrs.get("failures") or {}
    for task, reason in failures.items():
        print(f"FAILED {task}: {reason}", file=sys.stderr)
    return 1 if failures else 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from .metrics.driver import layer_metrics

    df = layer_metrics(
        args.model,
        **_common(args),
        n=args.n,
        metrics=args.metrics,
        alpha=args.alpha,
        seed=args.seed,
        n_views=args.n_views,
        overwrite=args.overwrite,
    )
    wide = df.pivot_table(index=["dataset", "metric", "variant"], columns="layer", values="value")
    _print_table(wide)
    print(f"\nRows: {args.output / 'metrics'} (pd.read_parquet reads the folder)")
    return 0


def cmd_mirror(args: argparse.Namespace) -> int:
    from .tasks.mirror import mirror_tasks

    paths = mirror_tasks(
        args.tasks or None, args.to, benchmark=args.benchmark, overwrite=args.overwrite
    )
    for path in paths:
        print(f"wrote {path}")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from .tables import layer_results, layer_table

    long = layer_results(args.output, model=args.model)
    if long.empty:
        print(f"No layer results under {args.output}.", file=sys.stderr)
        return 1
    keys = ["model", "revision", "pooling", "normalize"]
    tables = {}
    for key, group in long.groupby(keys):
        model, revision, pooling, normalize = key
        print(f"\n{model} @ {revision}  pooling={pooling} normalize={normalize}")
        tables[key] = layer_table(group)
        _print_table(tables[key])
    if args.csv:
        # Every configuration in one file, so none overwrites another.
        pd.concat(tables, names=keys).to_csv(args.csv)
        print(f"\nwrote {args.csv}")
    return 0


COMMANDS = {"sweep": cmd_sweep, "metrics": cmd_metrics, "table": cmd_table, "mirror": cmd_mirror}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
