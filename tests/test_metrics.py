"""bort.metrics: the metrics, the baselines, the metric a task is judged by, and the gate."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, matthews_corrcoef

from bort import metrics as M

RNG = np.random.default_rng(0)
GOLD = np.array([0] * 85 + [1] * 15)
NOISY = np.where(RNG.random(100) < 0.8, GOLD, 1 - GOLD)


def test_scores_agree_with_sklearn_on_two_and_five_classes():
    gold5 = RNG.integers(0, 5, 300)
    pred5 = np.where(RNG.random(300) < 0.6, gold5, RNG.integers(0, 5, 300))
    for gold, pred, n in ((GOLD, NOISY, 2), (gold5, pred5, 5)):
        s = M.scores(gold, pred, n)
        assert s["accuracy"] == pytest.approx(np.mean(gold == pred), abs=1e-4)
        assert s["macro_f1"] == pytest.approx(f1_score(gold, pred, average="macro"), abs=1e-4)
        assert s["mcc"] == pytest.approx(matthews_corrcoef(gold, pred), abs=1e-4)
        assert s["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(gold, pred), abs=1e-4)


def test_a_constant_classifier_scores_the_majority_rate_and_zero_mcc():
    constant = M.scores(GOLD, np.zeros(100, int), 2)
    assert constant["accuracy"] == 0.85 and constant["mcc"] == 0.0 and constant["balanced_accuracy"] == 0.5
    base = M.baselines(np.array([0] * 850 + [1] * 150), GOLD, 2)
    assert base["majority"] == constant
    # stratified random: expected accuracy sum_c p_train(c) * p_gold(c), MCC 0
    assert base["stratified"]["accuracy"] == pytest.approx(0.85 * 0.85 + 0.15 * 0.15, abs=1e-4)
    assert base["stratified"]["mcc"] == 0.0 and base["stratified"]["balanced_accuracy"] == 0.5


def test_stratified_expectation_matches_a_simulation():
    gold5 = RNG.integers(0, 5, 400)
    train = RNG.choice(5, 2000, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    expected = M.baselines(train, gold5, 5)["stratified"]
    q = np.bincount(train, minlength=5) / len(train)
    draws = [M.scores(gold5, RNG.choice(5, len(gold5), p=q), 5) for _ in range(400)]
    for key in ("accuracy", "balanced_accuracy"):
        assert expected[key] == pytest.approx(np.mean([d[key] for d in draws]), abs=0.01), key


@pytest.mark.parametrize(("counts", "metric"), [((58, 42), "accuracy"), ((69, 31), "mcc"), ((85, 15), "mcc"),
                                                ((23, 21, 20, 19, 17), "accuracy"), ((60, 10, 10, 10, 10), "macro_f1")])
def test_auto_metric_follows_the_class_balance(counts, metric):
    labels = np.repeat(np.arange(len(counts)), counts)
    chosen, why = M.choose_metric("auto", labels, len(counts))
    assert chosen == metric and "task.metric=auto" in why
    assert M.choose_metric("balanced_accuracy", labels, len(counts))[0] == "balanced_accuracy"


def test_permutation_p_is_one_for_a_constant_and_small_for_a_model_that_learned():
    assert M.permutation_p(GOLD, np.zeros(100, int), 2, "mcc") == 1.0
    gold = np.array([0] * 850 + [1] * 150)
    learned = np.where(RNG.random(1000) < 0.9, gold, 1 - gold)
    assert M.permutation_p(gold, learned, 2, "mcc", permutations=200) < 0.01


def test_gate_needs_the_margin_and_the_significance():
    majority = M.scores(GOLD, np.zeros(100, int), 2)
    constant = M.gate("student", majority, majority, "mcc", 2.0, p_value=1.0)
    assert not constant["passed"] and constant["margin_points"] == 0.0 and "needs >= 2" in constant["text"]
    learned = M.gate("student", {"mcc": 0.3}, majority, "mcc", 2.0, p_value=0.002)
    assert learned["passed"] and learned["margin_points"] == 30.0
    assert not M.gate("student", {"mcc": 0.3}, majority, "mcc", 2.0, p_value=0.2)["passed"]
    assert not M.gate("student", {"accuracy": 0.86}, majority, "accuracy", 2.0, p_value=0.001)["passed"]


def test_paired_p_is_one_for_identical_predictions_and_small_for_a_clear_improvement():
    gold = np.array([i % 2 for i in range(300)])
    worse = np.where(np.arange(300) < 60, 1 - gold, gold)  # wrong on 60 rows
    assert M.paired_p(gold, worse, worse, 2, "accuracy", permutations=200) == 1.0
    assert M.paired_p(gold, worse, gold, 2, "macro_f1", permutations=200) < 0.01  # right where it was wrong
    assert M.paired_p(gold, gold, worse, 2, "accuracy", permutations=200) == 1.0  # worse is never "better"
