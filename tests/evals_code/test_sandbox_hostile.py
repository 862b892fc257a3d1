"""The hostile-program corpus (tests/evals_code/hostile/*.py) against the real sandbox: real processes, a real
TCP server, real canary files in the repo, the test's tmp dir and a real DuckDB file.

Each program runs the way a code task runs an answer: the program, then a success-marker print. Every one must
come back not-passed, in bounded time, with the machine untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path

import pytest

from mixlab.evals.sandbox import Limits, SandboxPool, SandboxResult, default_pool, run_code
from mixlab.paths import REPO_ROOT

HOSTILE = Path(__file__).with_name("hostile")
TIMEOUT_S = 3.0
BOUND_S = 30.0  # "bounded time": a containment property with a wide margin, not a performance assertion

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the hardened sandbox needs root (uid drop, namespaces)")


def run_hostile(name: str, targets: dict | None = None, pool: SandboxPool | None = None,
                **limits) -> SandboxResult:
    """Run the program as a verifier does: it defines `probe`, the tests call it after the program ran."""
    code = (HOSTILE / f"{name}.py").read_text() + "\ndef probe():\n    return 1\n"
    files = {"targets.json": json.dumps(targets or {})}
    limits.setdefault("timeout_s", TIMEOUT_S)
    result = (pool or default_pool()).run(code, files=files, tests="assert probe() == 1\n", entry_points=["probe"],
                                          limits=Limits(**limits))
    assert result.status != "passed", result
    assert result.status != "error", result
    assert result.duration_s < BOUND_S, result
    return result


def namespace_members(ns: str) -> list[int]:
    """Host pids whose PID namespace is `ns` (e.g. 'pid:[4026532301]')."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == ns:
                    members.append(int(entry))
            except OSError:
                pass
    return members


def processes_with_cmdline(needle: bytes) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if needle in fh.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def isolation():
    return default_pool().run("pass").isolation


def test_infinite_loop_times_out():
    result = run_hostile("infinite_loop")
    assert result.status == "timeout"
    assert result.returncode is not None and result.returncode < 0


def test_cpu_time_limit_stops_a_spinner_before_the_wall_clock():
    result = run_hostile("infinite_loop", timeout_s=20.0, cpu_s=1.0)
    assert result.status == "timeout"
    assert "CPU-time" in result.reason


def test_fork_bomb_is_contained_and_leaves_no_process(isolation):
    result = run_hostile("fork_bomb")
    assert result.status in ("timeout", "killed", "failed")
    if isolation == "namespaces":
        ns = result.stdout.splitlines()[0]
        assert ns.startswith("pid:[")
        assert namespace_members(ns) == []
    # the machine can still start processes
    assert run_code("import os; print(os.getpid())").passed


def test_memory_bomb_is_reported_as_oom():
    result = run_hostile("memory_bomb", memory_mb=256)
    assert result.status == "oom", result
    assert "MemoryError" in result.stderr


def test_writes_outside_the_workdir_leave_repo_tmp_and_duckdb_untouched(tmp_path, store, db_path, isolation):
    store.query("SELECT 1")  # the DuckDB file exists and holds the schema
    repo_canary = REPO_ROOT / f".sandbox-canary-{secrets.token_hex(4)}"
    tmp_canary = tmp_path / "canary.txt"
    shared_dir = Path("/tmp") / f"mixlab-sandbox-shared-{secrets.token_hex(4)}"  # world-writable host folder
    shared_dir.mkdir(mode=0o777)
    shared_dir.chmod(0o1777)
    try:
        repo_canary.write_text("repo canary")
        tmp_canary.write_text("tmp canary")
        if isolation == "namespaces":
            # Even world-writable files stay out of reach: the sandbox cannot see these folders at all.
            repo_canary.chmod(0o666)
            tmp_canary.chmod(0o666)
        before = {p: sha(p) for p in (repo_canary, tmp_canary, db_path, REPO_ROOT / "pyproject.toml")}
        targets = {
            "overwrite": [str(p) for p in before],
            "create": [str(shared_dir / "escaped.txt"), str(REPO_ROOT / "escaped.txt"), "/root/escaped.txt",
                       str(tmp_path / "escaped.txt")],
            "rmtree": [str(tmp_path), str(REPO_ROOT / "tests" / "evals_code")],
            "list": [str(REPO_ROOT), "/root", str(db_path.parent)],
        }
        result = run_hostile("write_outside", targets)
        assert result.status == "failed"
        outcomes = json.loads(result.stdout.splitlines()[0])
        assert {p: sha(p) for p in before} == before
        assert not (REPO_ROOT / "escaped.txt").exists()
        assert not (tmp_path / "escaped.txt").exists()
        if isolation == "namespaces":  # degraded mode documents this gap: world-writable host folders
            assert list(shared_dir.iterdir()) == []
        assert (REPO_ROOT / "tests" / "evals_code" / "hostile").is_dir()
        if isolation == "namespaces":
            assert outcomes[f"list {REPO_ROOT}"] == "FileNotFoundError"  # not in the sample's root at all
            assert all(v != "DONE" for k, v in outcomes.items() if not k.startswith(f"create {shared_dir}"))
    finally:
        repo_canary.unlink(missing_ok=True)
        for leftover in shared_dir.iterdir():
            leftover.unlink()
        shared_dir.rmdir()


def test_environment_secrets_do_not_reach_the_program(monkeypatch):
    secret = f"sk-mixlab-test-{secrets.token_hex(8)}"
    monkeypatch.setenv("MIXLAB_FAKE_API_KEY", secret)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    with SandboxPool(workers=1) as pool:  # workers started while the secret is in this process's environment
        result = run_hostile("read_secrets", pool=pool)
    assert result.status == "failed"
    found = json.loads(result.stdout.splitlines()[0])
    assert secret not in result.stdout
    assert set(found["env"]) <= {"PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "PYTHONIOENCODING",
                                 "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED"}
    assert found["env"]["HOME"] != "/root"
    assert not isinstance(found["root"], list) or found["root"] == []


class _Listener:
    """A real TCP server and abstract unix socket server recording every connection."""

    def __init__(self) -> None:
        self.connections: list[str] = []
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind(("0.0.0.0", 0))
        self.tcp.listen(16)
        self.port = self.tcp.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("0.0.0.0", self.port))
        self.abstract = f"mixlab-sandbox-test-{secrets.token_hex(4)}"
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind("\0" + self.abstract)
        self.unix.listen(16)
        for sock in (self.tcp, self.udp, self.unix):
            sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            for sock in (self.tcp, self.unix):
                try:
                    conn, addr = sock.accept()
                    self.connections.append(f"{sock.family.name} {addr}")
                    conn.close()
                except OSError:
                    pass
            try:
                data, addr = self.udp.recvfrom(1024)
                self.connections.append(f"udp {addr} {data!r}")
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for sock in (self.tcp, self.udp, self.unix):
            sock.close()


def test_sockets_reach_nothing(isolation):
    if isolation != "namespaces":
        pytest.skip("network isolation needs a network namespace")
    listener = _Listener()
    try:
        # the server really accepts connections from this (host) network namespace
        socket.create_connection(("127.0.0.1", listener.port), timeout=2).close()
        deadline = time.monotonic() + 5
        while not listener.connections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert listener.connections, "control connection never arrived"
        listener.connections.clear()
        hosts = ["127.0.0.1"]
        try:
            hosts.append(socket.gethostbyname(socket.gethostname()))
        except OSError:
            pass
        result = run_hostile("open_sockets", {"hosts": hosts, "port": listener.port, "abstract": listener.abstract})
        time.sleep(0.5)
        assert result.status == "failed"
        outcomes = json.loads(result.stdout.splitlines()[0])
        assert "CONNECTED" not in outcomes.values() and "SENT" not in outcomes.values(), outcomes
        assert listener.connections == []
    finally:
        listener.close()


def test_huge_output_is_capped():
    result = run_hostile("huge_output", max_output_bytes=4096, kill_output_bytes=2 * 1024 * 1024)
    assert result.status == "killed"
    assert "output exceeded" in result.reason
    assert len(result.stdout) < 4096 + 200 and len(result.stderr) < 4096 + 200
    assert "truncated by the sandbox" in result.stdout


def test_huge_output_below_the_kill_threshold_still_finishes_and_is_truncated():
    result = run_code("import sys\nsys.stdout.write('y' * 3_000_000)\n", max_output_bytes=1000)
    assert result.status == "passed"
    assert result.stdout_bytes == 3_000_000
    assert result.stdout.startswith("y" * 1000) and len(result.stdout) < 1200


def test_early_exit_zero_is_not_a_pass():
    result = run_hostile("early_exit")
    assert result.status == "failed"
    assert result.returncode == 0
    assert "before the tests" in result.reason


def test_sigterm_ignoring_processes_are_killed(isolation):
    result = run_hostile("ignore_sigterm")
    assert result.status == "timeout"
    if isolation == "namespaces":
        assert namespace_members(result.stdout.splitlines()[0]) == []


def test_detached_children_do_not_survive(isolation):
    marker_dir = Path("/dev/shm") / f"mixlab-sandbox-marker-{secrets.token_hex(4)}"
    marker_dir.mkdir()
    marker_dir.chmod(0o1777)
    sleep_arg = f"7.{secrets.randbelow(10**6):06d}"
    try:
        targets = {"sleep": sleep_arg, "delay": "1.5", "marker_dirs": [str(marker_dir), "/tmp"]}
        result = run_hostile("detached_child", targets)
        assert result.status == "failed"  # the parent left with 0 before the marker print
        if isolation == "namespaces":
            assert namespace_members(result.stdout.splitlines()[0]) == []
        assert processes_with_cmdline(f"sleep\0{sleep_arg}".encode()) == []
        time.sleep(2.5)  # past the daemon's delay: had it survived, the marker would be there now
        assert list(marker_dir.iterdir()) == []
        assert processes_with_cmdline(f"sleep\0{sleep_arg}".encode()) == []
    finally:
        for leftover in marker_dir.iterdir():
            leftover.unlink()
        marker_dir.rmdir()


def test_sysv_ipc_and_host_unix_sockets_are_out_of_reach(isolation):
    if isolation != "namespaces":
        pytest.skip("needs IPC and mount namespaces")
    shm_key = 0x4D000000 + secrets.randbelow(0xFFFFFF)
    path = Path("/run") / f"mixlab-sandbox-test-{secrets.token_hex(4)}.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    path.chmod(0o777)
    server.listen(4)
    server.settimeout(0.5)
    try:
        result = run_hostile("ipc_and_unix_sockets", {"shm_key": shm_key, "unix_path": str(path)})
        outcomes = json.loads(result.stdout.splitlines()[0])
        assert outcomes["shmid"] >= 0  # the segment was created — inside the sample's own IPC namespace
        assert outcomes["unix"] != "CONNECTED"
        with pytest.raises(OSError):
            server.accept()
        keys = [int(line.split()[0]) for line in Path("/proc/sysvipc/shm").read_text().splitlines()[1:]]
        assert shm_key not in keys
    finally:
        server.close()
        path.unlink(missing_ok=True)
