"""Training checkpoints that resume exactly: safetensors for tensors, JSON for the rest, no pickle.

A checkpoint is a folder ``step_<N>/`` holding ``model.safetensors`` (student + projection),
``optimizer.safetensors`` (AdamW moments and step counts, plus the torch RNG state that drives
dropout) and ``state.json`` (step, planned steps, tokens, elapsed time, loss history, optimiser
hyper-parameters, and the run's key). It is written into a hidden temporary folder and renamed
into place, so a kill leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from bort.artifacts import atomic_write_json

log = logging.getLogger(__name__)
PREFIX = "step_"


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser state dict into tensors and JSON-able rest."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{name}"] = value.detach().clone().contiguous()
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_checkpoint(folder: str | Path, step: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> Path:
    """Write ``folder/step_<step>/`` atomically and delete older checkpoints."""
    folder = Path(folder)
    final = folder / f"{PREFIX}{step:08d}"
    tmp = folder / f".tmp-{PREFIX}{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    tensors, rest = _optimizer_tensors(optimizer)
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    atomic_write_json(tmp / "state.json", {**state, "optimizer": rest})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in folder.glob(f"{PREFIX}*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(folder: str | Path, key: str | None = None) -> Path | None:
    """The newest complete checkpoint under `folder`, or None.

    With `key`, checkpoints written under another key (another configuration) are deleted
    instead of resumed.
    """
    done = sorted(p for p in Path(folder).glob(f"{PREFIX}*") if (p / "state.json").is_file())
    if not done:
        return None
    if key is not None and json.loads((done[-1] / "state.json").read_text(encoding="utf-8")).get("key") != key:
        log.warning("checkpoints in %s belong to another configuration; starting afresh", folder)
        for p in done:
            shutil.rmtree(p, ignore_errors=True)
        return None
    return done[-1]


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model, optimiser and torch RNG state in place; return the JSON state."""
    path = Path(path)
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    load_model(model, str(path / "model.safetensors"))
    tensors = load_file(str(path / "optimizer.safetensors"))
    torch.set_rng_state(tensors.pop("rng.torch"))
    rest = state.pop("optimizer")
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        per_param.setdefault(int(pid), {})[name] = value
    for key, value in rest["scalars"].items():
        pid, name = key.split(".", 1)
        per_param.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": rest["param_groups"]})
    log.info("resumed from %s (step %d)", path, state["step"])
    return state
