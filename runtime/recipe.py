"""The one ONNX recipe: a Hugging Face sequence classifier -> ONNX fp32 -> (graph optimised) -> int8.

``bort export`` (the served files), the search's latency (:mod:`optimize.timing`) and the load
test's architecture-only models (:mod:`loadtest.shapes`) all build their graphs here, so the search
times, for a shape, the graph ``bort export`` writes and ``bort serve`` runs for it:

1. fp32: Optimum's ``main_export`` of a saved classifier folder, task ``text-classification``,
   offline (the classifier head included; dynamic batch and sequence axes; Optimum's opset);
2. optionally ORTOptimizer O2 on that graph (no speedup measured here: ONNX Runtime fuses what
   matters when it loads the graph anyway);
3. int8: dynamic quantisation, ORTQuantizer with the ``AutoQuantizationConfig`` preset for this
   CPU's instruction set; on an O2 graph, where ORTQuantizer fails, onnxruntime's
   ``quantize_dynamic`` told the default tensor type.

:func:`random_classifier` saves a seeded random classifier at any shape: latency does not depend
on weight values.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bort import families as F
from bort.artifacts import cpu_info

log = logging.getLogger(__name__)

QUANTIZATION_TARGETS = ("avx512_vnni", "avx512", "avx2", "arm64")
# Bump when a step below changes the graph it writes: the search's latency cache keys on it.
RECIPE_VERSION = 1
RECIPE = ("optimum main_export (text-classification, sequence-classifier head) -> optional ORTOptimizer O2 "
          "-> dynamic int8 (ORTQuantizer ISA preset; quantize_dynamic on O2 graphs); runtime/recipe.py "
          f"v{RECIPE_VERSION}")


def quantization_target(requested: str = "auto") -> tuple[str, str]:
    """Pick the dynamic-quantisation preset this CPU supports.

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


def recipe_key(precision: str, optimize_graph: bool, target: str) -> str:
    """What a graph built here depends on besides the model, e.g. ``recipe1/o0/int8-avx512_vnni``."""
    quantized = f"int8-{target}" if precision == "int8" else "fp32"
    return f"recipe{RECIPE_VERSION}/{'o2' if optimize_graph else 'o0'}/{quantized}"


def random_classifier(arch: F.Arch, out: Path, *, family: str = "bert", base_config: Any = None,
                      labels: Sequence[str] = ("LABEL_0", "LABEL_1"), tokenizer_dir: Path | None = None,
                      seed: int = 0) -> Path:
    """A seeded random sequence classifier at `arch`, saved in Hugging Face layout at `out`.

    Args:
        family: bert | roberta | mpnet.
        base_config: a config to copy vocabulary and the rest from (the source's); None: the family's.
        labels: class names, in id order (the head's width).
        tokenizer_dir: a folder whose tokenizer is saved alongside (the export copies it; a
            timing-only folder needs none).
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    config = F.hf_config(arch, family, base_config, num_labels=len(labels), id2label=dict(enumerate(labels)),
                         label2id={name: i for i, name in enumerate(labels)})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    if tokenizer_dir is not None:
        F.load_tokenizer(tokenizer_dir).save_pretrained(out)
    return out


def export_fp32(model_dir: Path, out_dir: Path, optimize_graph: bool = False) -> Path:
    """Optimum export of a sequence-classifier folder to ``out_dir/model.onnx`` (offline, local folder).

    The tokenizer and ``config.json`` are saved beside the graph. Returns ``out_dir``.
    """
    import torch
    from optimum.exporters.onnx import main_export

    out_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The traced attention mask's constants: the batch and sequence axes stay dynamic anyway.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # Callers check what they need (bort export: parity against PyTorch); Optimum's own
        # validation reloads the model and runs it again.
        main_export(str(model_dir), output=out_dir, task="text-classification", do_validation=False,
                    local_files_only=True)
    if optimize_graph:
        from optimum.onnxruntime import AutoOptimizationConfig, ORTOptimizer

        scratch = out_dir / ".optimized"
        ORTOptimizer.from_pretrained(out_dir).optimize(AutoOptimizationConfig.O2(), save_dir=scratch)
        (scratch / "model_optimized.onnx").replace(out_dir / "model.onnx")
        shutil.rmtree(scratch)
    return out_dir


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


def quantize_int8(fp32_dir: Path, out_dir: Path, target: str, optimized_graph: bool) -> Path:
    """Dynamic int8 quantisation of ``fp32_dir/model.onnx`` into ``out_dir`` (weights int8,
    activations quantised at run time); the other files of ``fp32_dir`` are copied along."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with _quiet_root_logger():
        _quantize(fp32_dir, out_dir, target, optimized_graph)
    for f in fp32_dir.iterdir():
        if f.is_file() and f.suffix != ".onnx" and not (out_dir / f.name).exists():
            shutil.copy2(f, out_dir / f.name)
    return out_dir


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


def export_model(model_dir: Path, out_root: Path, precision: str, target: str,
                 optimize_graph: bool = False) -> Path:
    """The whole recipe: ``out_root/fp32`` and, for int8, ``out_root/int8``; returns the `precision` folder.

    Raises:
        ValueError: `precision` is neither fp32 nor int8.
    """
    if precision not in ("fp32", "int8"):
        raise ValueError(f"precision must be fp32 or int8, got {precision!r}")
    fp32 = export_fp32(model_dir, out_root / "fp32", optimize_graph)
    if precision == "fp32":
        return fp32
    return quantize_int8(fp32, out_root / "int8", target, optimize_graph)


def vocab_size(model_dir: Path) -> int:
    """The vocabulary size a saved model's ``config.json`` declares."""
    return int(json.loads((model_dir / "config.json").read_text(encoding="utf-8"))["vocab_size"])
