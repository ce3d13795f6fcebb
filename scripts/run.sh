#!/usr/bin/env bash
# One entry point for a fresh machine.
#   bash scripts/run.sh demo [args]   set up .venv, then run `sspo demo` (tiny model, no downloads)
#   bash scripts/run.sh test [args]   set up .venv, then ruff + pytest
#   bash scripts/run.sh setup         only the set-up
# Set-up is idempotent and skipped when pyproject.toml and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv="$root/.venv"
py="$venv/bin/python"
stamp="$venv/.sspo-setup"
want=$(cat pyproject.toml scripts/run.sh | sha256sum | cut -d' ' -f1)

setup() {
  if [ ! -x "$py" ]; then
    echo "[setup] creating virtual environment .venv"
    python3 -m venv "$venv"
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[setup] installing torch 2.13.0 first (CPU wheel here), then sspo with its extras"
    "$py" -m pip install -q --upgrade pip
    "$py" -m pip install -q torch==2.13.0
    "$py" -m pip install -q -e ".[dev,trl,verl]"
    # verl without its dependency list: that pins torch 2.11 and CUDA-only wheels. The `verl` extra above
    # brings what `verl.trainer.ppo.core_algos` imports (and transformers <5.11, which verl requires).
    "$py" -m pip install -q --no-deps verl==0.9.1
    echo "$want" > "$stamp"
  fi
}

cmd=${1:-}
shift || true
case "$cmd" in
  setup) setup ;;
  demo) setup; exec "$venv/bin/sspo" demo "$@" ;;
  test)
    setup
    "$venv/bin/ruff" check src tests benchmarks
    exec "$py" -m pytest "$@" ;;
  *) echo "usage: bash scripts/run.sh {demo|test|setup} [args]" >&2; exit 2 ;;
esac
