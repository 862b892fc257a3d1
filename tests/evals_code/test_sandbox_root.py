"""The sample's filesystem is an allow-list, and seccomp denies what no test program needs.

Real canaries on the host (in the repository, root's home, the shared data folder and /work) must stay unreadable
from candidate code; the interpreter and its standard library must still work; the root is read-only.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest

from mixlab.evals.sandbox import SandboxPool, default_pool, run_code, run_tests
from mixlab.paths import REPO_ROOT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the private root needs root (mount namespaces)")

PROBE = r"""
import json, os, sys
out = {}
for path in json.load(open("targets.json")):
    try:
        if os.path.isdir(path):
            out[path] = sorted(os.listdir(path))
        else:
            out[path] = open(path).read()
    except Exception as exc:
        out[path] = type(exc).__name__
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def isolation():
    isolation = default_pool().run("pass").isolation
    if isolation != "namespaces":
        pytest.skip("no namespaces here: the sample sees the host filesystem (degraded mode)")
    return isolation


@pytest.fixture
def canaries(tmp_path):
    """World-readable canary files in each place the sandbox must hide; removed afterwards."""
    token = secrets.token_hex(6)
    places = [REPO_ROOT, Path("/root"), Path("/work"), REPO_ROOT.parent / "shared", tmp_path]
    made = []
    for place in places:
        if place.is_dir():
            path = place / f".sandbox-root-canary-{token}"
            path.write_text(f"canary {token}")
            path.chmod(0o644)
            made.append(path)
    yield token, made
    for path in made:
        path.unlink(missing_ok=True)


def test_host_folders_and_canaries_are_not_readable(isolation, canaries):
    token, made = canaries
    assert made, "no canary could be placed"
    targets = [str(p) for p in made] + [str(REPO_ROOT), "/root", "/work", "/work/main", "/work/shared",
                                        str(REPO_ROOT / ".venv"), str(REPO_ROOT / ".git"), "/home", "/etc/passwd",
                                        "/etc/shadow", "/var/log", "/sys", "/boot", "/srv", "/opt"]
    result = run_code(PROBE, files={"targets.json": json.dumps(targets)})
    assert result.passed, result
    seen = json.loads(result.stdout)
    assert f"canary {token}" not in result.stdout
    for path in targets:
        assert seen[path] in ("FileNotFoundError", "PermissionError"), (path, seen[path])


def test_only_the_interpreter_its_stdlib_and_libraries_are_there(isolation):
    code = (
        "import os, sys, sysconfig, json, decimal, sqlite3, hashlib, ctypes, multiprocessing\n"
        "print(json.dumps({'root': sorted(os.listdir('/')), 'etc': sorted(os.listdir('/etc')),\n"
        "                  'dev': sorted(os.listdir('/dev')), 'stdlib': os.path.isdir(sysconfig.get_path('stdlib')),\n"
        "                  'cwd': os.getcwd(), 'site': [p for p in sys.path if 'packages' in p and os.path.isdir(p) and os.listdir(p)]}))\n"
    )
    result = run_code(code)
    assert result.passed, result.stderr
    seen = json.loads(result.stdout)
    assert set(seen["root"]) <= {"usr", "lib", "lib64", "bin", "sbin", "lib32", "libx32", "etc", "tmp", "var", "dev",
                                 "proc", "root"}, seen["root"]
    assert seen["etc"] == ["ld.so.cache"] or seen["etc"] == []
    assert set(seen["dev"]) == {"null", "zero", "full", "random", "urandom", "shm", "fd", "stdin", "stdout", "stderr"}
    assert seen["stdlib"] and seen["cwd"] == "/tmp/sandbox"
    assert seen["site"] == []  # no third-party packages: site-packages folders are masked empty


def test_root_and_interpreter_are_read_only_and_the_work_dir_is_private(isolation):
    code = (
        "import json, os, sys\n"
        "out = {}\n"
        "for path in ('/escaped', '/usr/escaped', os.path.join(os.path.dirname(os.__file__), 'escaped.py'),\n"
        "             '/tmp/ok', '/dev/shm/ok', 'here.txt'):\n"
        "    try:\n"
        "        open(path, 'w').write('x')\n"
        "        out[path] = 'WROTE'\n"
        "    except OSError as exc:\n"
        "        out[path] = type(exc).__name__\n"
        "print(json.dumps(out))\n"
    )
    result = run_code(code)
    out = json.loads(result.stdout)
    assert out.pop("/tmp/ok") == out.pop("/dev/shm/ok") == out.pop("here.txt") == "WROTE"
    assert all(v in ("OSError", "PermissionError", "FileNotFoundError") for v in out.values()), out


def test_the_tester_is_invisible_and_untouchable(isolation):
    """From the program: no other uid's process in /proc (hidepid), and signals to them are refused."""
    code = (
        "import os, json, signal\n"
        "def f():\n"
        "    pids = [int(p) for p in os.listdir('/proc') if p.isdigit()]\n"
        "    others = []\n"
        "    for pid in range(1, 64):\n"
        "        try:\n"
        "            os.kill(pid, 0)\n"
        "            others.append(pid)\n"
        "        except ProcessLookupError:\n"
        "            pass\n"
        "        except PermissionError:\n"
        "            others.append(-pid)\n"
        "    return json.dumps({'visible': [os.stat(f'/proc/{p}').st_uid == os.getuid() for p in pids],\n"
        "                       'signalled': [p for p in others if p > 0 and p != os.getpid()]})\n"
    )
    result = run_tests(code, "import json\nseen = json.loads(f())\nassert all(seen['visible'])\n"
                             "assert seen['signalled'] == []\n", ["f"])
    assert result.passed, result


def test_seccomp_denies_sockets_ptrace_and_namespaces():
    pool = default_pool()
    if not pool.run("pass").seccomp:
        worker = pool._all[0]
        pytest.skip(f"seccomp unavailable here: {worker.seccomp_note}")
    code = (
        "import ctypes, errno, json, os, socket\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "out = {}\n"
        "for family in ('AF_INET', 'AF_INET6', 'AF_PACKET', 'AF_NETLINK'):\n"
        "    try:\n"
        "        socket.socket(getattr(socket, family), socket.SOCK_DGRAM if family != 'AF_PACKET' else socket.SOCK_RAW)\n"
        "        out[family] = 'OPENED'\n"
        "    except OSError as exc:\n"
        "        out[family] = errno.errorcode.get(exc.errno, str(exc.errno))\n"
        "a, b = socket.socketpair()\n"
        "out['socketpair'] = 'OK'\n"
        "def call(name, *args):\n"
        "    ctypes.set_errno(0)\n"
        "    ret = getattr(libc, name)(*args)\n"
        "    return 'OK' if ret == 0 else errno.errorcode.get(ctypes.get_errno(), '?')\n"
        "out['ptrace'] = call('ptrace', 0, 0, 0, 0)  # PTRACE_TRACEME\n"
        "out['unshare'] = call('unshare', 0x10000000)  # CLONE_NEWUSER\n"
        "out['mount'] = call('mount', b'none', b'/tmp', b'tmpfs', 0, None)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "out['fork'] = 'OK'\n"
        "print(json.dumps(out))\n"
    )
    result = run_code(code)
    assert result.passed, result
    out = json.loads(result.stdout)
    assert out["socketpair"] == out["fork"] == "OK"  # what Python programs legitimately need still works
    for family in ("AF_INET", "AF_INET6", "AF_PACKET", "AF_NETLINK"):
        assert out[family] == "EACCES", out
    assert out["ptrace"] == "EPERM" and out["unshare"] == "EPERM" and out["mount"] == "EPERM", out


def test_degraded_mode_still_keeps_the_verdict_out_of_reach():
    """Without namespaces the filesystem is the host's, but the tests still run in the tester process."""
    with SandboxPool(workers=1, isolation="degraded") as pool:
        good = pool.run("def f(x):\n    return x + 1\n", tests="assert f(1) == 2\n", entry_points=["f"])
        hack = pool.run("def f(x):\n    return 0\nimport os\nos._exit(0)\n", tests="assert f(1) == 2\n",
                        entry_points=["f"])
        eq = pool.run("class A:\n    def __eq__(self, o):\n        return True\ndef f(x):\n    return A()\n",
                      tests="assert f(1) == 2\n", entry_points=["f"])
    assert good.passed and good.isolation == "degraded"
    assert not hack.passed and not eq.passed


def test_the_projects_own_interpreter_works_inside_the_root_without_its_packages(isolation):
    """With the interpreter under a private home (e.g. pyenv in /root), only its path reaches the sample: the
    stdlib works, its site-packages (this project's venv base) is masked empty, nothing else of /root is there."""
    import sys

    python = os.path.realpath(sys.executable)
    with SandboxPool(workers=1, python=python) as pool:
        probe = pool.run("import json, os, sys, sysconfig\n"
                         "site = sysconfig.get_path('purelib')\n"
                         "print(json.dumps([sys.executable, os.path.isdir(site) and os.listdir(site)]))\n")
        verified = pool.run("def f(x):\n    return x + 1\n", tests="assert f(1) == 2\n", entry_points=["f"])
    assert probe.passed, probe.stderr
    executable, site = json.loads(probe.stdout)
    assert os.path.realpath(executable) == python and not site
    assert verified.passed, verified
