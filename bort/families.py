"""Model families: the shape (D layers, A heads, H hidden, I intermediate) <-> Hugging Face configs.

Exact parameter counts (net: everything; effective: the encoder blocks only), analytic FLOPs,
random-initialised models at any valid shape, and loading a source model from the embedded
defaults, a local Hugging Face folder, or a hub name.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bort.errors import BortError, ConfigError

log = logging.getLogger(__name__)

FAMILIES = ("bert", "roberta", "mpnet")
_MODEL_TYPE_TO_FAMILY = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta", "mpnet": "mpnet"}


@dataclass(frozen=True, order=True)
class Arch:
    """An encoder shape. Ordering is lexicographic (layers, heads, hidden, intermediate)."""

    layers: int
    heads: int
    hidden: int
    intermediate: int

    def __post_init__(self) -> None:
        for name in ("layers", "heads", "hidden", "intermediate"):
            if getattr(self, name) < 1:
                raise ConfigError(f"architecture {name} must be >= 1, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ConfigError(
                f"hidden size {self.hidden} is not divisible by {self.heads} heads; "
                "pick heads that divide hidden"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def label(self) -> str:
        """``D/A/H/I``, e.g. ``4/8/1024/768``."""
        return f"{self.layers}/{self.heads}/{self.hidden}/{self.intermediate}"

    @classmethod
    def parse(cls, text: str) -> Arch:
        """Parse ``D/A/H/I``."""
        try:
            d, a, h, i = (int(x) for x in text.split("/"))
        except ValueError as e:
            raise ConfigError(f"architecture {text!r}: expected layers/heads/hidden/intermediate") from e
        return cls(d, a, h, i)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


# Shapes the field talks about. Vocabulary and positions follow each family's released models.
BERT_BASE = Arch(12, 12, 768, 3072)
BERT_LARGE = Arch(24, 16, 1024, 4096)
BORT = Arch(4, 8, 1024, 768)
MINILM_L6 = Arch(6, 12, 384, 1536)
MPNET_BASE = Arch(12, 12, 768, 3072)


@dataclass(frozen=True)
class Vocab:
    """The non-shape sizes that parameter counts depend on."""

    vocab_size: int = 30522
    max_positions: int = 512
    type_vocab_size: int = 2
    relative_attention_num_buckets: int = 32  # MPNet only

    @classmethod
    def from_config(cls, config: Any) -> Vocab:
        return cls(
            vocab_size=config.vocab_size,
            max_positions=config.max_position_embeddings,
            type_vocab_size=getattr(config, "type_vocab_size", 0) or 0,
            relative_attention_num_buckets=getattr(config, "relative_attention_num_buckets", 32),
        )


def arch_of(config: Any) -> Arch:
    """The shape of a Hugging Face config."""
    return Arch(config.num_hidden_layers, config.num_attention_heads, config.hidden_size,
                config.intermediate_size)


def family_of(config: Any) -> str:
    """bert | roberta | mpnet, from ``config.model_type``."""
    family = _MODEL_TYPE_TO_FAMILY.get(getattr(config, "model_type", ""))
    if family is None:
        raise BortError(
            f"model type {getattr(config, 'model_type', None)!r} is not supported; "
            f"bort handles {', '.join(sorted(_MODEL_TYPE_TO_FAMILY))}"
        )
    return family


def count_params(arch: Arch, family: str = "bert", vocab: Vocab | None = None,
                 pooler: bool = True) -> dict[str, int]:
    """Exact parameter counts of ``AutoModel`` (the bare encoder) at this shape.

    Returns:
        ``{"net": all parameters, "effective": encoder blocks only, "embeddings": ..., "pooler": ...}``.
        MPNet's relative attention bias (buckets x heads) counts as encoder.
    """
    v = vocab or default_vocab(family)
    h, i = arch.hidden, arch.intermediate
    layer_norm = 2 * h
    if family == "mpnet":
        embeddings = v.vocab_size * h + v.max_positions * h + layer_norm
    elif family in ("bert", "roberta"):
        embeddings = (v.vocab_size + v.max_positions + v.type_vocab_size) * h + layer_norm
    else:
        raise ConfigError(f"unknown family {family!r}; expected one of {FAMILIES}")
    attention = 4 * (h * h + h) + layer_norm  # q, k, v, output projection, then LayerNorm
    ffn = (h * i + i) + (i * h + h) + layer_norm
    encoder = arch.layers * (attention + ffn)
    if family == "mpnet":
        encoder += v.relative_attention_num_buckets * arch.heads
    pool = (h * h + h) if pooler else 0
    return {"net": embeddings + encoder + pool, "effective": encoder, "embeddings": embeddings, "pooler": pool}


def default_vocab(family: str) -> Vocab:
    """Vocabulary sizes of each family's released base models."""
    if family == "roberta":
        return Vocab(vocab_size=50265, max_positions=514, type_vocab_size=1)
    if family == "mpnet":
        return Vocab(vocab_size=30527, max_positions=514, type_vocab_size=0)
    return Vocab()


def flops(arch: Arch, seq_len: int, batch_size: int = 1) -> int:
    """Analytic forward FLOPs (2 per multiply-add) of the encoder's matrix products.

    Per layer and sequence of S tokens: Q, K, V and output projections 8·S·H², attention scores
    and weighted sum 4·S²·H, feed-forward 4·S·H·I; plus the pooler's 2·H². Softmax, LayerNorm,
    GELU and embedding look-ups are left out: they are lower order and runtime-dependent.
    """
    s, h, i = seq_len, arch.hidden, arch.intermediate
    per_layer = 8 * s * h * h + 4 * s * s * h + 4 * s * h * i
    return batch_size * (arch.layers * per_layer + 2 * h * h)


def hf_config(arch: Arch, family: str = "bert", base: Any | None = None, **overrides: Any) -> Any:
    """A Hugging Face config at this shape; vocabulary and the rest copied from `base` when given."""
    from transformers import BertConfig, MPNetConfig, RobertaConfig

    cls = {"bert": BertConfig, "roberta": RobertaConfig, "mpnet": MPNetConfig}[family]
    if base is not None:
        data = base.to_dict()
        for key in ("_name_or_path", "architectures", "transformers_version", "torch_dtype", "dtype"):
            data.pop(key, None)
        config = cls.from_dict(data)
    else:
        v = default_vocab(family)
        kwargs: dict[str, Any] = {"vocab_size": v.vocab_size, "max_position_embeddings": v.max_positions}
        if family != "mpnet":
            kwargs["type_vocab_size"] = v.type_vocab_size
        config = cls(**kwargs)
    config.num_hidden_layers = arch.layers
    config.num_attention_heads = arch.heads
    config.hidden_size = arch.hidden
    config.intermediate_size = arch.intermediate
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def random_model(arch: Arch, family: str = "bert", base: Any | None = None, seed: int = 0,
                 add_pooling_layer: bool = True) -> Any:
    """A randomly initialised bare encoder (``AutoModel``) at this shape, seeded."""
    import torch
    from transformers import AutoModel

    config = hf_config(arch, family, base)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModel.from_config(config, add_pooling_layer=add_pooling_layer)
    return model.eval()


@dataclass(frozen=True)
class Source:
    """A source model located on disk: its folder, family and config."""

    name: str
    folder: Path
    family: str
    config: Any

    @property
    def arch(self) -> Arch:
        return arch_of(self.config)


def resolve_source(spec: str) -> Source:
    """Find the source model: ``minilm`` / ``mpnet`` (embedded), a local folder, or a hub name.

    A hub name needs network access and the Hugging Face cache; it cannot be exercised on
    machines without a hub (as in this project's CI), so that branch is deliberately thin: it
    downloads the snapshot and treats it as a local folder.
    """
    from transformers import AutoConfig

    from bort import assets

    if spec in assets.EMBEDDED_MODELS:
        folder = assets.model_dir(spec)
    elif Path(spec).expanduser().is_dir():
        folder = Path(spec).expanduser().resolve()
    elif Path(spec).expanduser().exists():
        raise ConfigError(f"source.model {spec!r} is a file; give the folder that holds config.json")
    else:
        folder = _download_hub_snapshot(spec)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"source.model {spec!r}: {folder} has no config.json (expected a Hugging Face folder)")
    config = AutoConfig.from_pretrained(folder)
    return Source(name=spec, folder=folder, family=family_of(config), config=config)


def _download_hub_snapshot(name: str) -> Path:
    """Hub names: real loading code for users with network access (not reachable here)."""
    import os

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ConfigError(
            f"source.model {name!r} is neither an embedded model (minilm, mpnet) nor a local folder, "
            "and HF_HUB_OFFLINE=1 forbids the hub; give a checkpoint folder"
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    except Exception as e:  # noqa: BLE001 - any hub failure is the user's to fix
        raise ConfigError(f"source.model {name!r}: could not fetch from the hub ({e})".splitlines()[0]) from e


MLM_HEAD_PREFIXES = ("cls.predictions.", "lm_head.")  # BERT's and RoBERTa's/MPNet's masked-LM heads


def has_mlm_weights(folder: str | Path) -> bool:
    """True when the folder's safetensors carry a masked-LM head. Its ``config.json`` is no guide:
    all-mpnet-base-v2 names ``MPNetForMaskedLM`` and ships the encoder alone, so loading it as a masked
    LM gives a head of random weights."""
    from safetensors import safe_open

    for path in Path(folder).glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            if any(name.startswith(MLM_HEAD_PREFIXES) for name in f.keys()):
                return True
    return False


def load_encoder(folder: str | Path, add_pooling_layer: bool = True) -> Any:
    """Load a bare encoder from a folder, safetensors only (no pickle from user files)."""
    from transformers import AutoModel

    folder = Path(folder)
    if not any(folder.glob("*.safetensors")):
        raise BortError(f"{folder} has no .safetensors weights; bort loads safetensors only (no pickle)")
    return AutoModel.from_pretrained(folder, use_safetensors=True, add_pooling_layer=add_pooling_layer).eval()


def load_tokenizer(folder: str | Path) -> Any:
    """The fast tokenizer saved with a model folder."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(folder), use_fast=True)


def mean_pool(hidden: Any, attention_mask: Any, normalize: bool = True) -> Any:
    """Sentence embeddings: mask-weighted mean of token states (batch, seq, H) -> (batch, H)."""
    import torch

    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled


def embed(model: Any, tokenizer: Any, texts: list[str], batch_size: int = 64, max_len: int = 128) -> Any:
    """Normalised mean-pooled sentence embeddings, (len(texts), H), no gradients."""
    import torch

    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                            max_length=max_len, return_tensors="pt")
            out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            chunks.append(mean_pool(out.last_hidden_state, enc["attention_mask"]))
    return torch.cat(chunks)
