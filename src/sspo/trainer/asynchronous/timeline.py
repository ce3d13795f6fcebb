"""Who did what, when, across the learner and the rollout workers: :class:`Timeline` and its plot.

An event is ``(lane, kind, start, end, step)``: ``lane`` is a process (``learner``, ``worker0``, ...),
``kind`` one of :data:`KINDS`, the times wall-clock seconds (``time.time()``, comparable across
processes). Rule: the spans of a lane never overlap. A span opened inside another on the same lane
(``score`` inside a worker's ``generate``) cuts the outer one, which resumes when it closes, so each
second of a lane is counted once.

A rollout function marks its own phases with the module-level :func:`span` (``with span("score"):``);
it records on the worker's timeline and does nothing outside a worker.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import NamedTuple

KINDS = ("generate", "score", "update", "wait")
COLOURS = {"generate": "tab:blue", "score": "tab:orange", "update": "tab:green", "wait": "0.82"}


class Event(NamedTuple):
    lane: str
    kind: str
    start: float
    end: float
    step: int | None = None


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"timeline: kind {kind!r} is not one of {', '.join(KINDS)}")


class Timeline:
    """Events of one or more lanes; ``lane`` is the default lane of :meth:`span` and :meth:`add`."""

    def __init__(self, lane: str = "learner"):
        self.lane = lane
        self.events: list[Event] = []
        self._open: list[list] = []  # stack of [kind, step, lane, start of the current piece]

    def add(self, kind: str, start: float, end: float, *, step: int | None = None, lane: str | None = None) -> None:
        """Record a span that already happened (nothing if it is empty)."""
        _check_kind(kind)
        if end > start:
            self.events.append(Event(lane or self.lane, kind, float(start), float(end), step))

    @contextmanager
    def span(self, kind: str, *, step: int | None = None, lane: str | None = None) -> Iterator[None]:
        """Record the enclosed block as a ``kind`` span (cutting an enclosing span of the same lane)."""
        _check_kind(kind)
        lane = lane or self.lane
        now = time.time()
        outer = self._open[-1] if self._open else None
        if outer is not None and outer[2] == lane:
            self.add(outer[0], outer[3], now, step=outer[1], lane=lane)
        self._open.append([kind, step, lane, now])
        try:
            yield
        finally:
            end = time.time()
            kind, step, lane, start = self._open.pop()
            self.add(kind, start, end, step=step, lane=lane)
            if outer is not None and outer[2] == lane:
                outer[3] = end

    def extend(self, events: Iterable) -> None:
        """Add events recorded elsewhere (another process's, sent as tuples)."""
        for e in events:
            e = Event(*e)
            self.add(e.kind, e.start, e.end, step=e.step, lane=e.lane)

    def drain(self) -> list[Event]:
        """The recorded events, which are removed (a worker sends them with each result)."""
        out, self.events = self.events, []
        return out

    def lanes(self) -> list[str]:
        """Lanes in drawing order: ``learner`` first, then the others in natural order (worker2 < worker10)."""
        return sorted({e.lane for e in self.events}, key=_lane_key)

    def seconds(self) -> dict[tuple[str, str], float]:
        """Total seconds per ``(lane, kind)``."""
        out: dict[tuple[str, str], float] = {}
        for e in self.events:
            out[e.lane, e.kind] = out.get((e.lane, e.kind), 0.0) + e.end - e.start
        return out

    def plot(self, path: str | Path, *, title: str | None = None) -> list[str]:
        """:func:`plot_timeline` of these events."""
        return plot_timeline(self.events, path, title=title)


def _lane_key(lane: str):
    return (lane != "learner", [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", lane)])


def plot_timeline(events: Iterable, path: str | Path, *, title: str | None = None) -> list[str]:
    """Draw one lane per process, a coloured span per event over wall time (seconds from the first
    event), to the PNG ``path``. Returns the lanes, top to bottom."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    events = [Event(*e) for e in events]
    lanes = sorted({e.lane for e in events}, key=_lane_key)
    t0 = min((e.start for e in events), default=0.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(11, 0.55 * max(len(lanes), 1) + 1.4), constrained_layout=True)
    for row, lane in enumerate(lanes):
        for kind in KINDS:
            spans = [(e.start - t0, e.end - e.start) for e in events if e.lane == lane and e.kind == kind]
            if spans:
                ax.broken_barh(spans, (row - 0.4, 0.8), facecolors=COLOURS[kind], edgecolor="none")
    ax.set_yticks(range(len(lanes)), lanes)
    ax.set_ylim(len(lanes) - 0.5, -0.5)  # the learner on top
    ax.set_xlabel("wall time (s)")
    present = [k for k in KINDS if any(e.kind == k for e in events)]
    ax.legend(handles=[Patch(color=COLOURS[k], label=k) for k in present], loc="upper left",
              bbox_to_anchor=(1.005, 1.0), fontsize="small", frameon=False)  # fmt: skip
    ax.set_title(title or "asynchronous rollouts: timeline")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return lanes


_current: Timeline | None = None


def set_current(timeline: Timeline | None) -> None:
    """Make ``timeline`` the one :func:`span` records on (a worker sets its own)."""
    global _current
    _current = timeline


def span(kind: str, *, step: int | None = None):
    """``with span("score"):`` records the block on this process's timeline (a no-op outside a worker)."""
    _check_kind(kind)
    return nullcontext() if _current is None else _current.span(kind, step=step)
