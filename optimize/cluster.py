"""The search on Ray (``optimize.executor=ray``): error estimates anywhere, latency on the target.

- **Error estimates** are :class:`bort.cluster.RayExecutor` tasks of ``optimize.ray_cpus_per_task``
  CPUs. The function they run, :class:`PortableError`, carries the source's folder and the teacher
  cache as bytes: it is put in Ray's object store once, fetched once per worker process, and
  unpacked once per node (``$BORT_CACHE/shipped/``), so no node needs the source, the corpus or a
  shared ``$BORT_CACHE``.
- **Latency** is measured by one actor, :class:`TargetLatency`, placed on the node that offers the
  custom resource ``optimize.latency_resource`` (it holds one unit: on a node offering 1, one
  measurement at a time). Its constructor runs the stage's own ``latency_function`` there, so
  the precision decision, the served-latency probe (``bort serve`` on that node's loopback) and
  the latency cache (``$BORT_CACHE/latency/<that node's hardware fingerprint>.jsonl``) all belong
  to the serving hardware. It keeps the reference session open between measurements, as the
  local meter does. A worker killed mid-measurement is restarted and the call retried; what was
  measured before is read from the node's cache, never measured twice.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bort.cluster import PackedFolder, node_id, pack_folder, require_resource, unpack_folder
from bort.families import Arch

log = logging.getLogger(__name__)

TARGET_RESTARTS = 3  # a latency actor killed more often than this fails the search (rerun: it resumes)


class PortableError:
    """ê by :func:`optimize.error.estimate_error` on any node: the source and the teacher cache
    travel with it as bytes (see the module docstring); torch runs `threads` threads."""

    def __init__(self, fn: Any, threads: int):
        cache = fn.teacher_cache()
        self.opt, self.steps, self.seed, self.threads = fn.cfg.optimize, fn.steps, fn.cfg.seed, threads
        self.source = pack_folder(fn.source.folder)
        with tempfile.TemporaryDirectory(prefix="bort-teacher-") as work:
            path = Path(work) / "teacher.safetensors"
            cache.save(path)
            self.teacher = PackedFolder(f"teacher-{self.source.digest}", _digest(path), {path.name: path.read_bytes()})
        self._local: tuple[Any, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_local": None}

    def _materialise(self) -> tuple[Any, Any]:
        if self._local is None:
            from bort.families import resolve_source
            from distillation.teacher_cache import TeacherCache

            source = resolve_source(str(unpack_folder(self.source)))
            cache = TeacherCache.load(unpack_folder(self.teacher) / "teacher.safetensors", source)
            self._local = (source, cache)
        return self._local

    def __call__(self, arch: Arch) -> float:
        import torch

        from optimize.error import estimate_error

        torch.set_num_threads(self.threads)
        source, cache = self._materialise()
        return estimate_error(source, arch, self.opt, cache, self.steps, self.seed)


def _digest(path: Path) -> str:
    from bort.artifacts import sha256_file

    return sha256_file(path)[:16]


def portable(error_fn: Any, cpus_per_task: float) -> Any:
    """The error function to hand a Ray executor: a distillation estimate made portable, or the
    function as it is (the size proxy, a test's fake: small and picklable already)."""
    from optimize.error import DistillError

    if isinstance(error_fn, DistillError):
        return PortableError(error_fn, threads=max(1, math.ceil(cpus_per_task)))
    return error_fn


@dataclass
class StageLatency:
    """Builds the stage's latency function on the target node (``optimize.stage.latency_function``)
    from the source's folder, shipped, and the task."""

    cfg: Any
    source: PackedFolder
    task: Any

    def __call__(self) -> tuple[Callable[[Arch], dict], Any, dict[str, Any]]:
        from bort.families import resolve_source
        from optimize.stage import latency_function

        source = resolve_source(str(unpack_folder(self.source)))
        return latency_function(self.cfg, source, self.task)


class _Target:
    """The actor on the target node: the latency function `factory` builds there, and its meter."""

    def __init__(self, factory: Callable[[], tuple[Callable[[Arch], dict], Any, dict[str, Any]]]):
        self.fn, self.meter, self.meta = factory()
        self.frozen = False

    def describe(self) -> dict[str, Any]:
        settings = getattr(self.meter, "settings", None)
        recipe = settings.recipe_key() if hasattr(settings, "recipe_key") else ""
        cache = getattr(self.meter, "cache", None)
        return {"node_id": node_id(), "pid": os.getpid(), "hw": getattr(self.meter, "hw", ""), "settings": settings,
                "recipe": recipe, "cache_path": str(getattr(cache, "path", "")), "meta": self.meta,
                "measured": int(getattr(self.meter, "measured", 0))}

    def _thaw_check(self, frozen: bool) -> None:
        if frozen and not self.frozen:  # a restarted actor: the driver had frozen the scale
            self.freeze_reference()

    def measure(self, arch: Arch, frozen: bool) -> dict[str, Any]:
        self._thaw_check(frozen)
        return {**self.fn(arch), "node_id": node_id()}

    def cached(self, arch: Arch, frozen: bool) -> dict[str, Any] | None:
        self._thaw_check(frozen)
        cached = getattr(self.fn, "cached", None)
        record = cached(arch) if cached is not None else None
        return None if record is None else {**record, "node_id": node_id()}

    def freeze_reference(self) -> None:
        getattr(self.fn, "freeze_reference", lambda: None)()
        self.frozen = True


class TargetLatency:
    """The search's latency function, each call an actor task on the node offering `resource`.

    Has what the search and the stage read from a local meter: ``cached``, ``freeze_reference``,
    and ``meter`` (``hw``, ``settings``, ``measured``, ``cache.path``, as the target reports them).
    """

    def __init__(self, ray: Any, factory: Callable[[], Any], resource: str, setting: str = "optimize.latency_resource"):
        require_resource(ray, resource, setting)
        self.ray, self.resource, self._frozen = ray, resource, False
        actor = ray.remote(_Target).options(resources={resource: 1}, num_cpus=0, max_restarts=TARGET_RESTARTS,
                                            max_task_retries=TARGET_RESTARTS)
        self.actor = actor.remote(factory)
        self.info = ray.get(self.actor.describe.remote())
        self.meta = self.info["meta"]
        log.info("latency: measured on Ray node %s (resource %s, hardware %s)", self.info["node_id"], resource,
                 self.info["hw"])

    def __call__(self, arch: Arch) -> dict[str, Any]:
        return self.ray.get(self.actor.measure.remote(arch, self._frozen))

    def cached(self, arch: Arch) -> dict[str, Any] | None:
        return self.ray.get(self.actor.cached.remote(arch, self._frozen))

    def freeze_reference(self) -> None:
        self.ray.get(self.actor.freeze_reference.remote())
        self._frozen = True

    @property
    def meter(self) -> Any:
        """The target's meter as the stage reads it (figures as of now)."""
        info = self.ray.get(self.actor.describe.remote())
        settings = _Settings(info["settings"], info["recipe"])
        return SimpleNamespace(hw=info["hw"], settings=settings, measured=info["measured"],
                               cache=SimpleNamespace(path=info["cache_path"]), node_id=info["node_id"])

    def close(self) -> None:
        self.ray.kill(self.actor)


class _Settings:
    """The target's latency settings, with its recipe key (which reads the target's CPU flags)."""

    def __init__(self, settings: Any, recipe: str):
        self._settings, self._recipe = settings, recipe

    def recipe_key(self) -> str:
        return self._recipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self._settings, name)


def target_latency(ray: Any, cfg: Any, source: Any, task: Any) -> TargetLatency:
    """The stage's latency function on the node offering ``optimize.latency_resource``."""
    return TargetLatency(ray, StageLatency(cfg, pack_folder(source.folder), task), cfg.optimize.latency_resource)
