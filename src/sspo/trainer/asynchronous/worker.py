"""The rollout worker process: wait for weights new enough, load them, generate the step it is given,
send the batch back with the version it came from.

A worker gets tasks ``("step", step, min_version)`` from the scheduler, one at a time. Rule: it
generates ``step`` only with weights of version ``>= min_version`` (the scheduler hands a step out
only once such weights are published, so this wait is normally nil), and every batch it sends carries
the version of the weights it was generated with. It sends ``("ready", ...)`` once its model is built,
``("result", WorkerResult)`` per step, and ``("error", step, traceback)`` if building or a rollout
raised (then it exits).

It dies with the learner: ``PR_SET_PDEATHSIG`` (Linux) SIGKILLs it when the learner's thread that
started it ends, so whenever the learner process dies, even by SIGKILL. It runs in its own process
group, so a Ctrl-C in the terminal reaches only the learner (which shuts the workers down), and the
scheduler can kill whatever the rollout started along with the worker. It is a daemon process: a
rollout may start subprocesses (``subprocess``, as the reward sandboxes do) but not ``multiprocessing``
children.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ...lifetime import die_with_parent
from .timeline import Timeline, set_current
from .weights import WeightChannel

POLL_S = 0.002
"""How often a worker re-reads the weights' version while it waits for newer ones."""


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process builds and runs; every field must be picklable by reference (module-level
    functions, or ``functools.partial`` of them), since the worker starts in a fresh interpreter."""

    build_model: Callable[[], torch.nn.Module]
    """Builds the worker's model (any device and dtype); its weights are overwritten from the channel
    before each step."""
    rollout: Callable[[torch.nn.Module, int], Any]
    """``rollout(model, step) -> batch``, run under ``torch.no_grad()``; the batch must be picklable (its
    tensors are sent by value). It may mark its phases with ``timeline.span("score")``."""
    torch_threads: int | None = None
    """``torch.set_num_threads`` in the worker (``None``: torch's default)."""


@dataclass
class WorkerResult:
    """One step's batch as a worker sends it."""

    step: int
    version: int
    """Version of the weights the whole batch was generated with."""
    batch: Any
    worker: int
    pid: int
    timings: dict[str, float] = field(default_factory=dict)
    """``wait_s`` (idle before this step: no task, or weights not new enough), ``load_s`` (copying the
    weights), ``rollout_s`` (the rollout function)."""
    events: list = field(default_factory=list)
    """Timeline events of this worker since its previous result."""


def _send(conn, message) -> None:
    # pickled here, by value: a batch's tensors must not be shared by file descriptor with a process that
    # may be killed before they are read
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def worker_main(index: int, spec: WorkerSpec, channel: WeightChannel, tasks, results, parent_pid: int) -> None:
    """Process main of rollout worker ``index``: ``tasks`` and ``results`` are the read and write ends of
    its two pipes from and to the scheduler."""
    die_with_parent(parent_pid)
    try:
        os.setpgid(0, 0)
    except (AttributeError, OSError):  # not POSIX, or not allowed: the scheduler then kills the worker alone
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    timeline = Timeline(lane=f"worker{index}")
    set_current(timeline)
    step = None
    try:
        if spec.torch_threads:
            torch.set_num_threads(spec.torch_threads)
        model = spec.build_model()
        _send(results, ("ready", index, os.getpid(), time.time()))
        version = None
        idle_since = time.time()
        while True:
            try:
                task = tasks.recv()
            except (EOFError, OSError):  # the learner is gone
                return
            if task[0] == "stop":
                return
            _, step, min_version = task
            while channel.version < min_version:
                if os.getppid() != parent_pid:
                    return
                time.sleep(POLL_S)
            started = time.time()
            timeline.add("wait", idle_since, started, step=step)
            with timeline.span("generate", step=step):
                t0 = time.perf_counter()
                version = channel.load_into(model, current=version)
                t1 = time.perf_counter()
                with torch.no_grad():
                    batch = spec.rollout(model, step)
                t2 = time.perf_counter()
            timings = {"wait_s": started - idle_since, "load_s": t1 - t0, "rollout_s": t2 - t1}
            idle_since = time.time()  # sending counts as waiting: the learner may not be reading yet
            _send(results, ("result", WorkerResult(step, version, batch, index, os.getpid(), timings, timeline.drain())))
            step = None
    except BaseException:
        try:
            _send(results, ("error", step, traceback.format_exc()))
        except (OSError, ValueError):
            pass
        sys.exit(1)


_BOOT = """
import importlib, importlib.util, sys
if "sspo.trainer" not in sys.modules:
    spec = importlib.util.find_spec("sspo.trainer")
    package = importlib.util.module_from_spec(spec)

    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)
        del package.__getattr__
        spec.loader.exec_module(package)
        return getattr(package, name)

    package.__getattr__ = __getattr__
    sys.modules["sspo.trainer"] = package
    sys.modules["sspo"].trainer = package
module, _, attr = target.partition(":")
function = getattr(importlib.import_module(module), attr)
"""


class SpawnTarget:
    """A ``Process`` target named ``"module:function"``, for processes started with ``spawn``.

    Unpickled in the fresh interpreter, it first makes the ``sspo.trainer`` package lazy (its
    ``__init__``, which imports the whole trainer and transformers, about 5 s, then runs only when one
    of its own names is used), then imports the function. So a worker that needs only this package
    and its rollout function starts in about the time torch takes to import. Unpickling the
    ``Process`` restores its target before its arguments, so they (a :class:`WeightChannel`, a
    :class:`WorkerSpec`) already find the package lazy."""

    def __init__(self, name: str):
        self.name = name

    def __reduce__(self):
        return eval, ("exec(boot, names) or names['function']", {"boot": _BOOT, "names": {"target": self.name}})

    def __call__(self, *args, **kwargs):
        import importlib

        module, _, attr = self.name.partition(":")
        return getattr(importlib.import_module(module), attr)(*args, **kwargs)


ENTRY = SpawnTarget(f"{__name__}:worker_main")
"""The ``Process`` target the scheduler starts workers with."""
