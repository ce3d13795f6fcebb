"""A fresh interpreter set up as verl sets up each of its workers, shared by the verl tests."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

FRESH_VERL = """
import importlib, json, sys, verl
from verl.trainer.ppo.core_algos import get_policy_loss_fn
out = {"loaded": "sspo.integrations.verl" in sys.modules,
       "sspo": get_policy_loss_fn("sspo").__module__, "sspo_gspo_token": get_policy_loss_fn("sspo_gspo_token").__name__}

# verl's FSDP engine runs apply_monkey_patch on every model it builds (here beside the installed TRL)
from verl.models.transformers.monkey_patch import apply_monkey_patch
from sspo.models.tiny import TinyModelConfig, build_char_tokenizer, build_tiny_model
model = build_tiny_model(build_char_tokenizer(), TinyModelConfig(hidden_size=16, num_layers=1, num_heads=2,
                                                                 num_kv_heads=1, intermediate_size=16))
try:
    apply_monkey_patch(model, use_remove_padding=False)
    out["monkey_patch"] = "ok"
except ImportError as err:
    out["monkey_patch"] = f"ImportError: {err}"

# what `python -m verl.trainer.main_ppo` imports on its default path (trainer.use_v1=True) before it needs
# a GPU (the vLLM rollout server is left out)
failed = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as err:
        failed[name] = repr(err)
if not failed:
    from verl.trainer.ppo.v1 import AgentLoopManagerTQ, get_trainer_cls
    out["trainer_cls"] = get_trainer_cls("sync").__name__
out["import_failures"] = failed
print(json.dumps(out))
"""

MAIN_PPO_MODULES = (
    "verl.trainer.main_ppo",
    "transfer_queue",
    "verl.trainer.ppo.v1",
    "verl.trainer.ppo.reward",
    "verl.experimental.agent_loop.single_turn_agent_loop",
    "verl.experimental.reward_loop.reward_loop",
    "verl.utils.dataset.rl_dataset",
    "verl.utils.tracking",
    "verl.workers.engine_workers",
    "verl.workers.engine.fsdp.transformer_impl",
)
"""Modules ``main_ppo`` and its Ray workers import before the first GPU-only one."""


@pytest.fixture(scope="session")
def fresh_verl() -> dict:
    """What a fresh interpreter with ``VERL_USE_EXTERNAL_MODULES=sspo.integrations.verl`` sees (as every verl
    worker): the registry, verl's model patch beside TRL, and the ``main_ppo`` import chain."""
    if importlib.util.find_spec("verl") is None:
        pytest.skip("verl is not installed")
    env = {**os.environ, "VERL_USE_EXTERNAL_MODULES": "sspo.integrations.verl", "VERL_USE_EXTERNAL_PLUGINS": "none"}
    out = subprocess.run([sys.executable, "-c", FRESH_VERL, *MAIN_PPO_MODULES], env=env, capture_output=True,
                         text=True, timeout=180)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
