"""The learner's weights in shared memory, for the rollout workers: :class:`WeightChannel`.

Rule: a worker never loads a torn mix of two versions. A seqlock guards the buffers. The writer (the
learner, the only one) makes the sequence number odd, copies the weights in, stores their version and
makes the number even again. A reader copies only while the number is even, and keeps the copy only if
the number is unchanged from before the copy to after it; otherwise it copies again. Readers take no
lock, so a worker killed in the middle of a copy cannot block the learner (a lock it held would stay
held forever).

The buffers are allocated once, in shared memory (``share_memory_()``), one flat tensor per dtype.
Handing the channel to a process started with ``spawn`` (as an argument of ``Process``) shares them:
each publish and load is a ``copy_``, with no pickling of the state dict. Tied tensors (an embedding
shared with the LM head) are stored once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

import torch

_fence_lock = threading.Lock()


def _fence() -> None:
    """A full memory barrier (a mutex acquire and release). On x86 the seqlock's stores and loads keep
    their order anyway; on weaker memory models (ARM) this keeps the data copies between the two
    sequence-number accesses."""
    with _fence_lock:
        pass


def _tensors(source) -> Mapping[str, torch.Tensor]:
    """The state dict of a module, or the mapping itself."""
    if isinstance(source, torch.nn.Module):
        return source.state_dict()
    if isinstance(source, Mapping):
        return source
    raise TypeError(f"expected a torch.nn.Module or a mapping of name -> tensor, got {type(source).__name__}")


class WeightChannel:
    """Weights published by the learner with a version number; workers copy them into their model.

    ``version`` is whatever the learner counts: in the trainer, the number of optimizer updates applied
    (the unit of ``async.max_staleness``). Publishes must not go back in version."""

    def __init__(self, source, version: int = 0):
        """Allocate the shared buffers for the tensors of ``source`` (a module or a state dict) and
        publish them as ``version``."""
        state = _tensors(source)
        layout: list[tuple[str, str, int, tuple[int, ...]]] = []  # name, dtype, offset, shape
        alias: dict[str, str] = {}  # a tied tensor's name -> the name it is stored under
        seen: dict[tuple, str] = {}
        sizes: dict[str, int] = {}
        for name, t in state.items():
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"WeightChannel: {name!r} is a {type(t).__name__}, not a tensor")
            key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride()) if t.numel() else None
            if key is not None and key in seen:
                alias[name] = seen[key]
                continue
            if key is not None:
                seen[key] = name
            dtype = str(t.dtype).removeprefix("torch.")
            layout.append((name, dtype, sizes.get(dtype, 0), tuple(t.shape)))
            sizes[dtype] = sizes.get(dtype, 0) + t.numel()
        buffers = {d: torch.zeros(n, dtype=getattr(torch, d)).share_memory_() for d, n in sizes.items()}
        header = torch.tensor([0, -1], dtype=torch.int64).share_memory_()  # [sequence number, version]
        self._setup(buffers, header, layout, alias)
        self.publish(state, version)

    def _setup(self, buffers, header, layout, alias) -> None:
        self._buffers, self._header, self._layout, self._alias = buffers, header, layout, alias
        self._views = {
            name: buffers[dtype][offset : offset + _numel(shape)].view(shape) for name, dtype, offset, shape in layout
        }
        self._names = frozenset(self._views) | frozenset(alias)
        self._write_lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"buffers": self._buffers, "header": self._header, "layout": self._layout, "alias": self._alias}

    def __setstate__(self, state: dict) -> None:
        self._setup(state["buffers"], state["header"], state["layout"], state["alias"])

    @property
    def nbytes(self) -> int:
        """Shared memory the weights take."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def _check_names(self, names, what: str) -> None:
        names = frozenset(names)
        if names != self._names:
            missing, extra = sorted(self._names - names), sorted(names - self._names)
            raise ValueError(f"WeightChannel: {what} does not match the channel's tensors "
                             f"(missing {missing[:5]}, unexpected {extra[:5]})")  # fmt: skip

    # ------------------------------------------------------------------ writer (the learner)
    def publish(self, source, version: int) -> None:
        """Copy the tensors of ``source`` (a module or a state dict: same names and shapes as at
        construction; any device and dtype, cast on copy) into the channel as ``version``."""
        state = _tensors(source)
        self._check_names(state.keys(), "the published state")
        version = int(version)
        with self._write_lock, torch.no_grad():
            if version < int(self._header[1]):
                raise ValueError(f"WeightChannel.publish: version {version} is older than the published {int(self._header[1])}")
            seq = int(self._header[0])
            self._header[0] = seq + 1  # odd: a write is under way
            _fence()
            for name, view in self._views.items():
                view.copy_(state[name])
            self._header[1] = version
            _fence()
            self._header[0] = seq + 2

    # ------------------------------------------------------------------ readers (the workers)
    def _read(self, copy, timeout_s: float):
        """Run ``copy()`` until it ran entirely between two equal, even sequence numbers; returns
        ``(copy's result, version)``."""
        deadline = time.monotonic() + timeout_s
        pause = 0.0
        while True:
            before = int(self._header[0])
            if before % 2 == 0:
                _fence()
                version = int(self._header[1])
                out = copy(version)
                _fence()
                if int(self._header[0]) == before:
                    return out, version
            if time.monotonic() > deadline:
                raise TimeoutError(f"WeightChannel: no consistent read within {timeout_s:g} s (a publish never "
                                   "finished, or publishes came faster than a copy)")  # fmt: skip
            time.sleep(pause)
            pause = min(2 * pause + 1e-5, 1e-3)

    @property
    def version(self) -> int:
        """The version of the weights last published (consistent with them)."""
        return self._read(lambda v: None, timeout_s=60.0)[1]

    def load_into(self, target, current: int | None = None, *, timeout_s: float = 60.0) -> int:
        """Copy the published weights into ``target`` (a module or a state dict of the same names and
        shapes; each tensor keeps its own device and dtype) and return their version. With ``current``
        (the version ``target`` already holds) nothing is copied when that is still the latest."""
        state = _tensors(target)
        self._check_names(state.keys(), "the model to load into")

        def copy(version: int):
            if current is not None and version == current:
                return
            with torch.no_grad():
                for name, tensor in state.items():
                    tensor.copy_(self._views[self._alias.get(name, name)])

        return self._read(copy, timeout_s)[1]

    def state_dict(self, *, timeout_s: float = 60.0) -> tuple[dict[str, torch.Tensor], int]:
        """A consistent copy of the published weights (CPU tensors) and their version."""

        def copy(version: int):
            views = {name: view.clone() for name, view in self._views.items()}
            return {**views, **{name: views[canon] for name, canon in self._alias.items()}}

        return self._read(copy, timeout_s)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
