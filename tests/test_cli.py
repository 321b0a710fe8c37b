"""The CLI: instant help, exit 2 with one line for user mistakes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

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


def _bort(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_bort_data_takes_the_task_and_source_options_of_bort_run(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\n" + "".join(f"review number {i},{'good' if i % 2 else 'bad'}\n" for i in range(40)))
    proc = _bort("data", "--profile", "tiny", "--task", str(path), "--source", "minilm",
                 "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"task {path}: 40 rows, 2 labels" in proc.stdout and "bad" in proc.stdout


@pytest.mark.parametrize("case", ["regression csv", "headerless glue"])
def test_bad_task_file_exits_2_with_one_line_saying_what_to_do(tmp_path, case):
    from test_data_errors import cola, sts_b_csv

    if case == "regression csv":
        task, expected = sts_b_csv(tmp_path / "sts.csv"), "regression is not supported"
    else:
        task, expected = cola(tmp_path / "cola"), "task.tsv_columns=[source,label,original_label,sentence]"
    line = _one_error_line(_bort("data", "--profile", "tiny", "--task", str(task), "--run-dir",
                                 str(tmp_path / "run"), cwd=tmp_path))
    assert expected in line
    line = _one_error_line(_bort("run", "--profile", "tiny", "--task", str(task), "--run-dir",
                                 str(tmp_path / "run2"), cwd=tmp_path))
    assert expected in line
