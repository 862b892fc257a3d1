"""`mixlab dashboard`: options, bad input, and a real server answering over HTTP on 127.0.0.1."""

from __future__ import annotations

import signal
import urllib.request

import pytest
from typer.testing import CliRunner

from mixlab.cli import app
from mixlab.dashboard.cli import streamlit_command
from mixlab.errors import MixlabError


def test_help_lists_options():
    result = CliRunner().invoke(app, ["dashboard", "--help"])
    assert result.exit_code == 0
    for option in ("--db", "--port", "--host"):
        assert option in result.output


def test_streamlit_command_is_local_headless_and_private(tmp_path):
    cmd, env = streamlit_command(tmp_path / "x.duckdb", 8600, "127.0.0.1")
    flags = dict(zip(cmd[6::2], cmd[7::2]))
    assert cmd[1:5] == ["-P", "-m", "mixlab.dashboard.server", "run"] and cmd[5].endswith("app.py")
    assert flags["--server.address"] == "127.0.0.1" and flags["--server.port"] == "8600"
    assert flags["--browser.gatherUsageStats"] == "false" and flags["--server.headless"] == "true"
    assert env["MIXLAB_DB"] == str((tmp_path / "x.duckdb").resolve())


@pytest.mark.parametrize("args, message", [
    (["--db", "{tmp}"], "is a directory"),
    (["--port", "70000"], "out of range"),
])
def test_bad_input_is_a_mixlab_error(tmp_path, args, message):
    """MixlabError is what the `mixlab` entry point turns into `error: <msg>` and exit code 2."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = CliRunner().invoke(app, ["dashboard", *args])
    assert isinstance(result.exception, MixlabError) and message in str(result.exception)


def test_real_server_serves_the_app(dashboard_server):
    url, proc = dashboard_server
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200 and b"<html" in r.read().lower()
    assert url.startswith("http://127.0.0.1:")
    # The CLI exec's into Streamlit, so the process we started is the server: SIGTERM stops it, no orphan.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) is not None
