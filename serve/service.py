"""The BentoML service: load an exported folder, hand ``/classify`` to the mounted Starlette app.

``bentoml serve serve.service:Classifier`` imports this module, so it learns what to serve from
the environment (``bort serve`` sets it):

- ``BORT_SERVE_MODEL_DIR``: an exported folder (``run_dir/export/<role>/<precision>``); when
  unset, the model ``BORT_BENTO_MODEL`` (default ``bort-optimized:latest``) from the BentoML
  model store, which is the Bento's own store inside a container;
- ``BORT_SERVE_CONFIG``: the ``serve`` config section as JSON (limits, threads, batching),
  validated at import by :class:`bort.config.ServeConfig`, the schema ``bort serve`` resolves
  with: an unknown key or a wrong type stops start-up with one ``error:`` line and exit code 2,
  and so does a non-loopback address (``bentoml serve --host``, ``BENTOML_HOST``, or BentoML's
  default ``0.0.0.0`` in a container) with no API key unless ``allow_open`` is true;
- ``BORT_SERVE_ACCESS_LOG=1``: turn the access log on (read at import: it is class config);
- ``BORT_SERVE_TRACE=1``: OpenTelemetry spans for ``/classify`` too. Off by default: with no
  tracing exporter configured they go nowhere, and they cost ~0.3 ms a request (measured);
- ``BORT_BENTO_MODEL`` set at ``bentoml build`` time packs that model into the Bento;
- ``BORT_SERVE_CALL_LOG``: a file to which every model call appends a line (batch size, padding,
  times; :class:`serve.predictor.Predictor`): the load test reads the batches the server formed.
"""

from __future__ import annotations

import logging
import math
import os
import sys

import bentoml

from bort.config import ServeConfig
from bort.errors import ConfigError
from serve.app import Engine, JSONErrors, ShedWhenFull, build_app
from serve.metrics import Meters, PathLabels, RealPath, route_paths
from serve.openapi import OpenAPIPaths, classify_path
from serve.predictor import Predictor

log = logging.getLogger(__name__)


def bound_host() -> str | None:
    """The address ``bentoml serve`` is about to bind (``--host`` / ``BENTOML_HOST``, else BentoML's
    configured default), read from the running command; None where no such command runs (the
    worker, which inherits the bound socket from it; ``bentoml build``; an import from Python)."""
    import click

    context = click.get_current_context(silent=True)
    if context is None or "host" not in context.params or "fd" in context.params:
        return None
    if context.params["host"]:
        return str(context.params["host"])
    from bentoml._internal.configuration.containers import BentoMLContainer

    return str(BentoMLContainer.http.host.get())


# tokenizers' parallel encode_batch costs more than it saves on request-sized batches: measured
# 4.0 ms against 0.7 ms for one 1,400-character text on 2 busy cores.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
BENTO_MODEL = os.environ.get("BORT_BENTO_MODEL", "")
try:  # at import, in the server's process too: a bad setting stops start-up, not every request
    SETTINGS = ServeConfig.from_json(os.environ.get("BORT_SERVE_CONFIG"))
    HOST = bound_host()
    if HOST is not None and (problem := SETTINGS.exposure_error(HOST)):
        raise ConfigError(problem)
except ConfigError as e:
    sys.stderr.write(f"error: {e}\n")
    sys.stderr.flush()
    os._exit(2)  # noqa: SLF001 - exit before BentoML turns this into a traceback per worker
http_app = build_app()
# BentoML's backstop only: our deadlines (read, then queue) answer first
TIMEOUT_S = max(60, math.ceil(SETTINGS.read_timeout_s + SETTINGS.request_timeout_s) + 10)


@bentoml.asgi_app(http_app, path="/")
@bentoml.service(
    name="bort-classifier",
    workers=1,  # one process: onnxruntime already uses every core given to it
    logging={"access": {"enabled": os.environ.get("BORT_SERVE_ACCESS_LOG") == "1"}},
    traffic={"timeout": TIMEOUT_S},
    tracing={"excluded_urls": [] if os.environ.get("BORT_SERVE_TRACE") == "1" else ["/classify"]},
)
class Classifier:
    """Text classification with an ONNX model exported by ``bort export``."""

    if BENTO_MODEL:  # recorded in the Bento only when asked for: a clean clone must build
        model_ref = bentoml.models.BentoModel(BENTO_MODEL)

    def __init__(self) -> None:
        settings = SETTINGS
        folder = os.environ.get("BORT_SERVE_MODEL_DIR") or self._stored_model_path()
        self.predictor = Predictor(folder, num_threads=settings.num_threads,
                                   max_seq_len=settings.max_seq_len, spin=settings.ort_spin,
                                   spin_stop=settings.ort_spin_stop,
                                   call_log=os.environ.get("BORT_SERVE_CALL_LOG") or None)
        self.predictor.warm_up()
        engine = Engine(self.predictor, settings, Meters(settings.max_batch_texts))
        keyed = bool(engine.api_key)
        http_app.state.classify_doc = (*classify_path(settings, self.predictor.labels, self.predictor.is_pair,
                                                      keyed), keyed)
        http_app.state.engine = engine
        log.info("serving %s from %s (%d threads, max %d tokens, batching %s, api key %s)",
                 self.predictor.name, folder, settings.num_threads, self.predictor.max_seq_len,
                 "on" if http_app.state.engine.batching else "off",
                 "required" if settings.api_key() else "off")

    def _stored_model_path(self) -> str:
        if BENTO_MODEL:
            return self.model_ref.path
        return bentoml.models.get("bort-optimized:latest").path

    async def __is_ready__(self) -> bool:
        """BentoML's readiness hook: ``/readyz`` answers 503 while the queue is full or a model call is stuck."""
        return why_not_ready() is None

    @bentoml.on_shutdown
    def close(self) -> None:
        if http_app.state.engine is not None:
            http_app.state.engine.close()


def why_not_ready() -> str | None:
    engine = http_app.state.engine
    return "not ready: the model is loading" if engine is None else engine.not_ready()


def describe() -> tuple | None:
    """``/classify`` for the schema: (path item, schemas, API key required); None until the model loads."""
    return getattr(http_app.state, "classify_doc", None)


class _Service(type(Classifier)):
    """BentoML's service class, with two layers outside the app its ``to_asgi`` builds, where BentoML
    offers no hook (its middlewares all sit inside its metrics middleware): :class:`ShedWhenFull`
    and :class:`serve.metrics.PathLabels` (their docstrings say why). ``Classifier`` keeps its
    identity; only its class is swapped for this subclass, which adds no state (empty slots)."""

    __slots__ = ()

    def to_asgi(self, is_main: bool = True):  # noqa: ANN201 - BentoML's signature
        app = super().to_asgi(is_main)
        exact, prefixes = route_paths(app.routes)
        app.add_middleware(ShedWhenFull, state=http_app.state)  # both before BentoML's middlewares
        app.add_middleware(PathLabels, exact=exact, prefixes=prefixes)  # outermost: before its metrics
        return app


Classifier.__class__ = _Service
Classifier.add_asgi_middleware(RealPath)
Classifier.add_asgi_middleware(JSONErrors, why_not_ready=why_not_ready)
Classifier.add_asgi_middleware(OpenAPIPaths, describe=describe)
