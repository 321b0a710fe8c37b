"""More load than one Locust process makes: a master here and N workers (``loadtest.workers``).

The workers are local processes (``loadtest.executor=local``, :func:`locust_run.run_distributed`)
or Ray actors (``ray``), one CPU each, on nodes offering ``loadtest.ray_resource`` when it is set.
They send to ``loadtest.host``: 127.0.0.1 (the services on this machine's loopback, reachable by
workers on this machine only) or this machine's address for workers on other nodes (the services
then need serve's API key, and every worker sends it, :func:`locust_run.api_key`).
The master runs on the driver, binds the driver's address as Ray knows it (127.0.0.1 for a local
instance, or a cluster on loopback) and writes Locust's CSVs; each actor starts ``locust
--worker`` in a process group of its own on its node, with the request texts shipped to it, and
when the master ends returns its exact samples, which land here as ``<prefix>.w<i>-<pid>.csv``,
so the figures count every worker's requests and :func:`loadtest.report.worker_shares` each
worker's share. Every actor's Locust group is killed and every actor ended, whatever happens.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bort.errors import BortError
from bort.processes import HOST, free_port, kill_group, spawn
from loadtest.locust_run import (
    LocustResult,
    Profile,
    api_key,
    clear_outputs,
    locust_command,
    locust_env,
    run_distributed,
)

log = logging.getLogger(__name__)


@dataclass
class Fleet:
    """How a run's load is generated beyond one process (see the module docstring)."""

    workers: int
    executor: str = "local"  # local | ray
    ray: Any = None
    resource: str = ""


@contextlib.contextmanager
def fleet_session(lt: Any) -> Iterator[Fleet | None]:
    """The fleet ``cfg.loadtest`` asks for (None: one Locust process); Ray connected for the block."""
    if lt.workers < 1:
        yield None
        return
    if lt.executor != "ray":
        yield Fleet(lt.workers)
        return
    from bort.cluster import connected, require_resource

    with connected(lt.ray_address, "loadtest.executor") as ray:
        if lt.ray_resource:
            require_resource(ray, lt.ray_resource, "loadtest.ray_resource")
        yield Fleet(lt.workers, "ray", ray, lt.ray_resource)


def run_fleet(port: int, profile: Profile, texts_file: Path, prefix: Path, fleet: Fleet,
              host: str = HOST) -> LocustResult:
    """One bounded run with the master here and the fleet's workers, sending to `host`:`port`."""
    if fleet.executor == "ray":
        return run_ray_workers(port, profile, texts_file, prefix, fleet, host)
    return run_distributed(port, profile, texts_file, prefix, workers=fleet.workers, master_port=free_port(),
                           host=host)


class LocustWorker:
    """A Ray actor: one ``locust --worker`` on its node, in a process group of its own."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.work = Path(tempfile.mkdtemp(prefix="bort-locust-"))

    def start(self, port: int, profile: Profile, master_host: str, master_port: int, texts: str,
              api_key: str) -> dict[str, Any]:
        from bort.cluster import node_id

        (self.work / "texts.json").write_text(texts, encoding="utf-8")
        prefix = self.work / "run"
        env = {**os.environ, **locust_env(profile, self.work / "texts.json", prefix), "BORT_LOADTEST_API_KEY": api_key}
        cmd = locust_command(port, profile, prefix, role="worker", master_port=master_port, master_host=master_host)
        with open(self.work / "locust.log", "wb") as out:
            self.proc = spawn(cmd, out, env)
        return {"node_id": node_id(), "pid": self.proc.pid}

    def finish(self, timeout_s: float) -> dict[str, Any]:
        """Wait for Locust to quit (the master tells it to), kill its group, return its samples."""
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("a Locust worker did not quit within %.0f s of its master; killed", timeout_s)
        self.stop()
        samples = {p.name: p.read_text(encoding="utf-8") for p in sorted(self.work.glob("run.*.csv"))}
        tail = "\n".join((self.work / "locust.log").read_text(errors="replace").splitlines()[-10:])
        shutil.rmtree(self.work, ignore_errors=True)
        return {"returncode": self.proc.returncode, "samples": samples, "log_tail": tail}

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)


def run_ray_workers(port: int, profile: Profile, texts_file: Path, prefix: Path, fleet: Fleet,
                    host: str = HOST) -> LocustResult:
    """The master here, ``fleet.workers`` Locust workers as Ray actors (see the module docstring).

    Raises:
        BortError: the master did not finish in time or wrote no statistics.
    """
    ray = fleet.ray
    prefix.parent.mkdir(parents=True, exist_ok=True)
    clear_outputs(prefix)
    master_host = ray.util.get_node_ip_address()
    master_port = free_port(master_host)
    env = {**os.environ, **locust_env(profile, texts_file, prefix)}
    master_cmd = locust_command(port, profile, prefix, role="master", master_port=master_port,
                                expect_workers=fleet.workers, master_host=master_host, host=host)
    actor = ray.remote(LocustWorker).options(num_cpus=1, resources={fleet.resource: 1} if fleet.resource else None)
    texts = texts_file.read_text(encoding="utf-8")
    t0, master, actors = time.monotonic(), None, []
    try:
        with open(f"{prefix}_locust.log", "wb") as log_file:
            master = spawn(master_cmd, log_file, env)
            actors = [actor.remote() for _ in range(fleet.workers)]
            placed = ray.get([a.start.remote(port, profile, master_host, master_port, texts, api_key())
                              for a in actors])
            try:
                master.wait(timeout=profile.run_time_s + profile.grace_s + 30)  # + waiting for the workers
            except subprocess.TimeoutExpired as e:
                raise BortError(f"Locust master did not finish in time; log: {prefix}_locust.log") from e
            finished = ray.get([a.finish.remote(15.0) for a in actors])
    finally:
        if master is not None:
            kill_group(master)
        for a in actors:
            with contextlib.suppress(Exception):  # an actor already gone has nothing left to stop
                ray.get(a.stop.remote(), timeout=15)
            ray.kill(a)
    for i, (where, done) in enumerate(zip(placed, finished, strict=True)):
        for name, text in done["samples"].items():
            pid = name.split(".")[1]
            Path(f"{prefix}.w{i}-{pid}.csv").write_text(text, encoding="utf-8")
        log.info("Locust worker %d on Ray node %s: exit %s, %d samples files", i, where["node_id"][:8],
                 done["returncode"], len(done["samples"]))
    if not Path(f"{prefix}_stats.csv").is_file():
        raise BortError(f"Locust master wrote no statistics (exit code {master.returncode}); "
                        f"log: {prefix}_locust.log")
    return LocustResult(prefix=prefix, returncode=master.returncode, wall_s=time.monotonic() - t0, cpu_s=0.0,
                        command=master_cmd)
