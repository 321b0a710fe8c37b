"""The mechanics of ``bort export``: Optimum ONNX export, int8 quantisation, and the checks.

Each function takes and returns folders, so :mod:`serve.export` reads like a table of contents.
Every folder written here is self-contained (``model.onnx``, tokenizer files, ``config.json``,
``serving.json``): the service needs nothing else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bort.artifacts import atomic_write_json, cpu_info
from bort.errors import ArtifactError, BortError
from serve.predictor import SERVING_FILE, Predictor

log = logging.getLogger(__name__)

QUANTIZATION_TARGETS = ("avx512_vnni", "avx512", "avx2", "arm64")


class ParityError(BortError):
    """The ONNX graph does not reproduce the PyTorch model within the tolerance."""


def quantization_target(requested: str = "auto") -> tuple[str, str]:
    """Pick the dynamic-quantisation configuration this CPU supports.

    Returns:
        ``(target, why)``: one of :data:`QUANTIZATION_TARGETS` and the flags that decided it.
    """
    if requested != "auto":
        return requested, "set by export.quantization"
    info = cpu_info()
    isa = set(info["isa"])
    if info["machine"] in ("aarch64", "arm64"):
        return "arm64", f"machine {info['machine']}"
    if isa & {"avx512_vnni", "avx_vnni"}:
        # VNNI multiplies u8 x s8 without saturating: no reduced range needed.
        return "avx512_vnni", "cpu flag " + ", ".join(sorted(isa & {"avx512_vnni", "avx_vnni"}))
    if {"avx512f", "avx512bw", "avx512vl"} <= isa:
        return "avx512", "cpu flags avx512f, avx512bw, avx512vl"
    if "avx2" in isa:
        return "avx2", "cpu flag avx2"
    return "avx2", "no AVX2/AVX-512/VNNI flag found; AVX2 settings as the portable fallback"


def labels_of(model_dir: Path, task_labels: list[str]) -> list[str]:
    """Class names in id order: the model's ``id2label`` unless it only holds ``LABEL_i`` names."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    id2label = {int(k): v for k, v in (config.get("id2label") or {}).items()}
    names = [id2label[i] for i in sorted(id2label)]
    if not names or all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        names = list(task_labels)
    if len(names) != len(task_labels) or set(names) != set(task_labels):
        raise ArtifactError(
            f"{model_dir}: the model's labels {names} do not match the task's labels {task_labels}; "
            "rerun `bort finetune` for this task"
        )
    return names


def export_fp32(model_dir: Path, out_dir: Path, optimize_graph: bool = False) -> None:
    """Optimum export of a sequence classifier to ``out_dir/model.onnx`` (offline, local folder)."""
    from optimum.exporters.onnx import main_export

    if not (model_dir / "config.json").is_file():
        raise ArtifactError(f"{model_dir} has no config.json; rerun `bort finetune`")
    out_dir.mkdir(parents=True, exist_ok=True)
    # Our own parity check below replaces Optimum's validation (which reloads the model).
    main_export(str(model_dir), output=out_dir, task="text-classification", do_validation=False,
                local_files_only=True)
    if optimize_graph:
        from optimum.onnxruntime import AutoOptimizationConfig, ORTOptimizer

        scratch = out_dir / ".optimized"
        ORTOptimizer.from_pretrained(out_dir).optimize(AutoOptimizationConfig.O2(), save_dir=scratch)
        (scratch / "model_optimized.onnx").replace(out_dir / "model.onnx")
        shutil.rmtree(scratch)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime's quantiser logs one INFO line per tensor on the root logger: hide them."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(fp32_dir: Path, out_dir: Path, target: str, optimized_graph: bool) -> None:
    """Dynamic int8 quantisation of ``fp32_dir/model.onnx`` into ``out_dir`` (weights int8,
    activations quantised at run time)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with _quiet_root_logger():
        _quantize(fp32_dir, out_dir, target, optimized_graph)
    for f in fp32_dir.iterdir():
        if f.is_file() and f.suffix != ".onnx" and not (out_dir / f.name).exists():
            shutil.copy2(f, out_dir / f.name)


def _quantize(fp32_dir: Path, out_dir: Path, target: str, optimized_graph: bool) -> None:
    if optimized_graph:
        # ORTQuantizer fails on O2/O3 graphs ("Unable to find data type ... DefaultTensorType");
        # onnxruntime's own quantize_dynamic works there when told the default tensor type.
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(fp32_dir / "model.onnx", out_dir / "model.onnx", weight_type=QuantType.QInt8,
                         per_channel=True, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    else:
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig

        qconfig = getattr(AutoQuantizationConfig, target)(is_static=False)
        ORTQuantizer.from_pretrained(fp32_dir, file_name="model.onnx").quantize(
            save_dir=out_dir, quantization_config=qconfig, file_suffix=None)


def write_serving(folder: Path, *, labels: list[str], is_pair: bool, precision: str, name: str,
                  max_seq_len: int) -> None:
    """The small sidecar the predictor reads: what the folder classifies and how."""
    tokenizer_config = folder / "tokenizer_config.json"
    pad = "[PAD]"
    if tokenizer_config.is_file():
        pad = json.loads(tokenizer_config.read_text(encoding="utf-8")).get("pad_token") or pad
    atomic_write_json(folder / SERVING_FILE, {
        "name": name, "labels": labels, "is_pair": is_pair, "precision": precision,
        "max_seq_len": max_seq_len, "pad_token": pad if isinstance(pad, str) else pad.get("content"),
    })


def model_max_seq_len(model_dir: Path) -> int:
    """Longest input the model's position table allows (RoBERTa reserves padding_idx + 1)."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    positions = int(config.get("max_position_embeddings", 512))
    offset = 2 if config.get("model_type") in ("roberta", "xlm-roberta", "mpnet") else 0
    return positions - offset


def check_parity(model_dir: Path, fp32_dir: Path, texts: list[str], pairs: list[Any] | None,
                 seq_len: int, atol: float) -> dict[str, Any]:
    """Max |logit difference| between PyTorch and the fp32 ONNX graph on the same token ids.

    Also checks the serving tokenizer (``tokenizers`` on ``tokenizer.json``) gives the same ids
    as the Hugging Face tokenizer the model was trained with.

    Raises:
        ParityError: the difference exceeds ``atol``, or the tokenizers disagree.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    predictor = Predictor(fp32_dir, num_threads=torch.get_num_threads(), max_seq_len=seq_len)
    batch = predictor.tokenize(texts, pairs)
    hf = AutoTokenizer.from_pretrained(model_dir, use_fast=True)
    first, second = ([p[0] for p in pairs], [p[1] for p in pairs]) if pairs else (texts, None)
    hf_ids = hf(first, second, padding=True, truncation=True, max_length=predictor.max_seq_len,
                return_tensors="np")["input_ids"]
    if hf_ids.shape != batch.feeds["input_ids"].shape or not (hf_ids == batch.feeds["input_ids"]).all():
        raise ParityError(f"{fp32_dir}/tokenizer.json tokenises differently from {model_dir}'s tokenizer")
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True).eval()
    with torch.inference_mode():
        torch_logits = model(**{k: torch.from_numpy(v) for k, v in batch.feeds.items()}).logits.numpy()
    onnx_logits = predictor.logits(batch.feeds)  # (batch, classes)
    diff = float(np.abs(torch_logits - onnx_logits).max())
    if not diff < atol:
        raise ParityError(
            f"ONNX fp32 logits differ from PyTorch by {diff:.3g} on {len(texts)} dev texts "
            f"(export.parity_atol={atol}); the export of {model_dir} is wrong. Raise the tolerance "
            "only if the model is known to be numerically sensitive"
        )
    return {"parity_max_abs_diff": diff, "parity_texts": len(texts), "tokenizer_match": True}


def split_accuracy(folder: Path, examples: list[Any], is_pair: bool, task_labels: list[str], *,
                   num_threads: int, seq_len: int, batch_size: int, desc: str) -> float:
    """Accuracy (0-1) of an exported folder on one split's examples (``text``, ``text_pair``, ``label``).

    ``label`` indexes ``task_labels``; the model's class ids are mapped through their names, so a
    model whose label order differs from the task's is still scored right.
    """
    from tqdm.auto import tqdm

    predictor = Predictor(folder, num_threads=num_threads, max_seq_len=seq_len)
    to_task = np.array([task_labels.index(name) for name in predictor.labels])  # model id -> task id
    correct = 0
    for start in tqdm(range(0, len(examples), batch_size), desc=desc, leave=False):
        chunk = examples[start:start + batch_size]
        pairs = [(e.text, e.text_pair) for e in chunk] if is_pair else None
        batch = predictor.tokenize([e.text for e in chunk], pairs)
        predicted = to_task[predictor.logits(batch.feeds).argmax(axis=-1)]
        correct += int(sum(int(p) == e.label for p, e in zip(predicted, chunk, strict=True)))
    return correct / max(len(examples), 1)


def measure_latency(folder: Path, *, seq_len: int, num_threads: int, warmup_runs: int,
                    timed_runs: int, seed: int = 0) -> dict[str, float]:
    """Model-only latency in ms at batch 1 and exactly ``seq_len`` tokens (no tokenisation).

    Returns:
        ``{"p50", "p90", "p99", "mean", "runs"}``.
    """
    predictor = Predictor(folder, num_threads=num_threads, max_seq_len=seq_len)
    rng = np.random.default_rng(seed)
    vocab = predictor.tokenizer.get_vocab_size()
    feeds = {
        "input_ids": rng.integers(1000, vocab, size=(1, seq_len), dtype=np.int64),
        "attention_mask": np.ones((1, seq_len), dtype=np.int64),
        "token_type_ids": np.zeros((1, seq_len), dtype=np.int64),
    }
    feeds = {k: v for k, v in feeds.items() if k in predictor.input_names}
    return time_calls(lambda: predictor.logits(feeds), warmup_runs, timed_runs)


def time_calls(call: Any, warmup_runs: int, timed_runs: int) -> dict[str, float]:
    """Percentiles in ms of ``timed_runs`` calls after ``warmup_runs`` untimed ones."""
    for _ in range(warmup_runs):
        call()
    times = []
    for _ in range(timed_runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    return {"p50": round(float(p50), 3), "p90": round(float(p90), 3), "p99": round(float(p99), 3),
            "mean": round(float(np.mean(times)), 3), "runs": timed_runs}


def onnx_size_mb(folder: Path) -> float:
    """Size of ``model.onnx`` in MB."""
    return round((folder / "model.onnx").stat().st_size / 1e6, 2)
