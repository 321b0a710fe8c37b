"""Soak benchmark: the deployed student at saturation for a long time; does memory hold, does nothing fail?

``bort serve``'s service (BentoML + ONNX Runtime, the profile's ``serve`` settings) runs on
127.0.0.1 with the model ``bort export`` deployed in ``--run-dir`` (or any ``--model-dir``), and
``--users`` closed-loop clients (keep-alive, httpx) send the run's test texts back to back, enough
to keep the model busy all the time. Every second the resident memory (RSS) of the server's
processes (BentoML's arbiter and worker: the whole process group) is sampled.

Pass when: memory at the end (mean of the last ``--window-s`` seconds) is within ``--max-growth``
(10%) of memory right after the warm-up (mean of the first ``--window-s`` seconds after it), and no
request failed other than with a 503 (shed under overload, with ``Retry-After``: a client's cue to
come back, not a failure). Anything else (another status, a wrong number of results, a
connection error, a timeout) is a failure. Writes ``<out>/soak.{json,md}`` and exits 1 on a fail.

Run (10 minutes at saturation; best on a quiet machine, the clients share its CPU)::

    HF_HUB_OFFLINE=1 BENTOML_DO_NOT_TRACK=true BORT_CACHE=.cache/bort \\
        .venv/bin/python bench/soak.py --run-dir runs/default --duration-s 600
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bort import config  # noqa: E402
from bort.artifacts import atomic_write_json, atomic_write_text, cpu_info  # noqa: E402
from serve.server import ServerProcess, deployed_folder  # noqa: E402

log = logging.getLogger("soak")
FALLBACK_TEXTS = ["a gripping, beautifully acted film", "dull and lifeless from start to finish",
                  "the best thing I have seen all year", "a tedious mess with no redeeming qualities"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--run-dir", help="a run with `bort export` done: serves its deployed model")
    where.add_argument("--model-dir", help="any folder `bort export` wrote")
    p.add_argument("--model", default="optimized", choices=["optimized", "baseline"])
    p.add_argument("--profile", default="default", help="config profile for the serve settings")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="override a setting, e.g. --set serve.max_queue=64")
    p.add_argument("--duration-s", type=float, default=600.0, help="measured seconds after the warm-up")
    # BentoML arms a 60 s timer per request (its traffic timeout) and never cancels it: memory
    # settles only once the first timers fire, so the warm-up outlasts them.
    p.add_argument("--warmup-s", type=float, default=75.0)
    p.add_argument("--users", type=int, default=16, help="closed-loop clients (enough to keep the model busy)")
    p.add_argument("--texts-per-request", type=int, default=1)
    p.add_argument("--window-s", type=float, default=10.0, help="memory is averaged over this many seconds")
    p.add_argument("--max-growth", type=float, default=0.10, help="allowed RSS growth, end over warm-up")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder for soak.{json,md}")
    return p.parse_args(argv)


def request_bodies(run_dir: str | None, per_request: int, is_pair: bool) -> list[bytes]:
    """JSON bodies from the run's test split (pairs for a pair model); fixed reviews without a run."""
    items: list[Any] = []
    if run_dir:
        from bort.data import load_prepared

        task = load_prepared(run_dir)
        items = [[e.text, e.text_pair] if is_pair else e.text for e in task.test]
    if not items:
        items = [[t, t] for t in FALLBACK_TEXTS] if is_pair else list(FALLBACK_TEXTS)
    field = "pairs" if is_pair else "texts"
    return [json.dumps({field: [items[(i + j) % len(items)] for j in range(per_request)]}).encode()
            for i in range(0, len(items), per_request)]


class Tally:
    """What the clients saw: statuses, failures (with a few examples), latencies of the 200s."""

    def __init__(self) -> None:
        self.statuses: collections.Counter = collections.Counter()
        self.failures: collections.Counter = collections.Counter()
        self.examples: list[str] = []
        self.latencies_ms: list[float] = []

    def fail(self, kind: str, detail: str) -> None:
        self.failures[kind] += 1
        if len(self.examples) < 10:
            self.examples.append(f"{kind}: {detail[:300]}")


async def client(http: Any, bodies: list[bytes], start: int, texts: int, stop: float, measure_from: float,
                 tally: Tally) -> None:
    """One closed-loop user: the next request as soon as the last one is answered."""
    i = start
    while time.monotonic() < stop:
        body, i = bodies[i % len(bodies)], i + 1
        sent = time.monotonic()
        try:
            resp = await http.post("/classify", content=body, headers={"Content-Type": "application/json"})
        except Exception as e:  # noqa: BLE001 - every transport error is a failure to report
            if sent >= measure_from:
                tally.fail(type(e).__name__, str(e))
            continue
        if sent < measure_from:
            continue
        tally.statuses[resp.status_code] += 1
        if resp.status_code == 200:
            results = resp.json().get("results", [])
            if len(results) != texts:
                tally.fail("wrong result count", f"{len(results)} results for {texts} texts")
            tally.latencies_ms.append((time.monotonic() - sent) * 1000.0)
        elif resp.status_code == 503 and resp.headers.get("retry-after"):
            await asyncio.sleep(min(float(resp.headers["retry-after"]), 1.0))  # shed: back off, as asked
        else:
            tally.fail(f"HTTP {resp.status_code}", resp.text)


async def sample_rss(server: ServerProcess, stop: float, samples: list[tuple[float, float]]) -> None:
    """(monotonic time, MiB) of the server's whole process group, every second."""
    import psutil

    while time.monotonic() < stop:
        total = 0
        for pid in server.pids():
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.Error:
                pass
        samples.append((time.monotonic(), total / 2**20))
        await asyncio.sleep(1.0)


async def drive(server: ServerProcess, bodies: list[bytes], args: argparse.Namespace) -> tuple[Tally, list]:
    import httpx

    tally, samples = Tally(), []
    measure_from = time.monotonic() + args.warmup_s
    stop = measure_from + args.duration_s
    limits = httpx.Limits(max_connections=args.users, max_keepalive_connections=args.users)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60.0) as http:
        await asyncio.gather(sample_rss(server, stop, samples),
                             *(client(http, bodies, i * 7, args.texts_per_request, stop, measure_from, tally)
                               for i in range(args.users)))
    return tally, [(t - measure_from, mb) for t, mb in samples]


def percentile(values: list[float], q: float) -> float | None:
    return round(statistics.quantiles(values, n=100)[q - 1], 2) if len(values) >= 2 else None


def summarise(tally: Tally, samples: list[tuple[float, float]], args: argparse.Namespace, what: str) -> dict:
    after = [mb for t, mb in samples if 0 <= t < args.window_s]
    end = [mb for t, mb in samples if t >= args.duration_s - args.window_s]
    warm, last = (statistics.mean(after) if after else None), (statistics.mean(end) if end else None)
    growth = (last / warm - 1.0) if warm and last else None
    answered = sum(tally.statuses.values())
    failed = sum(tally.failures.values())
    return {
        "model": what, "duration_s": args.duration_s, "warmup_s": args.warmup_s, "users": args.users,
        "texts_per_request": args.texts_per_request, "requests": answered + failed,
        "requests_per_s": round(tally.statuses.get(200, 0) / args.duration_s, 2),
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "shed_503": tally.statuses.get(503, 0), "failures": failed, "failure_kinds": dict(tally.failures),
        "failure_examples": tally.examples,
        "latency_ms": {"p50": percentile(tally.latencies_ms, 50), "p95": percentile(tally.latencies_ms, 95),
                       "p99": percentile(tally.latencies_ms, 99)},
        "rss_mb": {"after_warmup": round(warm, 1) if warm else None, "end": round(last, 1) if last else None,
                   "peak": round(max(mb for _, mb in samples), 1) if samples else None,
                   "growth": round(growth, 4) if growth is not None else None, "max_growth": args.max_growth},
        "memory_ok": growth is not None and growth <= args.max_growth,
        "passed": failed == 0 and growth is not None and growth <= args.max_growth,
        "rss_samples_mb": [(round(t, 1), round(mb, 1)) for t, mb in samples],
        "cpu": cpu_info(), "command": " ".join(sys.argv),
        "load_average_end": [round(x, 2) for x in os.getloadavg()],  # 1, 5, 15 min: other jobs on the cores
    }


def markdown(s: dict) -> str:
    rss, lat = s["rss_mb"], s["latency_ms"]
    growth = f"{100 * rss['growth']:+.1f}%" if rss["growth"] is not None else "n/a"
    return "\n".join([
        f"# Soak: {s['model']}", "",
        f"**{'PASS' if s['passed'] else 'FAIL'}**: {s['duration_s']:.0f} s at saturation ({s['users']} closed-loop "
        f"users, {s['texts_per_request']} text(s) a request) after {s['warmup_s']:.0f} s of warm-up.", "",
        "| figure | value |", "|---|---|",
        f"| requests answered 200 | {s['statuses'].get('200', 0):,} ({s['requests_per_s']} /s) |",
        f"| shed with 503 (not failures) | {s['shed_503']:,} |",
        f"| failed requests | {s['failures']:,} {s['failure_kinds'] or ''} |",
        f"| latency p50 / p95 / p99, ms | {lat['p50']} / {lat['p95']} / {lat['p99']} |",
        f"| server RSS after warm-up / end / peak, MiB | {rss['after_warmup']} / {rss['end']} / {rss['peak']} |",
        f"| RSS growth, end over warm-up (limit {100 * rss['max_growth']:.0f}%) | {growth} |",
        f"| CPU | {s['cpu'].get('model')}, {s['cpu'].get('usable_cores')} usable cores |",
        f"| load average at the end (1 / 5 / 15 min) | {' / '.join(map(str, s.get('load_average_end', [])))} |", "",
        f"Command: `{s['command']}`", ""])


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    args = parse_args(argv)
    cfg = config.resolve([args.profile], [*args.overrides, "serve.port=0"])
    folder = Path(args.model_dir) if args.model_dir else deployed_folder(Path(args.run_dir), args.model)
    what = f"{args.model} model of {args.run_dir}" if args.run_dir else str(folder)
    serving = json.loads((folder / "serving.json").read_text(encoding="utf-8"))
    bodies = request_bodies(args.run_dir, args.texts_per_request, bool(serving.get("is_pair")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with ServerProcess(folder, cfg.serve, log_path=out / "soak.server.log") as server:
        log.info("soak: %s at %s, %d users, %.0f s warm-up + %.0f s", what, server.url, args.users,
                 args.warmup_s, args.duration_s)
        tally, samples = asyncio.run(drive(server, bodies, args))
    summary = summarise(tally, samples, args, what)
    atomic_write_json(out / "soak.json", summary)
    atomic_write_text(out / "soak.md", markdown(summary))
    print(markdown(summary))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
