"""`bort export` on tiny classifiers: parity, int8 folders, the keep-or-drop rule, the registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import fake_task

from bort import artifacts, config
from runtime import recipe
from serve import export
from serve import onnx_export as X


def test_export_writes_self_contained_fp32_and_both_int8_folders(tiny_export_run):
    root = tiny_export_run / "export"
    for role in ("optimized", "baseline"):
        for precision in recipe.PRECISIONS:
            folder = root / role / precision
            for name in ("model.onnx", "tokenizer.json", "config.json", "serving.json"):
                assert (folder / name).is_file(), folder / name
            serving = json.loads((folder / "serving.json").read_text())
            assert serving["labels"] == ["fresh", "rotten"]
            assert serving["precision"] == precision and serving["is_pair"] is False
            assert serving.get("quantization") == recipe.QUANTIZATION[precision]
    assert not list(root.glob(".tmp-*")), "temporary build folders must not remain"


def test_export_manifest_records_parity_accuracy_and_latency(tiny_export_run):
    manifest = artifacts.read_manifest(tiny_export_run, "export")
    m = manifest.metrics
    assert m["parity_max_abs_diff"] < config.ExportConfig().parity_atol
    assert 0.0 <= m["fp32_dev_accuracy"] <= 1.0 and 0.0 <= m["int8_dev_accuracy"] <= 1.0
    assert m["int8_drop_points"] == pytest.approx((m["fp32_dev_accuracy"] - m["int8_dev_accuracy"]) * 100, abs=1e-2)
    assert m["quantization"]["target"] in recipe.QUANTIZATION_TARGETS and m["onnx_recipe"] == recipe.RECIPE
    for role, rm in m["roles"].items():  # every served file is scored on the test split too
        assert set(rm["test_accuracy"]) == set(recipe.PRECISIONS)
        assert all(0.0 <= v <= 1.0 for v in rm["test_accuracy"].values())
        assert m["served_test_accuracy"][role] == rm["test_accuracy"][rm["deployed_precision"]]
    for role in ("optimized", "baseline"):
        for precision in recipe.PRECISIONS:
            lat = m["latency_ms"][role][precision]
            assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    assert m["roles"]["optimized"]["source"] == "agora" and m["roles"]["baseline"]["source"] == "labeller"


def test_deployed_json_follows_the_measured_rule_and_names_the_cpu(tiny_export_run):
    deployed = json.loads((tiny_export_run / "export" / "deployed.json").read_text())
    metrics = artifacts.read_manifest(tiny_export_run, "export").metrics
    for role, entry in deployed.items():
        m = metrics["roles"][role]
        speed = m["speed"]
        assert entry["precision"] == speed["precision"] == m["deployed_precision"]
        assert set(speed["figures"]) == set(recipe.PRECISIONS) and speed["isa"] == artifacts.cpu_info()["isa"]
        if entry["precision"] != "fp32":  # int8 only when accurate enough and faster here
            assert m["drop_points"][entry["precision"]] <= 0.5 and not speed["verdicts"][entry["precision"]]["failed"]
        assert metrics["deploy_decisions"][role]["why"] == entry["decision"]
        assert (tiny_export_run / "export" / entry["folder"] / "model.onnx").is_file()


def test_static_int8_gives_a_text_the_same_label_and_scores_alone_and_in_a_batch_of_32(tiny_export_run):
    from serve.predictor import Predictor

    texts = [f"{t} {'and more ' * (i % 7)}".strip() for i, t in enumerate(fake_task().dev)][:32]
    for role in ("optimized", "baseline"):
        predictor = Predictor(tiny_export_run / "export" / role / "int8_static", num_threads=2, max_seq_len=64)
        assert predictor.batch_invariant
        alone = [predictor.predict(texts=[t])[0] for t in texts]
        assert predictor.predict(texts=texts) == alone  # bucketed by length, as the service runs a merged batch
        predictor.bucket = False
        assert predictor.predict(texts=texts) == alone  # and padded to the longest text in one call


def test_an_explicit_precision_is_deployed_only_within_the_accuracy_gate():
    from serve import precision as P

    assert P.requested("int8_static", {"int8": 3.0, "int8_static": 0.2}, 0.5)[0] == "int8_static"
    kept, why = P.requested("int8", {"int8": 3.0, "int8_static": 0.2}, 0.5)
    assert kept == "fp32" and "keeping fp32" in why


def test_int8_decision_keeps_fp32_when_accuracy_drops_too_much():
    assert export.int8_decision(0.5, 0.5)[0] == "int8"
    precision, why = export.int8_decision(0.51, 0.5)
    assert precision == "fp32" and "keeping fp32" in why


def test_export_is_registered_in_the_bentoml_store_with_labels(tiny_export_run):
    import bentoml

    manifest = artifacts.read_manifest(tiny_export_run, "export")
    tag = manifest.metrics["bentoml_models"]["optimized"]
    stored = bentoml.models.get(tag)
    assert stored.info.labels["run_fingerprint"] == manifest.fingerprint
    assert stored.info.labels["role"] == "optimized"
    assert float(stored.info.labels["parity_max_abs_diff"]) < 1e-4
    assert (Path(stored.path) / "model.onnx").is_file() and (Path(stored.path) / "serving.json").is_file()


def test_rerun_with_same_inputs_is_skipped(tiny_export_run, monkeypatch):
    before = artifacts.read_manifest(tiny_export_run, "export")
    monkeypatch.setattr(export, "export_role", lambda *a, **k: pytest.fail("should not re-export"))
    cfg = config.resolve(["tiny"], ["export.timed_runs=5", "export.warmup_runs=1"])
    assert export.run(cfg, tiny_export_run).created_at == before.created_at


def test_parity_failure_is_a_clear_error(tiny_export_run):
    model_dir = tiny_export_run / "finetune" / "models" / "agora"
    texts = [e.text for e in fake_task().dev[:4]]
    with pytest.raises(X.ParityError, match="differ from PyTorch"):
        X.check_parity(model_dir, tiny_export_run / "export" / "optimized" / "fp32", texts, None,
                       seq_len=32, atol=1e-30)


def test_labels_must_match_the_task(tiny_finetune_run):
    model_dir = tiny_finetune_run / "finetune" / "models" / "agora"
    assert X.labels_of(model_dir, ["rotten", "fresh"]) == ["fresh", "rotten"]  # model's id order wins
    with pytest.raises(artifacts.ArtifactError, match="do not match"):
        X.labels_of(model_dir, ["negative", "positive"])


def test_missing_finetune_names_the_command(tmp_path):
    with pytest.raises(artifacts.ArtifactError, match="bort finetune"):
        export.run(config.resolve(["tiny"]), tmp_path)


def test_dev_accuracy_maps_labels_by_name_not_by_position(tiny_export_run):
    folder = tiny_export_run / "export" / "optimized" / "fp32"
    task = fake_task()
    same = X.split_accuracy(folder, task.dev, False, ["fresh", "rotten"], num_threads=1, seq_len=32,
                          batch_size=8, desc="t")
    # The same examples with the task's label order reversed: every gold id flips, names do not.
    flipped = [type(e)(text=e.text, text_pair=None, label=1 - e.label) for e in task.dev]
    reordered = X.split_accuracy(folder, flipped, False, ["rotten", "fresh"], num_threads=1, seq_len=32,
                               batch_size=8, desc="t")
    assert reordered == pytest.approx(same)


@pytest.mark.slow
def test_optimized_graph_exports_keeps_parity_and_quantizes(tiny_finetune_run, tmp_path):
    """O2 graph + quantize_dynamic (ORTQuantizer fails on optimised graphs in this stack)."""
    from serve.predictor import Predictor

    model_dir = tiny_finetune_run / "finetune" / "models" / "agora"
    recipe.export_fp32(model_dir, tmp_path / "fp32", optimize_graph=True)
    sidecar = {"labels": ["fresh", "rotten"], "is_pair": False, "name": "t", "max_seq_len": 512}
    X.write_serving(tmp_path / "fp32", precision="fp32", **sidecar)
    assert X.check_parity(model_dir, tmp_path / "fp32", ["a fine film"], None, 32, 1e-4)["parity_max_abs_diff"] < 1e-4
    recipe.quantize_int8(tmp_path / "fp32", tmp_path / "int8", "avx512_vnni", optimized_graph=True)
    X.write_serving(tmp_path / "int8", precision="int8", **sidecar)
    assert Predictor(tmp_path / "int8").predict(texts=["a fine film"])[0]["label"] in ("fresh", "rotten")


def test_a_constant_student_is_never_exported(tmp_path, minilm_dir):
    from conftest import write_fake_finetune

    write_fake_finetune(tmp_path, minilm_dir, learned=False)
    cfg = config.resolve(["tiny"])
    with pytest.raises(export.DeployGateError, match="deploy gate.*predicts one class.*--force"):
        export.run(cfg, tmp_path)
    assert not (tmp_path / "export" / "deployed.json").exists()
    assert not (tmp_path / "export" / "optimized").exists()


def test_the_gate_reads_margin_and_significance_and_force_overrides_it(minilm_dir, tmp_path):
    from conftest import gate_facts

    from bort import metrics

    learned = {"deploy_gate": gate_facts(learned=True)}
    assert metrics.deploy_verdict(learned, 2.0, 0.01)["passed"]
    assert not metrics.deploy_verdict(learned, 30.0, 0.01)["passed"]  # +20 points is under a 30-point margin
    assert not metrics.deploy_verdict(learned, 2.0, 0.001)["passed"]  # p = 0.002 is not below 0.001
    assert metrics.deploy_verdict({}, 2.0, 0.01)["passed"] is None  # an old manifest: no facts
    manifest = artifacts.Manifest("finetune", "fp", 0, {}, metrics={"deploy_gate": gate_facts(learned=False)})
    forced = export.check_gate(config.resolve(["tiny"], ["export.force=true"]), manifest)
    assert forced["forced"] and not forced["passed"]
    with pytest.raises(artifacts.ArtifactError, match="rerun `bort finetune`"):
        export.check_gate(config.resolve(["tiny"]), artifacts.Manifest("finetune", "fp", 0, {}, metrics={}))


def test_served_speed_drives_each_variant_through_the_service(tiny_export_run):
    from bort.config import ServeConfig
    from serve import served_speed

    folders = {p: tiny_export_run / "export" / "optimized" / p for p in ("int8", "int8_static")}
    served = served_speed.measure(folders, ServeConfig(num_threads=1), ["a fine film", "dull"], users=2,
                                  seconds=0.5, rounds=1, warmup_s=0.2)
    assert set(served) == set(folders) and all(v["served_rps"] > 0 and v["users"] == 2 for v in served.values())
