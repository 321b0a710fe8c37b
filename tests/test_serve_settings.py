"""The service validates its settings (BORT_SERVE_CONFIG) with the run config's schema at start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.parametrize(("settings", "fragment"), [
    ({"max_texts": "many"}, "serve.max_texts: expected an integer"),
    ({"max_textz": 3}, "unknown config key 'serve.max_textz'"),
])
def test_a_wrong_service_setting_stops_start_up_with_one_line(tmp_path, settings, fragment):
    env = {**os.environ, "BORT_SERVE_CONFIG": json.dumps(settings), "BORT_SERVE_MODEL_DIR": str(tmp_path),
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "bentoml", "serve", "serve.service:Classifier", "--host",
                           "127.0.0.1", "--port", "0", "--working-dir", str(ROOT)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {fragment}")
    assert "Traceback" not in proc.stderr
