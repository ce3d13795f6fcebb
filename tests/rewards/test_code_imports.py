"""Correct programs import from disk in every isolation mode the scorer accepts, or it refuses.

The sandbox runs programs as a uid of their own. Without a private root (``isolation='process'``)
that uid would not reach an interpreter or virtual environment below a directory it cannot traverse
(``/root``, a private home, a ``mktemp -d`` folder): only the preloaded modules would import and
a correct program would score 0. These tests run the scorer with the current environment and with
a virtual environment built below a ``0700`` directory (a small package of its own, and numpy
linked into it), in each mode; a mode whose programs cannot import from disk must be refused at
start-up with one line naming the directory and the fix, never used.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "code_imports_run.py")
MODES = ("auto", "process")
PROGRAMS = [
    (
        "numpy",  # numpy.random is loaded lazily, from disk, after the sandbox is set up
        "import numpy as np\ndef add(a, b):\n    m = np.random.default_rng(0).random((50, 50))\n"
        "    assert np.allclose(np.linalg.inv(m) @ m, np.eye(50))\n    return int(np.add(a, b))\n",
    ),
    (
        "stdlib_from_disk",  # modules and a codec no zygote preloads
        "import colorsys\nimport xml.etree.ElementTree as ET\ndef add(a, b):\n"
        "    assert colorsys.rgb_to_hsv(1, 0, 0)[0] == 0 and ET.fromstring('<a>1</a>').text == '1'\n"
        "    assert '\\u00e9'.encode('cp1252') == b'\\xe9'\n    return a + b\n",
    ),
]
TINY = ("own_package", "import sspo_tiny_pkg\ndef add(a, b):\n    return sspo_tiny_pkg.lazy.plus(a, b)\n")
TINY_INIT = (
    "import importlib\n\ndef __getattr__(name):\n    if name == 'lazy':\n"
    "        return importlib.import_module(__name__ + '.lazy')\n    raise AttributeError(name)\n"
)


def run_scorer(python: str, programs: list[tuple[str, str]], where: tuple[str, ...] = ()) -> dict:
    config = {"modes": list(MODES), "programs": programs, "where": list(where)}
    done = subprocess.run([python, RUNNER, json.dumps(config)], capture_output=True, text=True, timeout=300)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1])


def assert_passes_or_refuses(outcome: dict, mode: str, refused_ok: bool = True) -> None:
    """Every program scores 1.0, or (where allowed) the scorer refused the mode in one clear line."""
    if "refused" in outcome:
        message = outcome["refused"]
        assert refused_ok, message
        assert f"isolation={mode!r}" in message and "cannot import from disk" in message, message
        assert "chmod -R o+rX" in message and "\n" not in message, message
        assert outcome["grade"]["status"] == "sandbox_error" and "cannot import from disk" in outcome["grade"]["detail"]
        return
    for name, grade in outcome["grades"].items():
        assert grade["score"] == 1.0, (mode, name, grade, outcome["layers"])


@pytest.mark.parametrize("mode", MODES)
def test_correct_programs_import_from_disk_in_this_environment(mode, _this_environment):
    assert_passes_or_refuses(_this_environment[mode], mode)


@pytest.fixture(scope="module")
def _this_environment() -> dict:
    return run_scorer(sys.executable, PROGRAMS)


def _open_to_others(root: str, skip: tuple[str, ...]) -> None:
    """o+rX on what the test created (never through a link, never on the linked numpy)."""
    for path, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.join(path, d) not in skip and not os.path.islink(os.path.join(path, d))]
        for name in [*dirs, *files, "."]:
            full = os.path.normpath(os.path.join(path, name))
            if full in skip or os.path.islink(full):
                continue
            mode = os.lstat(full).st_mode
            os.chmod(full, mode | stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) else 0))


def _readable_by_others(root: str) -> bool:
    for path, _dirs, files in os.walk(root):
        for name in [".", *files]:
            mode = os.stat(os.path.join(path, name)).st_mode
            if not mode & stat.S_IROTH or (stat.S_ISDIR(mode) and not mode & stat.S_IXOTH):
                return False
    return True


def _link_tree(source: str, target: str) -> None:
    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:  # another file system
            shutil.copy2(src, dst)

    shutil.copytree(source, target, symlinks=True, copy_function=link)


@pytest.fixture
def private_venv(tmp_path):
    """A virtual environment below a 0700 directory, readable inside, that runs this checkout's scorer.

    Its site-packages holds a small package (``sspo_tiny_pkg``, with a lazily loaded submodule) and,
    where this environment's numpy is readable by every user, numpy hard-linked from it; a ``.pth``
    adds this checkout's ``src`` and this environment's site-packages after them.
    """
    numpy = pytest.importorskip("numpy")
    private = tmp_path / "private"
    private.mkdir()
    venv = private / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    package = site / "sspo_tiny_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(TINY_INIT)
    (package / "lazy.py").write_text("def plus(a, b):\n    return a + b\n")
    numpy_dir = os.path.dirname(numpy.__file__)
    ours_site = os.path.dirname(numpy_dir)
    linked = []
    if _readable_by_others(numpy_dir):
        for name in ("numpy", "numpy.libs"):
            if os.path.isdir(os.path.join(ours_site, name)):
                _link_tree(os.path.join(ours_site, name), str(site / name))
                linked.append(str(site / name))
    import sspo

    src = os.path.dirname(os.path.dirname(os.path.abspath(sspo.__file__)))
    (site / "zz_sspo_under_test.pth").write_text(f"{src}\n{ours_site}\n")
    _open_to_others(str(venv), tuple(linked))
    private.chmod(0o700)
    yield {"python": str(venv / "bin" / "python"), "private": str(private), "site": str(site), "numpy": bool(linked)}
    private.chmod(0o700)
    site.chmod(0o755)


def test_a_venv_below_a_private_directory_imports_in_every_mode(private_venv):
    report = run_scorer(private_venv["python"], [*PROGRAMS, TINY], where=("numpy", "sspo_tiny_pkg"))
    assert report["modules"]["sspo_tiny_pkg"].startswith(private_venv["private"] + os.sep)
    if private_venv["numpy"]:
        assert report["modules"]["numpy"].startswith(private_venv["private"] + os.sep)
    for mode in MODES:
        assert_passes_or_refuses(report[mode], mode, refused_ok=False)


def test_a_mode_whose_programs_cannot_import_from_disk_is_refused(private_venv):
    """A site-packages directory that other users cannot list: refused where programs run as such a
    user (root drops to a uid of their own), accepted where they keep the caller's uid."""
    os.chmod(private_venv["site"], 0o700)
    report = run_scorer(private_venv["python"], [TINY])
    for mode in MODES:
        assert_passes_or_refuses(report[mode], mode)
    if os.geteuid() == 0:  # without namespaces, programs run as a uid of their own: refused
        assert "refused" in report["process"], report["process"]
        assert f"chmod -R o+rX {private_venv['site']}" in report["process"]["refused"]
