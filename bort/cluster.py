"""Ray, for the work one machine cannot do: connecting, tasks whose inputs travel once, folders.

Ray is an optional extra (``pip install 'bort[ray]'``): this module imports it only inside the
functions that use it, so ``import bort.cluster`` (and every other bort module) works, and never
loads Ray, without it. What runs on Ray, and where (optimize/README.md, "Running the search on a
cluster"; README, "On a cluster"):

- the search's error estimates: :class:`RayExecutor` tasks, each declaring its CPU share;
- the search's latency: one actor on the node offering the serving hardware's custom resource;
- Agora's θ fine-tunes and the benchmark's seeds: :class:`RayExecutor` tasks;
- Locust workers of ``bort loadtest``: actors.

Large inputs (the source's weights, the teacher cache, a student, the training set) are put in
Ray's object store once, by :meth:`RayExecutor.submit` for the function that holds them, and
fetched once per worker process; folders travel as :class:`PackedFolder` and are unpacked once
per node into ``$BORT_CACHE/shipped/<digest>/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bort.errors import ConfigError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'bort[ray]'"
FOLDER_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.model")  # a Hugging Face folder, no pickles
_SHARED_KEEP = 4  # shared functions kept per worker process (a round's inputs replace the last round's)
_shared: OrderedDict[str, Any] = OrderedDict()


def import_ray(setting: str) -> Any:
    """The ``ray`` module.

    Raises:
        ConfigError: Ray is not installed (naming `setting`, which asked for it, and the extra).
    """
    try:
        import ray
    except ImportError as e:
        raise ConfigError(f"{setting}=ray needs Ray, which is not installed here: {INSTALL_HINT} "
                          f"(on every node of the cluster), or set {setting}=inline") from e
    return ray


@contextlib.contextmanager
def connected(address: str, setting: str, resources: dict[str, float] | None = None) -> Iterator[Any]:
    """Ray for the block: the cluster at `address` (``auto`` or ``host:port``), or, for ``""``, a
    local instance started for the block, offering `resources` besides this machine's CPUs (Ray
    binds it to the machine's network address, never loopback: to keep a single machine's Ray on
    127.0.0.1, start it with ``ray start --head --node-ip-address=127.0.0.1`` inside a network
    namespace, as tests/ray_cluster.py does, and give its address). A process already connected
    (a test's driver, a benchmark) is used as it is and left so.

    Raises:
        ConfigError: Ray is missing, or no cluster answers at `address`.
    """
    ray = import_ray(setting)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        yield ray
        return
    try:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False, resources=resources or None)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ConfigError(f"{setting.rsplit('.', 1)[0]}.ray_address={address!r}: no Ray cluster could be "
                          f"reached ({str(e).splitlines()[0]}); start one with `ray start --head`, or "
                          "leave ray_address empty for a local instance") from e
    log.info("ray: %s, %s", "joined " + address if address else "local instance", ray.cluster_resources())
    try:
        yield ray
    finally:
        ray.shutdown()


def require_resource(ray: Any, resource: str, setting: str) -> None:
    """Fail at once, not after a silent wait, when no node of the cluster offers `resource`.

    Raises:
        ConfigError: naming `setting` and the ``ray start`` option that offers it.
    """
    if ray.cluster_resources().get(resource, 0) < 1:
        raise ConfigError(f"{setting}={resource!r}: no node of the Ray cluster offers that resource; start the "
                          f"node that should run it with `ray start ... --resources='{{\"{resource}\": 1}}'`, "
                          f"or set {setting}=''")


def cpu_slots(ray: Any, cpus_per_task: float) -> int:
    """How many tasks of `cpus_per_task` CPUs the cluster runs at once (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_task))


def _call_shared(holder: list[Any], *args: Any) -> Any:
    """A Ray task: the shared function behind ``holder[0]`` (an object ref), fetched once per
    worker process, called on `args`. The ref travels inside a list so Ray does not fetch and
    deserialise it for every task."""
    import ray

    ref = holder[0]
    key = ref.hex()
    fn = _shared.get(key)
    if fn is None:
        fn = ray.get(ref)
        _shared[key] = fn
        while len(_shared) > _SHARED_KEEP:
            _shared.popitem(last=False)
    return fn(*args)


@dataclass
class RayExecutor:
    """``submit(fn, *args) -> Future`` on Ray, as the search's other executors: `fn` (and all it
    holds) goes into the object store once; each call is a task declaring `num_cpus` (and
    `num_gpus`, `resources`), retried up to `max_retries` times when its worker process dies."""

    ray: Any
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    resources: dict[str, float] | None = None
    max_retries: int = 3
    _refs: dict[int, tuple[Any, Any]] = field(default_factory=dict, repr=False)
    _task: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._task = self.ray.remote(_call_shared).options(
            num_cpus=self.num_cpus, num_gpus=self.num_gpus, resources=self.resources or None,
            max_retries=self.max_retries, retry_exceptions=False)

    @property
    def slots(self) -> int:
        """Tasks the cluster runs at once: how many the caller should keep in flight."""
        return cpu_slots(self.ray, self.num_cpus)

    def share(self, fn: Callable[..., Any]) -> Any:
        """The object ref of `fn` (put once; `fn` is kept alive so its id stays its own)."""
        if id(fn) not in self._refs:
            self._refs[id(fn)] = (fn, self.ray.put(fn))
        return self._refs[id(fn)][1]

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future:
        return self._task.remote([self.share(fn)], *args).future()

    def shutdown(self, wait: bool = True) -> None:
        self._refs.clear()


@dataclass(frozen=True)
class PackedFolder:
    """A model folder's files as bytes, to travel through the object store to another node."""

    name: str
    digest: str
    files: dict[str, bytes]

    @property
    def size(self) -> int:
        return sum(len(b) for b in self.files.values())


def pack_folder(folder: str | Path, patterns: tuple[str, ...] = FOLDER_PATTERNS) -> PackedFolder:
    """`folder`'s files matching `patterns` (not its subfolders), with a digest of names and bytes."""
    folder = Path(folder)
    files = {p.name: p.read_bytes() for pattern in patterns for p in sorted(folder.glob(pattern)) if p.is_file()}
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return PackedFolder(folder.name, h.hexdigest()[:16], files)


def unpack_folder(packed: PackedFolder, root: str | Path | None = None) -> Path:
    """The folder on this node: ``root/<digest>/<name>`` (``$BORT_CACHE/shipped`` by default),
    written once (atomically: a half-written copy is never used) and reused after."""
    if root is None:
        from bort.assets import cache_dir

        root = cache_dir() / "shipped"
    target = Path(root) / packed.digest / packed.name
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    for name, data in packed.files.items():
        (work / name).write_bytes(data)
    try:
        work.rename(target)
    except OSError:  # another worker on this node unpacked it first
        shutil.rmtree(work, ignore_errors=True)
    return target


def node_id() -> str:
    """The Ray node this process runs on ("" outside Ray)."""
    try:
        import ray
    except ImportError:
        return ""
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
