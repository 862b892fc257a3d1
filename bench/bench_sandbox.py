"""Sandbox throughput: executions/s with mixlab's fork-server sandbox vs one process per sample, same run.

Workload: the real HumanEval scoring programs (canonical solution + unit tests + check call, 164 programs) when
the data root is present, else 164 small synthetic programs. Every method runs the same programs with the same
parallelism (`--workers`, default 2 = the CPU machine's cores):

- mixlab fork  : `run_many` — pre-started worker per core forks each sample from a warm interpreter into fresh
                 PID/mount/net namespaces, uid 65534, rlimits (the default)
- mixlab fork, netns per sample: the same with a fresh network namespace per sample instead of per worker
- mixlab exec  : same isolation, but each sample execve()s a fresh interpreter
- mixlab tests : how verifiers run (`run_tests`): the solution is the sandboxed program, the unit tests run in the
                 separate tester process and call it over the data-only channel (two processes per sample)
- naive        : `subprocess.run([sys.executable, "-c", code])` per sample, no isolation at all (the usual
                 peer; ratios are against it), and the same with the sandbox's interpreter when that differs
- naive+unshare: `unshare --pid --fork --net --mount-proc setpriv --reuid 65534 ... python -c code` per sample,
                 i.e. comparable isolation done with a process per sample (root only)

Writes bench/results/sandbox.json (device, cores, load, per-method executions/s, ratios) and prints the ratios.
Run: `.venv/bin/python bench/bench_sandbox.py [--workers 2] [--repeats 1]`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mixlab.device import cpu_name

RESULTS = Path(__file__).resolve().parent / "results" / "sandbox.json"


def device_name() -> str:
    return f"{cpu_name()} ({os.cpu_count()} logical CPUs visible)"


def workload(kind: str) -> tuple[str, list[str], list[tuple[str, str, list[str]]]]:
    """(name, whole programs, (solution, tests, entry points) of the same problems)."""
    from mixlab.paths import data_root

    root = data_root()
    path = root / "humaneval" / "HumanEval.jsonl.gz" if root else None
    if kind != "synthetic" and path is not None and path.is_file():
        with gzip.open(path, "rt") as fh:
            rows = [json.loads(line) for line in fh]
        programs = [f"{r['prompt']}{r['canonical_solution']}\n\n{r['test']}\n\ncheck({r['entry_point']})\n"
                    for r in rows]
        split = [(f"{r['prompt']}{r['canonical_solution']}\n", f"{r['test']}\n\ncheck({r['entry_point']})\n",
                  [r["entry_point"]]) for r in rows]
        return "humaneval-canonical", programs, split
    solution = "def f(x):\n    return sum(i * i for i in range(x))\n"
    tests = [f"assert f({i}) == {sum(k * k for k in range(i))}\n" for i in range(164)]
    return "synthetic", [f"{solution}\n{t}" for t in tests], [(solution, t, ["f"]) for t in tests]


def run_parallel(fn, programs: list[str], workers: int) -> tuple[float, int]:
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        ok = sum(pool.map(fn, programs))
    return time.perf_counter() - start, ok


def naive(python: str, timeout_s: float):
    def one(code: str) -> bool:
        try:
            return subprocess.run([python, "-c", code], capture_output=True, timeout=timeout_s).returncode == 0
        except subprocess.TimeoutExpired:
            return False
    return one


def naive_unshare(python: str, timeout_s: float):
    prefix = ["unshare", "--pid", "--fork", "--net", "--mount-proc", "--kill-child", "setpriv", "--reuid", "65534",
              "--regid", "65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]

    def one(code: str) -> bool:
        try:
            return subprocess.run([*prefix, python, "-c", code], capture_output=True, timeout=timeout_s,
                                  cwd="/tmp").returncode == 0
        except subprocess.TimeoutExpired:
            return False
    return one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="passes over the workload per method")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--workload", choices=("auto", "synthetic"), default="auto",
                        help="auto: HumanEval scoring programs when the data root has them")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from mixlab.evals.sandbox import SandboxPool, Limits, sandbox_python

    name, programs, split = workload(args.workload)
    programs = programs * args.repeats
    split = split * args.repeats
    n = len(programs)
    python, _ = sandbox_python()
    methods: dict[str, dict] = {}

    variants = [("mixlab-fork", "fork", "worker"), ("mixlab-fork-netns-per-sample", "fork", "sample"),
                ("mixlab-exec", "exec", "worker")]
    for key, mode, netns in variants:
        os.environ["MIXLAB_SANDBOX_NETNS"] = netns  # read by the workers this pool starts
        t0 = time.perf_counter()
        pool = SandboxPool(workers=args.workers)
        pool.map(["pass"] * args.workers, limits=Limits(timeout_s=args.timeout, mode=mode))  # start the workers
        startup = time.perf_counter() - t0
        start = time.perf_counter()
        results = pool.map(programs, limits=Limits(timeout_s=args.timeout, mode=mode))
        elapsed = time.perf_counter() - start
        pool.close()
        methods[key] = {
            "seconds": elapsed, "passed": sum(r.passed for r in results), "exec_per_s": n / elapsed,
            "pool_startup_s": startup, "isolation": results[0].isolation,
            "median_sample_s": sorted(r.duration_s for r in results)[n // 2],
        }

    os.environ["MIXLAB_SANDBOX_NETNS"] = "worker"
    t0 = time.perf_counter()
    pool = SandboxPool(workers=args.workers)
    pool.map(["pass"] * args.workers, limits=Limits(timeout_s=args.timeout))
    startup = time.perf_counter() - t0
    start = time.perf_counter()
    results = pool.map([c for c, _, _ in split], tests=[t for _, t, _ in split], entry_points=[e for _, _, e in split],
                       limits=Limits(timeout_s=args.timeout))
    elapsed = time.perf_counter() - start
    pool.close()
    methods["mixlab-tests"] = {
        "seconds": elapsed, "passed": sum(r.passed for r in results), "exec_per_s": n / elapsed,
        "pool_startup_s": startup, "isolation": results[0].isolation, "seccomp": results[0].seccomp,
        "median_sample_s": sorted(r.duration_s for r in results)[n // 2],
    }

    elapsed, ok = run_parallel(naive(sys.executable, args.timeout), programs, args.workers)
    methods["naive-subprocess"] = {"seconds": elapsed, "passed": ok, "exec_per_s": n / elapsed,
                                   "python": sys.executable, "isolation": "none"}
    if os.path.realpath(python) != os.path.realpath(sys.executable):  # same interpreter as the sandbox workers
        elapsed, ok = run_parallel(naive(python, args.timeout), programs, args.workers)
        methods["naive-subprocess-same-python"] = {"seconds": elapsed, "passed": ok, "exec_per_s": n / elapsed,
                                                   "python": python, "isolation": "none"}
    if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("setpriv"):
        elapsed, ok = run_parallel(naive_unshare(python, args.timeout), programs, args.workers)
        methods["naive-unshare-setpriv"] = {"seconds": elapsed, "passed": ok, "exec_per_s": n / elapsed,
                                            "python": python, "isolation": "namespaces (per-sample unshare)"}

    base = methods["naive-subprocess"]["exec_per_s"]
    for m in methods.values():
        m["ratio_vs_naive"] = m["exec_per_s"] / base
    out = {
        "benchmark": "sandbox throughput",
        "device": device_name(),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "workers": args.workers,
        "load_avg_at_start": os.getloadavg(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "workload": name,
        "n_programs": n,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sandbox_python": python,
        "methods": methods,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=2))
    os.replace(tmp, args.out)
    print(f"{name}: {n} programs, {args.workers} workers, device {out['device']}")
    for key, m in methods.items():
        print(f"  {key:24s} {m['exec_per_s']:8.1f} exec/s   {m['ratio_vs_naive']:5.2f}x naive   "
              f"passed {m['passed']}/{n}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
