"""The Agora loop (method.md section 4): fine-tune per theta, learn from the best model's dev mistakes.

```
Θt <- Θ;  D <- train
while Θt and rounds < max_rounds and time and points remain:
    for θ in Θt: fine-tune on D with θ; score on dev E        (round 1: from the student)
    best <- the best model of the round (kept if it beats every earlier round)
    M <- best's mistakes on E;  N <- G(M), k per mistake;  D <- D ∪ {(x, labeller(x)) : x in N}
    Θt <- prune(Θt) — or, once per run (``replays``), replay a round that did not improve
return the best model over all rounds
```

Choices the paper leaves open, and ours:

- **Warm start** (``warm_start``): rounds after the first continue from the best model so far for
  ``round_epochs`` over D ∪ N, instead of re-training from the student, so a round costs about one
  epoch, not ``epochs``: this is what fits Agora into a CPU budget. With it off, every round
  re-trains from the student as the paper's pseudo-code does.
- **Pruning.** ``halving`` keeps the better half of Θt (rounded down). ``paper``: "sort Θt by
  accuracy; remove the run of sets rooted at the first element". We read it as: sort Θt by dev
  score, worst first; the run rooted at the first element is that worst set together with every set
  that trails it by no more than one dev example (a tie, within measurement resolution); remove
  the run. Each rule removes at least one set per round, so either ends in at most |Θ| rounds,
  the number of terms in the paper's 2(1 - 2^-|Θ|) bound.
- **Replay**: when a round does not beat the best so far, it is run again once (Θt unpruned, D
  now holding that round's new points, a fresh seed). Replays do not count as rounds.
- **Labels** of new points come from the labeller only; the dev labels are read for the log's
  "labeller agreement" figure, never for training.
- **Teachable mistakes** (``mistakes=teachable``; the default ``all`` is the paper's M): G
  perturbs only the mistakes the labeller itself gets right. The student and the labeller come
  from the same source model, so their errors are correlated: on Rotten Tomatoes the labeller was
  right on only ~40% of the student's dev mistakes, and points made around the other ~60% carry
  the labeller's (wrong) label back into training. Restricting M reads dev labels to choose which
  mistakes to perturb; the new points' labels still come from the labeller alone.
- **More than two classes**: mistakes are taken round-robin over their gold classes, so one
  confusable class cannot use up a round's point budget; the model and round are picked by
  the task's metric (``task.metric``: accuracy on balanced tasks, MCC or macro-F1 on skewed ones).
- **Selection holdout** (``selection_holdout``, 0 by default: the paper): mistakes are mined from
  one part of dev and θ, rounds and the final model are chosen on the other (a stratified, seeded
  split). With one dev set for both, later rounds fit the very examples they are scored on: on
  Rotten Tomatoes a larger Θ raised dev accuracy above the labeller's and lowered test accuracy.
- A round's points are made only when another round will train on them.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from agora import train as T
from agora.checkpoint import LoopState, load_state, save_state
from agora.fanout import ThetaRun, run_thetas, theta_executor
from agora.guard import Guard, example_key
from agora.transform import TextTransform
from bort.config import RunConfig
from bort.metrics import scores
from bort.task import Example

log = logging.getLogger(__name__)

ITERATION_SEED_STRIDE = 7919  # a prime: each iteration's runs get their own batch order and dropout


@dataclass(frozen=True)
class Theta:
    """One hyperparameter set: its config text and the training spec it resolves to."""

    name: str
    spec: T.TrainSpec


def thetas_from_config(cfg: RunConfig) -> list[Theta]:
    """Θ from ``cfg.finetune.thetas``; keys a set leaves out take the section's values."""
    f = cfg.finetune
    return [Theta(theta.text, T.TrainSpec(**f.theta_values(theta, f.students_seed(cfg.seed)), grad_clip=f.grad_clip,
                                          freeze_word_embeddings=f.freeze_word_embeddings, min_steps=f.min_steps))
            for theta in f.thetas]


def prune(names: Sequence[str], score: dict[str, float], rule: str, tolerance: float) -> list[str]:
    """Θt after a round, in Θ's order. See the module docstring for the two rules."""
    order = sorted(range(len(names)), key=lambda i: (score[names[i]], -i))  # worst first; ties: later first
    if rule == "halving":
        keep = set(order[len(names) - len(names) // 2:])
    elif rule == "paper":
        worst = score[names[order[0]]]
        run = [i for i in order if score[names[i]] <= worst + tolerance]
        keep = set(order) - set(run)
    else:
        raise ValueError(f"unknown pruning rule {rule!r}")
    return [names[i] for i in sorted(keep)]


@dataclass
class AgoraInputs:
    """What the loop works on. `train` and `dev` have already passed the guard's filter."""

    student_dir: Path
    tokenizer: Any
    labels: list[str]
    train: list[Example]
    dev: list[Example]
    guard: Guard
    transform: TextTransform
    labeller: Callable[[list[Any]], np.ndarray]  # points -> class probabilities (n, n_labels)
    plain: tuple[T.TrainSpec, Any] | None = None  # (spec, trained model): reused for an identical θ
    labeller_dev_pred: np.ndarray | None = None  # the labeller's dev predictions (mistakes="teachable")
    split: DevSplit | None = None  # set by run_agora from finetune.selection_holdout
    metric: str = "accuracy"  # what picks θ, round and model (bort.metrics.choose_metric)


@dataclass(frozen=True)
class DevSplit:
    """Which dev rows the mistakes come from (``mine``) and which choose θ, round and model
    (``select``); both all of dev when ``finetune.selection_holdout`` is 0 (the paper)."""

    mine: np.ndarray
    select: np.ndarray


SELECTION_SALT, CHOICE_SALT = 0x5E1EC7, 0xC401CE  # the loop's selection rows; the stage's deploy-choice rows


def dev_split(dev: Sequence[Example], holdout: float, seed: int, salt: int = SELECTION_SALT) -> DevSplit:
    """Hold ``holdout`` of dev apart (``select``), stratified by label and seeded; 0: no split.
    Every label keeps at least one row on each side when it has two or more."""
    everything = np.arange(len(dev))
    if holdout <= 0:
        return DevSplit(everything, everything)
    rng = np.random.default_rng([seed, salt])
    labels = np.array([e.label for e in dev])
    select = []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        take = min(max(1, round(holdout * len(rows))), len(rows) - 1) if len(rows) > 1 else 0
        select.extend(rows[:take].tolist())
    chosen = np.zeros(len(dev), dtype=bool)
    chosen[select] = True
    return DevSplit(np.flatnonzero(~chosen), np.flatnonzero(chosen))


@dataclass
class AgoraResult:
    """The best model over all rounds, its dev scores, the round log and the points added to D."""

    model: Any
    dev: dict[str, float]
    best_iteration: int
    rows: list[dict[str, Any]]
    points: list[Example]
    stop_reason: str
    round1_model: Any = None
    cached: bool = False  # the finished loop of an earlier run with the same fingerprint


def run_agora(inputs: AgoraInputs, cfg: RunConfig, checkpoint_dir: Path, fingerprint: str) -> AgoraResult:
    """Run the loop within ``cfg.finetune``'s budgets; resume from `checkpoint_dir` when it matches.
    Each round's θ fine-tunes run where ``finetune.executor`` says (:mod:`agora.fanout`)."""
    with theta_executor(cfg.finetune) as executor:
        return _loop(inputs, cfg, checkpoint_dir, fingerprint, executor)


def _loop(inputs: AgoraInputs, cfg: RunConfig, checkpoint_dir: Path, fingerprint: str, executor: Any) -> AgoraResult:
    f = cfg.finetune
    thetas = {t.name: t for t in thetas_from_config(cfg)}
    deadline = time.time() + f.time_budget_s
    inputs = replace(inputs, split=dev_split(inputs.dev, f.selection_holdout, cfg.seed))
    state, best_model, round1_model = load_state(checkpoint_dir, fingerprint, list(thetas))
    if state.stop:  # finished before, with this fingerprint
        return AgoraResult(best_model, state.best_dev, state.best_iteration, state.rows, state.points, state.stop,
                           round1_model, cached=True)
    stop = "Θ exhausted"
    while state.thetas:
        if state.iteration > 0 and time.time() > deadline:
            stop = f"time budget ({f.time_budget_s:.0f} s) spent"
            break
        started = time.time()
        train_set = inputs.train + state.points
        runs = _train_round(inputs, cfg, [thetas[n] for n in state.thetas], train_set, best_model, state, executor)
        round_best = max(runs, key=lambda r: r["score"])  # first of equals: Θ's order
        improved = round_best["score"] > state.best_score
        if improved:
            best_model = round_best["model"]
            state.best_score, state.best_dev, state.best_iteration = (
                round_best["score"], round_best["dev"], state.iteration)
        if state.iteration == 0:
            round1_model = round_best["model"]
        row = _row(state, runs, round_best, improved, len(train_set))
        replay = not improved and state.iteration > 0 and state.replays_used < f.replays
        left = list(state.thetas) if replay else prune(
            state.thetas, {r["theta"]: r["score"] for r in runs}, f.pruning, 1.0 / max(1, len(inputs.split.select)))
        go_on, stop = _another_round(left, replay, f, deadline, state)
        if go_on:
            new, stats = _make_points(inputs, f, state)
            row.update(stats)
            state.points += new
            if not new:
                go_on, stop = False, "no new points kept"
        row.update({"thetas_left": left if go_on else [], "seconds": round(time.time() - started, 1)})
        state.rows.append(row)
        log.info("agora iteration %d (round %d): dev %s %.4f, best %.4f, %d new points, Θ left %d",
                 state.iteration, state.round, inputs.metric, round_best["score"], state.best_score,
                 row["kept"], len(row["thetas_left"]))
        _advance(state, replay and go_on, left if go_on else [])
        save_state(checkpoint_dir, fingerprint, state, best_model, round1_model, inputs.tokenizer)
    state.thetas, state.stop = [], stop
    save_state(checkpoint_dir, fingerprint, state, best_model, round1_model, inputs.tokenizer)  # finished
    return AgoraResult(best_model, state.best_dev, state.best_iteration, state.rows, state.points, stop,
                       round1_model)


def _advance(state: LoopState, replay_next: bool, thetas_next: list[str]) -> None:
    """Move the state to the next iteration: a replay keeps the round number, anything else bumps it."""
    state.replaying = replay_next
    state.replays_used += int(replay_next)
    state.round += 0 if replay_next else 1
    state.iteration += 1
    state.thetas = thetas_next


def more_epochs_only(inputs: AgoraInputs, cfg: RunConfig, result: AgoraResult) -> Any:
    """The ablation: Agora's chain of warm-started runs replayed on the training split alone.

    From round 1's best model, each later iteration that produced a new best model (up to the
    final one) is re-run with the same θ, seed and epochs, but on train without the new points.
    Agora's score against this one's separates what the new points add from what the extra
    epochs of warm-started rounds add. Without warm start it is round 1's model.
    """
    f = cfg.finetune
    thetas = {t.name: t for t in thetas_from_config(cfg)}
    model = copy.deepcopy(result.round1_model)
    if not f.warm_start:
        return model
    for row in result.rows[1:result.best_iteration + 1]:
        if row["improved"]:
            spec = thetas[row["best_theta"]].spec
            spec = replace(spec, seed=spec.seed + ITERATION_SEED_STRIDE * row["iteration"], epochs=f.round_epochs)
            T.fine_tune(model, inputs.tokenizer, inputs.train, spec, f.seq_len, inputs.guard,
                        desc=f"ablation it{row['iteration']}")
    return model


def _another_round(left: list[str], replay: bool, f: Any, deadline: float,
                   state: LoopState) -> tuple[bool, str]:
    """Whether a next iteration will run (so this one's points are worth making), and why not."""
    if not left:
        return False, "Θ exhausted"
    if not replay and state.round >= f.max_rounds:
        return False, f"max_rounds ({f.max_rounds}) reached"
    if time.time() > deadline:
        return False, f"time budget ({f.time_budget_s:.0f} s) spent"
    if len(state.points) >= f.max_points:
        return False, f"max_points ({f.max_points}) reached"
    return True, ""


def _train_round(inputs: AgoraInputs, cfg: RunConfig, thetas: list[Theta], train_set: list[Example],
                 best_model: Any, state: LoopState, executor: Any = None) -> list[dict[str, Any]]:
    """One fine-tune per θ (independent: inline one after the other, or all at once on Ray); each
    scored on dev. Only the round's best model is kept in memory."""
    f = cfg.finetune
    warm = state.iteration > 0 and f.warm_start and best_model is not None
    jobs, reused = [], {}
    for theta in thetas:
        spec = replace(theta.spec, seed=theta.spec.seed + ITERATION_SEED_STRIDE * state.iteration)
        if warm:
            spec = replace(spec, epochs=f.round_epochs)
        if state.iteration == 0 and inputs.plain is not None and inputs.plain[0] == spec:
            reused[theta.name] = copy.deepcopy(inputs.plain[1])  # the same run, already made by plain fine-tuning
            log.info("agora: θ %s is plain fine-tuning's setting; reusing that model", theta.name)
        else:
            jobs.append((theta.name, spec, warm, f"agora it{state.iteration} {theta.name}"))
    run = ThetaRun(Path(inputs.student_dir), inputs.labels, inputs.tokenizer, train_set, inputs.dev, inputs.guard,
                   f.seq_len, f.eval_batch_size, best_model if warm else None)
    trained = run_thetas(run, jobs, executor, max(1, f.num_threads))
    runs: list[dict[str, Any]] = []
    kept: Any = None
    for theta in thetas:
        if theta.name in reused:
            model = reused.pop(theta.name)
            dev = T.evaluate(model, inputs.tokenizer, inputs.dev, f.seq_len, f.eval_batch_size, inputs.guard)
        else:
            name, model, dev = next(trained)
            assert name == theta.name  # run_thetas keeps the jobs' order
        score = selection_score(inputs, dev, inputs.metric)
        runs.append({"theta": theta.name, "score": score, "dev": dev})
        if kept is None or score > kept["score"]:
            if kept is not None:
                kept["model"] = None  # free the weights of the run it beat
            kept = runs[-1]
            kept["model"] = model
    for run_row in runs:
        run_row.setdefault("model", None)
    return runs


def selection_score(inputs: AgoraInputs, dev: dict[str, Any], metric: str) -> float:
    """``metric`` over the selection rows of dev (all of dev without a holdout)."""
    split = inputs.split
    if split is None or len(split.select) == len(inputs.dev):
        return dev[metric]
    gold = np.array([inputs.dev[i].label for i in split.select], dtype=np.int64)
    return scores(gold, dev["pred"][split.select], len(inputs.labels))[metric]


def _row(state: LoopState, runs: list[dict[str, Any]], best: dict[str, Any], improved: bool,
         train_size: int) -> dict[str, Any]:
    """The round log's row for this iteration (the points columns are filled in later)."""
    return {
        "iteration": state.iteration, "round": state.round, "replay": state.replaying,
        "thetas": [r["theta"] for r in runs], "dev_by_theta": {r["theta"]: r["score"] for r in runs},
        "best_theta": best["theta"], "dev_accuracy": best["dev"]["accuracy"],
        "dev_macro_f1": best["dev"]["macro_f1"], "best_so_far": state.best_score, "improved": improved,
        "train_size": train_size, "mistakes": best["dev"]["mistakes"],
        "mistakes_used": 0, "candidates": 0, "in_band": 0, "made": 0, "kept": 0,
        "labeller_agreement": None, "mean_similarity": None,
    }


def _balanced_mistakes(dev: list[Example], pred: np.ndarray, cap: int, rng: np.random.Generator,
                       teacher: np.ndarray | None = None) -> tuple[list[Example], dict[int, int]]:
    """Mistakes on dev, interleaved over gold classes (each class shuffled), at most `cap`.

    With `teacher` (the labeller's dev predictions), only the mistakes the labeller gets right.
    """
    by_class: dict[int, list[Example]] = {}
    for i, (ex, p) in enumerate(zip(dev, pred, strict=True)):
        if ex.label != p and (teacher is None or teacher[i] == ex.label):
            by_class.setdefault(ex.label, []).append(ex)
    counts = {label: len(v) for label, v in sorted(by_class.items())}
    queues = [[v[i] for i in rng.permutation(len(v))] for _, v in sorted(by_class.items())]
    out: list[Example] = []
    while len(out) < cap and any(queues):
        for q in queues:
            if q and len(out) < cap:
                out.append(q.pop(0))
    return out, counts


def _make_points(inputs: AgoraInputs, f: Any, state: LoopState) -> tuple[list[Example], dict[str, Any]]:
    """N = G(M) for the mistakes M of the best model so far, labelled by the labeller.

    Returns:
        The examples kept for D, and the log's points columns.
    """
    rng = np.random.default_rng([state.iteration, 0xA60A])
    room = min(f.max_points_per_round, f.max_points - len(state.points))
    cap = max(1, room // f.points_per_mistake)
    mine = inputs.split.mine if inputs.split is not None else np.arange(len(inputs.dev))
    teacher = inputs.labeller_dev_pred[mine] if f.mistakes == "teachable" else None
    mistakes, per_class = _balanced_mistakes([inputs.dev[i] for i in mine], state.best_dev["pred"][mine], cap, rng,
                                             teacher)
    points, g = inputs.transform(mistakes, rng)
    probs = inputs.labeller(points) if points else np.zeros((0, len(inputs.labels)))
    labels, confidence = probs.argmax(axis=1), probs.max(axis=1) if len(probs) else np.zeros(0)
    seen = {example_key(e) for e in inputs.train + state.points}
    new, agree = [], []
    for p, label, conf in zip(points, labels, confidence, strict=True):
        ex = Example(p.text, int(label), p.text_pair, f"agora-{state.iteration}")
        if conf < f.min_labeller_confidence or example_key(ex) in seen or len(new) >= room:
            continue
        seen.add(example_key(ex))
        new.append(ex)
        agree.append(int(label) == mistakes[p.origin].label)
    inputs.guard.check(new, "Agora's new points")
    stats = {"mistakes_per_class": {inputs.labels[k]: v for k, v in per_class.items()},
             "mistakes_used": len(mistakes) - g.refused_inputs, "refused_test_texts": g.refused_inputs,
             "candidates": g.candidates, "in_band": g.in_band, "guard_dropped": g.guard_dropped,
             "made": g.made, "kept": len(new),
             "labeller_agreement": round(float(np.mean(agree)), 4) if agree else None,
             "mean_similarity": round(float(np.mean(g.similarities)), 4) if g.similarities else None}
    return new, stats
