"""The CLI: instant help, exit 2 with one line for user mistakes."""

import subprocess
import sys

import pytest

from bort.stages import STAGES
from pipeline.cli import main

COMMANDS = [*(s.name for s in STAGES), "run", "sources"]


def test_help_imports_no_heavy_library():
    code = (
        "import sys\nfrom pipeline.cli import main\n"
        f"for c in {COMMANDS!r}:\n"
        "    try:\n        main([c, '--help'])\n    except SystemExit:\n        pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'onnxruntime', 'bentoml', 'locust') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage: bort" in capsys.readouterr().out


def test_bad_override_exits_2_with_one_error_line():
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "optimize", "--set", "optimize.nope=1"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown config key 'optimize.nope'")


def test_missing_upstream_artifact_exits_2_naming_the_command(tmp_path):
    from bort import artifacts
    from bort.errors import ArtifactError

    with pytest.raises(ArtifactError, match="bort optimize"):
        artifacts.read_manifest(tmp_path, "optimize")
