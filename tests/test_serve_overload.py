"""The service under overload, over real HTTP: one server process on 127.0.0.1, stopped by process group."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
import statistics
import sys
import time

import pytest
from conftest import ROOT
from http_burst import probe_healthz

from bort import config
from serve.server import ServerProcess, deployed_folder

BURST = ROOT / "tests" / "http_burst.py"
READ_TIMEOUT_S = 1.0
SETTINGS = ["serve.max_queue=64", f"serve.read_timeout_s={READ_TIMEOUT_S}", "serve.num_threads=1",
            "serve.max_seq_len=128", "serve.max_texts=8", "serve.port=0"]
# Each burst request carries 8 texts of ~100 words: work enough that the tiny model cannot keep up
# and the queue (64 texts: 8 such requests) must shed, on any machine.
BURST_TEXTS, BURST_WORDS = 8, 100


@pytest.fixture(scope="module")
def server(tiny_export_run, tmp_path_factory):
    cfg = config.resolve(["tiny"], SETTINGS)
    log = tmp_path_factory.mktemp("overload") / "server.log"
    with ServerProcess(deployed_folder(tiny_export_run, "optimized"), cfg.serve, log_path=log) as running:
        yield running


def get(server, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def burst_with_probes(server) -> tuple[dict, list[float]]:
    """A burst of 1000 (in a process of its own), and the /healthz latencies of probes sent during it."""
    async def scenario() -> tuple[dict, list[tuple[float, float]]]:
        proc = await asyncio.create_subprocess_exec(sys.executable, str(BURST), str(server.port), "1000",
                                                    str(BURST_TEXTS), str(BURST_WORDS),
                                                    stdout=asyncio.subprocess.PIPE)
        done = asyncio.ensure_future(proc.communicate())
        probes = await probe_healthz(server.port, done)
        out, _ = await done
        assert proc.returncode == 0
        return json.loads(out), probes

    result, probes = asyncio.run(scenario())
    return result, [ms for started, ms in probes if result["start"] <= started <= result["end"]]


def test_a_burst_of_1000_gets_only_200s_and_503s_while_healthz_stays_quick(server):
    medians = []
    for _ in range(3):  # timing on a shared 2-core machine: the best of three bursts (every one must shed right)
        result, during = burst_with_probes(server)
        statuses = result["statuses"]
        assert set(statuses) == {"200", "503"} and sum(statuses.values()) == 1000, statuses
        assert result["bad_503"] == [], "503s need Retry-After and a JSON error"
        assert len(during) >= 3, result
        medians.append(statistics.median(during))
        print(f"\nburst of 1000: {statuses} in {result['end'] - result['start']:.2f} s; /healthz during it "
              f"(n={len(during)}): median {medians[-1]:.1f} ms, max {max(during):.1f} ms")
        if medians[-1] < 100:
            break
    assert min(medians) < 100, f"/healthz median during each burst: {medians} ms"
    status, text = get(server, "/metrics")
    shed = re.search(rb'bort_requests_shed_total\{reason="queue_full"\} (\S+)', text)
    assert status == 200 and shed and float(shed.group(1)) >= int(statuses["503"])


def series(text: bytes) -> set[str]:
    """Each Prometheus series once: a histogram's buckets, sum, count and created count as one."""
    out = set()
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            name = line.rsplit(" ", 1)[0]
            name = re.sub(r'(,)?le="[^"]*"', "", name)
            out.add(re.sub(r"_(bucket|sum|count|created)(?=\{|$)", "", name))
    return out


def test_made_up_paths_add_only_a_handful_of_metric_series(server):
    before = series(get(server, "/metrics")[1])
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    for i in range(1000):
        conn.request("GET" if i % 2 else "POST", f"/scan/{i}/admin.php?x={i}")
        resp = conn.getresponse()
        assert resp.status in (404, 405)
        resp.read()
    conn.close()
    added = series(get(server, "/metrics")[1]) - before
    print(f"\n1000 made-up paths added {len(added)} series: {sorted(added)}")
    assert len(added) <= 5, sorted(added)
    assert all("/scan/" not in s for s in added), sorted(added)


def test_the_service_metrics_are_exported(server):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    conn.request("POST", "/classify", json.dumps({"texts": ["good " * 200]}), {"Content-Type": "application/json"})
    assert conn.getresponse().status == 200
    conn.close()
    text = get(server, "/metrics")[1].decode()
    for name in ("bort_queue_depth_texts", "bort_batch_size_texts_bucket", "bort_texts_truncated_total",
                 'bort_requests_shed_total{reason="deadline"}', 'bort_requests_shed_total{reason="client_gone"}'):
        assert name in text, name
    assert float(re.search(r"^bort_texts_truncated_total (\S+)$", text, re.M).group(1)) >= 1


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize("framing", ["content-length longer than the body", "chunked body never finished"])
def test_a_body_that_never_arrives_is_answered_408_within_the_read_timeout(server, framing):
    head = b"POST /classify HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    if framing.startswith("content-length"):
        request = head + b"Content-Length: 100\r\n\r\n" + b'{"texts": ["a'
    else:
        request = head + b"Transfer-Encoding: chunked\r\n\r\n" + b'5\r\n{"tex\r\n'
    with socket.create_connection((server.host, server.port), timeout=READ_TIMEOUT_S + 10) as sock:
        started = time.monotonic()
        sock.sendall(request)
        data = read_all(sock)  # the server closes the connection after its answer
        elapsed = time.monotonic() - started
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert READ_TIMEOUT_S * 0.9 <= elapsed < READ_TIMEOUT_S + 2, elapsed
    assert b"serve.read_timeout_s" in data and b"connection: close" in data.lower()
