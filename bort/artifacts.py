"""Run artifacts: ``runs/<run>/<stage>/`` folders with a ``manifest.json`` written last, atomically.

A stage reads another stage's output only through :func:`read_manifest`, which verifies the
sha256 of every output the manifest lists and, when the artifact is missing, names the command
that makes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bort.errors import ArtifactError
from bort.stages import stage as stage_info

if TYPE_CHECKING:
    from bort.config import RunConfig

MANIFEST = "manifest.json"

def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; artifacts are for everyone who reads the run
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomic text write (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomic JSON write, indented, keys sorted for stable diffs."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _cpuinfo() -> tuple[str, set[str]]:
    """The CPU's model name and its /proc/cpuinfo flags (empty where there is no such file)."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "", platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, flags


def cpu_flags() -> set[str]:
    """The CPU's ISA flags as /proc/cpuinfo lists them."""
    return _cpuinfo()[1]


def cpu_info() -> dict[str, Any]:
    """CPU model, the ISA flags that matter for inference and training, core counts."""
    model, flags = _cpuinfo()
    wanted = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
              "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd")
    return {
        "model": model,
        "isa": sorted(f for f in wanted if f in flags),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "machine": platform.machine(),
    }


def load_average() -> float:
    """The machine's 1-minute load average (psutil), as recorded beside timings."""
    import psutil

    return round(psutil.getloadavg()[0], 2)


def _usable_cores() -> int:
    return cpu_info()["usable_cores"] or os.cpu_count() or 1


def measured_busy(load: float | None) -> bool:
    """Whether a timing recorded under 1-minute load average `load` should be taken again: it was
    taken while other work shared the cores (load above the usable cores) and the machine is quiet
    now. Re-measuring on a machine that is still busy would give no better figure."""
    cores = _usable_cores()
    return load is not None and load > cores and load_average() <= cores


def busy_warning(what: str) -> str | None:
    """One line when other work shares the cores (the 1-minute load average above the usable
    cores), else None: timings taken now come out inflated."""
    load, cores = load_average(), _usable_cores()
    if load <= cores:
        return None
    return (f"the machine is busy (load average {load:.1f} over the last minute on {cores} usable cores): "
            f"{what} measured now come out inflated")


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour shapes results (only those installed)."""
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in ("bort", "torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime",
                 "tokenizers", "bentoml", "locust", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def hardware_fingerprint() -> str:
    """Short hash of what latency depends on: CPU model, ISA, cores, onnxruntime version."""
    info = cpu_info()
    versions = library_versions()
    key = json.dumps([info["model"], info["isa"], info["usable_cores"], versions.get("onnxruntime")])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass
class Manifest:
    """What a stage made, from what, how, and on which machine."""

    stage: str
    fingerprint: str
    seed: int
    config: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)  # name -> upstream fingerprint or sha256
    outputs: dict[str, str] = field(default_factory=dict)  # path relative to stage dir -> sha256
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    threads: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    created_at: str = ""
    elapsed_s: float = 0.0
    path: Path | None = field(default=None, compare=False, repr=False)

    @property
    def dir(self) -> Path:
        assert self.path is not None
        return self.path.parent

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("path")
        return data


def stage_dir(run_dir: str | Path, stage: str) -> Path:
    return Path(run_dir) / stage


def stage_fingerprint(cfg: RunConfig, stage: str, upstream: dict[str, str] | None = None) -> str:
    """The fingerprint of a stage: its config sections plus its upstream stages' fingerprints.

    Raises:
        ValueError: `upstream` names a stage the stage table does not list as this stage's upstream.
    """
    info = stage_info(stage)
    unknown = set(upstream or {}) - set(info.upstream)
    if unknown:
        raise ValueError(f"stage {stage!r} reads no {sorted(unknown)} (its upstream: {list(info.upstream)})")
    base = cfg.section_fingerprint(*info.sections)
    blob = json.dumps({"config": base, "upstream": upstream or {}}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _collect_outputs(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel != MANIFEST and not p.name.startswith(".") and "/." not in rel \
                and not rel.startswith("checkpoints/"):
            out[rel] = sha256_file(p)
    return out


def write_manifest(
    run_dir: str | Path,
    stage: str,
    cfg: RunConfig,
    *,
    fingerprint: str,
    metrics: dict[str, Any],
    inputs: dict[str, str] | None = None,
    started: float | None = None,
    threads: dict[str, Any] | None = None,
) -> Manifest:
    """Hash every file in the stage folder and write ``manifest.json`` last and atomically."""
    folder = stage_dir(run_dir, stage)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(
        stage=stage,
        fingerprint=fingerprint,
        seed=cfg.seed,
        config=cfg.to_dict(),
        inputs=inputs or {},
        outputs=_collect_outputs(folder),
        metrics=metrics,
        versions=library_versions(),
        machine=cpu_info(),
        threads=threads or {"torch": _torch_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        command=" ".join(sys.argv),
        created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        elapsed_s=round(time.time() - started, 2) if started else 0.0,
        path=folder / MANIFEST,
    )
    atomic_write_json(folder / MANIFEST, manifest.to_json())
    return manifest


def _torch_threads() -> int | None:
    if "torch" not in sys.modules:
        return None
    return sys.modules["torch"].get_num_threads()


def read_manifest(run_dir: str | Path, stage: str, *, verify: bool = True) -> Manifest:
    """Load a stage's manifest; verify the sha256 of every output it lists.

    Raises:
        ArtifactError: the manifest is missing (naming the command that makes it), unreadable,
            or an output file is missing or changed.
    """
    path = stage_dir(run_dir, stage) / MANIFEST
    if not path.is_file():
        raise ArtifactError(
            f"no {stage} artifact in {Path(run_dir)}: run `{stage_info(stage).command} "
            f"--run-dir {run_dir}` first"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        manifest = Manifest(**data, path=path)
    except (ValueError, TypeError) as e:
        raise ArtifactError(f"{path}: unreadable manifest ({e}); rerun `{stage_info(stage).command}`") from e
    if verify:
        for rel, digest in manifest.outputs.items():
            f = path.parent / rel
            if not f.is_file():
                raise ArtifactError(f"{f} is missing; rerun `{stage_info(stage).command} --run-dir {run_dir}`")
            if sha256_file(f) != digest:
                raise ArtifactError(
                    f"{f} changed since {stage} wrote it (sha256 mismatch); "
                    f"rerun `{stage_info(stage).command} --run-dir {run_dir}`"
                )
    return manifest


def is_up_to_date(run_dir: str | Path, stage: str, fingerprint: str) -> bool:
    """True when the stage's manifest exists, verifies, and was made with this fingerprint."""
    try:
        return read_manifest(run_dir, stage).fingerprint == fingerprint
    except ArtifactError:
        return False
