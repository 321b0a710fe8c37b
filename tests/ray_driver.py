"""Drivers that run inside the loopback Ray cluster's namespace (tests/ray_cluster.py); each prints
one JSON line for tests/test_ray_cluster.py to check.

``search ADDRESS SOURCE WORK``: a small search whose error estimates are real distillation runs on
the tiny source (Ray tasks) and whose latencies come from a fake table "measured" by the actor on
the node offering ``bort_target``; one error worker and the latency actor are killed mid-call;
then the same search inline for comparison, and a rerun on the cluster that must measure nothing.

``thetas ADDRESS SOURCE``: one Agora round's Θ fine-tunes on the tiny model, inline and on Ray.

``locust ADDRESS WORK``: a Locust master here and two workers as Ray actors against a stand-in
service on 127.0.0.1.

Classes defined here travel to Ray's workers by value (this file runs as ``__main__``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from bort.families import Arch


def table_latency(a: Arch) -> float:
    return 0.3 + a.layers * (2e-6 * a.hidden ** 2 + 2e-6 * a.hidden * a.intermediate + 0.02 * a.heads)


def await_kill(folder: Path, name: str) -> None:
    """The first time: leave this process's pid for the watcher and wait to be killed."""
    if (folder / f"{name}.killed").exists():
        return
    (folder / f"{name}.pid").write_text(str(os.getpid()))
    time.sleep(120)
    raise RuntimeError(f"{name}: not killed within 120 s")


def watch_and_kill(folder: Path, names: list[str], stop: threading.Event) -> None:
    """Kill (SIGKILL) each process that leaves ``<name>.pid``; mark it ``<name>.killed`` first."""
    while not stop.is_set():
        for name in names:
            pid_file = folder / f"{name}.pid"
            if pid_file.exists() and not (folder / f"{name}.killed").exists():
                (folder / f"{name}.killed").write_text(pid_file.read_text())
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
        time.sleep(0.05)


class FakeMeter:
    """A latency 'meter' with a JSONL cache; logs every finished measurement with its node."""

    def __init__(self, folder: Path, victim: Arch | None):
        from bort.artifacts import hardware_fingerprint
        from optimize.latency import JsonlStore

        self.folder, self.victim = folder, victim
        self.cache = JsonlStore(folder / "latency.jsonl")
        self.hw, self.measured, self.settings = hardware_fingerprint(), 0, None

    def cached(self, arch: Arch) -> dict | None:
        return self.cache.get(arch.label())

    def __call__(self, arch: Arch) -> dict:
        from bort.cluster import node_id

        record = self.cached(arch)
        if record is not None:
            return record
        if arch == self.victim:
            await_kill(self.folder, "latency")
        v = table_latency(arch)
        record = {"key": arch.label(), "p50_ms": v, "p10_ms": 0.99 * v, "p90_ms": 1.01 * v, "pid": os.getpid()}
        self.cache.put(record)
        self.measured += 1
        with open(self.folder / "measurements.log", "a") as log:
            log.write(json.dumps({"arch": arch.label(), "node": node_id(), "hw": self.hw}) + "\n")
        return record


class FakeTarget:
    """The factory the latency actor runs on the target node."""

    def __init__(self, folder: Path, victim: Arch | None):
        self.folder, self.victim = folder, victim

    def __call__(self):
        meter = FakeMeter(self.folder, self.victim)
        return meter, meter, {"objective": "fake"}


class Killable:
    """An error function whose first call on `victim` waits to be killed; logs finished calls."""

    def __init__(self, inner, folder: Path, victim: Arch):
        self.inner, self.folder, self.victim = inner, folder, victim

    def __call__(self, arch: Arch) -> float:
        from bort.cluster import node_id

        if arch == self.victim:
            await_kill(self.folder, "error")
        value = self.inner(arch)
        with open(self.folder / "errors.log", "a") as log:
            log.write(json.dumps({"arch": arch.label(), "node": node_id(), "error": value}) + "\n")
        return value


def texts(n: int) -> list[str]:
    words = "the movie was good bad long short fine dull great plot actors story film".split()
    return [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(6 + i % 5)) for i in range(n)]


def search(address: str, source_dir: str, work: str) -> dict:
    import torch

    from bort import config as C
    from bort.cluster import RayExecutor, connected
    from bort.families import resolve_source
    from optimize.cluster import PortableError, TargetLatency
    from optimize.error import DistillError
    from optimize.executor import InlineExecutor
    from optimize.grid import source_grid
    from optimize.latency import JsonlStore
    from optimize.search import SearchOptions, run_search

    torch.set_num_threads(1)  # as each Ray task (1 CPU): the same arithmetic, the same ê
    work_dir = Path(work)
    cfg = C.resolve(["tiny"], [f"source.model={source_dir}", "optimize.error_steps=2"])
    source = resolve_source(source_dir)
    grid = source_grid(source.arch, (0.5, 1.0), (0.34, 1.0), (1.0,), (0.5, 1.0))
    distill = DistillError(cfg, source, (texts(64), texts(24)[::-1]), steps=2)
    victims = sorted(grid, key=lambda a: a.label())
    opts = SearchOptions(prune_factor=0.0, error_time_budget_s=0.0)
    common = {"family": source.family, "vocab": None, "source_arch": source.arch, "error_key": "k", "seq_len": 16}

    reference = run_search(grid, latency_fn=FakeMeter(work_dir / "inline", None), error_fn=distill,
                           store=JsonlStore(work_dir / "inline" / "errors.jsonl"), opts=opts,
                           executor=InlineExecutor(), **common)
    cluster = work_dir / "cluster"
    cluster.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    watcher = threading.Thread(target=watch_and_kill, args=(cluster, ["error", "latency"], stop), daemon=True)
    watcher.start()
    started = time.time()
    with connected(address, "optimize.executor") as ray:
        nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
        target = next(n for n, r in nodes.items() if r.get("bort_target"))
        runs = []
        for attempt in range(2):  # the second: a rerun of the same search on the same stores
            executor = RayExecutor(ray, num_cpus=1.0)
            latency = TargetLatency(ray, FakeTarget(cluster, victims[1]), "bort_target")
            error_fn = Killable(PortableError(distill, threads=1), cluster, victims[2])
            result = run_search(grid, latency_fn=latency, error_fn=error_fn,
                                store=JsonlStore(cluster / "errors.jsonl"),
                                opts=SearchOptions(prune_factor=0.0, error_time_budget_s=0.0,
                                                   workers=executor.slots), executor=executor, **common)
            latency.close()
            runs.append({"front": [p.label for p in result.fptas.front],
                         "errors": {c.arch.label(): c.error for c in result.candidates},
                         "latency_nodes": sorted({c.record.get("node_id") for c in result.candidates if c.measured}),
                         "seconds": round(time.time() - started, 1)})
            if attempt == 0:
                measured_first = _lines(cluster / "measurements.log")
                trained_first = _lines(cluster / "errors.log")
    stop.set()
    return {"target": target, "head": next(n for n in nodes if n != target), "grid": len(grid),
            "reference": {"front": [p.label for p in reference.fptas.front],
                          "errors": {c.arch.label(): c.error for c in reference.candidates}},
            "runs": runs, "killed": sorted(p.name for p in cluster.glob("*.killed")),
            "measured_first": measured_first, "trained_first": trained_first,
            "measured_all": _lines(cluster / "measurements.log"), "trained_all": _lines(cluster / "errors.log"),
            "stored": _lines(cluster / "errors.jsonl")}


def stage(address: str, source_dir: str, run_dir: str) -> dict:
    """`bort optimize` with optimize.executor=ray, twice (the second with other weights: stale, rerun)."""
    from bort import config as C
    from bort import data
    from optimize import stage as optimize

    base = [f"source.model={source_dir}", "optimize.executor=ray", f"optimize.ray_address={address}",
            "optimize.precision=fp32", "optimize.error_steps=2"]
    out = []
    for extra in ([], ["optimize.weights=[1,2,1]"]):
        cfg = C.resolve(["tiny"], base + extra)
        data.prepare(cfg, Path(run_dir))
        metrics = optimize.run(cfg, Path(run_dir)).metrics
        rows = json.loads((Path(run_dir) / "optimize" / "candidates.json").read_text())
        out.append({k: metrics.get(k) for k in ("new_latency_measurements", "hardware_fingerprint", "latency_cache",
                                                 "n_candidates", "chosen", "latency_ray_node")} |
                   {"errors": {r["label"]: r["error"] for r in rows}})
    from bort.cluster import connected

    with connected(address, "optimize.executor") as ray:
        target = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("bort_target"))
    return {"runs": out, "target": target}


def thetas(address: str, source_dir: str, work: str) -> dict:
    """Agora's loop on the tiny model (3 θ, 2 rounds, warm start): inline, then with finetune.executor=ray."""
    import torch
    from agora_fixtures import keyword_probs, tiny_task

    from agora import loop
    from agora.guard import Guard
    from agora.transform import GSettings, Neighbours, TextTransform, sentence_embedder
    from bort import config as C
    from bort import families as F

    torch.set_num_threads(1)  # finetune.num_threads=1, as `bort finetune` sets it
    thetas = '["lr=3e-4,wd=0.01,warmup=0.1", "lr=1e-4,wd=0.0,warmup=0.0", "lr=5e-4,wd=0.01,warmup=0.2,batch=8"]'
    base = ["finetune.seq_len=24", "finetune.batch_size=16", "finetune.epochs=1", "finetune.round_epochs=1",
            f"finetune.thetas={thetas}", "finetune.max_rounds=2", "finetune.points_per_mistake=2",
            "finetune.candidates_per_mistake=4", "finetune.similarity_band=[0.0, 0.9999]", "finetune.num_threads=1"]
    tokenizer = F.load_tokenizer(source_dir)
    encoder = F.load_encoder(source_dir, add_pooling_layer=False)
    neighbours = Neighbours(tokenizer, encoder.get_input_embeddings().weight.detach().numpy(), n=5)
    embed = sentence_embedder(encoder, tokenizer, seq_len=24)
    task = tiny_task()
    out = {}
    for name, extra in (("inline", []), ("ray", ["finetune.executor=ray", f"finetune.ray_address={address}"])):
        cfg = C.resolve(["tiny"], base + extra)
        f = cfg.finetune
        guard = Guard(task.test)
        g = TextTransform(neighbours, embed, GSettings(f.points_per_mistake, f.candidates_per_mistake,
                                                       f.similarity_band, f.edit_rate, f.seq_len), guard)
        inputs = loop.AgoraInputs(Path(source_dir), tokenizer, task.labels, task.train, task.dev, guard, g,
                                  keyword_probs)
        started = time.time()
        result = loop.run_agora(inputs, cfg, Path(work) / name, "fp")
        out[name] = {"rows": [{k: v for k, v in r.items() if k != "seconds"} for r in result.rows],
                     "points": [p.text for p in result.points], "seconds": round(time.time() - started, 1)}
    return out


def locust(address: str, work: str) -> dict:
    """One model, two user counts, load from a Locust master here and two workers as Ray actors."""
    from loadtest_support import standin_spec

    from bort.cluster import connected
    from loadtest.fleet import Fleet
    from loadtest.locust_run import Profile
    from loadtest.measure import ModelPlan, measure_model

    work_dir = Path(work)
    texts = work_dir / "texts.json"
    texts.write_text(json.dumps({"texts": ["a fine film", "dull, far too long", "wow"], "labels": ["fresh", "rotten"]}))
    profiles = [Profile(users=u, duration_s=2, warmup_s=1, grace_s=30) for u in (2, 4)]
    with connected(address, "loadtest.executor") as ray:
        plan = ModelPlan(role="standin", label="stand-in", spec=standin_spec())
        figures = measure_model(plan, profiles, texts, work_dir / "raw", fleet=Fleet(2, "ray", ray))
    return {"levels": figures["levels"], "target": plan.spec.url,
            "files": sorted(p.name for p in (work_dir / "raw").glob("*.csv"))}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def main() -> None:
    command, *args = sys.argv[1:]
    result = {"search": search, "stage": stage, "thetas": thetas, "locust": locust}[command](*args)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
