"""RolloutScheduler: step order, the staleness rule (wait and drop), dead and hung workers, no orphans.

Every wait is bounded (``worker_timeout_s``, ``timeout=`` on each blocking call), so a failure fails
fast instead of hanging the suite."""

import os
import signal
import threading
import time
from functools import partial

import pytest
import torch
import torch.multiprocessing as torch_mp
from async_toy import alive, dying_model, set_version, still_running, toy_model, toy_rollout, wait_for_file

from sspo.trainer.asynchronous import (
    AsyncWorkerError,
    RolloutScheduler,
    SpawnTarget,
    WeightChannel,
    WorkerSpec,
)


def _scheduler(model, logs, *, workers=1, max_staleness=0, on_stale="wait", updates_per_step=1, timeout_s=30.0,
               last_step=None, **rollout_kwargs) -> RolloutScheduler:  # fmt: skip
    spec = WorkerSpec(toy_model, partial(toy_rollout, **rollout_kwargs), torch_threads=1)
    return RolloutScheduler(spec, WeightChannel(model, version=0), workers=workers, max_staleness=max_staleness,
                            on_stale=on_stale, updates_per_step=updates_per_step, worker_timeout_s=timeout_s,
                            startup_timeout_s=60.0, last_step=last_step, log=logs.append)  # fmt: skip


def _update(rollouts, model, version: int) -> int:
    """One learner update: the weights become version + 1 and are published."""
    set_version(model, version + 1)
    rollouts.publish(model, version + 1)
    return version + 1


def test_in_step_order_within_max_staleness_under_wait(tmp_path):
    """2 workers, 2 updates per step, max_staleness 2: odd steps take long, so step 4 is ready before
    step 3, yet batches come in step order; each was generated with the weights it says, and none is
    more than 2 updates old when the learner takes it (some are: the rollouts really ran ahead)."""
    model, logs = toy_model(), []
    set_version(model, 0)
    rollouts = _scheduler(model, logs, workers=2, max_staleness=2, updates_per_step=2, last_step=6,
                          delays={s: 0.4 for s in (3, 5)})  # fmt: skip
    version, staleness, finished = 0, [], {}
    with rollouts:
        pids = rollouts.pids
        for step in range(1, 7):
            b = rollouts.get(step)
            assert b.step == step and b.batch["step"] == step
            assert b.batch["weights_version"] == b.version and b.staleness == version - b.version
            assert b.metrics["async/staleness_max"] == b.metrics["async/staleness_mean"] == b.staleness
            assert b.metrics["async/dropped"] == 0 and b.metrics["async/learner_wait_s"] >= 0
            staleness.append(b.staleness)
            with rollouts.timeline.span("update", step=step):
                for _ in range(2):
                    time.sleep(0.05)
                    version = _update(rollouts, model, version)
        with pytest.raises(ValueError, match="the next is step 7, not 3"):
            rollouts.get(3)
        with pytest.raises(ValueError, match="step 7 is past last_step=6"):
            rollouts.get()
        for e in rollouts.timeline.events:
            if e.kind == "generate" and e.lane.startswith("worker"):
                finished[e.step] = max(finished.get(e.step, 0), e.end)
        png = tmp_path / "timeline.png"
        lanes = rollouts.timeline.plot(png)
    assert max(staleness) <= 2 and max(staleness) >= 1, staleness
    assert finished[4] < finished[3] and finished[6] < finished[5]  # generated out of order, delivered in order
    assert sorted(finished) == list(range(1, 7))  # nothing past last_step
    assert lanes == ["learner", "worker0", "worker1"] and png.stat().st_size > 0
    kinds = {(e.lane, e.kind) for e in rollouts.timeline.events}
    assert {("learner", "update"), ("worker0", "generate"), ("worker0", "score"), ("worker1", "wait")} <= kinds
    assert rollouts.stats["dropped"] == 0 and rollouts.stats["replaced"] == 0 and not logs
    assert still_running(pids) == []  # a normal exit leaves no worker behind


def test_max_staleness_0_with_one_worker_is_the_synchronous_sequence():
    """Every batch comes from the learner's latest weights and equals the rollout the synchronous
    trainer would make with them, also when updates are skipped (fewer than updates_per_step)."""
    model, logs = toy_model(), []
    set_version(model, 0)
    version = 0
    with _scheduler(model, logs, workers=1, max_staleness=0, updates_per_step=2) as rollouts:
        for step, applied in zip(range(1, 7), (2, 1, 0, 2, 0, 1)):
            b = rollouts.get(step)
            assert b.version == version and b.staleness == 0 and b.batch["weights_version"] == version
            expected = toy_rollout(model, step)
            assert torch.equal(b.batch["out"], expected["out"]) and torch.equal(b.batch["reward"], expected["reward"])
            for _ in range(applied):
                version = _update(rollouts, model, version)
    assert not logs


def test_drop_discards_and_counts_stale_batches(tmp_path):
    """drop, max_staleness 0: step 2 is generated with version 0 while the learner trains on step 1;
    after its update (version 1) that batch is dropped, counted, and step 2 generated again fresh."""
    model, logs = toy_model(), []
    set_version(model, 0)
    with _scheduler(model, logs, workers=1, max_staleness=0, on_stale="drop", marker_dir=str(tmp_path)) as rollouts:
        b1 = rollouts.get(1)
        assert b1.staleness == 0 and b1.metrics["async/dropped"] == 0
        pid, seen = wait_for_file(tmp_path / "start-2").split()  # step 2 under way, with version 0
        assert float(seen) == 0.0
        _update(rollouts, model, 0)
        b2 = rollouts.get(2)
        assert b2.step == 2 and b2.version == 1 and b2.staleness == 0 and b2.batch["weights_version"] == 1
        assert b2.metrics["async/dropped"] == 1 and rollouts.stats["dropped"] == 1
        b3 = rollouts.get(3)  # generated with version 1 while nothing changed: kept
        assert b3.version == 1 and b3.metrics["async/dropped"] == 0
    assert rollouts.stats["dropped"] == 1 and not logs


def test_killed_worker_is_replaced_and_its_step_generated_again(tmp_path):
    model, logs = toy_model(), []
    set_version(model, 0)
    with _scheduler(model, logs, workers=1, max_staleness=1, hang=(2,), hang_once=True,
                    marker_dir=str(tmp_path)) as rollouts:  # fmt: skip
        first = rollouts.pids[0]
        assert rollouts.get(1).pid == first
        pid = int(wait_for_file(tmp_path / "start-2").split()[0])  # step 2 hangs in its first attempt
        assert pid == first
        os.kill(pid, signal.SIGKILL)
        b = rollouts.get(2)
        second = rollouts.pids[0]
        assert b.step == 2 and b.pid == second != first and b.batch["pid"] == second
        assert b.metrics["async/replaced"] == 1 and rollouts.stats["replaced"] == 1
        assert rollouts.get(3).pid == second
    assert logs == [f"async: rollout worker 0 (pid {first}) was killed by SIGKILL while generating step 2; "
                    f"replaced by pid {second}; step 2 is generated again"]  # fmt: skip
    assert still_running([first, second]) == []


def test_hung_worker_trips_the_bounded_wait_with_a_clear_message():
    model, logs = toy_model(), []
    with pytest.raises(AsyncWorkerError) as err:
        with _scheduler(model, logs, workers=1, max_staleness=1, timeout_s=1.0, hang=(2,)) as rollouts:
            pids = rollouts.pids
            rollouts.get(1)
            t0 = time.monotonic()
            rollouts.get(2)
    waited = time.monotonic() - t0
    message = str(err.value)
    assert 1.0 <= waited < 4.0 and "\n" not in message
    assert message.startswith("async.worker_timeout_s: waited ") and "for step 2 from rollout worker 0" in message
    assert "raise async.worker_timeout_s" in message
    assert still_running(pids) == []


def test_worker_exception_stops_the_learner_with_its_error():
    model, logs = toy_model(), []
    with pytest.raises(AsyncWorkerError, match=r"^async: rollout worker 0 failed at step 2: ValueError: toy failure at step 2$"):
        with _scheduler(model, logs, workers=1, max_staleness=1, fail=(2,)) as rollouts:
            pids = rollouts.pids
            rollouts.get(1)
            rollouts.get(2)
    assert "Traceback" in logs[0] and still_running(pids) == []


def test_a_worker_that_keeps_dying_stops_the_run():
    """A worker that dies while starting (as from a segfault) is replaced up to max_restarts times in a
    row, then the learner stops with an error saying so."""
    logs = []
    spec = WorkerSpec(dying_model, toy_rollout)
    with pytest.raises(AsyncWorkerError, match=r"^async: 2 rollout worker deaths in a row without a batch delivered "
                       r"\(more than max_restarts=1\); the last: worker 0 \(pid \d+\) exited with status 3$"):  # fmt: skip
        with RolloutScheduler(spec, WeightChannel(toy_model()), workers=1, max_staleness=0, max_restarts=1,
                              worker_timeout_s=30, log=logs.append) as rollouts:  # fmt: skip
            pids = rollouts.pids
            rollouts.get(1)
    assert len(logs) == 1 and logs[0].startswith("async: rollout worker 0 (pid ")
    assert "exited with status 3 while starting, before step 1; replaced by pid" in logs[0]
    assert still_running(pids + [int(logs[0].split("replaced by pid ")[1].split(";")[0])]) == []


@pytest.fixture
def python_sigint():
    """SIGINT raises KeyboardInterrupt during the test, whatever an earlier test left installed."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("how", ["exception", "keyboard_interrupt"])
def test_no_orphans_when_the_learner_stops_with_an_error(how, python_sigint):
    """An exception in the learner's step, or Ctrl-C while it waits in get(): the worker, in the middle
    of a step, is killed and reaped."""
    model, logs = toy_model(), []
    expected = RuntimeError if how == "exception" else KeyboardInterrupt
    t0 = None
    with pytest.raises(expected):
        with _scheduler(model, logs, workers=1, max_staleness=1, hang=(2,)) as rollouts:
            pids = rollouts.pids
            rollouts.get(1)
            t0 = time.monotonic()
            if how == "exception":
                raise RuntimeError("the learner's step failed")
            timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
            timer.start()
            try:
                rollouts.get(2)  # hangs until the interrupt
            finally:
                timer.cancel()  # never a stray Ctrl-C for a later test
    assert time.monotonic() - t0 < 10
    assert still_running(pids, timeout_s=2.0) == []


def test_workers_die_with_a_sigkilled_learner():
    """The learner gets SIGKILL (no cleanup of its own runs): its worker, busy in a step, dies with it."""
    ctx = torch_mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    learner = ctx.Process(target=SpawnTarget("async_toy:sigkill_learner"), args=(send,))
    learner.start()
    send.close()
    try:
        assert receive.poll(60), "the learner sent no worker pids within 60 s"
        pids = receive.recv()
        assert len(pids) == 1 and alive(pids[0])
        learner.kill()
        learner.join(timeout=10)
        assert learner.exitcode == -signal.SIGKILL
    finally:
        if learner.is_alive():
            learner.kill()
            learner.join(timeout=10)
    assert still_running(pids, timeout_s=10) == []
