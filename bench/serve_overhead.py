"""What the HTTP service adds to the model: served p50 against raw onnxruntime p50, batch 1.

For (a) a MiniLM-sized classifier (all-MiniLM-L6-v2's weights, random head), (b) the Bort shape
4/8/1024/768 and (c) a tiny 2/3/33/37 model whose compute is negligible, so that served - raw is
the server's own cost with little CPU contention in the way (b and c: random weights, **speed
only**), and with ``--run-dir`` (d) the optimised and baseline models a `bort run` exported (real
weights: on the embedded default, the extracted student and the fine-tuned MiniLM-L6); fp32 and
dynamic int8, at exactly 128 tokens:

- ``raw``: ``session.run`` on fixed token ids, in this process (what `bort export` records);
- ``predict``: the whole in-process path (tokenise, run, softmax, label map);
- ``served``: one keep-alive HTTP client, closed loop, against `bort serve`'s service on
  127.0.0.1 (same threads), one text that truncates to 128 tokens. The client is a bare socket by
  default (``--client http.client`` for the standard library's): client and server share the two
  cores here, and the client's own header parsing is not what the server adds.

With ``--task-texts`` the run's models are measured a second time on its task's test texts (on the
embedded default, Rotten Tomatoes snippets of ~30 tokens), one per request at its own length: the
traffic those models serve, where the model costs far less than at 128 tokens.

Each answer's ``Server-Timing`` header gives the server's own tokenise, model and route times, so
the time *around the model* is also taken request by request (client time minus the model call),
free of the model's run-to-run variation, and split into tokenising, the rest of the route and
what lies outside it (sockets, uvicorn, BentoML's middleware, the client).

Rounds interleave raw and served measurements, so background load hits both alike. Variants of
the service show where the overhead goes (batching forced on, ORT threads not spinning, and a
``@bentoml.api`` service for comparison). Memory: RSS summed over the server's processes, idle
and peak under 8 concurrent clients. Goals (issue 6): served p50 - raw p50 <= 1.5 ms;
served / raw <= 1.3 for the Bort shape.

Run: ``python bench/serve_overhead.py [--quick]``; writes bench/results/serve_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import re
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# As the service runs: tokenizers' thread pool costs ~3 ms on one text with 2 busy cores.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(ROOT / "bench"))

from serve_stacks import framework_overhead  # noqa: E402  (this folder)

from bort import config  # noqa: E402
from bort.artifacts import atomic_write_json, atomic_write_text, cpu_info, library_versions, read_manifest  # noqa: E402
from bort.errors import ArtifactError  # noqa: E402
from runtime import recipe  # noqa: E402
from serve.predictor import Predictor  # noqa: E402
from serve.server import ServerProcess  # noqa: E402

log = logging.getLogger("bench.serve_overhead")
RESULTS = ROOT / "bench" / "results"
SEQ_LEN, THREADS = 128, 2
# 142 tokens (669 characters): a realistic long review, truncated to exactly 128 tokens.
TEXT = " ".join(["the film was a quiet, patient study of grief and it rarely hurried"] * 10)
VARIANTS = {  # name -> (serve overrides, extra environment)
    "default": ([], {}),
    "batching_always": (["serve.batching=always"], {}),
    "no_spin": (["serve.ort_spin=false"], {}),
    "spin_stop": (["serve.ort_spin_stop=true"], {}),
    "batching_never": (["serve.batching=never"], {}),
    "no_inline": (["serve.inline_max_texts=0"], {}),
}


def build_models(work: Path, which: list[str]) -> dict[str, Path]:
    """Export each model to ``work/<model>/{fp32,int8}`` (cached between runs in ``work``)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from bort import assets
    from bort import families as F

    minilm = assets.model_dir("minilm")
    tokenizer = F.load_tokenizer(minilm)
    target, _ = recipe.quantization_target()
    out = {}
    for name in which:
        root = work / name
        out[name] = root
        if (root / "int8" / "serving.json").is_file():
            continue
        source = root / "source"
        labels = {0: "negative", 1: "positive"}
        torch.manual_seed(0)
        if name == "minilm":
            model = AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=2, id2label=labels)
        else:  # random weights, speed only: the Bort shape, or a tiny model whose compute is ~nothing
            arch = F.BORT if name == "bort" else F.Arch(2, 3, 33, 37)
            model = AutoModelForSequenceClassification.from_config(
                F.hf_config(arch, "bert", num_labels=2, id2label=labels))
        model.eval().save_pretrained(source, safe_serialization=True)
        tokenizer.save_pretrained(source)
        recipe.export_fp32(source, root / "fp32")
        recipe.quantize_int8(root / "fp32", root / "int8", target, optimized_graph=False)
        for precision in ("fp32", "int8"):
            recipe.write_serving(root / precision, labels=list(labels.values()), is_pair=False, precision=precision,
                            name=f"{name}:{precision}", max_seq_len=512)
    return out


def run_models(run_dir: Path) -> dict[str, Path]:
    """The exported roles of a `bort run` (``export/<role>/{fp32,int8}``): the embedded default's
    own models, real weights, when the run was made on it."""
    out = {}
    for role in ("optimized", "baseline"):
        folder = run_dir / "export" / role
        if not all((folder / p / "serving.json").is_file() for p in ("fp32", "int8")):
            raise SystemExit(f"{folder} has no fp32 and int8 export; run `bort export --run-dir {run_dir}` first")
        out[f"run-{role}"] = folder
    return out


def raw_ms(predictor: Predictor, feeds: list[dict], n: int) -> list[float]:
    """onnxruntime alone on pre-tokenised inputs, taken in turn."""
    return _timed(lambda i: predictor.logits(feeds[i % len(feeds)]), n)


def _timed(call, n: int) -> list[float]:
    """Milliseconds of ``call(i)`` for i in 0..n-1."""
    times = []
    for i in range(n):
        start = time.perf_counter()
        call(i)
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def task_texts(run_dir: Path, count: int) -> tuple[str, list[str] | list[tuple[str, str]]]:
    """The first ``count`` test inputs of the run's task (texts, or pairs for a pair task): the
    traffic its models serve, each at its own length. From the splits the run stored; a run folder
    holding only an export gets the embedded default task's (the default profile's seeded split)."""
    from bort.data import load_prepared, load_task

    task = load_prepared(run_dir) if (run_dir / "data").is_dir() else load_task(config.resolve([], []))
    examples = task.test[:count]
    if task.is_pair:
        return task.name, [(e.text, e.text_pair or "") for e in examples]
    return task.name, [e.text for e in examples]


def served_limits(run_dir: Path) -> tuple[int, int]:
    """The token cap and character limit of the run's service (``serve.max_seq_len`` and
    ``serve.max_chars``: 256 tokens of up to 30,000 characters for long texts)."""
    try:
        serve = read_manifest(run_dir, "export", verify=False).config["serve"]
    except ArtifactError:  # a folder holding only an export: the service's defaults
        serve = config.resolve([], []).serve.model_dump()
    return int(serve["max_seq_len"]), int(serve["max_chars"])


def _feeds_body(predictor: Predictor, item: str | tuple[str, str]) -> tuple[dict, bytes, Any]:
    """For one request's input: onnxruntime feeds, the JSON body, and a call of the whole in-process path."""
    if isinstance(item, tuple):
        return (predictor.tokenize([], pairs=[item]).feeds, json.dumps({"pairs": [list(item)]}).encode(),
                lambda: predictor.predict(pairs=[item]))
    return (predictor.tokenize([item]).feeds, json.dumps({"texts": [item]}).encode(),
            lambda: predictor.predict(texts=[item]))


class HttpClient:
    """The standard library's keep-alive client (``http.client``): what a plain Python caller pays.
    Sends ``bodies`` in turn, one per call."""

    def __init__(self, host: str, port: int, bodies: list[bytes]) -> None:
        self.conn, self.bodies, self.sent = http.client.HTTPConnection(host, port, timeout=30), bodies, 0

    def call(self) -> bytes:
        body = self.bodies[self.sent % len(self.bodies)]
        self.sent += 1
        self.conn.request("POST", "/classify", body, {"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"server answered {resp.status}: {data[:200]!r}")
        self.timing = resp.getheader("Server-Timing") or ""
        return data

    def close(self) -> None:
        self.conn.close()


class SocketClient:
    """A keep-alive HTTP/1.1 client on a bare socket: one request built once, the answer read by its
    Content-Length. It spends less of the shared CPU than ``http.client`` (which parses headers in
    Python), so served - raw comes closer to what the server itself adds. Sends ``bodies`` in turn."""

    def __init__(self, host: str, port: int, bodies: list[bytes]) -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = (f"POST /classify HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                "Content-Length: {}\r\n\r\n")
        self.requests = [head.format(len(body)).encode() + body for body in bodies]
        self.sent, self.pending, self.timing = 0, b"", ""

    def call(self) -> bytes:
        self.sock.sendall(self.requests[self.sent % len(self.requests)])
        self.sent += 1
        data = self.pending
        while b"\r\n\r\n" not in data:
            data += self._recv()
        head, _, rest = data.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        if length is None:
            raise RuntimeError(f"no Content-Length in the answer: {head[:200]!r}")
        size = int(length.group(1))
        while len(rest) < size:
            rest += self._recv()
        self.pending = rest[size:]
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"server answered {head[:40]!r}: {rest[:200]!r}")
        timing = re.search(rb"(?im)^server-timing:(.*)$", head)
        self.timing = timing.group(1).decode() if timing else ""
        return rest[:size]

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise RuntimeError("the server closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


CLIENTS = {"socket": SocketClient, "http.client": HttpClient}


TIMING_PARTS = ("tokenize", "model", "app")


def served_ms(client: Any, n: int) -> tuple[list[float], dict[str, list[float]]]:
    """End-to-end milliseconds of ``n`` requests, and for each the milliseconds the server
    reported in its ``Server-Timing`` header (tokenise, model call, the whole route)."""
    times, parts = [], {name: [] for name in TIMING_PARTS}
    for _ in range(n):
        start = time.perf_counter()
        client.call()
        times.append((time.perf_counter() - start) * 1000.0)
        found = dict(re.findall(r"([a-z]+);dur=([0-9.]+)", client.timing))
        if set(found) != set(TIMING_PARTS):
            raise RuntimeError(f"expected {', '.join(TIMING_PARTS)} in the Server-Timing header, got {client.timing!r}")
        for name in TIMING_PARTS:
            parts[name].append(float(found[name]))
    return times, parts


GAPS_MS = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)


def code_after_gap(folder: Path, rounds: int = 8, n: int = 20) -> list[dict]:
    """ms of one ``tokenize`` of the bench text, right after the previous one or after a gap.

    The gap is a sleep, or a Python busy-wait on the same core that touches almost no memory. A
    raw onnxruntime loop runs its code back to back; in a server, each request's code runs once per
    model call, so after a gap as long as the model's latency."""
    predictor = Predictor(folder, num_threads=THREADS, max_seq_len=SEQ_LEN)

    def busy(ms: float) -> None:
        end = time.perf_counter() + ms / 1000.0
        while time.perf_counter() < end:
            pass

    def tokenize_ms() -> float:
        start = time.perf_counter()
        predictor.tokenize([TEXT])
        return (time.perf_counter() - start) * 1000.0

    times: dict[tuple[str, float], list[float]] = {(kind, gap): [] for gap in GAPS_MS for kind in ("sleep", "busy")}
    for _ in range(rounds):  # interleaved, so drift hits every gap alike
        for (kind, gap), out in times.items():
            for _ in range(n):
                if gap:
                    time.sleep(gap / 1000.0) if kind == "sleep" else busy(gap)
                out.append(tokenize_ms())
    return [{"gap_ms": gap, "after_sleep_ms": round(float(np.median(times[("sleep", gap)])), 3),
             "after_busy_wait_ms": round(float(np.median(times[("busy", gap)])), 3)} for gap in GAPS_MS]


def rss_mb(pids: set[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return round(total / 1024, 1)


def load_phase(server: ServerProcess, bodies: list[bytes], users: int, seconds: float, client_cls: Any) -> dict:
    """`users` closed-loop clients for `seconds`; peak RSS sampled every 50 ms."""
    stop, counts, peak = time.monotonic() + seconds, [0] * users, [0.0]
    pids = server.pids()

    def user(i: int) -> None:
        client = client_cls(server.host, server.port, bodies)
        while time.monotonic() < stop:
            client.call()
            counts[i] += 1
        client.close()

    threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak[0] = max(peak[0], rss_mb(pids))
        time.sleep(0.05)
    return {"users": users, "requests_per_s": round(sum(counts) / seconds, 1), "peak_rss_mb": peak[0]}


def measure_model(name: str, folder: Path, variants: list[str], rounds: int, n: int,
                  client_cls: Any = SocketClient, inputs: list | None = None, input_name: str = "",
                  seq_len: int = SEQ_LEN, max_chars: int = 0) -> list[dict]:
    """Interleaved raw / predict / served rounds for each precision and service variant.

    ``inputs``: texts (or pairs), one per request, in turn (raw, predict and served see the same
    sequence, and with ``n`` of them every round sends each once), each cut to ``seq_len`` tokens as
    the service cuts it (``max_chars``: the service's character limit, 0 for its default); by
    default the one text that fills 128 tokens."""
    rows = []
    fixed = inputs is None
    inputs = [TEXT] if fixed else inputs
    assert not fixed or seq_len == SEQ_LEN, seq_len
    for precision in ("fp32", "int8"):
        path = folder / precision
        for variant in variants:
            overrides, env = VARIANTS[variant]
            cfg = config.resolve([], ["serve.port=0", f"serve.num_threads={THREADS}",
                                      f"serve.max_seq_len={seq_len}",
                                      *([f"serve.max_chars={max_chars}"] if max_chars else []), *overrides])
            # The in-process baseline uses the same onnxruntime settings as the server.
            predictor = Predictor(path, num_threads=THREADS, max_seq_len=seq_len, spin=cfg.serve.ort_spin,
                                  spin_stop=cfg.serve.ort_spin_stop)
            feeds, bodies, calls = zip(*(_feeds_body(predictor, item) for item in inputs), strict=True)
            lengths = [int(f["input_ids"].shape[1]) for f in feeds]
            assert not fixed or lengths == [SEQ_LEN], lengths
            label = (f"{SEQ_LEN} tokens" if fixed else
                     f"{input_name}, median {int(np.median(lengths))} tokens (cut at {seq_len})")
            log_path = Path(tempfile.gettempdir()) / f"bort-bench-{name}-{precision}-{variant}.log"
            with ServerProcess(path, cfg.serve, log_path=log_path, env=env) as server:
                raw_ms(predictor, feeds, 20)
                raw, pred, served, paired = [], [], [], []
                in_server: dict[str, list[float]] = {name: [] for name in TIMING_PARTS}
                for _ in range(rounds):
                    raw_round = raw_ms(predictor, feeds, n)
                    pred += _timed(lambda i, c=calls: c[i % len(c)](), n)
                    # A fresh keep-alive connection per round: the server closes idle ones after 5 s.
                    client = client_cls(server.host, server.port, bodies)
                    served_ms(client, 5)
                    served_round, parts_round = served_ms(client, n)
                    client.close()
                    raw += raw_round
                    served += served_round
                    for part, values in parts_round.items():
                        in_server[part] += values
                    # Paired per round: the machine's speed drifts between rounds, much less within one.
                    paired.append(float(np.percentile(served_round, 50) - np.percentile(raw_round, 50)))
                idle = rss_mb(server.pids())
                load = load_phase(server, bodies, users=8, seconds=4.0, client_cls=client_cls)
            rows.append(summarise(name, precision, variant, raw, pred, served, idle, load, server.ready_s, paired,
                                  in_server, label))
            log.info("%s", rows[-1])
    return rows


def summarise(name, precision, variant, raw, pred, served, idle, load, ready_s, paired, in_server,
              input_label: str = f"{SEQ_LEN} tokens") -> dict:
    p = {k: float(np.percentile(v, 50)) for k, v in (("raw", raw), ("predict", pred), ("served", served))}
    e2e, part = np.asarray(served), {k: np.asarray(v) for k, v in in_server.items()}
    # Per request: everything but onnxruntime's call, then that split where the server saw it.
    around = {"around_model": e2e - part["model"], "tokenize": part["tokenize"],
              "route_other": part["app"] - part["model"] - part["tokenize"], "outside_route": e2e - part["app"]}
    return {
        "in_server_model_p50_ms": round(float(np.percentile(part["model"], 50)), 3),
        **{f"{k}_p50_ms": round(float(np.percentile(v, 50)), 3) for k, v in around.items()},
        "overhead_paired_ms": round(float(np.median(paired)), 3),
        "overhead_paired_range_ms": [round(min(paired), 3), round(max(paired), 3)],
        "model": name, "input": input_label, "precision": precision, "variant": variant,
        "raw_p50_ms": round(p["raw"], 3), "predict_p50_ms": round(p["predict"], 3),
        "served_p50_ms": round(p["served"], 3), "served_p90_ms": round(float(np.percentile(served, 90)), 3),
        "overhead_ms": round(p["served"] - p["raw"], 3), "http_overhead_ms": round(p["served"] - p["predict"], 3),
        "served_over_raw": round(p["served"] / p["raw"], 3), "requests": len(served),
        "idle_rss_mb": idle, "load": load, "start_to_ready_s": round(ready_s, 2),
    }


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Served vs raw onnxruntime latency (batch 1)", "",
        f"CPU: {meta['cpu']['model']} ({meta['cpu']['usable_cores']} usable cores), threads {THREADS}, "
        f"one keep-alive HTTP client ({meta['client']}) on 127.0.0.1; {meta['rounds']} interleaved "
        f"rounds x {meta['n']} requests. "
        "Bort shape: random weights, **speed only**. Other processes share this machine: read the ratios.", "",
        f"Inputs: *{SEQ_LEN} tokens* is one 669-character review cut to exactly {SEQ_LEN} tokens, the most a "
        "request brings at the default `serve.max_seq_len`; *test texts* are a run's first test inputs, one "
        "per request at its own length, the traffic its models serve.", "",
        "| model | input | precision | service | raw p50 | in-process predict p50 | served p50 (p90) | "
        "added by server, paired (range over rounds) | model in server p50 | around the model, per request p50 | "
        "served/raw | RSS idle / peak (8 users) | req/s (8 users) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        added = r["overhead_paired_ms"]
        low, high = r["overhead_paired_range_ms"]
        goal = " ✓" if added <= 1.5 else " ✗"
        lines.append(
            f"| {r['model']} | {r['input']} | {r['precision']} | {r['variant']} | {r['raw_p50_ms']:.2f} | "
            f"{r['predict_p50_ms']:.2f} | "
            f"{r['served_p50_ms']:.2f} ({r['served_p90_ms']:.2f}) | {added:.2f}{goal} ({low:.2f} to {high:.2f}) | "
            f"{r['in_server_model_p50_ms']:.2f} | {r['around_model_p50_ms']:.2f}"
            f"{' ✓' if r['around_model_p50_ms'] <= 1.5 else ' ✗'} | "
            f"{r['served_over_raw']:.2f}{(' ✓' if r['served_over_raw'] <= 1.3 else ' ✗') if r['model'] == 'bort' else ''} | {r['idle_rss_mb']:.0f} / {r['load']['peak_rss_mb']:.0f} MB | "
            f"{r['load']['requests_per_s']:.0f} |")
    lines += ["", "Times in ms. *added by server* = the median over rounds of (served p50 - raw p50) within "
              "each round (goal <= 1.5 ms): the machine's speed drifts between rounds, so differences are taken "
              "where both sides saw the same conditions. It includes tokenisation, which *in-process predict* "
              "shows alone. *model in server* is onnxruntime's call inside the server, from its `Server-Timing` "
              "header; *around the model* is, request by request, the client's time minus that call: tokenising, "
              "HTTP, queueing and the client, with the model's own run-to-run variation taken out, so it stays "
              "put where the paired difference swings with a heavy model's variance. "
              "Goal for the Bort shape: served/raw <= 1.3."]
    lines += ["", "## Around the model, request by request (p50, ms)", "",
              "| model | input | precision | service | around the model | tokenise | rest of the route (validation, "
              "queue, JSON) | outside the route (sockets, uvicorn, BentoML, client) |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['input']} | {r['precision']} | {r['variant']} | {r['around_model_p50_ms']:.2f} | "
              f"{r['tokenize_p50_ms']:.2f} | {r['route_other_p50_ms']:.2f} | {r['outside_route_p50_ms']:.2f} |"
              for r in rows]
    lines += ["", "From each answer's `Server-Timing` header; medians of each part, so they need not add up."]
    if meta.get("gap"):
        lines += ["", "## The same code, slower after a gap", "",
                  "One `tokenize` of the bench text, in-process, right after the previous one or after a gap "
                  "(a sleep, or a Python busy-wait that touches almost no memory):", "",
                  "| gap (ms) | after a sleep | after a busy-wait |", "|---|---|---|"]
        lines += [f"| {g['gap_ms']:g} | {g['after_sleep_ms']:.3f} | {g['after_busy_wait_ms']:.3f} |" for g in meta["gap"]]
        lines += ["", "*raw* runs its code back to back; in the server, each request's code runs once per model "
                  "call, after a gap as long as the model's latency. The slowdown does not depend on what fills "
                  "the gap, so it comes from the machine (most likely its caches, shared with other guests on this "
                  "host, losing our data over time), not from the model or the server: the server's code around "
                  "a slow model pays it, around a fast one barely."]
    if meta.get("framework"):
        lines += ["", "## Where the overhead goes: one request through each web stack in-process, no model", "",
                  "| stack | p50 ms per request |", "|---|---|"]
        lines += [f"| {name} | {ms:.3f} |" for name, ms in meta["framework"].items()]
        lines += ["", "Sockets, HTTP parsing (uvicorn with httptools and uvloop; the h11_asyncio rows hide them) and "
                  "the client are not in these figures; *added by server* above minus *in-process predict - raw* "
                  "is their share."]
    return "\n".join(lines) + "\n"


def without_fast_io(work: Path) -> Path:
    """A folder whose ``httptools`` and ``uvloop`` fail to import: first on PYTHONPATH, it makes
    uvicorn fall back to h11 and asyncio (what the service ran on before they were pinned)."""
    folder = work / "no_fast_io"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("httptools", "uvloop"):
        (folder / f"{name}.py").write_text(f"raise ImportError('{name} hidden by bench/serve_overhead.py')\n")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests, default variant only")
    parser.add_argument("--models", default="tiny,minilm,bort",
                        help="comma list: tiny (2/3/33/37: the server's own cost), minilm, bort")
    parser.add_argument("--variants", default=None, help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--requests", type=int, default=None, help="requests per round")
    parser.add_argument("--work", default=str(ROOT / ".cache" / "bench-serve"), help="exported models cache")
    parser.add_argument("--tag", default="", help="write serve_overhead-TAG.{json,md} (keeps other runs' results)")
    parser.add_argument("--client", choices=sorted(CLIENTS), default="socket",
                        help="HTTP client: a bare keep-alive socket (default) or the standard library's http.client")
    parser.add_argument("--run-dir", default="",
                        help="also measure the optimised and baseline models `bort export` wrote in this run folder")
    parser.add_argument("--no-framework", action="store_true", help="skip the in-process web-stack comparison")
    parser.add_argument("--no-gap", action="store_true", help="skip the in-process code-after-a-gap measurement")
    parser.add_argument("--task-texts", action="store_true",
                        help="with --run-dir: also measure the run's models on its task's test texts, one per "
                             "request at its own length (the traffic they serve)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    rounds = args.rounds or (2 if args.quick else 8)
    n = args.requests or (50 if args.quick else 75)
    VARIANTS["h11_asyncio"] = ([], {"PYTHONPATH": os.pathsep.join([str(without_fast_io(Path(args.work))), str(ROOT)])})
    variants = (args.variants or ("default" if args.quick else ",".join(VARIANTS))).split(",")
    models = build_models(Path(args.work), [m for m in args.models.split(",") if m])
    if args.run_dir:
        models.update(run_models(Path(args.run_dir)))
    framework = {} if args.no_framework else framework_overhead(next(iter(models.values())) / "int8", n=4 * n,
                                                                rounds=2)
    log.info("framework overhead: %s", framework)
    gap = [] if args.no_gap else code_after_gap(next(iter(models.values())) / "int8")
    log.info("code after a gap: %s", gap)
    rows = [row for name, folder in models.items()
            for row in measure_model(name, folder, variants, rounds, n, CLIENTS[args.client])]
    if args.task_texts:
        if not args.run_dir:
            raise SystemExit("--task-texts measures a run's models: give --run-dir too")
        task, inputs = task_texts(Path(args.run_dir), n)
        cut = served_limits(Path(args.run_dir))
        rows += [row for name, folder in run_models(Path(args.run_dir)).items()
                 for row in measure_model(name, folder, variants, rounds, n, CLIENTS[args.client], inputs,
                                          f"{task} test texts", *cut)]
    meta = {"cpu": cpu_info(), "versions": library_versions(), "seq_len": SEQ_LEN, "threads": THREADS,
            "rounds": rounds, "n": n, "client": args.client, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "load_average": os.getloadavg(), "framework": framework, "gap": gap}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"serve_overhead-{args.tag}" if args.tag else "serve_overhead"
    atomic_write_json(RESULTS / f"{stem}.json", {"meta": meta, "rows": rows})
    atomic_write_text(RESULTS / f"{stem}.md", markdown(rows, meta))
    print(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
