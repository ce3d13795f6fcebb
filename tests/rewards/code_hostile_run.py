"""Score every hostile program, then report grades, survivors and stray processes as one JSON line.

Run by ``test_code_hostile.py`` inside a throwaway PID namespace (with bounded processes and
memory and a hard timeout), so that a broken sandbox fails a test instead of harming the machine:
``python code_hostile_run.py CONFIG_JSON``. It sets the secrets the programs try to reach (an
environment variable, a TCP server on 127.0.0.1) itself; the file secret and the canary
directories come from the test, which checks them afterwards.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time

from code_hostile_cases import POSITIVE, SLEEP_MARKS, hostile_cases, leftover_pair

from sspo.rewards import CodeScorer
from sspo.rewards.code.sandbox import SANDBOX_UID_BASE


def serve_secret(token: str) -> int:
    """A TCP server on 127.0.0.1 that sends ``token`` to whoever connects; returns its port."""
    server = socket.create_server(("127.0.0.1", 0))

    def loop():
        while True:
            conn, _ = server.accept()
            with conn:
                conn.sendall(token.encode())

    threading.Thread(target=loop, daemon=True).start()
    return server.getsockname()[1]


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(k) for k in f.read().split()]
    except OSError:
        pass
    return kids


def sandbox_processes(scorer: CodeScorer) -> dict[str, list[int]]:
    """The judges, the processes between them and their zygotes, and whatever the zygotes still run."""
    found: dict[str, list[int]] = {"judges": [], "zygotes": [], "programs": []}
    for judge in scorer._judges:
        if judge.process is None:
            continue
        found["judges"].append(judge.process.pid)
        for child in _children(judge.process.pid):
            with open(f"/proc/{child}/cmdline", "rb") as f:
                is_unshare = f.read().split(b"\0")[0].endswith(b"unshare")
            zygotes = _children(child) if is_unshare else [child]
            found["zygotes"] += zygotes
            todo = [k for z in zygotes for k in _children(z)]
            while todo:
                pid = todo.pop()
                found["programs"].append(pid)
                todo += _children(pid)
    return found


def strays(sandbox_uids: bool) -> list[str]:
    """Processes that must not exist: our sleep markers, anything running as a sandbox uid."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{pid}/status") as f:
                uid = int(next(line for line in f if line.startswith("Uid:")).split()[1])
        except (OSError, StopIteration, ValueError):
            continue
        if any(f"sleep {mark}" in cmdline for mark in SLEEP_MARKS) or (sandbox_uids and uid >= SANDBOX_UID_BASE):
            out.append(f"{pid} uid={uid} {cmdline[:80]}")
    return out


def _stoppable(case, layers: dict) -> bool:
    return not case.needs or any(layers.get(layer) for layer in case.needs)


def main(config: dict) -> dict:
    tokens = config["tokens"]
    os.environ["SSPO_HOSTILE_SECRET"] = tokens["env"]
    port = serve_secret(tokens["tcp"])
    cases = hostile_cases(tokens, config["secret_path"], config["canaries"], port)
    options = dict(timeout=config["timeout"], memory_mb=512, isolation=config["isolation"], max_program_bytes=16 << 20)
    report: dict = {"grades": {}}
    started = time.monotonic()
    with CodeScorer(workers=2, **options) as scorer:
        scorer.warmup()
        report["layers"], report["missing"] = scorer.layers, scorer.missing_layers
        judges_before = sandbox_processes(scorer)["judges"]
        # An attack that only a missing layer would stop is not run at all: it could succeed, and
        # succeed outside this test (a file left in /tmp, a signal to every process of the user).
        runnable = [c for c in cases if _stoppable(c, scorer.layers)]
        grades = scorer.grade_batch([c.program for c in runnable], [c.problem for c in runnable])
        for case, grade in zip(runnable, grades):
            report["grades"][case.name] = grade.__dict__
        # Killed programs are reaped asynchronously: allow a moment, then nothing may be left.
        for _ in range(40):
            after = sandbox_processes(scorer)
            report["programs_left"] = after["programs"]
            report["strays"] = strays(bool(scorer.layers.get("unprivileged_uid")))
            if not (report["programs_left"] or report["strays"]):
                break
            time.sleep(0.05)
        report["judges_restarted"] = judges_before != after["judges"]
        # The scorer survived all of it: correct programs still pass, in the same judges.
        grades = scorer.grade_batch([c.program for c in POSITIVE], [c.problem for c in POSITIVE])
        report["positive"] = {c.name: g.__dict__ for c, g in zip(POSITIVE, grades)}
    writer, reader = leftover_pair(tokens["left"])
    if _stoppable(reader, report["layers"]):
        with CodeScorer(workers=1, **options) as one:  # one judge: the reader runs right after the writer
            for case in (writer, reader):
                report["grades"][case.name] = one.grade(case.program, case.problem).__dict__
    report["seconds"] = time.monotonic() - started
    return report


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))), flush=True)
