"""The BentoML service: load an exported folder, hand ``/classify`` to the mounted Starlette app.

``bentoml serve serve.service:Classifier`` imports this module, so it learns what to serve from
the environment (``bort serve`` sets it):

- ``BORT_SERVE_MODEL_DIR``: an exported folder (``run_dir/export/<role>/<precision>``); when
  unset, the model ``BORT_BENTO_MODEL`` (default ``bort-optimized:latest``) from the BentoML
  model store, which is the Bento's own store inside a container;
- ``BORT_SERVE_CONFIG``: the ``serve`` config section as JSON (limits, threads, batching),
  validated at import by :class:`bort.config.ServeConfig`, the schema ``bort serve`` resolves
  with: an unknown key or a wrong type stops start-up with one ``error:`` line and exit code 2;
- ``BORT_SERVE_ACCESS_LOG=1``: turn the access log on (read at import: it is class config);
- ``BORT_SERVE_TRACE=1``: OpenTelemetry spans for ``/classify`` too. Off by default: with no
  tracing exporter configured they go nowhere, and they cost ~0.3 ms a request (measured);
- ``BORT_BENTO_MODEL`` set at ``bentoml build`` time packs that model into the Bento.
"""

from __future__ import annotations

import logging
import os
import sys

import bentoml

from bort.config import ServeConfig
from bort.errors import ConfigError
from serve.app import Engine, JSONErrors, build_app
from serve.predictor import Predictor

log = logging.getLogger(__name__)

# tokenizers' parallel encode_batch costs more than it saves on request-sized batches: measured
# 4.0 ms against 0.7 ms for one 1,400-character text on 2 busy cores.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
BENTO_MODEL = os.environ.get("BORT_BENTO_MODEL", "")
try:  # at import, in the server's process too: a bad setting stops start-up, not every request
    SETTINGS = ServeConfig.from_json(os.environ.get("BORT_SERVE_CONFIG"))
except ConfigError as e:
    sys.stderr.write(f"error: {e}\n")
    sys.stderr.flush()
    os._exit(2)  # noqa: SLF001 - exit before BentoML turns this into a traceback per worker
http_app = build_app()


@bentoml.asgi_app(http_app, path="/")
@bentoml.service(
    name="bort-classifier",
    workers=1,  # one process: onnxruntime already uses every core given to it
    logging={"access": {"enabled": os.environ.get("BORT_SERVE_ACCESS_LOG") == "1"}},
    traffic={"timeout": 60},
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
                                   spin_stop=settings.ort_spin_stop)
        self.predictor.warm_up()
        http_app.state.engine = Engine(self.predictor, settings)
        log.info("serving %s from %s (%d threads, max %d tokens, batching %s, api key %s)",
                 self.predictor.name, folder, settings.num_threads, self.predictor.max_seq_len,
                 "on" if http_app.state.engine.batching else "off",
                 "required" if settings.api_key() else "off")

    def _stored_model_path(self) -> str:
        if BENTO_MODEL:
            return self.model_ref.path
        return bentoml.models.get("bort-optimized:latest").path

    @bentoml.on_shutdown
    def close(self) -> None:
        if http_app.state.engine is not None:
            http_app.state.engine.close()


Classifier.add_asgi_middleware(JSONErrors)
