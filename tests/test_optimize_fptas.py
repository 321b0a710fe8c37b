"""The FPTAS's selection step on a fake latency table and a fake error function."""

import itertools
import math

import numpy as np
import pytest

from bort.errors import BortError
from optimize.fptas import Point, choose, dominates, fptas, make_cells, pareto_front

EPS = 0.1


def fake_points(seed: int, n: int = 120) -> list[Point]:
    """Sizes and latencies loosely correlated, errors noisy and falling with size: a realistic mess."""
    rng = np.random.default_rng(seed)
    params = rng.uniform(5e6, 1e8, n)
    latency = params / 2e6 * rng.uniform(0.7, 1.4, n)
    error = 1.0 / np.log(params) * rng.uniform(0.8, 1.2, n)
    return [Point(f"c{k}", float(p), float(t), float(e)) for k, (p, t, e) in enumerate(zip(params, latency, error, strict=True))]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fptas_is_deterministic_and_ignores_input_order(seed):
    points = fake_points(seed)
    shuffled = list(points)
    np.random.default_rng(99).shuffle(shuffled)
    a, b, c = fptas(points, EPS), fptas(points, EPS), fptas(shuffled, EPS)
    assert a.front == b.front == c.front
    assert a.kept == c.kept
    assert [[p.label for p in cell] for cell in a.cells] == [[p.label for p in cell] for cell in c.cells]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_every_returned_point_is_on_the_exact_front_of_the_kept_cells(seed):
    result = fptas(fake_points(seed), EPS)
    kept = result.kept
    brute = {p for p in kept if not any(
        q.params <= p.params and q.latency_ms <= p.latency_ms and q.error <= p.error and q != p
        and (q.params, q.latency_ms, q.error) != (p.params, p.latency_ms, p.error) for q in kept)}
    assert set(result.front) == brute
    assert result.front  # something came back
    for p, q in itertools.permutations(result.front, 2):
        assert not dominates(p, q)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_each_cell_keeps_its_best_and_the_front_covers_every_candidate_within_epsilon(seed):
    points = fake_points(seed)
    result = fptas(points, EPS)
    assert len(result.kept) == len(result.cells) < len(points)  # the cells did merge something
    for cell, kept in zip(result.cells, result.kept, strict=True):
        assert kept.error == min(p.error for p in cell)
        first = cell[0]
        for p in cell:  # cell width: relative ε on both size axes
            assert p.params <= (1 + EPS) * first.params
            assert first.latency_ms / (1 + EPS) <= p.latency_ms <= (1 + EPS) * first.latency_ms
    for x in points:  # the (1 - ε) guarantee, stated as coverage by a front point
        assert any(f.error <= x.error and (1 - EPS) * f.params <= x.params
                   and (1 - EPS) ** 2 * f.latency_ms <= x.latency_ms for f in result.front), x


def test_cells_cut_where_size_or_latency_jumps():
    pts = [Point("a", 100, 10, 0.5), Point("b", 105, 10.5, 0.4), Point("c", 108, 20, 0.3), Point("d", 200, 20, 0.1)]
    cells = make_cells(pts, EPS)
    assert [[p.label for p in c] for c in cells] == [["a", "b"], ["c"], ["d"]]


def test_pareto_front_drops_dominated_points_only():
    a, b, c = Point("a", 1, 1, 0.9), Point("b", 2, 2, 0.5), Point("c", 3, 3, 0.6)
    assert pareto_front([c, b, a]) == [a, b]


FRONT = [Point("small", 10, 5.0, 0.9), Point("mid", 20, 10.0, 0.3), Point("big", 40, 20.0, 0.2)]


def test_latency_budget_takes_the_lowest_error_under_budget():
    assert choose(FRONT, "latency_budget", latency_budget_ms=12).label == "mid"
    assert choose(FRONT, "latency_budget", latency_budget_ms=100).label == "big"
    with pytest.raises(BortError, match="fastest is small"):
        choose(FRONT, "latency_budget", latency_budget_ms=1)


def test_speedup_target_is_measured_against_the_source():
    assert choose(FRONT, "speedup", speedup_target=3.0, source_latency_ms=40.0).label == "mid"
    assert choose(FRONT, "speedup", speedup_target=8.0, source_latency_ms=40.0).label == "small"
    with pytest.raises(BortError, match="speedup_target"):
        choose(FRONT, "speedup", speedup_target=9.0, source_latency_ms=40.0)


def test_compromise_follows_the_weights():
    assert choose(FRONT, "compromise", weights=(1, 1, 1)).label == "mid"
    assert choose(FRONT, "compromise", weights=(0, 0, 1)).label == "big"
    assert choose(FRONT, "compromise", weights=(1, 1, 0)).label == "small"
    with pytest.raises(BortError, match="unknown policy"):
        choose(FRONT, "fastest")


def test_fptas_rejects_a_bad_epsilon():
    with pytest.raises(BortError, match="epsilon"):
        fptas(FRONT, 1.5)
    assert math.isclose(fptas(FRONT, 0.5).front[0].params, 10)
