"""Search grids and well-spread subsets."""

import pytest

from bort.errors import ConfigError
from bort.families import BORT, MINILM_L6, Arch
from optimize.grid import bort_grid, make_grid, source_grid, spread_subset, yaml_grid


def test_bort_preset_has_the_papers_300_candidates():
    grid = bort_grid()
    assert len(grid) == 300 == len(set(grid))
    assert BORT in grid
    assert all(a.hidden % a.heads == 0 for a in grid)


def test_source_grid_of_minilm_stays_within_the_source_and_divides_heads():
    grid = source_grid(MINILM_L6, (0.34, 0.5, 0.67, 1.0), (0.5, 1.0), (0.5, 0.75, 1.0), (0.25, 0.5, 1.0))
    assert len(grid) == 72 == len(set(grid))
    assert MINILM_L6 in grid
    assert {a.layers for a in grid} == {2, 3, 4, 6}
    assert {a.hidden for a in grid} == {192, 288, 384}
    assert {a.intermediate for a in grid} == {384, 768, 1536}
    for a in grid:
        assert a.hidden % a.heads == 0
        assert (a.layers, a.heads, a.hidden, a.intermediate) <= (6, 12, 384, 1536) or a.layers < 6


def test_source_grid_of_an_odd_tiny_source_rounds_sensibly():
    src = Arch(2, 3, 33, 37)
    grid = source_grid(src, (0.5, 1.0), (0.34, 1.0), (0.5, 1.0), (0.25, 1.0))
    assert src in grid
    for a in grid:
        assert a.hidden % a.heads == 0 and a.hidden <= 33 and a.intermediate <= 37 and a.layers <= 2
    assert {a.intermediate for a in grid} == {8, 37}
    assert Arch(1, 1, 17, 8) in grid  # 0.5 * 33 = 16.5 rounds half up to 17 at one head


def test_source_grid_rejects_fractions_outside_0_1():
    with pytest.raises(ConfigError, match="hidden_fractions"):
        source_grid(MINILM_L6, (1.0,), (1.0,), (1.5,), (1.0,))


def test_yaml_grid_combines_axes_and_explicit_shapes(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("layers: [2, 4]\nheads: [4, 6]\nhidden: [256]\nintermediate: [512]\narchs: ['4/8/1024/768']\n")
    grid = yaml_grid(path)
    assert grid == sorted([Arch(2, 4, 256, 512), Arch(4, 4, 256, 512), BORT])  # 256 % 6 != 0: dropped
    assert make_grid(str(path), MINILM_L6, None) == grid


def test_yaml_grid_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("layers: [2]\nheads: [4]\n")
    with pytest.raises(ConfigError, match="missing or empty"):
        yaml_grid(bad)
    bad.write_text("depth: [2]\n")
    with pytest.raises(ConfigError, match="unknown keys"):
        yaml_grid(bad)
    with pytest.raises(ConfigError, match="expected source, bort"):
        make_grid("nonsense", MINILM_L6, None)


def test_spread_subset_keeps_corners_and_is_deterministic():
    grid = bort_grid()
    sub = spread_subset(grid, 30)
    assert len(sub) == 30 == len(set(sub))
    assert sub == spread_subset(list(reversed(grid)), 30)
    assert Arch(2, 4, 512, 256) in sub and Arch(12, 16, 1024, 3072) in sub
    for axis in ("layers", "heads", "hidden", "intermediate"):  # every value of every axis is visited
        assert {getattr(a, axis) for a in sub} == {getattr(a, axis) for a in grid}
    assert spread_subset(grid[:5], 10) == grid[:5]
