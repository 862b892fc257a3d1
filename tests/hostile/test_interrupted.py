"""Interrupted work: a build killed with SIGKILL mid-write leaves a temp folder that the next run sweeps, and
`--force` swaps the new artifact in without a moment where none is there (checked by a polling reader process)."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time

import pytest

from mixlab import procs
from mixlab.atomic import _exchange, is_stale, swap_in, sweep_stale, temp_path
from mixlab.mixtures import build
from mixlab.mixtures.build import mixtures_dir

MIX = """
name: hostile
budget: {unit: samples, total: 60}
shard_rows: 10
decontamination: {tasks: [proc-math]}
components:
  - {name: math, weight: 1, source: {procedural: math, level: 1}}
  - {name: chat, weight: 1, source: {procedural: chat, level: 1}}
"""

# The child builds for real; only the parquet writer is slowed after its first shard so the kill lands mid-write.
CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import pyarrow.parquet as pq
    from mixlab.mixtures import artifact, build
    real, marker = pq.write_table, Path(sys.argv[2])
    def slow(*args, **kwargs):
        real(*args, **kwargs)
        marker.touch()
        time.sleep(600)
    artifact.pq.write_table = slow
    build(sys.argv[1], record=False)
""")


def _temps(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith((".tmp-", ".old-"))) if parent.is_dir() else []


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_killed_build_leaves_nothing_for_later_runs(tmp_path, isolated_runs, store):
    path = tmp_path / "hostile.yaml"
    path.write_text(MIX)
    marker = tmp_path / "mid-write"
    child = procs.popen(["-c", CHILD, str(path), str(marker)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert child.poll() is None, child.stdout.read().decode()
            assert time.monotonic() < deadline, "the child build never reached the write"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    left = _temps(mixtures_dir())
    assert len(left) == 1 and left[0].endswith(f"-{child.pid}")  # kill -9 runs no cleanup: the folder is there
    assert not [p for p in mixtures_dir().iterdir() if not p.name.startswith(".")]  # and no half artifact

    built = build(path, store=store)  # a later run sweeps it and builds the artifact whole
    assert _temps(mixtures_dir()) == []
    assert (built.path / "manifest.json").is_file() and built.manifest["n_rows"] == 60


def test_sweep_keeps_live_writers_and_recent_foreign_folders(tmp_path, monkeypatch):
    ours = temp_path(tmp_path, "m1")  # this process: alive
    ours.mkdir()
    dead_pid = _dead_pid()
    dead = tmp_path / ours.name.replace(f"-{os.getpid()}", f"-{dead_pid}")
    dead.mkdir()
    legacy = tmp_path / f".tmp-m2-{dead_pid}"  # the name used before the host was recorded
    legacy.mkdir()
    foreign_new = tmp_path / ".tmp-m3-otherhost-1"
    foreign_old = tmp_path / ".old-m3-otherhost-2"
    foreign_new.mkdir()
    foreign_old.mkdir()
    os.utime(foreign_old, (time.time() - 2 * 86400,) * 2)
    artifact = tmp_path / "m1"  # not a temp folder: never touched
    artifact.mkdir()
    removed = sweep_stale(tmp_path)
    assert sorted(p.name for p in removed) == sorted([dead.name, legacy.name, foreign_old.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ours.name, foreign_new.name, "m1"])
    assert not is_stale(ours)


READER = textwrap.dedent("""
    import os, sys
    manifest, stop, ready = sys.argv[1], sys.argv[2], sys.argv[3]
    checks = misses = 0
    open(ready, "w").close()
    while not os.path.exists(stop):
        checks += 1
        if not os.path.exists(manifest):
            misses += 1
    print(checks, misses)
""")


def test_force_never_leaves_a_moment_without_an_artifact(tmp_path, isolated_runs, store):
    if not _exchange_supported(tmp_path):
        pytest.skip("renameat2(RENAME_EXCHANGE) unsupported here: --force falls back to rename aside + rename in")
    path = tmp_path / "hostile.yaml"
    path.write_text(MIX)
    first = build(path, store=store)
    stop, ready = tmp_path / "stop", tmp_path / "ready"
    reader = procs.popen(["-c", READER, str(first.path / "manifest.json"), str(stop), str(ready)],
                         stdout=subprocess.PIPE, text=True)
    try:
        while not ready.exists():
            time.sleep(0.01)
        for _ in range(3):  # real forced rebuilds
            again = build(path, store=store, force=True)
            assert again.path == first.path and not again.cache_hit
        for i in range(200):  # and many bare swaps, to give the reader every chance to see a gap
            new = temp_path(first.path.parent, first.mixture_id)
            new.mkdir()
            (new / "manifest.json").write_text((first.path / "manifest.json").read_text())
            swap_in(new, first.path, first.mixture_id)
        stop.touch()
        checks, misses = map(int, reader.communicate(timeout=60)[0].split())
    finally:
        stop.touch()
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert checks > 0 and misses == 0, (checks, misses)
    assert _temps(first.path.parent) == []


def _exchange_supported(folder) -> bool:
    a, b = folder / "xa", folder / "xb"
    a.mkdir()
    b.mkdir()
    try:
        return _exchange(a, b)
    finally:
        a.rmdir()
        b.rmdir()
