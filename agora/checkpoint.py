"""Round checkpoints of the Agora loop: state, points added so far, the best and round-1 models.

A run interrupted between rounds resumes at the next round when its fingerprint matches; seeds
derive from the iteration number, so the resumed run is the run that would have happened. A
finished loop is kept as finished (no Θ left, its stop reason): a rerun of the stage that changed
only what Agora does not read (the distillation arm, the deploy choice) returns it untrained.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agora import train as T
from bort.artifacts import atomic_write_json, atomic_write_text
from bort.task import Example

log = logging.getLogger(__name__)


@dataclass
class LoopState:
    """Where the loop stands after an iteration: what a resumed run needs."""

    thetas: list[str]
    iteration: int = 0
    round: int = 1
    replays_used: int = 0
    replaying: bool = False
    best_score: float = -1.0
    best_dev: dict[str, float] = field(default_factory=dict)
    best_iteration: int = -1
    rows: list[dict[str, Any]] = field(default_factory=list)
    points: list[Example] = field(default_factory=list)
    stop: str = ""  # why the loop ended, once it has


def save_state(folder: Path, fingerprint: str, state: LoopState, best_model: Any, round1_model: Any,
               tokenizer: Any) -> None:
    """Everything a resumed run needs: the state, the points added so far, the best models."""
    if state.best_iteration == state.iteration - 1:
        T.save_classifier(best_model, tokenizer, folder / "best")
    if state.iteration == 1:
        T.save_classifier(round1_model, tokenizer, folder / "round1")
    atomic_write_text(folder / "points.jsonl", "".join(
        json.dumps([e.text, e.label, e.text_pair, e.group]) + "\n" for e in state.points))
    atomic_write_json(folder / "state.json", {
        "fingerprint": fingerprint, "thetas": state.thetas, "iteration": state.iteration,
        "round": state.round, "replays_used": state.replays_used, "replaying": state.replaying,
        "best_score": state.best_score, "best_dev": _jsonable(state.best_dev),
        "best_iteration": state.best_iteration, "rows": _jsonable(state.rows), "stop": state.stop})


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def load_state(folder: Path, fingerprint: str, thetas: list[str]) -> tuple[LoopState, Any, Any]:
    """A fresh state, or the checkpointed one when it was made with the same fingerprint."""
    path = folder / "state.json"
    fresh = LoopState(thetas=thetas), None, None
    if not path.is_file():
        return fresh
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("fingerprint") != fingerprint or not (folder / "best").is_dir() \
            or not (folder / "round1").is_dir():
        return fresh
    lines = (folder / "points.jsonl").read_text(encoding="utf-8").splitlines()
    points = [Example(t, int(label), pair, group) for t, label, pair, group in map(json.loads, lines)]
    best_dev = {**data["best_dev"], "pred": np.array(data["best_dev"]["pred"], dtype=np.int64)}
    state = LoopState(thetas=data["thetas"], iteration=data["iteration"], round=data["round"],
                   replays_used=data["replays_used"], replaying=data["replaying"],
                   best_score=data["best_score"], best_dev=best_dev,
                   best_iteration=data["best_iteration"], rows=data["rows"], points=points,
                   stop=data.get("stop", ""))
    if state.stop:
        log.info("agora: finished in %s (%s); not trained again", folder, state.stop)
    else:
        log.info("agora: resuming at iteration %d from %s", state.iteration, folder)
    return state, T.load_classifier(folder / "best"), T.load_classifier(folder / "round1")
