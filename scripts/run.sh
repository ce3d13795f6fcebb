#!/usr/bin/env bash
# One entry point for a fresh machine.
#   bash scripts/run.sh demo [args]   set up .venv, then run `sspo demo` (tiny model, no downloads)
#   bash scripts/run.sh test [args]   set up .venv, then ruff + pytest
#   bash scripts/run.sh setup         only the set-up
#   bash scripts/run.sh print-setup   print the install commands set-up runs, run nothing
# Set-up is idempotent and skipped when pyproject.toml, this script and SSPO_TORCH_INDEX are unchanged.
#
# torch comes first, pinned, so that no other package picks a torch build for us. Which build pip takes
# for `torch==2.13.0` depends on where pip looks: from the public PyPI it is the CUDA build on Linux
# x86_64 (several GB with its nvidia-* wheels) and the CPU build on macOS and Windows; a machine whose
# pip is configured with local CPU wheels takes those. On a CPU-only Linux machine with public pip
# defaults, name PyTorch's CPU wheel index to skip the CUDA build:
#   SSPO_TORCH_INDEX=https://download.pytorch.org/whl/cpu bash scripts/run.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv="$root/.venv"
py="$venv/bin/python"
stamp="$venv/.sspo-setup"
want=$( (cat pyproject.toml scripts/run.sh; echo "${SSPO_TORCH_INDEX:-}") | sha256sum | cut -d' ' -f1)
torch_args=(torch==2.13.0)
[ -n "${SSPO_TORCH_INDEX:-}" ] && torch_args+=(--index-url "$SSPO_TORCH_INDEX")

step() {  # run one set-up command, or only print it (print-setup)
  if [ "${dry:-0}" = 1 ]; then echo "$*"; else "$@"; fi
}

install() {
  step "$py" -m pip install -q --upgrade pip
  step "$py" -m pip install -q "${torch_args[@]}"
  step "$py" -m pip install -q -e ".[dev,trl,verl]"
  # verl without its dependency list: that pins torch 2.11 and CUDA-only wheels. The `verl` extra above
  # brings what `verl.trainer.ppo.core_algos` imports (and transformers <5.11, which verl requires).
  step "$py" -m pip install -q --no-deps verl==0.9.1
}

setup() {
  if [ ! -x "$py" ]; then
    echo "[setup] creating virtual environment .venv"
    python3 -m venv "$venv"
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[setup] installing ${torch_args[*]} first, then sspo with its extras"
    install
    echo "$want" > "$stamp"
  fi
}

cmd=${1:-}
shift || true
case "$cmd" in
  setup) setup ;;
  print-setup) echo "python3 -m venv $venv"; dry=1 install ;;
  demo) setup; exec "$venv/bin/sspo" demo "$@" ;;
  test)
    setup
    "$venv/bin/ruff" check src tests benchmarks
    exec "$py" -m pytest "$@" ;;
  *) echo "usage: bash scripts/run.sh {demo|test|setup|print-setup} [args]" >&2; exit 2 ;;
esac
