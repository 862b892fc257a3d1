"""The math-verify worker process: `python -m mixlab.evals.math_verify_worker`, JSON lines on stdin/stdout.

`mixlab.evals.tasks.math._VerifierPool` starts these and kills one that overruns its timeout: sympy can spend
minutes inside one C call (e.g. 9^{9^{9^9}}), which neither threads nor signals can interrupt. Request
`{"mode": "boxed"|"whole", "gold": ..., "pred": ...}`, reply `{"ok": bool}` (or `{"ok": false, "error": ...}`).
The worker prints `ready` once math-verify is imported.
"""

from __future__ import annotations

import json
import logging
import signal
import sys


def verify_in_process(mode: str, gold_answer: str, predicted: str) -> bool:
    """The math-verify call itself (math-verify's own signal timeouts are off; the parent enforces one)."""
    from math_verify import parse, verify

    gold = parse(f"$\\boxed{{{gold_answer}}}$", parsing_timeout=None)
    pred = parse(f"$\\boxed{{{predicted}}}$" if mode == "boxed" else predicted, parsing_timeout=None)
    return bool(gold and pred and verify(gold, pred, timeout_seconds=None))


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    logging.disable(logging.WARNING)  # math-verify warns on every call when its own timeouts are off
    import math_verify  # noqa: F401 - import before announcing readiness

    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        try:
            request = json.loads(line)
            reply = {"ok": verify_in_process(request["mode"], request["gold"], request["pred"])}
        except Exception as exc:  # noqa: BLE001 - unparseable answer: not equal, keep serving
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
