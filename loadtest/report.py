"""Figures from one Locust run, the optimised/baseline comparison, and the SLO verdict.

Each run (one model, one user count) leaves Locust's CSVs (``<prefix>_stats.csv``,
``<prefix>_stats_history.csv``) and the locustfile's exact per-request samples
(``<prefix>.<pid>.csv``). Requests/s, counts and failures are read from both (they must agree);
percentiles come from the samples, because Locust rounds response times to whole milliseconds
(tens of milliseconds above 100 ms), too coarse for a model that answers in 3 ms. Locust's own
percentiles stay in the results next to them.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bort.errors import BortError

SLO_EXIT_CODE = 3  # `bort loadtest` exits with this when a configured SLO is missed


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None  # Locust writes "N/A" for percentiles of an empty window


def read_locust_stats(prefix: Path) -> dict[str, Any]:
    """The ``Aggregated`` row of ``<prefix>_stats.csv``: requests, failures, rps, percentiles (ms)."""
    path = Path(f"{prefix}_stats.csv")
    if not path.is_file():
        raise BortError(f"Locust wrote no statistics ({path} is missing); see the Locust log next to it")
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("Name") == "Aggregated"]
    if not rows:
        raise BortError(f"{path} has no Aggregated row; is it a Locust --csv stats file?")
    row = rows[-1]
    return {
        "requests": int(row["Request Count"]), "failures": int(row["Failure Count"]),
        "rps": _number(row["Requests/s"]) or 0.0, "mean_ms": _number(row["Average Response Time"]),
        "p50_ms": _number(row["50%"]), "p95_ms": _number(row["95%"]), "p99_ms": _number(row["99%"]),
        "max_ms": _number(row["Max Response Time"]),
    }


def read_locust_history(prefix: Path) -> list[dict[str, Any]]:
    """Rows of ``<prefix>_stats_history.csv`` (Aggregated only): time, users, current rps, totals."""
    path = Path(f"{prefix}_stats_history.csv")
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("Name") == "Aggregated"]
    return [{
        "timestamp": int(r["Timestamp"]), "users": int(r["User Count"]), "rps": _number(r["Requests/s"]),
        "requests": int(r["Total Request Count"]), "failures": int(r["Total Failure Count"]),
        "p50_ms": _number(r["50%"]), "p95_ms": _number(r["95%"]),
    } for r in rows]


def read_samples(prefix: Path) -> np.ndarray:
    """All ``<prefix>.<pid>.csv`` samples as a (n, 4) array: t_s, users, latency_ms, ok."""
    parts = []
    for path in sorted(Path(prefix).parent.glob(f"{Path(prefix).name}.*.csv")):
        data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
        if data.size:
            parts.append(data.reshape(-1, 4))
    return np.concatenate(parts) if parts else np.zeros((0, 4))


def worker_shares(prefix: Path) -> list[dict[str, Any]]:
    """Each load generator's measured requests and share of the run: one per samples file
    (``<prefix>.<worker>.csv``: a Locust process's, named by its pid, or ``w<i>-<pid>`` for the
    i-th Ray worker)."""
    counts = {}
    for path in sorted(Path(prefix).parent.glob(f"{Path(prefix).name}.*.csv")):
        data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
        counts[path.name[len(Path(prefix).name) + 1:-len(".csv")]] = int(data.shape[0]) if data.size else 0
    total = sum(counts.values())
    return [{"worker": name, "requests": n, "share": round(n / total, 4) if total else 0.0}
            for name, n in counts.items()]


def percentiles(latencies_ms: np.ndarray) -> dict[str, float | None]:
    """p50/p95/p99/mean of exact latencies (None when there are none)."""
    if latencies_ms.size == 0:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None}
    p50, p95, p99 = np.percentile(latencies_ms, [50, 95, 99])
    return {"p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3), "p99_ms": round(float(p99), 3),
            "mean_ms": round(float(latencies_ms.mean()), 3)}


def summarize_run(prefix: Path, users: int, duration_s: float) -> dict[str, Any]:
    """One run's figures: requests/s, p50/p95/p99, failures (samples first, Locust's CSV beside)."""
    locust = read_locust_stats(prefix)
    samples = read_samples(prefix)
    if samples.shape[0]:
        requests, failures = int(samples.shape[0]), int((samples[:, 3] == 0).sum())
        window_s = max(float(samples[:, 0].max()), 1e-9)
        figures = {"requests": requests, "failures": failures, "rps": round(requests / window_s, 3),
                   "source": "samples", **percentiles(samples[:, 2])}
    else:  # e.g. distributed workers on other machines: only the master's CSV is here
        figures = {**locust, "source": "locust_csv"}
    figures["failure_ratio"] = round(figures["failures"] / figures["requests"], 6) if figures["requests"] else 1.0
    return {"users": users, "duration_s": duration_s, **figures, "locust": locust}


@dataclass(frozen=True)
class Slo:
    """Service-level objectives; 0 switches one off."""

    p95_ms: float = 0.0
    min_speedup: float = 0.0
    max_failure_ratio: float = 0.0


def compare(baseline: dict[str, dict[str, Any]], optimized: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per user count (keys as strings): ``rps_ratio`` = optimised/baseline requests/s and
    ``p50_ratio`` = baseline/optimised p50 (both > 1 when the optimised model is faster)."""
    out: dict[str, Any] = {}
    for users in sorted(set(baseline) & set(optimized), key=int):
        b, o = baseline[users], optimized[users]
        rps = o["rps"] / b["rps"] if b.get("rps") else None
        p50 = b["p50_ms"] / o["p50_ms"] if b.get("p50_ms") and o.get("p50_ms") else None
        out[users] = {"rps_ratio": None if rps is None else round(rps, 3),
                      "p50_ratio": None if p50 is None else round(p50, 3)}
    return out


def headline(ratios: dict[str, Any]) -> dict[str, Any]:
    """The two numbers a reader wants: rps ratio at the most users, p50 ratio at the fewest."""
    if not ratios:
        return {"rps_ratio": None, "rps_ratio_users": None, "p50_ratio": None, "p50_ratio_users": None}
    most, fewest = max(ratios, key=int), min(ratios, key=int)
    return {"rps_ratio": ratios[most]["rps_ratio"], "rps_ratio_users": int(most),
            "p50_ratio": ratios[fewest]["p50_ratio"], "p50_ratio_users": int(fewest)}


def check_slo(models: dict[str, dict[str, Any]], ratios: dict[str, Any], slo: Slo) -> list[str]:
    """Every missed objective, as a sentence; empty when all configured objectives hold.

    - ``p95_ms``: the optimised model's p95 at every user count is within the budget;
    - ``min_speedup``: the requests/s ratio at the most users and the p50 ratio at the fewest
      users both reach it;
    - ``max_failure_ratio``: no model at any user count fails a larger share of requests.
    """
    missed = []
    if slo.p95_ms > 0:
        for users, fig in models["optimized"]["levels"].items():
            if fig["p95_ms"] is None or fig["p95_ms"] > slo.p95_ms:
                missed.append(f"optimised p95 at {users} users is {fig['p95_ms']} ms > budget {slo.p95_ms} ms")
    if slo.min_speedup > 0:
        top = headline(ratios)
        for key, users_key in (("rps_ratio", "rps_ratio_users"), ("p50_ratio", "p50_ratio_users")):
            value = top[key]
            if value is None or value < slo.min_speedup:
                missed.append(f"{key} at {top[users_key]} users is {value} < minimum speedup {slo.min_speedup}")
    if slo.max_failure_ratio > 0:
        for name, model in models.items():
            for users, fig in model["levels"].items():
                if fig["failure_ratio"] > slo.max_failure_ratio:
                    missed.append(f"{name} at {users} users failed {fig['failure_ratio']:.2%} of requests "
                                  f"> {slo.max_failure_ratio:.2%}")
    return missed
