"""The one process supervisor: start a service, wait until it answers, stop all of it.

Used by ``bort serve`` (the BentoML server), ``bort loadtest`` (``bort serve`` and the PyTorch
baseline, Locust), benchmarks and tests. A service is a command started in a session, so a
process group, of its own (optionally pinned to CPUs); it is up when its readiness URL answers
200, and when it dies first or takes too long the error carries the tail of its log.

BentoML starts its worker in a process group of its own, which outlives a signal to the parent's
group, and ``bort serve`` starts BentoML in a new session: so the supervisor tracks every process
group the service's descendants create (psutil, the leader's children, recursively) and stopping
signals each of them: SIGTERM, a grace period, SIGKILL, until no process is left; the leader is
reaped. Only groups that still hold a process descended from the command started here are ever
signalled, so a recycled process-group id is never hit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil

from bort.errors import BortError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"  # services bort starts for itself listen on loopback only


@dataclass(frozen=True)
class ServiceSpec:
    """How to start one service: a command that listens on ``host:port`` and a readiness path.

    ``port_hint`` and ``timeout_hint`` finish the error messages with the setting that fixes them.
    """

    name: str
    command: tuple[str, ...]
    port: int
    env: dict[str, str] = field(default_factory=dict)  # on top of this process's environment
    ready_path: str = "/readyz"
    start_timeout_s: float = 180.0
    cwd: str | None = None
    label: str = ""  # how reports name it, e.g. "source (ONNX fp32)"
    host: str = HOST
    port_hint: str = "stop it or choose another port"
    timeout_hint: str = ""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass
class RunningService:
    """A started service: its leader process, log, time to readiness and the groups it made."""

    spec: ServiceSpec
    proc: subprocess.Popen
    log_path: Path | None = None
    ready_s: float = 0.0
    groups: set[int] = field(default_factory=set)  # every process group of the service seen so far
    _known: dict[int, psutil.Process] = field(default_factory=dict, repr=False)

    @property
    def pgid(self) -> int:
        """The leader's process group (it leads a session of its own)."""
        return self.proc.pid

    def refresh_groups(self) -> set[int]:
        """Track the leader's live descendants and every process of their groups; return all groups seen."""
        # Until we reap it, the leader's pid cannot be reused: it is ours, alive or a zombie.
        leader = _process(self.proc.pid) if self.proc.returncode is None else None
        if leader is not None and _alive(leader):
            self._known[leader.pid] = leader
            with contextlib.suppress(psutil.Error):
                self._known.update({p.pid: p for p in leader.children(recursive=True)})
        owned = self._owned_groups()
        for p, pgid in _live_processes():  # members a group gained since the last look
            if pgid in owned:
                self._known.setdefault(p.pid, p)
        self.groups |= owned
        return self.groups

    def live_groups(self) -> set[int]:
        """Process groups that still hold a live process of the service (the only ones signalled)."""
        self.refresh_groups()
        return self._owned_groups()

    def pids(self) -> set[int]:
        """Live processes of the service: the leader, its descendants, anything in their groups."""
        groups = self.live_groups()
        return {p.pid for p, pgid in _live_processes() if pgid in groups}

    def cpu_s(self) -> float:
        """CPU seconds (user + system) used so far by the live processes of the service."""
        return sum(group_cpu_s(g) for g in self.live_groups())

    def _owned_groups(self) -> set[int]:
        groups = {_pgid_of(p) for p in self._known.values() if _alive(p)}
        return groups - {None, 0, os.getpgrp()}


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _alive(p: psutil.Process) -> bool:
    """Running and not a zombie (``is_running`` also tells a recycled pid from the one we saw)."""
    try:
        return p.is_running() and p.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.Error:
        return False


def _pgid_of(p: psutil.Process) -> int | None:
    try:
        return os.getpgid(p.pid)
    except OSError:
        return None


def _live_processes() -> Iterator[tuple[psutil.Process, int]]:
    """(process, process group) of every live, non-zombie process on the machine."""
    for p in psutil.process_iter():
        pgid = _pgid_of(p)
        if pgid is not None and _alive(p):
            yield p, pgid


def group_members(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes in process group `pgid`."""
    return sorted(p.pid for p, group in _live_processes() if group == pgid)


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of group `pgid`."""
    total = 0.0
    for p, group in _live_processes():
        if group == pgid:
            with contextlib.suppress(psutil.Error):
                times = p.cpu_times()
                total += times.user + times.system
    return total


def descendants(pid: int) -> set[int]:
    """Pids of `pid`'s live descendants (empty when it is gone)."""
    p = _process(pid)
    if p is None:
        return set()
    with contextlib.suppress(psutil.Error):
        return {c.pid for c in p.children(recursive=True) if _alive(c)}
    return set()


def alive(pids: set[int]) -> set[int]:
    """Those of `pids` that are still live processes (zombies count as gone)."""
    return {pid for pid in pids if (p := _process(pid)) is not None and _alive(p)}


def parse_cpus(text: str) -> set[int] | None:
    """``"0-1,3"`` -> {0, 1, 3}; empty -> None (inherit this process's CPU set).

    Raises:
        BortError: the list does not parse, or names CPUs this process may not use.
    """
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


def free_port(host: str = HOST) -> int:
    """A port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(port: int, host: str = HOST) -> bool:
    """True when something already accepts connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def spawn(command: list[str] | tuple[str, ...], output: IO[bytes] | None = None,
          env: dict[str, str] | None = None, cwd: str | Path | None = None,
          cpus: set[int] | None = None) -> subprocess.Popen:
    """Start `command` in a new session (so its own process group), pinned to `cpus` when given.

    Args:
        output: an open binary file for stdout and stderr; None: this process's own.
        env: the whole environment (None: this process's).
    """
    preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    return subprocess.Popen(list(command), stdout=output, stderr=subprocess.STDOUT if output else None,
                            env=env, cwd=cwd, start_new_session=True, preexec_fn=preexec)


def kill_group(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGKILL the process group `proc` leads (a :func:`spawn` child) and reap `proc`."""
    if proc.poll() is not None and not group_members(proc.pid):
        return  # finished and nothing left in its group
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout_s)


def tail(path: Path | None, lines: int = 15) -> str:
    """The last `lines` lines of a log file, or ``(no log)``."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:]) if path else "(no log)"
    except OSError:
        return "(no log)"


START_ATTEMPTS = 3  # a service that exits before ready because a port was taken under it is started again


def start(spec: ServiceSpec, log_path: Path | None, cpus: set[int] | None = None) -> RunningService:
    """Start `spec` in a new process group and wait until it is ready; on any failure, stop it.

    Args:
        log_path: the service's output is appended here (None: this process's stdout/stderr).
        cpus: CPUs to pin the service to (None: this process's set).

    Raises:
        BortError: the port is taken, the process exits, or it is not ready in time (with its log tail).
    """
    if port_in_use(spec.port, spec.host):
        raise BortError(f"port {spec.port} on {spec.host} is already in use (a server left running?); "
                        f"{spec.port_hint}")
    env = {**os.environ, **spec.env}
    for attempt in range(1, START_ATTEMPTS + 1):
        if log_path is None:
            proc = spawn(spec.command, None, env, spec.cwd, cpus)
        else:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as out:  # the child keeps its own copy of the descriptor
                proc = spawn(spec.command, out, env, spec.cwd, cpus)
        running = RunningService(spec=spec, proc=proc, log_path=log_path)
        log.info("started %s (pid %d, log %s)", spec.name, proc.pid, log_path or "stdout")
        try:
            running.ready_s = wait_ready(running)
            running.refresh_groups()
        except BortError as e:
            stop(running)
            # BentoML's process manager binds control ports it picks itself; another process can take
            # one between its pick and its bind (seen once in about thirty CI runs): start it again.
            if attempt == START_ATTEMPTS or running.proc.poll() is None or "Address already in use" not in str(e):
                raise
            log.warning("%s could not bind a port (attempt %d of %d); starting it again", spec.name, attempt,
                        START_ATTEMPTS)
            time.sleep(0.5)
            continue
        except BaseException:
            stop(running)
            raise
        break
    log.info("%s ready on %s after %.1f s", spec.name, spec.url, running.ready_s)
    return running


def wait_ready(running: RunningService) -> float:
    """Poll the readiness URL until it answers 200; seconds from start to ready.

    Raises:
        BortError: the service exited, or was not ready within ``start_timeout_s`` (with its log tail).
    """
    spec, t0 = running.spec, time.monotonic()
    url = spec.url + spec.ready_path
    ends = f"its log ({running.log_path or 'stdout'}) ends:\n{{}}"
    while True:
        if running.proc.poll() is not None:
            raise BortError(f"{spec.name} exited with code {running.proc.returncode} before it was ready; "
                            + ends.format(tail(running.log_path)))
        with contextlib.suppress(urllib.error.URLError, OSError):
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return time.monotonic() - t0
        if time.monotonic() - t0 > spec.start_timeout_s:
            hint = f" ({spec.timeout_hint})" if spec.timeout_hint else ""
            raise BortError(f"{spec.name} was not ready at {url} within {spec.start_timeout_s:.0f} s{hint}; "
                            + ends.format(tail(running.log_path)))
        time.sleep(0.1)


def _signal_groups(groups: set[int], sig: int) -> None:
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)


def _wait_until(running: RunningService, done: Callable[[], bool], wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        running.proc.poll()  # reap the leader so it does not linger as a zombie
        if done():
            return True
        time.sleep(0.05)
    running.proc.poll()
    return done()


def stop(running: RunningService, grace_s: float = 15.0) -> None:
    """Stop the service's process group and every group its descendants started.

    SIGTERM to the leader's group (it may stop its own workers cleanly) and up to `grace_s` for it
    to exit; then SIGTERM to any group still alive, 2 s, then SIGKILL to all that is left; the
    leader is reaped.
    """
    running.refresh_groups()

    def leader_gone() -> bool:
        return running.proc.returncode is not None and running.pgid not in running.live_groups()

    def gone() -> bool:
        return running.proc.returncode is not None and not running.live_groups()

    _signal_groups({running.pgid} & running.live_groups(), signal.SIGTERM)
    _wait_until(running, leader_gone, grace_s)
    for sig, wait_s in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 10.0)):
        left = running.live_groups() - ({running.pgid} if sig == signal.SIGTERM else set())
        if not left and (sig == signal.SIGTERM or running.proc.returncode is not None):
            continue  # the leader had its SIGTERM and its grace period
        _signal_groups(left, sig)
        _wait_until(running, gone, wait_s)
    if running.live_groups():
        log.error("%s: processes %s still alive after SIGKILL", running.spec.name, sorted(running.pids()))
        return
    for group in running.groups:
        _wait_reaped(group)
    log.info("stopped %s (process groups %s)", running.spec.name, sorted(running.groups))


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
def serving(spec: ServiceSpec, log_path: Path | None,
            cpus: set[int] | None = None) -> Iterator[RunningService]:
    """Context manager: the service is ready inside; all of its process groups are stopped on exit."""
    running = start(spec, log_path, cpus)
    try:
        yield running
    finally:
        stop(running)
