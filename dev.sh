#!/usr/bin/env bash
# One entry for both README commands. It makes its own environment (once; again when the pins
# change), installs torch==2.13.0 first and then the locked rest, fetches the embedded default
# assets, and then:
#   ./dev.sh run [bort run options]   runs the whole pipeline on the embedded default
#   ./dev.sh test [pytest options]    runs the test suite
#   ./dev.sh bort <subcommand ...>    runs any bort command in the environment
set -euo pipefail
cd "$(dirname "$0")"

VENV="${BORT_VENV:-.venv}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 BENTOML_DO_NOT_TRACK=true
export BENTOML_HOME="${BENTOML_HOME:-$PWD/.cache/bentoml}"
export BORT_CACHE="${BORT_CACHE:-$PWD/.cache/bort}"
export TOKENIZERS_PARALLELISM=false PIP_DISABLE_PIP_VERSION_CHECK=1

stamp="$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.bort-stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "setting up $VENV (torch first, then the locked rest)..." >&2
  "$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "bort needs Python 3.11"'
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
  "$VENV/bin/python" -m pip install -q torch==2.13.0 2>&1 | grep -v "is ignored" || true
  "$VENV/bin/python" -m pip install -q -r requirements.lock 2>&1 | grep -v "is ignored" || true
  "$VENV/bin/python" -m pip install -q --no-deps -e . 2>&1 | grep -v "is ignored" || true
  # locust monkey-patches the standard library (gevent), so it is checked in a process of its own
  { "$VENV/bin/python" -c "import torch, transformers, onnxruntime, bentoml, bort" \
      && "$VENV/bin/python" -c "import locust"; } \
    || { echo "error: environment setup failed" >&2; exit 1; }
  echo "$stamp" > "$VENV/.bort-stamp"
fi

"$VENV/bin/bort" sources --fetch >&2

cmd="${1:-run}"; shift || true
case "$cmd" in
  run)  exec "$VENV/bin/bort" run "$@" ;;
  test) exec "$VENV/bin/python" -m pytest "$@" ;;
  bort) exec "$VENV/bin/bort" "$@" ;;
  *) echo "usage: ./dev.sh run|test|bort [args...]" >&2; exit 2 ;;
esac
