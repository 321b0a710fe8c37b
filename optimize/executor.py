"""One small executor interface for evaluating candidates: anything with ``submit(fn, *args) ->
concurrent.futures.Future`` and ``shutdown()``.

Locally that is this machine, inline (one worker) or a process pool. On a cluster it is any
``concurrent.futures``-compatible executor: a Dask ``distributed.Client(...).get_executor()``
is one as it stands, and Ray tasks fit through a thin wrapper whose ``submit`` returns
``ray.remote(fn).remote(*args).future()``. Only the error phase is distributed that way; the
latency phase always runs serially on the target machine (see the README, "Running the search
on a cluster").
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


def make_executor(workers: int) -> Executor:
    """Inline for ``workers <= 1``, else a local process pool (``fn`` and its arguments must pickle)."""
    if workers <= 1:
        return InlineExecutor()
    import multiprocessing

    # spawn: torch and ONNX Runtime thread pools do not survive fork cleanly.
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
