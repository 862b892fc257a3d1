"""Dashboard fixtures: one realistic sample database per session, built through the real store API."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from mixlab import procs
from mixlab.dashboard import sample_data


@pytest.fixture(scope="session")
def sample_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("dashboard") / "sample.duckdb"
    summary = sample_data.build(path, n_runs=36, samples_per_task=12, seed=0)
    assert summary.runs == 36 and summary.eval_samples > 0
    return path


@pytest.fixture
def use_db(monkeypatch):
    """Point the app (which reads MIXLAB_DB) at a given file."""

    def _use(path):
        monkeypatch.setenv("MIXLAB_DB", str(path))
        return path

    return _use


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int, proc: subprocess.Popen, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("server did not become healthy")


def start_dashboard(db: Path, port: int) -> subprocess.Popen:
    return procs.popen(procs.mixlab_args("dashboard", "--db", str(db), "--port", str(port)),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture
def dashboard_server(sample_db):
    """`mixlab dashboard --db SAMPLE --port FREE` as a real process; yields (url, process)."""
    port = free_port()
    proc = start_dashboard(sample_db, port)
    try:
        wait_healthy(port, proc)
        yield f"http://127.0.0.1:{port}/", proc
    finally:
        if proc.poll() is None:
            stop(proc)
