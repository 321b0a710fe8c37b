"""The process supervisor (bort/processes.py): services started in their own process group, ready on
127.0.0.1, and gone after, every group their descendants made included."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from loadtest_support import standin_spec

from bort import processes as S
from bort.errors import BortError


def assert_groups_gone(groups: set[int]) -> None:
    for group in groups:
        with pytest.raises(ProcessLookupError):
            os.killpg(group, 0)


def test_serving_stops_the_whole_group_including_a_child_and_a_new_session(tmp_path):
    spec = standin_spec("--spawn-child", "--spawn-session-child")
    with S.serving(spec, tmp_path / "server.log") as running:
        assert spec.url.startswith("http://127.0.0.1:")
        assert len(S.group_members(running.pgid)) == 2  # the server and its same-group child
        groups = set(running.groups)
        assert len(groups) == 2  # ... and the child it started in a session of its own
    assert_groups_gone(groups)


def test_serving_stops_the_group_when_the_body_raises(tmp_path):
    spec = standin_spec("--spawn-child")
    with pytest.raises(RuntimeError, match="boom"):
        with S.serving(spec, tmp_path / "server.log") as running:
            groups = set(running.groups)
            raise RuntimeError("boom")
    assert_groups_gone(groups)


def test_a_server_that_ignores_sigterm_is_killed(tmp_path):
    running = S.start(standin_spec("--ignore-sigterm"), tmp_path / "server.log")
    S.stop(running, grace_s=0.3)
    assert running.proc.returncode == -9
    assert_groups_gone({running.pgid})


def test_a_server_that_fails_at_start_is_reported_with_its_log(tmp_path):
    with pytest.raises(BortError, match="failing at start as asked"):
        S.start(standin_spec("--fail-start"), tmp_path / "server.log")


def test_a_taken_port_is_refused_before_starting(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        spec = S.ServiceSpec("x", (sys.executable, "-c", "pass"), sock.getsockname()[1])
        with pytest.raises(BortError, match="already in use"):
            S.start(spec, tmp_path / "server.log")


def test_cpu_lists_parse_and_are_checked_against_this_process():
    usable = sorted(os.sched_getaffinity(0))
    assert S.parse_cpus("") is None
    assert S.parse_cpus(f"{usable[0]}-{usable[0]}") == {usable[0]}
    with pytest.raises(BortError, match="outside"):
        S.parse_cpus("4096")
    with pytest.raises(BortError, match="expected"):
        S.parse_cpus("a-b")


def test_stopping_a_service_leaves_other_process_groups_alone(tmp_path):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        with S.serving(standin_spec("--spawn-child", "--spawn-session-child"), tmp_path / "server.log") as running:
            assert bystander.pid not in running.pids()
            assert running.cpu_s() >= 0.0
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_service_without_a_log_file_writes_to_ours_and_still_stops(tmp_path):
    with S.serving(standin_spec("--spawn-child"), None) as running:
        pids = running.pids()
        assert running.proc.pid in pids and len(pids) == 2
    assert not S.alive(pids)


def test_a_server_that_lost_a_port_race_is_started_again(tmp_path):
    import dataclasses
    import shlex

    spec = standin_spec()
    marker = tmp_path / "first-start"
    script = (f"if [ ! -e {shlex.quote(str(marker))} ]; then touch {shlex.quote(str(marker))}; "
              "echo 'zmq.error.ZMQError: Address already in use' >&2; exit 1; fi; "
              f"exec {shlex.join(spec.command)}")
    racy = dataclasses.replace(spec, command=("bash", "-c", script))
    with S.serving(racy, tmp_path / "server.log") as running:
        assert running.proc.poll() is None and marker.exists()
    assert "Address already in use" in (tmp_path / "server.log").read_text()


def test_a_server_that_keeps_failing_is_not_started_again(tmp_path):
    counter = tmp_path / "starts"
    spec = S.ServiceSpec("x", ("bash", "-c", f"echo x >> {counter}; echo failing >&2; exit 1"), S.free_port())
    with pytest.raises(BortError, match="failing"):
        S.start(spec, tmp_path / "server.log")
    assert counter.read_text().count("x") == 1
