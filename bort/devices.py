"""Where training runs: ``auto`` (a CUDA GPU when torch sees one, else the CPU), ``cpu``, ``cuda``, ``cuda:N``.

Training may use a GPU where one exists; nothing needs one, and the search always measures latency
on the CPU that serves. torch is imported inside the function: the core stays light to import.
"""

from __future__ import annotations

from typing import Any

from bort.errors import ConfigError


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
