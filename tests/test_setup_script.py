"""The set-up of `scripts/run.sh` installs what the README says it does."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def print_setup(**env) -> list[str]:
    out = subprocess.run(["bash", "scripts/run.sh", "print-setup"], cwd=ROOT, capture_output=True, text=True,
                         env={**{k: v for k, v in os.environ.items() if k != "SSPO_TORCH_INDEX"}, **env}, check=True)  # fmt: skip
    return out.stdout.splitlines()


def test_torch_is_installed_first_pinned_and_from_the_configured_sources_by_default():
    lines = print_setup()
    pips = [line for line in lines if " pip install " in line and "--upgrade pip" not in line]
    assert pips[0].endswith("pip install -q torch==2.13.0")  # first, pinned, no index of our own
    assert "-e .[dev,trl,verl]" in pips[1] and pips[2].endswith("--no-deps verl==0.9.1")


def test_a_cpu_wheel_index_can_be_named():
    url = "https://download.pytorch.org/whl/cpu"
    torch_line = next(line for line in print_setup(SSPO_TORCH_INDEX=url) if "torch==" in line)
    assert torch_line.endswith(f"torch==2.13.0 --index-url {url}")
    readme = (ROOT / "README.md").read_text()
    assert f"SSPO_TORCH_INDEX={url}" in readme
