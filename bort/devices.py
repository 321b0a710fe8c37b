"""Where training runs and at which precision.

Device: ``auto`` (a CUDA GPU when torch sees one, else the CPU), ``cpu``, ``cuda``, ``cuda:N``.
Training may use a GPU where one exists; nothing needs one, and the search always measures latency
on the CPU that serves.

Precision: ``fp32``, ``bf16`` (mixed precision: fp32 weights, optimiser and losses, the matrix
products in bfloat16 under ``torch.autocast``) or ``auto`` (bf16 where the hardware has native
bfloat16 products: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or AMX-BF16; fp32
elsewhere, where bf16 would be emulated and slower). Measured on a 2-core AMD EPYC with AVX512-BF16
(bench/results/train_precision.md): the MPNet labeller's fine-tune step at 16 x 256 tokens 2.7x
faster in bf16, a base pretraining step 3.0x. Only training uses it: what is exported and served
is fp32 or int8 ONNX.

torch is imported inside the functions: the core stays light to import.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from bort.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "auto")
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bfloat16 products


def resolve_device(name: str, key: str = "device") -> Any:
    """The torch device `name` asks for.

    Raises:
        ConfigError: a CUDA device was asked for and torch sees none (or not that many); the message
            names the setting `key` and what to set instead.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ConfigError(f"{key}={name!r}, but torch sees {count} CUDA device(s) here; use {key}=cpu or auto")
    return device


def native_bf16(device: Any, cpu_flags: set[str] | None = None) -> bool:
    """Whether `device` computes bfloat16 products natively (`cpu_flags`: read from /proc/cpuinfo)."""
    if device.type == "cuda":
        import torch

        return bool(torch.cuda.is_bf16_supported())
    if cpu_flags is None:
        from bort.artifacts import cpu_flags as read_flags

        cpu_flags = read_flags()
    return any(f in cpu_flags for f in CPU_BF16_FLAGS)


def resolve_precision(name: str, device: Any, key: str = "precision", cpu_flags: set[str] | None = None) -> str:
    """``fp32`` or ``bf16``: what `name` means on `device`.

    Raises:
        ConfigError: `name` is not one of :data:`PRECISIONS`, or ``bf16`` on a device without native
            bfloat16 products (emulated, it is slower than fp32); the message names `key`.
    """
    if name not in PRECISIONS:
        raise ConfigError(f"{key}={name!r} is not a precision; use one of {', '.join(PRECISIONS)}")
    if name == "fp32":
        return "fp32"
    native = native_bf16(device, cpu_flags)
    if name == "bf16" and not native:
        where = "this GPU" if device.type == "cuda" else f"this CPU (no {' or '.join(CPU_BF16_FLAGS)})"
        raise ConfigError(f"{key}=bf16, but {where} has no native bfloat16 products and emulated bf16 trains "
                          f"slower than fp32; use {key}=fp32 or auto")
    return "bf16" if native else "fp32"


def autocast(device: Any, precision: str) -> AbstractContextManager[Any]:
    """The block's matrix products in bfloat16 when `precision` is ``bf16``; in fp32 for ``fp32``, also
    inside an enclosing bf16 block (losses leave autocast this way)."""
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
