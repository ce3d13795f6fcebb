"""Timeline: spans per process lane that never overlap, merged across processes, drawn to a PNG."""

import time

import matplotlib.image
import numpy as np
import pytest
from matplotlib.colors import to_rgb

from sspo.trainer.asynchronous import Event, Timeline, span
from sspo.trainer.asynchronous.timeline import COLOURS, set_current


def test_a_nested_span_cuts_the_outer_one():
    t = Timeline(lane="worker0")
    with t.span("generate", step=1):
        time.sleep(0.01)
        with t.span("score", step=1):
            time.sleep(0.01)
        time.sleep(0.01)
    kinds = [(e.kind, e.step) for e in t.events]
    assert kinds == [("generate", 1), ("score", 1), ("generate", 1)]
    ordered = sorted(t.events, key=lambda e: e.start)
    assert all(a.end <= b.start for a, b in zip(ordered, ordered[1:]))  # no second counted twice
    assert all(e.end - e.start >= 0.009 for e in t.events)
    assert t.seconds()["worker0", "generate"] == pytest.approx(0.02, abs=0.015)
    with pytest.raises(ValueError, match="kind 'sleep' is not one of generate, score, update, wait"):
        t.add("sleep", 0.0, 1.0)


def test_module_span_records_only_inside_a_worker():
    with span("score"):  # no current timeline: nothing, no error
        pass
    t = Timeline(lane="worker3")
    set_current(t)
    try:
        with span("score", step=7):
            pass
    finally:
        set_current(None)
    assert [(e.lane, e.kind, e.step) for e in t.events] == [("worker3", "score", 7)]


def test_plot_draws_one_lane_per_process_in_order(tmp_path):
    t = Timeline()
    t0 = 1000.0
    t.add("wait", t0, t0 + 1.0, step=1)
    t.add("update", t0 + 1.0, t0 + 3.0, step=1)
    # another process's events, sent as tuples
    t.extend([("worker10", "generate", t0, t0 + 2.0, 2), ("worker2", "generate", t0 + 0.5, t0 + 1.5, 1),
              ("worker2", "score", t0 + 1.5, t0 + 1.8, 1), Event("worker2", "wait", t0 + 1.8, t0 + 2.5, None)])  # fmt: skip
    assert t.lanes() == ["learner", "worker2", "worker10"]
    path = tmp_path / "plots" / "timeline.png"
    assert t.plot(path) == ["learner", "worker2", "worker10"]
    image = matplotlib.image.imread(path)[..., :3]
    assert image.shape[0] > 100 and image.shape[1] > 500
    for kind in ("generate", "score", "update", "wait"):  # every kind's colour is drawn
        assert (np.abs(image - np.array(to_rgb(COLOURS[kind]))).max(-1) < 0.02).sum() > 20, kind
