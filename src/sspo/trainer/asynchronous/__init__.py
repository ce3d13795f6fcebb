"""Asynchronous rollouts: rollout worker processes generate and score with weights a few
updates old while the learner updates.

- :mod:`.weights` — :class:`WeightChannel`: the learner's weights in shared memory, versioned, never read torn.
- :mod:`.worker` — the worker process: :class:`WorkerSpec` (what it builds and runs), :class:`WorkerResult`.
- :mod:`.scheduler` — :class:`RolloutScheduler`: starts and replaces workers, hands out steps, enforces
  ``async.max_staleness`` (``on_stale`` ``wait`` or ``drop``), returns batches in step order.
- :mod:`.timeline` — :class:`Timeline` of generate/score/update/wait spans per process, and its plot.
- :mod:`.config` — :class:`AsyncConfig`, the ``async`` section (``workers``, ``max_staleness``,
  ``on_stale``, ``worker_timeout_s``).
"""

from .config import ON_STALE, AsyncConfig, check_async_config
from .scheduler import AsyncBatch, AsyncWorkerError, RolloutScheduler
from .timeline import KINDS, Event, Timeline, plot_timeline, span
from .weights import WeightChannel
from .worker import SpawnTarget, WorkerResult, WorkerSpec

__all__ = [
    "KINDS", "ON_STALE", "AsyncBatch", "AsyncConfig", "AsyncWorkerError", "Event", "RolloutScheduler", "SpawnTarget", "Timeline",
    "WeightChannel", "WorkerResult", "WorkerSpec", "check_async_config", "plot_timeline", "span",
]  # fmt: skip
