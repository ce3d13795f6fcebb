"""Hostile programs for the code sandbox, and the correct programs that must still pass.

Every hostile program must score 0.0. Where an attack could *work*, the program is written so that
success would show as a pass: a leak returns the secret that the tests expect, a missing limit lets
the program finish and return the right sum. ``needs`` names the layers an attack is only stopped
by (any one of them); the test skips it, with that reason, where the machine has none of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

ADD = {"tests": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n", "entry_point": "add"}
SLEEP_MARKS = ("7777", "7778")
"""Arguments of the ``sleep`` processes that escape attempts start; none may outlive its program."""


@dataclass(frozen=True)
class Case:
    name: str
    program: str
    problem: dict = field(default_factory=lambda: ADD)
    needs: tuple[str, ...] = ()


def secret_problem(token: str) -> dict:
    """Tests whose only passing answer is ``token``: a program that can read it passes."""
    return {"tests": f"def check(candidate):\n    assert candidate() == {token!r}\n", "entry_point": "secret"}


def hostile_cases(tokens: dict[str, str], secret_path: str, canaries: list[str], port: int) -> list[Case]:
    """Each secret has its own token; only the judge ever holds ``tokens["hunt"]`` (``tok-`` + hex)."""
    fake = json.dumps({"status": "passed", "score": 1.0, "detail": "", "seconds": 0.0})
    return [
        # Loops, hangs and crashes
        Case("loop_at_import", "while True:\n    pass\n"),
        Case("loop_in_call", "def add(a, b):\n    while True:\n        pass\n"),
        Case("sleep", "import time\ndef add(a, b):\n    time.sleep(1e6)\n    return a + b\n"),
        Case(
            "ignores_sigterm_and_sigalrm",
            "import signal\n"
            "for s in (signal.SIGTERM, signal.SIGALRM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU):\n"
            "    signal.signal(s, signal.SIG_IGN)\n"
            "signal.alarm(1)\n"
            "def add(a, b):\n    while True:\n        pass\n",
        ),
        Case(
            "recursion_bomb",
            "import sys\nsys.setrecursionlimit(10**8)\ndef add(a, b):\n    return add(a, b) + 1\n",
        ),
        Case("ctypes_segfault", "import ctypes\ndef add(a, b):\n    ctypes.string_at(0)\n    return a + b\n"),
        Case("syntax_error", "def add(a, b)\n    return a + b\n"),
        Case("ten_mb_of_source", "x = [" + "1," * 5_000_000 + "]\ndef add(a, b):\n    return None\n"),
        Case("input_without_stdin", "def add(a, b):\n    return int(input())\n"),
        # Resource exhaustion
        Case(
            "fork_bomb",
            "import os\ndef add(a, b):\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n",
        ),
        # (mmap'd memory is reserved at once and touched lazily: without a limit these would finish in
        # time and pass, so a missing limit fails the test.)
        Case("memory_bomb", "import mmap\ndef add(a, b):\n    hog = mmap.mmap(-1, 3 * 2**30)\n    hog[-1] = 1\n    return a + b\n"),
        Case(
            "gradual_memory_growth",
            "import mmap\ndef add(a, b):\n    hog = []\n    for _ in range(1536):\n"
            "        hog.append(mmap.mmap(-1, 2**20))\n        hog[-1][0] = 1\n    return a + b\n",
        ),
        Case(
            "python_object_growth",
            "def add(a, b):\n    hog = []\n    while True:\n        hog.append(b'x' * 2**20)\n",
        ),
        Case(
            "stdout_flood",
            "import sys\ndef add(a, b):\n    for _ in range(100):\n        sys.stdout.write('x' * 10**6)\n"
            "    print('passed')\n    return None\n",
        ),
        Case(
            "fill_the_disk",
            "def add(a, b):\n    with open('fill', 'wb') as f:\n        for _ in range(2048):\n            f.write(b'x' * 2**20)\n"
            "    return a + b\n",
        ),
        Case(
            "open_many_files",
            "def add(a, b):\n    handles = [open(f'f{i}', 'w') for i in range(5000)]\n    return a + b\n",
        ),
        Case(
            "open_a_million_files",
            "def add(a, b):\n    handles = [open(f'f{i}', 'w') for i in range(10**6)]\n    return a + b\n",
        ),
        # Escaping the deadline
        Case(
            "popen_new_session",
            "import subprocess\ndef add(a, b):\n"
            f"    subprocess.Popen(['sleep', '{SLEEP_MARKS[0]}'], start_new_session=True)\n    return None\n",
        ),
        Case(
            "double_fork_setsid",
            "import os\ndef add(a, b):\n    if os.fork() == 0:\n        os.setsid()\n        if os.fork() == 0:\n"
            f"            os.execvp('sleep', ['sleep', '{SLEEP_MARKS[1]}'])\n        os._exit(0)\n    return None\n",
        ),
        Case(
            "non_daemon_thread",
            "import threading, time\ndef spin():\n    while True:\n        time.sleep(0.01)\n"
            "threading.Thread(target=spin).start()\ndef add(a, b):\n    return None\n",
        ),
        # Attacks on the scorer
        Case("kill_parent_at_import", "import os\nos.kill(os.getppid(), 9)\ndef add(a, b):\n    return None\n", needs=("pid_namespace", "unprivileged_uid")),
        Case("kill_parent_in_call", "import os\ndef add(a, b):\n    os.kill(os.getppid(), 9)\n    return None\n", needs=("pid_namespace", "unprivileged_uid")),
        Case("kill_everything", "import os\ndef add(a, b):\n    os.kill(-1, 9)\n    return None\n", needs=("pid_namespace", "unprivileged_uid")),
        Case("kill_everything_at_import", "import os\nos.kill(-1, 9)\ndef add(a, b):\n    return None\n", needs=("pid_namespace", "unprivileged_uid")),
        # Faking a pass
        Case("sys_exit_at_import", "import sys\nsys.exit(0)\n"),
        Case("sys_exit_in_call", "import sys\ndef add(a, b):\n    sys.exit(0)\n"),
        Case("os_exit_at_import", "import os\nos._exit(0)\n"),
        Case("os_exit_in_call", "import os\ndef add(a, b):\n    os._exit(0)\n"),
        Case("prints_passed", "def add(a, b):\n    print('passed')\n    print('All tests passed')\n    return None\n"),
        Case(
            "fake_json_verdict",
            f"import os, struct\nFAKE = {fake!r}.encode()\n"
            "def add(a, b):\n    for fd in range(1, 64):\n"
            "        for data in (FAKE + b'\\n', struct.pack('>I', len(FAKE)) + FAKE):\n"
            "            try:\n                os.write(fd, data)\n            except OSError:\n                pass\n"
            "    return None\n",
        ),
        Case(
            "eq_always_true",
            "class Anything:\n    def __eq__(self, other):\n        return True\n    def __ne__(self, other):\n        return False\n"
            "def add(a, b):\n    return Anything()\n",
        ),
        Case(
            "int_subclass_eq_always_true",
            "class Sneaky(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
            "def add(a, b):\n    return Sneaky(0)\n",
        ),
        Case(
            "patch_assertion_error",
            "import builtins\nclass Never(Exception):\n    pass\nbuiltins.AssertionError = Never\ndef add(a, b):\n    return None\n",
        ),
        Case("patch_print", "import builtins\nbuiltins.print = lambda *a, **k: None\ndef add(a, b):\n    return None\n"),
        Case(
            "patch_json",
            "import json\njson.loads = lambda *a, **k: {'status': 'passed', 'score': 1.0}\n"
            "json.dumps = lambda *a, **k: '{\"status\": \"passed\", \"score\": 1.0}'\ndef add(a, b):\n    return None\n",
        ),
        Case("hunt_judge_state", _HUNTER, secret_problem(tokens["hunt"])),
        # Reaching outside
        Case(
            "read_scorer_environment",
            "import os\ndef secret():\n    if os.environ.get('SSPO_HOSTILE_SECRET'):\n        return os.environ['SSPO_HOSTILE_SECRET']\n"
            "    for pid in (os.listdir('/proc') if os.path.isdir('/proc') else []):\n"
            "        try:\n            data = open(f'/proc/{pid}/environ', 'rb').read()\n        except OSError:\n            continue\n"
            "        for item in data.split(b'\\0'):\n"
            "            if item.startswith(b'SSPO_HOSTILE_SECRET='):\n                return item.split(b'=', 1)[1].decode()\n"
            "    return None\n",
            secret_problem(tokens["env"]),
            needs=("unprivileged_uid", "private_filesystem"),
        ),
        Case(
            "read_scorer_file",
            f"def secret():\n    return open({secret_path!r}).read()\n",
            secret_problem(tokens["file"]),
            needs=("private_filesystem",),
        ),
        Case(
            "tcp_to_localhost",
            "import socket\ndef secret():\n"
            f"    with socket.create_connection(('127.0.0.1', {port}), timeout=0.5) as s:\n"
            "        return s.recv(100).decode()\n",
            secret_problem(tokens["tcp"]),
            needs=("network_namespace",),
        ),
        Case(
            "write_outside",
            f"import os\nTARGETS = {canaries!r}\n"
            "def add(a, b):\n    for d in TARGETS:\n        for name in os.listdir(d) if os.path.isdir(d) else []:\n"
            "            try:\n                os.remove(os.path.join(d, name))\n            except OSError:\n                pass\n"
            "        try:\n            open(os.path.join(d, 'pwned'), 'w').write('x')\n        except OSError:\n            pass\n"
            "    return None\n",
            needs=("private_filesystem",),
        ),
    ]


_HUNTER = r"""
import gc, re, sys
PATTERN = re.compile(r"tok-[0-9a-f]{32}")

def _scan_memory():
    # Raw scan of our own readable memory (only where /proc is mounted): anything the zygote ever held.
    import ctypes
    try:
        maps = open('/proc/self/maps').read().splitlines()
    except OSError:
        return None
    for line in maps:
        fields = line.split()
        if len(fields) < 2 or not fields[1].startswith('r') or (len(fields) > 5 and fields[5].startswith('[v')):
            continue
        start, end = (int(x, 16) for x in fields[0].split('-'))
        if end - start > 512 * 2**20:
            continue
        try:
            found = PATTERN.search(ctypes.string_at(start, end - start).decode('latin-1'))
        except Exception:
            continue
        if found:
            return found.group()
    return None

def secret():
    for obj in gc.get_objects():
        try:
            items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
            for item in items:
                if isinstance(item, str):
                    found = PATTERN.search(item)
                    if found:
                        return found.group()
        except Exception:
            pass
    frame = sys._getframe()
    while frame is not None:
        for value in list(frame.f_locals.values()) + list(frame.f_globals.values()):
            if isinstance(value, str) and PATTERN.search(value):
                return PATTERN.search(value).group()
        frame = frame.f_back
    return _scan_memory()
"""


def leftover_pair(token: str) -> tuple[Case, Case]:
    """A program that leaves the secret behind, then one on the same judge that looks for it."""
    places = ["left.txt", "/tmp/left.txt", "/dev/shm/left.txt", "/var/tmp/left.txt"]
    writer = Case(
        "leave_a_file",
        f"TOKEN = {token!r}\nfor p in {places!r}:\n    try:\n        open(p, 'w').write(TOKEN)\n    except OSError:\n        pass\n"
        "def add(a, b):\n    return None\n",
        needs=("private_filesystem",),
    )
    reader = Case(
        "find_a_left_file",
        f"def secret():\n    for p in {places!r}:\n        try:\n            return open(p).read()\n        except OSError:\n            pass\n",
        secret_problem(token),
        needs=("private_filesystem",),
    )
    return writer, reader


POSITIVE = [
    Case("correct", "def add(a, b):\n    return a + b\n"),
    Case(
        "correct_and_prints",
        "import sys\ndef add(a, b):\n    print('computing', a, b)\n    sys.stderr.write('e' * 10**6)\n"
        "    print('x' * 10**6)\n    return a + b\n",
    ),
    Case("correct_reads_empty_stdin", "import sys\nEMPTY = sys.stdin.read()\ndef add(a, b):\n    return a + b + len(EMPTY)\n"),
    Case(
        "correct_with_numpy",
        "import numpy as np\ndef add(a, b):\n    m = np.random.default_rng(0).random((300, 300))\n"
        "    assert np.allclose(np.linalg.inv(m) @ m, np.eye(300))\n    return int(np.add(a, b))\n",
    ),
    Case("correct_with_a_thread", "import threading\ndef add(a, b):\n    out = []\n    t = threading.Thread(target=lambda: out.append(a + b))\n    t.start()\n    t.join()\n    return out[0]\n"),
]
