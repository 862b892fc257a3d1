"""The sandbox fork-server: one long-lived, stdlib-only process per core that runs untrusted programs.

Started by `mixlab.evals.sandbox` as ``python -s sandbox_worker.py`` (root, scrubbed environment). It reads
length-prefixed JSON requests on stdin and answers on stdout. Each request runs in these forked processes:

    worker (root, its own empty network namespace: no interface is up, not even loopback; a cgroup)
      └─ C1  opens and unlinks the tests file (root-only; never read here); joins the worker's memory+pids
          │  cgroup; unshare(PID | mount | IPC); waits for C2; dies with the worker (PDEATHSIG)
          └─ C2  PID 1 of a fresh PID namespace: builds the private root (tmpfs + read-only binds of the
              │  allow-list, pivot_root, old root detached), reaps orphans; when the program exits (or, with
              │  tests, the tester has its verdict) it reports and exits, and the kernel SIGKILLs every process
              │  left in the namespace (daemonised, setsid'd, SIGTERM-ignoring children included)
              ├─ T   with tests only: the tester. Its own uid, not dumpable, no capabilities, seccomp; reads the
              │      tests from the file descriptor, runs them, calling the program over a socketpair (fd 3 on
              │      both sides); writes its verdict to a pipe only C2 reads
              └─ C3  the program: rlimits (AS, CPU, FSIZE, NPROC, NOFILE, CORE), scrubbed env, a uid of its own
                     (gid 65534), no capabilities, no_new_privs, seccomp, cwd = a fresh tmpfs; runs the code
                     (exec() in this pre-warmed interpreter, or execve of a fresh interpreter in "exec" mode),
                     then, with tests, answers the tester's calls

The tests never pass through the memory of any process the program is forked from (a forked program could read
freed memory with ctypes), only through the file C1 opens for T.

Forking a warm interpreter avoids ~20-50 ms of interpreter start-up per sample; the namespaces cost ~3 ms.
On the wall-clock deadline the worker SIGKILLs C2 (PID 1), which takes the whole PID namespace down.

Without namespaces (no CAP_SYS_ADMIN) the worker runs "degraded": a new session and process group, the same
rlimits and cgroup and (when root) a uid of the sample's own, a host temp dir removed afterwards, and at the
end the process group and every process of that uid killed (daemons included) and its SysV IPC objects
removed. The network is not cut, and files written to world-writable host folders (/tmp, /dev/shm) stay.
Every result says which mode ran.

This file must import only the standard library: it runs under an interpreter the sandbox uid can read,
which is not necessarily the project's virtualenv. (pyseccomp, pure Python over libseccomp, is imported from the
folder in MIXLAB_SANDBOX_PYSECCOMP when the parent found it.)
"""

from __future__ import annotations

import collections
import ctypes
import decimal
import errno
import fcntl
import fractions
import functools
import glob
import json
import os
import resource
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
import traceback

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
MS_REC, MS_PRIVATE = 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER = 1, 4, 38, 36

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

SANDBOX_WORKDIR = "/tmp/sandbox"  # inside the sample's own tmpfs
# Modules imported once here so that samples (forked from this process) do not pay for them.
PRELOAD = (
    "abc array atexit bisect calendar cmath collections copy dataclasses datetime decimal enum fractions functools "
    "hashlib heapq io itertools json math operator random re statistics string sys textwrap threading traceback types typing unicodedata"
).split()


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, value, 0, 0, 0), f"prctl({option})")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                    data.encode() if data else None),
        f"mount {target}",
    )


# ---------------------------------------------------------------------------------------------- protocol


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_message(fd: int, limit: int | None = None) -> dict | None:
    header = _read_exact(fd, 4)
    if header is None:
        return None
    size = struct.unpack(">I", header)[0]
    if limit is not None and size > limit:
        raise ValueError(f"message of {size} bytes exceeds {limit}")
    body = _read_exact(fd, size)
    return None if body is None else json.loads(body)


def write_message(fd: int, message: dict) -> None:
    body = json.dumps(message).encode()
    data = struct.pack(">I", len(body)) + body
    while data:
        data = data[os.write(fd, data):]


# ------------------------------------------------------------------------------------ inside the sandbox


def _set_limits(req: dict) -> None:
    cpu = max(1, int(req["cpu_s"] + 0.999))
    limits = {
        resource.RLIMIT_CPU: (cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL one second later
        resource.RLIMIT_FSIZE: (req["fsize_mb"] << 20,) * 2,
        resource.RLIMIT_NPROC: (req["nproc"],) * 2,
        resource.RLIMIT_NOFILE: (req["nofile"],) * 2,
        resource.RLIMIT_CORE: (0, 0),
    }
    if req["memory_mb"]:
        limits[resource.RLIMIT_AS] = (req["memory_mb"] << 20,) * 2
    for which, value in limits.items():
        resource.setrlimit(which, value)


def _scrubbed_env(workdir: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": workdir,
        "TMPDIR": "/tmp" if workdir == SANDBOX_WORKDIR else workdir,
        "PYTHONIOENCODING": "utf-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
    }


def _write_files(workdir: str, req: dict, uid: int | None, gid: int | None) -> None:
    entries = dict(req.get("files") or {})
    entries["main.py"] = req["code"]
    for rel, content in entries.items():
        path = os.path.join(workdir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(content)
        if uid is not None:
            os.chown(path, uid, gid)
    if uid is not None:
        for root, dirs, _ in os.walk(workdir):
            for d in dirs:
                os.chown(os.path.join(root, d), uid, gid)


def _run_user_code(req: dict, workdir: str, fds: tuple[int, int, int], drop: bool, rpc_fd: int | None = None) -> None:
    """C3: become the sandboxed program. Never returns.

    With tests (`rpc_fd`), the program's only link to them is the RPC socket on fd 3: the tests themselves run
    in the tester process (another uid, not dumpable), and only what it decides reaches the verdict.
    """
    code = 1
    try:
        stdin_fd, out_fd, err_fd = fds
        os.dup2(stdin_fd, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        if rpc_fd is not None:
            os.dup2(rpc_fd, RPC_FD)
        os.closerange(RPC_FD + 1 if rpc_fd is not None else 3, 65536)
        _set_limits(req)
        os.chdir(workdir)
        if drop:
            os.setgroups([])
            os.setresgid(req["gid"], req["gid"], req["gid"])
            os.setresuid(req["uid"], req["uid"], req["uid"])  # clears every capability
        _prctl(PR_SET_NO_NEW_PRIVS, 1)  # setuid binaries cannot give root back
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # reset by the uid change; set again
        _apply_seccomp(req)
        env = _scrubbed_env(workdir)
        if req["mode"] == "exec":
            python = req["python"] or sys.executable
            # No -E: the environment is ours (scrubbed) and its PYTHONHASHSEED=0 keeps set order reproducible.
            os.execve(python, [python, "-s", "main.py"], env)
        os.environ.clear()
        os.environ.update(env)
        for sig in (signal.SIGTERM, signal.SIGCHLD):  # SIGPIPE stays ignored and SIGINT raises, as in python
            signal.signal(sig, signal.SIG_DFL)
        source = req["code"]
        req.clear()  # nothing of the request stays reachable from the program's frames
        code = _exec_in_this_interpreter(source, workdir, RPC_FD if rpc_fd is not None else None)
    except BaseException:  # noqa: BLE001 - set-up failure inside the child: report on stderr, exit 1
        try:
            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001
            pass
    os._exit(code)


def _exec_in_this_interpreter(source: str, workdir: str, rpc_fd: int | None = None) -> int:
    """Run `source` as `python main.py` would: fresh __main__, script dir on sys.path, same exit codes.

    With `rpc_fd`, the module then answers the tester's calls (see `_serve`) before the usual exit."""
    import atexit
    import builtins
    import types

    sys.stdin = sys.__stdin__ = open(0, encoding="utf-8", errors="replace", closefd=False)
    sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.stderr = sys.__stderr__ = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False,
                                       buffering=1)
    sys.argv = ["main.py"]
    sys.path[0:0] = [workdir]
    main = types.ModuleType("__main__")
    main.__file__ = os.path.join(workdir, "main.py")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    code = 0
    unfinished = None
    try:
        exec(compile(source, main.__file__, "exec"), main.__dict__)
    except SystemExit as exc:
        code = _exit_code(exc)
        unfinished = f"the program exited (SystemExit {exc.code!r}) before the tests ran"
    except BaseException as exc:  # noqa: BLE001 - an uncaught exception: traceback and exit status 1, like python
        traceback.print_exc()
        code = 1
        unfinished = f"the program raised {type(exc).__name__}: {_safe_str(exc)}"
    if rpc_fd is not None:
        try:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            _serve(rpc_fd, main.__dict__, unfinished)
        except SystemExit as exc:
            code = _exit_code(exc)
        except BaseException:  # noqa: BLE001 - the tester sees the broken channel and fails the tests
            code = 1
    try:
        import threading

        threading._shutdown()  # join non-daemon threads, as interpreter exit does
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - e.g. a closed pipe
            pass
    return code


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    try:
        print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001
        pass
    return 1


# ----------------------------------------------------------------- tests: data across the process boundary
#
# The tests never run in the candidate's process. The tester process executes them and calls the candidate's
# functions over a socket; arguments and results cross it as plain data (None, bool, int, float, complex, str,
# bytes, list, tuple, set, dict, range, a few collections/decimal/fractions types; iterators as their items).
# Anything else the candidate returns stays in its process and reaches the tests as an opaque handle, equal only
# to itself: a candidate object with an always-true __eq__ never meets the tests' comparisons.

RPC_FD = 3
MAX_MESSAGE = 64 << 20  # bytes of one message from the candidate
MAX_DEPTH = 200
MAX_ITEMS = 1_000_000  # items materialised from one iterator


class _Unencodable(Exception):
    pass


def _iter_types() -> tuple[type, ...]:
    import itertools
    import types

    samples = ([], (), {}, "", b"", bytearray(), set(), frozenset(), range(0), {}.keys(), {}.values(), {}.items())
    found = {type(iter(x)) for x in samples} | {type(reversed([])), type(reversed(range(0))), type(reversed({}))}
    found |= {types.GeneratorType, map, filter, zip, enumerate, reversed}
    found |= {v for v in vars(itertools).values() if isinstance(v, type)}
    return tuple(found)


_ITERATORS = _iter_types()
_DICT_VIEWS = (type({}.keys()), type({}.values()), type({}.items()))


def encode(obj, table: dict | None, depth: int = 0):
    """`obj` as JSON-able tagged data. `table` (candidate side): other objects become handles stored there;
    None (tester side): only plain data and the candidate's own handles may be sent."""
    if depth > MAX_DEPTH:
        raise _Unencodable("data nested too deeply")
    t = type(obj)
    if obj is None or t is bool or t is str:
        return obj
    if t is int:
        return obj if -(1 << 53) < obj < (1 << 53) else ["I", hex(obj)]
    if t is float:
        return ["f", float.__repr__(obj)]
    rec = functools.partial(encode, table=table, depth=depth + 1)
    if t is list:
        return ["l", [rec(x) for x in obj]]
    if t is tuple:
        return ["t", [rec(x) for x in obj]]
    if t is dict:
        return ["d", [[rec(k), rec(v)] for k, v in obj.items()]]
    if t is set or t is frozenset:
        return ["s" if t is set else "fs", [rec(x) for x in obj]]
    if t is bytes or t is bytearray:
        return ["b" if t is bytes else "ba", obj.hex()]
    if t is complex:
        return ["c", float.__repr__(obj.real), float.__repr__(obj.imag)]
    if t is range:
        return ["r", rec(obj.start), rec(obj.stop), rec(obj.step)]
    if isinstance(obj, Remote) and table is None:
        return ["h", object.__getattribute__(obj, "_id")]
    if table is None:
        raise _Unencodable(f"a {t.__name__} cannot be passed to the candidate")
    # Candidate side only from here: stdlib value types, subclasses of the builtins read through the base type
    # (never the subclass's own methods), iterators as their items, anything else as a handle.
    if t is collections.OrderedDict or t is collections.Counter:
        return ["od" if t is collections.OrderedDict else "ctr", [[rec(k), rec(v)] for k, v in dict.items(obj)]]
    if t is collections.deque:
        return ["dq", [rec(x) for x in obj], obj.maxlen]
    if t is decimal.Decimal:
        return ["dec", decimal.Decimal.__str__(obj)]
    if t is fractions.Fraction:
        return ["fr", rec(obj.numerator), rec(obj.denominator)]
    if isinstance(obj, _DICT_VIEWS):
        return ["l", [rec(x) for x in obj]]
    if isinstance(obj, _ITERATORS):
        items = []
        for item in obj:
            items.append(rec(item))
            if len(items) > MAX_ITEMS:
                raise _Unencodable(f"iterator longer than {MAX_ITEMS} items")
        return ["it", items]
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, int):
        return rec(int.__index__(obj))
    if isinstance(obj, float):
        return rec(float.__float__(obj))
    if isinstance(obj, str):
        return str.__str__(obj)
    if isinstance(obj, tuple):
        return ["t", [rec(x) for x in tuple.__iter__(obj)]]
    if isinstance(obj, list):
        return ["l", [rec(x) for x in list.__iter__(obj)]]
    if isinstance(obj, dict):
        return ["d", [[rec(k), rec(v)] for k, v in dict.items(obj)]]
    if isinstance(obj, (set, frozenset)):
        kind = set if isinstance(obj, set) else frozenset
        return ["s" if kind is set else "fs", [rec(x) for x in kind.__iter__(obj)]]
    if isinstance(obj, (bytes, bytearray)):
        return ["b" if isinstance(obj, bytes) else "ba", bytes(memoryview(obj)).hex()]
    handle = len(table) + 1
    table[handle] = obj
    return ["h", handle, t.__name__[:100]]


class ProtocolViolation(BaseException):
    """The candidate broke the test protocol (died, sent garbage or non-data): the tests fail, whatever they
    catch (a BaseException, so `except Exception` in a test cannot swallow it; the flag on the channel stays)."""


class RemoteAbort(BaseException):
    """The candidate's code raised SystemExit/KeyboardInterrupt/GeneratorExit (or os._exit'ed) during a call."""


class RemoteError(Exception):
    """An exception of the candidate's own type, raised during a call."""


def decode(data, resolve, depth: int = 0):
    """Tagged data -> exact builtin (and a few stdlib) types; handles through `resolve`. Raises ValueError."""
    if depth > MAX_DEPTH + 2:
        raise ValueError("data nested too deeply")
    t = type(data)
    if data is None or t is bool or t is int or t is str or t is float:
        return data
    if t is not list or not data or type(data[0]) is not str:
        raise ValueError(f"malformed value of type {t.__name__}")
    tag, args = data[0], data[1:]
    rec = functools.partial(decode, resolve=resolve, depth=depth + 1)

    def items(value) -> list:
        if type(value) is not list:
            raise ValueError(f"malformed {tag!r} value")
        return [rec(x) for x in value]

    def text(value) -> str:
        if type(value) is not str:
            raise ValueError(f"malformed {tag!r} value")
        return value

    def integer(value) -> int:
        value = rec(value)
        if type(value) is not int:
            raise ValueError(f"malformed {tag!r} value")
        return value

    if tag == "I":
        return int(text(args[0]), 16)
    if tag == "f":
        return float(text(args[0]))
    if tag == "c":
        return complex(float(text(args[0])), float(text(args[1])))
    if tag in ("l", "t", "s", "fs", "it", "dq"):
        values = items(args[0])
        if tag == "dq":
            maxlen = args[1] if len(args) > 1 else None
            if maxlen is not None and type(maxlen) is not int:
                raise ValueError("malformed deque")
            return collections.deque(values, maxlen)
        return {"l": list, "t": tuple, "s": set, "fs": frozenset, "it": iter}[tag](values)
    if tag in ("d", "od", "ctr"):
        if type(args[0]) is not list:
            raise ValueError(f"malformed {tag!r} value")
        pairs = []
        for pair in args[0]:
            if type(pair) is not list or len(pair) != 2:
                raise ValueError("malformed mapping")
            pairs.append((rec(pair[0]), rec(pair[1])))
        if tag == "ctr":
            return collections.Counter(dict(pairs))  # Counter(pairs) would count the pairs
        return (dict if tag == "d" else collections.OrderedDict)(pairs)
    if tag in ("b", "ba"):
        return (bytes if tag == "b" else bytearray).fromhex(text(args[0]))
    if tag == "r":
        return range(integer(args[0]), integer(args[1]), integer(args[2]))
    if tag == "dec":
        return decimal.Decimal(text(args[0]))
    if tag == "fr":
        return fractions.Fraction(integer(args[0]), integer(args[1]))
    if tag == "h":
        if type(args[0]) is not int:
            raise ValueError("malformed handle")
        return resolve(args[0], args[1] if len(args) > 1 and type(args[1]) is str else "object")
    raise ValueError(f"unknown tag {tag!r}")


def _safe_str(exc: BaseException) -> str:
    try:
        text = str(exc)
    except BaseException:  # noqa: BLE001 - a hostile __str__
        text = "<unprintable>"
    return text[:1000]


def _serve(fd: int, namespace: dict, unfinished: str | None) -> None:
    """Candidate side: answer the tester's requests (get a name, call, attribute and container operations)."""
    table: dict[int, object] = {}

    def resolve(handle: int, _type: str):
        if handle not in table:
            raise ValueError(f"unknown handle {handle}")
        return table[handle]

    write_message(fd, ["ready", unfinished])
    if unfinished:
        return
    while True:
        msg = read_message(fd)
        if msg is None or msg.get("op") == "exit":
            return
        try:
            op = msg["op"]
            if op == "get":
                name = msg["name"]
                if name not in namespace:
                    raise NameError(f"name {name!r} is not defined")
                result = namespace[name]
            else:
                target = resolve(msg["h"], "")
                args = [decode(a, resolve) for a in msg.get("args", [])]
                if op == "call":
                    kwargs = {k: decode(v, resolve) for k, v in msg.get("kwargs", {}).items()}
                    result = target(*args, **kwargs)
                elif op == "getattr":
                    result = getattr(target, msg["name"])
                elif op == "setattr":
                    setattr(target, msg["name"], args[0])
                    result = None
                elif op == "len":
                    result = len(target)
                elif op == "bool":
                    result = bool(target)
                elif op == "list":
                    result = list(target)
                elif op == "getitem":
                    result = target[args[0]]
                elif op == "contains":
                    result = args[0] in target
                elif op in ("repr", "str"):
                    result = repr(target) if op == "repr" else str(target)
                else:
                    raise ValueError(f"unknown operation {op!r}")
            try:
                reply = ["ok", encode(result, table)]
            except _Unencodable as exc:
                reply = ["bad", str(exc)]
        except BaseException as exc:  # noqa: BLE001 - the tester decides what an exception means for the tests
            if isinstance(exc, RecursionError):
                exc = RecursionError("maximum recursion depth exceeded")
            reply = ["raise", type(exc).__name__, _safe_str(exc), not isinstance(exc, Exception)]
        for stream in (sys.stdout, sys.stderr):  # the program is stopped once the tests have their verdict
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001
                pass
        write_message(fd, reply)


class _Channel:
    """Tester side of the socket. Every failure of the candidate's side is recorded and fails the tests."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.calls = 0
        self.violation: str | None = None
        self.unfinished: str | None = None

    def violate(self, why: str) -> None:
        if self.violation is None:
            self.violation = why
        raise ProtocolViolation(self.violation)

    def _receive(self):
        try:
            reply = read_message(self.fd, limit=MAX_MESSAGE)
        except (OSError, ValueError, RecursionError, MemoryError) as exc:
            self.violate(f"unreadable reply from the candidate ({type(exc).__name__})")
        if reply is None:
            self.violate("the candidate's process ended before the tests finished")
        return reply

    def start(self) -> None:
        reply = self._receive()
        if type(reply) is not list or len(reply) != 2 or reply[0] != "ready":
            self.violate("the candidate did not start the test protocol")
        if reply[1] is not None:
            self.unfinished = str(reply[1])[:500]
            self.violate(self.unfinished)

    def request(self, msg: dict):
        if self.violation is not None:
            raise ProtocolViolation(self.violation)
        self.calls += 1
        try:
            write_message(self.fd, msg)
        except OSError:
            self.violate("the candidate's process ended before the tests finished")
        reply = self._receive()
        if type(reply) is not list or not reply or reply[0] not in ("ok", "raise", "bad"):
            self.violate("malformed reply from the candidate")
        if reply[0] == "ok" and len(reply) == 2:
            try:
                return decode(reply[1], self.handle)
            except (ValueError, TypeError, OverflowError, RecursionError, MemoryError, decimal.InvalidOperation) as exc:
                self.violate(f"malformed value from the candidate ({type(exc).__name__}: {_safe_str(exc)[:200]})")
        if reply[0] == "bad":
            self.violate(f"the candidate returned what the sandbox does not pass as data: {str(reply[1:])[:200]}")
        if len(reply) != 4 or type(reply[1]) is not str or type(reply[2]) is not str:
            self.violate("malformed exception from the candidate")
        name, message, base_only = reply[1], reply[2], reply[3]
        if base_only is True:  # the program tried to leave (SystemExit ...): a failure, even if the tests catch it
            self.violation = self.violation or f"the program raised {name} during a test call"
            raise RemoteAbort(f"{name}: {message}")
        import builtins

        cls = getattr(builtins, name, None)
        # StopIteration would end a loop of the tests early instead of failing them: it stays a RemoteError.
        if (isinstance(cls, type) and issubclass(cls, Exception) and name.isidentifier()
                and not issubclass(cls, (StopIteration, StopAsyncIteration))):
            try:
                exc = cls(message)
            except BaseException:  # noqa: BLE001 - constructors with other signatures (UnicodeError ...)
                exc = RemoteError(f"{name}: {message}")
        else:
            exc = RemoteError(f"{name}: {message}")
        raise exc

    def handle(self, handle: int, type_name: str) -> "Remote":
        remote = object.__new__(Remote)
        object.__setattr__(remote, "_ch", self)
        object.__setattr__(remote, "_id", handle)
        object.__setattr__(remote, "_type", type_name)
        return remote

    def op(self, op: str, remote: "Remote", *args, **fields):
        encoded = [encode(a, None) for a in args]
        return self.request({"op": op, "h": object.__getattribute__(remote, "_id"), "args": encoded, **fields})


def _typed(value, kind: type, what: str):
    if type(value) is not kind:
        raise TypeError(f"{what} returned {type(value).__name__}, not {kind.__name__}")
    return value


class Remote:
    """An object that lives in the candidate's process: calls and attribute/container operations go over the
    socket; equality and hashing are by identity only."""

    __slots__ = ("_ch", "_id", "_type")

    def _call(self, op, *args, **fields):
        return object.__getattribute__(self, "_ch").op(op, self, *args, **fields)

    def __call__(self, *args, **kwargs):
        return Remote._call(self, "call", *args, kwargs={k: encode(v, None) for k, v in kwargs.items()})

    def __getattr__(self, name):
        return Remote._call(self, "getattr", name=name)

    def __setattr__(self, name, value):
        Remote._call(self, "setattr", value, name=name)

    def __len__(self):
        return _typed(Remote._call(self, "len"), int, "len()")

    def __bool__(self):
        return _typed(Remote._call(self, "bool"), bool, "bool()")

    def __iter__(self):
        return iter(_typed(Remote._call(self, "list"), list, "iteration"))

    def __getitem__(self, key):
        return Remote._call(self, "getitem", key)

    def __contains__(self, item):
        return _typed(Remote._call(self, "contains", item), bool, "in")

    def __repr__(self):
        return _typed(Remote._call(self, "repr"), str, "repr()")

    def __str__(self):
        return _typed(Remote._call(self, "str"), str, "str()")

    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other

    __hash__ = object.__hash__


def _describe_failure(exc: BaseException, tests: str) -> str:
    """'AssertionError at tests line 7: assert f(3) == 4' — the failing line of the trusted test code."""
    line_no = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<tests>":
            line_no = tb.tb_lineno
        tb = tb.tb_next
    where = ""
    if line_no is not None:
        lines = tests.splitlines()
        text = lines[line_no - 1].strip() if 0 < line_no <= len(lines) else ""
        where = f" at tests line {line_no}" + (f": {text[:200]}" if text else "")
    message = _safe_str(exc)
    return f"{type(exc).__name__}{where}" + (f" ({message[:300]})" if message else "")


def _run_tests(spec: dict, channel: _Channel) -> dict:
    """Tester side: bind the candidate's names, then run the trusted tests; passed only if they ran to the end."""
    import builtins
    import importlib

    tests = spec["tests"]
    stdlib = getattr(sys, "stdlib_module_names", frozenset())
    provided = set(spec.get("entry_points") or [])
    env = {"__name__": "__main__", "__builtins__": builtins}
    try:
        channel.start()
        for name in spec.get("names") or []:
            if name not in provided and name in stdlib:
                try:
                    env[name] = importlib.import_module(name)
                    continue
                except ImportError:
                    pass
            try:
                env[name] = channel.request({"op": "get", "name": name})
            except NameError:
                pass  # the tests meet the NameError where they use it, as in one program
        exec(compile(tests, "<tests>", "exec"), env)
    except BaseException as exc:  # noqa: BLE001 - any exception means the tests did not pass
        reason = channel.violation or _describe_failure(exc, tests)
        return {"passed": False, "reason": reason, "calls": channel.calls}
    if channel.violation is not None:  # swallowed by a bare except in the tests: still a failure
        return {"passed": False, "reason": channel.violation, "calls": channel.calls}
    return {"passed": True, "reason": "", "calls": channel.calls}


def _tester(req: dict, rpc_fd: int, tests_fd: int, verdict_fd: int, uid: int | None) -> None:
    """T: runs the tests as a uid of its own, not dumpable, no capabilities. Never returns."""
    verdict = {"passed": False, "reason": "the test harness failed before running the tests", "calls": 0}
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        devnull = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 1000) for fd in (rpc_fd, tests_fd, verdict_fd)]
        for target, fd in zip((3, 4, 5), high):
            os.dup2(fd, target)
        os.closerange(6, 65536)
        rpc_fd, tests_fd, verdict_fd = 3, 4, 5
        _set_limits(dict(req, nproc=max(req["nproc"], 4)))
        os.chdir("/")
        if uid is not None:
            os.setgroups([])
            os.setresgid(req["gid"], req["gid"], req["gid"])
            os.setresuid(uid, uid, uid)
        _prctl(PR_SET_DUMPABLE, 0)  # no ptrace, no /proc/<pid>/mem or fd/ for anyone without CAP_SYS_PTRACE
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        _apply_seccomp(req)
        with os.fdopen(tests_fd, "rb") as fh:
            spec = json.loads(fh.read().decode("utf-8"))
        verdict = _run_tests(spec, _Channel(rpc_fd))
    except BaseException as exc:  # noqa: BLE001
        verdict = {"passed": False, "reason": f"test harness error: {type(exc).__name__}: {_safe_str(exc)[:300]}",
                   "calls": 0}
    try:
        write_message(verdict_fd, {"verdict": verdict})  # first: the program may exit as soon as it hears "exit"
        write_message(rpc_fd, {"op": "exit"})  # the program may flush its output and leave
    except BaseException:  # noqa: BLE001
        pass
    os._exit(0)


# ---------------------------------------------------------------------------------------- defence in depth

_SECCOMP = None  # the filter as a BPF program (bytes), compiled once by libseccomp, when usable here
SECCOMP_NOTE = "seccomp: not set up"
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd", "mount", "umount2", "pivot_root",
    "chroot", "unshare", "setns", "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "open_by_handle_at",
    "name_to_handle_at", "iopl", "ioperm", "swapon", "swapoff", "reboot", "acct", "quotactl", "fanotify_init",
    "move_mount", "open_tree", "fsopen", "fsmount", "fsconfig", "fspick", "mount_setattr", "settimeofday",
    "clock_settime", "adjtimex", "sethostname", "setdomainname", "vhangup", "syslog", "io_uring_setup",
)


def _load_seccomp() -> None:
    """Compile the filter once with pyseccomp (over Debian's libseccomp2), imported from MIXLAB_SANDBOX_PYSECCOMP,
    and check that the kernel takes it; samples then load the compiled program with one prctl."""
    global _SECCOMP, SECCOMP_NOTE
    where = os.environ.get("MIXLAB_SANDBOX_PYSECCOMP", "")
    if not where:
        SECCOMP_NOTE = "seccomp off: pyseccomp is not installed"
        return
    sys.path.insert(0, where)
    try:
        import pyseccomp

        bpf = _compile_seccomp(pyseccomp)
    except BaseException as exc:  # noqa: BLE001 - e.g. RuntimeError('Unable to find libseccomp')
        SECCOMP_NOTE = f"seccomp off: pyseccomp/libseccomp unusable ({type(exc).__name__}: {exc})"
        return
    finally:
        sys.path.remove(where)
    pid = os.fork()
    if pid == 0:
        try:
            _prctl(PR_SET_NO_NEW_PRIVS, 1)
            _install_bpf(bpf)
            os._exit(0)
        except BaseException:  # noqa: BLE001
            os._exit(1)
    if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0:
        SECCOMP_NOTE = "seccomp off: the kernel refused the filter"
        return
    _SECCOMP = bpf
    SECCOMP_NOTE = ""


def _compile_seccomp(sc) -> bytes:
    """Deny debugging, namespace, mount, kernel-module and similar syscalls (EPERM), and every socket family
    but AF_UNIX (EACCES); everything else is allowed (a deny-list: defence in depth behind the namespaces)."""
    flt = sc.SyscallFilter(sc.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            flt.add_rule(sc.ERRNO(errno.EPERM), name)
        except (OSError, ValueError):
            pass  # not a syscall on this architecture
    flt.add_rule(sc.ERRNO(errno.EACCES), "socket", sc.Arg(0, sc.NE, socket.AF_UNIX))
    flt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")  # its flags sit behind a pointer: make libc fall back to clone
    flt.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER))
    export = sc._libseccomp.seccomp_export_bpf
    export.argtypes = (ctypes.c_void_p, ctypes.c_int)
    export.restype = ctypes.c_int
    with tempfile.TemporaryFile() as fh:
        sc._check_status(export(flt._filter, fh.fileno()))
        fh.seek(0)
        return fh.read()


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _install_bpf(bpf: bytes) -> None:
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(len(bpf) // 8, ctypes.addressof(buf))
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0), "seccomp")


def _apply_seccomp(req: dict) -> None:
    """Load the compiled filter into this process (no_new_privs is set before)."""
    if _SECCOMP is not None and req.get("seccomp", True):
        _install_bpf(_SECCOMP)


# --------------------------------------------------------------------------------------- the private root


def allowed_paths() -> tuple[list[str], list[str], dict[str, str]]:
    """(read-only binds, masked folders, top-level symlinks) of the sample's root: the interpreter, its stdlib
    and lib-dynload, the shared libraries it maps, the dynamic loader's cache — nothing else of the host."""
    import sysconfig

    paths = {os.path.realpath(sys.executable)}
    for key in ("stdlib", "platstdlib"):
        p = sysconfig.get_path(key)
        if p and os.path.isdir(p):
            paths.add(os.path.realpath(p))
    # lib-dynload and the stdlib zip; not sys.path as a whole (a .pth file could have put anything on it)
    for p in (sysconfig.get_config_var("DESTSHARED"), os.path.join(sysconfig.get_path("platstdlib"), "lib-dynload"),
              *(q for q in sys.path if q.endswith(".zip"))):
        if p and os.path.exists(p):
            paths.add(os.path.realpath(p))
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    for d in ("/lib64", "/usr/lib64", f"/lib/{multiarch}", f"/usr/lib/{multiarch}"):
        if multiarch or d.endswith("64"):
            if os.path.isdir(d):
                paths.add(os.path.realpath(d))
    with open("/proc/self/maps") as fh:  # libpython, libc, libffi ... as loaded by the pre-imported modules
        for line in fh:
            parts = line.split(maxsplit=5)
            mapped = parts[5].strip() if len(parts) == 6 else ""
            # Shared libraries' folders only: the executable's own folder (/usr/bin) stays out.
            if mapped.startswith("/") and ".so" in os.path.basename(mapped) and os.path.isfile(mapped):
                paths.add(os.path.dirname(os.path.realpath(mapped)))
    if os.path.isfile("/etc/ld.so.cache"):
        paths.add("/etc/ld.so.cache")
    paths.discard("/")
    ordered = sorted(paths)
    binds = [p for p in ordered if not any(p.startswith(q.rstrip("/") + "/") for q in ordered if q != p)]
    import site

    candidates = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib"), *site.getsitepackages()}
    for b in binds:  # e.g. prefix/lib bound for libpython: prefix/lib/python3.X/site-packages sits inside it
        if os.path.isdir(b):
            for sub in ("", "*/", "*/*/"):
                candidates.update(glob.glob(os.path.join(b, sub + "site-packages")))
                candidates.update(glob.glob(os.path.join(b, sub + "dist-packages")))
    masks = sorted({os.path.realpath(m) for m in candidates if m and os.path.isdir(m)
                    and any(os.path.realpath(m).startswith(b.rstrip("/") + "/") for b in binds)})
    links = {}
    for name in os.listdir("/"):
        full = os.path.join("/", name)
        if os.path.islink(full):
            links[full] = os.readlink(full)
    return binds, masks, links


def _build_root(req: dict) -> None:
    """C2, in its own mount namespace: a fresh tmpfs becomes `/`, with the allow-list bound read-only, a tmpfs
    work area (/tmp = /var/tmp = /dev/shm), a minimal /dev and the namespace's /proc; the host root is
    detached. Falls back to chroot where pivot_root is missing."""
    new = "/tmp"
    _mount("none", "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates back to the host
    _mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=0755")

    def inside(path: str) -> str:
        return new + path

    for path in req["root_binds"]:
        if not os.path.exists(path):
            continue
        target = inside(path)
        if os.path.isdir(path):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "w").close()
        _mount(path, target, None, MS_BIND)  # not MS_REC: mounts below the path stay out
        _mount("none", target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    for path in req["root_masks"]:
        _mount("tmpfs", inside(path), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, "size=4k,mode=0555")
    for link, dest in req["root_links"].items():
        if not os.path.lexists(inside(link)):
            os.symlink(dest, inside(link))
    for d in ("tmp", "var/tmp", "dev", "proc", "etc", ".oldroot"):
        os.makedirs(inside("/" + d), exist_ok=True)
    _mount("tmpfs", inside("/tmp"), "tmpfs", MS_NOSUID | MS_NODEV, f"size={req['disk_mb']}m,mode=1777")
    _mount("tmpfs", inside("/dev"), "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=0755")
    for node in ("null", "zero", "full", "random", "urandom"):
        if os.path.exists(f"/dev/{node}"):
            open(inside(f"/dev/{node}"), "w").close()
            _mount(f"/dev/{node}", inside(f"/dev/{node}"), None, MS_BIND)
    os.makedirs(inside("/dev/shm"))
    _mount(inside("/tmp"), inside("/dev/shm"), None, MS_BIND)
    _mount(inside("/tmp"), inside("/var/tmp"), None, MS_BIND)
    for name, dest in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                       ("stderr", "/proc/self/fd/2")):
        os.symlink(dest, inside(f"/dev/{name}"))
    try:  # other uids' processes (the tester, PID 1) are invisible in /proc
        _mount("proc", inside("/proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=invisible")
    except OSError:
        _mount("proc", inside("/proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    number = {"x86_64": 155, "aarch64": 41}.get(os.uname().machine)
    if number is not None and _libc.syscall(number, new.encode(), inside("/.oldroot").encode()) == 0:
        os.chdir("/")
        _check(_libc.umount2(b"/.oldroot", MNT_DETACH), "umount /.oldroot")
        os.rmdir("/.oldroot")
    else:
        os.rmdir(inside("/.oldroot"))
        os.chroot(new)
        os.chdir("/")
    _mount("none", "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


# --------------------------------------------------------------------------------------- the sample's tree


def _start_sample(req: dict, fds: tuple[int, int, int], workdir: str, drop: bool, tests_fd: int | None,
                  keep: tuple[int, ...]) -> tuple[int, int | None, int | None]:
    """Fork the tester (with tests) and the candidate program. Returns (program pid, tester pid, verdict fd)."""
    if tests_fd is None:
        child = os.fork()
        if child == 0:
            for fd in keep:
                os.close(fd)
            _run_user_code(req, workdir, fds, drop=drop)
        return child, None, None
    rpc_t, rpc_c = (s.detach() for s in socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM))
    verdict_r, verdict_w = os.pipe()
    tester = os.fork()
    if tester == 0:
        for fd in (*keep, *fds, rpc_c, verdict_r):
            os.close(fd)
        _tester(req, rpc_t, tests_fd, verdict_w, req["tester_uid"] if drop else None)
    os.close(tests_fd)  # the program never holds the tests, not even for a moment
    os.close(verdict_w)
    child = os.fork()
    if child == 0:
        for fd in (*keep, rpc_t, verdict_r):
            os.close(fd)
        _run_user_code(req, workdir, fds, drop=drop, rpc_fd=rpc_c)
    os.close(rpc_t)
    os.close(rpc_c)
    return child, tester, verdict_r


# How long a tester may still take to report once the program's process has ended (see `_wait_sample`).
TESTER_VERDICT_GRACE_S = 2.0


def _wait_sample(child: int, tester: int | None, verdict_r: int | None, status: dict) -> None:
    """Reap until the program exits (no tests) or the tester has its verdict; the program then gets a moment to
    finish writing its output. When the program's process ends first, the tester is stopped (a forked child of
    the program may still hold the socket open) and the tests fail. Orphans are reaped on the way."""
    verdict_buf = bytearray()
    child_done = tester_done = False
    grace_until = None
    if verdict_r is not None:
        os.set_blocking(verdict_r, False)

    verdict_eof = False

    def drain() -> dict | None:
        nonlocal verdict_eof
        while True:
            try:
                chunk = os.read(verdict_r, 65536)
            except BlockingIOError:
                break
            except OSError:
                verdict_eof = True
                break
            if not chunk:
                verdict_eof = True
                break
            verdict_buf.extend(chunk)
        messages = _parse_messages(bytearray(verdict_buf))
        return messages[0]["verdict"] if messages else None

    def verdict_within(seconds: float) -> dict | None:
        # A program that ends early (e.g. raises at import) has usually just told the tester why; on a loaded
        # machine the tester may not have written that verdict yet. Wait for it, briefly and boundedly: a forked
        # child of the program can keep the tester waiting for ever, so it is killed after this.
        deadline = time.monotonic() + seconds
        while (found := drain()) is None and not verdict_eof:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            select.select([verdict_r], [], [], left)
        return found

    while True:
        flags = 0 if grace_until is None else os.WNOHANG
        try:
            pid, wstatus, usage = os.wait4(-1, flags)
        except ChildProcessError:
            break
        if pid == 0:  # waiting out the grace period: sleep until the program exits, or at most until its end
            left = grace_until - time.monotonic()
            if left <= 0:
                break
            _wait_exit(child, left)
            continue
        if pid == child:
            child_done = True
            status.update(wait_status=wstatus, cpu_s=usage.ru_utime + usage.ru_stime, maxrss_kb=usage.ru_maxrss)
            if tester is not None and not tester_done and verdict_within(TESTER_VERDICT_GRACE_S) is None:
                try:
                    os.kill(tester, signal.SIGKILL)
                except OSError:
                    pass
                code = os.waitstatus_to_exitcode(wstatus)
                how = f"exit status {code}" if code >= 0 else f"signal {-code}"
                status["verdict"] = {"passed": False, "calls": 0,
                                     "reason": f"the program ended ({how}) before the tests finished"}
        elif pid == tester:
            tester_done = True
            status["verdict"] = drain() or status.get("verdict")
            status["tester_status"] = wstatus
        if tester is None and child_done:
            break
        if tester is not None and tester_done and child_done:
            break
        if tester is not None and tester_done and grace_until is None:
            # The verdict is in. The program flushed its output after each call; it gets a brief moment to
            # leave on its own (it heard "exit"), then PID 1 exits and takes it down.
            grace_until = time.monotonic() + 0.05
    if verdict_r is not None:
        os.close(verdict_r)


def _wait_exit(pid: int, timeout_s: float) -> None:
    """Block until `pid` exits or `timeout_s` passes (a pidfd where the kernel has them, else a short sleep)."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        time.sleep(min(timeout_s, 0.005))
        return
    try:
        select.select([fd], [], [], timeout_s)
    finally:
        os.close(fd)


def _open_tests(req: dict) -> int | None:
    """The tests travel in a root-only file the parent wrote; opened (and unlinked) before anything else."""
    path = req.get("tests_path")
    if not path:
        return None
    fd = os.open(path, os.O_RDONLY)
    os.unlink(path)
    return fd


def _namespace_init(req: dict, fds: tuple[int, int, int], status_w: int, tests_fd: int | None) -> None:
    """C2: PID 1 of the sample's PID namespace. Never returns."""
    status = {"setup_error": None}
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        _build_root(req)
        os.makedirs(SANDBOX_WORKDIR, mode=0o700)
        os.chown(SANDBOX_WORKDIR, req["uid"], req["gid"])
        _write_files(SANDBOX_WORKDIR, req, req["uid"], req["gid"])
    except BaseException as exc:  # noqa: BLE001
        status["setup_error"] = f"{type(exc).__name__}: {exc}"
        write_message(status_w, status)
        os._exit(0)
    child, tester, verdict_r = _start_sample(req, fds, SANDBOX_WORKDIR, True, tests_fd, keep=(status_w,))
    for fd in fds:
        os.close(fd)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _wait_sample(child, tester, verdict_r, status)
    write_message(status_w, status)
    os._exit(0)  # PID 1 exits: the kernel kills whatever the sample left behind


def _namespace_launcher(req: dict, fds: tuple[int, int, int], status_w: int) -> None:
    """C1: creates the namespaces, forks their PID 1, waits for it. Never returns."""
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        os.setsid()
        tests_fd = _open_tests(req)
        _join_cgroups(req)
        # A fresh IPC namespace too: SysV shared memory/semaphores/queues die with the sample, unseen by others.
        flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | req.get("netns_flag", CLONE_NEWNET)
        _check(_libc.unshare(flags), "unshare")
        init = os.fork()
        if init == 0:
            _namespace_init(req, fds, status_w, tests_fd)
        for fd in fds:
            os.close(fd)
        if tests_fd is not None:
            os.close(tests_fd)
        write_message(status_w, {"init_pid": init})
        os.waitpid(init, 0)
    except BaseException as exc:  # noqa: BLE001
        try:
            write_message(status_w, {"setup_error": f"{type(exc).__name__}: {exc}"})
        except BaseException:  # noqa: BLE001
            pass
    os._exit(0)


def _degraded_launcher(req: dict, fds: tuple[int, int, int], status_w: int, workdir: str, drop: bool) -> None:
    """Degraded C1: new session/process group, same limits, no namespaces. Never returns."""
    status = {"setup_error": None}
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        os.setsid()
        tests_fd = _open_tests(req)
        _join_cgroups(req)
        child, tester, verdict_r = _start_sample(req, fds, workdir, drop, tests_fd, keep=(status_w,))
        for fd in fds:
            os.close(fd)
        _wait_sample(child, tester, verdict_r, status)
    except BaseException as exc:  # noqa: BLE001
        status["setup_error"] = f"{type(exc).__name__}: {exc}"
    write_message(status_w, status)
    os._exit(0)


# ----------------------------------------------------------------------------------------- cgroups


class Cgroups:
    """Aggregate memory and process caps for everything a sample starts (rlimits are per process only).

    One cgroup per worker (its samples never overlap), under this process's own cgroup: v1 `memory` + `pids`
    hierarchies, or v2 where the memory and pids controllers are delegated to us. Best effort: without a
    writable cgroup tree the rlimits alone apply, and `version` is None.
    """

    def __init__(self, name: str) -> None:
        self.dirs: dict[str, str] = {}
        self.version: str | None = None
        self._written: dict[str, str] = {}
        try:
            self._setup_v2(name) or self._setup_v1(name)
        except OSError:
            self.remove()
            self.dirs, self.version = {}, None

    @staticmethod
    def _own_paths() -> dict[str, str]:
        paths = {}
        with open("/proc/self/cgroup") as fh:
            for line in fh:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                for controller in controllers.split(",") if controllers else [""]:
                    paths[controller] = path
        return paths

    def _setup_v1(self, name: str) -> bool:
        own = self._own_paths()
        for controller in ("memory", "pids"):
            mount = f"/sys/fs/cgroup/{controller}"
            if controller not in own or not os.path.exists(f"{mount}/cgroup.procs"):
                return False
        for controller in ("memory", "pids"):
            path = os.path.join(f"/sys/fs/cgroup/{controller}" + own[controller], name)
            os.makedirs(path, exist_ok=True)
            self.dirs[controller] = path
        self.version = "v1"
        return True

    def _setup_v2(self, name: str) -> bool:
        own = self._own_paths().get("")
        base = "/sys/fs/cgroup" + (own or "")
        try:
            with open(os.path.join(base, "cgroup.subtree_control")) as fh:
                delegated = fh.read().split()
        except OSError:
            return False
        if own is None or "memory" not in delegated or "pids" not in delegated:
            return False
        path = os.path.join(base, name)
        os.makedirs(path, exist_ok=True)
        self.dirs = {"memory": path, "pids": path}
        self.version = "v2"
        return True

    def _write(self, controller: str, filename: str, value: str) -> None:
        path = os.path.join(self.dirs[controller], filename)
        if self._written.get(path) != value:
            with open(path, "w") as fh:
                fh.write(value)
            self._written[path] = value

    def configure(self, memory_bytes: int | None, pids: int) -> None:
        if self.version == "v1":
            memsw = os.path.join(self.dirs["memory"], "memory.memsw.limit_in_bytes")
            limit = str(memory_bytes) if memory_bytes else "-1"
            if os.path.exists(memsw):
                self._written.pop(memsw, None)
                self._write("memory", "memory.memsw.limit_in_bytes", "-1")  # must stay >= limit_in_bytes
            self._write("memory", "memory.limit_in_bytes", limit)
            if os.path.exists(memsw):
                self._written.pop(memsw, None)
                self._write("memory", "memory.memsw.limit_in_bytes", limit)  # no escape into swap
            self._write("pids", "pids.max", str(pids))
        elif self.version == "v2":
            self._write("memory", "memory.max", str(memory_bytes) if memory_bytes else "max")
            if os.path.exists(os.path.join(self.dirs["memory"], "memory.swap.max")):
                self._write("memory", "memory.swap.max", "0")
            self._write("pids", "pids.max", str(pids))

    def procs_files(self) -> list[str]:
        return sorted({os.path.join(d, "cgroup.procs") for d in self.dirs.values()})

    def oom_kills(self) -> int | None:
        if not self.version:
            return None
        name = "memory.oom_control" if self.version == "v1" else "memory.events"
        try:
            with open(os.path.join(self.dirs["memory"], name)) as fh:
                for line in fh:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            pass
        return None

    def join_self(self) -> bool:
        """Move this worker into its cgroup once, so samples are born in it: moving a process per sample costs
        ~10 ms (cgroup attach waits for an RCU grace period). Samples raise their oom_score_adj (see
        `_namespace_launcher`), so the cgroup's OOM killer takes them, not the worker."""
        if not self.version:
            return False
        try:
            self._home = {c: f"/sys/fs/cgroup/{c}{p}/cgroup.procs" if self.version == "v1"
                          else f"/sys/fs/cgroup{p}/cgroup.procs" for c, p in self._own_paths().items()
                          if c in (("memory", "pids") if self.version == "v1" else ("",))}
            for path in self.procs_files():
                with open(path, "w") as fh:
                    fh.write("0")
        except OSError:
            self.leave()
            return False
        return True

    def leave(self) -> None:
        for path in getattr(self, "_home", {}).values():
            try:
                with open(path, "w") as fh:
                    fh.write("0")
            except OSError:
                pass

    def remove(self) -> None:
        self.leave()
        for path in sorted(set(self.dirs.values())):
            try:
                os.rmdir(path)
            except OSError:
                pass


def _join_cgroups(req: dict) -> None:
    for path in req.get("cgroup_procs") or []:
        with open(path, "w") as fh:
            fh.write("0")  # this process; its descendants follow
    try:  # the OOM killer's first choice, before the worker that may share the cgroup (raising needs no privilege)
        with open("/proc/self/oom_score_adj", "w") as fh:
            fh.write("1000")
    except OSError:
        pass


# ----------------------------------------------------------------------------------------- the worker


class Worker:
    def __init__(self, isolation: str) -> None:
        self.is_root = os.geteuid() == 0
        self.private_uids: bool | None = None  # may each sample get a uid of its own?
        self.isolation, self.isolation_note = self._probe(isolation)
        self.cgroups = Cgroups(f"mixlab-sandbox-{os.getpid()}") if self.is_root else None
        self.netns_flag = CLONE_NEWNET
        if self.isolation == "namespaces" and os.environ.get("MIXLAB_SANDBOX_NETNS", "worker") == "worker":
            # The worker itself moves into an empty network namespace (no interfaces up, not even lo) once;
            # its samples, which never overlap in time, share it instead of paying for a namespace each.
            if _libc.unshare(CLONE_NEWNET) == 0:
                self.netns_flag = 0
        self.in_cgroup = self.cgroups.join_self() if self.cgroups is not None else False
        # The sample's root: computed once, after the pre-imports, so every library they map is in it.
        self.root = allowed_paths() if self.isolation == "namespaces" else ([], [], {})

    def _sample_uid(self, fallback: int) -> int:
        """A uid no other sample uses now (1e6 + worker pid * 100 + counter % 50), if setresuid takes it; the
        sample's tester gets that uid + 50.

        Per-sample uids make RLIMIT_NPROC per sample (a fork bomb elsewhere cannot starve this sample's
        processes) and, without namespaces, let the worker find and kill every process the sample left.
        """
        if self.private_uids is False:
            return fallback
        self.counter = (getattr(self, "counter", -1) + 1) % 50
        uid = 1_000_000 + os.getpid() * 100 + self.counter  # pids are unique among live workers
        if self.private_uids is None:  # probe once: a restricted user namespace may not map such uids
            pid = os.fork()
            if pid == 0:
                try:
                    os.setresuid(uid, uid, uid)
                    os._exit(0)
                except BaseException:  # noqa: BLE001
                    os._exit(1)
            self.private_uids = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
            if not self.private_uids:
                return fallback
        return uid

    def _probe(self, wanted: str) -> tuple[str, str]:
        if wanted == "degraded":
            return "degraded", "degraded: namespaces disabled by configuration"
        pid = os.fork()
        if pid == 0:
            try:
                _check(_libc.unshare(CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET), "unshare")
                inner = os.fork()
                if inner == 0:
                    _mount("none", "/", None, MS_REC | MS_PRIVATE)
                    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
                    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m")
                    os._exit(0)
                _, st = os.waitpid(inner, 0)
                os._exit(0 if st == 0 else 3)
            except BaseException:  # noqa: BLE001 - any failure means: no namespaces here
                os._exit(2)
        _, st = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(st) == 0 and self.is_root:
            return "namespaces", ""
        if not self.is_root:
            return "degraded", ("degraded: not root, so no uid drop or namespaces (network not isolated; the "
                                "program can write wherever this user can; a setsid() child can outlive it)")
        return "degraded", ("degraded: PID/mount/net namespaces unavailable (network not isolated; "
                            "world-writable host folders are writable)")

    def run(self, req: dict) -> dict:
        start = time.monotonic()
        stdin_r, stdin_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        status_r, status_w = os.pipe()
        fds = (stdin_r, out_w, err_w)
        workdir = None
        oom_before = None
        if self.cgroups is not None and self.cgroups.version:
            # Everything the sample starts shares one memory budget (its address-space limit plus its tmpfs)
            # and one process budget (its nproc plus C1/C2/C3).
            memory = (req["memory_mb"] + req["disk_mb"]) << 20 if req["memory_mb"] else None
            # + C1, C2, the tester and (when it sits in the cgroup) this worker
            self.cgroups.configure(memory, req["nproc"] + 4 + self.in_cgroup)
            if not self.in_cgroup:
                req = dict(req, cgroup_procs=self.cgroups.procs_files())
            oom_before = self.cgroups.oom_kills()
        private_uid = False
        if self.is_root and req.get("private_uid", True):
            uid = self._sample_uid(req["uid"])
            private_uid = uid != req["uid"]
            req = dict(req, uid=uid)
        # The tester never shares the program's uid (the program could signal it otherwise).
        req = dict(req, tester_uid=req["uid"] + 50 if private_uid else req.get("tester_uid", req["uid"] - 1),
                   seccomp=_SECCOMP is not None,
                   python=os.path.realpath(req.get("python") or sys.executable))  # resolved here: links stay out
        if self.isolation == "namespaces":
            binds, masks, links = self.root
            req = dict(req, netns_flag=self.netns_flag, root_binds=binds, root_masks=masks, root_links=links)
            launcher = os.fork()
            if launcher == 0:
                for fd in (stdin_w, out_r, err_r, status_r):
                    os.close(fd)
                _namespace_launcher(req, fds, status_w)
        else:
            workdir = tempfile.mkdtemp(prefix="mixlab-sandbox-")
            drop = self.is_root
            if drop:
                # Without a PID namespace the only handle on a setsid()'d daemon is its uid (a uid of its own,
                # see _sample_uid): everything with that uid is killed afterwards.
                os.chown(workdir, req["uid"], req["gid"])
            _write_files(workdir, req, req["uid"] if drop else None, req["gid"] if drop else None)
            launcher = os.fork()
            if launcher == 0:
                for fd in (stdin_w, out_r, err_r, status_r):
                    os.close(fd)
                _degraded_launcher(req, fds, status_w, workdir, drop)
        for fd in (*fds, status_w):
            os.close(fd)
        try:
            result = self._supervise(req, start, launcher, stdin_w, out_r, err_r, status_r)
        finally:
            for fd in (stdin_w, out_r, err_r, status_r):
                try:
                    os.close(fd)
                except OSError:
                    pass
            if self.isolation != "namespaces":
                try:
                    os.killpg(launcher, signal.SIGKILL)  # the sample's process group, daemons that kept it
                except OSError:
                    pass
                if private_uid:
                    for uid in (req["uid"], req["tester_uid"]):
                        _kill_uid(uid)
                        _remove_ipc_of(uid)
            os.waitpid(launcher, 0)
            _reap_orphans()
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
        result["duration_s"] = time.monotonic() - start
        if oom_before is not None:
            after = self.cgroups.oom_kills()
            result["cgroup_oom"] = after is not None and after > oom_before
        result["cgroup"] = self.cgroups.version if self.cgroups is not None else None
        result["isolation"] = self.isolation
        result["isolation_note"] = self.isolation_note
        result["seccomp"] = _SECCOMP is not None
        return result

    def _supervise(self, req, start, launcher, stdin_w, out_r, err_r, status_r) -> dict:
        cap = req["max_output_bytes"]
        kill_at = req["kill_output_bytes"]
        deadline = start + req["timeout_s"]
        streams = {out_r: bytearray(), err_r: bytearray()}
        tails = {out_r: bytearray(), err_r: bytearray()}
        totals = {out_r: 0, err_r: 0}
        status_buf = bytearray()
        status: dict = {}
        stdin_data = (req.get("stdin") or "").encode()
        open_fds = {out_r, err_r, status_r}
        if stdin_data:
            os.set_blocking(stdin_w, False)
            writing = True
        else:
            os.close(stdin_w)
            writing = False
        killed_for = None
        init_pid = None
        hard_deadline = None
        poller = select.poll()
        for fd in open_fds:
            poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        if writing:
            poller.register(stdin_w, select.POLLOUT | select.POLLERR)
        while open_fds:
            now = time.monotonic()
            if killed_for is None and now >= deadline:
                killed_for = "timeout"
                self._kill(launcher, init_pid)
                hard_deadline = now + 5.0
            if hard_deadline is not None and now >= hard_deadline:
                break  # the namespace is gone; a pipe still open here can only be leaked, stop waiting
            wait_ms = max(1, int(((hard_deadline or deadline) - now) * 1000))
            for fd, event in poller.poll(wait_ms):
                if fd == stdin_w:
                    try:
                        written = os.write(stdin_w, stdin_data[:65536])
                        stdin_data = stdin_data[written:]
                    except OSError:
                        stdin_data = b""
                    if not stdin_data:
                        poller.unregister(stdin_w)
                        os.close(stdin_w)
                        writing = False
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    poller.unregister(fd)
                    open_fds.discard(fd)
                    continue
                if fd == status_r:
                    status_buf += chunk
                    for msg in _parse_messages(status_buf):
                        status.update(msg)
                        init_pid = msg.get("init_pid", init_pid)
                    continue
                totals[fd] += len(chunk)
                room = cap - len(streams[fd])
                if room > 0:
                    streams[fd] += chunk[:room]
                tails[fd] = (tails[fd] + chunk)[-4096:]
                if killed_for is None and totals[out_r] + totals[err_r] > kill_at:
                    killed_for = "output"
                    self._kill(launcher, init_pid)
                    hard_deadline = time.monotonic() + 5.0
        if writing:
            os.close(stdin_w)
        return {
            "stdout": _render(streams[out_r], tails[out_r], totals[out_r], cap),
            "stderr": _render(streams[err_r], tails[err_r], totals[err_r], cap),
            "stdout_bytes": totals[out_r],
            "stderr_bytes": totals[err_r],
            "stdout_tail": tails[out_r].decode("utf-8", "replace"),
            "killed_for": killed_for,
            "wait_status": status.get("wait_status"),
            "setup_error": status.get("setup_error"),
            "cpu_s": status.get("cpu_s"),
            "maxrss_kb": status.get("maxrss_kb"),
            "verdict": status.get("verdict"),
        }

    def _kill(self, launcher: int, init_pid: int | None) -> None:
        # Namespaces: SIGKILL to PID 1 of the sample's namespace takes every process in it down; C1 then reaps
        # it and exits. Only before PID 1 exists is C1 itself the target (PDEATHSIG passes it on).
        if self.isolation == "namespaces":
            targets = [init_pid] if init_pid else [launcher]
        else:
            targets = [-launcher, launcher]
        for pid in targets:
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)  # PID 1 of the namespace: the kernel kills all of it
                except OSError:
                    pass


def _kill_uid(uid: int) -> None:
    """SIGKILL every process whose real uid is `uid` (degraded mode's daemon sweeper), until none is left."""
    for _ in range(50):
        victims = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/status") as fh:
                    for line in fh:
                        if line.startswith("Uid:"):
                            if int(line.split()[1]) == uid:
                                victims.append(int(entry))
                            break
            except (OSError, ValueError):
                continue
        if not victims:
            return
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)


def _remove_ipc_of(uid: int) -> None:
    """Degraded mode has no IPC namespace: remove SysV shm/semaphores/queues the sample's uid left behind."""
    ctl = {"shm": _libc.shmctl, "sem": _libc.semctl, "msg": _libc.msgctl}
    for kind, func in ctl.items():
        try:
            with open(f"/proc/sysvipc/{kind}") as fh:
                header = fh.readline().split()
                rows = [line.split() for line in fh]
        except OSError:
            continue
        if "uid" not in header:
            continue
        id_col = 1  # key, id, ... in every /proc/sysvipc table
        uid_col = header.index("uid")
        for row in rows:
            try:
                if int(row[uid_col]) == uid:
                    if kind == "sem":
                        func(int(row[id_col]), 0, 0)  # IPC_RMID = 0
                    else:
                        func(int(row[id_col]), 0, None)
            except (ValueError, IndexError):
                continue


def _reap_orphans() -> None:
    """Collect any zombie re-parented to this worker (it is a child subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _parse_messages(buf: bytearray) -> list[dict]:
    """Complete length-prefixed messages at the front of `buf`, removed from it."""
    out = []
    while len(buf) >= 4:
        n = struct.unpack(">I", bytes(buf[:4]))[0]
        if len(buf) < 4 + n:
            break
        out.append(json.loads(bytes(buf[4:4 + n])))
        del buf[:4 + n]
    return out


def _render(head: bytearray, tail: bytearray, total: int, cap: int) -> str:
    text = bytes(head).decode("utf-8", "replace")
    if total > cap:
        text += f"\n... [{total - cap} more bytes truncated by the sandbox]"
    return text


def main() -> None:
    # Started as `python -s sandbox_worker.py` with PYTHONHASHSEED=0 (samples forked from here inherit the
    # seed, so str hashing and set order are the same in every sample); its own folder is not an import root.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # a stray print can never corrupt the protocol
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of a killed launcher come back here to be reaped
    _load_seccomp()
    worker = Worker(os.environ.get("MIXLAB_SANDBOX_ISOLATION", "auto"))
    cgroup = worker.cgroups.version if worker.cgroups is not None else None
    write_message(proto_out, {"hello": True, "isolation": worker.isolation, "note": worker.isolation_note,
                              "cgroup": cgroup, "cgroup_dirs": sorted(set(worker.cgroups.dirs.values()))
                              if worker.cgroups is not None else [],
                              "seccomp": _SECCOMP is not None, "seccomp_note": SECCOMP_NOTE,
                              "python": sys.executable, "version": sys.version.split()[0], "pid": os.getpid()})
    while True:
        req = read_message(proto_in)
        if req is None:
            break
        try:
            result = worker.run(req)
        except BaseException as exc:  # noqa: BLE001 - keep serving; the parent maps this to status "error"
            result = {"setup_error": f"worker: {type(exc).__name__}: {exc}", "stdout": "", "stderr": "",
                      "duration_s": 0.0, "isolation": worker.isolation, "isolation_note": worker.isolation_note}
        write_message(proto_out, result)
    if worker.cgroups is not None:
        worker.cgroups.remove()


if __name__ == "__main__":
    main()
