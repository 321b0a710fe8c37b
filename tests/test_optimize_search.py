"""The search's phases with a fake latency table and a fake error function (no model is built)."""

import math

import numpy as np
import pytest

from bort.families import MINILM_L6, Arch, count_params
from optimize import abnc
from optimize.fptas import pareto_front
from optimize.grid import bort_grid, source_grid
from optimize.latency import JsonlStore
from optimize.search import SearchOptions, run_search


def table_latency(a: Arch) -> float:
    """A latency table shaped like a real CPU's (ms), exactly representable by the model's features."""
    return 0.3 + a.layers * (2e-6 * a.hidden ** 2 + 2e-6 * a.hidden * a.intermediate + 0.02 * a.heads)


class FakeMeter:
    """Counts measurements; knows what it has 'cached' like the real meter."""

    def __init__(self, overrides=None):
        self.calls: list[Arch] = []
        self.overrides = overrides or {}

    def cached(self, arch):
        return None

    def __call__(self, arch):
        self.calls.append(arch)
        v = self.overrides.get(arch, table_latency(arch))
        return {"p50_ms": v, "p10_ms": 0.99 * v, "p90_ms": 1.01 * v}


class FakeError:
    """Error falls with encoder size, with a fixed per-shape wobble; counts calls."""

    def __init__(self, fail_after=None):
        self.calls: list[Arch] = []
        self.fail_after = fail_after

    def __call__(self, arch):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls.append(arch)
        wobble = 1 + 0.05 * math.sin(arch.layers * 7 + arch.heads * 3 + arch.hidden + arch.intermediate)
        return wobble / math.log(count_params(arch)["effective"])


GRID = source_grid(MINILM_L6, (0.34, 0.67, 1.0), (0.5, 1.0), (0.5, 1.0), (0.5, 1.0))  # 24 shapes


def search(tmp_path, meter=None, error=None, **opts):
    meter, error = meter or FakeMeter(), error or FakeError()
    result = run_search(GRID, family="bert", vocab=None, source_arch=MINILM_L6, latency_fn=meter, error_fn=error,
                        store=JsonlStore(tmp_path / "errors.jsonl"), error_key="k",
                        opts=SearchOptions(**{"prune_factor": 0.0, **opts}))
    return result, meter, error


def test_full_search_returns_a_consistent_front_and_choice(tmp_path):
    result, meter, error = search(tmp_path)
    assert len(result.candidates) == 24 and result.counts["trained"] == 24
    assert len(error.calls) == 24 == len(set(error.calls))
    kept_front = pareto_front(result.fptas.kept)
    assert result.fptas.front == kept_front
    assert result.chosen is not None and result.chosen.arch.label() in {p.label for p in result.fptas.front}
    assert result.checks["inversions"] == []
    assert len(meter.calls) == len(set(meter.calls))  # nothing timed twice


def test_a_large_grid_is_measured_in_part_and_the_front_before_choosing(tmp_path):
    result, meter, _ = search(tmp_path, max_measured=10)
    grid_measured = [a for a in meter.calls if a in GRID]
    assert 10 <= len(set(grid_measured)) < len(GRID)
    by_label = result.by_label()
    assert all(by_label[p.label].measured for p in result.fptas.front)
    assert result.model.fit_mape < 1.0  # the fake table is in the model's span
    for r in result.remeasured:
        assert abs(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] < 0.05


def test_a_killed_error_phase_resumes_without_retraining_and_reaches_the_same_front(tmp_path):
    reference, _, _ = search(tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        search(tmp_path / "run", error=FakeError(fail_after=9))
    second = FakeError()
    resumed, _, _ = search(tmp_path / "run", error=second)
    assert len(second.calls) == 24 - 9
    assert resumed.fptas.front == reference.fptas.front
    assert resumed.chosen.arch == reference.chosen.arch


def test_a_candidate_that_cannot_enter_the_front_is_not_trained(tmp_path):
    class Steep(FakeError):  # shallow-wide shapes learn far worse than deep-narrow ones
        def __call__(self, arch):
            self.calls.append(arch)
            return (10.0 if arch.layers <= 2 and arch.hidden > 192 else 1.0) / arch.layers

    result, _, error = search(tmp_path, error=Steep(), prune_factor=0.5)
    pruned = [c for c in result.candidates if c.status == "pruned"]
    assert pruned and not {c.arch for c in pruned} & set(error.calls)
    front = {p.label for p in result.fptas.front}
    assert not front & {c.arch.label() for c in pruned}


def test_policy_constraints_and_time_budget_skip_training(tmp_path):
    budget = table_latency(Arch(4, 6, 192, 768))
    result, _, error = search(tmp_path / "a", policy="latency_budget", latency_budget_ms=budget)
    skipped = [c for c in result.candidates if c.status == "infeasible"]
    assert skipped and all(c.latency_ms > budget for c in skipped)
    assert result.chosen.latency_ms <= budget
    result, _, error = search(tmp_path / "b", error_time_budget_s=1e-9)
    assert len(error.calls) == 1 and result.counts["unbudgeted"] == 23


def test_an_unsatisfiable_policy_is_reported_not_raised(tmp_path):
    result, _, _ = search(tmp_path, policy="speedup", speedup_target=1000.0)
    assert result.chosen is None and "speedup_target" in result.choice_error


def test_planted_inversion_is_reported(tmp_path):
    small, big = Arch(2, 6, 192, 768), Arch(4, 6, 192, 768)
    meter = FakeMeter({small: 3 * table_latency(big)})
    result, _, _ = search(tmp_path, meter=meter)
    pairs = {(i["smaller"], i["larger"]) for i in result.checks["inversions"]}
    assert (small.label(), big.label()) in pairs
    assert result.checks["axis_monotonicity"]["layers"]["slower_when_larger"] < \
        result.checks["axis_monotonicity"]["layers"]["pairs"]


def test_latency_model_is_monotone_on_every_axis_even_on_noisy_data():
    rng = np.random.default_rng(0)
    grid = bort_grid()
    measured = grid[::7]
    lat = [table_latency(a) * rng.uniform(0.8, 1.25) for a in measured]
    model = abnc.fit_latency_model(measured, lat)
    pred = dict(zip(grid, model.predict(grid), strict=True))
    for a in grid:
        for b in grid:
            if abnc.dominates_shape(a, b):
                assert pred[b] >= pred[a] - 1e-9
    assert model.loo_mape is not None and model.loo_mape < 25


def test_encoder_dominance_reads_the_depth_probe():
    probe = {Arch(1, 4, 256, 512): 3.0, Arch(5, 4, 256, 512): 11.0}  # 2 ms per layer, 1 ms outside
    dom = abnc.encoder_dominance({a: count_params(a) for a in probe}, {a: 10 for a in probe},
                                 {a: 9 for a in probe}, probe, {Arch(5, 4, 256, 512): 11.0})
    assert dom.probe["non_block_ms"] == pytest.approx(1.0)
    assert dom.latency_share["median"] == pytest.approx(10 / 11)


def test_the_error_phase_runs_through_any_futures_executor(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    inline, _, _ = search(tmp_path / "inline")
    with ThreadPoolExecutor(max_workers=3) as pool:
        error = FakeError()
        pooled = run_search(GRID, family="bert", vocab=None, source_arch=MINILM_L6, latency_fn=FakeMeter(),
                            error_fn=error, store=JsonlStore(tmp_path / "pool.jsonl"), error_key="k",
                            opts=SearchOptions(prune_factor=0.0, workers=3), executor=pool)
    assert len(error.calls) == 24 and pooled.fptas.front == inline.fptas.front


class ThreadsExecutor:
    """Two threads; shapes with an even layer count finish late, so results complete out of order."""

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=2)

    def submit(self, fn, *args):
        import time

        def late(arch):
            time.sleep(0.02 if arch.layers % 2 == 0 else 0.0)
            return fn(arch)

        return self.pool.submit(late, *args)

    def shutdown(self, wait=True):
        self.pool.shutdown(wait)


def test_with_candidates_in_flight_every_estimate_is_stored_and_the_front_is_the_serial_one(tmp_path):
    reference, _, _ = search(tmp_path / "serial")
    executor = ThreadsExecutor()
    try:
        result = run_search(GRID, family="bert", vocab=None, source_arch=MINILM_L6, latency_fn=FakeMeter(),
                            error_fn=FakeError(), store=JsonlStore(tmp_path / "parallel.jsonl"), error_key="k",
                            opts=SearchOptions(prune_factor=0.0, workers=2), executor=executor)
    finally:
        executor.shutdown()
    stored = JsonlStore(tmp_path / "parallel.jsonl").records
    assert len(stored) == 24 and all(r["error"] == result.by_label()[r["arch"]].error for r in stored.values())
    assert result.fptas.front == reference.fptas.front
