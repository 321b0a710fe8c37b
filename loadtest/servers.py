"""Start and stop the services under test: any command that serves HTTP on 127.0.0.1.

A service runs in its own process group (BentoML starts worker processes that outlive a plain
kill of the parent), is considered up when its readiness URL answers 200, and is always stopped by
signalling the whole group: SIGTERM, a grace period, then SIGKILL, until no process of the group is
left. :func:`serving` does that in a ``finally``, whatever happens inside.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bort.errors import BortError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"  # all load-test traffic stays on loopback


@dataclass(frozen=True)
class ServiceSpec:
    """How to start one service: a command that listens on ``HOST:port`` and a readiness path."""

    name: str
    command: tuple[str, ...]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    ready_path: str = "/readyz"
    start_timeout_s: float = 180.0
    cwd: str | None = None
    label: str = ""  # how reports name it, e.g. "source (ONNX fp32)" or "BERT-large shape (speed only)"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


@dataclass
class RunningService:
    """A started service: its process, process-group id, log file and time to readiness."""

    spec: ServiceSpec
    proc: subprocess.Popen
    pgid: int
    log_path: Path
    ready_s: float = 0.0
    groups: set[int] = field(default_factory=set)  # our group and those its descendants started

    def refresh_groups(self) -> set[int]:
        """Add the process groups the service's descendants are in now; return all known groups."""
        self.groups |= {self.pgid} | descendant_groups(self.pgid)
        return self.groups

    def cpu_s(self) -> float:
        """CPU seconds used so far by every live process of the service's groups."""
        return sum(group_cpu_s(g) for g in self.refresh_groups())


def parse_cpus(text: str) -> set[int] | None:
    """``"0-1,3"`` -> {0, 1, 3}; empty -> None (inherit this process's CPU set)."""
    if not text.strip():
        return None
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    except ValueError as e:
        raise BortError(f"CPU list {text!r}: expected e.g. 0-1 or 0,2") from e
    usable = os.sched_getaffinity(0)
    if not cpus <= usable:
        raise BortError(f"CPU list {text!r} names CPUs outside this process's set {sorted(usable)}")
    return cpus


def port_in_use(port: int) -> bool:
    """True when something already accepts connections on ``HOST:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def group_members(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes in process group `pgid`, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state, ppid, pgrp, ...
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of group `pgid`."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in group_members(pgid):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start(spec: ServiceSpec, log_path: Path, cpus: set[int] | None = None) -> RunningService:
    """Start `spec` in a new process group and wait until it is ready; on any failure, stop it.

    Raises:
        BortError: the port is taken, the process exits, or it is not ready in time (with its log tail).
    """
    if port_in_use(spec.port):
        raise BortError(f"port {spec.port} on {HOST} is already in use (a server left running?); "
                        "stop it or choose another with --set loadtest.port=N")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **spec.env}
    preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(list(spec.command), stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                cwd=spec.cwd, start_new_session=True, preexec_fn=preexec)
    running = RunningService(spec=spec, proc=proc, pgid=proc.pid, log_path=log_path)
    log.info("started %s (pid %d, log %s)", spec.name, proc.pid, log_path)
    try:
        running.ready_s = wait_ready(running)
        running.refresh_groups()
    except BaseException:
        stop(running)
        raise
    log.info("%s ready on %s after %.1f s", spec.name, spec.url, running.ready_s)
    return running


def wait_ready(running: RunningService) -> float:
    """Poll the readiness URL until it answers 200; seconds from start to ready."""
    spec, t0 = running.spec, time.monotonic()
    url = spec.url + spec.ready_path
    while True:
        if running.proc.poll() is not None:
            raise BortError(f"{spec.name} exited with code {running.proc.returncode} before it was ready; "
                            f"its log ({running.log_path}) ends:\n{_tail(running.log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return time.monotonic() - t0
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() - t0 > spec.start_timeout_s:
            raise BortError(f"{spec.name} was not ready at {url} within {spec.start_timeout_s:.0f} s; "
                            f"its log ({running.log_path}) ends:\n{_tail(running.log_path)}")
        time.sleep(0.2)


def descendant_groups(pid: int) -> set[int]:
    """Process groups of `pid`'s live descendants. A service may start its own worker in a new
    session (``bort serve`` does), out of reach of a signal to our group: we track those too."""
    parent: dict[int, int] = {}
    pgrp: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            if fields[0] not in ("Z", "X"):
                parent[int(entry.name)], pgrp[int(entry.name)] = int(fields[1]), int(fields[2])
    found, frontier = set(), [pid]
    while frontier:
        current = frontier.pop()
        children = [p for p, pp in parent.items() if pp == current]
        found.update(pgrp[c] for c in children)
        frontier.extend(children)
    return found - {os.getpgrp(), 0}


def stop(running: RunningService, grace_s: float = 15.0) -> None:
    """Stop the service's process group and every group its descendants started.

    SIGTERM to the service's group (it may stop its own workers cleanly) and up to `grace_s` for
    it to exit; then SIGTERM to any group still alive, 2 s, then SIGKILL; the leader is reaped.
    """
    groups = running.refresh_groups()

    def signal_groups(targets: set[int], sig: int) -> None:
        for group in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, sig)

    def wait_until(done, wait_s: float) -> bool:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            running.proc.poll()  # reap the leader so it does not linger as a zombie
            if done():
                return True
            time.sleep(0.05)
        return done()

    signal_groups({running.pgid}, signal.SIGTERM)
    wait_until(lambda: running.proc.returncode is not None and not group_members(running.pgid), grace_s)
    for sig, wait_s in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 10.0)):
        alive = {g for g in groups if group_members(g)}
        if sig == signal.SIGTERM:
            alive.discard(running.pgid)  # it had its SIGTERM and its grace period
        if not alive and (sig == signal.SIGTERM or running.proc.returncode is not None):
            continue
        signal_groups(alive, sig)
        wait_until(lambda: running.proc.returncode is not None and not any(group_members(g) for g in groups),
                   wait_s)
    left = {g: group_members(g) for g in groups if group_members(g)}
    if left:
        log.error("%s: processes %s still alive after SIGKILL", running.spec.name, left)
        return
    for group in groups:
        _wait_reaped(group)
    log.info("stopped %s (process groups %s)", running.spec.name, sorted(groups))


def _wait_reaped(pgid: int, timeout_s: float = 5.0) -> bool:
    """Wait until the group is gone for the kernel too: orphaned children are reaped by init,
    not by us, so they can linger as zombies for a moment after they died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        time.sleep(0.02)
    log.debug("process group %d: only zombies left after %.0f s", pgid, timeout_s)
    return False


@contextlib.contextmanager
def serving(spec: ServiceSpec, log_path: Path, cpus: set[int] | None = None) -> Iterator[RunningService]:
    """Context manager: the service is ready inside; its whole process group is stopped on exit."""
    running = start(spec, log_path, cpus)
    try:
        yield running
    finally:
        stop(running)


def python_module_command(module: str, *args: str) -> tuple[str, ...]:
    """``python -m module args`` with this interpreter (the project's environment)."""
    return (sys.executable, "-m", module, *args)
