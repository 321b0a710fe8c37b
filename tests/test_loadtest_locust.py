"""Locust runs: bounded, on 127.0.0.1, every answer checked; master/worker mode on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from loadtest_support import free_port, standin_spec

from bort import processes as S
from bort.errors import BortError
from loadtest import report
from loadtest.locust_run import Profile, locust_command, run_distributed, run_locust


@pytest.fixture()
def texts_file(tmp_path) -> Path:
    path = tmp_path / "texts.json"
    path.write_text(json.dumps({"texts": ["a fine film", "dull, far too long", "wow"], "labels": ["fresh", "rotten"]}))
    return path


@pytest.mark.parametrize("role", ["local", "master", "worker"])
def test_every_locust_command_targets_loopback_and_is_bounded(tmp_path, role):
    cmd = locust_command(3100, Profile(users=4, duration_s=8, warmup_s=2), tmp_path / "run", role=role)
    assert "--headless" in cmd
    if role == "worker":
        assert cmd[cmd.index("--master-host") + 1] == "127.0.0.1"
    else:
        assert cmd[cmd.index("-H") + 1] == "http://127.0.0.1:3100"
        assert cmd[cmd.index("--run-time") + 1] == "10s"
        assert cmd[cmd.index("--exit-code-on-error") + 1] == "1"
    if role == "master":
        assert cmd[cmd.index("--master-bind-host") + 1] == "127.0.0.1"


def test_wrong_labels_are_counted_as_failures(tmp_path, texts_file):
    """The stand-in answers a label outside the set: every request must fail validation."""
    profile = Profile(users=1, duration_s=1, warmup_s=0, grace_s=30)
    with S.serving(standin_spec("--wrong-label"), tmp_path / "server.log") as running:
        result = run_locust(running.spec.port, profile, texts_file, tmp_path / "run")
    assert result.returncode == 1  # --exit-code-on-error
    fig = report.summarize_run(tmp_path / "run", 1, 1)
    assert fig["requests"] > 0 and fig["failures"] == fig["requests"]
    assert "is not one of" in (tmp_path / "run_locust.log").read_text()  # Locust's error report


@pytest.mark.parametrize("client", ["fast", "requests"])
def test_both_clients_send_the_api_key_and_validate_answers(tmp_path, texts_file, monkeypatch, client):
    """FastHttpUser (default) and HttpUser: with the key every answer passes; without it, each 401 fails."""
    profile = Profile(users=2, duration_s=1, warmup_s=0, grace_s=30, client=client)
    with S.serving(standin_spec("--api-key", "s3cret"), tmp_path / "server.log") as running:
        monkeypatch.setenv("BORT_LOADTEST_API_KEY", "s3cret")
        keyed = run_locust(running.spec.port, profile, texts_file, tmp_path / "keyed")
        monkeypatch.delenv("BORT_LOADTEST_API_KEY")
        monkeypatch.delenv("BORT_API_KEY", raising=False)
        bare = run_locust(running.spec.port, profile, texts_file, tmp_path / "bare")
    assert keyed.returncode == 0
    fig = report.summarize_run(tmp_path / "keyed", 2, 1)
    assert fig["requests"] > 0 and fig["failures"] == 0
    assert bare.returncode == 1
    fig = report.summarize_run(tmp_path / "bare", 2, 1)
    assert fig["requests"] > 0 and fig["failures"] == fig["requests"]
    assert "HTTP 401" in (tmp_path / "bare_locust.log").read_text()


def test_samples_left_by_an_earlier_run_are_not_counted(tmp_path, texts_file):
    """Samples are globbed per prefix: a stale file from a repeated run must go, a neighbour's stay."""
    stale_rows = "t_s,users,latency_ms,ok\n" + "".join(f"{i / 10:.1f},1,99999.0,1\n" for i in range(500))
    (tmp_path / "run.1.csv").write_text(stale_rows)
    (tmp_path / "run_u10.1.csv").write_text(stale_rows)  # another prefix: untouched
    profile = Profile(users=1, duration_s=1, warmup_s=0, grace_s=30)
    with S.serving(standin_spec(), tmp_path / "server.log") as running:
        run_locust(running.spec.port, profile, texts_file, tmp_path / "run")
    assert not (tmp_path / "run.1.csv").exists() and (tmp_path / "run_u10.1.csv").exists()
    samples = report.read_samples(tmp_path / "run")
    assert samples.shape[0] > 0 and samples[:, 2].max() < 99999.0


def test_master_and_one_worker_on_loopback_make_requests(tmp_path, texts_file):
    profile = Profile(users=2, duration_s=1, warmup_s=0, grace_s=30)
    with S.serving(standin_spec(), tmp_path / "server.log") as running:
        result = run_distributed(running.spec.port, profile, texts_file, tmp_path / "dist", workers=1,
                                 master_port=free_port())
    assert result.returncode == 0
    stats = report.read_locust_stats(tmp_path / "dist")
    assert stats["requests"] > 0 and stats["failures"] == 0
    assert report.read_samples(tmp_path / "dist").shape[0] > 0  # written by the worker


def test_a_run_past_its_hard_timeout_is_killed_with_its_group(tmp_path, texts_file):
    """A server that answers in 5 s keeps Locust past run time + grace: it is killed, not waited for."""
    profile = Profile(users=1, duration_s=1, warmup_s=0, grace_s=0.5)
    prefix = tmp_path / "stuck"
    with S.serving(standin_spec("--delay-ms", "5000"), tmp_path / "server.log") as running:
        with pytest.raises(BortError, match="did not finish"):
            run_locust(running.spec.port, profile, texts_file, prefix)
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and str(prefix) in _cmdline(p)]
    assert left == []


def _cmdline(proc_dir: Path) -> str:
    try:
        return (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_locust_sends_the_key_the_services_require_and_targets_loadtest_host(tmp_path, monkeypatch):
    from loadtest.locust_run import locust_env

    profile = Profile(users=1, duration_s=1, warmup_s=0)
    monkeypatch.delenv("BORT_LOADTEST_API_KEY", raising=False)
    monkeypatch.setenv("BORT_API_KEY", "s3cret")
    assert locust_env(profile, tmp_path / "t.json", tmp_path / "run")["BORT_LOADTEST_API_KEY"] == "s3cret"
    monkeypatch.delenv("BORT_API_KEY")
    assert locust_env(profile, tmp_path / "t.json", tmp_path / "run")["BORT_LOADTEST_API_KEY"] == ""
    cmd = locust_command(3100, profile, tmp_path / "run", host="serving-box")  # built, never run
    assert cmd[cmd.index("-H") + 1] == "http://serving-box:3100"
