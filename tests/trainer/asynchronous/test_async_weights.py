"""WeightChannel: shared-memory weights with a version, never read torn (seqlock), across spawn processes."""

import queue
import threading
import time

import pytest
import torch
import torch.multiprocessing as torch_mp
from async_toy import big_state, channel_reader, consistent, set_version, toy_model

from sspo.trainer.asynchronous import SpawnTarget, WeightChannel


def test_publish_load_roundtrip_dtype_cast_and_checks():
    model = toy_model()
    set_version(model, 3)
    channel = WeightChannel(model, version=3)
    assert channel.version == 3 and channel.nbytes == (12 + 3) * 4
    worker_model = toy_model().to(torch.bfloat16)  # a sampler of its own precision: cast on copy
    assert channel.load_into(worker_model) == 3
    assert worker_model.weight.dtype == torch.bfloat16 and (worker_model.weight == 3).all() and (worker_model.bias == -3).all()
    set_version(model, 5)
    channel.publish(model, 5)
    set_version(worker_model, 0)
    assert channel.load_into(worker_model, current=5) == 5 and (worker_model.weight == 0).all()  # current: no copy
    assert channel.load_into(worker_model, current=3) == 5 and (worker_model.weight == 5).all()
    state, version = channel.state_dict()
    assert version == 5 and torch.equal(state["bias"], torch.full((3,), -5.0))
    with pytest.raises(ValueError, match=r"version 4 is older than the published 5"):
        channel.publish(model, 4)
    with pytest.raises(ValueError, match=r"missing \['bias'\]"):
        channel.load_into({"weight": torch.zeros(3, 4)})
    with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
        channel.publish({**model.state_dict(), "extra": torch.zeros(1)}, 6)


def test_tied_tensors_are_stored_once():
    emb = torch.nn.Embedding(10, 4)
    model = torch.nn.Sequential(emb, torch.nn.Linear(4, 10, bias=False))
    model[1].weight = emb.weight  # tied, as an LM head to its embedding
    channel = WeightChannel(model)
    assert channel.nbytes == 40 * 4
    other = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False))
    channel.load_into(other)
    assert torch.equal(other[0].weight, emb.weight) and torch.equal(other[1].weight, emb.weight)


def test_load_retries_while_a_publish_is_under_way():
    channel = WeightChannel(toy_model())
    channel._header[0] += 1  # a publish that never finished: the sequence number stays odd
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="no consistent read within 0.2 s"):
        channel.load_into(toy_model(), timeout_s=0.2)
    assert time.monotonic() - t0 < 2


def _naive_reader(channel: WeightChannel, stop, out) -> None:
    """The control: copy the buffers without the seqlock; put (loads, torn loads) on ``out``."""
    local = big_state(0.0)
    loads = torn = 0
    while not stop.is_set():
        version = int(channel._header[1])
        for name, tensor in local.items():
            tensor.copy_(channel._views[name])
        loads += 1
        torn += not consistent(local, version)
    out.put((loads, torn))


def test_readers_never_see_torn_weights_under_concurrent_publishes():
    """A spawned reader process and a reader thread load while the learner publishes back to back:
    every load holds exactly one version (the checksum), and both readers saw several. A reader
    without the seqlock, beside them, does see torn mixes: the check can fail. Publishing goes on for at
    least 1 s and until each reader has loaded 10 times, so a busy machine only makes it longer."""
    channel = WeightChannel(big_state(0.0), version=0)
    ctx = torch_mp.get_context("spawn")
    reading, stop, out, count = ctx.Event(), ctx.Event(), ctx.Queue(), ctx.Value("i", 0)
    child = ctx.Process(target=SpawnTarget("async_toy:channel_reader"), args=(channel, reading, stop, out, count),
                        daemon=True)  # fmt: skip
    child.start()
    t_reading, t_stop, t_out, n_out = threading.Event(), threading.Event(), queue.Queue(), queue.Queue()
    t_count = ctx.Value("i", 0)
    threads = [threading.Thread(target=channel_reader, args=(channel, t_reading, t_stop, t_out, t_count), daemon=True),
               threading.Thread(target=_naive_reader, args=(channel, t_stop, n_out), daemon=True)]  # fmt: skip
    try:
        version, started = 0, None
        deadline = time.monotonic() + 30

        def reading_long_enough() -> bool:
            return time.monotonic() - started >= 1.0 and count.value >= 10 and t_count.value >= 10

        while time.monotonic() < deadline and (started is None or not reading_long_enough()):
            version += 1
            channel.publish(big_state(float(version)), version)
            if started is None and reading.is_set():  # the child has imported torch and loaded once
                for thread in threads:
                    thread.start()
                started = time.monotonic()
            # back to back, with a pause every 20 publishes: readers can tear (the control) and still finish
            # loads on a busy machine (a seqlock reader retries while publishes overlap its copy)
            time.sleep((0.02 if version % 20 == 0 else 0.0005) if started else 0.01)
        assert started is not None, "the reader process did not load within 30 s"
        stop.set()
        t_stop.set()
        loads, torn, seen, trainer_loaded = out.get(timeout=30)
        t_loads, t_torn, t_seen, _ = t_out.get(timeout=30)
        n_loads, n_torn = n_out.get(timeout=30)
    finally:
        stop.set()
        t_stop.set()
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
            child.join(timeout=5)
    assert torn == 0 and t_torn == 0
    assert loads >= 10 and len(seen) >= 3, (loads, seen[:10])
    assert t_loads >= 10 and len(t_seen) >= 3, (t_loads, t_seen[:10])
    assert child.exitcode == 0 and not trainer_loaded  # SpawnTarget kept the trainer package lazy
    assert n_loads >= 10 and n_torn > 0, (n_loads, n_torn)
