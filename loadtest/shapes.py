"""Architecture-only models: any encoder shape with random weights, exported like bort exports.

Latency does not depend on weight values, so a random model at BERT-large's shape measures what
serving BERT-large costs without BERT-large's weights (none can be installed here). Its answers
mean nothing: everything built here is labelled **speed only**, and no accuracy is reported.

The folder written is what the serving code loads: ``model.onnx``, ``tokenizer.json``,
``config.json`` and ``serving.json`` (labels, precision, maximum length, padding token). fp32 is
Optimum's export; int8 is Optimum's dynamic quantisation with the configuration this CPU supports,
the same recipe ``bort export`` uses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from bort import families as F
from bort.artifacts import atomic_write_json, cpu_info
from bort.assets import cache_dir

log = logging.getLogger(__name__)

SPEED_ONLY = "speed only"


def quantization_target() -> str:
    """Optimum's dynamic-quantisation preset for this CPU (VNNI > AVX-512 > AVX2; arm64)."""
    info = cpu_info()
    isa = set(info["isa"])
    if info["machine"] in ("aarch64", "arm64"):
        return "arm64"
    if isa & {"avx512_vnni", "avx_vnni"}:
        return "avx512_vnni"
    if {"avx512f", "avx512bw", "avx512vl"} <= isa:
        return "avx512"
    return "avx2"


def shape_label(arch: F.Arch, precision: str) -> str:
    """How reports name it, e.g. ``shape 24/16/1024/4096 ONNX fp32 (speed only)``."""
    return f"shape {arch.label()} ONNX {precision} ({SPEED_ONLY})"


def build_random_classifier(arch: F.Arch, labels: list[str], tokenizer_dir: Path, out: Path, seed: int = 0) -> Path:
    """A seeded random BERT sequence classifier at `arch`, saved with `tokenizer_dir`'s tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification

    config = F.hf_config(arch, "bert", num_labels=len(labels), id2label=dict(enumerate(labels)),
                         label2id={name: i for i, name in enumerate(labels)})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    F.load_tokenizer(tokenizer_dir).save_pretrained(out)
    return out


def _export_fp32(model_dir: Path, out: Path) -> None:
    from optimum.exporters.onnx import main_export

    main_export(str(model_dir), output=out, task="text-classification", do_validation=False,
                local_files_only=True)


def _quantize_int8(fp32_dir: Path, out: Path) -> None:
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    qconfig = getattr(AutoQuantizationConfig, quantization_target())(is_static=False)
    ORTQuantizer.from_pretrained(fp32_dir, file_name="model.onnx").quantize(
        save_dir=out, quantization_config=qconfig, file_suffix=None)
    for f in fp32_dir.iterdir():  # tokenizer and config travel with the graph
        if f.is_file() and f.suffix != ".onnx" and not (out / f.name).exists():
            shutil.copy2(f, out / f.name)


def _write_serving(folder: Path, arch: F.Arch, labels: list[str], precision: str, max_seq_len: int) -> None:
    atomic_write_json(folder / "serving.json", {
        "name": f"shape:{arch.label()}:{precision} ({SPEED_ONLY})", "labels": labels, "is_pair": False,
        "precision": precision, "max_seq_len": max_seq_len, "pad_token": "[PAD]", "speed_only": True,
    })


def shape_folder(arch: F.Arch, labels: list[str], precision: str, tokenizer_dir: Path,
                 root: Path | None = None, seed: int = 0, max_seq_len: int = 512) -> Path:
    """The exported folder for (shape, labels, precision), built once and cached.

    Args:
        arch: the encoder shape.
        labels: class names (the head's size; answers are random).
        precision: ``fp32`` or ``int8``.
        tokenizer_dir: a folder whose tokenizer the model uses (MiniLM's: the BERT WordPiece vocabulary).
        root: cache root (default ``$BORT_CACHE/shapes``).
    """
    if precision not in ("fp32", "int8"):
        raise ValueError(f"precision must be fp32 or int8, got {precision!r}")
    key = hashlib.sha256(json.dumps([arch.label(), labels, seed, max_seq_len, quantization_target()]).encode())
    base = (root or cache_dir() / "shapes") / f"{arch.label().replace('/', '-')}-{key.hexdigest()[:10]}"
    final = base / precision
    if (final / "serving.json").is_file():
        return final
    fp32 = base / "fp32"
    if precision == "int8":
        shape_folder(arch, labels, "fp32", tokenizer_dir, root, seed, max_seq_len)
    tmp = base / f".tmp-{precision}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("building %s", shape_label(arch, precision))
    if precision == "fp32":
        torch_dir = build_random_classifier(arch, labels, tokenizer_dir, base / f".torch-{os.getpid()}", seed)
        _export_fp32(torch_dir, tmp)
        shutil.rmtree(torch_dir, ignore_errors=True)
    else:
        _quantize_int8(fp32, tmp)
    _write_serving(tmp, arch, labels, precision, max_seq_len)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # a half-built folder never looks finished
    return final
