"""Classification metrics, the baselines every accuracy table carries, the metric a task is judged
by, and the gate that keeps a model that learned nothing from shipping.

A model that answers the majority class for every input scores the majority rate in accuracy:
69% on a task whose labels are 69% one class. So every table shows two baselines beside the
models, and selection and gates use a metric that a constant classifier cannot game:

- **majority**: always the most frequent *training* label, scored on the split;
- **stratified random**: labels drawn independently with the training frequencies; its expected
  scores come from the expected confusion matrix ``E[C_ij] = n_i · q_j`` (exact for accuracy and
  balanced accuracy; for macro-F1 and MCC the score of that expected matrix, MCC 0).

Metrics (sklearn's): accuracy, macro-F1, Matthews correlation (MCC: 0 for any classifier that
ignores its input, also for more than two classes) and balanced accuracy. The chance-corrected
metric of a task is MCC for two classes and macro-F1 for more.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

METRICS = ("accuracy", "macro_f1", "mcc", "balanced_accuracy")
NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "mcc": "MCC", "balanced_accuracy": "balanced accuracy"}
# A task counts as balanced when its largest class is at most this much above an even share
# (binary: 60%; five classes: 30%); Rotten Tomatoes' 58% and BBC News' 23% are balanced.
BALANCE_SLACK = 0.10


def scores(gold: Sequence[int] | np.ndarray, pred: Sequence[int] | np.ndarray, n_labels: int) -> dict[str, float]:
    """Every metric of :data:`METRICS` (every label counts, even one never predicted), rounded to 4 places."""
    from sklearn.metrics import f1_score, matthews_corrcoef

    gold, pred = np.asarray(gold, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    if not len(gold):
        return dict.fromkeys(METRICS, 0.0)
    labels = list(range(n_labels))
    out = {"accuracy": float(np.mean(gold == pred)),
           "macro_f1": float(f1_score(gold, pred, labels=labels, average="macro", zero_division=0)),
           "mcc": float(matthews_corrcoef(gold, pred)) if len(set(gold) | set(pred)) > 1 else 0.0}
    # Mean recall over the classes present in gold: sklearn's balanced_accuracy_score, without the
    # warning it prints for every batch whose predictions hold a class gold lacks.
    out["balanced_accuracy"] = float(np.mean([np.mean(pred[gold == c] == c) for c in np.unique(gold)]))
    return {k: round(v, 4) for k, v in out.items()}


def _from_confusion(confusion: np.ndarray) -> dict[str, float]:
    """The metrics of a (possibly expected, fractional) confusion matrix, rows gold, columns predicted."""
    total = confusion.sum()
    if total <= 0:
        return dict.fromkeys(METRICS, 0.0)
    tp = np.diag(confusion)
    gold_n, pred_n = confusion.sum(1), confusion.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(gold_n + pred_n > 0, 2 * tp / (gold_n + pred_n), 0.0)
        recall = np.where(gold_n > 0, tp / gold_n, np.nan)
    cov = tp.sum() * total - gold_n @ pred_n
    denom = np.sqrt((total ** 2 - pred_n @ pred_n) * (total ** 2 - gold_n @ gold_n))
    return {"accuracy": round(float(tp.sum() / total), 4), "macro_f1": round(float(f1.mean()), 4),
            "mcc": round(float(cov / denom) if denom > 0 else 0.0, 4),
            "balanced_accuracy": round(float(np.nanmean(recall)), 4)}


def baselines(train_labels: Sequence[int], gold: Sequence[int], n_labels: int) -> dict[str, dict[str, float]]:
    """``{"majority": scores, "stratified": expected scores}`` on `gold`, from the training frequencies."""
    train_counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=n_labels).astype(float)
    gold = np.asarray(gold, dtype=np.int64)
    majority = int(np.argmax(train_counts))
    gold_counts = np.bincount(gold, minlength=n_labels).astype(float)
    expected = np.outer(gold_counts, train_counts / max(train_counts.sum(), 1.0))
    return {"majority": scores(gold, np.full(len(gold), majority), n_labels),
            "stratified": _from_confusion(expected)}


def chance_corrected(n_labels: int) -> str:
    """The task's chance-corrected metric: MCC for two classes, macro-F1 for more."""
    return "mcc" if n_labels == 2 else "macro_f1"


def choose_metric(requested: str, train_labels: Sequence[int], n_labels: int) -> tuple[str, str]:
    """The metric a task is judged by, and why: ``task.metric``, or from the class balance when auto."""
    if requested != "auto":
        return requested, f"set by task.metric={requested}"
    counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=n_labels)
    share = float(counts.max() / max(counts.sum(), 1))
    even = 1.0 / n_labels
    if share <= even + BALANCE_SLACK:
        return "accuracy", (f"task.metric=auto: the largest class is {100 * share:.1f}% of train, within "
                            f"{100 * BALANCE_SLACK:.0f} points of an even {100 * even:.1f}%, so accuracy")
    metric = chance_corrected(n_labels)
    return metric, (f"task.metric=auto: the largest class is {100 * share:.1f}% of train (even: "
                    f"{100 * even:.1f}%), so {NAMES[metric]}, which a constant classifier cannot raise")


def permutation_p(gold: Sequence[int], pred: Sequence[int], n_labels: int, metric: str,
                  permutations: int = 500, seed: int = 0) -> float:
    """One-sided p-value that `pred` scores `metric` this high by chance: the share of gold-label
    permutations under which the same predictions score at least as well (with the +1 correction).
    A constant classifier scores the same under every permutation: p = 1."""
    gold, pred = np.asarray(gold, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    observed = scores(gold, pred, n_labels)[metric]
    rng = np.random.default_rng(seed)
    hits = sum(scores(rng.permutation(gold), pred, n_labels)[metric] >= observed for _ in range(permutations))
    return (hits + 1) / (permutations + 1)


def paired_p(gold: Sequence[int], pred_a: Sequence[int], pred_b: Sequence[int], n_labels: int, metric: str,
             permutations: int = 1000, seed: int = 0) -> float:
    """One-sided p-value that `pred_b` beats `pred_a` on `metric` by chance, on the same rows: the
    share of random per-row swaps of the two models' predictions under which b leads a by at least
    as much (with the +1 correction). A paired test, for any metric (McNemar's, for accuracy)."""
    gold = np.asarray(gold, dtype=np.int64)
    a, b = np.asarray(pred_a, dtype=np.int64), np.asarray(pred_b, dtype=np.int64)
    observed = scores(gold, b, n_labels)[metric] - scores(gold, a, n_labels)[metric]
    rng, differ = np.random.default_rng(seed), a != b
    hits = 0
    for _ in range(permutations):
        swap = differ & (rng.random(len(gold)) < 0.5)
        swapped_a, swapped_b = np.where(swap, b, a), np.where(swap, a, b)
        hits += scores(gold, swapped_b, n_labels)[metric] - scores(gold, swapped_a, n_labels)[metric] >= observed - 1e-12
    return (hits + 1) / (permutations + 1)


def gate(name: str, model: dict[str, float], baseline: dict[str, float], metric: str, margin_points: float,
         p_value: float | None = None, alpha: float = 0.01) -> dict[str, Any]:
    """Does `model` beat the majority `baseline` on `metric` by `margin_points` (and, when a p-value is
    given, beat chance at level `alpha`)? Returns ``{"passed", "margin_points", "text", ...}``."""
    margin = round(100.0 * (model[metric] - baseline[metric]), 2)
    passed = margin >= margin_points and (p_value is None or p_value < alpha)
    significance = "" if p_value is None else f", permutation p = {p_value:.3g} (needs < {alpha:g})"
    text = (f"{name} dev {NAMES[metric]} {100 * model[metric]:.2f} against the majority baseline's "
            f"{100 * baseline[metric]:.2f}: {margin:+.2f} points (needs >= {margin_points:g}){significance}")
    return {"passed": passed, "metric": metric, "margin_points": margin, "required_points": margin_points,
            "p_value": p_value, "alpha": alpha if p_value is not None else None, "text": text}


def deploy_verdict(finetune_metrics: dict[str, Any], margin_points: float, alpha: float) -> dict[str, Any]:
    """The deploy gate on what ``bort finetune`` recorded (``metrics["deploy_gate"]``): does the student
    it chose beat the majority baseline on dev, on the task's metric, by the margin and beyond chance?

    A finetune manifest written before bort recorded these facts has none: the verdict then says
    so (``passed`` None) and names the stage to rerun.
    """
    facts = finetune_metrics.get("deploy_gate")
    if not facts:
        return {"passed": None, "text": "the finetune stage recorded no deploy-gate facts (made by an older "
                                        "bort): rerun `bort finetune` to judge the student"}
    verdict = gate(f"the student ({facts['model']})", facts["dev"], facts["majority"], facts["metric"],
                   margin_points, p_value=facts["p_value"], alpha=alpha)
    if facts.get("predicted_classes") == 1:
        verdict["text"] += "; it predicts one class for every dev text"
    return {**verdict, "model": facts["model"]}


def gate_advice(metric: str) -> str:
    """What to try when the deploy gate fails."""
    return ("try a stronger source model (--source), more training data, or a chance-corrected "
            f"task.metric (now {metric}; mcc or macro_f1 for skewed classes); `bort run --force` deploys "
            "anyway and the report flags it")
