"""Ray: each encode unit a task holding one GPU (none on a CPU-only cluster), each score unit
a CPU task. Ray schedules, retries a crashed worker's task and reports it; the units
themselves stay resumable (they skip what the store and result root already hold), so a rerun
of the same command finishes whatever a dead worker or driver left.

Without an address a local Ray instance is started (`ray.init()`); with one (`--ray-address
ray://head:10001` or `auto` on a cluster node) the driver joins that cluster. Every node must
import this package (install it there) and see the store and result root (checked with a
probe file, one task pinned to each alive node).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .extras import require
from .probe import (
    Probe,
    SharedFilesystemError,
    node_name,
    probe_problem,
    run_checked,
    shared_probes,
)

U = TypeVar("U")
R = TypeVar("R")


def _import_ray():
    return require("ray", executor="ray", extra="ray")


def _probe_node(probes: Sequence[Probe]) -> tuple[str, str | None, str | None]:
    """On one node: (its host name, the first probe it cannot read, why)."""
    for probe in probes:
        reason = probe_problem(probe)
        if reason is not None:
            return node_name(), probe.path, reason
    return node_name(), None, None


class RayExecutor:
    """Runs units as Ray tasks; yields `(unit, result or exception)` in completion order.

    `num_gpus_per_encode`: GPUs per encode unit; None = 1 where the cluster has GPUs, else 0.
    `roots`: folders every worker must see (the result root, the store), probed on each node
    before the first unit runs. `max_retries`: how often Ray reruns a task whose worker died
    (never one that raised). `init_kwargs`: passed to `ray.init` (e.g. `num_cpus`,
    `runtime_env`).
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        num_gpus_per_encode: float | None = None,
        roots: Sequence[Path | str] = (),
        max_retries: int = 1,
        **init_kwargs: Any,
    ) -> None:
        if num_gpus_per_encode is not None and num_gpus_per_encode < 0:
            raise ValueError(f"num_gpus_per_encode must be >= 0, got {num_gpus_per_encode}.")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}.")
        self.ray = _import_ray()
        self.address = address
        self.num_gpus_per_encode = num_gpus_per_encode
        self.roots = [Path(r) for r in roots]
        self.max_retries = max_retries
        self.init_kwargs = init_kwargs
        self._started = False  # we started the local instance, so we shut it down
        self._checked_nodes: set[str] = set()

    # ---- the cluster

    def connect(self) -> None:
        """Join `address`, or start a local instance; idempotent."""
        ray = self.ray
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": True} | self.init_kwargs
            if self.address is None:
                ray.init(**kwargs)
                self._started = True
            else:
                ray.init(address=self.address, **kwargs)
        if self.num_gpus_per_encode is None:
            self.num_gpus_per_encode = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0

    def close(self) -> None:
        """Shut down the local instance this executor started (a joined cluster stays)."""
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
        self._started = False

    def shutdown(self, cancel: bool = False) -> None:
        """The `Executor` protocol's end of a run: `close` (units already ended)."""
        self.close()

    def __enter__(self) -> RayExecutor:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_nodes(self, probes: Sequence[Probe]) -> None:
        """One zero-CPU task pinned to each alive node reads the probes back; the first node that
        cannot stops the run (`SharedFilesystemError` naming it and the path)."""
        ray = self.ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        probe = ray.remote(num_cpus=0, max_retries=0)(_probe_node)
        nodes = [
            n for n in ray.nodes() if n.get("Alive") and n["NodeID"] not in self._checked_nodes
        ]
        refs = [
            probe.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(probes)
            for n in nodes
        ]
        for node, (host, path, reason) in zip(nodes, ray.get(refs), strict=True):
            if path is not None:
                ip = node.get("NodeManagerAddress", "?")
                raise SharedFilesystemError(
                    f"{host} ({ip}, Ray node {node['NodeID'][:8]})", path, reason
                )
        self._checked_nodes.update(n["NodeID"] for n in nodes)

    # ---- the Executor protocol

    def map(
        self, fn: Callable[[U], R], units: Sequence[U], *, gpu: bool
    ) -> Iterator[tuple[U, R | BaseException]]:
        """Submit every unit now (so several maps can be in flight), then yield each as it
        finishes. Closing the iterator early (an interrupted driver) cancels the units still
        queued; the probe files are removed once the iterator ends."""
        units = list(units)
        if not units:
            return iter(())
        self.connect()
        probes = shared_probes(self.roots)
        written = probes.__enter__()
        try:
            if written:
                self.check_nodes(written)
            task = self.ray.remote(run_checked).options(
                num_cpus=1,
                num_gpus=self.num_gpus_per_encode if gpu else 0,
                max_retries=self.max_retries,
                retry_exceptions=False,
            )
            pending = {task.remote(fn, unit, written): unit for unit in units}
        except BaseException:
            probes.__exit__(None, None, None)
            raise
        return self._collect(pending, probes)

    def _collect(self, pending: dict[Any, Any], probes: Any) -> Iterator[tuple[Any, Any]]:
        try:
            while pending:
                done, _ = self.ray.wait(list(pending), num_returns=1)
                unit = pending.pop(done[0])
                yield unit, self._outcome(done[0])
        finally:
            for ref in pending:
                self.ray.cancel(ref)
            probes.__exit__(None, None, None)

    def _outcome(self, ref: Any) -> Any:
        """The unit's result, or the exception it raised / the worker crash Ray reports."""
        from ray.exceptions import RayError, RayTaskError

        try:
            outcome = self.ray.get(ref)
        except RayTaskError as exc:  # run_checked catches Exceptions; this is e.g. SystemExit
            return getattr(exc, "cause", None) or exc
        except RayError as exc:  # the worker died (killed, out of memory) and retries ran out
            return exc
        return outcome.error if outcome.error is not None else outcome.value
