"""The search, phase by phase (method.md §2). Latency and error come in as functions, so tests
drive it with a fake latency table and a fake error function.

1. exact params and FLOPs for every candidate;
2. latency: the source's own, then the grid (all of it, or a well-spread subset plus whatever the
   cache already holds), then a depth probe for the encoder-dominance check; serially, never
   while anything trains;
3. the monotone latency model: predictions for unmeasured shapes, ABnC checks;
4. error estimates in increasing training-cost order, each stored as it finishes (resume);
5. the FPTAS; front points whose latency was only predicted are measured and the FPTAS rerun,
   until the whole front is measured; the policy picks one point.

Cost control in phase 4 (counted in the report):

- *infeasible*: under ``latency_budget`` / ``speedup`` policies a candidate that cannot meet the
  constraint is not trained (a predicted latency gets a 15% allowance for model error);
- *pruned*: a candidate c is not trained when some trained point r is no larger in params and no
  slower than c, and ê(r) <= prune_factor · min{ê(q): q a trained sub-shape of c}. That is, we
  assume a short run of c cannot beat the best of its own sub-shapes by more than 1/prune_factor;
  under that assumption c can never enter the front. ``prune_factor = 0`` turns pruning off;
- *unbudgeted*: once the stored training seconds exceed ``error_time_budget_s``, the rest
  (the most expensive) are not trained. Stored seconds count, so a resumed run decides the same.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from bort.families import Arch, Vocab, count_params, flops
from optimize import abnc
from optimize.executor import Executor, InlineExecutor
from optimize.fptas import FptasResult, Point, choose, fptas
from optimize.grid import spread_subset

log = logging.getLogger(__name__)

PREDICTED_ALLOWANCE = 1.15  # slack on predicted latency before a policy calls a shape infeasible


@dataclass(frozen=True)
class SearchOptions:
    """The knobs of one search (built from ``cfg.optimize`` by the stage)."""

    epsilon: float = 0.1
    max_measured: int = 0
    policy: str = "compromise"
    latency_budget_ms: float = 0.0
    speedup_target: float = 0.0
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    prune_factor: float = 0.5
    error_time_budget_s: float = 0.0
    error_seq_len: int = 64
    inversion_tolerance: float = 0.02
    workers: int = 1
    max_finalist_rounds: int = 5


@dataclass
class Candidate:
    arch: Arch
    params: dict[str, int]
    flops: int
    flops_encoder: int
    record: dict[str, Any] | None = None  # latency measurement (None: predicted only)
    predicted_ms: float | None = None
    error: float | None = None
    status: str = "pending"  # trained | pruned | infeasible | unbudgeted
    note: str = ""

    @property
    def measured(self) -> bool:
        return self.record is not None

    @property
    def latency_ms(self) -> float:
        return float(self.record["p50_ms"]) if self.record is not None else float(self.predicted_ms)

    def point(self) -> Point:
        return Point(self.arch.label(), float(self.params["net"]), self.latency_ms, float(self.error))


@dataclass
class SearchResult:
    candidates: list[Candidate]
    source_record: dict[str, Any]
    fptas: FptasResult
    chosen: Candidate | None
    model: abnc.LatencyModel
    remeasured: list[dict[str, Any]] = field(default_factory=list)  # predicted vs measured finalists
    checks: dict[str, Any] = field(default_factory=dict)
    choice_error: str = ""  # the policy's message when nothing satisfied it
    counts: dict[str, int] = field(default_factory=dict)

    def by_label(self) -> dict[str, Candidate]:
        return {c.arch.label(): c for c in self.candidates}


def describe(archs: list[Arch], family: str, vocab: Vocab | None, seq_len: int, batch: int) -> list[Candidate]:
    """Phase 1: exact parameter counts and analytic FLOPs."""
    out = []
    for a in archs:
        total = flops(a, seq_len, batch)
        pooler = 2 * a.hidden * a.hidden * batch
        out.append(Candidate(a, count_params(a, family, vocab), total, total - pooler))
    return out


def depth_probe(archs: list[Arch]) -> list[Arch]:
    """Two shapes differing only in depth (min and max depth at the median width)."""
    mid = sorted(archs, key=lambda a: (a.hidden * a.intermediate, a.label()))[len(archs) // 2]
    depths = sorted({a.layers for a in archs})
    lo, hi = depths[0], depths[-1] if depths[-1] != depths[0] else depths[0] + 1
    return [Arch(lo, mid.heads, mid.hidden, mid.intermediate), Arch(hi, mid.heads, mid.hidden, mid.intermediate)]


def measure_phase(cands: list[Candidate], latency_fn: Callable[[Arch], dict], max_measured: int,
                  extra: list[Arch], records: dict[Arch, dict]) -> dict[Arch, dict]:
    """Phase 2: measure the planned shapes serially, adding to `records` (already-known shapes)."""
    cached = getattr(latency_fn, "cached", lambda arch: None)
    archs = [c.arch for c in cands]
    planned = archs if not max_measured or max_measured >= len(archs) else spread_subset(archs, max_measured)
    free = [a for a in archs if a not in planned and cached(a) is not None]
    todo = [a for a in dict.fromkeys(planned + free + extra) if a not in records]
    for arch in tqdm(todo, desc="latency", unit="shape", leave=False):
        records[arch] = latency_fn(arch)
    for c in cands:
        c.record = records.get(c.arch)
    return records


def refresh(records: dict[Arch, dict], latency_fn: Callable[[Arch], dict], cands: list[Candidate]) -> None:
    """Re-read every record at once and freeze the meter's scale, so that all figures, including
    finalists measured later, share one scale (the reference estimate improves as the meter
    measures more). A table without ``cached`` is left as it is."""
    cached = getattr(latency_fn, "cached", None)
    if cached is None:
        return
    getattr(latency_fn, "freeze_reference", lambda: None)()
    for arch in records:
        records[arch] = cached(arch) or records[arch]
    for c in cands:
        if c.arch in records:
            c.record = records[c.arch]


def model_phase(cands: list[Candidate], records: dict[Arch, dict]) -> abnc.LatencyModel:
    """Phase 3: fit the monotone model on every measurement; predict every candidate."""
    archs = sorted(records)
    model = abnc.fit_latency_model(archs, [records[a]["p50_ms"] for a in archs])
    predictions = model.predict([c.arch for c in cands])
    for c, p in zip(cands, predictions, strict=True):
        c.predicted_ms = float(p)
    return model


def _infeasible(c: Candidate, opts: SearchOptions, source_ms: float) -> bool:
    allowance = 1.0 if c.measured else PREDICTED_ALLOWANCE
    if opts.policy == "latency_budget" and opts.latency_budget_ms > 0:
        return c.latency_ms > opts.latency_budget_ms * allowance
    if opts.policy == "speedup" and opts.speedup_target > 0:
        return source_ms / c.latency_ms * allowance < opts.speedup_target
    return False


def _pruned_by(c: Candidate, done: list[Candidate], factor: float) -> Candidate | None:
    subs = [q.error for q in done if abnc.dominates_shape(q.arch, c.arch)]
    if factor <= 0 or not subs:
        return None
    bound = factor * min(subs)
    for r in done:
        if r.params["net"] <= c.params["net"] and r.latency_ms <= c.latency_ms and r.error <= bound:
            return r
    return None


def error_phase(cands: list[Candidate], error_fn: Callable[[Arch], float], store: Any, error_key: str,
                opts: SearchOptions, source_ms: float, executor: Executor) -> None:
    """Phase 4: ê per candidate in increasing training-cost order; stored per candidate.

    Up to ``opts.workers`` candidates are in flight at once; skip decisions use the results
    collected so far, in submission order (so they are deterministic for a given number in
    flight, and the same as a serial run with one). Each ê is stored the moment its future
    completes, in whatever order, so a driver that dies loses no finished candidate.
    """
    order = sorted(cands, key=lambda c: (flops(c.arch, opts.error_seq_len), c.params["net"], c.arch.label()))
    done: list[Candidate] = []
    in_flight: list[tuple[Candidate, Any, threading.Event]] = []
    spent, seconds_of = [0.0], {}

    def submit(c: Candidate) -> None:
        start, stored = time.time(), threading.Event()

        def store_result(future: Any) -> None:  # in the executor's thread, as soon as it completes
            try:
                if future.exception() is None:
                    seconds_of[c.arch] = time.time() - start
                    store.put({"key": f"{error_key}:{c.arch.label()}", "arch": c.arch.label(),
                               "error": float(future.result()), "seconds": round(seconds_of[c.arch], 3)})
            finally:
                stored.set()

        future = executor.submit(error_fn, c.arch)
        future.add_done_callback(store_result)
        in_flight.append((c, future, stored))

    def collect(c: Candidate, future: Any, stored: threading.Event) -> None:
        c.error, c.status = float(future.result()), "trained"
        stored.wait()
        seconds = seconds_of[c.arch]
        spent[0] += seconds
        done.append(c)
        log.debug("ê(%s) = %.4g in %.1f s", c.arch.label(), c.error, seconds)

    for c in tqdm(order, desc="error estimates", unit="cand", leave=False):
        stored = store.get(f"{error_key}:{c.arch.label()}")
        if stored is not None:
            c.error, c.status = float(stored["error"]), "trained"
            spent[0] += float(stored.get("seconds", 0.0))
            done.append(c)
        elif _infeasible(c, opts, source_ms):
            c.status, c.note = "infeasible", f"cannot meet the {opts.policy} constraint"
        elif (pruner := _pruned_by(c, done, opts.prune_factor)) is not None:
            c.status, c.note = "pruned", f"{pruner.arch.label()} is smaller, faster and better by assumption"
        elif opts.error_time_budget_s and spent[0] >= opts.error_time_budget_s:
            c.status, c.note = "unbudgeted", f"error budget of {opts.error_time_budget_s:g} s spent"
        else:
            submit(c)
            if len(in_flight) >= max(1, opts.workers):
                collect(*in_flight.pop(0))
    while in_flight:
        collect(*in_flight.pop(0))


def front_phase(cands: list[Candidate], latency_fn: Callable[[Arch], dict], records: dict[Arch, dict],
                opts: SearchOptions) -> tuple[FptasResult, list[dict[str, Any]]]:
    """Phase 5: FPTAS; measure predicted-only front points; refit; repeat until the front is measured."""
    remeasured: list[dict[str, Any]] = []
    by_label = {c.arch.label(): c for c in cands}
    for round_no in range(opts.max_finalist_rounds + 1):
        result = fptas([c.point() for c in cands if c.error is not None], opts.epsilon)
        missing = [by_label[p.label] for p in result.front if not by_label[p.label].measured]
        if not missing or round_no == opts.max_finalist_rounds:
            break
        for c in tqdm(missing, desc="finalists", unit="shape", leave=False):
            c.record = records[c.arch] = latency_fn(c.arch)
            remeasured.append({"arch": c.arch.label(), "predicted_ms": c.predicted_ms,
                               "measured_ms": c.record["p50_ms"]})
        model_phase(cands, records)  # better predictions for the next round
    return result, remeasured


def run_search(archs: list[Arch], *, family: str, vocab: Vocab | None, source_arch: Arch,
               latency_fn: Callable[[Arch], dict], error_fn: Callable[[Arch], float], store: Any,
               error_key: str, opts: SearchOptions, seq_len: int = 128, batch: int = 1,
               executor: Executor | None = None) -> SearchResult:
    """All phases; returns every figure. Raises nothing on an unsatisfiable policy (see choice_error)."""
    from bort.errors import BortError

    cands = describe(sorted(set(archs)), family, vocab, seq_len, batch)
    probe = depth_probe([c.arch for c in cands])
    records = measure_phase(cands, latency_fn, opts.max_measured, probe, {source_arch: latency_fn(source_arch)})
    refresh(records, latency_fn, cands)
    source_record = records[source_arch]
    model = model_phase(cands, records)
    checks = abnc_checks(cands, records, probe, opts.inversion_tolerance)
    error_phase(cands, error_fn, store, error_key, opts, float(source_record["p50_ms"]),
                executor or InlineExecutor())
    result, remeasured = front_phase(cands, latency_fn, records, opts)
    if remeasured:
        model = model_phase(cands, records)
        result = fptas([c.point() for c in cands if c.error is not None], opts.epsilon)
        checks = abnc_checks(cands, records, probe, opts.inversion_tolerance)
    chosen, message = None, ""
    try:
        point = choose(result.front, opts.policy, latency_budget_ms=opts.latency_budget_ms,
                       speedup_target=opts.speedup_target, source_latency_ms=float(source_record["p50_ms"]),
                       weights=opts.weights)
        chosen = next(c for c in cands if c.arch.label() == point.label)
    except BortError as e:
        message = str(e) if result.front else _nothing_trained(cands, opts, float(source_record["p50_ms"]))
    counts = {s: sum(c.status == s for c in cands) for s in ("trained", "pruned", "infeasible", "unbudgeted")}
    counts["measured"] = sum(c.measured for c in cands)
    return SearchResult(cands, source_record, result, chosen, model, remeasured, checks, message, counts)


def _nothing_trained(cands: list[Candidate], opts: SearchOptions, source_ms: float) -> str:
    fastest = min(cands, key=lambda c: c.latency_ms)
    key = {"latency_budget": "latency_budget_ms", "speedup": "speedup_target"}.get(opts.policy)
    if key and any(c.status == "infeasible" for c in cands):
        return (f"no candidate can meet optimize.{key}={getattr(opts, key):g}: the fastest, "
                f"{fastest.arch.label()}, runs {fastest.latency_ms:.2f} ms ({source_ms / fastest.latency_ms:.2f}x "
                "the source); relax the constraint or add smaller shapes to the grid")
    return "no candidate was trained (see the status column of candidates.csv)"


def abnc_checks(cands: list[Candidate], records: dict[Arch, dict], probe: list[Arch],
                tolerance: float) -> dict[str, Any]:
    """Inversions, per-axis monotonicity and encoder dominance on what was measured."""
    grid_records = {c.arch: c.record for c in cands if c.measured}
    dominance = abnc.encoder_dominance(
        {c.arch: c.params for c in cands}, {c.arch: c.flops for c in cands},
        {c.arch: c.flops_encoder for c in cands},
        {a: float(records[a]["p50_ms"]) for a in probe if a in records},
        {a: float(r["p50_ms"]) for a, r in grid_records.items()})
    lat = np.array([c.latency_ms for c in cands])
    return {
        "inversions": abnc.find_inversions(grid_records, tolerance),
        "axis_monotonicity": abnc.axis_monotonicity(grid_records),
        "dominance": {"params_share": dominance.params_share, "flops_share": dominance.flops_share,
                      "latency_share": dominance.latency_share, "probe": dominance.probe,
                      "encoder_dominates": dominance.dominant()},
        "latency_range_ms": [float(lat.min()), float(lat.max())],
    }
