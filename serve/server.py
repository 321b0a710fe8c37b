"""``bort serve``: run the BentoML service for the optimised or the baseline export.

The server runs as ``python -m bentoml serve serve.service:Classifier`` in its own process
group: BentoML's worker process outlives a plain kill of its parent, so stopping always signals
the whole group (SIGTERM, a grace period, then SIGKILL). The service learns its model folder
and limits from environment variables (see :mod:`serve.service`).

:class:`ServerProcess` is reused by tests, benchmarks and the load test.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bort.artifacts import read_manifest
from bort.errors import ArtifactError, BortError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent  # the folder holding serve/ (bentoml's working dir)
SERVICE = "serve.service:Classifier"


def run(cfg: Any, run_dir: Path, args: Any = None) -> int:
    """Serve ``cfg.serve.model`` from ``run_dir``'s export until SIGINT/SIGTERM; print the URL."""
    folder = deployed_folder(run_dir, cfg.serve.model)
    server = ServerProcess(folder, cfg.serve, log_path=None)
    stop = {"signal": None}

    def on_signal(signum: int, _frame: Any) -> None:
        stop["signal"] = signum
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        print(f"serving {cfg.serve.model} ({folder}) at {server.url}\n"
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


def deployed_folder(run_dir: Path, role: str) -> Path:
    """The folder ``bort export`` deployed for ``role`` (optimized | baseline), verified."""
    manifest = read_manifest(run_dir, "export")
    deployed = json.loads((manifest.dir / "deployed.json").read_text(encoding="utf-8"))
    if role not in deployed:
        raise ArtifactError(f"{manifest.dir}/deployed.json has no {role!r} model; rerun `bort export`")
    return manifest.dir / deployed[role]["folder"]


def _process_table() -> dict[int, tuple[int, int]]:
    """``{pid: (parent pid, process group)}`` of every live (non-zombie) process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            table[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return table


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def service_env(folder: Path, serve_cfg: Any, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the service reads: model folder, serve config as JSON, access log."""
    env = dict(os.environ)
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["BORT_SERVE_MODEL_DIR"] = str(Path(folder).resolve())
    env["BORT_SERVE_CONFIG"] = json.dumps(asdict(serve_cfg))
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

    def __init__(self, folder: Path, serve_cfg: Any, log_path: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.folder, self.cfg, self.log_path = Path(folder), serve_cfg, log_path
        self.host = serve_cfg.host
        self.port = serve_cfg.port or free_port(self.host)
        self.env = service_env(self.folder, serve_cfg, env)
        self.proc: subprocess.Popen | None = None
        self.ready_s = 0.0
        self._known: set[int] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServerProcess:
        """Start the process group and wait until ``/readyz`` answers 200."""
        if port_in_use(self.host, self.port):
            raise BortError(f"port {self.port} on {self.host} is already in use; pick another with --port")
        out = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 - closed in stop()
        started = time.perf_counter()
        self.proc = subprocess.Popen(service_command(self.host, self.port), env=self.env, cwd=ROOT,
                                     stdout=out, stderr=subprocess.STDOUT if out else None,
                                     start_new_session=True)
        self._out = out
        self.wait_ready(self.cfg.startup_timeout_s)
        self.ready_s = time.perf_counter() - started
        log.info("server ready at %s in %.1f s (pid %d)", self.url, self.ready_s, self.proc.pid)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        """Poll ``/readyz``; fail with the log's tail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise BortError(f"the server exited during start (code {self.proc.returncode}){self._tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise BortError(f"the server was not ready after {timeout_s:.0f} s (serve.startup_timeout_s){self._tail()}")

    def _tail(self) -> str:
        if not self.log_path or not Path(self.log_path).is_file():
            return ""
        lines = Path(self.log_path).read_text(errors="replace").splitlines()[-15:]
        return ":\n" + "\n".join(lines)

    def pids(self) -> set[int]:
        """Live processes of the server: the leader, its descendants, and anything in their groups.

        BentoML's worker runs in a process group of its own (not the leader's), so a group kill
        of the leader alone is not enough; stop() signals every group found here.
        """
        if self.proc is None:
            return set()
        table = _process_table()
        alive = {self.proc.pid} & table.keys() | self._known
        frontier = set(alive)
        while frontier:  # descendants by parent pid
            frontier = {pid for pid, (ppid, _) in table.items() if ppid in frontier} - alive
            alive |= frontier
        groups = {table[pid][1] for pid in alive if pid in table} | {self.proc.pid}
        alive |= {pid for pid, (_, pgid) in table.items() if pgid in groups}
        self._known = {pid for pid in alive if pid in table}
        return set(self._known)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM every process group of the server, wait up to ``grace_s``, then SIGKILL the rest."""
        if self.proc is None:
            return
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            pids = self.pids()
            if not pids:
                break
            for pgid in {_pgid(pid) for pid in pids} - {None, os.getpgrp()}:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, sig)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and self.pids():
                self.proc.poll()  # reap the leader so it does not linger as a zombie
                time.sleep(0.05)
        self.proc.poll()
        if getattr(self, "_out", None):
            self._out.close()
            self._out = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
