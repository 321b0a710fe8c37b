"""The ABnC checks and a monotone model of latency over (D, A, H, I).

The FPTAS's guarantee needs the middle blocks to dominate cost and the objectives to be ordered
over the space. Measured latency is noisy and need not be monotone, so the search checks this on
its own measurements and reports what it finds (method.md §2):

- *inversions*: pairs where one shape is at least as large as another on every axis but was
  measured faster by more than the measurement noise;
- *encoder dominance*: the encoder blocks' share of parameters and FLOPs (exact) and of latency
  (measured: the intercept of latency against depth at a fixed width is the cost of everything
  but the blocks).

The latency model is linear in cost features with non-negative coefficients, so it is monotone
non-decreasing in each of D, A, H and I by construction. Features at a fixed batch B and sequence
S: 1 (embeddings, session overhead), D·H² (projections), D·H·I (feed-forward), D·H (layer norms,
residuals, attention scores at fixed S), D·I (GELU), D·A (per-head softmax and kernel launches),
D (per-layer overhead), H (embedding layer norm, pooler). The fit minimises *relative* squared
error with scipy's non-negative least squares.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bort.families import Arch

FEATURES = ("1", "D*H^2", "D*H*I", "D*H", "D*I", "D*A", "D", "H")


def features(archs: Sequence[Arch]) -> np.ndarray:
    """(n, len(FEATURES)) non-negative cost features; every one non-decreasing in every axis."""
    rows = []
    for a in archs:
        d, h, i, n_heads = float(a.layers), float(a.hidden), float(a.intermediate), float(a.heads)
        rows.append([1.0, d * h * h, d * h * i, d * h, d * i, d * n_heads, d, h])
    return np.asarray(rows, dtype=float)


@dataclass
class LatencyModel:
    """latency_ms ≈ features(arch) · coef, coef >= 0 (monotone in each axis)."""

    coef: np.ndarray
    n_fit: int
    fit_mape: float  # median absolute % error on the points it was fit to
    loo_mape: float | None = None  # leave-one-out median absolute % error (None when too few points)

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        return features(archs) @ self.coef

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(FEATURES), "coef": [float(c) for c in self.coef], "n_fit": self.n_fit,
                "fit_median_abs_pct_error": self.fit_mape, "loo_median_abs_pct_error": self.loo_mape}


def _nnls_relative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative coefficients minimising sum(((x @ c) - y) / y)^2."""
    from scipy.optimize import nnls

    scale = np.where(x.max(axis=0) > 0, x.max(axis=0), 1.0)  # column scaling for conditioning
    coef, _ = nnls((x / scale) / y[:, None], np.ones_like(y), maxiter=50 * x.shape[1])
    return coef / scale


def median_abs_pct_error(predicted: np.ndarray, measured: np.ndarray) -> float:
    return float(np.median(np.abs(predicted - measured) / measured) * 100.0)


def fit_latency_model(archs: Sequence[Arch], latency_ms: Sequence[float]) -> LatencyModel:
    """Fit the monotone model; with >= 5 points also its leave-one-out error."""
    x, y = features(archs), np.asarray(latency_ms, dtype=float)
    coef = _nnls_relative(x, y)
    fit_mape = median_abs_pct_error(x @ coef, y)
    loo = None
    if len(y) >= 5:
        errors = []
        for k in range(len(y)):
            keep = np.arange(len(y)) != k
            c = _nnls_relative(x[keep], y[keep])
            errors.append(abs(float(x[k] @ c) - y[k]) / y[k])
        loo = float(np.median(errors) * 100.0)
    return LatencyModel(coef=coef, n_fit=len(y), fit_mape=fit_mape, loo_mape=loo)


def dominates_shape(small: Arch, big: Arch) -> bool:
    """`big` is at least as large as `small` on every axis, and they differ."""
    return small != big and small.layers <= big.layers and small.heads <= big.heads \
        and small.hidden <= big.hidden and small.intermediate <= big.intermediate


def _noise(record: Mapping[str, Any]) -> float:
    """Half the 10th-90th percentile spread of a measurement (0 when unknown)."""
    if "p90_ms" in record and "p10_ms" in record:
        return max(0.0, (record["p90_ms"] - record["p10_ms"]) / 2.0)
    return 0.0


def find_inversions(records: Mapping[Arch, Mapping[str, Any]], rel_tol: float = 0.02) -> list[dict[str, Any]]:
    """Every measured pair where the larger shape ran faster than the smaller by more than noise.

    Noise is ``max(rel_tol * p50(small), noise(small) + noise(big))``.
    """
    out = []
    for small, big in itertools.permutations(sorted(records), 2):
        if not dominates_shape(small, big):
            continue
        ls, lb = records[small]["p50_ms"], records[big]["p50_ms"]
        margin = max(rel_tol * ls, _noise(records[small]) + _noise(records[big]))
        if ls - lb > margin:
            out.append({"smaller": small.label(), "larger": big.label(), "smaller_p50_ms": round(ls, 3),
                        "larger_p50_ms": round(lb, 3), "excess_pct": round((ls / lb - 1) * 100, 1)})
    return out


def axis_monotonicity(records: Mapping[Arch, Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Per axis: measured neighbour pairs differing only on that axis, and how many got slower."""
    axes = ("layers", "heads", "hidden", "intermediate")
    out = {}
    for axis in axes:
        others = [a for a in axes if a != axis]
        groups: dict[tuple, list[Arch]] = {}
        for arch in records:
            groups.setdefault(tuple(getattr(arch, o) for o in others), []).append(arch)
        pairs = increasing = 0
        for members in groups.values():
            members.sort(key=lambda a: getattr(a, axis))
            for a, b in zip(members, members[1:], strict=False):
                pairs += 1
                increasing += records[b]["p50_ms"] >= records[a]["p50_ms"]
        out[axis] = {"pairs": pairs, "slower_when_larger": int(increasing)}
    return out


@dataclass
class Dominance:
    """Do the encoder blocks dominate cost?"""

    params_share: dict[str, float] = field(default_factory=dict)  # effective / net: min, median, max
    flops_share: dict[str, float] = field(default_factory=dict)  # encoder / all counted FLOPs
    latency_share: dict[str, float] = field(default_factory=dict)  # measured, via the depth intercept
    probe: dict[str, Any] = field(default_factory=dict)

    def dominant(self) -> bool:
        shares = [self.params_share.get("median", 0), self.flops_share.get("median", 0)]
        if self.latency_share:
            shares.append(self.latency_share.get("median", 0))
        return all(s > 0.5 for s in shares)


def _stats(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    return {"min": float(v.min()), "median": float(np.median(v)), "max": float(v.max())}


def encoder_dominance(params: Mapping[Arch, Mapping[str, int]], flops_total: Mapping[Arch, int],
                      flops_encoder: Mapping[Arch, int], depth_probe: Mapping[Arch, float],
                      latency_ms: Mapping[Arch, float]) -> Dominance:
    """Shares of the encoder blocks in parameters, FLOPs and (measured) latency.

    `depth_probe` holds measured latencies of shapes that differ only in depth; a straight line
    through them gives the non-block cost (intercept), so the block share of latency at each
    measured candidate is ``1 - intercept / latency``.
    """
    dom = Dominance(
        params_share=_stats([p["effective"] / p["net"] for p in params.values()]),
        flops_share=_stats([flops_encoder[a] / flops_total[a] for a in flops_total]),
    )
    if len(depth_probe) >= 2:
        depths = np.array([a.layers for a in depth_probe], dtype=float)
        lat = np.array(list(depth_probe.values()), dtype=float)
        slope, intercept = np.polyfit(depths, lat, 1)
        intercept = max(float(intercept), 0.0)
        dom.probe = {"shapes": [a.label() for a in depth_probe], "latency_ms": [float(x) for x in lat],
                     "per_layer_ms": float(slope), "non_block_ms": intercept}
        dom.latency_share = _stats([max(0.0, 1.0 - intercept / v) for v in latency_ms.values()])
    return dom
