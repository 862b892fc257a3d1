"""The sandbox fork-server: one long-lived, stdlib-only process per core that runs untrusted programs.

Started by `mixlab.evals.sandbox` as ``python -s sandbox_worker.py`` (root, scrubbed environment). It reads
length-prefixed JSON requests on stdin and answers on stdout. Each request runs in three forked processes:

    worker (root, its own empty network namespace: no interface is up, not even loopback; a cgroup)
      └─ C1  joins the worker's memory+pids cgroup; unshare(PID | mount | IPC); waits for C2; dies with the
          │  worker (PDEATHSIG)
          └─ C2  PID 1 of a fresh PID namespace: private mounts, /proc, tmpfs on /run /tmp /var/tmp /dev/shm,
              │  hidden paths; reaps orphans; when C3 exits it reports and exits, and the kernel SIGKILLs every
              │  process left in the namespace (daemonised, setsid'd, SIGTERM-ignoring children included)
              └─ C3  rlimits (AS, CPU, FSIZE, NPROC, NOFILE, CORE), scrubbed env, a uid of its own (gid 65534),
                     no capabilities, no_new_privs, cwd = a fresh tmpfs; runs the code (exec() in this
                     pre-warmed interpreter, or execve of a fresh interpreter in "exec" mode)

Forking a warm interpreter avoids ~20-50 ms of interpreter start-up per sample; the namespaces cost ~3 ms.
On the wall-clock deadline the worker SIGKILLs C2 (PID 1), which takes the whole PID namespace down.

Without namespaces (no CAP_SYS_ADMIN) the worker runs "degraded": a new session and process group, the same
rlimits and cgroup and (when root) a uid of the sample's own, a host temp dir removed afterwards, and at the
end the process group and every process of that uid killed (daemons included) and its SysV IPC objects
removed. The network is not cut, and files written to world-writable host folders (/tmp, /dev/shm) stay.
Every result says which mode ran.

This file must import only the standard library: it runs under an interpreter the sandbox uid can read,
which is not necessarily the project's virtualenv.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import select
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REC, MS_PRIVATE = 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER = 1, 38, 36

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

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


def read_message(fd: int) -> dict | None:
    header = _read_exact(fd, 4)
    if header is None:
        return None
    body = _read_exact(fd, struct.unpack(">I", header)[0])
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


def _run_user_code(req: dict, workdir: str, fds: tuple[int, int, int], drop: bool) -> None:
    """C3: become the sandboxed program. Never returns."""
    code = 1
    try:
        stdin_fd, out_fd, err_fd = fds
        os.dup2(stdin_fd, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        os.closerange(3, 65536)
        _set_limits(req)
        os.chdir(workdir)
        if drop:
            os.setgroups([])
            os.setresgid(req["gid"], req["gid"], req["gid"])
            os.setresuid(req["uid"], req["uid"], req["uid"])  # clears every capability
        _prctl(PR_SET_NO_NEW_PRIVS, 1)  # setuid binaries cannot give root back
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # reset by the uid change; set again
        env = _scrubbed_env(workdir)
        if req["mode"] == "exec":
            python = req["python"] or sys.executable
            # No -E: the environment is ours (scrubbed) and its PYTHONHASHSEED=0 keeps set order reproducible.
            os.execve(python, [python, "-s", "main.py"], env)
        os.environ.clear()
        os.environ.update(env)
        for sig in (signal.SIGTERM, signal.SIGCHLD):  # SIGPIPE stays ignored and SIGINT raises, as in python
            signal.signal(sig, signal.SIG_DFL)
        code = _exec_in_this_interpreter(req["code"], workdir)
    except BaseException:  # noqa: BLE001 - set-up failure inside the child: report on stderr, exit 1
        try:
            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001
            pass
    os._exit(code)


def _exec_in_this_interpreter(source: str, workdir: str) -> int:
    """Run `source` as `python main.py` would: fresh __main__, script dir on sys.path, same exit codes."""
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
    try:
        exec(compile(source, main.__file__, "exec"), main.__dict__)
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException:  # noqa: BLE001 - an uncaught exception: traceback and exit status 1, like python
        traceback.print_exc()
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


def _namespace_init(req: dict, fds: tuple[int, int, int], status_w: int) -> None:
    """C2: PID 1 of the sample's PID namespace. Never returns."""
    status = {"setup_error": None}
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        _mount("none", "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates back to the host
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        tmpfs_opts = f"size={req['disk_mb']}m,mode=1777"
        if os.path.isdir("/run"):  # host daemons' unix sockets (dbus, journald, ...) live here: out of reach
            _mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=1m,mode=0755")
            os.makedirs("/run/lock", exist_ok=True)
        for target in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock"):
            if os.path.isdir(target):
                _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, tmpfs_opts)
        for target in req.get("hide_paths") or []:
            if os.path.isdir(target):  # an empty read-only tmpfs over the repo, the runs folder, the data ...
                _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, "size=4k,mode=0555")
        os.makedirs(SANDBOX_WORKDIR, mode=0o700)
        os.chown(SANDBOX_WORKDIR, req["uid"], req["gid"])
        _write_files(SANDBOX_WORKDIR, req, req["uid"], req["gid"])
    except BaseException as exc:  # noqa: BLE001
        status["setup_error"] = f"{type(exc).__name__}: {exc}"
        write_message(status_w, status)
        os._exit(0)
    child = os.fork()
    if child == 0:
        os.close(status_w)
        _run_user_code(req, SANDBOX_WORKDIR, fds, drop=True)
    for fd in fds:
        os.close(fd)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    while True:  # reap orphans re-parented to us until the sample itself exits
        try:
            pid, wstatus, usage = os.wait4(-1, 0)
        except ChildProcessError:
            break
        if pid == child:
            status.update(wait_status=wstatus, cpu_s=usage.ru_utime + usage.ru_stime, maxrss_kb=usage.ru_maxrss)
            break
    write_message(status_w, status)
    os._exit(0)  # PID 1 exits: the kernel kills whatever the sample left behind


def _namespace_launcher(req: dict, fds: tuple[int, int, int], status_w: int) -> None:
    """C1: creates the namespaces, forks their PID 1, waits for it. Never returns."""
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        os.setsid()
        _join_cgroups(req)
        # A fresh IPC namespace too: SysV shared memory/semaphores/queues die with the sample, unseen by others.
        flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | req.get("netns_flag", CLONE_NEWNET)
        _check(_libc.unshare(flags), "unshare")
        init = os.fork()
        if init == 0:
            _namespace_init(req, fds, status_w)
        for fd in fds:
            os.close(fd)
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
        _join_cgroups(req)
        child = os.fork()
        if child == 0:
            os.close(status_w)
            _run_user_code(req, workdir, fds, drop=drop)
        for fd in fds:
            os.close(fd)
        _, wstatus, usage = os.wait4(child, 0)
        status.update(wait_status=wstatus, cpu_s=usage.ru_utime + usage.ru_stime, maxrss_kb=usage.ru_maxrss)
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

    def remove(self) -> None:
        for path in sorted(set(self.dirs.values())):
            try:
                os.rmdir(path)
            except OSError:
                pass


def _join_cgroups(req: dict) -> None:
    for path in req.get("cgroup_procs") or []:
        with open(path, "w") as fh:
            fh.write("0")  # this process; its descendants follow


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

    def _sample_uid(self, fallback: int) -> int:
        """A uid no other sample uses now (1e6 + worker pid * 100 + counter % 100), if setresuid takes it.

        Per-sample uids make RLIMIT_NPROC per sample (a fork bomb elsewhere cannot starve this sample's
        processes) and, without namespaces, let the worker find and kill every process the sample left.
        """
        if self.private_uids is False:
            return fallback
        self.counter = (getattr(self, "counter", -1) + 1) % 100
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
            self.cgroups.configure(memory, req["nproc"] + 3)
            req = dict(req, cgroup_procs=self.cgroups.procs_files())
            oom_before = self.cgroups.oom_kills()
        private_uid = False
        if self.is_root and req.get("private_uid", True):
            uid = self._sample_uid(req["uid"])
            private_uid = uid != req["uid"]
            req = dict(req, uid=uid)
        if self.isolation == "namespaces":
            req = dict(req, netns_flag=self.netns_flag)
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
                    _kill_uid(req["uid"])
                    _remove_ipc_of(req["uid"])
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
    worker = Worker(os.environ.get("MIXLAB_SANDBOX_ISOLATION", "auto"))
    cgroup = worker.cgroups.version if worker.cgroups is not None else None
    write_message(proto_out, {"hello": True, "isolation": worker.isolation, "note": worker.isolation_note,
                              "cgroup": cgroup, "cgroup_dirs": sorted(set(worker.cgroups.dirs.values()))
                              if worker.cgroups is not None else [],
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
