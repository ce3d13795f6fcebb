"""The ``async`` section of the trainer's configuration: :class:`AsyncConfig` and its checks.

(``async`` is a Python keyword: the trainer's config holds this dataclass under another attribute name
and maps the section name to it.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ON_STALE = ("wait", "drop")


@dataclass
class AsyncConfig:
    workers: int = 0
    """Rollout worker processes that generate and score with weights a few updates old while the learner
    updates (0: the synchronous trainer)."""
    max_staleness: int = 2
    """Largest number of optimizer updates between the weights a sample was generated with and the weights
    it is trained on, counted at the first update that uses it (the unit of ``update.staleness``). 0 with
    ``on_stale=wait`` is the synchronous sequence: every batch comes from the latest weights."""
    on_stale: str = "wait"
    """``wait``: a worker is held back until weights fresh enough for its step are published, so no batch
    is ever over-stale; ``drop``: workers never wait, and a batch over ``max_staleness`` when the learner
    takes it is discarded (counted in ``async/dropped``) and generated again."""
    worker_timeout_s: float = 1800.0
    """Longest the learner waits for a step's batch (and for a worker to start) before it stops with an
    error naming this field: a hung worker never stalls the run forever. Must exceed one step's rollout."""


def check_async_config(config: AsyncConfig, prefix: str = "async") -> None:
    """Raise ``ConfigError`` naming the first bad field (``async.max_staleness: must be >= 0, got -1``)."""
    from ..config import ConfigError  # local: the trainer's config may import this module

    def require(ok: bool, name: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"{prefix}.{name}: {message}")

    def count(x) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and x >= 0

    c = config
    require(count(c.workers), "workers", f"must be an int >= 0, got {c.workers!r}")
    require(count(c.max_staleness), "max_staleness",
            f"must be an int >= 0, got {c.max_staleness!r}")  # fmt: skip
    require(c.on_stale in ON_STALE, "on_stale", f"{c.on_stale!r} is not one of {', '.join(ON_STALE)}")
    t = c.worker_timeout_s
    require(isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t) and t > 0, "worker_timeout_s",
            f"must be a finite number > 0, got {t!r}")  # fmt: skip
