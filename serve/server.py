"""``bort serve``: run the BentoML service for a run's deployed export, or for any model folder.

The server runs as ``python -m bentoml serve serve.service:Classifier`` under the process
supervisor (:mod:`bort.processes`): in its own process group, ready when ``/readyz`` answers, and
stopped with every process group BentoML's worker makes (SIGTERM, a grace period, SIGKILL). The
service learns its model folder and limits from environment variables (see :mod:`serve.service`).

What is served: ``serve.model_dir`` (``--model-dir``) when set — a folder ``bort export`` wrote, or
a Hugging Face sequence classifier exported on the fly (:mod:`serve.model_dir`) — else the folder
``bort export`` deployed for ``serve.model`` in the run.

:class:`ServerProcess` is reused by tests and benchmarks.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from bort import processes
from bort.artifacts import read_manifest
from bort.config import RunConfig, ServeConfig
from bort.errors import ArtifactError, BortError, ConfigError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent  # the folder holding serve/ (bentoml's working dir)
SERVICE = "serve.service:Classifier"


def run(cfg: RunConfig, run_dir: Path, args: Any = None) -> int:
    """Serve the chosen model folder until SIGINT/SIGTERM; print the URL once it answers.

    Raises:
        ConfigError: a non-loopback ``serve.host`` with no API key and ``serve.allow_open`` false
            (checked here before the model is loaded; the service checks again for itself).
    """
    if problem := cfg.serve.exposure_error():
        raise ConfigError(problem)
    folder, what = model_folder(cfg, run_dir)
    server = ServerProcess(folder, cfg.serve, log_path=None)
    stop = {"signal": None}

    def on_signal(signum: int, _frame: Any) -> None:
        stop["signal"] = signum
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        print(f"serving {what} ({folder}) at {server.url}\n"
              f"  POST {server.url}/classify  {{\"texts\": [...]}}; GET /healthz /readyz /metrics; "
              "Ctrl+C stops", flush=True)
        code = server.proc.wait()
        if stop["signal"] is None:
            raise BortError(f"the server exited by itself (code {code}); see its log above")
    except KeyboardInterrupt:
        log.info("stopping the server (signal %s)", stop["signal"] or "SIGINT")
    finally:
        server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0


def model_folder(cfg: RunConfig, run_dir: Path) -> tuple[Path, str]:
    """``(folder, how the banner names it)``: ``serve.model_dir`` when set, else the run's ``serve.model``."""
    model_dir = cfg.serve.model_dir  # "": the run's export
    if model_dir:
        from serve.model_dir import servable_folder

        return servable_folder(Path(model_dir), cfg.export.parity_atol), str(model_dir)
    return deployed_folder(run_dir, cfg.serve.model), cfg.serve.model


def deployed_folder(run_dir: Path, role: str) -> Path:
    """The folder ``bort export`` deployed for ``role`` (optimized | baseline), verified."""
    manifest = read_manifest(run_dir, "export")
    deployed = json.loads((manifest.dir / "deployed.json").read_text(encoding="utf-8"))
    if role not in deployed:
        raise ArtifactError(f"{manifest.dir}/deployed.json has no {role!r} model; rerun `bort export`")
    return manifest.dir / deployed[role]["folder"]


def service_env(folder: Path, serve_cfg: ServeConfig, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the service reads: model folder, serve config as JSON, access log."""
    env = dict(os.environ)
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["BORT_SERVE_MODEL_DIR"] = str(Path(folder).resolve())
    env["BORT_SERVE_CONFIG"] = serve_cfg.model_dump_json()
    env["BORT_SERVE_ACCESS_LOG"] = "1" if serve_cfg.access_log else "0"
    env["BORT_SERVE_TRACE"] = "1" if serve_cfg.trace_requests else "0"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def service_command(host: str, port: int) -> list[str]:
    """The command line that starts the service."""
    return [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", host, "--port", str(port),
            "--working-dir", str(ROOT)]


class ServerProcess:
    """One service process group on ``serve_cfg.host``; ``port`` 0 picks a free port.

    Args:
        folder: the exported model folder to serve.
        serve_cfg: the ``serve`` config section.
        log_path: where the server's output goes (None: this process's stdout/stderr).
        env: extra environment variables (e.g. the API key variable).
    """

    def __init__(self, folder: Path, serve_cfg: ServeConfig, log_path: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.folder, self.cfg, self.log_path = Path(folder), serve_cfg, log_path
        self.host = serve_cfg.host
        self.port = serve_cfg.port or processes.free_port(self.host)
        self.spec = processes.ServiceSpec(
            name="bort serve", command=tuple(service_command(self.host, self.port)), port=self.port,
            env=service_env(self.folder, serve_cfg, env), start_timeout_s=serve_cfg.startup_timeout_s,
            cwd=str(ROOT), host=self.host, port_hint="pick another with --port",
            timeout_hint="serve.startup_timeout_s")
        self.running: processes.RunningService | None = None

    @property
    def url(self) -> str:
        return self.spec.url

    @property
    def proc(self) -> Any:
        """The leader process (``python -m bentoml serve``), once started."""
        return self.running.proc if self.running else None

    @property
    def ready_s(self) -> float:
        return self.running.ready_s if self.running else 0.0

    def start(self) -> ServerProcess:
        """Start the process group and wait until ``/readyz`` answers 200."""
        self.running = processes.start(self.spec, self.log_path)
        return self

    def pids(self) -> set[int]:
        """Live processes of the server: the leader, its descendants, anything in their groups."""
        return self.running.pids() if self.running else set()

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM every process group of the server, wait up to ``grace_s``, then SIGKILL the rest."""
        if self.running is not None:
            processes.stop(self.running, grace_s)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
