"""The ``source_torch`` baseline: the labeller served in PyTorch, as many teams serve today.

Same HTTP contract as ``bort serve`` (``POST /classify`` with ``{"texts": [...]}`` ->
``{"results": [{"label", "score", "scores"}]}``, ``GET /readyz``), same BentoML server, one
worker; only the runtime differs (PyTorch eager fp32 instead of ONNX Runtime). Configured by
environment variables, so ``bort loadtest`` can start it as a plain command::

    BORT_TORCH_MODEL_DIR=runs/default/finetune/labeller BORT_TORCH_THREADS=2 \\
        python -m bentoml serve loadtest.torch_service:TorchClassifier --host 127.0.0.1 --port 3100
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import bentoml


class TorchPredictor:
    """A Hugging Face sequence classifier in PyTorch: texts in, label and scores out.

    Args:
        folder: Hugging Face folder (safetensors weights, tokenizer, ``config.json``).
        num_threads: torch intra-op threads (the same count the ONNX service gets).
        max_seq_len: truncate inputs to this many tokens.
        labels: class names in id order, when the config only holds ``LABEL_i``.
    """

    def __init__(self, folder: str | Path, num_threads: int = 2, max_seq_len: int = 128,
                 labels: list[str] | None = None) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        torch.set_num_threads(num_threads)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(folder, use_fast=True)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True).eval()
        id2label = {int(k): v for k, v in self.model.config.id2label.items()}
        names = [id2label[i] for i in sorted(id2label)]
        if labels and all(n == f"LABEL_{i}" for i, n in enumerate(names)):
            names = list(labels)
        self.labels = names
        self.max_seq_len = max_seq_len

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        """Per text: ``{"label", "score", "scores": {label: probability}}``."""
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_seq_len,
                             return_tensors="pt")
        with self.torch.inference_mode():
            probs = self.model(**enc).logits.softmax(-1)  # (batch, classes)
        out = []
        for row in probs.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            out.append({"label": self.labels[best], "score": row[best],
                        "scores": dict(zip(self.labels, row, strict=True))})
        return out


@bentoml.service(logging={"access": {"enabled": False}}, workers=1)
class TorchClassifier:
    """BentoML adapter around :class:`TorchPredictor`; settings from ``BORT_TORCH_*`` variables."""

    def __init__(self) -> None:
        labels = json.loads(os.environ.get("BORT_TORCH_LABELS", "[]"))
        self.predictor = TorchPredictor(os.environ["BORT_TORCH_MODEL_DIR"],
                                        num_threads=int(os.environ.get("BORT_TORCH_THREADS", "2")),
                                        max_seq_len=int(os.environ.get("BORT_TORCH_MAX_SEQ_LEN", "128")),
                                        labels=labels)

    @bentoml.api
    def classify(self, texts: list[str]) -> dict[str, Any]:
        """``{"texts": [...]}`` -> ``{"results": [...]}``, one result per text."""
        return {"results": self.predictor.predict(texts)}
