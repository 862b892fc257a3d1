"""A hardened sandbox for untrusted (model-generated) Python: `run_code`, `run_tests` and the batched `run_many`.

Verification (`run_tests`, used by every code verifier and reward): the untrusted code runs as the sandboxed
program; the trusted tests run in a separate *tester* process of the same sample (another uid, not dumpable,
seccomp'd) that reads them from a root-only file the program's process never saw, and calls the program's names
over a socket carrying plain data only (see `sandbox_worker.py`: `encode`/`decode`, `Remote`). Only the tester's
verdict, written to a pipe the program never holds, can pass a sample; the program's exit status, output and
file descriptors cannot. So exiting early, atexit hooks, printed markers, patched builtins/`unittest`, forked
children and objects whose `__eq__` is always true all fail.

Every program runs in its own PID, mount and IPC namespace, inside an empty network namespace, as an unprivileged
uid of its own (1e6 + worker pid * 100 + n, or 65534 where such uids are not mapped; gid 65534) without
capabilities, with no_new_privs and a seccomp filter (pyseccomp over libseccomp, where available:
`result.seccomp`). Its root is private: a tmpfs holding read-only binds of the interpreter, its stdlib, the
shared-library folders it maps and /etc/ld.so.cache (site-packages masked), a tmpfs work dir (also /tmp, /var/tmp,
/dev/shm), a minimal /dev and its own /proc (other uids' processes hidden); nothing else of the host. Limits:
wall clock, CPU time, address space, file size, process count, open files, and a memory + pids cgroup that caps
all of the sample's processes together (where a cgroup tree is writable; `result.cgroup` says which). It gets a
scrubbed environment (PATH, LANG, HOME=its work dir, PYTHONHASHSEED=0 ...). When the wall clock runs out, PID 1 of
the sample's namespace is killed and the kernel takes every descendant with it, whether it daemonised, called
setsid() or ignores SIGTERM. Output is read with a byte cap (huge output is truncated, and killed past
`kill_output_bytes`).

Speed: a pool of pre-started fork-server workers (one per core by default) forks each sample from a warm
interpreter instead of starting Python per sample (`bench/bench_sandbox.py` measures it against
`subprocess.run([python, "-c", code])`).

Where namespaces are unavailable (not root, or no CAP_SYS_ADMIN) results carry ``isolation="degraded"`` and a
note in ``reason``: the tester, rlimits, cgroup, a new process group, and (as root) the per-sample uids still
apply, and every process of those uids is killed afterwards; the filesystem is the host's, the network is not
cut and world-writable host folders are writable.

Statuses: passed (`run_code`: exit 0; `run_tests`: the tests ran to their end), failed (non-zero exit; with
tests: a failing test, a program that ended or broke the protocol before the tests finished), timeout (wall
clock or CPU time), oom (MemoryError under the address-space limit, or the cgroup's OOM killer), killed (a
signal, or too much output), error (the sandbox itself failed).
"""

from __future__ import annotations

import ast
import atexit
import builtins
import functools
import importlib.util
import json
import os
import queue
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from mixlab.errors import MixlabError

Status = Literal["passed", "failed", "timeout", "oom", "killed", "error"]
STATUSES: tuple[str, ...] = ("passed", "failed", "timeout", "oom", "killed", "error")

SANDBOX_UID = int(os.environ.get("MIXLAB_SANDBOX_UID", "65534"))  # nobody
SANDBOX_GID = int(os.environ.get("MIXLAB_SANDBOX_GID", "65534"))  # nogroup
WORKER_SCRIPT = Path(__file__).with_name("sandbox_worker.py")
_spec = importlib.util.find_spec("pyseccomp")  # optional: seccomp filter as defence in depth (Linux)
_PYSECCOMP_DIR = str(Path(_spec.origin).parent) if _spec is not None and _spec.origin else ""
_STDLIB_PROBE = "import collections, decimal, heapq, json, re, sys; print(sys.prefix)"


@dataclass
class SandboxResult:
    status: Status
    returncode: int | None  # negative = killed by that signal, like subprocess
    stdout: str  # truncated to max_output_bytes
    stderr: str  # truncated to max_output_bytes
    duration_s: float
    reason: str = ""
    isolation: str = "namespaces"  # "namespaces" or "degraded"
    cpu_s: float | None = None
    max_rss_kb: int | None = None
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    cgroup: str | None = None  # "v1"/"v2" when a memory+pids cgroup capped the whole sample, else None
    seccomp: bool = False  # whether the seccomp filter was loaded for the sample's processes
    verdict: dict | None = None  # with tests: the tester's {"passed", "reason", "calls"}

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def degraded(self) -> bool:
        return self.isolation != "namespaces"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Limits:
    timeout_s: float = 10.0
    memory_mb: int = 512  # RLIMIT_AS; 0 disables
    cpu_s: float | None = None  # RLIMIT_CPU; default = timeout_s
    fsize_mb: int = 16  # RLIMIT_FSIZE: largest file the program may write
    nproc: int = 32  # RLIMIT_NPROC for the sandbox uid
    nofile: int = 256
    disk_mb: int = 64  # size of the tmpfs working directory (and /tmp)
    max_output_bytes: int = 64 * 1024  # kept per stream
    kill_output_bytes: int = 8 * 1024 * 1024  # total output that gets the program killed
    mode: Literal["fork", "exec"] = "fork"  # exec(): warm fork-server interpreter; execve(): a fresh one

    def validate(self) -> None:
        if not self.timeout_s > 0:
            raise MixlabError(f"sandbox timeout must be > 0 seconds, got {self.timeout_s}")
        if self.cpu_s is not None and not self.cpu_s > 0:
            raise MixlabError(f"sandbox cpu_s must be > 0, got {self.cpu_s}")
        if self.memory_mb < 0 or self.fsize_mb < 1 or self.nproc < 1 or self.nofile < 16 or self.disk_mb < 1:
            raise MixlabError(f"sandbox limits out of range: {self}")
        if self.mode not in ("fork", "exec"):
            raise MixlabError(f"sandbox mode must be 'fork' or 'exec', got {self.mode!r}")


# ------------------------------------------------------------------------------------------ interpreter


def _probe_python(candidate: str, uid: int, gid: int) -> str | None:
    """sys.prefix of `candidate` when the sandbox uid can run it and import its stdlib, else None."""
    try:
        proc = subprocess.run(
            [candidate, "-I", "-c", _STDLIB_PROBE], user=uid, group=gid, extra_groups=[],
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, capture_output=True, text=True, timeout=30,
            cwd="/",
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def sandbox_python() -> tuple[str, str]:
    """(interpreter, prefix) for the fork-server: one the sandbox uid can read, the venv's own if it can.

    A virtualenv under a private home (e.g. /root/.pyenv) is unreadable to uid 65534, so samples forked from it
    could not import a single stdlib module; a system interpreter is then used (samples need only the stdlib).
    `MIXLAB_SANDBOX_PYTHON` overrides.
    """
    override = os.environ.get("MIXLAB_SANDBOX_PYTHON")
    if os.geteuid() != 0:
        exe = override or sys.executable
        return exe, sys.prefix
    candidates = [override] if override else []
    candidates += [sys.executable, getattr(sys, "_base_executable", None), "/usr/bin/python3",
                   "/usr/local/bin/python3", shutil.which("python3")]
    tried = []
    for candidate in candidates:
        if not candidate or candidate in tried or not os.path.exists(candidate):
            continue
        tried.append(candidate)
        prefix = _probe_python(candidate, SANDBOX_UID, SANDBOX_GID)
        if prefix:
            return candidate, prefix
    raise MixlabError(
        f"sandbox: no Python interpreter that uid {SANDBOX_UID} can run (tried {tried}); "
        "set MIXLAB_SANDBOX_PYTHON to a world-readable python3"
    )


# ----------------------------------------------------------------------------------------------- workers


class _Worker:
    """One fork-server process and its pipes."""

    def __init__(self, python: str, isolation: str) -> None:
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "MIXLAB_SANDBOX_ISOLATION": isolation,
               # "worker" (default): one empty network namespace per worker; "sample": one per sample
               "MIXLAB_SANDBOX_NETNS": os.environ.get("MIXLAB_SANDBOX_NETNS", "worker"),
               "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        if _PYSECCOMP_DIR:
            env["MIXLAB_SANDBOX_PYSECCOMP"] = _PYSECCOMP_DIR  # the worker may run another interpreter
        self.proc = subprocess.Popen(
            [python, "-s", str(WORKER_SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=env, cwd="/", start_new_session=True, bufsize=0,
        )
        hello = self._read(timeout_s=60.0)
        if not hello or not hello.get("hello"):
            self.close()
            raise MixlabError(f"sandbox: worker {python} {WORKER_SCRIPT} failed to start")
        self.isolation: str = hello["isolation"]
        self.note: str = hello.get("note", "")
        self.python: str = hello.get("python", python)
        self.cgroup: str | None = hello.get("cgroup")
        self.cgroup_dirs: list[str] = hello.get("cgroup_dirs") or []
        self.seccomp: bool = bool(hello.get("seccomp"))
        self.seccomp_note: str = hello.get("seccomp_note", "")

    def _read_exact(self, n: int, deadline: float) -> bytes | None:
        fd = self.proc.stdout.fileno()
        chunks, need = [], n
        while need:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None  # unresponsive: the caller kills the worker
            chunk = os.read(fd, need)
            if not chunk:
                return None
            chunks.append(chunk)
            need -= len(chunk)
        return b"".join(chunks)

    def _read(self, timeout_s: float) -> dict | None:
        deadline = time.monotonic() + timeout_s
        header = self._read_exact(4, deadline)
        if header is None:
            return None
        body = self._read_exact(struct.unpack(">I", header)[0], deadline)
        return json.loads(body) if body is not None else None

    def request(self, message: dict) -> dict | None:
        """The worker's answer, or None when it died or overran the sample's own deadline by a wide margin."""
        body = json.dumps(message).encode()
        try:
            self.proc.stdin.write(struct.pack(">I", len(body)) + body)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        return self._read(timeout_s=float(message["timeout_s"]) + 30.0)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """Kill the worker; its samples die with it (PDEATHSIG chain down to the namespace's PID 1)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.close()
        for path in self.cgroup_dirs:  # the worker could not remove its cgroup itself
            for _ in range(50):
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class SandboxPool:
    """Thread-safe pool of fork-server workers; `run` blocks for one program, `map` runs many in parallel."""

    def __init__(self, workers: int | None = None, isolation: str | None = None, python: str | None = None) -> None:
        self.max_workers = max(1, workers or min(os.cpu_count() or 1, 4))
        self.isolation = isolation or os.environ.get("MIXLAB_SANDBOX_ISOLATION", "auto")
        if self.isolation not in ("auto", "degraded"):
            raise MixlabError(f"sandbox isolation must be 'auto' or 'degraded', got {self.isolation!r}")
        if python:
            self.python, self.prefix = python, sys.prefix
        else:
            self.python, self.prefix = sandbox_python()
        # Tests reach the tester through root-only files here (0700), never through the worker's memory.
        self._tests_dir = tempfile.mkdtemp(prefix="mixlab-sandbox-tests-")
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False

    def _acquire(self) -> _Worker:
        while True:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                with self._lock:
                    if len(self._all) < self.max_workers:
                        worker = _Worker(self.python, self.isolation)
                        self._all.append(worker)
                        return worker
                worker = self._idle.get()
            if worker.alive():
                return worker
            self._discard(worker)

    def _discard(self, worker: _Worker) -> None:
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)
        worker.close()

    def run(self, code: str, *, stdin: str | None = None, files: dict[str, str] | None = None,
            tests: str | None = None, entry_points: Sequence[str] = (), limits: Limits | None = None) -> SandboxResult:
        """Run `code`. Without `tests`: passed = exit status 0. With `tests` (trusted Python: asserts, a
        `check(f)` ...): passed = the tests ran to their end in the separate tester process, calling the program's
        functions over the sandbox's data-only channel; the program's exit status and output do not count."""
        if self._closed:
            raise MixlabError("sandbox pool is closed")
        limits = limits or Limits()
        limits.validate()
        if tests is not None and limits.mode != "fork":
            raise MixlabError("sandbox: tests run only in 'fork' mode")
        request = {
            "code": code if isinstance(code, str) else str(code),
            "stdin": stdin,
            "files": _check_files(files),
            "timeout_s": float(limits.timeout_s),
            "cpu_s": float(limits.cpu_s if limits.cpu_s is not None else limits.timeout_s),
            "memory_mb": int(limits.memory_mb),
            "fsize_mb": int(limits.fsize_mb),
            "nproc": int(limits.nproc),
            "nofile": int(limits.nofile),
            "disk_mb": int(limits.disk_mb),
            "max_output_bytes": int(limits.max_output_bytes),
            "kill_output_bytes": int(limits.kill_output_bytes),
            "mode": limits.mode,
            "python": None,
            "uid": SANDBOX_UID,
            "gid": SANDBOX_GID,
            "tests_path": None,
        }
        if tests is not None:
            spec = {"tests": str(tests), "entry_points": list(entry_points),
                    "names": sorted(set(entry_points) | set(free_names(str(tests))))}
            fd, path = tempfile.mkstemp(dir=self._tests_dir, suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(spec, fh)
            request["tests_path"] = path
        try:
            worker = self._acquire()
            raw = worker.request(request)
        finally:
            if request["tests_path"]:
                Path(request["tests_path"]).unlink(missing_ok=True)  # normally the sample has unlinked it
        if raw is None:  # the worker died or hung: never the sample's fault, never a pass
            with self._lock:
                if worker in self._all:
                    self._all.remove(worker)
            worker.kill()
            return SandboxResult("error", None, "", "", 0.0, reason="sandbox worker died or stopped answering",
                                 isolation="unknown")
        self._idle.put(worker)
        return _classify(raw, request, tests is not None)

    def map(self, codes: Sequence[str], *, stdins: Sequence[str | None] | None = None,
            tests: Sequence[str | None] | None = None, entry_points: Sequence[Sequence[str]] | None = None,
            files: dict[str, str] | None = None, limits: Limits | None = None, progress=None) -> list[SandboxResult]:
        stdins = list(stdins) if stdins is not None else [None] * len(codes)
        tests = list(tests) if tests is not None else [None] * len(codes)
        entries = list(entry_points) if entry_points is not None else [()] * len(codes)
        if not len(stdins) == len(tests) == len(entries) == len(codes):
            raise MixlabError("run_many: stdins/tests/entry_points must have one entry per program")

        def one(i: int) -> SandboxResult:
            result = self.run(codes[i], stdin=stdins[i], files=files, tests=tests[i], entry_points=entries[i],
                              limits=limits)
            if progress is not None:
                progress(1)
            return result

        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            return list(pool.map(one, range(len(codes))))

    def close(self) -> None:
        self._closed = True
        with self._lock:
            workers, self._all = self._all, []
        for worker in workers:
            if os.getpid() == self._pid:
                worker.close()
        if os.getpid() == self._pid:
            shutil.rmtree(self._tests_dir, ignore_errors=True)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_files(files: dict[str, str] | None) -> dict[str, str]:
    out = {}
    for name, content in (files or {}).items():
        parts = Path(name).parts
        if not name or Path(name).is_absolute() or ".." in parts or name == "main.py":
            raise MixlabError(f"sandbox file name {name!r} must be a relative path inside the work dir (not main.py)")
        out[str(name)] = content if isinstance(content, str) else bytes(content).decode("utf-8")
    return out


# -------------------------------------------------------------------------------------------- verdicts

_MEMORY_ERROR = re.compile(r"^(?:\w+\.)*MemoryError\b", re.MULTILINE)


def _classify(raw: dict, request: dict, with_tests: bool) -> SandboxResult:
    isolation = raw.get("isolation", "unknown")
    note = raw.get("isolation_note") or ""
    verdict = raw.get("verdict") if with_tests else None

    def make(status: Status, returncode: int | None, reason: str) -> SandboxResult:
        if raw.get("cgroup_oom") and status in ("failed", "killed", "timeout"):
            status = "oom"
            reason = (f"memory cgroup limit ({request['memory_mb']} MB + {request['disk_mb']} MB tmpfs for all "
                      f"of the sample's processes) hit: the kernel OOM killer ran; {reason}")
        if note:
            reason = f"{reason}; {note}" if reason else note
        return SandboxResult(
            status=status, returncode=returncode, stdout=raw.get("stdout", ""), stderr=raw.get("stderr", ""),
            duration_s=float(raw.get("duration_s", 0.0)), reason=reason, isolation=isolation,
            cpu_s=raw.get("cpu_s"), max_rss_kb=raw.get("maxrss_kb"), stdout_bytes=raw.get("stdout_bytes", 0),
            stderr_bytes=raw.get("stderr_bytes", 0), cgroup=raw.get("cgroup"), seccomp=bool(raw.get("seccomp")),
            verdict=verdict,
        )

    wait_status = raw.get("wait_status")
    returncode = os.waitstatus_to_exitcode(wait_status) if wait_status is not None else None
    if returncode is None and raw.get("killed_for"):
        returncode = -signal.SIGKILL  # the sandbox killed it before it could exit, as subprocess would report
    if raw.get("killed_for") == "timeout":
        return make("timeout", returncode, f"wall-clock limit of {request['timeout_s']:g}s exceeded")
    if raw.get("killed_for") == "output":
        return make("killed", returncode, f"output exceeded {request['kill_output_bytes']} bytes")
    if raw.get("setup_error"):
        return make("error", returncode, f"sandbox set-up failed: {raw['setup_error']}")
    if with_tests:
        # Only the tester's verdict can pass a sample; the program's exit status and output never do.
        if isinstance(verdict, dict) and verdict.get("passed") is True:
            return make("passed", returncode, "")
        why = (verdict or {}).get("reason") if isinstance(verdict, dict) else None
        why = why or "the tests gave no verdict"
    if returncode is None:
        if with_tests:
            return make("failed", None, why)
        return make("error", None, "sandbox returned no exit status")
    tail = (raw.get("stderr") or "")[-2000:]
    if returncode < 0:
        sig = -returncode
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
        cpu = raw.get("cpu_s") or 0.0
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= request["cpu_s"] - 0.05):
            return make("timeout", returncode, f"CPU-time limit of {request['cpu_s']:g}s exceeded ({name})")
        return make("killed", returncode, f"killed by {name}" + (f"; {why}" if with_tests else ""))
    if _MEMORY_ERROR.search(tail) and (returncode != 0 or with_tests):
        return make("oom", returncode, f"MemoryError under the {request['memory_mb']} MB address-space limit")
    if with_tests:
        return make("failed", returncode, why)
    if returncode != 0:
        last = next((line for line in reversed(tail.splitlines()) if line.strip()), "")
        return make("failed", returncode, f"exit status {returncode}" + (f": {last[:200]}" if last else ""))
    return make("passed", returncode, "")


_BUILTIN_NAMES = frozenset(dir(builtins)) | {"__name__", "__file__", "__builtins__", "__doc__"}

# CPython 3.11 keeps the AST constructor's recursion-depth counter per interpreter, not per thread: two threads inside
# ast.parse at once (a garbage collection or a finaliser lets them switch) fail with "SystemError: AST constructor
# recursion depth mismatch" (python/cpython#106905). Code scoring parses in a thread pool, and one `make demo` run
# lost its GRPO stage to it. Every parse of untrusted source in mixlab goes through `parse_python`.
_AST_LOCK = threading.Lock()


def parse_python(source: str) -> ast.Module:
    """`ast.parse`, one thread at a time (see _AST_LOCK)."""
    with _AST_LOCK:
        return ast.parse(source)


def free_names(tests: str) -> list[str]:
    """Names the tests use but do not bind themselves (nor are builtins): the program's functions and classes,
    and modules the tests use without importing them (bound in the tester from the stdlib)."""
    try:
        tree = parse_python(tests)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return []  # the tester reports the SyntaxError itself
    loaded: set[str] = set()
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            bound.difference_update(node.names)
    return sorted(loaded - bound - _BUILTIN_NAMES)


# ------------------------------------------------------------------------------------------ module API

_default_pool: SandboxPool | None = None
_default_lock = threading.Lock()


def default_pool(workers: int | None = None) -> SandboxPool:
    """The process-wide pool (grows to `workers`); recreated after a fork of this process."""
    global _default_pool
    with _default_lock:
        if _default_pool is None or _default_pool._pid != os.getpid() or _default_pool._closed:
            _default_pool = SandboxPool(workers=workers)
        elif workers and workers > _default_pool.max_workers:
            _default_pool.max_workers = workers
        return _default_pool


@atexit.register
def _close_default_pool() -> None:
    if _default_pool is not None and _default_pool._pid == os.getpid():
        _default_pool.close()


def run_code(
    code: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 512,
    cpu_s: float | None = None,
    stdin: str | None = None,
    files: dict[str, str] | None = None,
    **limits: Any,
) -> SandboxResult:
    """Run one untrusted Python program; passed = exit status 0 (see the module docstring)."""
    lim = Limits(timeout_s=timeout_s, memory_mb=memory_mb, cpu_s=cpu_s, **limits)
    return default_pool().run(code, stdin=stdin, files=files, limits=lim)


def run_tests(
    code: str,
    tests: str,
    entry_points: Sequence[str] = (),
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 512,
    cpu_s: float | None = None,
    files: dict[str, str] | None = None,
    **limits: Any,
) -> SandboxResult:
    """Verify untrusted `code` against trusted `tests`: the one mechanism every verifier uses.

    `code` runs as the sandboxed program; `tests` run in the tester process and reach the program's names
    (`entry_points`, plus any name the tests use without defining) only as calls over the data-only channel.
    passed = the tests ran to their end; nothing the program does to itself, its output or its exit counts."""
    lim = Limits(timeout_s=timeout_s, memory_mb=memory_mb, cpu_s=cpu_s, **limits)
    return default_pool().run(code, files=files, tests=tests, entry_points=entry_points, limits=lim)


def run_many(
    codes: Sequence[str],
    workers: int = 2,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 512,
    cpu_s: float | None = None,
    stdins: Sequence[str | None] | None = None,
    tests: Sequence[str | None] | None = None,
    entry_points: Sequence[Sequence[str]] | None = None,
    files: dict[str, str] | None = None,
    progress=None,
    **limits: Any,
) -> list[SandboxResult]:
    """Run many programs, `workers` at a time (one fork-server per worker); results in input order.
    With `tests` (one per program, None for a plain run), each is verified as `run_tests` does."""
    lim = Limits(timeout_s=timeout_s, memory_mb=memory_mb, cpu_s=cpu_s, **limits)
    pool = default_pool(workers)
    kwargs = dict(stdins=stdins, tests=tests, entry_points=entry_points, files=files, limits=lim, progress=progress)
    if workers < pool.max_workers:
        with SandboxPool(workers=workers, isolation=pool.isolation) as own:
            return own.map(codes, **kwargs)
    return pool.map(codes, **kwargs)


def isolation_status() -> dict[str, str]:
    """How this machine isolates samples: {"isolation": ..., "note": ..., "python": ...}."""
    result = run_code("pass", timeout_s=10)
    return {"isolation": result.isolation, "note": result.reason, "python": default_pool().python}
