"""The trainer with rollout workers (``async.workers > 0``): equal to the synchronous trainer where it
must be, the staleness bound held and measured, the timeline drawn, no process left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from trainer_cases import tiny_config

from sspo.trainer import Trainer
from sspo.trainer.config import ConfigError, load_config
from sspo.trainer.metrics_log import read_metrics

WALL_CLOCK = ("time/", "throughput/", "async/")


def _quiet(*args):
    pass


def _children() -> set[int]:
    """Live child processes of this one (zombies excluded)."""
    me, out = os.getpid(), set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) != me or fields[0] == "Z":
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" in cmdline:  # multiprocessing's own helper: it lives as long as this process
            continue
        out.add(int(entry.name))
    return out


@pytest.fixture
def no_orphans():
    before = _children()
    yield
    left = _children() - before
    assert not left, f"processes left behind: {sorted(left)}"


def _comparable(rows):
    return [{k: v for k, v in row.items() if not k.startswith(WALL_CLOCK)} for row in rows]


def test_one_worker_at_staleness_0_is_the_synchronous_trainer(tmp_path, no_orphans):
    """``async.workers=1 async.max_staleness=0``: every batch comes from the latest weights, so every
    logged value equals the synchronous run's (within 1e-5; wall-clock figures aside)."""
    Trainer(tiny_config(tmp_path / "sync", "steps=3", "update.mini_batches=2"), log=_quiet).run()
    Trainer(tiny_config(tmp_path / "async", "steps=3", "update.mini_batches=2", "async.workers=1",
                        "async.max_staleness=0"), log=_quiet).run()  # fmt: skip
    sync, asyn = read_metrics(tmp_path / "sync"), read_metrics(tmp_path / "async")
    assert len(sync) == len(asyn) == 5  # before, 3 steps, after
    for a, b in zip(_comparable(sync), _comparable(asyn), strict=True):
        assert a.keys() == b.keys()
        for key, value in a.items():
            assert b[key] == pytest.approx(value, abs=1e-5), key
    steps = [r for r in asyn if "async/staleness_max" in r]
    assert len(steps) == 3 and all(r["async/staleness_max"] == 0 for r in steps)
    assert (tmp_path / "async" / "plots" / "timeline.png").stat().st_size > 10_000


def test_two_workers_train_on_stale_samples_within_the_bound(tmp_path, no_orphans):
    run = tmp_path / "run"
    config = tiny_config(run, "steps=6", "update.mini_batches=2", "async.workers=2", "async.max_staleness=2",
                         "objective.name=grpo")  # fmt: skip
    summary = Trainer(config, log=_quiet).run()
    rows = [r for r in read_metrics(run) if "async/staleness_max" in r]
    assert len(rows) == 6 and summary["steps"] == 6
    staleness = [r["async/staleness_max"] for r in rows]
    assert max(staleness) <= 2  # the bound holds ...
    assert max(staleness) > 0  # ... and the workers really ran ahead
    assert all(r["update/applied"] == 2 for r in rows)
    assert all(k in rows[0] for k in ("async/dropped", "async/learner_wait_s", "async/worker_wait_s"))


def test_a_stale_batch_is_not_taken_as_its_own_behaviour_policy(tmp_path, no_orphans):
    """With samples from older weights, the first update's ratios are not forced to 1: the old log-probs
    are the worker's (the behaviour policy's), so the ratio measures the real staleness."""
    run = tmp_path / "run"
    Trainer(tiny_config(run, "steps=5", "update.mini_batches=1", "async.workers=2", "async.max_staleness=1",
                        "optim.lr=1e-2"), log=_quiet).run()  # fmt: skip
    rows = [r for r in read_metrics(run) if "async/staleness_max" in r]
    stale = [r for r in rows if r["async/staleness_max"] > 0]
    fresh = [r for r in rows if r["async/staleness_max"] == 0]
    assert stale, "no step trained on stale samples"
    assert all(r["ratio/first_update_max_dev"] > 1e-4 for r in stale)
    assert all(r["ratio/first_update_max_dev"] < 1e-4 for r in fresh)


def test_resume_continues_an_asynchronous_run(tmp_path, no_orphans):
    run = tmp_path / "run"
    Trainer(tiny_config(run, "steps=2", "checkpoint_every=1", "async.workers=1", "async.max_staleness=1"),
            log=_quiet).run()  # fmt: skip
    from sspo.trainer import resume

    resume(run, overrides=["steps=3"], log=_quiet)
    rows = [r for r in read_metrics(run) if "async/staleness_max" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]


@pytest.mark.parametrize(("overrides", "message"), [
    (["async.workers=1", "update.staleness=1"], "async.workers: rollout workers make the staleness real"),
    (["async.workers=-1"], "async.workers: must be an int >= 0"),
    (["async.on_stale=later"], "async.on_stale: 'later' is not one of wait, drop"),
    (["async.worker_timeout_s=0"], "async.worker_timeout_s: must be a finite number > 0"),
    (["async.workers=2", "async.max_staleness=2", "update.old_logprobs=proximal"],
     "update.old_logprobs: proximal centres the ratios on the current policy, so the workers' staleness"),
])  # fmt: skip
def test_bad_async_settings_are_one_line_naming_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_a_killed_worker_is_replaced_and_the_run_finishes(tmp_path, no_orphans):
    import signal
    import threading
    import time

    lines: list[str] = []
    trainer = Trainer(tiny_config(tmp_path / "run", "steps=4", "async.workers=1", "async.max_staleness=1"),
                      log=lines.append)  # fmt: skip
    killed = []

    def kill_once():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            rollouts = trainer.rollouts
            if rollouts is not None and trainer.step >= 1 and rollouts.pids:
                os.kill(rollouts.pids[0], signal.SIGKILL)
                killed.append(rollouts.pids[0])
            time.sleep(0.05)

    thread = threading.Thread(target=kill_once, daemon=True)
    thread.start()
    summary = trainer.run()
    thread.join(timeout=5)
    assert killed and summary["steps"] == 4
    assert any(f"pid {killed[0]}" in line and "replaced by pid" in line for line in lines), lines
    rows = [r for r in read_metrics(tmp_path / "run") if "async/replaced" in r]
    assert sum(r["async/replaced"] for r in rows) == 1


def test_sigkill_of_the_run_leaves_no_worker_and_resume_continues(tmp_path):
    """The learner SIGKILLed mid-run: its workers die with it (none outlives it), and ``sspo resume``
    continues from the last checkpoint, generating the in-flight steps again."""
    import signal
    import subprocess
    import sys
    import time

    from trainer_cases import TINY

    run = tmp_path / "run"
    args = [*TINY, f"out_dir={run}", "steps=40", "checkpoint_every=1", "async.workers=2", "async.max_staleness=1"]
    proc = subprocess.Popen([sys.executable, "-m", "sspo.cli", "train", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while not list(run.glob("checkpoints/step_*")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            workers |= _children_of(proc.pid)
            time.sleep(0.1)
        workers |= _children_of(proc.pid)
        assert workers, "the run started no worker"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() and not _zombie(pid) for pid in workers):
        time.sleep(0.1)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists() and not _zombie(pid)]
    from sspo.trainer import resume
    from sspo.trainer.checkpoint import checkpoint_dirs

    last = int(checkpoint_dirs(run)[-1].name.removeprefix("step_"))
    summary = resume(run, overrides=[f"steps={last + 1}"], log=_quiet)
    assert summary["steps"] == last + 1


def _children_of(pid: int) -> set[int]:
    out = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out |= {int(p) for p in (task / "children").read_text().split()}
        except OSError:
            pass
    return {p for p in out if b"resource_tracker" not in _cmdline(p)}


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"
