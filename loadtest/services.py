"""How ``bort loadtest`` starts each service, and what the upstream manifests say about its accuracy.

Every ONNX model is served by ``bort serve`` as a subprocess (the same code users deploy): the
optimised model as the run's deployed export (``--run-dir R --model optimized``), any other
exported folder (the labeller's fp32 export, an architecture-only model) with ``--model-dir``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from bort import families as F
from bort.artifacts import Manifest, atomic_write_text
from bort.config import RunConfig
from bort.errors import ArtifactError
from bort.processes import HOST, ServiceSpec
from loadtest.measure import ModelPlan

ROOT = Path(__file__).resolve().parent.parent  # the project folder (holds bort/, serve/, loadtest/)
PORT_HINT = "stop it or choose another with --set loadtest.port=N"


def write_config(cfg: RunConfig, path: Path) -> Path:
    """The run's whole resolved config as YAML, for the ``bort serve`` subprocesses (serve host
    forced to ``loadtest.host``, 127.0.0.1 unless load generators on other machines must reach them)."""
    import yaml

    data = cfg.to_dict()
    data["serve"]["host"] = cfg.loadtest.host
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=True))
    return path


def _env() -> dict[str, str]:
    return {"BENTOML_DO_NOT_TRACK": "true", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}


def bort_serve_command(port: int, config_file: Path, run_dir: Path | None = None, role: str = "optimized",
                       model_dir: Path | None = None, host: str = HOST) -> tuple[str, ...]:
    """``bort serve`` on `host`:`port` with the run's config: for `model_dir` when given
    (``--model-dir``), else for `role` of `run_dir`'s export (``--run-dir R --model role``)."""
    command = [sys.executable, "-m", "pipeline.cli", "serve", "--port", str(port), "--config", str(Path(config_file).resolve()),
               "--set", f"serve.host={host}"]
    if model_dir is not None:
        return (*command, "--model-dir", str(Path(model_dir).resolve()))
    return (*command, "--run-dir", str(Path(run_dir).resolve()), "--model", role)


def bort_serve_spec(name: str, port: int, config_file: Path, start_timeout_s: float, run_dir: Path | None = None,
                    role: str = "optimized", model_dir: Path | None = None, host: str = HOST) -> ServiceSpec:
    """A ``bort serve`` service (see :func:`bort_serve_command`)."""
    return ServiceSpec(name=name, command=bort_serve_command(port, config_file, run_dir, role, model_dir, host),
                       port=port, env=_env(), start_timeout_s=start_timeout_s, cwd=str(ROOT), port_hint=PORT_HINT,
                       host=host)


def folder_spec(name: str, folder: Path, port: int, config_file: Path, start_timeout_s: float,
                host: str = HOST) -> ServiceSpec:
    """``bort serve --model-dir`` for an exported folder that is not a run's deployed one."""
    if not (folder / "serving.json").is_file():
        raise ArtifactError(f"{folder} is not an exported model folder; rerun `bort export`")
    return bort_serve_spec(name, port, config_file, start_timeout_s, model_dir=folder, host=host)


def torch_spec(folder: Path, cfg: RunConfig, port: int, start_timeout_s: float, labels: list[str] | None = None) -> ServiceSpec:
    """The labeller served in PyTorch by :mod:`loadtest.torch_service`, same BentoML server."""
    if not (folder / "config.json").is_file():
        raise ArtifactError(f"{folder} (the labeller) is missing; rerun `bort finetune`")
    command = (sys.executable, "-m", "bentoml", "serve", "loadtest.torch_service:TorchClassifier",
               "--host", cfg.loadtest.host, "--port", str(port), "--working-dir", str(ROOT))
    env = {**_env(), "BORT_TORCH_MODEL_DIR": str(folder.resolve()),
           "BORT_TORCH_THREADS": str(cfg.serve.num_threads),
           "BORT_TORCH_MAX_SEQ_LEN": str(cfg.serve.max_seq_len), "BORT_TORCH_LABELS": json.dumps(labels or [])}
    return ServiceSpec(name="baseline", command=command, port=port, env=env, start_timeout_s=start_timeout_s,
                       cwd=str(ROOT), port_hint=PORT_HINT, host=cfg.loadtest.host)


def shape_plan(shape: str, precision: str, labels: list[str], cfg: RunConfig, port: int, config_file: Path,
               start_timeout_s: float, role: str = "baseline") -> ModelPlan:
    """An architecture-only model (random weights) at `shape`, exported and served: speed only.

    Args:
        shape: ``L/A/H/I``, e.g. ``24/16/1024/4096``.
        precision: ``fp32``, ``int8`` (dynamic) or ``int8_static``.
        labels: class names for its (random) head, so its answers pass the load test's checks.
    """
    from bort import assets
    from loadtest import shapes

    arch = F.Arch.parse(shape)
    folder = shapes.shape_folder(arch, list(labels), precision, assets.model_dir("minilm"),
                                 max_seq_len=cfg.serve.max_seq_len)
    spec = folder_spec(role, folder, port, config_file, start_timeout_s, host=cfg.loadtest.host)
    return ModelPlan(role=role, label=shapes.shape_label(arch, precision), spec=spec, speed_only=True,
                     accuracy=None, accuracy_note="speed only: random weights, accuracy meaningless", folder=folder)


def deployed_folder(export: Manifest, role: str) -> Path:
    """The folder ``bort export`` deployed for `role` (its ``deployed.json``)."""
    deployed = json.loads((export.dir / "deployed.json").read_text(encoding="utf-8"))
    return export.dir / deployed[role]["folder"]


def accuracies(finetune: Manifest, export: Manifest) -> dict[str, Any]:
    """Test accuracy of the served files (``bort export`` scores each ONNX variant on the test
    split), falling back to the finetune manifest's PyTorch figure for older exports."""
    ft, ex = finetune.metrics, export.metrics
    deploy = str(ft.get("deploy", "optimized"))
    accuracy = ft.get("accuracy", {}) if isinstance(ft.get("accuracy"), dict) else {}
    roles = ex.get("roles") or {}
    precision = (ex.get("deployed") or {}).get("optimized", "fp32")
    served = ((roles.get("optimized") or {}).get("test_accuracy") or {}).get(precision)
    baseline_fp32 = ((roles.get("baseline") or {}).get("test_accuracy") or {}).get("fp32")
    drop = (roles.get("optimized") or {}).get("int8_drop_points")
    if served is not None:
        note = f"`{deploy}` test accuracy as served (ONNX {precision})"
    else:
        note = f"`{deploy}` test accuracy (PyTorch fp32)"
        if precision == "int8" and drop is not None:
            note += f"; served int8, {drop:.2f} points below fp32 on dev"
    parity = ex.get("parity_max_abs_diff")
    if baseline_fp32 is not None:
        labeller, labeller_note = baseline_fp32, "labeller test accuracy as served (ONNX fp32)"
    else:
        labeller = accuracy.get("labeller")
        labeller_note = ("labeller test accuracy (PyTorch); its ONNX fp32 export matches within "
                         f"{parity:.1e} logits" if parity is not None else "labeller test accuracy (PyTorch)")
    scores = {role: ((roles.get(role) or {}).get("test_scores") or {}).get(p)
              for role, p in (("optimized", precision), ("baseline", "fp32"))}
    base_precision = (ex.get("deployed") or {}).get("baseline", "fp32")
    base_served = ((roles.get("baseline") or {}).get("test_accuracy") or {}).get(base_precision)
    return {
        "labeller_deployed": base_served, "labeller_deployed_precision": base_precision,
        "labeller_deployed_scores": ((roles.get("baseline") or {}).get("test_scores") or {}).get(base_precision),
        "optimized": served if served is not None else accuracy.get(deploy), "optimized_name": deploy,
        "optimized_precision": precision, "optimized_note": note, "labeller": labeller,
        "labeller_note": labeller_note, "labeller_pytorch": accuracy.get("labeller"),
        "optimized_scores": scores["optimized"], "labeller_scores": scores["baseline"],
        "labeller_pytorch_scores": (ft.get("test") or {}).get("labeller"),
    }


def judging(finetune: Manifest) -> dict[str, Any] | None:
    """The task's metric, its chance-corrected metric and the test baselines, from the finetune manifest."""
    ft = finetune.metrics
    if not ft.get("baselines"):
        return None  # a finetune stage from before bort recorded baselines
    return {"metric": ft.get("metric"), "chance_metric": ft.get("chance_metric"),
            "baselines": ft["baselines"]["test"]}
