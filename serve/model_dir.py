"""``bort serve --model-dir DIR``: serve a folder that is not a run's deployed export.

Two kinds of folder are accepted:

- one ``bort export`` wrote (``model.onnx``, ``tokenizer.json``, ``serving.json``): served as is;
- a Hugging Face sequence classifier (``config.json``, ``*.safetensors``, a tokenizer): exported
  to ONNX fp32 on the fly with :mod:`runtime.recipe` (the recipe ``bort export`` uses), checked
  against PyTorch, given the ``serving.json`` sidecar the predictor reads (labels from the
  model's ``id2label``), and cached in ``$BORT_CACHE/serve/<hash>``, keyed by the folder's
  weights, config and tokenizer files and the recipe's version, so the next start is instant.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from bort.artifacts import sha256_file
from bort.assets import cache_dir
from bort.errors import ArtifactError
from runtime import recipe
from serve import onnx_export as X
from serve.predictor import SERVING_FILE, read_serving

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spm.model")
PARITY_TEXTS = ["a gripping, beautifully acted film", "dull and lifeless from start to finish"]


def servable_folder(folder: Path, parity_atol: float = 1e-4) -> Path:
    """The exported folder to serve for `folder`: itself, or its cached on-the-fly export.

    Raises:
        ArtifactError: `folder` is neither an exported folder nor a Hugging Face sequence classifier.
    """
    folder = Path(folder).expanduser().resolve()
    if (folder / SERVING_FILE).is_file():
        read_serving(folder)  # names any file the predictor needs that is missing
        return folder
    check_classifier(folder)
    return cached_export(folder, parity_atol)


def check_classifier(folder: Path) -> None:
    """That `folder` holds a Hugging Face sequence classifier with safetensors weights and a tokenizer.

    Raises:
        ArtifactError: naming what is missing and what the folder should hold.
    """
    expected = ("expected a folder `bort export` wrote (model.onnx, tokenizer.json, serving.json) or a "
                "Hugging Face sequence classifier (config.json, *.safetensors, tokenizer files)")
    if not folder.is_dir():
        raise ArtifactError(f"--model-dir {folder} is not a folder; {expected}")
    missing = [name for name, ok in (("config.json", (folder / "config.json").is_file()),
                                     ("*.safetensors", any(folder.glob("*.safetensors"))),
                                     ("tokenizer files", any((folder / f).is_file() for f in TOKENIZER_FILES)))
               if not ok]
    if missing:
        raise ArtifactError(f"--model-dir {folder} has no {', '.join(missing)}; {expected}")
    architectures = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ArtifactError(f"--model-dir {folder} holds {architectures or 'an unnamed architecture'}, not a "
                            "sequence classifier (*ForSequenceClassification); fine-tune one first")


def folder_hash(folder: Path) -> str:
    """sha256 over the recipe's version and the weights, config and tokenizer files (names and contents)."""
    files = sorted([*folder.glob("*.safetensors"), folder / "config.json",
                    *(folder / f for f in TOKENIZER_FILES if (folder / f).is_file())])
    h = hashlib.sha256(f"recipe{recipe.RECIPE_VERSION}".encode())
    for path in files:
        h.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return h.hexdigest()[:16]


def cached_export(model_dir: Path, parity_atol: float) -> Path:
    """``$BORT_CACHE/serve/<hash>/fp32``, exported now unless an earlier start already did."""
    root = cache_dir() / "serve" / folder_hash(model_dir)
    final = root / "fp32"
    if (final / SERVING_FILE).is_file():
        log.info("serving %s from its cached export %s", model_dir, final)
        return final
    tmp = root / f".tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("exporting %s to ONNX fp32 (runtime.recipe) into %s", model_dir, final)
    try:
        export_classifier(model_dir, tmp, parity_atol)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)  # a half-written export never looks finished
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def export_classifier(model_dir: Path, out: Path, parity_atol: float) -> dict[str, Any]:
    """fp32 export, ``serving.json`` (labels from ``id2label``) and a parity check against PyTorch."""
    recipe.export_fp32(model_dir, out)
    if not (out / "tokenizer.json").is_file():
        raise ArtifactError(f"{model_dir}: its tokenizer has no fast version (tokenizer.json), which the "
                            "service needs; save the model with a fast tokenizer")
    labels = X.model_labels(model_dir)
    if not labels:
        raise ArtifactError(f"{model_dir}/config.json has no id2label; the service needs class names")
    recipe.write_serving(out, labels=labels, is_pair=False, precision="fp32", name=f"{model_dir.name}:fp32",
                    max_seq_len=X.model_max_seq_len(model_dir))
    return X.check_parity(model_dir, out, PARITY_TEXTS, None, seq_len=32, atol=parity_atol)
