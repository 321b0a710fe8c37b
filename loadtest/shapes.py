"""Architecture-only models: any encoder shape with random weights, exported like bort exports.

Latency does not depend on weight values, so a random model at BERT-large's shape measures what
serving BERT-large costs without BERT-large's weights (none can be installed here). Its answers
mean nothing: everything built here is labelled **speed only**, and no accuracy is reported.

The folder written is what the serving code loads: ``model.onnx``, ``tokenizer.json``,
``config.json`` and ``serving.json`` (labels, precision, maximum length, padding token). The
classifier and its graphs come from :mod:`runtime.recipe`, the recipe ``bort export`` uses and the
search times (fp32: Optimum's export; int8: dynamic quantisation with this CPU's preset).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from bort import families as F
from bort.assets import cache_dir
from runtime import recipe

log = logging.getLogger(__name__)

SPEED_ONLY = "speed only"


def shape_label(arch: F.Arch, precision: str) -> str:
    """How reports name it, e.g. ``shape 24/16/1024/4096 ONNX fp32 (speed only)``."""
    return f"shape {arch.label()} ONNX {precision} ({SPEED_ONLY})"


def shape_folder(arch: F.Arch, labels: list[str], precision: str, tokenizer_dir: Path,
                 root: Path | None = None, seed: int = 0, max_seq_len: int = 512) -> Path:
    """The exported folder for (shape, labels, precision), built once and cached.

    Args:
        arch: the encoder shape.
        labels: class names (the head's size; answers are random).
        precision: ``fp32``, ``int8`` (dynamic) or ``int8_static`` (calibrated on random token ids:
            speed only, like the weights).
        tokenizer_dir: a folder whose tokenizer the model uses (MiniLM's: the BERT WordPiece vocabulary).
        root: cache root (default ``$BORT_CACHE/shapes``).
    """
    recipe.check_precision(precision)
    target, _ = recipe.quantization_target()
    key = hashlib.sha256(json.dumps([arch.label(), labels, seed, max_seq_len, target, recipe.RECIPE_VERSION]).encode())
    base = (root or cache_dir() / "shapes") / f"{arch.label().replace('/', '-')}-{key.hexdigest()[:10]}"
    final = base / precision
    if (final / "serving.json").is_file():
        return final
    fp32 = base / "fp32"
    if precision != "fp32":
        shape_folder(arch, labels, "fp32", tokenizer_dir, root, seed, max_seq_len)
    tmp = base / f".tmp-{precision}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("building %s", shape_label(arch, precision))
    if precision == "fp32":
        torch_dir = recipe.random_classifier(arch, base / f".torch-{os.getpid()}", labels=labels,
                                             tokenizer_dir=tokenizer_dir, seed=seed)
        recipe.export_fp32(torch_dir, tmp)
        shutil.rmtree(torch_dir, ignore_errors=True)
    elif precision == "int8":
        recipe.quantize_int8(fp32, tmp, target, optimized_graph=False)
    else:
        calibration = recipe.random_calibration(recipe.vocab_size(fp32), min(128, max_seq_len), seed=seed,
                                                input_names=recipe.graph_inputs(fp32))
        recipe.quantize_static_int8(fp32, tmp, target, False, calibration)
    recipe.write_serving(tmp, labels=labels, is_pair=False, precision=precision, max_seq_len=max_seq_len,
                         name=f"shape:{arch.label()}:{precision} ({SPEED_ONLY})", speed_only=True,
                         quantization=recipe.QUANTIZATION[precision])
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # a half-built folder never looks finished
    return final
