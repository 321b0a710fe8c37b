"""One typed, frozen run configuration, resolved once: defaults <- YAML file <- ``--set`` overrides.

Every stage reads its own section of :class:`RunConfig`. Field names carry their units. Unknown
keys and wrong types are :class:`~bort.errors.ConfigError`\\ s that name the dotted key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bort.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class SourceConfig:
    """The source (teacher) model: ``minilm`` / ``mpnet`` (embedded), a local folder, or a hub name."""

    model: str = "minilm"


@dataclass(frozen=True)
class TaskConfig:
    """The labelled task. ``name``: ``rotten_tomatoes``, ``bbc_news``, a .csv/.jsonl file or a GLUE folder."""

    name: str = "rotten_tomatoes"
    text_column: str = "text"
    text_pair_column: str = ""  # empty: single-text task
    label_column: str = "label"
    group_column: str = ""  # rows sharing a group never straddle splits (identical texts never do)
    labels: tuple[str, ...] = ()  # allowed label names, in id order; empty: sorted labels found in train
    dev_fraction: float = 0.1  # of all rows; for a GLUE folder, of train.tsv (its dev.tsv is the test split)
    test_fraction: float = 0.1  # ignored for a GLUE folder
    max_train_rows: int = 0  # 0: all rows; else a seeded label-stratified sample after splitting
    max_eval_rows: int = 0  # 0: all rows (dev and test each)

    def __post_init__(self) -> None:
        for key in ("dev_fraction", "test_fraction"):
            value = getattr(self, key)
            if not 0.0 <= value < 0.5:
                raise ConfigError(f"task.{key} must be in [0, 0.5), got {value}")
        for key in ("max_train_rows", "max_eval_rows"):
            if getattr(self, key) < 0:
                raise ConfigError(f"task.{key} must be >= 0 (0: all rows), got {getattr(self, key)}")
        if len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"task.labels has duplicates: {list(self.labels)}")
        if not self.name.strip() or not self.text_column or not self.label_column:
            raise ConfigError("task.name, task.text_column and task.label_column must not be empty")


@dataclass(frozen=True)
class CorpusConfig:
    """Unlabelled text for distillation: task texts (train split only), files, dict-gcide."""

    use_task_text: bool = True
    files: tuple[str, ...] = ()  # globs of user .txt files, one sentence or paragraph per line
    use_gcide: bool = False
    max_texts: int = 20000  # 0: no cap; sources fill it in order: task text, files, dict-gcide
    heldout_fraction: float = 0.05

    def __post_init__(self) -> None:
        if self.max_texts < 0:
            raise ConfigError(f"corpus.max_texts must be >= 0 (0: no cap), got {self.max_texts}")
        if not 0.0 <= self.heldout_fraction < 0.5:
            raise ConfigError(f"corpus.heldout_fraction must be in [0, 0.5), got {self.heldout_fraction}")


@dataclass(frozen=True)
class OptimizeConfig:
    """The FPTAS search over (layers, heads, hidden, intermediate) (method.md §2; optimize/README.md)."""

    grid: str = "source"  # source | bort | path to a YAML grid
    layer_fractions: tuple[float, ...] = (0.5, 0.67, 1.0)  # of the source's sizes (grid: source)
    head_fractions: tuple[float, ...] = (0.5, 1.0)
    hidden_fractions: tuple[float, ...] = (0.5, 1.0)
    intermediate_fractions: tuple[float, ...] = (0.5, 1.0)
    num_threads: int = 2  # latency: ONNX Runtime intra-op threads (inter-op 1, sequential)
    batch_size: int = 1
    seq_len: int = 128
    precision: str = "fp32"  # fp32 | int8 (dynamic quantization before timing)
    warmup_runs: int = 5
    timed_runs: int = 30
    max_measured: int = 0  # 0: time every candidate; else a spread subset, the rest predicted
    inversion_tolerance: float = 0.02  # relative slack before a faster larger shape counts as an inversion
    epsilon: float = 0.1
    interval: float = 4.0  # the paper's s
    error_estimator: str = "distill"  # distill (short distillation runs) | proxy (size only: speed-only searches)
    error_steps: int = 0  # 0: ceil(error_steps_scale / (epsilon * interval ** 1.5))
    error_steps_scale: float = 8.0  # defaults (eps 0.1, s 4): 10 steps
    error_batch_size: int = 16
    error_seq_len: int = 64
    error_lr: float = 3e-4
    # The estimate's own training settings (not pretrain.*: the search must not go stale when the
    # pretraining of the chosen shape changes); defaults equal pretrain's, as the estimate predicts it.
    error_init: str = "inherit"  # inherit | random
    error_layer_selection: str = "importance"  # importance | even
    error_weight_decay: float = 0.01
    error_grad_clip: float = 1.0
    weight_clip: float = 4.0
    error_time_budget_s: float = 330.0  # 0: no cap; else stop training candidates once spent
    prune_factor: float = 0.5  # 0: off; see optimize/search.py for the pruning rule
    workers: int = 1  # error-phase workers (1: inline; latency is always timed serially)
    policy: str = "compromise"  # compromise | latency_budget | speedup
    latency_budget_ms: float = 0.0
    speedup_target: float = 0.0
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # (params, latency, error)

    def __post_init__(self) -> None:
        choices = {"precision": ("fp32", "int8"), "policy": ("compromise", "latency_budget", "speedup"),
                   "error_estimator": ("distill", "proxy"), "error_init": ("inherit", "random"),
                   "error_layer_selection": ("importance", "even")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"optimize.{key} must be {' or '.join(allowed)}, got {getattr(self, key)!r}")
        if not 0.0 < self.epsilon < 1.0:
            raise ConfigError(f"optimize.epsilon must be in (0, 1), got {self.epsilon}")
        for key in ("num_threads", "batch_size", "seq_len", "timed_runs", "error_batch_size",
                    "error_seq_len", "workers"):
            if getattr(self, key) < 1:
                raise ConfigError(f"optimize.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("warmup_runs", "max_measured", "error_steps", "error_time_budget_s", "prune_factor",
                    "inversion_tolerance", "latency_budget_ms", "speedup_target", "weight_clip",
                    "error_weight_decay", "error_grad_clip"):
            if getattr(self, key) < 0:
                raise ConfigError(f"optimize.{key} must be >= 0, got {getattr(self, key)}")
        if self.interval <= 0 or self.error_steps_scale <= 0 or self.error_lr <= 0:
            raise ConfigError("optimize.interval, optimize.error_steps_scale and optimize.error_lr must be > 0")
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ConfigError(f"optimize.weights must be non-negative and not all zero, got {list(self.weights)}")
        if self.policy == "latency_budget" and self.latency_budget_ms <= 0:
            raise ConfigError("optimize.policy=latency_budget needs optimize.latency_budget_ms > 0")
        if self.policy == "speedup" and self.speedup_target <= 0:
            raise ConfigError("optimize.policy=speedup needs optimize.speedup_target > 0 (e.g. 3 for 3x)")


@dataclass(frozen=True)
class PretrainConfig:
    """Extraction of the chosen shape and its distillation pretraining."""

    layers: int = 0  # 0: take the shape `bort optimize` chose (all four must be set to override)
    heads: int = 0
    hidden: int = 0
    intermediate: int = 0
    init: str = "inherit"  # inherit | random
    layer_selection: str = "importance"  # importance | even (inherit only)
    importance_batches: int = 4  # corpus batches the activation importance is measured on
    # The step count is the budget, so one config and seed make the same student on any CPU that fits
    # it in the time limit; the limit keeps the stage inside its 10 minutes on a slow day (the schedule
    # still decays to zero, the manifest says `stopped_by: time`, a warning names it). 480 s of time
    # budget alone gave 934 steps (embedding cosine 0.80) on one day and 460 (0.76) on another, and
    # Agora then closed 57% and 33% of the gap; 900 steps took 445 s here (0.79, 51%).
    max_steps: int = 900
    time_budget_s: float = 540.0  # 0: no time limit
    batch_size: int = 32
    seq_len: int = 64
    lr: float = 1e-3  # MiniLM -> 3/12/384/1536, 50 steps: cosine 0.882 at 1e-3 vs 0.876 at 3e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    grad_clip: float = 1.0
    weight_clip: float = 0.0  # 0: no clipping
    checkpoint_every: int = 100
    eval_every: int = 100
    heldout_texts: int = 256  # held-out corpus sentences for the loss and the embedding cosine

    def __post_init__(self) -> None:
        if self.init not in ("inherit", "random"):
            raise ConfigError(f"pretrain.init must be inherit or random, got {self.init!r}")
        if self.layer_selection not in ("importance", "even"):
            raise ConfigError(f"pretrain.layer_selection must be importance or even, got {self.layer_selection!r}")
        shape = (self.layers, self.heads, self.hidden, self.intermediate)
        if any(v < 0 for v in shape) or (any(shape) and not all(shape)):
            raise ConfigError(
                f"pretrain.layers/heads/hidden/intermediate must all be set (> 0) or all 0, got {shape}; "
                "e.g. --set pretrain.layers=3 --set pretrain.heads=12 --set pretrain.hidden=384 "
                "--set pretrain.intermediate=1536"
            )
        for key in ("max_steps", "batch_size", "seq_len", "importance_batches", "heldout_texts"):
            if getattr(self, key) < 1:
                raise ConfigError(f"pretrain.{key} must be >= 1, got {getattr(self, key)}")
        if self.lr <= 0 or not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"pretrain.lr must be > 0 and pretrain.warmup_ratio in [0, 1), "
                              f"got {self.lr} and {self.warmup_ratio}")
        for key in ("time_budget_s", "grad_clip", "weight_clip", "weight_decay", "checkpoint_every", "eval_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"pretrain.{key} must be >= 0, got {getattr(self, key)}")


THETA_KEYS: dict[str, type] = {"lr": float, "wd": float, "warmup": float, "epochs": float, "batch": int,
                               "seed": int}


def parse_theta(text: str, key: str = "finetune.thetas") -> dict[str, float | int]:
    """Parse one Agora hyperparameter set, e.g. ``"lr=5e-5,wd=0.01,warmup=0.1"``.

    Keys: lr (> 0), wd (>= 0), warmup (fraction in [0, 1)), epochs (> 0), batch (>= 1), seed.
    Keys left out take the ``finetune`` section's values.

    Raises:
        ConfigError: naming `key`, for an unknown key, a repeated key or a bad value.
    """
    out: dict[str, float | int] = {}
    for part in (p.strip() for p in text.split(",")):
        name, sep, raw = part.partition("=")
        name = name.strip()
        if not sep or name not in THETA_KEYS:
            raise ConfigError(f"{key}: {part!r} in {text!r} is not key=value with a key among "
                              f"{', '.join(THETA_KEYS)} (e.g. 'lr=5e-5,wd=0.01,warmup=0.1')")
        if name in out:
            raise ConfigError(f"{key}: {name!r} appears twice in {text!r}")
        try:
            value = THETA_KEYS[name](raw.strip())
        except ValueError as e:
            raise ConfigError(f"{key}: {name}={raw.strip()!r} in {text!r} is not "
                              f"{'an integer' if THETA_KEYS[name] is int else 'a number'}") from e
        ok = {"lr": value > 0, "wd": value >= 0, "warmup": 0 <= value < 1, "epochs": value > 0,
              "batch": value >= 1, "seed": True}[name]
        if not ok:
            raise ConfigError(f"{key}: {name}={value} in {text!r} is out of range "
                              "(lr > 0, wd >= 0, 0 <= warmup < 1, epochs > 0, batch >= 1)")
        out[name] = value
    return out


@dataclass(frozen=True)
class FinetuneConfig:
    """Labeller, plain and Agora fine-tuning (method.md section 4; agora/README.md)."""

    student: str = ""  # empty: the model `bort pretrain` made; else a bare-encoder folder
    seq_len: int = 64
    batch_size: int = 32
    eval_batch_size: int = 128
    epochs: float = 2.0  # plain fine-tune, and each theta's first Agora round
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    freeze_word_embeddings: bool = True  # ~35% faster steps on CPU; little to learn there from a task
    num_threads: int = 0  # torch threads while fine-tuning; 0: torch's default (one per core)
    device: str = "auto"  # auto (a CUDA GPU when torch sees one, else cpu) | cpu | cuda | cuda:N
    labeller_epochs: float = 2.0
    labeller_lr: float = 5e-5
    labeller_min_dev_accuracy: float = 2.0 / 3.0
    # Θ: a narrow student (the embedded default's 3/6/192/768) is under-trained by plain's 2 epochs
    # at 5e-5; with 4 epochs at these rates Agora closes 51% of its gap on the student the default
    # pretraining makes (57% on a 934-step one, 33% on a 460-step one; agora/README, "Measured").
    thetas: tuple[str, ...] = ("lr=1e-4,wd=0.01,warmup=0.1,epochs=4", "lr=2e-4,wd=0.01,warmup=0.1,epochs=4")
    pruning: str = "halving"  # halving | paper
    max_rounds: int = 3  # pruning rounds (replays come on top)
    replays: int = 1  # re-runs of a round that did not improve dev, in the whole loop
    warm_start: bool = True  # rounds after the first continue from the best model so far
    round_epochs: float = 1.0  # epochs of a warm-started round over D plus the new points
    points_per_mistake: int = 2  # k
    candidates_per_mistake: int = 12  # G's tries per mistake before the band filter
    max_points_per_round: int = 2000
    max_points: int = 6000  # over the whole loop
    similarity_band: tuple[float, float] = (0.80, 0.98)  # cosine to the original, inclusive
    edit_rate: float = 0.15  # fraction of a text's words G edits (at least one)
    neighbours: int = 8  # nearest word embeddings a substitution picks from
    embedder: str = "source"  # source | labeller: whose mean-pooled embeddings the band uses
    mistakes: str = "all"  # all: every dev mistake (the paper) | teachable: those the labeller gets right
    min_labeller_confidence: float = 0.0  # drop new points the labeller labels less surely
    select_metric: str = "accuracy"  # accuracy | macro_f1: picks the best theta, round and model
    # Fraction of dev held apart to pick θ, round and model; mistakes come from the rest. 0: the paper
    # (both on all of dev, which lets later rounds fit the examples they are scored on).
    selection_holdout: float = 0.0
    ablation: bool = False  # also re-run Agora's warm-started path without the new points (more epochs only)
    time_budget_s: float = 1500.0  # the Agora loop's wall clock; round 1 always runs

    def __post_init__(self) -> None:
        choices = {"pruning": ("halving", "paper"), "embedder": ("source", "labeller"),
                   "mistakes": ("teachable", "all"), "select_metric": ("accuracy", "macro_f1")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"finetune.{key} must be {' or '.join(allowed)}, got {getattr(self, key)!r}")
        if self.num_threads < 0:
            raise ConfigError(f"finetune.num_threads must be >= 0 (0: torch's default), got {self.num_threads}")
        if not re.fullmatch(r"cpu|auto|cuda(:\d+)?", self.device):
            raise ConfigError(f"finetune.device must be cpu, auto, cuda or cuda:N, got {self.device!r}")
        for key in ("seq_len", "batch_size", "eval_batch_size", "max_rounds", "points_per_mistake",
                    "candidates_per_mistake", "neighbours"):
            if getattr(self, key) < 1:
                raise ConfigError(f"finetune.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("epochs", "lr", "labeller_epochs", "labeller_lr", "round_epochs", "time_budget_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"finetune.{key} must be > 0, got {getattr(self, key)}")
        if self.points_per_mistake > self.candidates_per_mistake:
            raise ConfigError("finetune.candidates_per_mistake must be >= finetune.points_per_mistake "
                              f"(G keeps k of its tries), got {self.candidates_per_mistake} < "
                              f"{self.points_per_mistake}")
        low, high = self.similarity_band
        if not -1.0 <= low < high <= 1.0:
            raise ConfigError(f"finetune.similarity_band must be [low, high] with -1 <= low < high <= 1, "
                              f"got {list(self.similarity_band)}")
        if not 0.0 < self.edit_rate <= 1.0 or not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError("finetune.edit_rate must be in (0, 1] and finetune.warmup_ratio in [0, 1)")
        if not 0.0 <= self.labeller_min_dev_accuracy <= 1.0:
            raise ConfigError(f"finetune.labeller_min_dev_accuracy must be in [0, 1], got "
                              f"{self.labeller_min_dev_accuracy}")
        if not 0.0 <= self.selection_holdout < 1.0:
            raise ConfigError(f"finetune.selection_holdout must be in [0, 1) (0: mine and select on all of dev), "
                              f"got {self.selection_holdout}")
        if not 0.0 <= self.min_labeller_confidence < 1.0:
            raise ConfigError(f"finetune.min_labeller_confidence must be in [0, 1), got "
                              f"{self.min_labeller_confidence}")
        if not self.thetas:
            raise ConfigError("finetune.thetas is empty; give at least one set, e.g. ['lr=5e-5,wd=0.01']")
        for i, text in enumerate(self.thetas):
            parse_theta(text, f"finetune.thetas[{i}]")
        if len(set(self.thetas)) != len(self.thetas):
            raise ConfigError("finetune.thetas repeats a set; each hyperparameter set must be distinct")


@dataclass(frozen=True)
class ExportConfig:
    """ONNX export, int8 quantisation, parity and accuracy checks, latency of each variant."""

    quantize: bool = True
    quantization: str = "auto"  # auto (from the CPU's flags) | avx512_vnni | avx512 | avx2 | arm64
    optimize_graph: bool = False  # ORTOptimizer O2 before quantising (no gain measured here)
    parity_atol: float = 1e-4  # max |ONNX fp32 - PyTorch| logit difference on dev texts
    parity_texts: int = 64  # dev texts used for the parity check
    max_int8_drop_points: float = 0.5  # int8 dev accuracy may trail fp32 by this many points
    eval_batch_size: int = 1  # 1 = as single-text requests are served (int8 answers vary with batching)
    num_threads: int = 2
    seq_len: int = 128  # latency measurement: batch 1, this many tokens
    warmup_runs: int = 5
    timed_runs: int = 50
    register_bentoml: bool = True  # add the exports to the BentoML model store ($BENTOML_HOME)

    def __post_init__(self) -> None:
        if self.quantization not in ("auto", "avx512_vnni", "avx512", "avx2", "arm64"):
            raise ConfigError(
                "export.quantization must be auto, avx512_vnni, avx512, avx2 or arm64, "
                f"got {self.quantization!r}"
            )
        for key in ("parity_texts", "eval_batch_size", "num_threads", "seq_len", "timed_runs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"export.{key} must be >= 1, got {getattr(self, key)}")
        if self.parity_atol <= 0 or self.max_int8_drop_points < 0:
            raise ConfigError("export.parity_atol must be > 0 and export.max_int8_drop_points >= 0")


@dataclass(frozen=True)
class ServeConfig:
    """The HTTP service (``bort serve``): model, limits, batching, security, logging."""

    host: str = "127.0.0.1"
    port: int = 3000
    model: str = "optimized"  # optimized | baseline
    num_threads: int = 2
    max_texts: int = 64  # texts (or pairs) per request
    max_chars: int = 2000  # characters per text
    max_body_bytes: int = 1_000_000
    max_seq_len: int = 128  # tokens; longer inputs are truncated and the response says so
    # Merge requests that wait while the model is busy (never waits for more). auto: on for fp32,
    # off for int8, whose dynamic activation scales make answers depend on batch neighbours.
    batching: str = "auto"  # auto | always | never
    max_batch_texts: int = 64  # texts per merged model call
    api_key_env: str = "BORT_API_KEY"  # when this variable is set, requests need X-API-Key
    access_log: bool = False
    trace_requests: bool = False  # OpenTelemetry spans for /classify: ~0.3 ms each; for a tracing exporter
    ort_spin: bool = True  # onnxruntime threads busy-wait between calls (lower latency, more CPU)
    ort_spin_stop: bool = False  # ...but stop busy-waiting when a call returns (frees the CPU for HTTP)
    server_timing: bool = True  # a Server-Timing header on /classify: tokenize, model and app milliseconds
    # A request of at most this many texts runs on the event loop itself when no model call is running
    # (and, where requests are merged, none arrived with it): two thread hand-offs fewer. 0: never.
    inline_max_texts: int = 1
    startup_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.model not in ("optimized", "baseline"):
            raise ConfigError(f"serve.model must be optimized or baseline, got {self.model!r}")
        if self.batching not in ("auto", "always", "never"):
            raise ConfigError(f"serve.batching must be auto, always or never, got {self.batching!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"serve.port must be in 0..65535, got {self.port}")
        for key in ("num_threads", "max_texts", "max_chars", "max_body_bytes", "max_seq_len",
                    "max_batch_texts"):
            if getattr(self, key) < 1:
                raise ConfigError(f"serve.{key} must be >= 1, got {getattr(self, key)}")
        if self.inline_max_texts < 0:
            raise ConfigError(f"serve.inline_max_texts must be >= 0 (0: never inline), got {self.inline_max_texts}")


@dataclass(frozen=True)
class LoadtestConfig:
    """Side-by-side Locust runs against the baseline and the optimised service (``bort loadtest``)."""

    users: tuple[int, ...] = (1, 8)  # one bounded Locust run per user count and model
    duration_s: int = 30  # measured seconds per run, after the warm-up
    warmup_s: int = 5  # excluded from the figures
    baseline: str = "source_onnx"  # source_onnx | source_torch | shape:L/A/H/I (random weights: speed only)
    port: int = 3100  # both services, one after the other, on 127.0.0.1
    mode: str = "closed"  # closed: next request when the last returns | open: constant throughput
    target_rps: float = 0.0  # open mode: total requests/s over all users
    think_time_s: float = 0.0  # closed mode: mean pause between a user's requests
    texts_per_request: int = 1
    max_texts: int = 2000  # test texts in the request pool (0: the whole test split)
    server_cpus: str = ""  # e.g. "0-1": pin both services to these CPUs ("": inherit)
    locust_cpus: str = ""  # the same for Locust
    start_timeout_s: float = 180.0  # a service not ready by then fails the stage
    grace_s: float = 60.0  # Locust is killed at run time + this
    slo_p95_ms: float = 0.0  # optimised p95 budget at every user count; 0: off
    slo_min_speedup: float = 0.0  # rps ratio at most users and p50 ratio at fewest users; 0: off
    slo_max_failure_ratio: float = 0.0  # per model and user count; 0: off

    def __post_init__(self) -> None:
        if not self.users or any(u < 1 for u in self.users):
            raise ConfigError(f"loadtest.users must be a non-empty list of counts >= 1, got {list(self.users)}")
        if self.duration_s < 1 or self.warmup_s < 0:
            raise ConfigError("loadtest.duration_s must be >= 1 and loadtest.warmup_s >= 0")
        if not (self.baseline in ("source_onnx", "source_torch") or self.baseline.startswith("shape:")):
            raise ConfigError("loadtest.baseline must be source_onnx, source_torch or shape:L/A/H/I "
                              f"(e.g. shape:24/16/1024/4096), got {self.baseline!r}")
        if self.mode not in ("closed", "open"):
            raise ConfigError(f"loadtest.mode must be closed or open, got {self.mode!r}")
        if self.mode == "open" and self.target_rps <= 0:
            raise ConfigError("loadtest.mode=open needs loadtest.target_rps > 0 (total requests/s)")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"loadtest.port must be in 1..65535, got {self.port}")
        if self.texts_per_request < 1 or self.max_texts < 0:
            raise ConfigError("loadtest.texts_per_request must be >= 1 and loadtest.max_texts >= 0")
        for key in ("slo_p95_ms", "slo_min_speedup", "slo_max_failure_ratio", "think_time_s"):
            if getattr(self, key) < 0:
                raise ConfigError(f"loadtest.{key} must be >= 0 (0 switches it off), got {getattr(self, key)}")


@dataclass(frozen=True)
class RunConfig:
    """The whole run. One seed for everything."""

    seed: int = 0
    source: SourceConfig = field(default_factory=SourceConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    optimize: OptimizeConfig = field(default_factory=OptimizeConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    loadtest: LoadtestConfig = field(default_factory=LoadtestConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def section_fingerprint(self, *sections: str) -> str:
        """sha256 (first 16 hex) of the seed and the named sections: what a stage's output depends on."""
        data = self.to_dict()
        picked = {"seed": data["seed"], **{name: data[name] for name in sections}}
        blob = json.dumps(picked, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; convert lists to tuples and ints to floats."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
        non_none = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(value, non_none[0], key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string; take it as the number it is
            try:
                number = float(value.strip())
            except ValueError:
                number = None
            if number is not None and math.isfinite(number):
                return number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    """Build dataclass `cls` from a nested dict, naming the dotted key of any error."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"unknown config key {where!r}; known keys: {', '.join(sorted(known))}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, data[f.name], key)
        else:
            kwargs[f.name] = _coerce(data[f.name], tp, key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix or 'config'}: {e}") from e


def _parse_scalar(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict; errors name the file."""
    import yaml

    p = Path(path)
    if not p.is_file():
        named = CONFIG_DIR / f"{path}.yaml"
        if named.is_file():
            p = named
        else:
            raise ConfigError(
                f"config file {str(path)!r} not found (give a path, or one of: "
                f"{', '.join(sorted(x.stem for x in CONFIG_DIR.glob('*.yaml')))})"
            )
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}".splitlines()[0]) from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return data


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["optimize.seq_len=64", ...]`` into a nested dict. Values are parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        dotted, raw = item.split("=", 1)
        parts = [p for p in dotted.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"--set {item!r}: empty key")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
        node[parts[-1]] = _parse_scalar(raw)
    return nested


def resolve(config_files: list[str | Path] | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults <- each YAML file in order <- ``--set`` overrides. The one way to make a RunConfig."""
    data: dict[str, Any] = {}
    for path in config_files or []:
        data = _merge(data, load_yaml(path))
    data = _merge(data, parse_overrides(overrides or []))
    return _build(RunConfig, data, "")


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from :meth:`RunConfig.to_dict` output (e.g. a manifest's config)."""
    return _build(RunConfig, data, "")
