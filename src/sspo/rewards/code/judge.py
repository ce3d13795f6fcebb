"""The judge: runs a problem's trusted ``check`` with a proxy that calls into the sandboxed program.

One judge process per scorer worker, started as a plain script (``python -I -B judge.py``) so that
it imports neither ``sspo`` nor ``torch``. Requests and replies are JSON lines on stdin/stdout,
between trusted parties. For each request the judge

1. compiles ``prefix + tests`` (trusted dataset text, cached; with ``partial`` every ``assert`` is
   rewritten to record its outcome and go on);
2. asks its zygote (``sandbox.py``) for an isolated child running the program, over a fresh socket
   pair, and waits for the child's ``setup`` and ``ready`` messages;
3. runs ``check(candidate)`` here, where ``candidate`` is a :class:`Candidate`: each call sends the
   arguments as plain data, waits (until the program's deadline) for one reply, decodes it with the
   strict codec and rebuilds ``ListNode``/``TreeNode`` with the trusted namespace's own classes;
4. has the zygote kill the child (and its whole PID namespace) and reports status, score, detail.

The program never sees the tests, the expected values or this process's memory: the zygote it is
forked from receives only program text, and the check runs here. What it sends is plain data,
compared by the check's own code; a timeout, a crash, a malformed or oversized reply is a failure.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

if __package__:
    from . import codec, sandbox
else:  # run as a script by the judge or the scorer: load the siblings as plain files, not sspo
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, _here)
    import codec  # noqa: E402
    import sandbox  # noqa: E402

    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]

SANDBOX_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox.py")
ZYGOTE_ENV = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "LC_ALL": "C.UTF-8",
    "PYTHONHASHSEED": "0",
}
"""The zygote's whole environment while it imports modules (it then clears it, and so does each
child). A fixed hash seed makes set and dict-of-str iteration order, hence every reward, repeatable."""
CONTROL_TIMEOUT_S = 20.0
"""How long the judge waits for the zygote to fork or kill a child before declaring it broken."""
CHECK_GRACE_S = 1.0
"""The check itself is interrupted this long after the program's deadline (a check looping on a
value the program returned)."""
_CHECK_NAME = "<tests>"
_NAMESPACES = "PID/network/mount namespaces and the private read-only filesystem"
_RECORD = "__sspo_record_assert__"
_SAFE_EXCEPTIONS = {
    name: cls
    for name, cls in vars(builtins).items()
    if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, (StopIteration, StopAsyncIteration))
}


class ProgramGone(BaseException):
    """The program can no longer answer (timeout, crash, protocol violation); ends the check.

    A ``BaseException`` so that a check's ``except Exception`` cannot swallow it.
    """

    def __init__(self, status: str, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


class JudgeDeadline(BaseException):
    """The check ran past the program's deadline (plus grace) in its own code."""


class UnsupportedArgument(BaseException):
    """The check passed the candidate something that is not plain data (the dataset's fault)."""


class CandidateError(Exception):
    """The candidate raised an exception that is not a builtin one (name and message kept)."""


# --- compiling the trusted check -----------------------------------------------------------------


class _RecordAsserts(ast.NodeTransformer):
    """``assert test, msg`` -> ``try: record(test) except Exception: record(False)``."""

    def __init__(self):
        self.count = 0

    def visit_Assert(self, node: ast.Assert):
        self.count += 1
        call = ast.Call(ast.Name(_RECORD, ast.Load()), [node.test], [])
        failed = ast.Call(ast.Name(_RECORD, ast.Load()), [ast.Constant(False)], [])
        handler = ast.ExceptHandler(ast.Name("Exception", ast.Load()), None, [ast.Expr(failed)])
        return ast.copy_location(ast.Try([ast.Expr(call)], [handler], [], []), node)


_compiled: dict[tuple[str, str, bool], tuple[object, object, int]] = {}


def compile_check(prefix: str, tests: str, partial: bool):
    """(code of ``prefix``, code of ``tests``, number of ``assert`` statements in ``tests``), cached.

    Compiled apart (file names ``<prefix>`` and ``<tests>``) so that failure details give line
    numbers within ``tests``; both run in one namespace, prefix first. A prefix that does not
    compile on its own (a bare signature the program completes) is left out here.
    """
    key = (prefix, tests, partial)
    if key not in _compiled:
        tree = ast.parse(tests, _CHECK_NAME)
        counter = _RecordAsserts()
        if partial:
            tree = ast.fix_missing_locations(counter.visit(tree))
        else:
            counter.count = sum(isinstance(n, ast.Assert) for n in ast.walk(tree))
        if len(_compiled) > 4096:
            _compiled.clear()
        try:
            prefix_code = compile(prefix, "<prefix>", "exec")
        except (SyntaxError, ValueError):  # e.g. a bare signature the program completes: no helpers in it
            prefix_code = compile("", "<prefix>", "exec")
        _compiled[key] = (prefix_code, compile(tree, _CHECK_NAME, "exec"), counter.count)
    return _compiled[key]


class _Tally:
    def __init__(self):
        self.passed = 0
        self.total = 0

    def __call__(self, ok) -> None:
        ok = bool(ok)  # may raise (an ambiguous truth value): then the assertion records False once
        self.total += 1
        self.passed += ok


# --- the program side: one sandboxed child -------------------------------------------------------


class Program:
    """The judge's end of one child's channel; every wait is bounded by the program's deadline."""

    def __init__(self, sock: socket.socket, deadline: float):
        sock.setblocking(False)
        self.sock, self.deadline = sock, deadline

    def _wait(self, writable: bool = False) -> None:
        remaining = self.deadline - time.monotonic()
        poller = select.poll()
        poller.register(self.sock, select.POLLOUT if writable else select.POLLIN)
        if remaining <= 0 or not poller.poll(remaining * 1000):
            raise ProgramGone("timeout", "ran past its time limit")

    def _read(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            try:
                chunk = self.sock.recv(min(size - len(data), 1 << 20))
            except BlockingIOError:
                self._wait()
                continue
            except OSError as exc:
                raise ProgramGone("crashed", f"channel error: {exc.strerror}") from None
            if not chunk:
                raise ProgramGone("crashed", "the program ended")
            data += chunk
        return bytes(data)

    def receive(self) -> list:
        """One message from the program: a JSON list starting with a string (else: crashed)."""
        (size,) = struct.unpack(">I", self._read(4))
        if size > codec.MAX_MESSAGE_BYTES:
            raise ProgramGone("crashed", f"sent a {size}-byte message (limit {codec.MAX_MESSAGE_BYTES})")
        try:
            message = codec.loads(self._read(size))
        except codec.CodecError as exc:
            raise ProgramGone("crashed", f"sent a malformed message ({exc})") from None
        if type(message) is not list or not message or type(message[0]) is not str:
            raise ProgramGone("crashed", "sent a malformed message")
        return message

    def send(self, data: bytes) -> None:
        view = memoryview(struct.pack(">I", len(data)) + data)
        while view:
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                self._wait(writable=True)
                continue
            except OSError:
                raise ProgramGone("crashed", "the program ended") from None
            view = view[sent:]


class Candidate:
    """What ``check`` receives as ``candidate``: calling it runs the program's entry point remotely.

    Arguments go out as plain data; the reply is decoded strictly and rebuilt here, with the
    trusted namespace's ``ListNode``/``TreeNode`` classes. Exceptions raised by the program come
    back as the builtin exception of that name (or :class:`CandidateError`).
    """

    def __init__(self, program: Program, namespace: dict):
        self._program = program
        self._list_node = sandbox._node_class(namespace, "ListNode", codec.ListNode)
        self._tree_node = sandbox._node_class(namespace, "TreeNode", codec.TreeNode)
        self.calls = 0
        self.gone: ProgramGone | None = None

    def __call__(self, *args, **kwargs):
        if self.gone is not None:
            raise self.gone
        try:
            encoded = [codec.encode(a) for a in args], [[k, codec.encode(v)] for k, v in kwargs.items()]
            data = codec.dumps(["call", *encoded])
        except Exception as exc:
            raise UnsupportedArgument(f"the check passed a value that cannot cross: {exc}") from None
        try:
            self._program.send(data)
            reply = self._program.receive()
            value = self._interpret(reply)
        except ProgramGone as gone:
            self.gone = gone
            raise
        self.calls += 1
        return value

    def _interpret(self, reply: list):
        op = reply[0]
        if op == "ok" and len(reply) == 2:
            try:
                return codec.decode(reply[1], list_node=self._list_node, tree_node=self._tree_node)
            except codec.CodecError as exc:
                raise ProgramGone("crashed", f"returned malformed data ({exc})") from None
        if op == "unsupported" and len(reply) == 2 and type(reply[1]) is str:
            self.calls += 1
            raise CandidateError(f"returned a value that is not plain data ({reply[1][:300]})")
        if op == "raise" and len(reply) == 3 and all(type(x) is str for x in reply[1:]):
            name, message = reply[1][:100], reply[2][:300]
            cls = _SAFE_EXCEPTIONS.get(name)
            self.calls += 1
            try:
                error = cls(message) if cls is not None else CandidateError(f"{name}: {message}")
            except Exception:
                error = CandidateError(message)
            raise error
        raise ProgramGone("crashed", f"sent an unexpected {op[:40]!r} message")


# --- the zygote, seen from the judge -------------------------------------------------------------


class SandboxBroken(Exception):
    """The zygote failed (an infrastructure error, not the program's)."""


class Zygote:
    """Starts ``sandbox.py`` in the strongest mode that works and talks to it."""

    def __init__(self, isolation: str, uid: int, nproc_base: str, heavy: bool = False):
        self.isolation, self.uid, self.nproc_base, self.heavy = isolation, uid, nproc_base, heavy
        self.proc: subprocess.Popen | None = None
        self.control: socket.socket | None = None
        self.info: dict = {}
        self.start_failures: list[str] = []

    def modes(self) -> list[str]:
        if self.isolation == "process":
            self.start_failures.append(f"{_NAMESPACES} (isolation='process' was asked for)")
            return ["process"]
        if not shutil.which("unshare"):
            self.start_failures.append(f"{_NAMESPACES} (no `unshare` binary found)")
            return ["process"]
        return (["ns"] if os.geteuid() == 0 else []) + ["userns", "process"]

    def command(self, mode: str, fd: int) -> list[str]:
        preload = "heavy" if self.heavy else "light"
        script = [sys.executable, "-s", "-B", SANDBOX_SCRIPT, str(fd), mode, str(self.uid), self.nproc_base, preload]
        if mode == "process":
            return script
        user = ["--user", "--map-root-user"] if mode == "userns" else []
        flags = ["--pid", "--net", "--mount", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc"]
        return ["unshare", *user, *flags, *script]

    def start(self) -> None:
        self.start_failures = []
        for mode in self.modes():
            ours, theirs = socket.socketpair()
            err = tempfile.TemporaryFile()
            proc = subprocess.Popen(
                self.command(mode, theirs.fileno()),
                pass_fds=[theirs.fileno()],
                env=ZYGOTE_ENV,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
            theirs.close()
            ours.settimeout(60)
            try:
                data, _ = sandbox.recv_frame(ours)
                reply = codec.loads(data) if data else {"op": "failed", "message": ""}
            except (OSError, codec.CodecError) as exc:
                reply = {"op": "failed", "message": str(exc)}
            if reply.get("op") == "ready":
                ours.settimeout(CONTROL_TIMEOUT_S)
                self.proc, self.control, self.info = proc, ours, reply
                self.info["missing"] = self.start_failures + list(reply.get("missing", []))
                err.close()
                return
            _stop(proc)
            ours.close()
            err.seek(0)
            message = reply.get("message") or err.read().decode(errors="replace").strip().splitlines()[-1:]
            err.close()
            what = _NAMESPACES if mode == "ns" else "user namespaces" if mode == "userns" else "a process sandbox"
            self.start_failures.append(f"{what} ({''.join(message) or 'start-up failed'})"[:800])
        raise SandboxBroken("no sandbox mode works: " + "; ".join(self.start_failures))

    def request(self, message: dict, fds: tuple[int, ...] = ()) -> dict:
        try:
            sandbox.send_frame(self.control, codec.dumps(message), fds)
            data, _ = sandbox.recv_frame(self.control)
        except (OSError, codec.CodecError) as exc:
            raise SandboxBroken(f"zygote did not answer: {exc}") from None
        if data is None:
            raise SandboxBroken("zygote died")
        return codec.loads(data)

    def stop(self) -> None:
        """Hang up (the zygote then kills what it started and exits), then make sure it is gone."""
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
            _stop(self.proc)
            self.proc = None


def _stop(proc: subprocess.Popen) -> None:
    try:
        proc.kill()
        proc.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        pass


# --- one request ---------------------------------------------------------------------------------


class Judge:
    """Judges requests one at a time, with two zygotes (restarted when they break).

    Programs that mention a module of ``sandbox.HEAVY`` (numpy) fork from a zygote that has it
    loaded; all others from a lighter one, whose forks and exits are cheaper.
    """

    def __init__(self, isolation: str, uid: int, nproc_base: str):
        self.light = Zygote(isolation, uid, nproc_base)
        self.heavy = Zygote(isolation, uid, nproc_base, heavy=True)

    def start(self) -> dict:
        self.light.start()
        self.heavy.start()
        info = dict(self.light.info)
        info["vm_kb"] = max(self.light.info.get("vm_kb", 0), self.heavy.info.get("vm_kb", 0))
        # the numpy zygote may have had to settle for less (its packages unreadable in one mode): say so
        info["missing"] = list(dict.fromkeys([*self.light.info.get("missing", []), *self.heavy.info.get("missing", [])]))
        return info

    def stop(self) -> None:
        self.light.stop()
        self.heavy.stop()

    def judge(self, request: dict) -> dict:
        zygote = self.heavy if any(name in request["program"] for name in sandbox.HEAVY) else self.light
        started = time.monotonic()
        try:
            if zygote.control is None:  # restarted after a failure, before the program's clock starts
                zygote.start()
                started = time.monotonic()
            status, score, detail = self._judge(zygote, request, started)
        except SandboxBroken as exc:
            zygote.stop()
            status, score, detail = "sandbox_error", 0.0, str(exc)
        except Exception as exc:  # a bug of the judge: reported as the scorer's fault, never a pass
            status, score, detail = "sandbox_error", 0.0, f"judge error: {type(exc).__name__}: {exc}"
        return {"status": status, "score": score, "detail": detail[:500], "seconds": time.monotonic() - started}

    def _judge(self, zygote: Zygote, request: dict, started: float) -> tuple[str, float, str]:
        try:
            code = compile_check(request["prefix"], request["tests"], request["partial"])
        except Exception as exc:
            return "sandbox_error", 0.0, f"the tests do not compile: {exc}"
        timeout = float(request["timeout"])
        ours, theirs = socket.socketpair()
        spec = {
            "op": "spawn",
            "source": request["program"],
            "entry_point": request["entry_point"],
            "timeout": timeout,
            "memory_mb": request["memory_mb"],
            "tmp_mb": request["tmp_mb"],
            "max_processes": request["max_processes"],
        }
        try:
            reply = zygote.request(spec, (theirs.fileno(),))
        finally:
            theirs.close()
        if reply.get("op") != "spawned":
            ours.close()
            raise SandboxBroken(str(reply.get("message", reply)))
        program = Program(ours, started + timeout)
        status = "crashed"  # until known: wait for the exit status
        try:
            status, score, detail = self._run(program, code, request)
        finally:
            ours.close()
            ended = zygote.request({"op": "kill", "pid": reply["pid"], "wait": status == "crashed"})
        if status == "crashed":
            detail = f"{detail} ({ended.get('how', 'gone')})"
        return status, score, detail

    def _run(self, program: Program, code: tuple, request: dict) -> tuple[str, float, str]:
        partial, entry_point = request["partial"], request["entry_point"]
        try:
            first = program.receive()
        except ProgramGone as gone:
            return "sandbox_error", 0.0, f"the sandboxed child failed during set-up ({gone.detail})"
        if first != ["setup"]:
            return "sandbox_error", 0.0, f"sandbox set-up failed: {str(first[-1])[:300]}"
        try:
            ready = program.receive()
        except ProgramGone as gone:
            return gone.status, 0.0, f"{gone.detail} before its entry point was ready"
        if ready != ["ready"]:
            if len(ready) == 3 and ready[0] == "import_error" and type(ready[2]) is str:
                kind = "syntax_error" if ready[1] == "syntax_error" else "failed"
                return kind, 0.0, ready[2][:300]
            return "crashed", 0.0, "sent a malformed message"
        tally = _Tally()
        namespace = {"__name__": "__sspo_check__", "__builtins__": builtins, _RECORD: tally}
        prefix_code, tests_code, static_asserts = code
        try:
            exec(prefix_code, namespace)
            exec(tests_code, namespace)
            check = namespace["check"]
        except Exception as exc:
            return "sandbox_error", 0.0, f"the tests failed to load: {type(exc).__name__}: {exc}"
        candidate = Candidate(program, namespace)
        if entry_point.isidentifier():
            # As in an in-process harness, where the program's definition replaces the prompt's stub:
            # a check that calls the entry point by name (HumanEval/33) calls the candidate.
            namespace[entry_point] = candidate
        status, detail = _run_check(check, candidate, program.deadline)
        if candidate.gone is not None:
            status, detail = candidate.gone.status, candidate.gone.detail
        elif status == "passed" and candidate.calls == 0:
            return "sandbox_error", 0.0, "the check never called the candidate"
        if not partial:
            return status, 1.0 if status == "passed" else 0.0, detail
        return _partial(status, detail, tally, static_asserts)


def _partial(status: str, detail: str, tally: _Tally, static_asserts: int) -> tuple[str, float, str]:
    """Score = assertions passed / assertions the check would evaluate.

    A check that ran to its end evaluated ``tally.total`` assertions. One that stopped early (the
    candidate raised outside an ``assert``, or the program died) is charged at least one more, and at
    least the number of ``assert`` statements it contains.
    """
    if status == "passed":
        total = tally.total
    else:
        total = max(tally.total + 1, static_asserts)
    if total == 0:
        return status, 1.0 if status == "passed" else 0.0, detail
    score = tally.passed / total
    if status == "passed" and tally.passed < total:
        status, detail = "failed", f"{tally.passed} of {total} assertions passed"
    return status, score, detail


def _run_check(check, candidate: Candidate, deadline: float) -> tuple[str, str]:
    """Run the trusted check with an alarm as a backstop; (status, detail)."""

    def alarm(_signum, _frame):
        raise JudgeDeadline()

    previous = signal.signal(signal.SIGALRM, alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, max(deadline - time.monotonic(), 0.0) + CHECK_GRACE_S)
        try:
            check(candidate)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except ProgramGone as gone:
        return gone.status, gone.detail
    except JudgeDeadline:
        return "timeout", "the check ran past the time limit on the program's values"
    except UnsupportedArgument as exc:
        return "sandbox_error", str(exc)
    except AssertionError as exc:
        return "failed", _where("assertion failed", exc)
    except RecursionError as exc:
        return "failed", _where("RecursionError", exc)
    except Exception as exc:
        return "failed", _where(f"{type(exc).__name__}: {str(exc)[:200]}", exc)
    except BaseException as exc:  # SystemExit/KeyboardInterrupt raised inside the trusted check
        return "failed", f"the check raised {type(exc).__name__}"
    finally:
        signal.signal(signal.SIGALRM, previous)
    return "passed", ""


def _where(what: str, exc: BaseException) -> str:
    tb, line = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == _CHECK_NAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f"{what} (tests line {line})" if line else what


# --- the process ---------------------------------------------------------------------------------


JUDGE_MEMORY_BYTES = 4 << 30
"""Soft address-space limit of a judge: a check that multiplies a program's huge return value
(``[0] * candidate()``) gets a ``MemoryError``, not the machine's memory. Only the soft limit is
lowered, so that sandboxed children may still set theirs as asked."""


def _limit_own_memory() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    wanted = JUDGE_MEMORY_BYTES if hard == resource.RLIM_INFINITY else min(JUDGE_MEMORY_BYTES, hard)
    if soft == resource.RLIM_INFINITY or soft > wanted:
        resource.setrlimit(resource.RLIMIT_AS, (wanted, hard))


def _tasks_of(uid: int) -> int:
    """Threads that already run as ``uid`` (``RLIMIT_NPROC`` counts them all, per user)."""
    count = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                count += int(fields["Threads"])
        except (OSError, KeyError, ValueError):
            pass
    return count


def main(argv: list[str]) -> None:
    """Serve JSON-line requests on stdin; reply on the original stdout (prints go to /dev/null)."""
    isolation = argv[1]
    _limit_own_memory()
    uid = sandbox.SANDBOX_UID_BASE + os.getpid() if os.geteuid() == 0 else os.getuid()
    # RLIMIT_NPROC counts every task of a user: the sandbox uid's, or ours when no uid can be switched to.
    nproc_base = f"{_tasks_of(uid)},{_tasks_of(os.getuid())}"
    reader = os.fdopen(os.dup(0), "rb")
    writer = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    judge = Judge(isolation, uid, nproc_base)

    def send(message: dict) -> None:
        writer.write(json.dumps(message).encode() + b"\n")
        writer.flush()

    try:
        send({"ready": True, **judge.start()})
    except SandboxBroken as exc:
        send({"ready": False, "message": str(exc)})
        return
    for line in reader:
        send(judge.judge(json.loads(line)))
    judge.stop()


if __name__ == "__main__":
    main(sys.argv)
