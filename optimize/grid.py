"""Search spaces over (D layers, A heads, H hidden, I intermediate), and well-spread subsets of them.

Three grids:

- ``bort``: the paper's grid for Bort (D in {2..12 step 2}, A in {4,8,12,16}, H in {512,768,1024},
  I in {256,512,768,1024,3072}, kept where H % A == 0): 300 candidates.
- ``source``: fractions (from config) of the source model's own D, A, H and I. Rounding: D and A
  to the nearest integer (at least 1); H to the nearest multiple of A (so heads divide hidden);
  I to the nearest multiple of 8 (the vector width every CPU kernel likes); a fraction of 1.0
  always gives the source's exact value. Nothing exceeds the source; duplicates are dropped.
- a YAML file: lists ``layers``, ``heads``, ``hidden``, ``intermediate`` (their product, filtered
  by H % A == 0) and/or ``archs``: explicit ``D/A/H/I`` strings.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bort.errors import ConfigError
from bort.families import Arch

log = logging.getLogger(__name__)

BORT_LAYERS = (2, 4, 6, 8, 10, 12)
BORT_HEADS = (4, 8, 12, 16)
BORT_HIDDEN = (512, 768, 1024)
BORT_INTERMEDIATE = (256, 512, 768, 1024, 3072)


def product_grid(layers: Iterable[int], heads: Iterable[int], hidden: Iterable[int],
                 intermediate: Iterable[int]) -> list[Arch]:
    """Every combination with hidden divisible by heads, sorted and without duplicates."""
    combos = itertools.product(sorted(set(layers)), sorted(set(heads)), sorted(set(hidden)),
                               sorted(set(intermediate)))
    return sorted({Arch(d, a, h, i) for d, a, h, i in combos if h % a == 0})


def bort_grid() -> list[Arch]:
    """The paper's 300-candidate grid for Bort."""
    return product_grid(BORT_LAYERS, BORT_HEADS, BORT_HIDDEN, BORT_INTERMEDIATE)


def _round_half_up(x: float) -> int:
    # Python's round() rounds half to even (round(2.5) == 2); sizes should not depend on parity.
    return int(math.floor(x + 0.5))


def _check_fractions(name: str, fractions: Sequence[float]) -> None:
    if not fractions:
        raise ConfigError(f"optimize.{name} is empty; give at least one fraction in (0, 1]")
    for f in fractions:
        if not 0.0 < f <= 1.0:
            raise ConfigError(f"optimize.{name} holds {f}; fractions must be in (0, 1]")


def _scaled_hidden(source: Arch, heads: int, fraction: float) -> int:
    """The multiple of `heads` nearest to fraction * source hidden, at most the source's."""
    top = source.hidden - source.hidden % heads
    if fraction == 1.0 or top < heads:
        return top if top >= heads else heads
    value = _round_half_up(fraction * source.hidden / heads) * heads
    return min(max(value, heads), top)


def _scaled_intermediate(source: Arch, fraction: float) -> int:
    if fraction == 1.0:
        return source.intermediate
    value = max(8, _round_half_up(fraction * source.intermediate / 8) * 8)
    return min(value, source.intermediate)


def source_grid(source: Arch, layer_fractions: Sequence[float], head_fractions: Sequence[float],
                hidden_fractions: Sequence[float], intermediate_fractions: Sequence[float]) -> list[Arch]:
    """Fractions of the source's own sizes (see the module docstring for the rounding rules)."""
    for name, fr in (("layer_fractions", layer_fractions), ("head_fractions", head_fractions),
                     ("hidden_fractions", hidden_fractions),
                     ("intermediate_fractions", intermediate_fractions)):
        _check_fractions(name, fr)
    layers = {min(source.layers, max(1, _round_half_up(f * source.layers))) for f in layer_fractions}
    heads = {min(source.heads, max(1, _round_half_up(f * source.heads))) for f in head_fractions}
    inter = {_scaled_intermediate(source, f) for f in intermediate_fractions}
    out = set()
    for d, a, i in itertools.product(layers, heads, inter):
        for f in hidden_fractions:
            h = _scaled_hidden(source, a, f)
            if h % a == 0 and h <= source.hidden:
                out.add(Arch(d, a, h, i))
    return sorted(out)


def yaml_grid(path: str | Path) -> list[Arch]:
    """A grid written in YAML: axis lists (``layers``, ``heads``, ``hidden``, ``intermediate``),
    explicit ``archs`` (``D/A/H/I`` strings), or both."""
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"optimize.grid {str(path)!r}: cannot read it as YAML ({e})".splitlines()[0]) from e
    if not isinstance(data, dict):
        raise ConfigError(f"optimize.grid {p}: expected a mapping with layers/heads/hidden/intermediate or archs")
    unknown = set(data) - {"layers", "heads", "hidden", "intermediate", "archs"}
    if unknown:
        raise ConfigError(f"optimize.grid {p}: unknown keys {sorted(unknown)}; "
                          "expected layers, heads, hidden, intermediate, archs")
    out: set[Arch] = set()
    axes = ("layers", "heads", "hidden", "intermediate")
    if any(k in data for k in axes):
        missing = [k for k in axes if not data.get(k)]
        if missing:
            raise ConfigError(f"optimize.grid {p}: axis lists {missing} are missing or empty")
        values = [_int_list(data[k], f"{p}:{k}") for k in axes]
        out.update(product_grid(*values))
    for text in data.get("archs") or []:
        out.add(Arch.parse(str(text)))
    if not out:
        raise ConfigError(f"optimize.grid {p}: no valid candidate (is any hidden size divisible by a head count?)")
    return sorted(out)


def _int_list(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                              for v in value):
        raise ConfigError(f"{where}: expected a list of positive integers, got {value!r}")
    return value


def make_grid(spec: str, source: Arch, opt: Any) -> list[Arch]:
    """The grid named by ``optimize.grid``: ``source``, ``bort`` or a YAML path."""
    if spec == "bort":
        return bort_grid()
    if spec == "source":
        return source_grid(source, opt.layer_fractions, opt.head_fractions, opt.hidden_fractions,
                           opt.intermediate_fractions)
    if Path(spec).suffix in (".yaml", ".yml") or Path(spec).is_file():
        return yaml_grid(spec)
    raise ConfigError(f"optimize.grid {spec!r}: expected source, bort, or the path of a YAML grid file")


def _coords(archs: Sequence[Arch]) -> np.ndarray:
    """(n, 4) log2 sizes scaled to [0, 1] per axis (a constant axis becomes 0)."""
    x = np.log2(np.array([[a.layers, a.heads, a.hidden, a.intermediate] for a in archs], dtype=float))
    span = x.max(axis=0) - x.min(axis=0)
    return (x - x.min(axis=0)) / np.where(span > 0, span, 1.0)


def spread_subset(archs: Sequence[Arch], k: int) -> list[Arch]:
    """`k` well-spread candidates: the grid's corners first, then every axis value at least once,
    then farthest-point sampling (in log-size coordinates scaled to [0, 1]).

    Deterministic: ties go to the earlier candidate in sorted order. Returns all when k >= len.
    """
    archs = sorted(archs)
    if k >= len(archs):
        return list(archs)
    x = _coords(archs)
    chosen: list[int] = []
    for corner in itertools.product((0.0, 1.0), repeat=4):
        idx = int(np.argmin(np.abs(x - np.array(corner)).sum(axis=1)))
        if idx not in chosen:
            chosen.append(idx)
    chosen = chosen[:k]
    values = np.array([[a.layers, a.heads, a.hidden, a.intermediate] for a in archs])
    dist = np.min(np.linalg.norm(x[:, None, :] - x[None, chosen, :], axis=2), axis=1)
    while len(chosen) < k:
        # First visit every value of every axis (the latency model needs each), then fill the gaps.
        seen = [set(values[chosen, j]) for j in range(4)]
        news = np.array([sum(v[j] not in seen[j] for j in range(4)) for v in values])
        idx = int(np.argmax(dist + 10.0 * news))  # coords are in [0, 1]: coverage always wins
        chosen.append(idx)
        dist = np.minimum(dist, np.linalg.norm(x - x[idx], axis=1))
    return sorted(archs[i] for i in chosen)
