"""The one ONNX recipe (runtime/): the search times the graph `bort export` writes, in the same session."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import TINY_ARCH

from bort.families import Arch
from optimize import timing
from optimize.latency import LatencySettings
from runtime import recipe
from runtime.session import open_session
from serve.predictor import Predictor


def graph_signature(path: Path) -> dict:
    """What makes two ONNX graphs the same computation up to weight values and node names."""
    import onnx

    model = onnx.load(str(path))
    return {
        "ops": Counter(node.op_type for node in model.graph.node),
        "initializers": Counter((tuple(t.dims), t.data_type) for t in model.graph.initializer),
        "opset": sorted((o.domain, o.version) for o in model.opset_import),
        "inputs": [i.name for i in model.graph.input],
        "outputs": [o.name for o in model.graph.output],
    }


def session_settings(session) -> dict:
    opts = session.get_session_options()
    return {"intra_op": opts.intra_op_num_threads, "inter_op": opts.inter_op_num_threads,
            "mode": opts.execution_mode, "level": opts.graph_optimization_level,
            "spinning": opts.get_session_config_entry("session.intra_op.allow_spinning")}


@pytest.mark.parametrize("precision", ["fp32", "int8", "int8_static"])
def test_the_search_times_the_graph_bort_export_writes_for_the_shape(tiny_export_run, tmp_path, precision):
    """tiny_export_run's models are 2/3/33/37 classifiers exported by the real `bort export`."""
    exported = tiny_export_run / "export" / "optimized" / precision
    settings = LatencySettings(seq_len=16, precision=precision, num_threads=2)
    timed = timing.export_candidate(Arch(*TINY_ARCH), "bert", None, settings, tmp_path)
    searched, served = graph_signature(timed / "model.onnx"), graph_signature(exported / "model.onnx")
    assert searched == served
    assert searched["ops"]["Gemm"] + searched["ops"]["MatMul"] + searched["ops"]["MatMulInteger"] > 0
    if precision == "int8":
        assert searched["ops"]["DynamicQuantizeLinear"] > 0  # quantised by the same preset, not fp32 again
    if precision == "int8_static":  # QDQ with fixed scales (calibrated on random ids for timing)
        assert searched["ops"]["QuantizeLinear"] > 0 and searched["ops"]["DynamicQuantizeLinear"] == 0
    session = timing.TimedSession(timed / "model.onnx", 2, 1, 16, recipe.vocab_size(timed)).session
    predictor = Predictor(exported, num_threads=2, max_seq_len=16)
    assert session_settings(session) == session_settings(predictor.session)


def test_sessions_run_sequentially_with_fixed_intra_op_threads(tiny_export_run):
    import onnxruntime as ort

    session = open_session(tiny_export_run / "export" / "optimized" / "fp32" / "model.onnx", 3)
    assert session_settings(session) == {"intra_op": 3, "inter_op": 1, "mode": ort.ExecutionMode.ORT_SEQUENTIAL,
                                         "level": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "spinning": "1"}
    assert session.get_providers() == ["CPUExecutionProvider"]


def test_the_recipe_key_names_version_graph_optimisation_and_int8_preset():
    assert recipe.recipe_key("fp32", False, "avx2") == f"recipe{recipe.RECIPE_VERSION}/o0/fp32"
    assert recipe.recipe_key("int8", True, "avx512_vnni") == f"recipe{recipe.RECIPE_VERSION}/o2/int8-avx512_vnni"
    assert recipe.recipe_key("int8_static", False, "avx2") == f"recipe{recipe.RECIPE_VERSION}/o0/int8s-avx2"
    with pytest.raises(ValueError, match="fp32, int8, int8_static"):
        recipe.export_model(Path("unused"), Path("unused"), "int4", "avx2")


@pytest.mark.parametrize(("flags", "machine", "expected"), [
    (["avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"], "x86_64", "avx512_vnni"),
    (["avx2", "avx512f", "avx512bw", "avx512vl"], "x86_64", "avx512"),
    (["avx", "avx2"], "x86_64", "avx2"),
    (["asimd"], "aarch64", "arm64"),
])
def test_quantization_target_follows_cpu_flags(monkeypatch, flags, machine, expected):
    monkeypatch.setattr(recipe, "cpu_info", lambda: {"isa": flags, "machine": machine})
    assert recipe.quantization_target("auto")[0] == expected
    assert recipe.quantization_target("avx2") == ("avx2", "set by export.quantization")


def test_static_int8_quantises_weight_matmuls_and_can_keep_the_ffn_outputs_fp32(tiny_export_run):
    fp32 = tiny_export_run / "export" / "optimized" / "fp32"
    every = recipe.static_nodes(fp32)
    kept = recipe.static_nodes(fp32, keep_ffn_output_fp32=True)
    assert len(every) == 6 * TINY_ARCH[0]  # q, k, v, attention output, FFN in and out per layer; no act x act
    assert sorted(set(every) - set(kept)) == [f"/bert/encoder/layer.{i}/output/dense/MatMul" for i in range(TINY_ARCH[0])]
    assert any("attention/output/dense" in n for n in kept)


def test_optimums_tied_weights_note_is_dropped_for_classifiers(caplog):
    import logging

    import runtime.recipe  # noqa: F401  (installs the filter)

    logger = logging.getLogger("optimum.exporters.onnx.base")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning("Weight deduplication check in the ONNX export requires accelerate. Please install it.")
        logger.warning("another warning")
    assert [r.getMessage() for r in caplog.records] == ["another warning"]
