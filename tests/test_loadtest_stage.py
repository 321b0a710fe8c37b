"""`bort loadtest` end to end against stand-in servers: report, manifest, SLO exit code, no survivors.

The default test replaces only the `bort serve` command line with the stand-in server (same HTTP
contract); everything else (upstream manifests, Locust, parsing, report) is the real code. The slow
test serves the tiny exported classifiers through the real `bort serve`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import staged
from loadtest_support import STANDIN, tiny_cfg

from bort import artifacts, data, processes
from loadtest import report, services, stage


def fake_upstream(cfg, run_dir: Path) -> None:
    """data, finetune and export as their stages leave them (manifests; the fp32 baseline folder)."""
    data.prepare(cfg, run_dir)
    artifacts.write_manifest(run_dir, "finetune", cfg, fingerprint="ft",
                             metrics={"deploy": "agora", "accuracy": {"labeller": 0.84, "agora": 0.83}})
    export = run_dir / "export"
    for role, precision in (("baseline", "fp32"), ("optimized", "int8")):
        (export / role / precision).mkdir(parents=True)
        (export / role / precision / "serving.json").write_text(json.dumps({"precision": precision, "name": role}))
    (export / "deployed.json").write_text(json.dumps({r: {"folder": f"{r}/{p}", "precision": p}
                                                      for r, p in (("baseline", "fp32"), ("optimized", "int8"))}))
    artifacts.write_manifest(run_dir, "export", cfg, fingerprint="ex", metrics={
        "deployed": {"optimized": "int8", "baseline": "fp32"}, "parity_max_abs_diff": 2e-6,
        "roles": {"optimized": {"int8_drop_points": 0.3}}})


@pytest.fixture()
def started_services(monkeypatch):
    """Every service the stage starts, recorded (after checking it listens on 127.0.0.1)."""
    started: list[processes.RunningService] = []
    real_start = processes.start

    def recording_start(spec, log_path, cpus=None):
        assert spec.url.startswith("http://127.0.0.1:")
        running = real_start(spec, log_path, cpus)
        started.append(running)
        return running

    monkeypatch.setattr(processes, "start", recording_start)
    return started


def assert_none_survives(started: list[processes.RunningService]) -> None:
    for running in started:
        for group in running.groups:
            with pytest.raises(ProcessLookupError):
                os.killpg(group, 0)


@pytest.fixture()
def serve_commands() -> list[dict]:
    """What each `bort serve` the stage started was asked to serve."""
    return []


@pytest.fixture()
def standin_serve(monkeypatch, started_services, serve_commands):
    """`bort serve` replaced by the stand-in: slow (8 ms) for a --model-dir folder (the baseline),
    fast for the run's deployed export (the optimised model)."""
    commands = serve_commands

    def command(port, config_file, run_dir=None, role="optimized", model_dir=None, host="127.0.0.1"):
        commands.append({"run_dir": run_dir, "role": role, "model_dir": model_dir})
        delay = "8" if model_dir is not None else "1"
        return (sys.executable, STANDIN, "--port", str(port), "--delay-ms", delay)

    monkeypatch.setattr(services, "bort_serve_command", command)
    return started_services


def test_loadtest_writes_the_report_sets_the_slo_exit_code_and_leaves_no_server_behind(tmp_path, standin_serve,
                                                                                       serve_commands):
    cfg = tiny_cfg(tmp_path, "loadtest.slo_p95_ms=0.01")  # no server answers in 10 microseconds
    fake_upstream(cfg, tmp_path)
    assert staged(stage.run, cfg, tmp_path) == report.SLO_EXIT_CODE
    out = tmp_path / "loadtest"
    for name in ("report.md", "report.html", "latency.png", "rps.png", "results.json"):
        assert (out / name).is_file(), name
    m = artifacts.read_manifest(tmp_path, "loadtest").metrics
    assert m["failures"] == 0
    assert set(m["models"]["baseline"]) == {"1", "2"} and m["models"]["optimized"]["2"]["requests"] > 0
    # The ratios are the per-model figures divided (speed itself is never asserted: the machine is shared).
    base, opt = m["models"]["baseline"], m["models"]["optimized"]
    assert m["rps_ratio"] == pytest.approx(opt["2"]["rps"] / base["2"]["rps"], rel=0.01)
    assert m["p50_ratio"] == pytest.approx(base["1"]["p50_ms"] / opt["1"]["p50_ms"], rel=0.01)
    assert m["accuracy"] == {"baseline": 0.84, "optimized": 0.83}
    md = (out / "report.md").read_text()
    assert "source (labeller, ONNX fp32)" in md and "Missed" in md
    assert [r.spec.name for r in standin_serve] == ["baseline", "optimized"]
    # The baseline is its export folder served with --model-dir; the optimised model, the run's deployment.
    assert len(serve_commands) == 2
    assert {"run_dir": None, "role": "optimized", "model_dir": tmp_path / "export" / "baseline" / "fp32"} in serve_commands
    assert {"run_dir": tmp_path, "role": "optimized", "model_dir": None} in serve_commands
    assert [p.relative_to(out) for p in out.rglob("*.json") if p.name in ("manifest.json", "deployed.json")] \
        == [Path("manifest.json")]  # its own manifest; no stand-in export folder
    assert_none_survives(standin_serve)  # no server process survives the command
    assert staged(stage.run, cfg, tmp_path) == report.SLO_EXIT_CODE  # up to date: the stored verdict, no new run
    assert len(standin_serve) == 2


def test_with_loadtest_workers_a_master_and_its_workers_make_the_load_and_the_report_counts_each_share(
        tmp_path, standin_serve):
    cfg = tiny_cfg(tmp_path, "loadtest.workers=2", "loadtest.users=[2]")
    fake_upstream(cfg, tmp_path)
    staged(stage.run, cfg, tmp_path)
    results = json.loads((tmp_path / "loadtest" / "results.json").read_text())
    for model in results["models"].values():
        level = model["levels"]["2"]
        assert len(level["workers"]) == 2 and sum(w["requests"] for w in level["workers"]) == level["requests"]
        assert all(w["requests"] > 0 for w in level["workers"])
    md = (tmp_path / "loadtest" / "report.md").read_text()
    assert "2 Locust workers (local) and a master" in md and "requests per worker" in md
    assert_none_survives(standin_serve)


def test_bort_serve_commands_bind_loopback_and_serve_a_folder_or_a_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative --run-dir: the server runs in another directory, so every path is absolute
    relative = services.bort_serve_command(3999, Path("run") / "c.yaml", run_dir=Path("run"))
    assert relative[relative.index("--config") + 1] == str((tmp_path / "run" / "c.yaml").resolve())
    folder_cmd = services.bort_serve_command(3999, tmp_path / "c.yaml", model_dir=tmp_path / "m")
    run_cmd = services.bort_serve_command(3999, tmp_path / "c.yaml", run_dir=tmp_path, role="optimized")
    for cmd in (folder_cmd, run_cmd):
        assert cmd[1:4] == ("-m", "pipeline.cli", "serve") and "serve.host=127.0.0.1" in cmd
        assert cmd[cmd.index("--port") + 1] == "3999"
    assert folder_cmd[-2:] == ("--model-dir", str((tmp_path / "m").resolve())) and "--run-dir" not in folder_cmd
    assert run_cmd[-4:] == ("--run-dir", str(tmp_path.resolve()), "--model", "optimized")


def test_missing_upstream_names_the_command(tmp_path):
    cfg = tiny_cfg(tmp_path)
    with pytest.raises(artifacts.ArtifactError, match="bort finetune"):
        staged(stage.run, cfg, tmp_path)


@pytest.mark.slow
@pytest.mark.integration
def test_real_bort_serve_on_tiny_exports(tmp_path, tiny_export_run, started_services):
    """The real `bort serve` (BentoML) for both roles of a tiny export; both answer every request."""
    import shutil

    shutil.copytree(tiny_export_run, tmp_path / "run")
    run_dir = tmp_path / "run"
    cfg = tiny_cfg(tmp_path, "loadtest.users=[1]", "loadtest.duration_s=3")
    data.prepare(cfg, run_dir)
    manifest = staged(stage.run, cfg, run_dir)
    assert manifest.metrics["failures"] == 0
    assert manifest.metrics["models"]["optimized"]["1"]["requests"] > 10
    # bort serve, the BentoML server it starts in a new session, and BentoML's worker (own group)
    assert all(len(running.groups) >= 2 for running in started_services)
    assert_none_survives(started_services)


@pytest.mark.slow
@pytest.mark.integration
def test_embedded_default_minilm_on_rotten_tomatoes(tmp_path, minilm_dir, started_services):
    """MiniLM-L6 (as both labeller and deployed model, untrained head) exported by `bort export`,
    served by `bort serve`, loaded with real Rotten Tomatoes test texts: every answer valid."""
    from transformers import AutoModelForSequenceClassification

    from bort import config, families
    from serve import export

    cfg = config.resolve(["tiny"], ["loadtest.users=[1, 2]", "loadtest.duration_s=3", "loadtest.warmup_s=1",
                                    "export.timed_runs=5", "export.register_bentoml=false"])
    task = data.prepare(cfg, tmp_path)
    for name in ("labeller", "agora"):
        model = AutoModelForSequenceClassification.from_pretrained(
            minilm_dir, num_labels=len(task.labels), id2label=dict(enumerate(task.labels)),
            label2id={n: i for i, n in enumerate(task.labels)})
        model.save_pretrained(tmp_path / "finetune" / "models" / name, safe_serialization=True)
        families.load_tokenizer(minilm_dir).save_pretrained(tmp_path / "finetune" / "models" / name)
    artifacts.write_manifest(tmp_path, "finetune", cfg, fingerprint="ft",
                             metrics={"deploy": "agora", "accuracy": {"labeller": 0.5, "agora": 0.5}})
    staged(export.run, cfg, tmp_path)
    manifest = staged(stage.run, cfg, tmp_path)
    m = manifest.metrics
    assert m["failures"] == 0
    assert all(m["models"][role][users]["requests"] > 10 for role in ("baseline", "optimized") for users in ("1", "2"))
    assert_none_survives(started_services)


def test_the_call_log_a_server_writes_is_named_absolutely(tmp_path, monkeypatch):
    """bort serve runs in the package's directory: a path relative to the caller's (CI's wheel
    check runs `bort run --run-dir tiny-run`) would name a folder that does not exist there."""
    import contextlib

    from loadtest import measure

    seen = {}

    @contextlib.contextmanager
    def serving(spec, log_path, cpus):
        seen.update(spec.env)
        raise RuntimeError("stop here")
        yield

    monkeypatch.setattr(measure, "serving", serving)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw").mkdir()
    plan = measure.ModelPlan("optimized", processes.ServiceSpec(name="x", command=("true",), port=1), "x")
    with pytest.raises(RuntimeError, match="stop here"):
        measure.measure_model(plan, [], Path("texts.json"), Path("raw"))
    from loadtest import ceiling

    assert seen[ceiling.CALL_LOG_ENV] == str(tmp_path.resolve() / "raw" / "optimized_calls.csv")


def test_source_deployed_serves_the_labeller_at_the_precision_export_deployed_for_it(tmp_path):
    """Like for like: the student as deployed against the labeller as deployed (here int8_static)."""
    cfg = tiny_cfg(tmp_path, "loadtest.baseline=source_deployed")
    fake_upstream(cfg, tmp_path)
    export = tmp_path / "export"
    (export / "baseline" / "int8_static").mkdir(parents=True)
    (export / "baseline" / "int8_static" / "serving.json").write_text(json.dumps({"precision": "int8_static"}))
    (export / "deployed.json").write_text(json.dumps({"baseline": {"folder": "baseline/int8_static"},
                                                      "optimized": {"folder": "optimized/int8"}}))
    artifacts.write_manifest(tmp_path, "export", cfg, fingerprint="ex", metrics={
        "deployed": {"optimized": "int8", "baseline": "int8_static"},
        "roles": {"baseline": {"test_accuracy": {"fp32": 0.84, "int8_static": 0.835}}}})
    upstream = {name: artifacts.read_manifest(tmp_path, name) for name in stage.UPSTREAM}
    baseline, _ = stage.plan_services(cfg, tmp_path, tmp_path / "loadtest", upstream)
    assert baseline.folder == export / "baseline" / "int8_static"
    assert baseline.label == "source (labeller, ONNX int8_static)" and baseline.accuracy == 0.835
    assert baseline.spec.command[-2:] == ("--model-dir", str((export / "baseline" / "int8_static").resolve()))
