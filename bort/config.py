"""One typed, frozen run configuration, resolved once: defaults <- YAML file <- ``--set`` overrides.

Every stage reads its own section of :class:`RunConfig`. Field names carry their units. Unknown
keys and wrong types are :class:`~bort.errors.ConfigError`\\ s that name the dotted key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
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
    group_column: str = ""  # rows sharing a group never straddle splits
    dev_fraction: float = 0.1
    test_fraction: float = 0.1
    max_train_rows: int = 0  # 0: all rows
    max_eval_rows: int = 0  # 0: all rows (dev and test each)

    def __post_init__(self) -> None:
        for key in ("dev_fraction", "test_fraction"):
            value = getattr(self, key)
            if not 0.0 <= value < 0.5:
                raise ConfigError(f"task.{key} must be in [0, 0.5), got {value}")


@dataclass(frozen=True)
class CorpusConfig:
    """Unlabelled text for distillation: task texts (train split only), files, dict-gcide."""

    use_task_text: bool = True
    files: tuple[str, ...] = ()  # globs of user .txt files, one sentence or paragraph per line
    use_gcide: bool = False
    max_texts: int = 20000
    heldout_fraction: float = 0.05


@dataclass(frozen=True)
class OptimizeConfig:
    """The FPTAS search over (layers, heads, hidden, intermediate)."""

    grid: str = "source"  # source | bort | path to a YAML grid
    layer_fractions: tuple[float, ...] = (0.34, 0.5, 0.67, 1.0)
    head_fractions: tuple[float, ...] = (0.5, 1.0)
    hidden_fractions: tuple[float, ...] = (0.5, 0.75, 1.0)
    intermediate_fractions: tuple[float, ...] = (0.25, 0.5, 1.0)
    num_threads: int = 2
    batch_size: int = 1
    seq_len: int = 128
    precision: str = "fp32"  # fp32 | int8
    warmup_runs: int = 5
    timed_runs: int = 30
    max_measured: int = 0  # 0: time every candidate; else a spread subset, the rest predicted
    epsilon: float = 0.1
    interval: float = 4.0  # the paper's s
    error_steps: int = 0  # 0: derived from epsilon and interval
    error_batch_size: int = 16
    error_seq_len: int = 64
    error_lr: float = 3e-4
    weight_clip: float = 4.0
    policy: str = "compromise"  # compromise | latency_budget | speedup
    latency_budget_ms: float = 0.0
    speedup_target: float = 0.0
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # (params, latency, error)

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "int8"):
            raise ConfigError(f"optimize.precision must be fp32 or int8, got {self.precision!r}")
        if self.policy not in ("compromise", "latency_budget", "speedup"):
            raise ConfigError(
                "optimize.policy must be compromise, latency_budget or speedup, "
                f"got {self.policy!r}"
            )
        if not 0.0 < self.epsilon < 1.0:
            raise ConfigError(f"optimize.epsilon must be in (0, 1), got {self.epsilon}")


@dataclass(frozen=True)
class PretrainConfig:
    """Extraction of the chosen shape and its distillation pretraining."""

    layers: int = 0  # 0: take the shape `bort optimize` chose
    heads: int = 0
    hidden: int = 0
    intermediate: int = 0
    init: str = "inherit"  # inherit | random
    max_steps: int = 600
    time_budget_s: float = 480.0
    batch_size: int = 32
    seq_len: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    grad_clip: float = 1.0
    weight_clip: float = 0.0  # 0: no clipping
    checkpoint_every: int = 100
    eval_every: int = 100

    def __post_init__(self) -> None:
        if self.init not in ("inherit", "random"):
            raise ConfigError(f"pretrain.init must be inherit or random, got {self.init!r}")


@dataclass(frozen=True)
class FinetuneConfig:
    """Labeller, plain and Agora fine-tuning."""

    seq_len: int = 64
    batch_size: int = 32
    epochs: float = 2.0
    lr: float = 5e-5
    labeller_epochs: float = 2.0
    labeller_min_dev_accuracy: float = 2.0 / 3.0
    thetas: tuple[str, ...] = ("lr=5e-5,wd=0.01,warmup=0.1", "lr=1e-4,wd=0.01,warmup=0.1")
    pruning: str = "halving"  # halving | paper
    max_rounds: int = 3
    points_per_mistake: int = 2
    max_points_per_round: int = 2000
    similarity_band: tuple[float, float] = (0.80, 0.98)
    replay: bool = True
    time_budget_s: float = 1500.0

    def __post_init__(self) -> None:
        if self.pruning not in ("halving", "paper"):
            raise ConfigError(f"finetune.pruning must be halving or paper, got {self.pruning!r}")


@dataclass(frozen=True)
class ExportConfig:
    """ONNX export, int8 quantisation and parity checks."""

    quantize: bool = True
    optimize_graph: bool = False
    parity_atol: float = 1e-4
    max_int8_drop_points: float = 0.5
    num_threads: int = 2
    seq_len: int = 128


@dataclass(frozen=True)
class ServeConfig:
    """The HTTP service."""

    host: str = "127.0.0.1"
    port: int = 3000
    model: str = "optimized"  # optimized | baseline
    num_threads: int = 2
    max_texts: int = 64
    max_chars: int = 2000
    max_body_bytes: int = 1_000_000
    max_seq_len: int = 128
    api_key_env: str = "BORT_API_KEY"
    access_log: bool = False


@dataclass(frozen=True)
class LoadtestConfig:
    """Side-by-side Locust runs against the baseline and the optimised service."""

    users: tuple[int, ...] = (1, 8)
    duration_s: int = 30
    warmup_s: int = 5
    baseline: str = "source_onnx"  # source_onnx | source_torch | shape:L/A/H/I
    port: int = 3100
    slo_p95_ms: float = 0.0
    slo_min_speedup: float = 0.0
    slo_max_failure_ratio: float = 0.0


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
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
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
