"""Latency of shapes on this machine, through a persistent cache keyed by hardware fingerprint.

How one shape is timed is in :mod:`optimize.timing` (a random classifier, ``bort export``'s ONNX
recipe, ONNX Runtime with the serving options, interleaved with a reference session). This module
decides what is measured and keeps it:

The cache is one JSONL file per hardware fingerprint, ``$BORT_CACHE/latency/<hw>.jsonl``; each
measurement is appended as one line under a file lock and fsynced before the next starts, so a
killed sweep loses at most the measurement in flight and nothing is measured twice. A record
keeps the raw samples of the candidate and of the reference run beside it; the figures the search
uses (``p50_ms`` and the rest) are the paired ratios scaled by the reference's standalone
latency, computed on read.

``python -m optimize.latency`` measures a list of shapes into a cache (used by the resume test).
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bort.artifacts import hardware_fingerprint, load_average, measured_busy
from bort.families import Arch, default_vocab
from optimize import timing
from runtime import recipe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatencySettings:
    """What a latency figure depends on besides the shape (serving settings and timing protocol)."""

    batch_size: int = 1
    seq_len: int = 128
    precision: str = "fp32"  # fp32 | int8 (dynamic) | int8_static (calibrated); resolved, never "auto"
    num_threads: int = 2
    warmup_runs: int = 5
    timed_runs: int = 30
    optimize_graph: bool = False  # ORTOptimizer O2 before timing, as export.optimize_graph
    quantization: str = "auto"  # int8 preset: auto (this CPU's) | avx512_vnni | avx512 | avx2 | arm64

    @classmethod
    def from_config(cls, opt: Any, precision: str | None = None) -> LatencySettings:
        """The ``optimize`` section's settings; `precision` resolves ``optimize.precision=auto``
        (:func:`optimize.precision.search_precision`)."""
        # optimize.optimize_graph / optimize.quantization mirror export.*: the search must time the
        # graph `bort export` will write, without reading a downstream stage's settings.
        precision = precision or opt.precision
        if precision == "auto":
            raise ValueError("optimize.precision=auto must be resolved first (optimize.precision.search_precision)")
        return cls(opt.batch_size, opt.seq_len, precision, opt.num_threads, opt.warmup_runs, opt.timed_runs,
                   optimize_graph=opt.optimize_graph, quantization=opt.quantization)

    def recipe_key(self) -> str:
        """How the timed graph was built (:func:`runtime.recipe.recipe_key`), int8 preset resolved."""
        return _recipe_key(self.precision, self.optimize_graph, self.quantization)


@functools.cache
def _recipe_key(precision: str, optimize_graph: bool, quantization: str) -> str:
    target, _ = recipe.quantization_target(quantization)  # reads /proc/cpuinfo: once per process
    return recipe.recipe_key(precision, optimize_graph, target)


def cache_key(arch: Arch, family: str, vocab_size: int, s: LatencySettings, hw: str,
              reference: str | None = None) -> str:
    """The identity of a measurement: shape, model family and vocabulary, serving settings,
    hardware, how the graph was exported (the recipe's version, graph optimisation, int8 preset:
    figures timed with another recipe are not reused), the timing protocol's version
    (:data:`optimize.timing.PROTOCOL`), and the reference it was paired with.
    Warm-up and run counts are protocol: a cached record with fewer timed runs than asked for is
    measured again (the new line wins)."""
    return json.dumps([arch.label(), family, vocab_size, s.batch_size, s.seq_len, s.precision,
                       s.num_threads, hw, s.recipe_key(), f"timing{timing.PROTOCOL}", reference or "standalone"])


def default_cache_path(hw: str | None = None) -> Path:
    from bort.assets import cache_dir

    return cache_dir() / "latency" / f"{hw or hardware_fingerprint()}.jsonl"


class JsonlStore:
    """Append-only JSONL store of keyed records; a torn last line (killed writer) is ignored.

    Used for the latency cache and for the search's per-candidate error estimates.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self.reload()

    def reload(self) -> None:
        if not self.path.is_file():
            return
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                self.records[record["key"]] = record  # a later line supersedes an earlier one
            except (ValueError, KeyError, TypeError):
                log.warning("%s: skipping an unreadable line (a writer was killed mid-line?)", self.path)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    def put(self, record: dict[str, Any]) -> None:
        """Append one record as a single line, under an exclusive lock, fsynced."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_size and not _ends_with_newline(fd):
                os.write(fd, b"\n")  # seal a torn line left by a killed writer
            os.write(fd, line)
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        self.records[record["key"]] = record


def _ends_with_newline(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return os.pread(fd, 1, size - 1) == b"\n"


QUIET_BAND = 1.5  # a run slower than this times its series' fastest run was disturbed
MIN_QUIET_PAIRS = 5
RETIME_DISTURBED = 2  # timings more of a candidate whose pairs were mostly disturbed


def quiet_pairs(cand: np.ndarray, ref: np.ndarray, ratios: np.ndarray) -> np.ndarray:
    """The ratios to use: those of the pairs in which neither run was disturbed (each within
    ``QUIET_BAND`` of its own series' fastest run); where fewer than ``MIN_QUIET_PAIRS`` are, the
    candidate's quiet runs over the median of the reference's quiet runs.

    Pairing cancels a slowdown that lasts across both runs of a pair; a burst of other work that
    lands on one run of a pair and not the other does not cancel. Seen here (timing protocol 1,
    where the idle session's spinning threads were such a burst): a 4/6/192/768 int8_static
    candidate had 7 of its 30 runs at ~5 ms against ~1.0 ms, and 19 of its reference's at ~6.6 ms
    against ~2.6 ms, mostly not in the same pairs; the median ratio over all pairs put it at
    0.42 ms, this at 0.95 ms, and a re-timing alone at 0.93 ms. Where every pair is quiet the
    figure is unchanged.
    """
    cand_quiet, ref_quiet = _quiet(cand), _quiet(ref)
    both = cand_quiet & ref_quiet
    if both.sum() >= MIN_QUIET_PAIRS:
        return ratios[both]
    return cand[cand_quiet] / float(np.median(ref[ref_quiet]))


def _quiet(runs: np.ndarray) -> np.ndarray:
    return runs <= QUIET_BAND * runs.min()


def quiet_share(cand: Any, ref: Any) -> float:
    """The share of pairs in which neither run was disturbed."""
    cand, ref = np.asarray(cand, dtype=float), np.asarray(ref, dtype=float)
    return float(np.mean(_quiet(cand) & _quiet(ref)))


def normalised_view(record: dict[str, Any], reference_ms: float | None) -> dict[str, Any]:
    """The record with the figures the search uses: each run's ratio to the reference run beside
    it (to its own median, for the reference's standalone record), times `reference_ms`. Without
    a reference, the raw figures."""
    view = dict(record)
    cand = np.asarray(record["samples_ms"], dtype=float)
    if not reference_ms:
        view.update(timing.summarize(cand))
        return view
    paired = record.get("ref_samples_ms")
    ratios = cand / (np.asarray(paired, dtype=float) if paired else np.median(cand))
    if paired:
        ratios = quiet_pairs(cand, np.asarray(paired, dtype=float), ratios)
    view.update(timing.summarize(ratios * reference_ms))
    view["ratio_to_reference"] = round(float(np.median(ratios)), 5)
    view["reference_ms"] = reference_ms
    return view


class LatencyMeter:
    """Latency of shapes at fixed settings, through the cache: nothing is measured twice.

    With a `reference` shape, each candidate is timed in pairs with a session of the reference
    (see :mod:`optimize.timing`); the reference itself is measured standalone once.
    """

    def __init__(self, family: str, settings: LatencySettings, base_config: Any = None,
                 cache_path: str | Path | None = None, hw: str | None = None, seed: int = 0,
                 reference: Arch | None = None):
        self.family, self.settings, self.base_config, self.seed = family, settings, base_config, seed
        self.reference = reference
        self.hw = hw or hardware_fingerprint()
        self.cache = JsonlStore(cache_path or default_cache_path(self.hw))
        vocab = getattr(base_config, "vocab_size", None)
        self.vocab_size = int(vocab) if vocab else default_vocab(family).vocab_size
        self.measured = 0  # new measurements made by this meter
        self._reference_session: timing.TimedSession | None = None
        self._reference_ms: float | None = None
        self._frozen = False

    def freeze_reference(self) -> None:
        """Hold the reference's latency estimate fixed from now on, so that figures read before
        and after later measurements share one scale."""
        self.reference_ms()
        self._frozen = True

    def key(self, arch: Arch) -> str:
        paired = self.reference is not None and arch != self.reference
        ref = self.reference.label() if paired else None
        return cache_key(arch, self.family, self.vocab_size, self.settings, self.hw, ref)

    def reference_ms(self) -> float | None:
        """The reference's latency: the lower quartile of its medians over its standalone run and
        every paired window in the cache. A busy moment inflates a single run; across windows
        the quieter ones show the machine's speed. (Ratios, the front and the speedup do not
        depend on this scale; only the absolute milliseconds do.)"""
        if self.reference is None:
            return None
        standalone = self._record(self.reference)
        if self._reference_ms is None:
            prefix = json.loads(self.key(self.reference))[:-1]
            medians = [float(np.median(standalone["samples_ms"]))]
            for key, record in self.cache.records.items():
                parts = json.loads(key)
                if parts[1:-1] == prefix[1:] and parts[-1] == self.reference.label() and record.get("ref_samples_ms"):
                    medians.append(float(np.median(record["ref_samples_ms"])))
            self._reference_ms = round(float(np.percentile(medians, 25)), 4)
        return self._reference_ms

    def cached(self, arch: Arch) -> dict[str, Any] | None:
        """The figures for `arch` if measured (scaled by the current reference estimate), else None."""
        record = self.cache.get(self.key(arch))
        return normalised_view(record, self.reference_ms()) if self._usable(record) else None

    def __call__(self, arch: Arch) -> dict[str, Any]:
        """The figures for `arch`: from the cache, or measured now and appended to it."""
        record = self._record(arch)
        return normalised_view(record, self.reference_ms())

    def _usable(self, record: dict[str, Any] | None) -> bool:
        """A cached record counts when it has at least as many timed runs as asked for now and was
        not timed on a busy machine that is quiet now (a busy fixed cost read 2.5x the quiet one here)."""
        return (record is not None and len(record["samples_ms"]) >= self.settings.timed_runs
                and not measured_busy(record.get("load_avg_1m")))

    def _record(self, arch: Arch) -> dict[str, Any]:
        key = self.key(arch)
        record = self.cache.get(key)
        if self._usable(record):
            return record
        if record is not None:
            log.info("re-measuring %s: its cached record has %d timed runs (%d asked for), load average %s",
                     arch.label(), len(record["samples_ms"]), self.settings.timed_runs, record.get("load_avg_1m"))
        paired = self.reference is not None and arch != self.reference
        if paired:
            self.reference_ms()  # the reference's standalone record comes first
        started = time.time()
        session = timing.build_session(arch, self.family, self.base_config, self.settings, self.seed)
        build_s = time.time() - started
        ref_session = self._ref_session() if paired else None
        cand, ref = timing.time_interleaved(session, ref_session, self.settings.warmup_runs,
                                            self.settings.timed_runs)
        attempts, share = 1, quiet_share(cand, ref) if paired else 1.0
        while attempts <= RETIME_DISTURBED and share < 0.5:
            attempts += 1  # most pairs disturbed: time again, keep the quieter window
            again = timing.time_interleaved(session, ref_session, 0, self.settings.timed_runs)
            if quiet_share(*again) > share:
                (cand, ref), share = again, quiet_share(*again)
        del session
        record = {"key": key, "arch": arch.label(), "family": self.family, "vocab_size": self.vocab_size,
                  "hw": self.hw, **asdict(self.settings), "reference": self.reference.label() if paired else None,
                  "samples_ms": [round(x, 4) for x in cand], "ref_samples_ms": [round(x, 4) for x in ref],
                  **timing.summarize(cand, "raw_"), "exporter": timing.EXPORTER,
                  "recipe": self.settings.recipe_key(), "build_s": round(build_s, 2),
                  "total_s": round(time.time() - started, 2), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "load_avg_1m": load_average(),  # a busy machine's records can be told apart
                  "timings": attempts, "quiet_share": round(share, 3),
                  "pid": os.getpid()}
        self.cache.put(record)
        self.measured += 1
        if not self._frozen:
            self._reference_ms = None  # one more window to estimate the reference from
        log.debug("measured %s: raw p50 %.2f ms", arch.label(), record["raw_p50_ms"])
        return record

    def _ref_session(self) -> timing.TimedSession:
        if self._reference_session is None:
            self._reference_session = timing.build_session(self.reference, self.family, self.base_config,
                                                           self.settings, self.seed)
        return self._reference_session


def main(argv: list[str] | None = None) -> int:
    """Measure shapes into a cache: ``python -m optimize.latency --cache F --archs 1/1/8/8 ...``."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--archs", nargs="+", required=True, help="D/A/H/I shapes")
    p.add_argument("--cache", default=None, help="cache file (default: $BORT_CACHE/latency/<hw>.jsonl)")
    p.add_argument("--family", default="bert")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup-runs", type=int, default=5)
    p.add_argument("--timed-runs", type=int, default=30)
    p.add_argument("--precision", default="fp32", choices=["fp32", "int8", "int8_static"])
    p.add_argument("--reference", default=None, help="D/A/H/I of a reference to pair every run with")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = LatencySettings(1, args.seq_len, args.precision, args.threads, args.warmup_runs, args.timed_runs)
    reference = Arch.parse(args.reference) if args.reference else None
    meter = LatencyMeter(args.family, settings, cache_path=args.cache, reference=reference)
    for text in args.archs:
        record = meter(Arch.parse(text))
        print(f"{text} p50 {record['p50_ms']:.3f} ms", flush=True)
    print(f"measured {meter.measured} new, {len(args.archs) - meter.measured} from cache", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
