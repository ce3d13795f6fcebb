"""A math-verify worker process: ``python -m sspo.rewards._worker``.

Protocol: JSON lines. On start the worker writes ``["ready", null]`` (or ``["error", message]``),
then answers each request line ``[gold, pred]`` with one status line: ``"correct"``, ``"wrong"`` or
``"parse_fail"`` (math-verify found no answer to compare), or ``["error", message]`` when math-verify
itself raised (a verifier fault, not the answer's: it must not pass for an unparseable answer).
End of input ends it. Internal math-verify timeouts are off: the parent enforces
the time bound by killing this process. A subprocess (not ``multiprocessing``) so that starting
one never re-imports the caller's ``__main__`` script.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time


def _compare(parse, verify, config, gold: str, pred: str):
    def parsed(text: str):
        return parse("\\boxed{" + text + "}", extraction_config=config, parsing_timeout=None)

    try:
        gold_parsed, pred_parsed = parsed(gold), parsed(pred)
        if not gold_parsed:  # unparseable reference: fall back to exact text
            return "correct" if "".join(gold.split()) == "".join(pred.split()) else "wrong"
        if not pred_parsed:
            return "parse_fail"
        return "correct" if verify(gold_parsed, pred_parsed, timeout_seconds=None) else "wrong"
    except Exception as exc:  # math-verify is meant to return, not raise: report it as the verifier's fault
        return ["error", f"{type(exc).__name__}: {exc}"[:300]]


def _exit_when_orphaned(parent: int) -> None:
    """Exit if the parent dies mid-computation (stdin EOF is only seen between requests)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def main() -> None:
    """Serve requests from stdin until it closes."""
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    # Keep the protocol channel private: anything the libraries print goes to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def send(message) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    try:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    except Exception as exc:  # pragma: no cover - depends on the environment
        send(["error", f"{type(exc).__name__}: {exc}"])
        return
    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    send(["ready", None])
    for line in sys.stdin:
        try:
            gold, pred = json.loads(line)
        except (ValueError, TypeError):
            send("parse_fail")
            continue
        send(_compare(parse, verify, config, str(gold), str(pred)))


if __name__ == "__main__":
    main()
