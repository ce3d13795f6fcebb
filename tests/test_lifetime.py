"""die_with_parent: a child process goes when its parent is SIGKILLed (the stress runner's jobs, the
asynchronous trainer's workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

PARENT = textwrap.dedent(
    """
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(__import__("os").getpid())])
    print(child.pid, flush=True)
    time.sleep(60)
    """
)
CHILD_ARMED = "import sys, time\nfrom sspo.lifetime import die_with_parent\ndie_with_parent(int(sys.argv[1]))\nprint('armed', flush=True)\ntime.sleep(60)\n"
CHILD_PLAIN = "import time\ntime.sleep(60)\n"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie awaiting its reaper counts as gone
        return f.read().split(")")[-1].split()[0] != "Z"


def _orphan_after_parent_kill(child_code: str) -> tuple[int, bool]:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, child_code], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    time.sleep(1.5)  # let the child import and arm itself
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(child_pid):
        time.sleep(0.05)
    alive = _alive(child_pid)
    if alive:
        os.kill(child_pid, signal.SIGKILL)
    return child_pid, alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_child_that_dies_with_its_parent_goes_when_the_parent_is_killed():
    _, alive = _orphan_after_parent_kill(CHILD_ARMED)
    assert not alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_without_it_the_child_outlives_its_parent():
    """The control: the test above can fail."""
    _, alive = _orphan_after_parent_kill(CHILD_PLAIN)
    assert alive


def test_a_child_whose_parent_is_already_gone_exits_at_once():
    code = "import sys\nfrom sspo.lifetime import die_with_parent\ndie_with_parent(1 if __import__('os').getppid() != 1 else 2)\nprint('still here')\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "still here" not in out.stdout


def test_the_stress_runner_hands_its_pid_to_each_job(monkeypatch, tmp_path):
    from sspo.experiments import runner

    seen = {}

    def fake_run(argv, **kwargs):
        seen["argv"] = argv
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(runner.subprocess, "run", fake_run)
    job = runner.Job(kind="train", name="x", seed=0, config={"threads": 1}, directory=tmp_path / "x")
    runner._spawn(job, {"kind": "train", "config": {"threads": 1}}, tmp_path / "x" / "log.txt")
    assert seen["argv"][-1] == str(os.getpid())
