"""One small executor interface for evaluating candidates: anything with ``submit(fn, *args) ->
concurrent.futures.Future`` and ``shutdown()``.

``optimize.executor`` picks one: ``inline`` (this process), ``process`` (a local pool of
``optimize.workers`` processes) or ``ray`` (:class:`bort.cluster.RayExecutor`: Ray tasks of
``optimize.ray_cpus_per_task`` CPUs, the error function put in the object store once). Any other
``concurrent.futures``-compatible executor works too when handed to ``search.run_search``: a Dask
``distributed.Client(...).get_executor()`` is one as it stands. Only the error phase runs through
it; latency is timed serially on the target (:mod:`optimize.cluster` for the Ray case; README,
"Running the search on a cluster").
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Protocol


class Executor(Protocol):
    """What the search needs from an executor."""

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future: ...

    def shutdown(self, wait: bool = True) -> None: ...


class InlineExecutor:
    """Runs each call at once in this process (the default on a 2-core machine: a second worker
    would only compete with the first for the same cores)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(e)
        return future

    def shutdown(self, wait: bool = True) -> None:
        return None


def resolve_kind(kind: str, workers: int) -> str:
    """``optimize.executor`` with ``auto`` resolved: inline for one worker, a process pool for more."""
    if kind == "auto":
        return "inline" if workers <= 1 else "process"
    return kind


def make_executor(workers: int, kind: str = "auto", ray: Any = None, cpus_per_task: float = 1.0) -> Executor:
    """The executor `kind` names (``fn`` and its arguments must pickle for ``process`` and ``ray``).

    Args:
        workers: the process pool's size.
        kind: ``auto``, ``inline``, ``process`` or ``ray``.
        ray: the connected ``ray`` module (kind ``ray``; :func:`bort.cluster.connected`).
        cpus_per_task: CPUs each Ray task declares.
    """
    kind = resolve_kind(kind, workers)
    if kind == "inline":
        return InlineExecutor()
    if kind == "ray":
        from bort.cluster import RayExecutor

        return RayExecutor(ray, num_cpus=cpus_per_task)
    import multiprocessing

    # spawn: torch and ONNX Runtime thread pools do not survive fork cleanly.
    return ProcessPoolExecutor(max_workers=max(1, workers), mp_context=multiprocessing.get_context("spawn"))


def in_flight(executor: Executor, workers: int) -> int:
    """How many candidates to keep in flight: 1 inline, the pool's size, or the Ray cluster's slots."""
    if isinstance(executor, InlineExecutor):
        return 1
    return int(getattr(executor, "slots", workers))
