"""The launch scripts in examples/: every verl override key exists in verl's config schema, every
objective has a script, and the per-objective hyperparameters reach the plug-in as the SPEC's."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VERL_DIR = ROOT / "examples" / "verl"
OBJECTIVES = ("sspo", "sspo_grpo", "sspo_gspo", "sspo_gspo_token", "sspo_gmpo", "sspo_sapo", "sspo_cispo")
needs_verl = pytest.mark.skipif(importlib.util.find_spec("verl") is None, reason="verl is not installed")


def bash(snippet: str) -> list[str]:
    """Run ``snippet`` after sourcing common.sh; the hydra overrides it prints, one per item."""
    out = subprocess.run(["bash", "-c", f"source {VERL_DIR / 'common.sh'}; {snippet}"], capture_output=True,
                         text=True, check=True, env={"DATA_DIR": "/data", "PATH": "/usr/bin:/bin"})  # fmt: skip
    return out.stdout.split()


def overrides(setup: str, loss_mode: str) -> dict[str, str]:
    items = bash(f"setup_overrides {setup}; objective_overrides {loss_mode}")
    launch = re.findall(
        r"^\s+([a-z_]+(?:\.[a-z_0-9]+)+)=(\S+) \\$", (VERL_DIR / "common.sh").read_text(), re.M
    )
    pairs = [item.split("=", 1) for item in items] + launch
    return {k: v.strip('"') for k, v in pairs}


@needs_verl
@pytest.mark.parametrize("setup", ["gsm8k", "deepmath"])
def test_every_override_key_exists_in_verl_ppo_trainer_config(setup):
    from omegaconf import OmegaConf

    schema = OmegaConf.load(
        Path(importlib.util.find_spec("verl").origin).parent / "trainer/config/_generated_ppo_trainer.yaml"
    )

    def has_key(key: str) -> bool:  # a declared key, even one verl leaves MISSING (???) for the user
        parent, _, last = key.rpartition(".")
        node = OmegaConf.select(schema, parent, default=None)
        return OmegaConf.is_dict(node) and last in node.keys()

    for loss_mode in OBJECTIVES:
        keys = overrides(setup, loss_mode)
        unknown = [k for k in keys if not has_key(k)]
        assert not unknown, f"{setup}/{loss_mode}: keys not in verl's config: {unknown}"
        assert keys["actor_rollout_ref.actor.policy_loss.loss_mode"] == "$loss_mode"
        assert int(keys["actor_rollout_ref.rollout.n"]) > 1  # group sampling
        assert (
            int(keys["data.train_batch_size"]) // int(keys["actor_rollout_ref.actor.ppo_mini_batch_size"])
            >= 2
        )


def test_one_script_per_objective_and_setup():
    for setup in ("gsm8k", "deepmath"):
        scripts = sorted(p.stem for p in (VERL_DIR / setup).glob("*.sh"))
        assert scripts == sorted(OBJECTIVES)
        for name in scripts:
            assert f"launch {setup} {name} " in (VERL_DIR / setup / f"{name}.sh").read_text()


@needs_verl
def test_objective_overrides_reach_the_plugin_as_spec_defaults():
    from integration_cases import actor_config

    import sspo.integrations.verl as sv

    expected = {
        "sspo": {"tau_pos": 1.0, "tau_neg": 1.05},
        "sspo_sapo": {"tau_pos": 1.0, "tau_neg": 1.05},
        "sspo_grpo": {"eps_low": 0.2, "eps_high": 0.28},
        "sspo_gspo": {"eps_low": 3e-4, "eps_high": 4e-4},
        "sspo_gspo_token": {"eps_low": 3e-4, "eps_high": 4e-4},
        "sspo_gmpo": {"clip_low": 0.4, "clip_high": 0.4},
        "sspo_cispo": {"ratio_max": 5.0},
    }
    for loss_mode, hp in expected.items():
        fields = dict(item.split("=", 1) for item in bash(f"objective_overrides {loss_mode}"))
        actor = {k.rsplit(".", 1)[1]: v for k, v in fields.items()}
        agg = actor.pop("loss_agg_mode")
        assert agg == ("token-mean" if loss_mode == "sspo_cispo" else "seq-mean-token-mean")
        cfg = actor_config(**{k: float(v) for k, v in actor.items()})
        objective = sv.verl_names()[loss_mode][0]
        assert sv.hyperparameters_from_config(objective, cfg) == pytest.approx(hp)


def test_reward_and_preprocessing_helpers():
    sys.path.insert(0, str(VERL_DIR))
    try:
        import preprocess
        import reward
    finally:
        sys.path.remove(str(VERL_DIR))
    assert preprocess.gsm8k_answer("so 3 + 4 = 7\n#### 1,234") == "1234"
    assert reward.last_boxed("a \\boxed{\\frac{1}{2}} b") == "\\frac{1}{2}"
    assert reward.compute_score("deepmath", "thus \\boxed{\\frac{1}{2}}", "0.5") == 1.0
    assert reward.compute_score("deepmath", "thus \\boxed{3}", "4") == 0.0
    assert reward.compute_score("deepmath", "no box", "4") == 0.0


def test_trl_example_reward():
    spec = importlib.util.spec_from_file_location("trl_example", ROOT / "examples/trl/train_gsm8k.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    completions = [[{"role": "assistant", "content": "4 + 5 = 9, so 9."}], "it is 1,000", "no number"]
    assert module.answer_reward(completions, ["#### 9", "#### 1000", "#### 3"]) == [1.0, 1.0, 0.0]
    assert module.parse_args(["--objective", "gmpo"]).objective == "gmpo"
