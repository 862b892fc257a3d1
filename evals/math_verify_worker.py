"""The math-verify worker process body (kept in a tiny module so child processes import almost nothing).

`mixlab.evals.tasks.math._VerifierPool` starts these from a forkserver and kills one that overruns its timeout:
sympy can spend minutes inside one C call (e.g. 9^{9^{9^9}}), which neither threads nor signals can interrupt.
"""

from __future__ import annotations

import logging

import math_verify  # noqa: F401 - preloaded by the forkserver so each worker starts warm


def verify_in_process(mode: str, gold_answer: str, predicted: str) -> bool:
    """The math-verify call itself (runs inside a worker process; math-verify's own timeouts are off)."""
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    gold = parse(f"$\\boxed{{{gold_answer}}}$", parsing_timeout=None)
    pred = parse(f"$\\boxed{{{predicted}}}$" if mode == "boxed" else predicted, parsing_timeout=None)
    return bool(gold and pred and verify(gold, pred, timeout_seconds=None))


def worker_main(conn) -> None:  # pragma: no cover - runs in the child process
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    while True:
        try:
            mode, gold, pred = conn.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send(("ok", verify_in_process(mode, gold, pred)))
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
