"""Hostile programs: each scores 0.0, leaves the host unchanged and returns within its time limit.

All of them are scored by ``code_hostile_run.py`` in one child process per isolation mode, and that
child runs in a throwaway PID namespace, in a cgroup capped at 1,024 processes and 6 GiB where the
machine has cgroups, under a hard timeout. If the sandbox under test were broken, a fork bomb or a
memory bomb would end with that namespace and fail these tests, not take the machine down.

Modes: ``auto`` (every layer the machine allows) and ``process`` (no namespaces, as on a machine
without them). An attack that only a missing layer stops is skipped, with the reason, in that mode.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest
from code_hostile_cases import POSITIVE, hostile_cases, leftover_pair

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "code_hostile_run.py")
TIMEOUT = 1.0
"""Each program's time limit in these tests."""
SLACK = 3.0
"""A verdict may take this long past the time limit (kill, reap, start-up of a replacement)."""
HARD_TIMEOUT = 240
"""The whole run of one mode is killed after this many seconds."""
PIDS_MAX, MEMORY_MAX = 1024, 6 << 30


def _throwaway_namespace() -> list[str]:
    """The command prefix that runs a child in a PID namespace of its own (empty where impossible)."""
    if not shutil.which("unshare"):
        return []
    base = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"]
    candidates = [base] if os.geteuid() == 0 else []
    candidates.append(["unshare", "--user", "--map-root-user", *base[1:]])
    for prefix in candidates:
        if subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    return []


class _Cgroup:
    """A cgroup v1 (pids, memory) or v2 group for the run, where this process may create one."""

    def __init__(self):
        self.dirs: list[str] = []
        name = f"sspo-hostile-{os.getpid()}"
        v1 = {"pids": ("pids.max", PIDS_MAX), "memory": ("memory.limit_in_bytes", MEMORY_MAX)}
        for controller, (knob, value) in v1.items():
            self._make(f"/sys/fs/cgroup/{controller}/{name}", {knob: value})
        if not self.dirs and os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
            self._make(f"/sys/fs/cgroup/{name}", {"pids.max": PIDS_MAX, "memory.max": MEMORY_MAX})

    def _make(self, path: str, knobs: dict) -> None:
        try:
            os.mkdir(path)
        except OSError:
            return
        try:
            for knob, value in knobs.items():
                with open(os.path.join(path, knob), "w") as f:
                    f.write(str(value))
        except OSError:
            os.rmdir(path)
            return
        self.dirs.append(path)

    def join(self) -> None:  # in the child, before exec
        for path in self.dirs:
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write("0")

    def remove(self) -> None:
        for path in self.dirs:
            try:
                with open(os.path.join(path, "cgroup.procs")) as f:
                    for pid in f.read().split():
                        os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
            for _ in range(50):
                try:
                    os.rmdir(path)
                    break
                except OSError:
                    import time

                    time.sleep(0.1)


def run_contained(config: dict) -> dict:
    """Run the hostile batch in a throwaway PID namespace with bounded processes and memory."""
    cgroup = _Cgroup()

    def limit():
        cgroup.join()
        if os.geteuid() != 0:
            import resource

            resource.setrlimit(resource.RLIMIT_NPROC, (PIDS_MAX, PIDS_MAX))

    command = [*_throwaway_namespace(), sys.executable, RUNNER, json.dumps(config)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=limit, start_new_session=True
    )
    try:
        out, err = process.communicate(timeout=HARD_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"the hostile run did not finish within {HARD_TIMEOUT} s")
    finally:
        cgroup.remove()
    lines = out.decode().strip().splitlines()
    if process.returncode != 0 or not lines:
        pytest.fail(f"the hostile run failed (exit {process.returncode}):\n{err.decode()[-3000:]}")
    return json.loads(lines[-1])


def _snapshot(paths: list[str]) -> dict[str, list[tuple[str, bytes]]]:
    snap = {}
    for d in paths:
        snap[d] = sorted((name, open(os.path.join(d, name), "rb").read()) for name in os.listdir(d))
    return snap


@pytest.fixture(scope="module", params=["auto", "process"])
def hostile(request):
    """One hostile run per isolation mode, with the host state before and after it."""
    tokens = {name: f"{name}-{secrets.token_hex(16)}" for name in ("env", "file", "tcp", "left")}
    tokens["hunt"] = f"tok-{secrets.token_hex(16)}"
    with tempfile.TemporaryDirectory(prefix="sspo-hostile-") as home:
        os.chmod(home, 0o755)  # readable by anyone, as a file outside a sandbox would be
        secret_path = os.path.join(home, "secret.txt")
        with open(secret_path, "w") as f:
            f.write(tokens["file"])
        os.chmod(secret_path, 0o644)
        canaries = [tempfile.mkdtemp(prefix="sspo-canary-", dir=d) for d in ("/tmp", "/var/tmp") if os.path.isdir(d)]
        try:
            for d in canaries:
                os.chmod(d, 0o777)  # writable by anyone: only the sandbox stands in the way
                with open(os.path.join(d, "keep.txt"), "w") as f:
                    f.write("unchanged")
                os.chmod(os.path.join(d, "keep.txt"), 0o666)
            before = _snapshot([home, *canaries])
            config = {"isolation": request.param, "tokens": tokens, "secret_path": secret_path, "canaries": canaries, "timeout": TIMEOUT}
            report = run_contained(config)
            report["host_changed"] = before != _snapshot([home, *canaries])
        finally:
            for d in canaries:
                shutil.rmtree(d, ignore_errors=True)
        report["cases"] = {c.name: c for c in hostile_cases(tokens, secret_path, canaries, 0) + list(leftover_pair(tokens["left"]))}
        yield report


CASE_NAMES = [c.name for c in hostile_cases(dict.fromkeys(("env", "file", "tcp", "left", "hunt"), "x"), "/x", [], 0)]
CASE_NAMES += [c.name for c in leftover_pair("x")]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_hostile_program_scores_zero_in_time(hostile, name):
    case = hostile["cases"][name]
    if name not in hostile["grades"]:  # not run: only a layer this mode lacks would stop it
        pytest.skip(f"stopped only by {' or '.join(case.needs)}, which this mode lacks: {hostile['missing']}")
    grade = hostile["grades"][name]
    assert grade["score"] == 0.0, grade
    assert grade["status"] != "sandbox_error", grade  # the program's failure, never the scorer's
    assert grade["seconds"] <= TIMEOUT + SLACK, grade


def test_the_scorer_survives_and_correct_programs_pass(hostile):
    for case in POSITIVE:
        assert hostile["positive"][case.name]["score"] == 1.0, (case.name, hostile["positive"][case.name])
    assert not hostile["judges_restarted"]


def test_no_process_outlives_its_program(hostile):
    assert hostile["programs_left"] == []
    assert hostile["strays"] == []


def test_the_host_is_unchanged(hostile):
    if not hostile["layers"].get("private_filesystem"):
        pytest.skip(f"writes outside the work directory are stopped only by a private filesystem: {hostile['missing']}")
    assert not hostile["host_changed"]

