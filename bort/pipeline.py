"""`bort run`: optimize -> pretrain -> finetune -> export -> loadtest, then one report.

Each stage skips itself when its artifact is up to date for the same config, so a rerun after an
interruption continues where the last one stopped (pretraining also resumes mid-stage from its
checkpoints).
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bort.artifacts import atomic_write_json, read_manifest
from bort.errors import BortError

log = logging.getLogger(__name__)

# (stage, module with `run(cfg, run_dir, args)`)
PIPELINE: tuple[tuple[str, str], ...] = (
    ("optimize", "optimize.stage"),
    ("pretrain", "optimize.pretrain"),
    ("finetune", "agora.stage"),
    ("export", "serve.export"),
    ("loadtest", "loadtest.stage"),
)


@dataclass
class StageTiming:
    stage: str
    seconds: float
    skipped: bool
    exit_code: int = 0


def _manifest_stamp(run_dir: Path, stage: str) -> tuple[str, str] | None:
    """(fingerprint, created_at) of a stage's manifest: unchanged across a call means it was skipped."""
    try:
        m = read_manifest(run_dir, stage, verify=False)
    except BortError:
        return None
    return m.fingerprint, m.created_at


def run_stage(cfg: Any, run_dir: Path, stage: str, module_name: str) -> StageTiming:
    """Run one stage (it skips itself when up to date); time it; pass on a non-zero exit code."""
    before = _manifest_stamp(run_dir, stage)
    start = time.time()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        log.warning("stage %s is not implemented in this version; skipped", stage)
        return StageTiming(stage, 0.0, True)
    result = module.run(cfg, run_dir, None)
    seconds = time.time() - start
    skipped = before is not None and before == _manifest_stamp(run_dir, stage)
    code = result if isinstance(result, int) else 0
    return StageTiming(stage, round(seconds, 1), skipped, code)


def run(cfg: Any, run_dir: Path, args: Any = None) -> int:
    """The whole pipeline on `cfg`, into `run_dir`; writes run_dir/report.{md,html,json}."""
    from tqdm import tqdm

    from bort import data, report

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    data.prepare(cfg, run_dir)
    timings: list[StageTiming] = []
    exit_code = 0
    bar = tqdm(PIPELINE, desc="bort run", unit="stage", bar_format="{l_bar}{bar}| {n}/{total} [{elapsed}]")
    for stage, module_name in bar:
        bar.set_description(f"bort run: {stage}")
        timing = run_stage(cfg, run_dir, stage, module_name)
        timings.append(timing)
        bar.write(f"  {stage:9} {'skipped (up to date)' if timing.skipped else f'{timing.seconds:7.1f} s'}")
        exit_code = exit_code or timing.exit_code
    total = round(time.time() - started, 1)
    atomic_write_json(run_dir / "timings.json", {"total_s": total, "stages": [t.__dict__ for t in timings]})
    paths = report.write_run_report(run_dir, timings=[t.__dict__ for t in timings], total_s=total)
    print(f"bort run finished in {total:.0f} s; report: {paths['md']}")
    return exit_code
