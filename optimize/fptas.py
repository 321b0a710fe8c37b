"""The FPTAS's selection step: ε-cells over (parameters, latency), best error per cell, the Pareto
front over (parameters, latency, error), and the chosen point by policy. Pure functions.

Cells: candidates are ordered by (params, latency, error, label); a candidate joins the current
cell while its params are within a factor (1 + ε) of the cell's first and its latency within a
factor (1 + ε) of the first's either way; otherwise it opens the next cell. Each cell keeps its
lowest-error member. So for every candidate x there is a front point f with
``params(f) <= (1+ε)·params(x)``, ``latency(f) <= (1+ε)²·latency(x)`` and ``error(f) <= error(x)``:
the front is within (1 − ε) of optimal on the size axes (to first order) and exact on error.

Policies for the one chosen point (all over the front):

- ``latency_budget``: lowest error with latency <= the budget (ms);
- ``speedup``: lowest error with source_latency / latency >= the target;
- ``compromise``: lowest weighted sum of min-max normalised (params, latency, error), weights from
  ``optimize.weights``. This is our documented stand-in for the paper's W-coefficient, which was
  not published; equal weights treat a full-range change on any axis as equally costly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bort.errors import BortError


@dataclass(frozen=True)
class Point:
    """One trained candidate's objectives (all minimised)."""

    label: str
    params: float
    latency_ms: float
    error: float


def _order_key(p: Point) -> tuple:
    return (p.params, p.latency_ms, p.error, p.label)


def _within(first: Point, p: Point, eps: float) -> bool:
    ratio = p.latency_ms / first.latency_ms if first.latency_ms > 0 else 1.0
    return p.params <= (1.0 + eps) * first.params and 1.0 / (1.0 + eps) <= ratio <= 1.0 + eps


def make_cells(points: Sequence[Point], eps: float) -> list[list[Point]]:
    """Cut the (params, latency)-ordered candidates into cells of relative width ε."""
    cells: list[list[Point]] = []
    for p in sorted(points, key=_order_key):
        if cells and _within(cells[-1][0], p, eps):
            cells[-1].append(p)
        else:
            cells.append([p])
    return cells


def best_of(cell: Sequence[Point]) -> Point:
    """Lowest error; ties to the smaller, then faster, then by label."""
    return min(cell, key=lambda p: (p.error, p.params, p.latency_ms, p.label))


def dominates(a: Point, b: Point) -> bool:
    """a is no worse than b on every objective and better on at least one."""
    no_worse = a.params <= b.params and a.latency_ms <= b.latency_ms and a.error <= b.error
    return no_worse and (a.params < b.params or a.latency_ms < b.latency_ms or a.error < b.error)


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """The non-dominated points over (params, latency, error), in (params, latency) order."""
    ordered = sorted(points, key=_order_key)
    return [p for p in ordered if not any(dominates(q, p) for q in ordered)]


@dataclass
class FptasResult:
    cells: list[list[Point]]
    kept: list[Point]  # best of each cell, in cell order
    front: list[Point]


def fptas(points: Sequence[Point], eps: float) -> FptasResult:
    """Cells, the best of each, and the Pareto front of those (deterministic: no randomness)."""
    if not 0.0 < eps < 1.0:
        raise BortError(f"epsilon must be in (0, 1), got {eps}")
    cells = make_cells(points, eps)
    kept = [best_of(c) for c in cells]
    return FptasResult(cells=cells, kept=kept, front=pareto_front(kept))


def _normalise(values: Sequence[float]) -> list[float]:
    lo, hi = min(values), max(values)
    return [0.0 if hi == lo else (v - lo) / (hi - lo) for v in values]


def compromise_scores(front: Sequence[Point], weights: tuple[float, float, float]) -> list[float]:
    """Weighted sum of min-max normalised (params, latency, error) over the front."""
    cols = [_normalise([p.params for p in front]), _normalise([p.latency_ms for p in front]),
            _normalise([p.error for p in front])]
    return [sum(w * c[k] for w, c in zip(weights, cols, strict=True)) for k in range(len(front))]


def choose(front: Sequence[Point], policy: str, *, latency_budget_ms: float = 0.0,
           speedup_target: float = 0.0, source_latency_ms: float | None = None,
           weights: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Point:
    """The chosen point by policy.

    Raises:
        BortError: the policy is unknown or misconfigured, or no front point satisfies it
            (the message names the closest point so the user can adjust).
    """
    if not front:
        raise BortError("the front is empty: no candidate was trained (see the report's skipped list)")

    def lowest_error(pts: Sequence[Point]) -> Point:
        return min(pts, key=lambda p: (p.error, p.latency_ms, p.params, p.label))

    if policy == "latency_budget":
        if latency_budget_ms <= 0:
            raise BortError("optimize.policy=latency_budget needs optimize.latency_budget_ms > 0")
        feasible = [p for p in front if p.latency_ms <= latency_budget_ms]
        if not feasible:
            fastest = min(front, key=lambda p: p.latency_ms)
            raise BortError(f"no front point meets optimize.latency_budget_ms={latency_budget_ms:g}; the "
                            f"fastest is {fastest.label} at {fastest.latency_ms:.2f} ms: raise the budget "
                            "or add smaller shapes to the grid")
        return lowest_error(feasible)
    if policy == "speedup":
        if speedup_target <= 0 or not source_latency_ms:
            raise BortError("optimize.policy=speedup needs optimize.speedup_target > 0 and the source's latency")
        feasible = [p for p in front if source_latency_ms / p.latency_ms >= speedup_target]
        if not feasible:
            best = source_latency_ms / min(p.latency_ms for p in front)
            raise BortError(f"no front point reaches optimize.speedup_target={speedup_target:g}x; the best "
                            f"is {best:.2f}x: lower the target or add smaller shapes to the grid")
        return lowest_error(feasible)
    if policy == "compromise":
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise BortError(f"optimize.weights must be non-negative and not all zero, got {list(weights)}")
        scores = compromise_scores(front, weights)
        return min(zip(scores, front, strict=True), key=lambda sp: (sp[0], sp[1].error, sp[1].latency_ms, sp[1].label))[1]
    raise BortError(f"unknown policy {policy!r}; expected latency_budget, speedup or compromise")
