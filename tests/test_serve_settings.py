"""The service validates its settings (BORT_SERVE_CONFIG) with the run config's schema at start-up,
and will not listen beyond loopback without an API key unless told to."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from bort.config import ServeConfig


def start_service(tmp_path, settings: dict, host: str = "127.0.0.1", **env: str) -> subprocess.CompletedProcess:
    """``bentoml serve`` as a container runs it; it must stop at import, before binding anything."""
    base = {k: v for k, v in os.environ.items() if k != "BORT_API_KEY"}
    env = {**base, "BORT_SERVE_CONFIG": json.dumps(settings), "BORT_SERVE_MODEL_DIR": str(tmp_path),
           "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-m", "bentoml", "serve", "serve.service:Classifier", "--host",
                           host, "--port", "0", "--working-dir", str(ROOT)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return errors[0]


@pytest.mark.parametrize(("settings", "fragment"), [
    ({"max_texts": "many"}, "serve.max_texts: expected an integer"),
    ({"max_textz": 3}, "unknown config key 'serve.max_textz'"),
    ({"max_queue": 0}, "serve.max_queue must be >= 1"),
    ({"max_queue": 8}, "serve.max_queue (8 texts) must be >= serve.max_texts (64)"),
    ({"request_timeout_s": "soon"}, "serve.request_timeout_s: expected a number"),
    ({"read_timeout_s": 0}, "serve.read_timeout_s must be > 0"),
    ({"allow_open": "yes"}, "serve.allow_open: expected true or false"),
])
def test_a_wrong_service_setting_stops_start_up_with_one_line(tmp_path, settings, fragment):
    assert one_error_line(start_service(tmp_path, settings)).startswith(f"error: {fragment}")


def test_an_open_address_without_an_api_key_stops_start_up_with_one_line(tmp_path):
    line = one_error_line(start_service(tmp_path, {}, host="0.0.0.0"))
    assert "serve.host '0.0.0.0' is reachable from other machines" in line
    assert "BORT_API_KEY" in line and "serve.allow_open=true" in line


def test_bort_serve_refuses_an_open_address_without_an_api_key(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "BORT_API_KEY"}
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "serve", "--profile", "tiny", "--host", "0.0.0.0",
                           "--model-dir", str(tmp_path), "--run-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, env={**env, "PYTHONPATH": str(ROOT)}, cwd=tmp_path,
                          timeout=120)
    assert "reachable from other machines" in one_error_line(proc)


@pytest.mark.parametrize(("host", "key", "allow_open", "refused"), [
    ("127.0.0.1", "", False, False), ("::1", "", False, False), ("localhost", "", False, False),
    ("0.0.0.0", "", False, True), ("10.1.2.3", "", False, True), ("0.0.0.0", "k", False, False),
    ("0.0.0.0", "", True, False), ("my-host", "", False, True),
])
def test_which_addresses_need_an_api_key(monkeypatch, host, key, allow_open, refused):
    monkeypatch.setenv("BORT_API_KEY", key)
    problem = ServeConfig(host=host, allow_open=allow_open).exposure_error()
    assert (problem is not None) == refused, problem
