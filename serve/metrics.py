"""The service's Prometheus metrics, and label values that cannot grow.

:class:`Meters` holds what an operator scales on: texts waiting for the model, texts per model
call, texts truncated, requests shed (by reason: ``queue_full``, ``deadline``, ``client_gone``).
They are plain ``prometheus_client`` instruments, which BentoML's ``/metrics`` exports beside its
own (it runs ``prometheus_client`` in multiprocess mode; the import is deferred to the worker,
where ``PROMETHEUS_MULTIPROC_DIR`` is set, as BentoML's own docs require). :class:`NoMeters`
stands in where nothing exports them (tests, ``bench/serve_stacks.py``).

:class:`PathLabels` and :class:`RealPath`: BentoML labels its request metrics with the raw URL
path, taken before routing, so every made-up path a scanner tries adds ~20 series that stay until
restart. BentoML has no setting for the label and no hook outside that middleware, so the service
wraps the app BentoML builds: :class:`PathLabels` (outermost) replaces a path no route serves by
``/{unknown}`` (and a path under a mounted folder by ``<mount>/{path}``) before BentoML reads it,
and :class:`RealPath` (inside BentoML's middlewares) puts the real path back before routing.
"""

from __future__ import annotations

from typing import Any

UNKNOWN = "/{unknown}"
SHED_REASONS = ("queue_full", "deadline", "client_gone")


class NoMeters:
    """The :class:`Meters` interface, recording nothing."""

    def queue_depth(self, texts: int) -> None:
        pass

    def model_call(self, texts: int, truncated: int) -> None:
        pass

    def shed(self, reason: str) -> None:
        pass


class Meters(NoMeters):
    """``bort_*`` Prometheus instruments: queue depth, batch size, truncation, shed requests."""

    def __init__(self, max_batch_texts: int) -> None:
        import prometheus_client as P  # here, not at import: see the module docstring

        buckets = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch_texts})
        self._depth = P.Gauge("bort_queue_depth_texts", "Texts (or pairs) waiting for the model",
                              multiprocess_mode="livesum")
        self._batch = P.Histogram("bort_batch_size_texts", "Texts (or pairs) per model call", buckets=buckets)
        self._truncated = P.Counter("bort_texts_truncated", "Texts cut to serve.max_seq_len tokens")
        self._shed = P.Counter("bort_requests_shed", "Requests answered 503 without being computed",
                               ["reason"])
        for reason in SHED_REASONS:  # every series exists from the start, so rate() sees the first one
            self._shed.labels(reason)

    def queue_depth(self, texts: int) -> None:
        self._depth.set(texts)

    def model_call(self, texts: int, truncated: int) -> None:
        self._batch.observe(texts)
        if truncated:
            self._truncated.inc(truncated)

    def shed(self, reason: str) -> None:
        self._shed.labels(reason).inc()


def route_paths(routes: list[Any]) -> tuple[frozenset[str], tuple[str, ...]]:
    """(exact paths, mounted folder prefixes) of Starlette routes; a mount at ``/`` is looked into."""
    exact: set[str] = set()
    prefixes: list[str] = []
    for route in routes:
        inner = getattr(route, "routes", None)
        if inner is not None and route.path in ("", "/"):
            more, deeper = route_paths(inner)
            exact |= more
            prefixes += deeper
        elif inner is not None:
            prefixes.append(route.path.rstrip("/") + "/")
        elif getattr(route, "path", None):
            exact.add(route.path)
    return frozenset(exact), tuple(prefixes)


class PathLabels:
    """Outermost ASGI layer: a path no route serves reaches BentoML's metrics as ``/{unknown}``."""

    def __init__(self, app: Any, exact: frozenset[str], prefixes: tuple[str, ...]) -> None:
        self.app, self.exact, self.prefixes = app, exact, prefixes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] not in self.exact:
            path = scope["path"]
            scope["bort.path"] = path
            scope["path"] = next((p + "{path}" for p in self.prefixes if path.startswith(p)), UNKNOWN)
        await self.app(scope, receive, send)


class RealPath:
    """Inside BentoML's middlewares, before routing: the path :class:`PathLabels` replaced comes back."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        real = scope.get("bort.path")
        if real is not None:
            scope["path"] = real
        await self.app(scope, receive, send)
