"""The sandbox: a warm zygote process that forks one isolated child per untrusted program.

The judge (``judge.py``) starts it as a plain script, never importing ``sspo``::

    unshare --pid --net --mount --ipc --uts --fork --kill-child --mount-proc \\
        python -s -B sandbox.py CONTROL_FD ns UID TASKS_OF_UID,TASKS_OF_CALLER {light|heavy}

(``--user --map-root-user`` is added for a non-root user: mode ``userns``; without ``unshare`` the
mode is ``process``). The **zygote** runs trusted code only and never receives tests. Once, at
start, it imports the modules programs commonly use (so a child needs no interpreter start-up;
``heavy`` adds numpy), builds a read-only root (the system directories, the interpreter's prefixes
and ``/dev/{null,zero,full,random,urandom}`` bound onto a private tmpfs) and probes which isolation
layers work, and that a child can import from disk (a mode where it cannot is refused: correct
programs would fail). Without that root, a uid of their own cannot reach an interpreter below a
directory it may not traverse (``/root``, a ``mktemp -d`` folder): such ``sys.path`` directories are
reached through descriptors the children keep (:func:`reach_imports_through_descriptors`). Then it
answers control messages from the judge (length-prefixed JSON on a Unix socket):

* ``spawn`` (with the program's end of a fresh socket pair as ``SCM_RIGHTS``) -> ``spawned``: fork a
  child, the init of a new PID namespace;
* ``kill`` -> ``killed``: SIGKILL the child (every process in its namespace dies with it) and reap
  it, at once or, when the judge does not need its exit status, later. The zygote also kills a
  child that outlives its hard deadline, and everything when the judge hangs up.

The **child** sets itself up while still trusted: its own mount and IPC namespaces, a fresh
size-limited tmpfs as ``/tmp`` and working directory, ``chroot`` into the read-only root, stdin,
stdout, stderr on ``/dev/null``, every other descriptor closed but the channel, an empty
environment, resource limits (address space, CPU, processes, file size, open files, no core
files), a uid of its judge's own (or, in a user namespace, no capabilities), ``no_new_privs``. It
reports ``["setup"]`` and only then compiles and runs the program, looks up the entry point and
serves ``call`` requests: arguments decoded with the program's own ``ListNode``/``TreeNode``,
results encoded as plain data (``codec.py``). Nothing it sends decides a verdict: the judge does.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import gc
import os
import re
import resource
import signal
import socket
import stat
import struct
import sys
import time

if __package__:
    from . import codec
else:  # run as a script by the judge or the scorer: load the siblings as plain files, not sspo
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, _here)
    import codec  # noqa: E402

    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]

SANDBOX_UID_BASE = 1_500_000_000
"""Programs run as uid/gid ``SANDBOX_UID_BASE + judge pid`` when the sandbox is root: a uid no
account uses, a different one per judge, so that the per-user process limit (``RLIMIT_NPROC``) of
one judge's program is not used up by a fork bomb in another's, and programs of different judges
cannot signal each other."""
PREIMPORTED = (
    "abc array base64 binascii bisect builtins calendar cmath collections collections.abc contextlib copy "
    "dataclasses datetime decimal enum fractions functools hashlib heapq io itertools json math numbers "
    "mmap operator pprint queue random re secrets signal socket statistics string struct subprocess textwrap "
    "threading time types typing unicodedata weakref zlib sortedcontainers"
).split()
"""Imported once by every zygote so that programs get them without touching the disk."""
HEAVY = ("numpy",)
"""Imported only by the judge's second zygote, which runs the programs that mention them: they make
every fork and exit slower (numpy: about 60 more memory mappings), a cost other programs need not pay."""
DISK_PROBES = ("colorsys", "wave", "netrc", "tabnanny")
"""Standard-library modules no zygote preloads: the start-up probe imports the first one not loaded
from disk, as a program would import anything not preloaded."""
HEAVY_PROBES = {"numpy": "numpy.random"}
"""A submodule of each ``HEAVY`` package that its import leaves to be loaded on first use."""
FD_BASE = 10
"""Descriptors through which a child reaches the interpreter's directories get numbers from here
on, clear of 0-3 (the standard streams and the channel)."""
HARD_GRACE_S = 5.0
"""A child still alive this long after its own timeout is killed by the zygote on its own."""
ROOT_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc")
DEVICES = ("null", "zero", "full", "random", "urandom")
_BASE = "/tmp"  # covered by a private tmpfs inside the zygote's mount namespace only
_ROOT = _BASE + "/root"

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWPID = 0x00020000, 0x08000000, 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 1024, 2048, 4096, 8192, 16384, 1 << 18
MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24
_MOUNT_FLAGS = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
    "strictatime": MS_STRICTATIME,
}
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP = 1, 4, 24
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 36, 38, 47

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def raw(text):
        return None if text is None else text.encode()

    result = _libc.mount(raw(source), raw(target), raw(fstype), ctypes.c_ulong(flags), raw(data))
    _check(result, f"mount {target}")


def _prctl(option: int, arg: int = 0) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl {option}")


# --- framing -------------------------------------------------------------------------------------


def send_frame(sock: socket.socket, data: bytes, fds: tuple[int, ...] = ()) -> None:
    """Send one length-prefixed frame (blocking), with file descriptors attached to it."""
    frame = struct.pack(">I", len(data)) + data
    sent = socket.send_fds(sock, [frame], list(fds)) if fds else sock.send(frame)
    if sent < len(frame):
        sock.sendall(frame[sent:])


def recv_frame(sock: socket.socket, max_fds: int = 0) -> tuple[bytes | None, list[int]]:
    """One frame (``None`` at end of stream) and the descriptors that came with it (blocking)."""
    if max_fds:
        head, fds, _flags, _addr = socket.recv_fds(sock, 4, max_fds)
    else:
        head, fds = sock.recv(4), []
    while head and len(head) < 4:
        more = sock.recv(4 - len(head))
        if not more:
            break
        head += more
    if len(head) < 4:
        for fd in fds:
            os.close(fd)
        return None, []
    (size,) = struct.unpack(">I", head)
    if size > codec.MAX_MESSAGE_BYTES:
        raise codec.CodecError(f"frame of {size} bytes")
    body = bytearray()
    while len(body) < size:
        chunk = sock.recv(min(size - len(body), 1 << 20))
        if not chunk:
            return None, fds
        body += chunk
    return bytes(body), fds


def _send(sock: socket.socket, message, fds: tuple[int, ...] = ()) -> None:
    send_frame(sock, codec.dumps(message), fds)


# --- the read-only root --------------------------------------------------------------------------


def interpreter_paths() -> list[str]:
    """Directories a program needs to import from: the prefixes and the site-packages in ``sys.path``.

    Editable-install source trees and the current directory are left out on purpose.
    """
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    wanted = {os.path.realpath(p) for p in prefixes if p}
    for entry in sys.path:
        real = os.path.realpath(entry) if entry else ""
        if real and os.path.exists(real) and (
            any(real.startswith(p + os.sep) for p in wanted)
            or os.path.basename(real) in ("site-packages", "dist-packages")
        ):
            wanted.add(real)
    return _outermost(p for p in wanted if os.path.isdir(p))


def _outermost(paths) -> list[str]:
    kept: list[str] = []
    for path in sorted(set(paths)):
        if not any(path == k or path.startswith(k.rstrip(os.sep) + os.sep) for k in kept):
            kept.append(path)
    return kept


def _others_can_list(path: str) -> bool:
    """Whether a user who is neither the owner nor in the group can reach and list ``path``.

    The sandbox uid and gid are used by no file, so only the "other" permission bits apply to them.
    """
    for full in {os.path.abspath(path), os.path.realpath(path)}:
        parts = full.split(os.sep)
        for i in range(1, len(parts) + 1):
            try:
                mode = os.stat(os.sep.join(parts[:i]) or os.sep).st_mode
            except OSError:
                return False
            need = stat.S_IXOTH | (stat.S_IROTH if i == len(parts) else 0)
            if mode & need != need:
                return False
    return True


def reach_imports_through_descriptors() -> tuple[dict[str, str], list[int]]:
    """Let an unprivileged uid import from interpreter directories it cannot reach by path.

    Without a private root, a virtual environment or interpreter below a directory that other users
    cannot traverse (``/root``, a private home, a ``mktemp -d`` folder) is unreadable for the
    sandbox uid, and only the preloaded modules would import. Each such ``sys.path`` directory is
    opened (``O_PATH``, kept open in every child) and replaced, in ``sys.path`` and in the paths of
    every loaded module (``__file__``, ``__path__``, spec, loader), by ``/proc/self/fd/N``: a path
    through the descriptor, where only the directory itself and what lies below it are checked.
    Returns ``{original: replacement}`` and the descriptors.
    """
    roots = interpreter_paths()
    mapping: dict[str, str] = {}
    fds: list[int] = []
    for entry in sys.path:
        if not entry or entry in mapping or not os.path.isdir(entry) or _others_can_list(entry):
            continue
        real = os.path.realpath(entry)
        if not any(real == r or real.startswith(r + os.sep) for r in roots):
            continue  # not the interpreter's (an editable source tree): as absent as in the private root
        fd = os.open(entry, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, FD_BASE)
        finally:
            os.close(fd)
        fds.append(high)
        mapping[entry] = f"/proc/self/fd/{high}"
    if mapping:
        _rewrite_module_paths(mapping)
    return mapping, fds


def _moved(path, mapping: dict[str, str]):
    if not isinstance(path, str):
        return path
    for old in sorted(mapping, key=len, reverse=True):
        if path == old or path.startswith(old + os.sep):
            return mapping[old] + path[len(old) :]
    return path


def _rewrite_module_paths(mapping: dict[str, str]) -> None:
    """Point ``sys.path`` and every loaded module's paths through ``mapping``: later imports of
    submodules (``numpy.random``, an ``encodings`` codec) and data files next to a module follow."""
    import importlib

    sys.path[:] = [_moved(p, mapping) for p in sys.path]
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for name in ("__file__", "__cached__"):
            if isinstance(namespace.get(name), str):
                namespace[name] = _moved(namespace[name], mapping)
        search = namespace.get("__path__")
        if isinstance(search, list):
            search[:] = [_moved(p, mapping) for p in search]
        spec = namespace.get("__spec__")
        if spec is not None:
            if isinstance(getattr(spec, "origin", None), str) and getattr(spec, "has_location", False):
                spec.origin = _moved(spec.origin, mapping)
            locations = getattr(spec, "submodule_search_locations", None)
            if isinstance(locations, list) and locations is not search:
                locations[:] = [_moved(p, mapping) for p in locations]
        loader = namespace.get("__loader__")
        if isinstance(getattr(loader, "path", None), str):
            loader.path = _moved(loader.path, mapping)
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()


def _mount_points() -> list[tuple[str, int]]:
    """(mount point, per-mount flags) of every mount in this namespace, from ``mountinfo``."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])  # \040 is a space
            flags = 0
            for option in fields[5].split(","):
                flags |= _MOUNT_FLAGS.get(option, 0)
            points.append((point, flags))
    return points


def build_root() -> tuple[str, list[tuple[str, str]]]:
    """Bind the system and interpreter directories read-only onto a private tmpfs.

    Runs once in the zygote's own (private) mount namespace: nothing here is visible to the host.
    Returns the root's path and, for interpreter directories under ``/tmp`` (which each child
    covers with its own tmpfs), ``(path, stash)``: a child moves such a mount aside to the empty
    directory ``stash`` before covering ``/tmp``, then back on top.
    """
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    top = [d for d in ROOT_DIRS if os.path.lexists("/" + d)]
    binds = [("/" + d, os.path.realpath("/" + d)) for d in top if not os.path.islink("/" + d)]
    links = [("/" + d, os.readlink("/" + d)) for d in top if os.path.islink("/" + d)]
    covered = [source for _, source in binds]
    for path in interpreter_paths():
        if not any(path == c or path.startswith(c + os.sep) for c in covered):
            binds.append((path, path))
    devices = [("/dev/" + d, "/dev/" + d) for d in DEVICES if os.path.exists("/dev/" + d)]
    # Open every source first: a source may live under _BASE, which the tmpfs is about to cover.
    opened = [(target, os.open(source, os.O_PATH | os.O_CLOEXEC)) for target, source in binds + devices]
    try:
        _mount("tmpfs", _BASE, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=4m")
        os.mkdir(_ROOT, 0o755)
        for name in ("tmp", "dev"):
            os.mkdir(_ROOT + "/" + name, 0o755)
        for target, value in links:
            os.symlink(value, _ROOT + target)
        for target, fd in opened:
            where = _ROOT + target
            if target.startswith("/dev/"):
                open(where, "w").close()
            else:
                os.makedirs(where, 0o755, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", where, None, MS_BIND | MS_REC)
    finally:
        for _, fd in opened:
            os.close(fd)
    under_tmp = []
    for point, flags in _mount_points():
        if point == _ROOT or point.startswith(_ROOT + "/"):
            _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | flags)
            if point.startswith(_ROOT + "/tmp/") and not any(point.startswith(_ROOT + p + "/") for p, _ in under_tmp):
                stash = f"{_BASE}/stash{len(under_tmp)}"
                os.mkdir(stash, 0o700)
                under_tmp.append((point[len(_ROOT) :], stash))
    return _ROOT, under_tmp


# --- the child -----------------------------------------------------------------------------------


class Layers:
    """Which isolation layers the zygote found working (decided once, at start)."""

    def __init__(self, mode: str, uid: int):
        self.mode, self.uid = mode, uid
        self.pid_namespace = mode in ("ns", "userns")
        self.mount_namespace = self.pid_namespace
        self.root = ""  # the read-only root, when built
        self.under_tmp: list[tuple[str, str]] = []  # interpreter directories a child's /tmp covers
        self.import_fds: list[int] = []  # descriptors children import through (no private root)
        self.drop_uid = mode == "ns" or (mode == "process" and os.geteuid() == 0)
        self.drop_caps = mode == "userns"

    def describe(self) -> dict:
        return {
            "mode": self.mode,
            "pid_namespace": self.pid_namespace,
            "network_namespace": self.mode in ("ns", "userns"),
            "private_filesystem": bool(self.root),
            "unprivileged_uid": self.drop_uid,
            "uid": self.uid if self.drop_uid else None,
            "capabilities_dropped": self.drop_caps or self.drop_uid,
        }


def _set_limits(spec: dict, nproc_base: int) -> None:
    mem = int(spec["memory_mb"]) * 1024 * 1024
    cpu = int(spec["timeout"]) + 1
    limits = {
        resource.RLIMIT_AS: (mem, mem),
        resource.RLIMIT_CPU: (cpu, cpu + 1),
        resource.RLIMIT_FSIZE: (int(spec["tmp_mb"]) * 1024 * 1024,) * 2,
        resource.RLIMIT_NOFILE: (64, 64),
        resource.RLIMIT_NPROC: (nproc_base + int(spec["max_processes"]),) * 2,
        resource.RLIMIT_CORE: (0, 0),
        resource.RLIMIT_MEMLOCK: (0, 0),
    }
    if hasattr(resource, "RLIMIT_MSGQUEUE"):
        limits[resource.RLIMIT_MSGQUEUE] = (0, 0)
    for which, value in limits.items():
        resource.setrlimit(which, value)


def _drop_capabilities() -> None:
    """Empty the bounding, ambient, effective, permitted and inheritable capability sets."""
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0) != 0 and ctypes.get_errno() == errno.EINVAL:
            break
    _libc.prctl(PR_CAP_AMBIENT, ctypes.c_ulong(4), 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    _check(_libc.capset(ctypes.byref(Header(0x20080522, 0)), (Data * 2)()), "capset")


def _setup_child(spec: dict, layers: Layers, workdir: str, nproc_base: int) -> None:
    """Isolate the freshly forked child, whose channel is fd 3 (trusted code; raises on failure)."""
    os.setpgid(0, 0)  # its own process group: kill(0, ...) reaches nothing else (setsid costs ~1 ms)
    if not layers.pid_namespace:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if layers.root:
        _unshare(CLONE_NEWNS | CLONE_NEWIPC)
        owner = f",uid={layers.uid},gid={layers.uid}" if layers.drop_uid else ""
        size = int(spec["tmp_mb"])
        for path, stash in layers.under_tmp:  # e.g. a virtual environment in /tmp: set it aside
            _mount(layers.root + path, stash, None, MS_MOVE)
        _mount("tmpfs", layers.root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={size}m,nr_inodes=4096,mode=0700{owner}")
        for path, stash in layers.under_tmp:  # and back, on top of the fresh /tmp
            os.makedirs(layers.root + path, 0o755, exist_ok=True)
            _mount(stash, layers.root + path, None, MS_MOVE)
        _close_all_but_channel()
        os.chroot(layers.root)
        workdir = "/tmp"
    else:
        _close_all_but_channel(layers.import_fds)
    os.chdir(workdir)
    null_in, null_out = os.open("/dev/null", os.O_RDONLY), os.open("/dev/null", os.O_WRONLY)
    for fd, null in ((0, null_in), (1, null_out), (2, null_out)):
        os.dup2(null, fd)
    os.close(null_in)
    os.close(null_out)
    os.environ.clear()
    _set_limits(spec, nproc_base)
    if layers.drop_uid:
        os.setgroups([])
        os.setresgid(layers.uid, layers.uid, layers.uid)
        os.setresuid(layers.uid, layers.uid, layers.uid)
        if os.getuid() != layers.uid or os.geteuid() != layers.uid:
            raise OSError("uid was not dropped")
    elif layers.drop_caps:
        _drop_capabilities()
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_DUMPABLE, 0)


def _close_all_but_channel(keep: list[int] | tuple[int, ...] = ()) -> None:
    """Close every descriptor but 0-2, the channel (fd 3) and ``keep`` (the read-only directory
    descriptors of :func:`reach_imports_through_descriptors`): no zygote or judge pipe stays open."""
    kept = sorted({3, *keep})
    close_range = getattr(_libc, "close_range", None)  # glibc >= 2.34, Linux >= 5.9
    if close_range is not None:
        bounds = [(low + 1, high - 1) for low, high in zip(kept, kept[1:] + [0x1_0000_0000])]
        if all(close_range(ctypes.c_uint(a), ctypes.c_uint(b), 0) == 0 for a, b in bounds if a <= b):
            return
    try:
        fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(4, 1 << 16))
    for fd in fds:
        if fd > 3 and fd not in kept:
            try:
                os.close(fd)
            except OSError:
                pass


def _node_class(namespace: dict, name: str, fallback):
    cls = namespace.get(name)
    return cls if isinstance(cls, type) else fallback


def _message(exc: BaseException) -> str:
    try:
        return str(exc)[:300]
    except BaseException:  # a hostile __str__
        return ""


def _short(exc: BaseException) -> str:
    try:
        return f"{type(exc).__name__}: {exc}"[:300]
    except BaseException:  # a hostile __str__
        return type(exc).__name__[:100]


def _serve(chan: socket.socket, source: str, entry_point: str) -> None:
    """Run the program and answer ``call`` requests until the judge hangs up (untrusted from here)."""
    import builtins

    namespace = {"__name__": "__sspo_solution__", "__builtins__": builtins}
    try:
        code = compile(source, "<solution>", "exec")
    except BaseException as exc:  # SyntaxError, ValueError (NUL bytes), MemoryError, RecursionError
        _send(chan, ["import_error", "syntax_error", _short(exc)])
        return
    try:
        exec(code, namespace)
        candidate = eval(entry_point, namespace)
        if not callable(candidate):
            raise TypeError(f"{entry_point} is not callable")
    except BaseException as exc:
        _send(chan, ["import_error", "exception", _short(exc)])
        return
    list_node = _node_class(namespace, "ListNode", codec.ListNode)
    tree_node = _node_class(namespace, "TreeNode", codec.TreeNode)
    _send(chan, ["ready"])
    while True:
        data, _ = recv_frame(chan)
        if data is None:
            return
        _op, args, kwargs = codec.loads(data)
        args = [codec.decode(a, list_node=list_node, tree_node=tree_node) for a in args]
        kwargs = {k: codec.decode(v, list_node=list_node, tree_node=tree_node) for k, v in kwargs}
        try:
            result = candidate(*args, **kwargs)
        except BaseException as exc:
            _send(chan, ["raise", type(exc).__name__[:100], _message(exc)])
            continue
        try:
            reply = codec.dumps(["ok", codec.encode(result, lenient=True)])
        except BaseException as exc:
            reply = codec.dumps(["unsupported", _short(exc)])
        send_frame(chan, reply)


def _child(chan_fd: int, spec: dict, layers: Layers, workdir: str, nproc_base: int) -> None:
    """Body of a forked child: set up, report, serve; always ends in ``os._exit``."""
    code = 70
    try:
        if chan_fd != 3:  # the channel becomes fd 3; programs' own subprocesses do not get it
            os.dup2(chan_fd, 3, inheritable=False)
        os.set_inheritable(3, False)
        chan = socket.socket(fileno=3)
        chan.setblocking(True)
        try:
            _setup_child(spec, layers, workdir, nproc_base)
        except BaseException as exc:
            _send(chan, ["setup_error", _short(exc)])
            os._exit(71)
        _send(chan, ["setup"])
        _serve(chan, spec["source"], spec["entry_point"])
        code = 0
    except BaseException:
        code = 72
    finally:
        os._exit(code)


# --- the zygote ----------------------------------------------------------------------------------


class Zygote:
    """Forks children on request, kills them on request or at their hard deadline, reaps them."""

    def __init__(self, control: socket.socket, mode: str, uid: int, nproc_bases: tuple[int, int]):
        self.control = control
        self.nproc_bases = nproc_bases  # tasks already running as the sandbox uid, and as our own uid
        self.layers = Layers(mode, uid)
        self.missing: list[str] = []
        self.children: dict[int, tuple[float, str]] = {}  # pid -> (hard deadline, work dir or "")
        self.finished: dict[int, str] = {}  # pid -> how it ended, until the judge asks
        self.dying: set[int] = set()  # killed, not reaped yet
        self.own_pid_ns = -1
        self.import_fds_ready = False
        self.import_mapping: dict[str, str] = {}  # sys.path directories children reach through descriptors
        self.import_error: tuple[str, str] | None = None  # (what failed, the directory to make readable)
        self.plan: tuple[list[str], list[tuple[str, str]]] = ([], [])  # what the probe imports from

    def prepare(self) -> None:
        """Build the read-only root and probe each layer; a missing layer is reported, not fatal.

        Fatal (``OSError``) are a child that cannot be set up at all, and one that cannot import
        from disk: a correct program must never fail because the sandbox cannot read the
        interpreter, so such a mode is refused, with what to do, rather than used.
        """
        self._import_plan()
        if self.layers.pid_namespace:
            try:
                self.own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
                _unshare(CLONE_NEWPID)
                self._restore_pid_ns()
            except OSError as exc:
                self.layers.pid_namespace = False
                self.missing.append(f"a PID namespace per program ({exc.strerror or exc})")
        if self.layers.mount_namespace:
            try:
                self.layers.root, self.layers.under_tmp = build_root()
            except OSError as exc:
                self.missing.append(f"a private read-only filesystem view ({exc})")
        if not self.layers.pid_namespace:
            _prctl(PR_SET_CHILD_SUBREAPER, 1)
        error = self._probe()
        if error and self.layers.drop_uid:  # root only inside a user namespace: no other uid is mapped
            self.layers.drop_uid, self.layers.drop_caps = False, True
            error = self._probe()
        if error and self.layers.root:  # the root was built but a child cannot use it
            self.missing.append(f"a private read-only filesystem view ({error})")
            self.layers.root = ""
            error = self._probe()
        if error:
            raise OSError(f"a sandboxed child cannot be set up: {error}")
        if self.import_error:
            who = f"uid {self.layers.uid}" if self.layers.drop_uid else f"the caller's uid {os.getuid()}"
            detail, where = self.import_error
            raise OSError(
                f"programs cannot import from disk as the sandbox user ({who}): {detail}; "
                f"make it readable by every user (chmod -R o+rX {where})"
            )
        if self.layers.drop_caps:
            self.missing.append(
                "a uid of their own (not root: programs keep the caller's uid, inside a user namespace, without capabilities)"
            )
        elif not self.layers.drop_uid:
            self.missing.append("an unprivileged uid (not root: programs run as the caller's user)")

    def _restore_pid_ns(self) -> None:
        _check(_libc.setns(self.own_pid_ns, CLONE_NEWPID), "setns")

    def _probe(self) -> str:
        """Set up one child that imports from disk as a program would; the set-up error ('' if none).

        The child lists every ``sys.path`` directory and preloaded package, imports a standard
        module that no zygote preloads and, in the heavy zygote, a submodule numpy loads lazily
        (``numpy.random``). Without a private root and with a uid of their own, children first
        reach unreachable interpreter directories through descriptors
        (:func:`reach_imports_through_descriptors`). An import failure is kept in
        ``import_error`` (``prepare`` refuses the mode): never a scorer whose correct programs fail.
        """
        if not self.layers.root and self.layers.drop_uid and not self.import_fds_ready:
            self.import_fds_ready = True
            self.import_mapping, self.layers.import_fds = reach_imports_through_descriptors()
        ours, theirs = socket.socketpair()
        spec = {"source": self._probe_source(), "entry_point": "len", "memory_mb": 1024, "timeout": 10, "tmp_mb": 1, "max_processes": 4}
        pid = self._fork(theirs.fileno(), spec)
        theirs.close()
        ours.settimeout(20)
        messages = []
        try:
            for _ in range(2):
                data, _ = recv_frame(ours)
                messages.append(codec.loads(data) if data else ["setup_error", "the child died during set-up"])
        except (OSError, codec.CodecError) as exc:
            messages.append(["setup_error", str(exc)])
        ours.close()
        self._kill(pid)
        self.finished.pop(pid, None)
        if messages[0] != ["setup"]:
            return str(messages[0][-1])
        self.import_error = None
        if messages[-1] != ["ready"]:
            detail = str(messages[-1][-1])[:300]
            where = re.search(r"\[\[(.*?)\]\]", detail)
            self.import_error = (detail.replace("[[", "").replace("]]", ""), where.group(1) if where else sys.prefix)
        return ""

    def _import_plan(self) -> None:
        """What the probe imports from, decided before the private root covers ``/tmp`` here:
        every ``sys.path`` directory and preloaded package of the interpreter (what the private root
        holds: no editable source trees), a standard module no zygote preloads, and, in the heavy
        zygote, the lazily loaded submodule of each ``HEAVY`` package (:data:`HEAVY_PROBES`)."""
        import importlib.util

        roots = interpreter_paths()

        def the_interpreters(path) -> bool:
            real = os.path.realpath(path) if isinstance(path, str) and path else ""
            return bool(real) and os.path.isdir(real) and any(real == r or real.startswith(r + os.sep) for r in roots)

        dirs = [p for p in sys.path if the_interpreters(p)]
        for name in PREIMPORTED + list(HEAVY):
            search = getattr(sys.modules.get(name), "__path__", None)
            if isinstance(search, list):
                dirs += [p for p in search if the_interpreters(p) and p not in dirs]
        fresh = next((n for n in DISK_PROBES if n not in sys.modules), None)
        imports = []
        for name in [fresh] + [HEAVY_PROBES.get(n) for n in HEAVY if n in sys.modules]:
            if name and name not in sys.modules:
                found = importlib.util.find_spec(name)
                if found is not None and found.origin:
                    imports.append((name, os.path.dirname(found.origin)))
        self.plan = (dirs, imports)

    def _probe_source(self) -> str:
        """The probe program: each failure raises naming the directory (as ``[[dir]]``) to fix."""
        dirs, imports = self.plan
        return (
            "import importlib, os\n"
            f"for path, shown in {[(_moved(d, self.import_mapping), d) for d in dirs]!r}:\n"
            "    try:\n"
            "        os.listdir(path)\n"
            "    except OSError as exc:\n"
            "        raise OSError(f'cannot list [[{shown}]] ({exc.strerror})') from None\n"
            f"for name, shown in {imports!r}:\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except Exception as exc:\n"
            "        raise ImportError(f'cannot import {name} from [[{shown}]] ({type(exc).__name__}: {exc})') from None\n"
        )

    def _fork(self, chan_fd: int, spec: dict) -> int:
        workdir = ""
        if not self.layers.root:
            import tempfile

            workdir = tempfile.mkdtemp(prefix="sspo-program-")
            if self.layers.drop_uid:
                try:
                    os.chown(workdir, self.layers.uid, self.layers.uid)
                except OSError:  # the uid is not mapped here: the child's switch fails and says so
                    pass
        if self.layers.pid_namespace:
            _unshare(CLONE_NEWPID)  # the next child is init of a new PID namespace
        try:
            pid = os.fork()
        except OSError:
            pid = -1
        if pid == 0:
            _child(chan_fd, spec, self.layers, workdir, self.nproc_bases[0 if self.layers.drop_uid else 1])
        if self.layers.pid_namespace:
            self._restore_pid_ns()  # children after this one get their own namespace again
        if pid < 0:
            raise OSError("fork failed")
        self.children[pid] = (time.monotonic() + float(spec["timeout"]) + HARD_GRACE_S, workdir)
        return pid

    def _kill(self, pid: int, wait: bool = True) -> None:
        """SIGKILL a child and everything it started, remove its work directory.

        With a PID namespace the child is its init: the kernel kills every member. ``wait=False``
        then returns at once (a SIGKILLed process runs no more code) and reaps it later; the judge
        waits only when it wants the exit status of a program that crashed.
        """
        if pid not in self.children:
            return
        _deadline, workdir = self.children.pop(pid)
        if self.layers.pid_namespace:
            _signal(pid, signal.SIGKILL)
            if wait:
                self._reap(pid)
            else:
                self.dying.add(pid)
        else:
            _signal(-pid, signal.SIGKILL)  # its process group
            _signal(pid, signal.SIGKILL)
            self._reap(pid)
            self._kill_orphans()
        if workdir:
            _remove_tree(workdir)

    def _reap(self, pid: int) -> None:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:
                self.finished.setdefault(pid, "gone")
                return
            except InterruptedError:
                continue
            self.finished[pid] = _describe(status)
            return

    def _kill_orphans(self) -> None:
        """Without a PID namespace: kill descendants re-parented to us (we are a subreaper)."""
        for _ in range(10_000):
            orphans = [p for p in _children() if p not in self.children]
            if not orphans:
                return
            for pid in orphans:
                _signal(pid, signal.SIGKILL)
            for pid in orphans:
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass

    def _reap_finished(self) -> None:
        while self.children or self.dying:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.dying.clear()
                return
            if pid == 0:
                return
            self.dying.discard(pid)
            if pid in self.children:
                self.finished[pid] = _describe(status)
                self._kill(pid)  # its descendants, its work directory

    def serve(self) -> None:
        import selectors

        selector = selectors.DefaultSelector()
        selector.register(self.control, selectors.EVENT_READ)
        while True:
            now = time.monotonic()
            for pid, (deadline, _) in list(self.children.items()):
                if now >= deadline:
                    self._kill(pid)
            wait = min((d for d, _ in self.children.values()), default=now + 1.0) - now
            if self.dying:
                wait = 0.005
            if selector.select(min(max(wait, 0.0), 0.2) if self.children or self.dying else 1.0):
                data, fds = recv_frame(self.control, max_fds=1)
                if data is None:  # the judge is gone: so is everything we started
                    for pid in list(self.children):
                        self._kill(pid)
                    if not self.layers.pid_namespace:
                        self._kill_orphans()
                    return
                self._handle(codec.loads(data), fds)
            self._reap_finished()

    def _handle(self, request: dict, fds: list[int]) -> None:
        op = request.get("op")
        if op == "spawn" and len(fds) == 1:
            try:
                pid = self._fork(fds[0], request)
                reply = {"op": "spawned", "pid": pid}
            except OSError as exc:
                reply = {"op": "error", "message": f"fork failed: {exc}"}
            finally:
                os.close(fds[0])
        elif op == "kill":
            pid, wait = int(request["pid"]), bool(request.get("wait", True))
            self._kill(pid, wait)
            reply = {"op": "killed", "pid": pid, "how": self.finished.pop(pid, "gone" if wait else "killed by SIGKILL")}
        else:
            for fd in fds:
                os.close(fd)
            reply = {"op": "error", "message": f"bad request {op!r}"}
        _send(self.control, reply)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _children() -> list[int]:
    pids: list[int] = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids.extend(int(p) for p in f.read().split())
        except OSError:
            pass
    return pids


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exit status {os.WEXITSTATUS(status)}"


def _remove_tree(path: str) -> None:
    """Remove a work directory whatever modes the program left on it."""
    import shutil

    def retry(func, target, _exc):
        try:
            os.chmod(os.path.dirname(target), 0o700)
            os.chmod(target, 0o700)
            func(target)
        except OSError:
            pass

    shutil.rmtree(path, onexc=retry) if sys.version_info >= (3, 12) else shutil.rmtree(path, onerror=retry)


def _preimport(heavy: bool) -> None:
    import importlib

    for name in PREIMPORTED + list(HEAVY if heavy else ()):
        try:
            importlib.import_module(name)
        except Exception:  # not installed here: programs importing it fail on their own
            pass


def main(argv: list[str]) -> None:
    control = socket.socket(fileno=int(argv[1]))
    control.setblocking(True)
    mode, uid, heavy = argv[2], int(argv[3]), argv[5] == "heavy"
    nproc_bases = tuple(int(n) for n in argv[4].split(","))
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    if mode == "process":
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    _preimport(heavy)
    os.environ.clear()
    zygote = Zygote(control, mode, uid, nproc_bases)
    try:
        zygote.prepare()
    except OSError as exc:
        _send(control, {"op": "failed", "message": str(exc)})
        return
    vm_kb = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                vm_kb = int(line.split()[1])
    _send(control, {"op": "ready", "layers": zygote.layers.describe(), "missing": zygote.missing, "vm_kb": vm_kb})
    gc.collect()
    gc.freeze()  # children's collections skip (and so never copy-on-write) the zygote's objects
    zygote.serve()


if __name__ == "__main__":
    main(sys.argv)
