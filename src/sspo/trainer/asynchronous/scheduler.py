"""The learner's side of asynchronous rollouts: :class:`RolloutScheduler`.

It starts ``workers`` rollout processes (``spawn``), hands out step numbers in order, one step per
worker at a time and at most ``workers`` steps beyond the one the learner is training on, and gives
the batches back in step order with their staleness. The rules:

- **Staleness** of a batch = the learner's weights version when it takes the batch (:meth:`get`;
  the version counts optimizer updates) minus the version the batch was generated with: the number of
  updates between them at the first update that uses it.
- ``on_stale="wait"``: step ``s`` is handed out only once weights are published that keep it within
  ``max_staleness`` however the learner's updates go. When the learner has finished step ``d`` at
  version ``V`` and applies at most ``updates_per_step`` (``U``) updates per step, it takes ``s`` at a
  version ``<= V + (s-1-d)·U``, so ``s`` needs weights ``>= V + (s-1-d)·U - max_staleness``. The bound
  is re-read as the learner goes on (skipped updates make it smaller), and the step the learner asks
  for always qualifies, so waiting never deadlocks. With ``max_staleness=0`` and one worker every
  batch comes from the latest weights: the synchronous sequence.
- ``on_stale="drop"``: workers never wait; a batch over ``max_staleness`` (as soon as it certainly
  is: versions only grow) is discarded, counted in ``async/dropped`` and its step generated again.
- **Bounded waits**: the learner waits at most ``worker_timeout_s`` for a step (counted from when the
  worker holding it was ready and had it, or from the call), and as long for a worker to start, then
  raises :class:`AsyncWorkerError` naming ``async.worker_timeout_s``.
- **Dead workers** (killed, crashed) are seen at once (their process sentinel), replaced under the
  same index, logged, and the step they held is generated again. More than ``max_restarts`` deaths
  in a row without a batch delivered in between stop the run.
- **No orphans**: use it as a context manager. Leaving it normally stops the workers (SIGKILL after a
  short grace); an exception or KeyboardInterrupt kills them at once; the interpreter's exit kills any
  left; and a SIGKILLed learner takes them along (``PR_SET_PDEATHSIG``, set in the worker). Start it
  from the main thread: the death signal follows the thread that started the worker.

Publish the weights (:meth:`publish`) after every optimizer update, or at least before every
:meth:`get`: the published version is taken as the learner's current version.
"""

from __future__ import annotations

import os
import pickle
import signal
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_any
from typing import Any

import torch.multiprocessing as torch_mp

from .config import ON_STALE, AsyncConfig
from .timeline import Timeline
from .weights import WeightChannel
from .worker import ENTRY, WorkerResult, WorkerSpec

SHUTDOWN_GRACE_S = 2.0
"""How long a normal exit lets the workers stop on their own before they are killed."""


class AsyncWorkerError(RuntimeError):
    """A rollout worker failed, hung past ``async.worker_timeout_s`` or kept dying. The message is one
    line; ``details`` holds the worker's traceback when there is one."""

    def __init__(self, message: str, details: str | None = None):
        super().__init__(message)
        self.details = details


@dataclass
class AsyncBatch:
    """A step's batch as the learner gets it."""

    step: int
    version: int
    """Version of the weights every sample of the batch was generated with."""
    staleness: int
    """Learner's version at :meth:`RolloutScheduler.get` minus ``version`` (always <= ``max_staleness``)."""
    batch: Any
    worker: int
    pid: int
    metrics: dict[str, float]
    """``async/staleness_mean``, ``async/staleness_max`` (over the batch's samples: one version per
    batch, so they are equal), ``async/dropped`` and ``async/replaced`` (batches dropped and workers
    replaced since the previous step), ``async/learner_wait_s`` (this call's wait),
    ``async/worker_wait_s`` (the producing worker's idle time before this step)."""
    timings: dict[str, float]
    """The worker's ``wait_s``, ``load_s``, ``rollout_s``."""


class _Worker:
    """One worker position: its process, the two pipe ends the learner keeps, the step it holds."""

    def __init__(self, index: int, process, tasks, results):
        self.index, self.process, self.tasks, self.results = index, process, tasks, results
        self.pid: int = process.pid
        self.started_at = time.monotonic()
        self.ready_at: float | None = None
        self.step: int | None = None
        self.dispatched_at = 0.0
        self.idle_since = self.started_at

    def exited(self) -> bool:
        """Whether the process has ended (without reaping it, so its pid stays ours to signal)."""
        return bool(wait_any([self.process.sentinel], 0))

    def close_pipes(self) -> None:
        for conn in (self.tasks, self.results):
            conn.close()


def _kill_group(pid: int | None) -> None:
    """SIGKILL a worker and its process group (what its rollout started). Called before the worker is
    reaped: its pid, and so the group id it made, cannot belong to another process yet."""
    if not pid:
        return
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _kill_all(processes: list) -> None:
    """Kill and reap every process still listed (the interpreter's exit, or a scheduler collected
    without being closed)."""
    for p in processes:
        _kill_group(p.pid)
    for p in processes:
        p.join(timeout=5)
    processes.clear()


def _how(exitcode: int | None) -> str:
    if exitcode is None:
        return "stopped answering"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


class RolloutScheduler:
    """Rollout workers generating ahead of the learner within ``max_staleness`` (rules: module docstring).

    ``with RolloutScheduler(spec, channel, workers=2, max_staleness=2, updates_per_step=2) as rollouts:``
    then per step ``batch = rollouts.get(step)``, and ``rollouts.publish(model, updates)`` after each
    optimizer update.

    ``updates_per_step``: the most optimizer updates the learner applies per step (``K × epochs``);
    ``first_step``/``last_step``: the steps to generate (a resumed run starts later; nothing is
    generated past the last); ``startup_timeout_s``: the bound on a worker's start (default
    ``worker_timeout_s``); ``log``: where replacements and a worker's traceback are reported. Not
    thread-safe: one learner thread calls it (the main thread, for the death signal)."""

    def __init__(
        self,
        spec: WorkerSpec,
        channel: WeightChannel,
        *,
        workers: int,
        max_staleness: int,
        on_stale: str = "wait",
        updates_per_step: int = 1,
        worker_timeout_s: float = 1800.0,
        startup_timeout_s: float | None = None,
        first_step: int = 1,
        last_step: int | None = None,
        max_restarts: int = 3,
        log: Callable[[str], Any] = print,
    ):
        if workers < 1:
            raise ValueError(f"RolloutScheduler: workers must be >= 1, got {workers} (0 is the synchronous trainer)")
        if max_staleness < 0 or updates_per_step < 1:
            raise ValueError(f"RolloutScheduler: max_staleness must be >= 0 and updates_per_step >= 1, got "
                             f"{max_staleness} and {updates_per_step}")  # fmt: skip
        if on_stale not in ON_STALE:
            raise ValueError(f"RolloutScheduler: on_stale {on_stale!r} is not one of {', '.join(ON_STALE)}")
        self.spec, self.channel = spec, channel
        self.workers, self.max_staleness, self.on_stale = workers, max_staleness, on_stale
        self.updates_per_step = updates_per_step
        self.worker_timeout_s = worker_timeout_s
        self.startup_timeout_s = worker_timeout_s if startup_timeout_s is None else startup_timeout_s
        self.first_step, self.last_step = first_step, last_step
        self.max_restarts = max_restarts
        self.log = log
        self.timeline = Timeline("learner")
        self.stats = {"dropped": 0, "replaced": 0, "learner_wait_s": 0.0, "worker_wait_s": 0.0}
        """Totals over the run."""
        self._ctx = torch_mp.get_context("spawn")
        self._slots: list[_Worker] = []
        self._processes: list = []  # every worker process not yet reaped, for the exit-time kill
        self._finalizer = weakref.finalize(self, _kill_all, self._processes)
        self._next_get = first_step  # the step get() returns next
        self._taken = first_step - 1  # the step the learner is training on
        self._next_new = first_step  # the next step never handed out
        self._redo: set[int] = set()  # steps to generate again (dropped, or lost with a dead worker)
        self._done_step = first_step - 1  # the learner has finished every step up to this one ...
        self._done_version = 0  # ... at this version
        self._results: dict[int, WorkerResult] = {}
        self._dropped_since = 0
        self._replaced_since = 0
        self._deaths_in_a_row = 0
        self._warned = False
        self._state = "new"

    @classmethod
    def from_config(cls, config: AsyncConfig, spec: WorkerSpec, channel: WeightChannel, **kwargs) -> RolloutScheduler:
        """A scheduler with the ``async`` section's settings (``workers >= 1``)."""
        return cls(spec, channel, workers=config.workers, max_staleness=config.max_staleness,
                   on_stale=config.on_stale, worker_timeout_s=config.worker_timeout_s, **kwargs)  # fmt: skip

    # ------------------------------------------------------------------ life cycle
    def __enter__(self) -> RolloutScheduler:
        try:
            self.start()
        except BaseException:
            self.close(graceful=False)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(graceful=exc_type is None)

    @property
    def pids(self) -> list[int]:
        """The workers' process ids, by index."""
        return [w.pid for w in self._slots]

    def start(self) -> None:
        """Start the workers and hand out the first steps."""
        if self._state != "new":
            raise RuntimeError("RolloutScheduler.start: already started")
        self._state = "running"
        self._done_version = self.channel.version
        for index in range(self.workers):
            self._slots.append(self._spawn(index))
        self._dispatch()

    def _spawn(self, index: int) -> _Worker:
        task_read, task_write = self._ctx.Pipe(duplex=False)
        result_read, result_write = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(target=ENTRY, name=f"sspo-rollout-{index}", daemon=True,
                                    args=(index, self.spec, self.channel, task_read, result_write, os.getpid()))  # fmt: skip
        try:
            process.start()
        finally:
            # the child has its own copies now: a dead child then reads as end-of-file, never as a hang
            task_read.close()
            result_write.close()
        self._processes.append(process)
        return _Worker(index, process, task_write, result_read)

    def close(self, graceful: bool = True) -> None:
        """Stop every worker and reap it. ``graceful``: ask them to stop and give them
        :data:`SHUTDOWN_GRACE_S`; otherwise (or after that) SIGKILL their process groups."""
        if self._state == "closed":
            return
        self._state = "closed"
        try:
            if graceful:
                for w in self._slots:
                    try:
                        w.tasks.send(("stop",))
                    except OSError:
                        pass
                deadline = time.monotonic() + SHUTDOWN_GRACE_S
                running = [w for w in self._slots if not w.exited()]
                while running and (left := deadline - time.monotonic()) > 0:
                    wait_any([w.process.sentinel for w in running], left)
                    running = [w for w in running if not w.exited()]
        finally:
            for w in self._slots:
                w.close_pipes()
            _kill_all(self._processes)  # the groups first, then reap
            self._finalizer.detach()

    # ------------------------------------------------------------------ the learner's calls
    def publish(self, source, version: int) -> None:
        """Publish the learner's weights (a module or state dict) as ``version`` (its optimizer updates
        so far), then hand out the steps they make fresh enough."""
        self.channel.publish(source, version)
        if self._state == "running":
            self._pump(0.0)

    def get(self, step: int | None = None) -> AsyncBatch:
        """The next step's batch (``step``, if given, must be that step: batches come in step order),
        within ``max_staleness`` of the published weights, waiting for it at most ``worker_timeout_s``."""
        if self._state != "running":
            raise RuntimeError(f"RolloutScheduler.get: the scheduler is {self._state}, not running")
        s = self._next_get
        if step is not None and step != s:
            raise ValueError(f"RolloutScheduler.get: batches come in step order; the next is step {s}, not {step}")
        if self.last_step is not None and s > self.last_step:
            raise ValueError(f"RolloutScheduler.get: step {s} is past last_step={self.last_step}")
        entered, t0 = time.time(), time.monotonic()
        self._done_step, self._done_version = s - 1, self.channel.version
        timeout = 0.0
        while True:
            self._pump(timeout)  # stale results are dropped in there: one still held is fresh
            if s in self._results:
                break
            timeout = min(0.25, self._time_left(s, t0))
        r = self._results.pop(s)
        self._taken, self._next_get = s, s + 1
        waited = time.monotonic() - t0
        if waited > 1e-3:
            self.timeline.add("wait", entered, time.time(), step=s)
        staleness = self._done_version - r.version
        metrics = {
            "async/staleness_mean": float(staleness), "async/staleness_max": float(staleness),
            "async/dropped": float(self._dropped_since), "async/replaced": float(self._replaced_since),
            "async/learner_wait_s": waited, "async/worker_wait_s": r.timings.get("wait_s", 0.0),
        }  # fmt: skip
        self._dropped_since = self._replaced_since = 0
        self.stats["learner_wait_s"] += waited
        self.stats["worker_wait_s"] += metrics["async/worker_wait_s"]
        self._dispatch()
        return AsyncBatch(s, r.version, staleness, r.batch, r.worker, r.pid, metrics, r.timings)

    # ------------------------------------------------------------------ internals
    def _time_left(self, step: int, t0: float) -> float:
        """Seconds the learner may still wait for ``step``; raises once the bound is passed."""
        holder = next((w for w in self._slots if w.step == step), None)
        if holder is None:  # queued behind busy workers
            base, limit = t0, self.worker_timeout_s
        elif holder.ready_at is None:
            base, limit = max(t0, holder.started_at), self.startup_timeout_s
        else:
            base, limit = max(t0, holder.ready_at, holder.dispatched_at), self.worker_timeout_s
        left = base + limit - time.monotonic()
        if left > 0:
            return left
        waited = time.monotonic() - t0
        if holder is None:
            raise AsyncWorkerError(f"async.worker_timeout_s: waited {waited:.1f} s for step {step}: no rollout worker "
                                   f"became free (all hung or slower than {limit:g} s); raise async.worker_timeout_s "
                                   "if a step's rollout really takes longer")  # fmt: skip
        if holder.ready_at is None:
            raise AsyncWorkerError(f"async.worker_timeout_s: rollout worker {holder.index} (pid {holder.pid}) did not "
                                   f"finish starting (building its model) within {limit:g} s")  # fmt: skip
        raise AsyncWorkerError(f"async.worker_timeout_s: waited {waited:.1f} s for step {step} from rollout worker "
                               f"{holder.index} (pid {holder.pid}), which sent nothing: it is hung or slower than "
                               f"{limit:g} s; raise async.worker_timeout_s if a step's rollout really takes longer")  # fmt: skip

    def _pump(self, timeout: float) -> None:
        """Receive what the workers sent (waiting up to ``timeout`` for anything), replace dead workers,
        drop stale batches, hand out steps."""
        if timeout > 0:
            wait_any([w.results for w in self._slots] + [w.process.sentinel for w in self._slots], timeout)
        dead = []
        for w in self._slots:
            exited = w.exited()
            if not self._drain(w) or exited:  # drained after the exit check: nothing it sent is lost
                dead.append(w)
        for w in dead:  # every group is killed before any worker is reaped
            _kill_group(w.pid)
        for w in dead:
            self._replace(w)
        self._drop_stale()
        self._dispatch()

    def _drain(self, w: _Worker) -> bool:
        """Handle every message waiting from ``w``; False when its pipe broke (it died mid-message)."""
        try:
            while w.results.poll(0):
                self._handle(w, pickle.loads(w.results.recv_bytes()))
        except (EOFError, OSError):
            return False
        return True

    def _handle(self, w: _Worker, message: tuple) -> None:
        kind = message[0]
        if kind == "ready":
            w.ready_at = time.monotonic()
        elif kind == "result":
            r: WorkerResult = message[1]
            if w.step == r.step:
                w.step, w.idle_since = None, time.monotonic()
            self._deaths_in_a_row = 0
            self.timeline.extend(r.events)
            if r.step > self._taken and r.step not in self._results:
                self._results[r.step] = r
        elif kind == "error":
            _, step, text = message
            last = text.strip().splitlines()[-1] if text.strip() else "unknown error"
            where = "while building its model" if step is None else f"at step {step}"
            self.log(f"async: rollout worker {w.index} (pid {w.pid}) failed {where}:\n{text.rstrip()}")
            raise AsyncWorkerError(f"async: rollout worker {w.index} failed {where}: {last}", details=text)

    def _replace(self, w: _Worker) -> None:
        """Reap dead worker ``w``, start another under its index, and queue the step it held again."""
        w.process.join(timeout=5)
        how = _how(w.process.exitcode)
        w.close_pipes()
        if w.process in self._processes:
            self._processes.remove(w.process)
        self.stats["replaced"] += 1
        self._replaced_since += 1
        self._deaths_in_a_row += 1
        if self._deaths_in_a_row > self.max_restarts:
            raise AsyncWorkerError(f"async: {self._deaths_in_a_row} rollout worker deaths in a row without a batch "
                                   f"delivered (more than max_restarts={self.max_restarts}); the last: worker {w.index} "
                                   f"(pid {w.pid}) {how}")  # fmt: skip
        lost = w.step
        if lost is not None and lost > self._taken and lost not in self._results:
            self._redo.add(lost)
        new = self._spawn(w.index)
        self._slots[self._slots.index(w)] = new
        doing = "generating" if w.ready_at is not None else "starting, before"
        held = f" while {doing} step {lost}" if lost is not None else ("" if w.ready_at is not None else " while starting")
        again = f"; step {lost} is generated again" if lost is not None else ""
        self.log(f"async: rollout worker {w.index} (pid {w.pid}) {how}{held}; replaced by pid {new.pid}{again}")

    def _min_version(self, step: int) -> int:
        """The oldest weights ``step`` may be generated with (the ``wait`` rule; any under ``drop``)."""
        if self.on_stale == "drop":
            return -(2**62)
        ahead = max(0, step - 1 - self._done_step)
        return self._done_version + ahead * self.updates_per_step - self.max_staleness

    def _drop_stale(self) -> None:
        """Drop held batches already over ``max_staleness`` (versions only grow: they stay over)."""
        if not self._results:
            return
        version = self.channel.version
        for step in sorted(self._results):
            r = self._results[step]
            if version - r.version <= self.max_staleness:
                continue
            if self.on_stale == "wait" and not self._warned:
                self._warned = True
                self.log(f"warning: async: step {step} came from weights {version - r.version} updates old, over "
                         f"async.max_staleness={self.max_staleness}: the learner published more than "
                         f"{self.updates_per_step} updates per step; the batch is dropped and generated again")  # fmt: skip
            del self._results[step]
            self._redo.add(step)
            self.stats["dropped"] += 1
            self._dropped_since += 1

    def _dispatch(self) -> None:
        """Hand the next steps to idle workers (the longest idle first), in step order, while the weights
        allow them."""
        version = None
        for w in sorted((w for w in self._slots if w.step is None), key=lambda w: w.idle_since):
            if self._redo:
                step = min(self._redo)
            elif self._next_new <= self._taken + self.workers and (self.last_step is None or self._next_new <= self.last_step):
                step = self._next_new
            else:
                return
            need = self._min_version(step)
            version = self.channel.version if version is None else version
            if version < need:
                return  # later steps need newer weights still
            try:
                w.tasks.send(("step", step, need))
            except OSError:  # dead: the next pump replaces it
                continue
            if step in self._redo:
                self._redo.discard(step)
            else:
                self._next_new += 1
            w.step, w.dispatched_at = step, time.monotonic()
