"""The verl launch scripts in examples/verl: the exact ``main_ppo`` command each one runs, checked against
verl 0.9.1 as ``main_ppo`` reads it.

Each script runs with a shell function standing in for ``python3``, which prints the arguments. They are
composed with Hydra from verl's ``ppo_trainer`` config, as ``main_ppo`` composes them (an unknown key
fails), checked by verl's ``validate_config``, the actor config is built as verl's workers build it, and
the plug-in reads the objective's hyperparameters from it. The modules ``main_ppo`` imports on its
default path are checked in a fresh interpreter (``conftest.py``).
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
VERL_DIR = ROOT / "examples" / "verl"
SETUPS = ("gsm8k", "deepmath", "leetcode")
OBJECTIVES = ("sspo", "sspo_grpo", "sspo_gspo", "sspo_gspo_token", "sspo_gmpo", "sspo_sapo", "sspo_cispo")
PAPER_HYPERPARAMETERS = {  # docs/objectives.md's hyperparameters, as the plug-in must read them from each script
    "sspo": {"tau_pos": 1.0, "tau_neg": 1.05},
    "sspo_sapo": {"tau_pos": 1.0, "tau_neg": 1.05},
    "sspo_grpo": {"eps_low": 0.2, "eps_high": 0.28},
    "sspo_gspo": {"eps_low": 3e-4, "eps_high": 4e-4},
    "sspo_gspo_token": {"eps_low": 3e-4, "eps_high": 4e-4},
    "sspo_gmpo": {"clip_low": 0.4, "clip_high": 0.4},
    "sspo_cispo": {"ratio_max": 5.0},
}
needs_verl = pytest.mark.skipif(importlib.util.find_spec("verl") is None, reason="verl is not installed")


def script_command(setup: str, loss_mode: str, *extra: str) -> list[str]:
    """The arguments ``examples/verl/<setup>/<loss_mode>.sh extra...`` passes to ``python3``."""
    stand_in = 'python3() { printf "%s\\n" "$@"; }; export -f python3; bash "$@"'
    script = VERL_DIR / setup / f"{loss_mode}.sh"
    env = {"DATA_DIR": "/data", "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/root"}
    out = subprocess.run(["bash", "-c", stand_in, "bash", str(script), *extra], capture_output=True, text=True,
                         check=True, env=env)  # fmt: skip
    return out.stdout.splitlines()


def compose_main_ppo(overrides: list[str]):
    """verl's ``ppo_trainer`` config with ``overrides``, composed as ``main_ppo``'s ``@hydra.main`` does."""
    import verl
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(verl.__file__).parent / "trainer/config"), version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


def test_one_script_per_objective_and_setup():
    for setup in SETUPS:
        scripts = sorted(p.stem for p in (VERL_DIR / setup).glob("*.sh"))
        assert scripts == sorted(OBJECTIVES)
        for name in scripts:
            assert f"launch {setup} {name} " in (VERL_DIR / setup / f"{name}.sh").read_text()


@needs_verl
@pytest.mark.filterwarnings("ignore:Disabled critic")  # verl's note that GRPO needs no critic
@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("loss_mode", OBJECTIVES)
def test_script_runs_main_ppo_with_a_config_verl_accepts(setup, loss_mode):
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    import sspo
    import sspo.integrations.verl as sv

    argv = script_command(setup, loss_mode)
    assert argv[:2] == ["-m", "verl.trainer.main_ppo"]
    config = compose_main_ppo(argv[2:])  # raises on a key verl's config does not have
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    ref = config.actor_rollout_ref
    assert ref.actor.policy_loss.loss_mode == loss_mode and ref.model.external_lib == "sspo.integrations.verl"
    assert config.algorithm.adv_estimator == "grpo" and ref.rollout.n > 1  # group sampling
    assert config.data.train_batch_size == 4 * ref.actor.ppo_mini_batch_size  # 4 updates per rollout batch
    assert Path(config.reward.custom_reward_function.path) == VERL_DIR / "reward.py"

    actor = omega_conf_to_dataclass(ref.actor)  # as verl's workers build it
    objective = sv.verl_names()[loss_mode][0]
    assert sv.hyperparameters_from_config(objective, actor) == pytest.approx(PAPER_HYPERPARAMETERS[loss_mode])
    assert actor.loss_agg_mode == sspo.get_objective(objective).default_agg_mode
    mask = torch.tensor([[True, True, False], [True, True, True]])
    log_probs = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -1.5, -1.0]])
    loss, _ = sv.REGISTERED[loss_mode](log_probs - 0.1, log_probs, torch.tensor([[1.0] * 3, [-1.0] * 3]) * mask,
                                       mask, actor.loss_agg_mode, actor)  # fmt: skip
    assert torch.isfinite(loss)


def launch_command(setup: str, loss_mode: str) -> list[str]:
    """The arguments ``source common.sh; launch <setup> <loss_mode>`` passes to ``python3``."""
    snippet = f'source {VERL_DIR / "common.sh"}; python3() {{ printf "%s\\n" "$@"; }}; launch {setup} {loss_mode}'
    env = {"DATA_DIR": "/data", "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/root"}
    return subprocess.run(["bash", "-c", snippet], capture_output=True, text=True, check=True, env=env).stdout.splitlines()


@needs_verl
def test_every_gate_launches_with_the_sspo_settings():
    """``launch <setup> sspo_<gate>`` (the gate variants, no script of their own) for every registered gate."""
    import sspo
    import sspo.integrations.verl as sv

    gates = [name for name, (objective, fixed) in sv.verl_names().items() if objective == "sspo"]
    assert len(gates) == len(sspo.GATES)
    for loss_mode in gates:
        config = compose_main_ppo(launch_command("gsm8k", loss_mode)[2:])
        actor = config.actor_rollout_ref.actor
        assert actor.policy_loss.loss_mode == loss_mode and actor.loss_agg_mode == "seq-mean-token-mean"
        assert (actor.tau_pos, actor.tau_neg) == (1.0, 1.05)


LAUNCH_HYPERPARAMETERS = {  # loss modes without a script of their own: what `launch` gives the plug-in
    "sspo_vespo": {},  # no actor field: the objective's defaults (others: sspo.integrations.verl.register)
    "sspo_m2po": {},
    "sspo_luspo": {"eps_low": 3e-4, "eps_high": 4e-4},
    "sspo_dppo_tv": {"clip_ratio": 0.15, "clip_ratio_low": 0.15, "clip_ratio_high": 0.15, "clip_ratio_c": 1e4},
    "sspo_dppo_kl": {"clip_ratio": 0.05, "clip_ratio_low": 0.05, "clip_ratio_high": 0.05, "clip_ratio_c": 1e4},
}


@needs_verl
@pytest.mark.filterwarnings("ignore:Disabled critic")
def test_every_other_loss_mode_launches_with_its_objectives_settings():
    """``launch <setup> <loss_mode>`` for every registered loss mode that is neither a script's nor a gate
    variant's: the objective's aggregation mode, and the hyperparameters its defaults say (for DPPO the
    authors' verl settings, not verl's actor defaults δ = 0.2, ``clip_ratio_c`` = 3)."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    import sspo
    import sspo.integrations.verl as sv

    others = {name: objective for name, (objective, _) in sv.verl_names().items()
              if objective != "sspo" and name not in OBJECTIVES}  # fmt: skip
    assert set(others) == set(LAUNCH_HYPERPARAMETERS)
    for loss_mode, objective in others.items():
        config = compose_main_ppo(launch_command("gsm8k", loss_mode)[2:])
        validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
        actor = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
        assert actor.policy_loss.loss_mode == loss_mode
        assert actor.loss_agg_mode == sspo.get_objective(objective).default_agg_mode
        hp = sv.hyperparameters_from_config(objective, actor)
        assert hp == pytest.approx(LAUNCH_HYPERPARAMETERS[loss_mode])
        defaults = sspo.get_objective(objective).defaults
        for key, value in hp.items():  # the objective's defaults (DPPO's None per side: clip_ratio)
            assert value == pytest.approx(defaults["clip_ratio"] if defaults[key] is None else defaults[key]), key
        mask = torch.tensor([[True, True, False], [True, True, True]])
        log_probs = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -1.5, -1.0]])
        loss, _ = sv.REGISTERED[loss_mode](log_probs - 0.1, log_probs, torch.tensor([[1.0] * 3, [-1.0] * 3]) * mask,
                                           mask, actor.loss_agg_mode, actor)  # fmt: skip
        assert torch.isfinite(loss)


@needs_verl
def test_extra_arguments_override_the_scripts_settings():
    config = compose_main_ppo(script_command("gsm8k", "sspo_gspo", "trainer.total_epochs=3")[2:])
    assert config.trainer.total_epochs == 3


@needs_verl
def test_verl_loads_the_scripts_reward_function():
    from verl.trainer.ppo.reward import get_custom_reward_fn

    score = get_custom_reward_fn(compose_main_ppo(script_command("deepmath", "sspo")[2:]))
    assert score("deepmath", "so \\boxed{\\frac{1}{2}}", "0.5") == 1.0
    assert score("openai/gsm8k", "3 + 4 = 7\n#### 7", "7") == 1.0
    assert score("openai/gsm8k", "#### 8", "7") == 0.0
    truth = json.dumps({"tests": "def check(candidate):\n    assert candidate(a=2, b=3) == 5\n",
                        "entry_point": "Solution().add", "prefix": "from typing import *\n"})  # fmt: skip
    right = "```python\nclass Solution:\n    def add(self, a: int, b: int) -> int:\n        return a + b\n```"
    assert score("newfacade/LeetCodeDataset", right, truth) == 1.0
    assert score("newfacade/LeetCodeDataset", right.replace("a + b", "a * b"), truth) == 0.0


def test_main_ppo_imports_what_its_default_path_needs(fresh_verl):
    """``trainer.use_v1=True`` (verl's default) imports ``transfer_queue``; engines and workers import
    ``peft``, ``fastapi``, ``uvicorn``, ``torchdata``, ``cachetools``: the ``verl`` extra brings them."""
    assert fresh_verl["import_failures"] == {}
    assert fresh_verl["trainer_cls"] == "PPOTrainerSync"


def _example_modules():
    sys.path.insert(0, str(VERL_DIR))
    try:
        import preprocess
        import reward
    finally:
        sys.path.remove(str(VERL_DIR))
    return preprocess, reward


LEETCODE_ROWS = [  # LeetCodeDataset's fields (GitHub layout: difficulty under meta)
    {"task_id": "toy-add", "query": "Add two numbers.\n```python\nclass Solution:\n    def add(self, a: int, b: int) -> int:\n```",
     "prompt": "from typing import *\n", "entry_point": "Solution().add", "meta": {"difficulty": "Easy"},
     "completion": "class Solution:\n    def add(self, a: int, b: int) -> int:\n        return a + b\n",
     "test": "def check(candidate):\n    assert candidate(a=1, b=2) == 3\n    assert candidate(a=-1, b=1) == 0\n"},
]  # fmt: skip


def test_leetcode_rows_for_verl_are_scored_by_running_their_tests(tmp_path):
    """``preprocess.py --only leetcode`` from a local copy: the prompt holds the problem, never the reference;
    the parquet round-trips; ``reward.py`` passes the reference and fails a wrong program."""
    preprocess, reward = _example_modules()
    source = tmp_path / "code"
    source.mkdir()
    for split in ("train", "test"):
        (source / f"leetcode-{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in LEETCODE_ROWS))
    out = tmp_path / "data"
    preprocess.main(["--out", str(out), "--only", "leetcode", "--leetcode-path", str(source)])
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "leetcode" / "train.parquet").to_pylist()
    assert len(rows) == 1 and rows[0]["data_source"] == reward.CODE_SOURCES[0] and rows[0]["ability"] == "code"
    prompt = rows[0]["prompt"][0]["content"]
    assert "Add two numbers." in prompt and "```python" in prompt and "return a + b" not in prompt
    truth = rows[0]["reward_model"]["ground_truth"]
    reference = f"```python\n{LEETCODE_ROWS[0]['completion']}```"
    assert reward.compute_score(rows[0]["data_source"], reference, truth) == 1.0
    assert reward.compute_score(rows[0]["data_source"], reference.replace("a + b", "a - b"), truth) == 0.0
    assert reward.compute_score(rows[0]["data_source"], "import os\nos._exit(0)", truth) == 0.0


def test_reward_and_preprocessing_helpers():
    preprocess, reward = _example_modules()
    assert preprocess.gsm8k_answer("so 3 + 4 = 7\n#### 1,234") == "1234"
    assert reward.last_boxed("a \\boxed{\\frac{1}{2}} b") == "\\frac{1}{2}"
    assert reward.compute_score("deepmath", "thus \\boxed{\\frac{1}{2}}", "0.5") == 1.0
    assert reward.compute_score("deepmath", "thus \\boxed{3}", "4") == 0.0
    assert reward.compute_score("deepmath", "no box", "4") == 0.0
