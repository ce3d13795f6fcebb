"""examples/trl/train_gsm8k.py: the paper preset's shape as TRL GRPOConfig fields, and 2 optimizer steps
on CPU with the tiny model for every objective."""

import importlib.util
import json
from pathlib import Path

import pytest

if importlib.util.find_spec("trl") is None:
    pytest.skip("TRL is not installed (pip install 'sspo[trl]')", allow_module_level=True)

import sspo

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "trl" / "train_gsm8k.py"
MODULE_SPEC = importlib.util.spec_from_file_location("trl_gsm8k_example", EXAMPLE)
example = importlib.util.module_from_spec(MODULE_SPEC)
MODULE_SPEC.loader.exec_module(example)

SMALL = [  # the preset's shape scaled down: 2 prompts × 4 samples, 4 updates of 2 responses, 8 tokens
    "rollout.prompts_per_step=2", "rollout.samples_per_prompt=4", "rollout.max_new_tokens=8",
    "update.micro_batch_size=2", "optim.warmup_steps=0", "optim.lr=0.01", "device=cpu", "dtype=float32",
    "task.template=raw",
]  # fmt: skip


def distinct_characters(completions, **kwargs) -> list[float]:
    """A reward the untrained tiny model's completions vary in (GSM8K answers it never gets right)."""
    return [float(len(set(c))) for c in completions]


def test_paper_preset_as_grpo_config_fields():
    """Qwen2.5-0.5B on GSM8K: 64 prompts × 8 samples per generation batch, 4 updates of 128 responses in
    micro-batches of 16, 512 new tokens, lr 1e-6 after 10 warm-up updates, 200 rollout steps."""
    fields = example.grpo_fields(example.preset_config("sspo"))
    assert {k: fields[k] for k in ("num_generations", "per_device_train_batch_size", "gradient_accumulation_steps",
                                   "steps_per_generation", "num_iterations", "max_completion_length")} == {
        "num_generations": 8, "per_device_train_batch_size": 16, "gradient_accumulation_steps": 8,
        "steps_per_generation": 32, "num_iterations": 1, "max_completion_length": 512}  # fmt: skip
    assert fields["learning_rate"] == 1e-6 and fields["warmup_steps"] == 10 and fields["max_grad_norm"] == 1.0
    assert fields["lr_scheduler_type"] == "constant_with_warmup" and fields["max_steps"] == 200 * 4
    assert fields["temperature"] == 1.0 and fields["bf16"] and not fields["use_cpu"]
    four = example.grpo_fields(example.preset_config("sspo"), num_processes=4)
    assert (four["gradient_accumulation_steps"], four["steps_per_generation"]) == (2, 8)  # same 512 / 128 split


PRESET_CASES = [
    ("sspo", {"sapo_temperature_pos": 1.0, "sapo_temperature_neg": 1.05, "sspo_gate": "arctan"}),
    ("sapo", {"sapo_temperature_pos": 1.0, "sapo_temperature_neg": 1.05}),
    ("grpo", {"epsilon": 0.2, "epsilon_high": 0.28}),
    ("gspo", {"epsilon": 3e-4, "epsilon_high": 4e-4}),
    ("gspo_token", {"epsilon": 3e-4, "epsilon_high": 4e-4}),
    ("gmpo", {"sspo_gmpo_clip_low": 0.4, "sspo_gmpo_clip_high": 0.4}),
    ("cispo", {}),  # no preset: SSPOGRPOConfig's default r_max = 5
    ("luspo", {"epsilon": 3e-4, "epsilon_high": 4e-4}),  # no preset: GSPO's ε (LUSPO's defaults)
    ("vespo", {}),  # no preset: TRL's vespo_* defaults, which are sspo's
    ("dppo_tv", {}),  # no preset: the objective's defaults
    ("dppo_kl", {}),
    ("m2po", {}),
]


@pytest.mark.parametrize("objective,expected", PRESET_CASES)
def test_each_objective_gets_its_preset_hyperparameters(objective, expected, tmp_path):
    from sspo.integrations.trl import SSPOGRPOConfig

    fields = example.objective_fields(example.preset_config(objective))
    assert fields["sspo_objective"] == objective and {k: fields[k] for k in expected} == expected
    args = SSPOGRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], **fields)
    reference = {"sspo": {"tau_pos": 1.0, "tau_neg": 1.05, "gate": "arctan"}, "sapo": {"tau_pos": 1.0, "tau_neg": 1.05},
                 "grpo": {"eps_low": 0.2, "eps_high": 0.28}, "gspo": {"eps_low": 3e-4, "eps_high": 4e-4},
                 "gspo_token": {"eps_low": 3e-4, "eps_high": 4e-4}, "gmpo": {"clip_low": 0.4, "clip_high": 0.4},
                 "cispo": {"ratio_max": 5.0}, "luspo": {"eps_low": 3e-4, "eps_high": 4e-4},
                 "vespo": {"k_pos": 2.0, "lambda_pos": 3.0, "k_neg": 3.0, "lambda_neg": 2.0},
                 "dppo_tv": {}, "dppo_kl": {}, "m2po": {}}  # fmt: skip
    assert args.objective_hyperparameters() == pytest.approx(reference[objective])


def test_every_objective_has_a_preset_case():
    """A new objective of ``sspo.OBJECTIVES`` needs its case above (and its fields in ``objective_fields``)."""
    assert sorted(objective for objective, _ in PRESET_CASES) == sorted(sspo.OBJECTIVES)


@pytest.mark.parametrize("objective,params", [
    ("vespo", {"k_pos": 1.5, "lambda_pos": 2.5, "k_neg": 4.0, "lambda_neg": 1.5}),
    ("dppo_tv", {"clip_ratio": 0.1, "clip_ratio_high": 0.3, "clip_ratio_c": 50.0}),
    ("dppo_kl", {"clip_ratio_low": 0.02}),
    ("m2po", {"m2_threshold": 0.1}),
    ("luspo", {"eps_low": 1e-3, "eps_high": 2e-3}),
])  # fmt: skip
def test_preset_hyperparameters_of_the_new_objectives_reach_the_loss(objective, params, tmp_path):
    """``objective.params.<name>=value`` overrides become SSPOGRPOConfig fields and come back unchanged."""
    from sspo.integrations.trl import SSPOGRPOConfig

    overrides = [f"objective.params.{k}={v}" for k, v in params.items()]
    fields = example.objective_fields(example.preset_config(objective, overrides))
    args = SSPOGRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], **fields)
    got = args.objective_hyperparameters()
    assert {k: got[k] for k in params} == pytest.approx(params)


@pytest.fixture(scope="module")
def gsm8k_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("gsm8k")
    with open(path / "train.jsonl", "w") as f:
        for i in range(8):
            f.write(json.dumps({"question": f"What is {i} plus 2?", "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}"}) + "\n")
    return str(path)


@pytest.mark.parametrize("objective", sspo.OBJECTIVES)
def test_two_steps_on_cpu_with_the_tiny_model(objective, gsm8k_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(example, "answer_reward", distinct_characters)
    trainer = example.main(["--objective", objective, "--model", "tiny", "--output-dir", str(tmp_path),
                            "--max-steps", "2", "--report-to", "none", f"task.path={gsm8k_dir}", *SMALL])  # fmt: skip
    args = trainer.args
    assert trainer.state.global_step == 2 and args.sspo_objective == objective
    assert (args.num_generations, args.per_device_train_batch_size, args.steps_per_generation) == (4, 2, 4)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    assert logs[0]["rewards/distinct_characters/std"] > 0  # logged with the generation batch
    for log in logs:
        assert {"sspo/ppo_kl", "sspo/ratio/mean", "sspo/seq_weight/ess", "sspo/update/effective_ratio"} <= set(log)
    # 4 updates per generation batch: the first on-policy, the second (same completions) after one update
    assert logs[0]["sspo/ratio/min"] == logs[0]["sspo/ratio/max"] == 1.0
    assert logs[1]["sspo/ratio/min"] < 1.0 < logs[1]["sspo/ratio/max"]


def test_answer_reward_is_sspos_verifiable_reward():
    completions = [[{"role": "assistant", "content": "4 + 5 = 9, so 9."}], "it is 1,000", "no number", "so \\boxed{12}"]
    assert example.answer_reward(completions, ["9", "1000", "3", "12"]) == [1.0, 1.0, 0.0, 1.0]
    assert example.parse_args(["--objective", "gmpo", "optim.lr=2e-6"]).overrides == ["optim.lr=2e-6"]
