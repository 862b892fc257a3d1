"""Write-then-rename helpers shared by every artifact writer (mixture artifacts, checkpoints).

- `temp_path(parent, label)`: a temp folder name that records who made it, `.tmp-<label>-<host>-<pid>`, so a later
  process can tell a dead writer's leftovers from a live writer's work in progress.
- `sweep_stale(parent)`: removes `.tmp-*` / `.old-*` folders of dead processes on this host (and, from other hosts
  sharing the folder, those untouched for a day). A `kill -9` mid-write leaves its temp folder; the next writer
  (or reader that calls this) clears it.
- `swap_in(new, final)`: puts `new` at `final`. When `final` exists it is exchanged atomically
  (`renameat2(RENAME_EXCHANGE)`), so readers always find an artifact at `final`; where the kernel or filesystem
  lacks the exchange, it falls back to rename-aside-then-rename-in (a window of a few microseconds).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import shutil
import socket
import time
from pathlib import Path

_PREFIXES = (".tmp-", ".old-")
_NAME = re.compile(r"^\.(?:tmp|old)-(?P<label>.+)-(?P<host>[A-Za-z0-9_.]+)-(?P<pid>\d+)$")
_LEGACY = re.compile(r"^\.(?:tmp|old)-(?P<label>.+)-(?P<pid>\d+)$")  # before the host was recorded
FOREIGN_MAX_AGE_S = 24 * 3600
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _host() -> str:
    # '-' separates the name's fields, so it is dropped from the host name
    return re.sub(r"[^A-Za-z0-9_.]", "", socket.gethostname()) or "localhost"


def temp_path(parent: str | os.PathLike, label: str, kind: str = "tmp") -> Path:
    return Path(parent) / f".{kind}-{label}-{_host()}-{os.getpid()}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_stale(path: Path, now: float | None = None) -> bool:
    """True for a `.tmp-*`/`.old-*` folder whose writer is gone."""
    m = _NAME.match(path.name)
    host = m["host"] if m else None
    if m is None:
        m = _LEGACY.match(path.name)
        if m is None:
            return False
    if host is None or host == _host():
        return not _alive(int(m["pid"]))
    try:  # another machine's writer: only its pid there could tell, so go by age
        return (now or time.time()) - path.lstat().st_mtime > FOREIGN_MAX_AGE_S
    except FileNotFoundError:
        return False


def sweep_stale(parent: str | os.PathLike) -> list[Path]:
    """Remove dead writers' temp folders under `parent`; returns what was removed."""
    parent = Path(parent)
    removed = []
    try:
        entries = list(parent.iterdir())
    except FileNotFoundError:
        return removed
    for entry in entries:
        if entry.name.startswith(_PREFIXES) and is_stale(entry):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2). False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def swap_in(new: str | os.PathLike, final: str | os.PathLike, label: str) -> None:
    """Move folder `new` to `final`, replacing any existing `final` without a moment where it is missing."""
    new, final = Path(new), Path(final)
    if not final.exists():
        os.replace(new, final)
        return
    if _exchange(new, final):  # `new` now holds the old artifact
        shutil.rmtree(new, ignore_errors=True)
        return
    old = temp_path(final.parent, label, kind="old")
    os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)
