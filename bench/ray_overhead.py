"""Benchmark: the search's error phase inline, in a process pool and on local Ray; a cluster plan.

The same sweep three ways on this machine: `--candidates` shapes of the default MiniLM grid (a
spread subset), each ê a real distillation run at the default settings (``optimize.error_steps``
by the default rule: 10 steps, batch 16, 64 tokens), on the teacher cache `bort optimize` builds:

- ``inline``: one after the other in this process (torch on every core, as ``bort optimize`` runs);
- ``process``: a pool of 2 spawned processes, 1 torch thread each (``optimize.executor=process``);
- ``ray``: a one-node Ray cluster on this machine, tasks of 1 CPU (``optimize.executor=ray``): the
  source's weights and the teacher cache put in the object store once. The benchmark runs in a
  network namespace of its own whose only interface is 127.0.0.1, with the node started by ``ray
  start --node-ip-address=127.0.0.1`` (tests/ray_cluster.py), so Ray's traffic stays on loopback
  (``--ray-address`` joins a cluster you started instead).

Per executor: wall time, the compute inside the estimates (timed in the worker), and the wall
time beyond compute per task (wall − compute / slots, over the tasks). For Ray also: starting
the instance, putting the inputs, the first result, and a no-op task's round trip (one at a
time, and many in flight). Then a plan for the paper's 300-candidate grid on N nodes: each
candidate's ê cost from a fit of the measured costs on training FLOPs (an extrapolation: the grid's
shapes are far larger than MiniLM's), latency timed serially on the one target node (cost per
shape measured here, extrapolated the same way), Ray's overhead per task and per node added.
Writes ``bench/results/ray_overhead.{json,md}``; about 6-8 minutes on this 2-core machine::

    .venv/bin/python bench/ray_overhead.py
    .venv/bin/python bench/ray_overhead.py --candidates 2 --noop 20   # smoke run
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
NODES = (1, 2, 4, 8, 16, 32)

log = logging.getLogger("ray_overhead")


class Timed:
    """`fn` returning (value, compute seconds, pid, setup seconds), timed where it runs. Setup is the
    first call's load of the inputs (unpacking, the teacher cache, the teacher model) by this copy of
    the function: once per Ray worker (the function is fetched once), once per task in the process
    pool (pickled with each task). It counts as overhead, not as the candidate's compute."""

    def __init__(self, fn: Any, threads: int = 0):
        self.fn, self.threads, self.ready = fn, threads, False

    def __call__(self, arch: Any) -> tuple[float, float, int, float]:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        started, setup = time.perf_counter(), 0.0
        if not self.ready:
            local = getattr(self.fn, "_materialise", None)
            cache = local()[1] if local is not None else self.fn.teacher_cache()
            cache.teacher()
            self.ready = True
            setup = time.perf_counter() - started
        started = time.perf_counter()
        value = self.fn(arch)
        return float(value), time.perf_counter() - started, os.getpid(), setup


def noop(x: int) -> int:
    return x


def sweep(name: str, executor: Any, fn: Any, archs: list[Any], slots: int) -> dict[str, Any]:
    """Submit every shape (at most `slots` in flight, as the search does), collect in order."""
    started, first, results, flight = time.perf_counter(), None, [], []
    for arch in archs:
        flight.append(executor.submit(fn, arch))
        if len(flight) >= slots:
            results.append(flight.pop(0).result())
            first = first or time.perf_counter() - started
    results += [f.result() for f in flight]
    first = first or time.perf_counter() - started
    wall = time.perf_counter() - started
    compute = [r[1] for r in results]
    setup = [r[3] for r in results if r[3]]
    beyond = (wall - sum(compute) / slots) / len(archs)
    log.info("%s: %.1f s wall, %.1f s compute, %.2f s beyond compute per task", name, wall, sum(compute), beyond)
    return {"executor": name, "slots": slots, "wall_s": round(wall, 2), "compute_s": round(sum(compute), 2),
            "per_candidate_s": [round(c, 3) for c in compute], "first_result_s": round(first, 2),
            "beyond_compute_per_task_s": round(beyond, 3), "errors": [round(r[0], 6) for r in results],
            "setup_per_worker_s": [round(x, 2) for x in setup],
            "processes": len({r[2] for r in results})}


def inputs(profile: str) -> tuple[Any, Any, list[Any], Any]:
    """The default search's config, source, a spread subset of its grid and its error function."""
    from bort import config as C
    from bort import data
    from bort.corpus import corpus_texts
    from bort.families import resolve_source
    from optimize.error import error_steps, make_error_fn
    from optimize.grid import make_grid

    cfg = C.resolve([profile])
    with tempfile.TemporaryDirectory(prefix="bort-ray-bench-") as run_dir:
        data.prepare(cfg, Path(run_dir))
        corpus = corpus_texts(cfg, data.load_prepared(Path(run_dir)))
    source = resolve_source(cfg.source.model)
    steps, _ = error_steps(cfg.optimize)
    fn = make_error_fn(cfg, source, corpus, steps)
    return cfg, source, make_grid(cfg.optimize.grid, source.arch, cfg.optimize), fn


def ray_figures(ray: Any, executor: Any, payload: Any, n_noop: int) -> dict[str, Any]:
    """The object store's share of the payload, a no-op's round trip one at a time and many in flight."""
    started = time.perf_counter()
    executor.share(payload)
    put_s = time.perf_counter() - started
    executor.submit(noop, 0).result()  # a warm worker
    started = time.perf_counter()
    for i in range(n_noop):
        executor.submit(noop, i).result()
    serial = (time.perf_counter() - started) / n_noop
    started = time.perf_counter()
    for f in [executor.submit(noop, i) for i in range(n_noop)]:
        f.result()
    parallel = (time.perf_counter() - started) / n_noop
    return {"put_inputs_s": round(put_s, 3), "payload_mb": round(payload_bytes(payload) / 2**20, 1),
            "noop_round_trip_ms": round(1000 * serial, 2), "noop_in_flight_ms_per_task": round(1000 * parallel, 2)}


def payload_bytes(fn: Any) -> int:
    inner = getattr(fn, "fn", fn)
    return inner.source.size + inner.teacher.size


def latency_costs(source: Any, archs: list[Any], threads: int) -> list[dict[str, Any]]:
    """What timing one shape costs on the target (export + sessions + runs), in a scratch cache."""
    from bort.families import Arch
    from optimize.latency import LatencyMeter, LatencySettings

    with tempfile.TemporaryDirectory() as scratch:
        meter = LatencyMeter(source.family, LatencySettings(num_threads=threads), base_config=source.config,
                             cache_path=Path(scratch) / "latency.jsonl", reference=source.arch)
        meter(source.arch)
        meter(Arch(1, 1, 32, 32))  # opens the reference session: not part of any shape's cost
        out = []
        for arch in archs:
            started = time.perf_counter()
            meter(arch)
            out.append({"arch": arch.label(), "seconds": round(time.perf_counter() - started, 2)})
    return out


def fit(x: list[float], y: list[float]) -> tuple[float, float]:
    """y ~ a + b x, both non-negative (least squares, clipped)."""
    b, a = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    return max(float(a), 0.0), max(float(b), 0.0)


def makespan(costs: list[float], slots: int) -> float:
    """Longest-processing-time-first over `slots` workers (costs already include overheads)."""
    loads = [0.0] * slots
    for c in sorted(costs, reverse=True):
        i = loads.index(min(loads))
        loads[i] += c
    return max(loads)


def plan(measured: dict[str, Any], train_flops: dict[str, float], latency: list[dict[str, Any]],
         lat_params: dict[str, float], ray: dict[str, Any], cores: int) -> dict[str, Any]:
    """The paper grid on N nodes of `cores` cores, 1 CPU per error task, one target node timing latency."""
    from bort.families import BERT_LARGE, count_params, flops
    from optimize.grid import bort_grid

    steps_flops = [train_flops[a] for a in measured["archs"]]
    a, b = fit(steps_flops, measured["per_candidate_s"])
    la, lb = fit([lat_params[x["arch"]] for x in latency], [x["seconds"] for x in latency])
    grid = bort_grid()
    error_costs = [a + b * flops(g, 64, 16) for g in grid]
    latency_s = sum(la + lb * count_params(g)["net"] for g in grid) + la + lb * count_params(BERT_LARGE)["net"]
    per_task = ray["noop_in_flight_ms_per_task"] / 1000  # scheduling and the result's way back
    setup = float(np.mean(ray["setup_per_worker_s"])) if ray["setup_per_worker_s"] else 0.0  # once per worker
    rows = []
    for n in NODES:
        slots = n * cores
        error_wall = setup + makespan([c + per_task for c in error_costs], slots)
        total = ray["start_s"] + latency_s + error_wall + ray["put_inputs_s"]
        rows.append({"nodes": n, "slots": slots, "error_phase_s": round(error_wall), "latency_phase_s": round(latency_s),
                     "total_s": round(total), "total_h": round(total / 3600, 2),
                     "cpu_hours": round(sum(error_costs) / 3600 + latency_s * cores / 3600, 2)})
    return {"grid": len(grid), "error_fit": {"a_s": round(a, 3), "s_per_gflop": round(b * 1e9, 4)},
            "latency_fit": {"a_s": round(la, 3), "s_per_mparam": round(lb * 1e6, 4)},
            "error_cpu_s": round(sum(error_costs)), "latency_s": round(latency_s), "cores_per_node": cores,
            "per_task_overhead_s": round(per_task, 4), "worker_setup_s": round(setup, 2),
            "rows": rows}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from bort.artifacts import cpu_info, library_versions
    from bort.cluster import RayExecutor, connected
    from bort.families import flops
    from optimize.cluster import portable
    from optimize.executor import InlineExecutor, make_executor
    from optimize.grid import spread_subset

    cfg, source, grid, error_fn = inputs(args.profile)
    archs = sorted(spread_subset(grid, args.candidates), key=lambda x: flops(x, 64))
    cores = len(os.sched_getaffinity(0))
    from importlib.metadata import version

    out: dict[str, Any] = {"cpu": cpu_info(), "libraries": {**library_versions(), "ray": version("ray")},
                           "source": cfg.source.model,
                           "archs": [x.label() for x in archs], "error_steps": error_fn.steps, "runs": {}}
    torch.set_num_threads(cores)
    out["runs"]["inline"] = sweep("inline", InlineExecutor(), Timed(error_fn), archs, 1)
    pool = make_executor(cores, "process")
    try:
        out["runs"]["process"] = sweep("process", pool, Timed(error_fn, threads=1), archs, cores)
    finally:
        pool.shutdown()
    started = time.perf_counter()
    with connected(args.ray_address, "bench") as ray:
        start_s = args.ray_start_s + time.perf_counter() - started
        executor = RayExecutor(ray, num_cpus=1.0)
        shipped = Timed(portable(error_fn, 1.0), threads=1)
        figures = ray_figures(ray, executor, shipped, args.noop)
        out["runs"]["ray"] = {**sweep("ray", executor, shipped, archs, executor.slots), **figures,
                              "start_s": round(start_s, 2)}
    out["latency"] = latency_costs(source, archs[:: max(1, len(archs) // 3)][:3], cfg.optimize.num_threads)
    from bort.families import count_params

    params = {x.label(): count_params(x)["net"] for x in archs}
    train_flops = {x.label(): flops(x, 64, 16) for x in archs}
    measured = {"archs": [x.label() for x in archs], "per_candidate_s": out["runs"]["process"]["per_candidate_s"]}
    out["plan"] = plan(measured, train_flops, out["latency"], params, out["runs"]["ray"], cores)
    return out


def markdown(r: dict[str, Any]) -> str:
    cpu = r["cpu"]
    lines = ["# The search's error phase: inline, process pool, local Ray; the paper grid on N nodes", "",
             f"CPU: {cpu['model']} ({cpu['usable_cores']} usable cores; ISA {', '.join(cpu['isa'])}); ray "
             f"{r['libraries'].get('ray', '?')}, torch {r['libraries'].get('torch', '?')}. Source {r['source']}; "
             f"{len(r['archs'])} candidates ({', '.join(r['archs'])}), {r['error_steps']} distillation steps each. "
             f"Load average (1/5/15 min) {'/'.join(str(x) for x in r['load_average']['before'])} before, "
             f"{'/'.join(str(x) for x in r['load_average']['after'])} after: the cores are shared with other jobs.", "",
             "| executor | slots | wall (s) | compute in tasks (s) | beyond compute per task (s) | first result (s) "
             "| processes: loads of the inputs (s) |", "|---|---|---|---|---|---|---|"]
    for name, run in r["runs"].items():
        lines.append(f"| {name} | {run['slots']} | {run['wall_s']} | {run['compute_s']} | "
                     f"{run['beyond_compute_per_task_s']} | {run['first_result_s']} | "
                     f"{run['processes']}: {', '.join(str(x) for x in run['setup_per_worker_s'])} |")
    ray = r["runs"]["ray"]
    same = all(abs(x - y) <= 1e-6 * max(1.0, abs(y)) for x, y in zip(ray["errors"], r["runs"]["process"]["errors"],
                                                                   strict=True))
    lines += ["", f"Ray: the local instance started in {ray['start_s']} s; the inputs ({ray['payload_mb']} MB: the "
              f"source's weights and the teacher cache) went into the object store in {ray['put_inputs_s']} s, once; "
              f"a no-op task's round trip is {ray['noop_round_trip_ms']} ms one at a time and "
              f"{ray['noop_in_flight_ms_per_task']} ms per task with many in flight. ê on Ray "
              f"{'equals' if same else 'differs from'} the process pool's (both 1 thread per task).", "",
              "Wall beyond compute per task = (wall − compute / slots) / tasks: what scheduling, start-up, shipping, "
              "each worker's first load of the inputs and waiting cost per candidate. On 2 cores the pool and Ray run "
              "2 one-thread estimates at once; inline runs one with 2 threads. Per-candidate compute: " +
              "; ".join(f"{name} " + ", ".join(f"{x:.1f}" for x in run["per_candidate_s"]) + " s"
                        for name, run in r["runs"].items()) + ".", "",
              "Latency timing on the target, per shape (export + sessions + runs, paired): " +
              ", ".join(f"{x['arch']} {x['seconds']} s" for x in r["latency"]) + ".", ""]
    p = r["plan"]
    lines += [f"## The paper's {p['grid']}-candidate grid on N nodes of {p['cores_per_node']} cores", "",
              f"ê cost per candidate ≈ {p['error_fit']['a_s']} s + {p['error_fit']['s_per_gflop']} s per GFLOP of one "
              f"training step's forward pass (fit on the measured shapes at 1 thread; the grid's shapes, up to "
              f"24 layers × 1024 hidden, are an extrapolation): {p['error_cpu_s'] / 3600:.1f} CPU-hours in all. "
              f"Latency ≈ {p['latency_fit']['a_s']} s + {p['latency_fit']['s_per_mparam']} s per M parameters per "
              f"shape, serial on the one target node: {p['latency_s'] / 60:.0f} min (`optimize.max_measured` "
              f"times a spread subset instead). Each task pays Ray's scheduling ({1000 * p['per_task_overhead_s']:.1f} "
              f"ms, the no-op's in flight), each worker one load of the inputs ({p['worker_setup_s']} s); the plan "
              "adds the cluster's start and one put of the inputs (not the transfer to each node: about the payload "
              "above per node, at the cluster's bandwidth).", "",
              "| nodes | error slots | error phase | latency phase (target) | total | CPU-hours |", "|---|---|---|---|---|---|"]
    for row in p["rows"]:
        lines.append(f"| {row['nodes']} | {row['slots']} | {row['error_phase_s'] / 60:.0f} min | "
                     f"{row['latency_phase_s'] / 60:.0f} min | {row['total_h']} h | {row['cpu_hours']} |")
    lines += ["", "Past a few nodes the serial latency phase on the one serving node dominates: time a spread subset "
              "(`optimize.max_measured`) and let the monotone model predict the rest. Nodes with more cores divide "
              "the error phase further (slots = cores / `optimize.ray_cpus_per_task`); the latency phase does not "
              "change, it is timed on the serving hardware, one shape at a time.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--candidates", type=int, default=6)
    p.add_argument("--noop", type=int, default=100, help="no-op tasks timed for Ray's round trip")
    p.add_argument("--profile", default="default")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--ray-address", default="", help="a Ray cluster to use (default: one on loopback, made here)")
    p.add_argument("--ray-start-s", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not args.ray_address:
        return on_loopback(argv if argv is not None else sys.argv[1:])
    from bort.artifacts import atomic_write_json, atomic_write_text

    started, load_before = time.time(), os.getloadavg()
    result = run(args)
    result["seconds"] = round(time.time() - started, 1)
    result["load_average"] = {"before": [round(x, 2) for x in load_before],
                              "after": [round(x, 2) for x in os.getloadavg()]}  # 1, 5, 15 min
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "ray_overhead.json", result)
    atomic_write_text(out / "ray_overhead.md", markdown(result))
    print(markdown(result))
    print(f"({result['seconds'] / 60:.1f} min)")


def on_loopback(argv: list[str]) -> None:
    """This benchmark again, inside a network namespace holding a one-node Ray cluster on 127.0.0.1."""
    sys.path.insert(0, str(ROOT / "tests"))
    from ray_cluster import LoopbackCluster, missing_tools

    why = missing_tools()
    if why:
        raise SystemExit(f"error: the loopback Ray cluster {why}; or give --ray-address of a running cluster")
    cluster = LoopbackCluster(head_cpus=len(os.sched_getaffinity(0)), target_cpus=None)
    started = time.perf_counter()
    try:
        cluster.start()
        start_s = time.perf_counter() - started
        from bort.assets import cache_dir

        done = cluster.inside([sys.executable, __file__, *argv, "--ray-address", cluster.address,
                               "--ray-start-s", f"{start_s:.2f}"], timeout=1800, check=False,
                              env={"BORT_CACHE": str(cache_dir())})  # the namespace has no network: assets as here
        print(done.stdout[-6000:])
        if done.returncode:
            raise SystemExit(f"error: the benchmark failed inside the namespace:\n{done.stderr[-3000:]}")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
