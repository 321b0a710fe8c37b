"""Helpers shared by the load-test tests (not a test module)."""

from __future__ import annotations

import sys
from pathlib import Path

from bort import config, processes
from bort.processes import free_port

STANDIN = str(Path(__file__).resolve().parent / "standin_server.py")
REVIEWS = ["a gripping, beautifully acted film", "dull and lifeless from start to finish",
           "the best thing I have seen all year, and I have seen a lot of films this year",
           "a tedious mess", "warm, funny and surprisingly moving", "I wanted my two hours back"]


def standin_spec(*flags: str, timeout_s: float = 20.0) -> processes.ServiceSpec:
    """The stand-in server (tests/standin_server.py) on a free port."""
    port = free_port()
    return processes.ServiceSpec("standin", (sys.executable, STANDIN, "--port", str(port), *flags), port,
                               start_timeout_s=timeout_s)


def tiny_cfg(tmp_path: Path, *overrides: str):
    """The tiny profile on a 60-row review CSV, two short load levels, a free port."""
    csv = tmp_path / "reviews.csv"
    rows = [f'"{text} ({i})",{"fresh" if j % 2 == 0 else "rotten"}' for i in range(10) for j, text in enumerate(REVIEWS)]
    csv.write_text("text,label\n" + "\n".join(rows) + "\n")
    return config.resolve(["tiny"], [f"task.name={csv}", "loadtest.users=[1, 2]", "loadtest.duration_s=1",
                                     "loadtest.warmup_s=1", f"loadtest.port={free_port()}", *overrides])
