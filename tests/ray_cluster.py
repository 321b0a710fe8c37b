"""A real two-node Ray cluster on loopback only, for tests: a network namespace of the test's own.

Started plainly, Ray binds the machine's network interface. Here every process lives in a private
network namespace whose only interface is ``lo`` (``unshare -n``, ``ip link set lo up``): a holder
process keeps the namespace open, and each command enters it with ``nsenter``. Two ``ray start``
calls make a head (1 CPU) and a second node (1 CPU) offering the custom resource ``bort_target``.
Stopping signals every process in that namespace, which are exactly the processes the test
started there (SIGTERM, then SIGKILL), and the holder's process group.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
TARGET_RESOURCE = "bort_target"
PORT = 6380  # inside the namespace: no other Ray can hold it


def missing_tools() -> str:
    """Why the cluster cannot start here ("" when it can): root, unshare, nsenter, ip, ray."""
    if os.geteuid() != 0:
        return "needs root (a network namespace of its own)"
    for tool in ("unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"needs {tool} (util-linux / iproute2)"
    if not (VENV_BIN / "ray").is_file():
        return "needs Ray (pip install 'bort[ray]')"
    return ""


class LoopbackCluster:
    """Head + target node in a private network namespace; :meth:`run` runs a driver inside it."""

    def __init__(self, head_cpus: int = 1, target_cpus: int | None = 1) -> None:
        """A head of `head_cpus` CPUs and, unless `target_cpus` is None, a node of `target_cpus`
        CPUs offering ``bort_target``."""
        # Ray's socket paths must stay short: a temp folder of its own under /tmp, not pytest's.
        self.temp = Path(tempfile.mkdtemp(prefix="bort-ray-", dir="/tmp"))
        self.holder: subprocess.Popen | None = None
        self.address = f"127.0.0.1:{PORT}"
        self.head_cpus, self.target_cpus = head_cpus, target_cpus

    def start(self) -> LoopbackCluster:
        self.holder = subprocess.Popen(["unshare", "-n", "sh", "-c", "ip link set lo up && exec sleep 3600"],
                                       start_new_session=True)
        deadline = time.monotonic() + 10
        while self._netns() == _netns(os.getpid()):
            if time.monotonic() > deadline or self.holder.poll() is not None:
                raise RuntimeError("the network namespace did not come up")
            time.sleep(0.05)
        common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]
        self.inside([str(VENV_BIN / "ray"), "start", "--head", f"--port={PORT}", "--include-dashboard=false",
                     f"--temp-dir={self.temp}", f"--num-cpus={self.head_cpus}", *common], timeout=120,
                    env={"BORT_CACHE": str(self.cache("head"))})
        if self.target_cpus is not None:
            self.inside([str(VENV_BIN / "ray"), "start", f"--address={self.address}", f"--num-cpus={self.target_cpus}",
                         *common, f"--resources={{\"{TARGET_RESOURCE}\": 1}}"], timeout=120,
                        env={"BORT_CACHE": str(self.cache("target"))})
        return self

    def cache(self, node: str) -> Path:
        """The ``$BORT_CACHE`` of the `node`'s workers (``head`` or ``target``): one each, so a test
        can tell which node wrote what."""
        return self.temp / f"{node}-cache"

    def _netns(self) -> str:
        return _netns(self.holder.pid) if self.holder else ""

    def inside(self, command: list[str], timeout: float = 300, check: bool = True,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """`command` run inside the namespace (output captured)."""
        full = ["nsenter", "-t", str(self.holder.pid), "-n", *command]
        # A home of its own: a ~/.ray/auth_token left by some other Ray on this machine must not apply here.
        environment = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HOME": str(self.temp / "home"), **(env or {})}
        done = subprocess.run(full, capture_output=True, text=True, timeout=timeout, env=environment)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:3])} failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                               f"{done.stderr[-3000:]}")
        return done

    def members(self) -> list[int]:
        """Pids of the live processes in the namespace (the holder included)."""
        ns = self._netns()
        return [int(p.name) for p in Path("/proc").iterdir()
                if p.name.isdigit() and ns and _netns(int(p.name)) == ns]

    def stop(self) -> None:
        """Every process in the namespace, then the holder's group; and Ray's temp folder."""
        if self.holder is None:
            return
        holder = self.holder.pid
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            for pid in self.members():
                if pid != holder:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and [p for p in self.members() if p != holder and _running(p)]:
                time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(holder, signal.SIGKILL)
        self.holder.wait(timeout=10)
        self.holder = None
        shutil.rmtree(self.temp, ignore_errors=True)


def _netns(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return ""


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie is init's to reap, not ours)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
