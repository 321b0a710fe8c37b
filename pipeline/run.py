"""`bort run`: every stage of :data:`bort.stages.PIPELINE` in order, then one report.

Each stage skips itself when its artifact is up to date for the same config, so a rerun after an
interruption continues where the last one stopped (pretraining also resumes mid-stage from its
checkpoints).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bort.artifacts import atomic_write_json, read_manifest
from bort.config import RunConfig
from bort.errors import BortError
from bort.stages import PIPELINE, Stage
from pipeline.cli import entry_point

log = logging.getLogger(__name__)


@dataclass
class StageTiming:
    stage: str
    seconds: float
    skipped: bool
    exit_code: int = 0
    budget_s: float | None = None

    @property
    def over_budget(self) -> bool:
        return self.budget_s is not None and not self.skipped and self.seconds > self.budget_s


def _manifest_stamp(run_dir: Path, stage: str) -> tuple[str, str] | None:
    """(fingerprint, created_at) of a stage's manifest: unchanged across a call means it was skipped."""
    try:
        m = read_manifest(run_dir, stage, verify=False)
    except BortError:
        return None
    return m.fingerprint, m.created_at


def run_stage(cfg: RunConfig, run_dir: Path, stage: Stage) -> StageTiming:
    """Run one stage (it skips itself when up to date); time it; pass on a non-zero exit code."""
    before = _manifest_stamp(run_dir, stage.name)
    start = time.time()
    result = entry_point(stage)(cfg, run_dir, None)
    seconds = time.time() - start
    skipped = before is not None and before == _manifest_stamp(run_dir, stage.name)
    code = result if isinstance(result, int) else 0
    return StageTiming(stage.name, round(seconds, 1), skipped, code)


def run(cfg: RunConfig, run_dir: Path, args: Any = None) -> int:
    """The whole pipeline on `cfg`, into `run_dir`; writes run_dir/report.{md,html,json}."""
    from tqdm import tqdm

    from bort import data
    from pipeline import report

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    data.prepare(cfg, run_dir)
    timings: list[StageTiming] = []
    exit_code = 0
    bar = tqdm(PIPELINE, desc="bort run", unit="stage", bar_format="{l_bar}{bar}| {n}/{total} [{elapsed}]")
    failure: BortError | None = None
    for stage in bar:
        bar.set_description(f"bort run: {stage.name}")
        try:
            timing = run_stage(cfg, run_dir, stage)
        except BortError as e:  # a mistake the user can fix: the report says which stage and why
            failure = e
            bar.write(f"  {stage.name:9} stopped: {e}")
            timings.append(StageTiming(stage.name, 0.0, False, 2))
            break
        timing.budget_s = cfg.budgets.of(stage.name)
        timings.append(timing)
        bar.write(f"  {stage.name:9} {'skipped (up to date)' if timing.skipped else f'{timing.seconds:7.1f} s'}")
        if timing.over_budget:
            log.warning("%s took %.0f s, over its budget of %.0f s (budgets.%s_s)", stage.name, timing.seconds,
                        timing.budget_s, stage.name)
        exit_code = exit_code or timing.exit_code
    total = round(time.time() - started, 1)
    if total > cfg.budgets.total_s:
        log.warning("bort run took %.0f s, over its budget of %.0f s (budgets.total_s)", total, cfg.budgets.total_s)
    atomic_write_json(run_dir / "timings.json", {"total_s": total, "budget_s": cfg.budgets.total_s,
                                                 "stages": [{**t.__dict__, "over_budget": t.over_budget}
                                                            for t in timings]})
    why = None if failure is None else f"`bort {timings[-1].stage}` refused: {failure}"
    paths = report.write_run_report(run_dir, timings=[{**t.__dict__, "over_budget": t.over_budget} for t in timings],
                                    total_s=total, failure=why)
    if failure is not None:
        raise BortError(f"{failure} (report: {paths['md']})") from failure
    print(f"bort run finished in {total:.0f} s; report: {paths['md']}")
    return exit_code
