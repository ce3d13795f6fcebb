"""A toy policy for the asynchronous-rollout tests, and process checks.

The policy is an ``nn.Linear(4, 3)`` whose weights are all ``v`` and biases ``-v`` at version ``v``, so
a batch tells which weights generated it. Worker processes import this module by name (``spawn``
hands them the test process's ``sys.path``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from sspo.trainer.asynchronous import span


def toy_model() -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3)


def set_version(model: torch.nn.Module, version: int) -> None:
    with torch.no_grad():
        model.weight.fill_(float(version))
        model.bias.fill_(-float(version))


def version_of(model: torch.nn.Module) -> float:
    return float(model.weight[0, 0].detach())


def toy_rollout(model, step: int, *, delays: dict | None = None, hang: tuple = (), hang_once: bool = False,
                fail: tuple = (), marker_dir: str | None = None) -> dict:  # fmt: skip
    """The batch of ``step``: the model's outputs on inputs seeded by the step. ``marker_dir`` gets a
    file ``start-<step>`` (``"<pid> <weights version>"``) when the step's first attempt starts; a step
    in ``hang`` then sleeps for an hour (only on its first attempt with ``hang_once``); one in ``fail``
    raises."""
    first = True
    if marker_dir is not None:
        try:
            with open(Path(marker_dir) / f"start-{step}", "x") as f:
                f.write(f"{os.getpid()} {version_of(model)}")
        except FileExistsError:
            first = False
    if step in fail:
        raise ValueError(f"toy failure at step {step}")
    if step in hang and (first or not hang_once):
        time.sleep(3600)
    time.sleep((delays or {}).get(step, 0.0))
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(step))
    out = model(x)
    with span("score", step=step):
        reward = out.sum(-1)
    return {"step": step, "weights_version": version_of(model), "out": out, "reward": reward, "pid": os.getpid()}


def dying_model():
    """A model factory whose process dies at once, as from a segfault or the OOM killer."""
    os._exit(3)


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def still_running(pids, timeout_s: float = 10.0) -> list[int]:
    """The processes of ``pids`` still running after up to ``timeout_s`` of waiting for them to end."""
    deadline = time.monotonic() + timeout_s
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def wait_for_file(path: Path, timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    while not (path.exists() and (text := path.read_text())):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s} s")
        time.sleep(0.02)
    return text


BIG = 1 << 20
"""Floats per tensor of :func:`big_state`: a copy is long enough for torn reads to be likely without the seqlock."""


def big_state(v: float) -> dict:
    return {"a": torch.full((BIG,), v), "b": torch.full((BIG // 2, 2), -v), "n": torch.tensor(int(v))}


def consistent(state: dict, version: int) -> bool:
    """The checksum: every value of every tensor says the same version, the one the load returned."""
    a, b, n = state["a"], state["b"], state["n"]
    return bool((a == version).all() and (b == -version).all() and int(n) == version)


def channel_reader(channel, reading, stop, out, count=None) -> None:
    """Load ``channel`` into a local state over and over until ``stop`` (``reading`` is set after the
    first load; ``count``, a shared integer, counts the loads as they happen); put ``(loads, torn loads,
    versions seen, whether the trainer's loop was imported)`` on ``out`` (started with ``SpawnTarget``,
    the ``sspo.trainer`` package stays lazy)."""
    import sys

    local = big_state(0.0)
    loads, torn, seen = 0, 0, set()
    while not stop.is_set() or loads == 0:
        version = channel.load_into(local, timeout_s=20)
        loads += 1
        seen.add(version)
        torn += not consistent(local, version)
        if count is not None:
            count.value = loads
        reading.set()
    out.put((loads, torn, sorted(seen), "sspo.trainer.loop" in sys.modules))


def sigkill_learner(out) -> None:
    """A learner process (started with ``SpawnTarget``) whose worker hangs in step 2: it sends the
    worker's pid on ``out`` once step 1 is in, then sleeps until it is killed."""
    from functools import partial

    from sspo.trainer.asynchronous import RolloutScheduler, WeightChannel, WorkerSpec

    spec = WorkerSpec(toy_model, partial(toy_rollout, hang=(2,)), torch_threads=1)
    with RolloutScheduler(spec, WeightChannel(toy_model()), workers=1, max_staleness=1, startup_timeout_s=60,
                          log=lambda message: None) as rollouts:  # fmt: skip
        rollouts.get(1)
        out.send(rollouts.pids)
        time.sleep(60)
