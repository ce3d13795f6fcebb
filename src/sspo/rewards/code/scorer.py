"""Execution rewards: run untrusted programs against a problem's tests, in a sandbox, on every core.

``code_reward(completion, tests=..., entry_point=...)`` is 1.0 when the program passes the tests,
else 0.0 (or, with ``partial=True``, the fraction of assertions passed). The program is
``prefix + code``, where ``code`` is the completion's last fenced Python block (or the whole text);
``tests`` is the source of ``check(candidate)``; ``entry_point`` is the expression naming the
candidate (``add``, ``Solution().twoSum``).

:class:`CodeScorer` owns a pool of judge processes (``judge.py``), each with a warm sandbox zygote
(``sandbox.py``) that forks one isolated child per program; ``check`` runs in the trusted judge and
calls into the child through a proxy. Design, threat model and measured throughput:
``docs/code_tasks.md``.
"""

from __future__ import annotations

import ast
import functools
import json
import math
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sspo.rewards.code.extract import extract_code

CODE_STATUSES = ("passed", "failed", "timeout", "crashed", "syntax_error", "sandbox_error")
"""Every outcome a program can have. ``sandbox_error`` is the scorer's fault (infrastructure, or
tests that cannot run), never the program's; all others are the program's."""
CODE_METRIC_KEYS = ("reward/mean", *(f"reward/{status}_frac" for status in CODE_STATUSES), "reward/seconds_mean")
JUDGE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "judge.py")
REPLY_GRACE_S = 15.0
"""A judge that has not answered ``timeout`` + this many seconds after a request is killed."""
MIN_MEMORY_MARGIN_MB = 64
"""``memory_mb`` must leave at least this much above what the sandboxed interpreter already maps."""

_warned: set[str] = set()
_warn_lock = threading.Lock()


@dataclass(frozen=True)
class CodeGrade:
    """The outcome of running one program against its tests."""

    score: float
    """1.0 passed, 0.0 otherwise; with ``partial`` the fraction of assertions passed."""
    status: str
    """One of :data:`CODE_STATUSES`."""
    detail: str = ""
    """A short human-readable reason (the failing test line, the signal, ...)."""
    seconds: float = 0.0
    """Wall time from the request reaching the judge to its verdict."""


def code_metrics(grades: Sequence[CodeGrade]) -> dict[str, float]:
    """Mean reward, the fraction of each status and the mean seconds (keys :data:`CODE_METRIC_KEYS`)."""
    n = max(len(grades), 1)
    metrics = {"reward/mean": sum(g.score for g in grades) / n}
    for status in CODE_STATUSES:
        metrics[f"reward/{status}_frac"] = sum(g.status == status for g in grades) / n
    metrics["reward/seconds_mean"] = sum(g.seconds for g in grades) / n
    return metrics


# --- validating the caller's arguments (ValueError) ----------------------------------------------


@functools.lru_cache(maxsize=4096)
def _check_tests(tests: str) -> None:
    try:
        tree = ast.parse(tests, "<tests>")
    except (SyntaxError, ValueError) as exc:
        raise ValueError(f"tests do not compile: {exc}") from None
    if not any(isinstance(node, ast.FunctionDef) and node.name == "check" for node in tree.body):
        raise ValueError("tests must define a top-level function check(candidate)")


@functools.lru_cache(maxsize=4096)
def _check_entry_point(entry_point: str) -> None:
    """A name, attribute access and argument-free calls only: ``add``, ``Solution().twoSum``."""
    try:
        node = ast.parse(entry_point.strip(), mode="eval").body
    except SyntaxError:
        raise ValueError(f"entry_point is not an expression: {entry_point!r}") from None
    while True:
        if isinstance(node, ast.Name):
            return
        if isinstance(node, ast.Attribute):
            node = node.value
        elif isinstance(node, ast.Call) and not node.args and not node.keywords:
            node = node.func
        else:
            raise ValueError(f"entry_point must be a name like 'add' or 'Solution().twoSum', got {entry_point!r}")


def _field(problem, name: str, default=None):
    if isinstance(problem, Mapping):
        value = problem.get(name, default)
    else:
        value = getattr(problem, name, default)
    if value is None and default is None:
        raise ValueError(f"problem has no {name!r} (a problem needs tests, entry_point and optionally prefix)")
    return value


def _problem_fields(problem) -> tuple[str, str, str]:
    """(tests, entry_point, prefix) of a mapping or object; ValueError when one is missing or bad."""
    tests, entry_point = _field(problem, "tests"), _field(problem, "entry_point")
    prefix = _field(problem, "prefix", "") or ""
    for name, value in (("tests", tests), ("entry_point", entry_point), ("prefix", prefix)):
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a str, got {type(value).__name__}")
    _check_tests(tests)
    _check_entry_point(entry_point)
    return tests, entry_point, prefix


def _check_options(timeout, memory_mb, partial) -> None:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (0 < timeout <= 3600):
        raise ValueError(f"timeout must be a number of seconds in (0, 3600], got {timeout!r}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 64:
        raise ValueError(f"memory_mb must be an int >= 64, got {memory_mb!r}")
    if not isinstance(partial, bool):
        raise ValueError(f"partial must be a bool, got {partial!r}")


def program_text(completion: str, prefix: str = "") -> str:
    """``prefix + code``: the code of :func:`extract_code`, after a newline if ``prefix`` lacks one."""
    code = extract_code(completion)
    if prefix and not prefix.endswith("\n"):
        prefix += "\n"
    return prefix + code


# --- one judge process ---------------------------------------------------------------------------


class _Judge:
    """A ``judge.py`` process: started lazily, killed (with its sandbox) when it misbehaves."""

    def __init__(self, isolation: str, startup_timeout: float):
        self.isolation, self.startup_timeout = isolation, startup_timeout
        self.process: subprocess.Popen | None = None
        self.info: dict = {}
        self._buffer = b""

    def start(self) -> dict:
        if self.process is not None:
            return self.info
        env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"), "LC_ALL": "C.UTF-8"}
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-B", JUDGE_SCRIPT, self.isolation],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
            start_new_session=True,  # its own process group: killing it takes its sandbox along
        )
        self._buffer = b""
        try:
            reply = self._read(self.startup_timeout)
        except (OSError, ValueError) as exc:
            reply = {"message": str(exc)}
        if not isinstance(reply, dict) or not reply.get("ready"):
            self.kill()
            why = reply.get("message") if isinstance(reply, dict) else "it did not start"
            raise RuntimeError(f"code sandbox could not start (isolation={self.isolation!r}): {why}")
        self.info = reply
        return reply

    def run(self, request: dict, wait_s: float) -> dict:
        try:
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
            reply = self._read(wait_s)
        except (OSError, ValueError) as exc:
            reply = f"the judge process failed ({exc})"
        if isinstance(reply, dict) and reply.get("status") in CODE_STATUSES:
            return reply
        self.kill()
        detail = "the judge did not answer in time; it was killed" if reply is None else str(reply)
        return {"status": "sandbox_error", "score": 0.0, "detail": detail, "seconds": wait_s}

    def _read(self, timeout: float):
        """Next JSON line, ``None`` after ``timeout`` s; ``OSError`` when the judge died."""
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise OSError("the judge process exited")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def kill(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except OSError:
            pass
        _reap(process)

    def hang_up(self) -> None:
        """Close the judge's stdin: it stops its sandbox and exits."""
        if self.process is not None:
            try:
                self.process.stdin.close()
            except OSError:
                pass

    def close(self) -> None:
        self.hang_up()
        process, self.process = self.process, None
        if process is None:
            return
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # whatever is left of its process group
        except OSError:
            pass
        _reap(process)


def _reap(process: subprocess.Popen) -> None:
    for stream in (process.stdin, process.stdout):
        try:
            stream.close()
        except OSError:
            pass
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _close_all(judges: list[_Judge]) -> None:
    for judge in judges:  # all hang up first, so that they shut down in parallel
        judge.hang_up()
    for judge in judges:
        judge.close()


def _warn_once(missing: list[str]) -> None:
    message = (
        "code sandbox: running without " + "; ".join(missing) + ". The other layers stay on; "
        "see docs/code_tasks.md for what this leaves undefended."
    )
    with _warn_lock:
        if message in _warned:
            return
        _warned.add(message)
    warnings.warn(message, RuntimeWarning, stacklevel=4)


# --- the scorer ----------------------------------------------------------------------------------


class CodeScorer:
    """Scores programs against tests in sandboxed judges, ``workers`` programs at a time.

    ``workers`` defaults to two per usable core; each is a judge process with two warm zygotes,
    started on first use (or by :meth:`warmup`).

    A *problem* is any mapping or object with ``tests`` (the source of ``check(candidate)``),
    ``entry_point`` (an expression such as ``add`` or ``Solution().twoSum``) and optionally
    ``prefix`` (trusted text put before the program, e.g. HumanEval's prompt or LeetCode's imports
    and ``ListNode`` helpers; the judge runs ``prefix + tests`` too).

    ``timeout`` bounds each program's wall time (start-up, import and every call together),
    ``memory_mb`` its address space (the interpreter's own mappings included), ``partial`` switches
    to the fraction of assertions passed. ``max_processes`` caps processes and threads of the
    sandbox user, ``tmp_mb`` the program's private ``/tmp`` (its working directory) and largest
    file. ``isolation="auto"`` uses every layer the machine allows (warning once about any it
    lacks); ``"process"`` skips namespaces. Thread-safe; use as a context manager or :meth:`close`.
    Programs larger than ``max_program_bytes`` fail without running.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        timeout: float = 5.0,
        memory_mb: int = 1024,
        partial: bool = False,
        max_processes: int = 16,
        tmp_mb: int = 64,
        max_program_bytes: int = 1 << 20,
        isolation: str = "auto",
        startup_timeout: float = 60.0,
    ):
        if workers is None:  # two per core: while one waits on its program, the other runs
            workers = 2 * (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1, got {workers!r}")
        _check_options(timeout, memory_mb, partial)
        for name, value in (("max_processes", max_processes), ("tmp_mb", tmp_mb), ("max_program_bytes", max_program_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if isolation not in ("auto", "process"):
            raise ValueError(f"isolation must be 'auto' or 'process', got {isolation!r}")
        if not hasattr(os, "fork") or sys.platform != "linux":
            raise RuntimeError("code execution rewards need Linux (fork, namespaces, rlimits)")
        self.workers, self.timeout, self.memory_mb, self.partial = workers, float(timeout), memory_mb, partial
        self.max_processes, self.tmp_mb, self.max_program_bytes = max_processes, tmp_mb, max_program_bytes
        self._judges = [_Judge(isolation, startup_timeout) for _ in range(workers)]
        self._idle: queue.Queue[_Judge] = queue.Queue()
        for judge in self._judges:
            self._idle.put(judge)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sspo-code")
        self._closed = False
        self.layers: dict = {}
        """Isolation layers in effect (from the first judge that started): ``mode``,
        ``pid_namespace``, ``network_namespace``, ``private_filesystem``, ``unprivileged_uid``,
        ``capabilities_dropped``; empty until then."""
        self.missing_layers: list[str] = []
        """What the sandbox runs without, with the reason (also warned about, once)."""
        self._finalizer = weakref.finalize(self, _close_all, list(self._judges))

    # -- public API --

    def grade(self, completion: str, problem, **options) -> CodeGrade:
        """Run one completion against one problem (options: ``timeout``, ``memory_mb``, ``partial``)."""
        return self._run(self._request(completion, problem, **options))

    def score(self, completion: str, problem, **options) -> float:
        """The reward of one completion (see :meth:`grade`)."""
        return self.grade(completion, problem, **options).score

    def grade_batch(self, completions: Sequence[str], problems: Sequence, **options) -> list[CodeGrade]:
        """Grade completion ``i`` against problem ``i``, ``workers`` at a time, in order."""
        if len(completions) != len(problems):
            raise ValueError(f"completions and problems differ in length: {len(completions)} != {len(problems)}")
        requests = [self._request(c, p, **options) for c, p in zip(completions, problems)]
        if len(requests) <= 1:
            return [self._run(r) for r in requests]
        return list(self._pool.map(self._run, requests))

    def score_batch(self, completions: Sequence[str], problems: Sequence, **options) -> list[float]:
        """Rewards of a batch, in order (see :meth:`grade_batch`)."""
        return [g.score for g in self.grade_batch(completions, problems, **options)]

    metrics = staticmethod(code_metrics)

    def warmup(self) -> None:
        """Start every judge and sandbox now (about half a second each, in parallel)."""
        judges = [self._idle.get() for _ in self._judges]
        try:
            list(self._pool.map(self._start, judges))
        finally:
            for judge in judges:
                self._idle.put(judge)

    def close(self) -> None:
        """Stop every judge and sandbox (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True)
        self._finalizer()

    def __enter__(self) -> CodeScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals --

    def _request(self, completion: str, problem, *, timeout=None, memory_mb=None, partial=None) -> dict:
        if self._closed:
            raise RuntimeError("CodeScorer is closed")
        timeout = self.timeout if timeout is None else timeout
        memory_mb = self.memory_mb if memory_mb is None else memory_mb
        partial = self.partial if partial is None else partial
        _check_options(timeout, memory_mb, partial)
        tests, entry_point, prefix = _problem_fields(problem)
        return {
            "program": program_text(completion, prefix),
            "tests": tests,
            "prefix": prefix,
            "entry_point": entry_point.strip(),
            "timeout": float(timeout),
            "memory_mb": memory_mb,
            "partial": partial,
            "tmp_mb": self.tmp_mb,
            "max_processes": self.max_processes,
        }

    def _start(self, judge: _Judge) -> dict:
        info = judge.start()
        if not self.layers:
            self.layers, self.missing_layers = dict(info.get("layers", {})), list(info.get("missing", []))
            if self.missing_layers:
                _warn_once(self.missing_layers)
        return info

    def _run(self, request: dict) -> CodeGrade:
        if len(request["program"].encode("utf-8", "surrogatepass")) > self.max_program_bytes:
            return CodeGrade(0.0, "failed", f"program larger than {self.max_program_bytes} bytes; not run")
        judge = self._idle.get()
        try:
            try:
                info = self._start(judge)
            except (OSError, RuntimeError) as exc:
                return CodeGrade(0.0, "sandbox_error", str(exc)[:1000])
            floor = math.ceil(info.get("vm_kb", 0) / 1024) + MIN_MEMORY_MARGIN_MB
            if request["memory_mb"] < floor:
                raise ValueError(
                    f"memory_mb={request['memory_mb']} leaves no room: the sandboxed interpreter already maps "
                    f"{info.get('vm_kb', 0) // 1024} MiB; use at least {floor}"
                )
            reply = judge.run(request, request["timeout"] + REPLY_GRACE_S)
        finally:
            self._idle.put(judge)
        return CodeGrade(float(reply["score"]), reply["status"], str(reply.get("detail", "")), float(reply.get("seconds", 0.0)))


_shared: CodeScorer | None = None
_shared_lock = threading.Lock()


def _shared_scorer() -> CodeScorer:
    global _shared
    with _shared_lock:
        if _shared is None or _shared._closed:
            _shared = CodeScorer()
        return _shared


def code_reward(
    completion: str,
    *,
    tests: str,
    entry_point: str,
    prefix: str = "",
    timeout: float = 5.0,
    memory_mb: int = 1024,
    partial: bool = False,
) -> float:
    """1.0 if ``prefix + code`` passes ``check(candidate)`` in ``tests``, else 0.0.

    ``code`` is the last fenced Python block of ``completion`` (or all of it); ``entry_point`` names
    the candidate (``add``, ``Solution().twoSum``); ``partial=True`` returns the fraction of
    assertions passed instead. A bad argument is a ``ValueError``; anything the program does is a
    score. Runs in a process-wide :class:`CodeScorer` (judges start on first use).

    >>> code_reward("```python\\ndef add(a, b):\\n    return a + b\\n```",
    ...             tests="def check(candidate):\\n    assert candidate(2, 3) == 5\\n", entry_point="add")
    1.0
    """
    problem = {"tests": tests, "entry_point": entry_point, "prefix": prefix}
    return _shared_scorer().score(completion, problem, timeout=timeout, memory_mb=memory_mb, partial=partial)
