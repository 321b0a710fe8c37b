"""The onnxruntime session every bort ONNX model runs in: served, checked by ``bort export``, timed by the search.

Imports nothing heavier than onnxruntime, and that only inside the functions: this file ships in
the Bento beside ``serve/predictor.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PROVIDERS = ("CPUExecutionProvider",)
SERVING_FILE = "serving.json"  # the sidecar beside model.onnx: labels, pair task, precision, max length


def session_options(num_threads: int, spin: bool = True, spin_stop: bool = False) -> Any:
    """onnxruntime options for one process: fixed intra-op threads, inter-op 1, sequential graph.

    ``spin=False`` stops idle intra-op threads from busy-waiting: on a machine with few cores
    a spinning pool takes CPU from the HTTP loop between requests. ``spin_stop=True`` keeps the
    busy-wait inside a call (between the graph's operators, where it saves wake-ups) but ends it
    when the call returns (onnxruntime's ``session.force_spinning_stop``).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = num_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if spin_stop:
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    return opts


def open_session(model_path: str | Path, num_threads: int, spin: bool = True, spin_stop: bool = False) -> Any:
    """An ``InferenceSession`` on the CPU with :func:`session_options`."""
    import onnxruntime as ort

    return ort.InferenceSession(str(model_path), sess_options=session_options(num_threads, spin, spin_stop),
                                providers=list(PROVIDERS))
