"""Symbolic comparison with ``math-verify`` in killable worker processes.

Anything that is not a plain number (LaTeX, intervals, radicals, expressions) goes through
:class:`SymbolicVerifier`: a fixed set of worker subprocesses (``python -m sspo.rewards._worker``,
started with ``subprocess`` so that it is safe from any thread and never re-runs the caller's
``__main__``), each serving one request at a time. A request that overruns its timeout gets its
worker killed (``SIGKILL``) and a fresh one started in the background; the caller sees
``"timeout"``. When math-verify itself raises, or its worker dies mid-comparison, the status is
``"error"`` (a verifier fault, kept apart from ``"parse_fail"`` so that it cannot pass silently for
unparseable answers; :attr:`SymbolicVerifier.last_error` holds the message). Before a request is sent, :func:`is_safe_expression` refuses inputs that are known
to blow up sympy (power towers, huge factorials, deep nesting, very long strings).

Worker start-up (about one second: importing sympy) is not part of the per-request timeout; it has
its own ``startup_timeout``. Call :meth:`SymbolicVerifier.warmup` to pay it up front.
"""

from __future__ import annotations

import json
import os
import queue
import re
import select
import subprocess
import sys
import threading
import time
import weakref

import sspo

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(sspo.__file__)))

STATUSES = ("correct", "wrong", "parse_fail", "timeout", "error")
"""Every outcome a comparison can have (``error``: the verifier failed, not the answer)."""
MAX_SYMBOLIC_CHARS = 500
"""Longest answer sent to math-verify."""
MAX_NESTING = 24
"""Deepest ``{}``/``()``/``[]`` nesting sent to math-verify."""
MAX_FACTORIAL = 1000
MAX_EXPONENT_DIGITS = 4

_FACTORIAL_RE = re.compile(r"(?<!\\)!")
_POWER_RE = re.compile(r"\^|\*\*")


def is_safe_expression(text: str) -> bool:
    """Whether ``text`` is small and tame enough to hand to sympy (pure Python, bounded work)."""
    if not text or len(text) > MAX_SYMBOLIC_CHARS:
        return False
    if any(ord(c) < 32 and c not in "\t\n" or 0xD800 <= ord(c) <= 0xDFFF for c in text):
        return False
    depth = 0
    for char in text:
        if char in "{([":
            depth += 1
            if depth > MAX_NESTING:
                return False
        elif char in "})]":
            depth -= 1
    return _factorials_ok(text) and _powers_ok(text)


def _factorials_ok(text: str) -> bool:
    for match in _FACTORIAL_RE.finditer(text):
        before = text[: match.start()].rstrip()
        digits = re.search(r"\d+$", before)
        if digits:
            if len(digits.group()) > 4 or int(digits.group()) > MAX_FACTORIAL:
                return False
        elif before.endswith((")", "}", "]")):
            return False
    return True


def _powers_ok(text: str) -> bool:
    for match in _POWER_RE.finditer(text):
        exponent, end = _next_token(text, match.end())
        if "^" in exponent or "**" in exponent or "!" in exponent:
            return False
        if any(len(d) > MAX_EXPONENT_DIGITS for d in re.findall(r"\d+", exponent)):
            return False
        if _POWER_RE.match(text, end):
            return False  # a^b^c: a tower
    return True


def _next_token(text: str, pos: int) -> tuple[str, int]:
    """The exponent starting at ``pos``: a braced group, a command, a number or one character."""
    while pos < len(text) and text[pos] == " ":
        pos += 1
    if pos >= len(text):
        return "", pos
    if text[pos] in "{(":
        close = "}" if text[pos] == "{" else ")"
        depth = 0
        for i in range(pos, len(text)):
            if text[i] in "{(":
                depth += 1
            elif text[i] in "})":
                depth -= 1
                if depth == 0 and text[i] == close:
                    return text[pos : i + 1], i + 1
        return text[pos:], len(text)
    match = re.compile(r"\\[A-Za-z]+|[-+]?\d+(?:\.\d+)?|.").match(text, pos)
    return match.group(), match.end()


class _Worker:
    """One killable worker process (``python -m sspo.rewards._worker``); one thread at a time."""

    def __init__(self, startup_timeout: float):
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen | None = None
        self._buffer = b""
        self._ready = False

    def start(self) -> None:
        """Start the process if none is running (does not wait for it to be ready)."""
        if self._process is not None:
            return
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (_PACKAGE_ROOT, env.get("PYTHONPATH"))))
        self._process = subprocess.Popen(
            [sys.executable, "-m", "sspo.rewards._worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
        )
        self._buffer, self._ready = b"", False

    def wait_ready(self) -> None:
        self.start()
        if self._ready:
            return
        try:
            message = self._read_line(self._startup_timeout)
        except OSError as exc:
            self.kill()
            raise RuntimeError("math-verify worker died while starting") from exc
        if message is None:
            self.kill()
            raise RuntimeError(f"math-verify worker did not start within {self._startup_timeout} s")
        if not (isinstance(message, list) and message and message[0] == "ready"):
            self.kill()
            raise RuntimeError(f"math-verify worker could not start: {message}")
        self._ready = True

    def compare(self, gold: str, pred: str, timeout: float) -> tuple[str, str | None]:
        """``(status, error message or None)``."""
        self.wait_ready()
        try:
            self._process.stdin.write((json.dumps([gold, pred]) + "\n").encode())
            self._process.stdin.flush()
            reply = self._read_line(timeout)
        except (OSError, ValueError) as exc:
            reply = exc
        if isinstance(reply, str) and reply in STATUSES:
            return reply, None
        if isinstance(reply, list) and len(reply) == 2 and reply[0] == "error":
            return "error", str(reply[1])  # math-verify raised; the worker itself is fine
        self.kill()
        self.start()  # the replacement imports sympy while the caller moves on
        if reply is None:
            return "timeout", None
        return "error", f"math-verify worker failed during a comparison ({reply!r})"  # e.g. out of memory

    def _read_line(self, timeout: float):
        """Next JSON line from the worker, ``None`` after ``timeout`` s; ``OSError`` if it died."""
        deadline = time.monotonic() + timeout
        fd = self._process.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise OSError("math-verify worker exited")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def kill(self) -> None:
        process, self._process = self._process, None
        self._ready, self._buffer = False, b""
        if process is None:
            return
        process.kill()
        process.wait(timeout=5)
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def stop(self) -> None:
        self.kill()


class SymbolicVerifier:
    """A pool of ``workers`` math-verify processes, started lazily, shared safely between threads."""

    def __init__(self, workers: int = 2, *, startup_timeout: float = 60.0):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self._all = [_Worker(startup_timeout) for _ in range(workers)]
        self._free: queue.Queue[_Worker] = queue.Queue()
        for worker in self._all:
            self._free.put(worker)
        self._closed = False
        self.last_error: str | None = None
        """The message of the latest ``error`` outcome (math-verify raised or its worker died)."""
        self._finalizer = weakref.finalize(self, _stop_all, list(self._all))

    def compare(self, gold: str, pred: str, *, timeout: float = 1.0, guard: bool = True) -> str:
        """Compare ``pred`` with ``gold``; returns one of :data:`STATUSES`. Blocks for a free worker.

        ``guard=False`` skips :func:`is_safe_expression` (only to exercise the timeout in tests).
        """
        if self._closed:
            raise RuntimeError("SymbolicVerifier is closed")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if guard and not (is_safe_expression(gold) and is_safe_expression(pred)):
            return "parse_fail"
        worker = self._free.get()
        try:
            status, message = worker.compare(gold, pred, timeout)
        finally:
            self._free.put(worker)
        if message is not None:
            self.last_error = message
        return status

    def warmup(self) -> None:
        """Start every worker now and wait until all have imported math-verify."""
        taken = [self._free.get() for _ in self._all]
        errors: list[BaseException] = []

        def ready(worker: _Worker) -> None:
            try:
                worker.wait_ready()
            except RuntimeError as exc:
                errors.append(exc)

        try:
            for worker in taken:
                worker.start()
            threads = [threading.Thread(target=ready, args=(worker,)) for worker in taken]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            for worker in taken:
                self._free.put(worker)
        if errors:
            raise errors[0]

    def close(self) -> None:
        """Stop the worker processes (also done automatically at interpreter exit)."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> SymbolicVerifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _stop_all(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.stop()
