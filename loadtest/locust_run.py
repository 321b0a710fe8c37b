"""Run Locust headless as a bounded subprocess against a service on 127.0.0.1.

Locust runs in its own process group with a hard timeout (its run time plus a grace period); on
timeout, or anything else, the group is killed. Its CPU time is measured too: on a small machine
the load generator competes with the server for the same cores, and the report says how much.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bort.errors import BortError
from bort.processes import HOST, kill_group, spawn

log = logging.getLogger(__name__)

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


@dataclass(frozen=True)
class Profile:
    """One bounded Locust run: constant users for warm-up + duration seconds."""

    users: int
    duration_s: float
    warmup_s: float
    mode: str = "closed"  # closed | open
    target_rps: float = 0.0  # open mode: total requests/s over all users
    think_time_s: float = 0.0
    texts_per_request: int = 1
    seed: int = 0
    client: str = "fast"  # fast: FastHttpUser (geventhttpclient) | requests: HttpUser
    grace_s: float = 60.0  # the hard timeout is run time + this

    @property
    def run_time_s(self) -> int:
        return int(round(self.warmup_s + self.duration_s))


@dataclass
class LocustResult:
    """Where a run's files are, its exit code, and Locust's own CPU use."""

    prefix: Path
    returncode: int
    wall_s: float
    cpu_s: float
    command: list[str] = field(default_factory=list)


def api_key() -> str:
    """The API key Locust sends (``X-API-Key``): ``$BORT_LOADTEST_API_KEY``, else the services' own
    ``$BORT_API_KEY`` (serve's default ``serve.api_key_env``); "" when neither is set."""
    return os.environ.get("BORT_LOADTEST_API_KEY") or os.environ.get("BORT_API_KEY") or ""


def locust_env(profile: Profile, texts_file: Path, samples_prefix: Path) -> dict[str, str]:
    """The environment variables the locustfile reads (see its docstring)."""
    return {"BORT_LOADTEST_API_KEY": api_key(),
        "BORT_LOADTEST_TEXTS": str(Path(texts_file).resolve()), "BORT_LOADTEST_SAMPLES": str(Path(samples_prefix).resolve()),
        "BORT_LOADTEST_WARMUP_S": str(profile.warmup_s), "BORT_LOADTEST_MODE": profile.mode,
        "BORT_LOADTEST_TARGET_RPS": str(profile.target_rps), "BORT_LOADTEST_USERS": str(profile.users),
        "BORT_LOADTEST_THINK_S": str(profile.think_time_s), "BORT_LOADTEST_SEED": str(profile.seed),
        "BORT_LOADTEST_TEXTS_PER_REQUEST": str(profile.texts_per_request), "BORT_LOADTEST_SHAPE": "none",
        "BORT_LOADTEST_CLIENT": profile.client,
    }


def locust_command(port: int, profile: Profile, prefix: Path, *, role: str = "local",
                   master_port: int = 5557, expect_workers: int = 1, master_host: str = HOST,
                   host: str = HOST) -> list[str]:
    """The Locust command line. `role` is ``local``, ``master`` or ``worker`` (distributed mode).

    The target is ``http://<host>:<port>`` (127.0.0.1 unless ``loadtest.host`` says otherwise);
    master and workers talk on `master_host` (127.0.0.1 unless Ray workers on other nodes must
    reach the master: the driver's address).
    """
    base = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--loglevel", "WARNING"]
    if role == "worker":
        return base + ["--worker", "--master-host", master_host, "--master-port", str(master_port)]
    cmd = base + ["-H", f"http://{host}:{port}", "-u", str(profile.users), "-r", str(profile.users),
                  "--run-time", f"{profile.run_time_s}s", "--stop-timeout", "5", "--csv", str(prefix),
                  "--exit-code-on-error", "1", "--only-summary"]
    if role == "master":
        cmd += ["--master", "--master-bind-host", master_host, "--master-bind-port", str(master_port),
                "--expect-workers", str(expect_workers), "--expect-workers-max-wait", "30"]
    elif role != "local":
        raise ValueError(f"role must be local, master or worker, got {role!r}")
    return cmd


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


LOCUST_OUTPUTS = ("stats.csv", "stats_history.csv", "failures.csv", "exceptions.csv", "locust.log")


def clear_outputs(prefix: Path) -> list[Path]:
    """Remove what an earlier run with this prefix left: its samples (``<prefix>.<pid>.csv``, one
    per Locust process), Locust's CSVs and log. Samples are read by glob, so a stale file from an
    interrupted or repeated run would otherwise be counted with the new one. Returns what went."""
    prefix = Path(prefix)
    stale = [*prefix.parent.glob(f"{prefix.name}.*.csv"),
             *(prefix.parent / f"{prefix.name}_{part}" for part in LOCUST_OUTPUTS)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def run_locust(port: int, profile: Profile, texts_file: Path, prefix: Path,
               cpus: set[int] | None = None, host: str = HOST) -> LocustResult:
    """One bounded, headless Locust run; its CSVs and samples land next to `prefix`.

    Exit code 1 means some requests failed (``--exit-code-on-error 1``); the figures still count
    them. Anything else without a stats file is a broken run and raises.

    Raises:
        BortError: Locust did not finish within run time + grace, or wrote no statistics.
    """
    prefix.parent.mkdir(parents=True, exist_ok=True)
    clear_outputs(prefix)
    cmd = locust_command(port, profile, prefix, host=host)
    env = {**os.environ, **locust_env(profile, texts_file, prefix)}
    log_path = Path(f"{prefix}_locust.log")
    cpu0, t0 = _children_cpu_s(), time.monotonic()
    with open(log_path, "wb") as log_file:
        proc = spawn(cmd, log_file, env, cpus=cpus)
        try:
            proc.wait(timeout=profile.run_time_s + profile.grace_s)
        except subprocess.TimeoutExpired as e:
            raise BortError(f"Locust did not finish within {profile.run_time_s + profile.grace_s:.0f} s "
                            f"(run time {profile.run_time_s} s); log: {log_path}") from e
        finally:
            kill_group(proc)  # the group, whatever happened: nothing of Locust outlives this call
    result = LocustResult(prefix=prefix, returncode=proc.returncode, wall_s=time.monotonic() - t0,
                          cpu_s=_children_cpu_s() - cpu0, command=cmd)
    if proc.returncode not in (0, 1) or not Path(f"{prefix}_stats.csv").is_file():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise BortError(f"Locust failed (exit code {proc.returncode}); {log_path} ends:\n{tail}")
    return result


def run_distributed(port: int, profile: Profile, texts_file: Path, prefix: Path, workers: int = 1,
                    master_port: int = 5557, host: str = HOST) -> LocustResult:
    """Locust's master/worker mode on this machine: one master, `workers` workers, all on 127.0.0.1.

    For loads one generator cannot produce, run the workers on other machines instead (see the
    locustfile's docstring); here it shows the mode works end to end. The master aggregates and
    writes the CSVs; each worker writes its own samples file.

    Raises:
        BortError: the master did not finish in time or wrote no statistics.
    """
    prefix.parent.mkdir(parents=True, exist_ok=True)
    clear_outputs(prefix)
    env = {**os.environ, **locust_env(profile, texts_file, prefix)}
    master_cmd = locust_command(port, profile, prefix, role="master", master_port=master_port,
                                expect_workers=workers, host=host)
    worker_cmd = locust_command(port, profile, prefix, role="worker", master_port=master_port)
    procs: list[subprocess.Popen] = []
    t0 = time.monotonic()
    try:
        with open(f"{prefix}_locust.log", "wb") as log_file:
            procs.append(spawn(master_cmd, log_file, env))
            procs += [spawn(worker_cmd, log_file, env) for _ in range(workers)]
            try:
                procs[0].wait(timeout=profile.run_time_s + profile.grace_s + 30)  # + waiting for workers
            except subprocess.TimeoutExpired as e:
                raise BortError(f"Locust master did not finish in time; log: {prefix}_locust.log") from e
            for worker in procs[1:]:  # the master tells its workers to quit when the run ends
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.wait(timeout=15)
    finally:
        for proc in procs:
            kill_group(proc)
    if not Path(f"{prefix}_stats.csv").is_file():
        raise BortError(f"Locust master wrote no statistics (exit code {procs[0].returncode}); "
                        f"log: {prefix}_locust.log")
    return LocustResult(prefix=prefix, returncode=procs[0].returncode, wall_s=time.monotonic() - t0,
                        cpu_s=0.0, command=master_cmd)
