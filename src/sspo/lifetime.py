"""Child processes that do not outlive their parent.

``die_with_parent(parent_pid)`` makes the calling process go when ``parent_pid`` does: on Linux
``PR_SET_PDEATHSIG`` SIGKILLs it when the parent's thread that started it ends (so whenever the parent
dies, even by SIGKILL); elsewhere a daemon thread polls ``os.getppid()``. If the parent is already
gone when it is called (it died before the child got here), the child exits at once.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

__all__ = ["die_with_parent"]

PR_SET_PDEATHSIG = 1


def _watch(parent_pid: int, every_s: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(every_s)
    os._exit(1)


def die_with_parent(parent_pid: int, *, poll_s: float = 1.0) -> None:
    """SIGKILL this process when ``parent_pid`` dies, and exit now if it already has."""
    armed = False
    if sys.platform.startswith("linux"):
        try:
            armed = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent_pid:
        os._exit(1)
    if not armed:
        threading.Thread(target=_watch, args=(parent_pid, poll_s), daemon=True, name="die-with-parent").start()
