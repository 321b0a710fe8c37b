"""One typed, frozen run configuration, resolved once: defaults <- YAML file <- ``--set`` overrides.

Every stage reads its own section of :class:`RunConfig`. Field names carry their units. The
schema is declared with pydantic: types, ranges and choices sit beside each field, and a few
model validators hold the rules that tie fields together. Any mistake is a
:class:`~bort.errors.ConfigError` of one line that names the dotted key, what was expected and what
was given. The service validates its own settings (``BORT_SERVE_CONFIG``) with the same
:class:`ServeConfig` at start-up.

Why pydantic over the dataclasses this replaced: 147 lines of hand-written range checks became
field declarations, and the messages a user sees did not get worse (``optimize.epsilon: must be
< 1, got 1.5``; ``unknown config key 'optimize.seq_lenn'``), because :func:`_message` rewrites
pydantic's errors into bort's one-line form.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from bort.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def _fail(message: str) -> PydanticCustomError:
    """A field-level error whose text is `message` as it is (the dotted key is added in front)."""
    return PydanticCustomError("invalid", "{message}", {"message": message})


def _number(value: Any) -> Any:
    """A number, also from a string: YAML 1.1 reads ``1e-4`` (no dot) as one. Never a bool."""
    if isinstance(value, bool):
        raise PydanticCustomError("number", "expected a number")
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise PydanticCustomError("number", "expected a number") from None
    if not isinstance(value, int | float):
        raise PydanticCustomError("number", "expected a number")
    return value


Num = Annotated[float, BeforeValidator(_number)]
Int = StrictInt
Str = StrictStr
Bool = StrictBool


class Section(BaseModel):
    """A config section: frozen, unknown keys refused, numbers finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, validate_default=False)


class SourceConfig(Section):
    """The source (teacher) model: ``minilm`` / ``mpnet`` (embedded), a local folder, or a hub name."""

    model: Str = Field("minilm", min_length=1)


class TaskConfig(Section):
    """The labelled task. ``name``: ``rotten_tomatoes``, ``bbc_news``, a .csv/.jsonl file or a GLUE folder."""

    name: Str = Field("rotten_tomatoes", min_length=1, pattern=r"\S")
    text_column: Str = Field("text", min_length=1)
    text_pair_column: Str = ""  # empty: single-text task
    label_column: Str = Field("label", min_length=1)
    group_column: Str = ""  # rows sharing a group never straddle splits (identical texts never do)
    labels: tuple[Str, ...] = ()  # allowed label names, in id order; empty: sorted labels found in train
    # Column names of a GLUE TSV that has no header line, in file order (CoLA: [source, label,
    # original_label, sentence]); then task.text_column / task.label_column pick among them. Empty: a header.
    tsv_columns: tuple[Str, ...] = ()
    dev_fraction: Num = Field(0.1, ge=0, lt=0.5)  # of all rows; for a GLUE folder, of train.tsv (its dev.tsv is the test split)
    test_fraction: Num = Field(0.1, ge=0, lt=0.5)  # ignored for a GLUE folder
    max_train_rows: Int = Field(0, ge=0)  # 0: all rows; else a seeded label-stratified sample after splitting
    max_eval_rows: Int = Field(0, ge=0)  # 0: all rows (dev and test each)
    max_dev_rows: Int = Field(0, ge=0)  # dev alone (e.g. no larger than a small train); 0: max_eval_rows
    # What the task is judged by: Θ, the round and the deployed model are picked by it, and the deploy
    # gate measures it against the majority baseline. auto: accuracy when the classes are balanced
    # (largest class within 10 points of an even share), else the chance-corrected metric (MCC for two
    # classes, macro-F1 for more), which a constant classifier cannot raise (bort/metrics.py).
    metric: Literal["auto", "accuracy", "macro_f1", "mcc", "balanced_accuracy"] = "auto"

    @model_validator(mode="after")
    def _distinct_labels(self) -> TaskConfig:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"task.labels has duplicates: {list(self.labels)}")
        return self


class CorpusConfig(Section):
    """Unlabelled text for distillation: task texts (train split only), files, dict-gcide."""

    use_task_text: Bool = True
    files: tuple[Str, ...] = ()  # globs of user .txt files, one sentence or paragraph per line
    use_gcide: Bool = False
    max_texts: Int = Field(20000, ge=0)  # 0: no cap; sources fill it in order: task text, files, dict-gcide
    heldout_fraction: Num = Field(0.05, ge=0, lt=0.5)


class OptimizeConfig(Section):
    """The FPTAS search over (layers, heads, hidden, intermediate) (method.md §2; optimize/README.md)."""

    grid: Str = "source"  # source | bort | path to a YAML grid
    layer_fractions: tuple[Num, ...] = (0.5, 0.67, 1.0)  # of the source's sizes (grid: source)
    head_fractions: tuple[Num, ...] = (0.5, 1.0)
    hidden_fractions: tuple[Num, ...] = (0.5, 1.0)
    intermediate_fractions: tuple[Num, ...] = (0.5, 1.0)
    # What latency the search ranks by. served: the p50 a caller of the endpoint waits for at one user,
    # predicted as the service's fixed cost (measured once on this machine through `bort serve`) plus
    # the model's latency at the task's median token length (optimize/served.py). model: the model
    # alone at seq_len tokens.
    objective: Literal["served", "model"] = "served"
    num_threads: Int = Field(2, ge=1)  # latency: ONNX Runtime intra-op threads (inter-op 1, sequential)
    batch_size: Int = Field(1, ge=1)
    seq_len: Int = Field(128, ge=1)  # objective=model: tokens timed; served: the cap on the median length
    # The precision latency is timed at. auto: the one `bort export` would deploy on this CPU for the
    # source's shape family, speed permitting (runtime/speed.py on the source's shape: int8 variants that
    # serve >= export.min_speedup x fp32's texts/s; accuracy is export's to check). Measured once per
    # machine and cached. fp32, int8 (dynamic) and int8_static (calibrated): that one.
    precision: Literal["auto", "fp32", "int8", "int8_static"] = "auto"
    # The search times the graph `bort export` writes for a shape: set these as export.* is set.
    optimize_graph: Bool = False
    quantization: Literal["auto", "avx512_vnni", "avx512", "avx2", "arm64"] = "auto"
    warmup_runs: Int = Field(5, ge=0)
    timed_runs: Int = Field(30, ge=1)
    max_measured: Int = Field(0, ge=0)  # 0: time every candidate; else a spread subset, the rest predicted
    inversion_tolerance: Num = Field(0.02, ge=0)  # relative slack before a faster larger shape counts as an inversion
    epsilon: Num = Field(0.1, gt=0, lt=1)
    interval: Num = Field(4.0, gt=0)  # the paper's s
    error_estimator: Literal["distill", "proxy"] = "distill"  # proxy: size only (speed-only searches)
    error_steps: Int = Field(0, ge=0)  # 0: ceil(error_steps_scale / (epsilon * interval ** 1.5))
    error_steps_scale: Num = Field(8.0, gt=0)  # defaults (eps 0.1, s 4): 10 steps
    error_batch_size: Int = Field(16, ge=1)
    error_seq_len: Int = Field(64, ge=1)
    error_lr: Num = Field(3e-4, gt=0)
    # The estimate's own training settings (not pretrain.*: the search must not go stale when the
    # pretraining of the chosen shape changes); defaults equal pretrain's, as the estimate predicts it.
    error_init: Literal["inherit", "random"] = "inherit"
    error_layer_selection: Literal["importance", "even"] = "importance"
    error_weight_decay: Num = Field(0.01, ge=0)
    error_grad_clip: Num = Field(1.0, ge=0)
    weight_clip: Num = Field(4.0, ge=0)
    error_time_budget_s: Num = Field(330.0, ge=0)  # 0: no cap; else stop training candidates once spent
    prune_factor: Num = Field(0.5, ge=0)  # 0: off; see optimize/search.py for the pruning rule
    workers: Int = Field(1, ge=1)  # process-pool size of the error phase (executor process, or auto with > 1)
    # Where candidates' error estimates run: inline (this process), process (a local pool of `workers`),
    # ray (Ray tasks of ray_cpus_per_task CPUs each; optimize/README.md, "Running the search on a
    # cluster"). auto: inline for workers 1, process for more.
    executor: Literal["auto", "inline", "process", "ray"] = "auto"
    ray_address: Str = ""  # executor ray: "" starts a local Ray instance; "auto" or host:port joins a cluster
    ray_cpus_per_task: Num = Field(1.0, gt=0)  # CPUs each error task declares (its torch threads, rounded up)
    # executor ray: latency is measured on the node offering this custom resource (the serving hardware;
    # one measurement at a time per node). "": on this machine, in this process.
    latency_resource: Str = "bort_target"
    policy: Literal["compromise", "latency_budget", "speedup"] = "compromise"
    latency_budget_ms: Num = Field(0.0, ge=0)
    speedup_target: Num = Field(0.0, ge=0)
    weights: tuple[Num, Num, Num] = (1.0, 1.0, 1.0)  # (params, latency, error)

    @model_validator(mode="after")
    def _policy_and_weights(self) -> OptimizeConfig:
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError(f"optimize.weights must be non-negative and not all zero, got {list(self.weights)}")
        if self.policy == "latency_budget" and self.latency_budget_ms <= 0:
            raise ValueError("optimize.policy=latency_budget needs optimize.latency_budget_ms > 0")
        if self.policy == "speedup" and self.speedup_target <= 0:
            raise ValueError("optimize.policy=speedup needs optimize.speedup_target > 0 (e.g. 3 for 3x)")
        return self


class PretrainConfig(Section):
    """Extraction of the chosen shape and its distillation pretraining."""

    layers: Int = Field(0, ge=0)  # 0: take the shape `bort optimize` chose (all four must be set to override)
    heads: Int = Field(0, ge=0)
    hidden: Int = Field(0, ge=0)
    intermediate: Int = Field(0, ge=0)
    init: Literal["inherit", "random"] = "inherit"
    layer_selection: Literal["importance", "even"] = "importance"  # inherit only
    importance_batches: Int = Field(4, ge=1)  # corpus batches the activation importance is measured on
    # The step count is the budget, so one config and seed make the same student on any CPU. The time
    # limit is a safety net, not a budget: at 540 s it stopped a slower AMD host at step 622 of 900 (and
    # Agora then closed 49% of the gap, not 51-72%), so it sits far above the 445 s the steps take here;
    # a stage that runs over its own budget (budgets.pretrain_s) says so instead. If the limit binds, the
    # schedule still decays to zero, the manifest says `stopped_by: time` and a warning names it.
    max_steps: Int = Field(900, ge=1)
    time_budget_s: Num = Field(1800.0, ge=0)  # 0: no time limit
    batch_size: Int = Field(32, ge=1)
    seq_len: Int = Field(64, ge=1)
    lr: Num = Field(1e-3, gt=0)  # MiniLM -> 3/12/384/1536, 50 steps: cosine 0.882 at 1e-3 vs 0.876 at 3e-4
    weight_decay: Num = Field(0.01, ge=0)
    warmup_ratio: Num = Field(0.06, ge=0, lt=1)
    grad_clip: Num = Field(1.0, ge=0)
    weight_clip: Num = Field(0.0, ge=0)  # 0: no clipping
    checkpoint_every: Int = Field(100, ge=0)
    eval_every: Int = Field(100, ge=0)
    heldout_texts: Int = Field(256, ge=1)  # held-out corpus sentences for the loss and the embedding cosine
    device: Str = Field("auto", pattern=r"^(cpu|auto|cuda(:\d+)?)$")  # auto: a CUDA GPU when torch sees one
    # bf16: mixed precision (matrix products in bfloat16, weights fp32); auto: bf16 where the CPU or GPU
    # has native bfloat16 products, fp32 elsewhere (bort/devices.py). Served models are unaffected.
    precision: Literal["fp32", "bf16", "auto"] = "fp32"

    @model_validator(mode="after")
    def _whole_shape(self) -> PretrainConfig:
        shape = (self.layers, self.heads, self.hidden, self.intermediate)
        if any(shape) and not all(shape):
            raise ValueError(
                f"pretrain.layers/heads/hidden/intermediate must all be set (> 0) or all 0, got {shape}; "
                "e.g. --set pretrain.layers=3 --set pretrain.heads=12 --set pretrain.hidden=384 "
                "--set pretrain.intermediate=1536")
        return self


THETA_KEYS: dict[str, type] = {"lr": float, "wd": float, "warmup": float, "epochs": float, "batch": int,
                               "seed": int}


class Theta(Section):
    """One Agora hyperparameter set, parsed once from its text, e.g. ``"lr=5e-5,wd=0.01,warmup=0.1"``.

    Keys left out (None here) take the ``finetune`` section's values: :meth:`FinetuneConfig.theta_values`.
    The text is kept as written: it names the set in reports and fingerprints.
    """

    text: Str
    lr: Num | None = Field(None, gt=0)
    wd: Num | None = Field(None, ge=0)
    warmup: Num | None = Field(None, ge=0, lt=1)
    epochs: Num | None = Field(None, gt=0)
    batch: Int | None = Field(None, ge=1)
    seed: Int | None = None


def parse_theta(text: Any) -> Any:
    """``"lr=5e-5,wd=0.01"`` -> the fields of a :class:`Theta`; errors say which part is wrong."""
    if isinstance(text, Theta | dict):
        return text
    if not isinstance(text, str):
        raise _fail("expected a string like 'lr=5e-5,wd=0.01,warmup=0.1'")
    out: dict[str, Any] = {"text": text}
    for part in (p.strip() for p in text.split(",")):
        name, sep, raw = part.partition("=")
        name = name.strip()
        if not sep or name not in THETA_KEYS:
            raise _fail(f"{part!r} in {text!r} is not key=value with a key among {', '.join(THETA_KEYS)} "
                        "(e.g. 'lr=5e-5,wd=0.01,warmup=0.1')")
        if name in out:
            raise _fail(f"{name!r} appears twice in {text!r}")
        try:
            out[name] = THETA_KEYS[name](raw.strip())
        except ValueError:
            kind = "an integer" if THETA_KEYS[name] is int else "a number"
            raise _fail(f"{name}={raw.strip()!r} in {text!r} is not {kind}") from None
    return out


ThetaSet = Annotated[Theta, BeforeValidator(parse_theta), PlainSerializer(lambda t: t.text, return_type=str)]


class FinetuneConfig(Section):
    """Labeller, plain and Agora fine-tuning (method.md section 4; agora/README.md)."""

    student: Str = ""  # empty: the model `bort pretrain` made; else a bare-encoder folder
    seq_len: Int = Field(64, ge=1)
    batch_size: Int = Field(32, ge=1)
    eval_batch_size: Int = Field(128, ge=1)
    epochs: Num = Field(2.0, gt=0)  # plain fine-tune, and each theta's first Agora round
    # Every fine-tune (labeller, plain, distil, each θ, Agora's rounds) takes at least this many
    # optimiser steps: more epochs on a small training set. With the 2 epochs alone, a MiniLM
    # labeller on 250 or 500 Rotten Tomatoes texts (16 or 32 steps) learned nothing (MCC 0, every
    # seed: bench/results/agora_curve.md). Binds below batch_size * min_steps / epochs texts.
    min_steps: Int = Field(300, ge=0)
    lr: Num = Field(5e-5, gt=0)
    weight_decay: Num = Field(0.01, ge=0)
    warmup_ratio: Num = Field(0.1, ge=0, lt=1)
    grad_clip: Num = Field(1.0, ge=0)
    freeze_word_embeddings: Bool = True  # ~35% faster steps on CPU; little to learn there from a task
    num_threads: Int = Field(0, ge=0)  # torch threads while fine-tuning; 0: torch's default (one per core)
    device: Str = Field("auto", pattern=r"^(cpu|auto|cuda(:\d+)?)$")  # auto: a CUDA GPU when torch sees one
    # bf16: mixed precision (matrix products in bfloat16, weights fp32); auto: bf16 where the CPU or GPU
    # has native bfloat16 products, fp32 elsewhere (bort/devices.py). Served models are unaffected.
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    # The seed of the students' fine-tunes (plain, distil, Agora) when it should differ from the run's:
    # seeds of one split, one labeller and one pretrained student (-1: the run's seed).
    student_seed: Int = Field(-1, ge=-1)
    labeller_epochs: Num = Field(2.0, gt=0)
    labeller_lr: Num = Field(5e-5, gt=0)
    # Agora needs an "ok-ish" labeller (the paper: dev accuracy above 2/3 on balanced binary tasks).
    # Asked chance-corrected: its MCC (two classes) or macro-F1 (more) must beat the majority
    # baseline's by this many points. 33.3 is the paper's 2/3 on a balanced binary task (accuracy
    # (1 + MCC) / 2), and it is not met by a labeller barely above the majority rate of a skewed task.
    labeller_min_margin: Num = Field(100.0 / 3.0, ge=-100, le=100)
    # Θ: a narrow student (the embedded default's 3/6/192/768) was under-trained by plain's 2 epochs
    # at 5e-5 in an earlier series (agora/README, "Measured"); Θ holds 4-epoch sets at higher rates.
    thetas: tuple[ThetaSet, ...] = Field(
        ("lr=1e-4,wd=0.01,warmup=0.1,epochs=4", "lr=2e-4,wd=0.01,warmup=0.1,epochs=4"), min_length=1,
        validate_default=True)
    pruning: Literal["halving", "paper"] = "halving"
    max_rounds: Int = Field(3, ge=1)  # pruning rounds (replays come on top)
    replays: Int = Field(1, ge=0)  # re-runs of a round that did not improve dev, in the whole loop
    warm_start: Bool = True  # rounds after the first continue from the best model so far
    round_epochs: Num = Field(1.0, gt=0)  # epochs of a warm-started round over D plus the new points
    points_per_mistake: Int = Field(2, ge=1)  # k
    candidates_per_mistake: Int = Field(12, ge=1)  # G's tries per mistake before the band filter
    max_points_per_round: Int = Field(2000, ge=0)
    max_points: Int = Field(6000, ge=0)  # over the whole loop
    similarity_band: tuple[Num, Num] = (0.80, 0.98)  # cosine to the original, inclusive
    edit_rate: Num = Field(0.15, gt=0, le=1)  # fraction of a text's words G edits (at least one)
    neighbours: Int = Field(8, ge=1)  # nearest word embeddings a substitution picks from
    embedder: Literal["source", "labeller"] = "source"  # whose mean-pooled embeddings the band uses
    mistakes: Literal["all", "teachable"] = "all"  # all: every dev mistake (the paper) | those the labeller gets right
    min_labeller_confidence: Num = Field(0.0, ge=0, lt=1)  # drop new points the labeller labels less surely
    # Fraction of dev held apart to pick θ, round and model; mistakes come from the rest. 0: the paper
    # (both on all of dev, which lets later rounds fit the examples they are scored on).
    selection_holdout: Num = Field(0.0, ge=0, lt=1)
    # Fraction of dev (stratified, seeded) that no student trains, mines or is selected on: the deploy
    # choice among plain, distil and Agora is made there alone. 0: each student's own dev score decides,
    # which favours Agora, whose rounds are mined from and selected on that dev (four default runs:
    # Agora deployed on all four, distil better on test in three; bench/results/run-default*.md).
    choice_holdout: Num = Field(0.3, ge=0, lt=1)
    # Agora's rounds after the first (points made around dev mistakes, labelled by the labeller). Round 1
    # alone is Θ enumeration. auto: the rounds run below `loop_below` training texts, where they measured
    # ahead of enumeration (bench/results/agora_curve-min300.md: +1.21 at 250 texts, every seed; -0.18
    # at 500; +0.29, inside the seeds' spread, at the default's 10,200, bench/results/run-default.md).
    agora_loop: Literal["auto", "on", "off"] = "auto"
    loop_below: Int = Field(500, ge=0)
    # The recipe's student, which the deploy choice keeps unless another beats it on the held-out dev
    # rows with a paired permutation p below `choice_alpha` (1: the best held-out score wins): Agora
    # with its loop on; else distil from `distil_from` training texts (ahead of enumeration on test at
    # Rotten Tomatoes' 10,200 on every default run, by 1.6 points on average; behind by 0.76 at 500 on
    # the curve; between the two, unmeasured), else Agora's round 1 (Θ enumeration). A held-out slice of
    # a few hundred texts cannot tell 1-2 points apart (on two seeds of three it ranked enumeration 1.0
    # and 1.3 points above distil, which was 2.2 and 1.7 ahead on test; bench/results/run-default-choice.md):
    # the recipe rests on the measured runs, the held-out rows guard against a task where it is clearly wrong.
    distil_from: Int = Field(2000, ge=0)
    choice_alpha: Num = Field(0.05, gt=0, le=1)
    ablation: Bool = False  # also re-run Agora's warm-started path without the new points (more epochs only)
    # Task-specific distillation, beside plain and Agora (TinyBERT's recipe): the student trained to the
    # labeller's soft outputs on the training texts plus `distil_augment` G-perturbations of each.
    distil: Bool = True
    distil_epochs: Num = Field(4.0, gt=0)
    distil_lr: Num = Field(2e-4, gt=0)
    distil_temperature: Num = Field(2.0, gt=0)
    distil_alpha: Num = Field(0.0, ge=0, le=1)  # weight of gold-label cross-entropy (training texts only)
    distil_augment: Int = Field(1, ge=0)  # G's new texts per training text (0: the training texts alone)
    distil_candidates: Int = Field(4, ge=1)  # G's tries per training text before the band filter
    time_budget_s: Num = Field(1500.0, gt=0)  # the Agora loop's wall clock; round 1 always runs
    # Where a round's θ fine-tunes run: inline (one after the other) or ray (one Ray task per θ, each
    # declaring max(1, num_threads) CPUs; the same rows as inline for the same seed and num_threads).
    executor: Literal["inline", "ray"] = "inline"
    ray_address: Str = ""  # executor ray: "" starts a local Ray instance; "auto" or host:port joins a cluster

    @field_validator("agora_loop", mode="before")
    @classmethod
    def _on_off(cls, value: Any) -> Any:  # YAML reads a bare on / off (`--set finetune.agora_loop=on`) as a bool
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _consistent(self) -> FinetuneConfig:
        if self.points_per_mistake > self.candidates_per_mistake:
            raise ValueError("finetune.candidates_per_mistake must be >= finetune.points_per_mistake "
                             f"(G keeps k of its tries), got {self.candidates_per_mistake} < {self.points_per_mistake}")
        low, high = self.similarity_band
        if not -1.0 <= low < high <= 1.0:
            raise ValueError(f"finetune.similarity_band must be [low, high] with -1 <= low < high <= 1, "
                             f"got {list(self.similarity_band)}")
        texts = [t.text for t in self.thetas]
        if len(set(texts)) != len(texts):
            raise ValueError("finetune.thetas repeats a set; each hyperparameter set must be distinct")
        return self

    def students_seed(self, run_seed: int) -> int:
        """The seed plain, distil and Agora fine-tune with (:attr:`student_seed`, else the run's)."""
        return run_seed if self.student_seed < 0 else self.student_seed

    def theta_values(self, theta: Theta, seed: int) -> dict[str, Any]:
        """A Θ set's full hyperparameters: what it leaves out comes from this section (seed: the run's)."""
        return {"lr": theta.lr if theta.lr is not None else self.lr,
                "weight_decay": theta.wd if theta.wd is not None else self.weight_decay,
                "warmup_ratio": theta.warmup if theta.warmup is not None else self.warmup_ratio,
                "epochs": theta.epochs if theta.epochs is not None else self.epochs,
                "batch_size": theta.batch if theta.batch is not None else self.batch_size,
                "seed": theta.seed if theta.seed is not None else seed}


class ExportConfig(Section):
    """ONNX export, int8 quantisation, parity and accuracy checks, latency of each variant."""

    quantize: Bool = True
    # What to deploy. auto: the fastest of fp32 and the int8 variants within max_int8_drop_points on dev,
    # measured side by side on this CPU at the task's typical request (serve/precision.py): int8 must serve
    # >= min_speedup x fp32's texts/s under load and be at most batch1_tolerance x fp32's p50 at one user.
    # fp32, int8 (dynamic), int8_static: that one (int8 only within max_int8_drop_points).
    precision: Literal["auto", "fp32", "int8", "int8_static"] = "auto"
    static_int8: Bool = True  # also build calibrated static int8 (QDQ): its answers do not depend on the batch
    calibration_texts: Int = Field(128, ge=1)  # training-split texts that fix static int8's activation ranges (MinMax)
    min_speedup: Num = Field(1.05, ge=1)  # int8's texts/s under load over fp32's
    batch1_tolerance: Num = Field(1.05, ge=1)  # int8's p50 at one user may be at most this x fp32's
    speed_batch: Int = Field(8, ge=1)  # dev texts per burst of the model-only comparison (a batch the server forms)
    speed_rounds: Int = Field(30, ge=1)  # interleaved rounds of the model-only comparison
    # Under load, judge by served requests/s through the service (serve.* settings) at speed_users clients
    # (served), or by the model's texts/s alone (model). A small model's speed is the service's: see
    # serve/served_speed.py.
    speed_under_load: Literal["served", "model"] = "served"
    speed_users: Int = Field(8, ge=1)
    speed_seconds: Num = Field(3.0, gt=0)  # measured per variant and round, after 1 s of warm-up
    speed_served_rounds: Int = Field(3, ge=1)
    quantization: Literal["auto", "avx512_vnni", "avx512", "avx2", "arm64"] = "auto"  # auto: from the CPU's flags
    optimize_graph: Bool = False  # ORTOptimizer O2 before quantising (no gain measured here)
    parity_atol: Num = Field(1e-4, gt=0)  # max |ONNX fp32 - PyTorch| logit difference on dev texts
    parity_texts: Int = Field(64, ge=1)  # dev texts used for the parity check
    max_int8_drop_points: Num = Field(0.5, ge=0)  # int8 dev accuracy may trail fp32 by this many points
    eval_batch_size: Int = Field(1, ge=1)  # 1 = as single-text requests are served (dynamic int8 answers vary with batching)
    num_threads: Int = Field(2, ge=1)
    seq_len: Int = Field(128, ge=1)  # latency measurement: batch 1, this many tokens
    warmup_runs: Int = Field(5, ge=0)
    timed_runs: Int = Field(50, ge=1)
    register_bentoml: Bool = True  # add the exports to the BentoML model store ($BENTOML_HOME)
    # The deploy gate: the student the finetune stage chose must beat the majority baseline on dev, on
    # the task's metric, by gate_margin_points AND beat chance (a permutation test of its dev
    # predictions) at gate_alpha; otherwise nothing is exported. See README, "Metrics and gates".
    gate_margin_points: Num = Field(2.0, ge=0, le=100)
    gate_alpha: Num = Field(0.01, gt=0, le=1)
    force: Bool = False  # export even when the gate fails (`bort run --force`); the report flags it


class ServeConfig(Section):
    """The HTTP service (``bort serve``): model, limits, batching, security, logging.

    The service validates the JSON it is given (``BORT_SERVE_CONFIG``) with this same schema.
    """

    host: Str = "127.0.0.1"
    port: Int = Field(3000, ge=0, le=65535)
    model: Literal["optimized", "baseline"] = "optimized"
    model_dir: Str = ""  # serve this folder instead of a run's export (an export, or a HF classifier)
    num_threads: Int = Field(2, ge=1)
    max_texts: Int = Field(64, ge=1)  # texts (or pairs) per request
    max_chars: Int = Field(2000, ge=1)  # characters per text
    max_body_bytes: Int = Field(1_000_000, ge=1)
    max_seq_len: Int = Field(128, ge=1)  # tokens; longer inputs are truncated and the response says so
    # Merge requests that wait while the model is busy (never waits for more). auto: on for fp32,
    # off for int8, whose dynamic activation scales make answers depend on batch neighbours.
    batching: Literal["auto", "always", "never"] = "auto"
    max_batch_texts: Int = Field(64, ge=1)  # texts per merged model call
    api_key_env: Str = "BORT_API_KEY"  # when this variable is set, requests need X-API-Key
    access_log: Bool = False
    trace_requests: Bool = False  # OpenTelemetry spans for /classify: ~0.3 ms each; for a tracing exporter
    ort_spin: Bool = True  # onnxruntime threads busy-wait between calls (lower latency, more CPU)
    ort_spin_stop: Bool = False  # ...but stop busy-waiting when a call returns (frees the CPU for HTTP)
    server_timing: Bool = True  # a Server-Timing header on /classify: tokenize, model and app milliseconds
    # A request of at most this many texts runs on the event loop itself when no model call is running
    # (and, where requests are merged, none arrived with it): two thread hand-offs fewer. 0: never.
    inline_max_texts: Int = Field(1, ge=0)
    startup_timeout_s: Num = Field(120.0, gt=0)
    # Backpressure, in texts (or pairs), so that one 64-text request weighs what it costs: texts waiting for
    # the model or in its current call, past which a request is shed with 503 and Retry-After (/readyz: 503).
    max_queue: Int = Field(256, ge=1)
    # A request still waiting for the model this long after it arrived gets 503 and is never computed;
    # a model call running longer than this makes /readyz answer 503 (the model thread is stuck).
    request_timeout_s: Num = Field(10.0, gt=0)
    read_timeout_s: Num = Field(10.0, gt=0)  # the whole body must arrive within this (else 408, connection closed)
    allow_open: Bool = False  # listen on a non-loopback address with no API key (refused otherwise)

    @model_validator(mode="after")
    def _queue_holds_a_request(self) -> ServeConfig:
        if self.max_queue < self.max_texts:
            raise ValueError(f"serve.max_queue ({self.max_queue} texts) must be >= serve.max_texts "
                             f"({self.max_texts}), or a request at the limit could never be queued")
        return self

    def exposure_error(self, host: str | None = None) -> str | None:
        """Why the service must not listen on ``host`` (default ``serve.host``), or None when it may:
        a non-loopback address needs an API key or ``serve.allow_open=true``."""
        import ipaddress

        host = self.host if host is None else host
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if loopback or self.allow_open or self.api_key():
            return None
        return (f"serve.host {host!r} is reachable from other machines and no API key is set "
                f"(${self.api_key_env} is empty): set {self.api_key_env} (clients then send X-API-Key), "
                "or set serve.allow_open=true to serve without one")

    def api_key(self) -> str | None:
        """The required API key, or None when its environment variable is unset or empty."""
        import os

        return os.environ.get(self.api_key_env) or None

    @classmethod
    def from_json(cls, text: str | None) -> ServeConfig:
        """The service's settings from ``BORT_SERVE_CONFIG`` (a JSON object; empty: the defaults).

        Raises:
            ConfigError: not a JSON object, an unknown key or a bad value (one line, naming the key).
        """
        try:
            data = json.loads(text) if text else {}
        except ValueError as e:
            raise ConfigError(f"BORT_SERVE_CONFIG is not valid JSON ({e})") from None
        return _validate(cls, data, "serve")


class LoadtestConfig(Section):
    """Side-by-side Locust runs against the baseline and the optimised service (``bort loadtest``)."""

    users: tuple[Int, ...] = Field((1, 8), min_length=1)  # one bounded Locust run per user count and model
    duration_s: Int = Field(30, ge=1)  # measured seconds per run, after the warm-up
    warmup_s: Int = Field(5, ge=0)  # excluded from the figures
    # source_onnx | source_torch | shape:L/A/H/I (random weights: speed only)
    baseline: Str = Field("source_onnx", pattern=r"^(source_onnx|source_deployed|source_torch|shape:.*)$")
    port: Int = Field(3100, ge=1, le=65535)  # both services, one after the other, on 127.0.0.1
    mode: Literal["closed", "open"] = "closed"  # closed: next request when the last returns | open: constant rate
    target_rps: Num = Field(0.0, ge=0)  # open mode: total requests/s over all users
    think_time_s: Num = Field(0.0, ge=0)  # closed mode: mean pause between a user's requests
    texts_per_request: Int = Field(1, ge=1)
    # Locust's HTTP client. fast: FastHttpUser (geventhttpclient), what Locust recommends for load
    # generation; requests: HttpUser (python-requests), which on the default's student at 8 users took
    # 0.34 of this machine's 2 cores from the server it measures (bench/results/loadtest_client.md).
    client: Literal["fast", "requests"] = "fast"
    max_texts: Int = Field(2000, ge=0)  # test texts in the request pool (0: the whole test split)
    server_cpus: Str = ""  # e.g. "0-1": pin both services to these CPUs ("": inherit)
    locust_cpus: Str = ""  # the same for Locust
    start_timeout_s: Num = Field(180.0, gt=0)  # a service not ready by then fails the stage
    grace_s: Num = Field(60.0, ge=0)  # Locust is killed at run time + this
    slo_p95_ms: Num = Field(0.0, ge=0)  # optimised p95 budget at every user count; 0: off
    slo_min_speedup: Num = Field(0.0, ge=0)  # rps ratio at most users and p50 ratio at fewest users; 0: off
    slo_max_failure_ratio: Num = Field(0.0, ge=0)  # per model and user count; 0: off
    # Load generators: 0 is one Locust process; N is a Locust master here and N workers, as local
    # processes (executor local) or as Ray actors (executor ray; on nodes offering ray_resource when set).
    workers: Int = Field(0, ge=0)
    executor: Literal["local", "ray"] = "local"
    ray_address: Str = ""  # executor ray: "" starts a local Ray instance; "auto" or host:port joins a cluster
    ray_resource: Str = ""  # executor ray: a custom resource the workers' nodes offer (e.g. bort_loadgen)
    # Where the services listen and the load is sent. Workers on other machines need this machine's
    # address; the services then refuse to start without serve's API key ($BORT_API_KEY), which Locust sends.
    host: Str = Field("127.0.0.1", min_length=1)

    @model_validator(mode="after")
    def _users_and_rate(self) -> LoadtestConfig:
        if any(u < 1 for u in self.users):
            raise ValueError(f"loadtest.users must be counts >= 1, got {list(self.users)}")
        if self.mode == "open" and self.target_rps <= 0:
            raise ValueError("loadtest.mode=open needs loadtest.target_rps > 0 (total requests/s)")
        if self.executor == "ray" and self.workers < 1:
            raise ValueError("loadtest.executor=ray needs loadtest.workers >= 1 (the Locust workers it starts)")
        return self


# Where a stage's work runs, not what it makes (the same rows inline, in a process pool or on Ray):
# left out of fingerprints, so a run started on one executor continues on another without redoing work.
EXECUTION_ONLY: dict[str, tuple[str, ...]] = {"optimize": ("workers", "executor", "ray_address"),
                                              "finetune": ("executor", "ray_address")}


class BudgetConfig(Section):
    """Wall-clock budgets of ``bort run`` on a 2-core CPU (README, "Budgets"): a stage that runs over its
    budget says so in the log and the run report. They decide nothing else (no stage's fingerprint)."""

    optimize_s: Num = Field(600.0, gt=0)
    pretrain_s: Num = Field(600.0, gt=0)
    finetune_s: Num = Field(1500.0, gt=0)
    export_s: Num = Field(300.0, gt=0)
    loadtest_s: Num = Field(300.0, gt=0)
    total_s: Num = Field(4500.0, gt=0)  # the whole `bort run`, environment setup excluded

    def of(self, stage: str) -> float | None:
        """The budget of `stage` (None for a stage without one)."""
        return getattr(self, f"{stage}_s", None)


class RunConfig(Section):
    """The whole run. One seed for everything."""

    seed: Int = 0
    source: SourceConfig = SourceConfig()
    task: TaskConfig = TaskConfig()
    corpus: CorpusConfig = CorpusConfig()
    optimize: OptimizeConfig = OptimizeConfig()
    pretrain: PretrainConfig = PretrainConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    export: ExportConfig = ExportConfig()
    serve: ServeConfig = ServeConfig()
    loadtest: LoadtestConfig = LoadtestConfig()
    budgets: BudgetConfig = BudgetConfig()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists, Θ sets their text)."""
        return self.model_dump(mode="json")

    def section_fingerprint(self, *sections: str) -> str:
        """sha256 (first 16 hex) of the seed and the named sections: what a stage's output depends on
        (settings of :data:`EXECUTION_ONLY` left out)."""
        data = self.to_dict()
        picked = {"seed": data["seed"], **{name: {k: v for k, v in data[name].items()
                                                  if k not in EXECUTION_ONLY.get(name, ())} for name in sections}}
        blob = json.dumps(picked, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def replace(self, **sections: dict[str, Any]) -> RunConfig:
        """A copy with some settings changed, validated: ``cfg.replace(pretrain={"init": "random"})``."""
        data = self.to_dict()
        for name, values in sections.items():
            data[name] = {**data[name], **values} if isinstance(values, dict) else values
        return from_dict(data)


# How pydantic's error types read in bort's messages (the rest keep pydantic's own words).
_EXPECTED = {"int_type": "expected an integer", "int_parsing": "expected an integer",
             "int_from_float": "expected an integer", "number": "expected a number",
             "finite_number": "expected a number", "float_type": "expected a number",
             "float_parsing": "expected a number", "bool_type": "expected true or false",
             "bool_parsing": "expected true or false", "string_type": "expected a string",
             "tuple_type": "expected a list", "list_type": "expected a list", "model_type": "expected a mapping",
             "dict_type": "expected a mapping"}
_BOUNDS = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"), "less_than": ("<", "lt"),
           "less_than_equal": ("<=", "le")}


def _dotted(prefix: str, loc: tuple[Any, ...]) -> str:
    key = prefix
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        elif not str(part).startswith("function-") and part not in ("tuple", "list"):
            key = f"{key}.{part}" if key else str(part)
    return key or "config"


def _shown(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, int | float) else repr(value)


def _message(error: dict[str, Any], prefix: str, model: type[BaseModel]) -> str:
    """One pydantic error as bort's one line: the dotted key, what was expected, what was given."""
    kind, loc, given = error["type"], tuple(error["loc"]), error.get("input")
    key = _dotted(prefix, loc)
    if kind == "extra_forbidden":
        known = _known_keys(model, loc[:-1])
        return f"unknown config key {key!r}; known keys: {', '.join(known)}"
    if kind in _EXPECTED:
        return f"{key}: {_EXPECTED[kind]}, got {_shown(given)}"
    if kind in _BOUNDS:
        sign, name = _BOUNDS[kind]
        return f"{key} must be {sign} {error['ctx'][name]}, got {given!r}"
    if kind == "literal_error":
        return f"{key} must be {error['ctx']['expected']}, got {given!r}"
    if kind == "value_error":  # a model validator: its message already names the keys
        return str(error["ctx"]["error"])
    if kind == "string_pattern_mismatch":
        return f"{key}: {given!r} is not allowed here (pattern {error['ctx']['pattern']})"
    return f"{key}: {error['msg']}"


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            break
        model = field.annotation
    return sorted(model.model_fields)


# Keys that moved: a config that still uses one gets told where it went.
MOVED = {("finetune", "select_metric"): "task.metric (accuracy, macro_f1, mcc, balanced_accuracy or auto)",
         ("finetune", "labeller_min_dev_accuracy"): "finetune.labeller_min_margin (points of MCC or macro-F1 "
                                                    "above the majority baseline)"}


def _check_moved(data: dict[str, Any], prefix: str) -> None:
    for (section, key), where in MOVED.items():
        if not prefix and isinstance(data.get(section), dict) and key in data[section]:
            raise ConfigError(f"{section}.{key} is gone; use {where}")


def _validate(model: type[Section], data: Any, prefix: str = "") -> Any:
    """Build `model` from `data`; a mistake is a one-line ConfigError naming the dotted key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    _check_moved(data, prefix)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_message(e.errors(include_url=False)[0], prefix, model)) from None


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
    return _validate(RunConfig, data)


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from :meth:`RunConfig.to_dict` output (e.g. a manifest's config)."""
    return _validate(RunConfig, data)


