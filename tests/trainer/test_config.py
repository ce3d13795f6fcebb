"""Configuration: presets, overrides and validation errors that name the field."""

import pytest

from sspo.trainer import ConfigError, load_config
from sspo.trainer.config import parse_overrides


def test_overrides_are_typed_and_nested():
    assert parse_overrides(["rollout.temperature=0.7", "objective.params.gate=sigmoid", "steps=3"]) == {
        "rollout": {"temperature": 0.7}, "objective": {"params": {"gate": "sigmoid"}}, "steps": 3,
    }  # fmt: skip
    config = load_config("demo", ["objective.params.tau_neg=1.5", "optim.betas=[0.9, 0.95]", "time_budget_s=none"])
    assert config.objective.params == {"gate": "arctan", "tau_pos": 1.0, "tau_neg": 1.5}
    assert config.optim.betas == (0.9, 0.95)
    assert config.time_budget_s is None
    assert config.model == "tiny" and config.warm_start.steps > 0


def test_paper_presets_include_their_base():
    config = load_config("qwen2.5-0.5b-gsm8k-grpo")
    assert config.model == "Qwen/Qwen2.5-0.5B-Instruct" and config.task.name == "gsm8k"
    assert config.objective.name == "grpo" and config.objective.params == {"eps_low": 0.2, "eps_high": 0.28}
    assert config.update.mini_batches == 4


def test_leetcode_presets_train_every_objective_on_code():
    for objective, params in [("grpo", {"eps_low": 0.2, "eps_high": 0.28}), ("gspo", {"eps_low": 3e-4, "eps_high": 4e-4}),
                              ("gmpo", {"clip_low": 0.4, "clip_high": 0.4}), ("sapo", {"tau_pos": 1.0, "tau_neg": 1.05}),
                              ("sspo", {"gate": "arctan", "tau_pos": 1.0, "tau_neg": 1.05})]:  # fmt: skip
        config = load_config(f"qwen2.5-7b-leetcode-{objective}")
        assert config.model == "Qwen/Qwen2.5-7B-Instruct" and config.task.name == "leetcode"
        assert config.task.path == "newfacade/LeetCodeDataset" and config.task.template == "chat"
        assert config.objective.name == objective and config.objective.params == params
        assert config.update.mini_batches == 4 and config.rollout.reward_timeout == 5.0 and config.eval.pass_k == 8
    local = load_config("qwen2.5-7b-leetcode-sspo", ["task.path=../shared/data/code", "task.options.difficulties=[Easy]"])
    assert local.task.options == {"difficulties": ["Easy"]}


def test_every_preset_loads():
    from sspo.trainer.config import PRESET_DIR

    names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    assert {"demo", "demo-code", "qwen2.5-7b-leetcode-sspo"} <= set(names)
    for name in names:
        load_config(name)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rollout.temperature=0", "rollout.temperature: must be > 0, got 0.0"),
        ("rollout.samples_per_prompt=1", "rollout.samples_per_prompt: must be >= 2"),
        ("objective.name=ppo", "objective.name: unknown objective 'ppo'; valid: grpo, gspo"),
        ("objective.params.tau_neg=-1", "objective.params: tau_neg must be > 0, got -1"),
        ("objective.params.eps_low=0.1", "objective.params: objective 'sspo' has no hyperparameter 'eps_low'"),
        ("objective.loss_agg_mode=token-mean", "objective.params: objective 'sspo' is sequence-level"),
        ("update.mini_batches=1000", r"update.mini_batches: must be in \[1, P\*G=128\], got 1000"),
        ("task.name=mnist", "task.name: unknown task 'mnist'"),
        ("task.reward=style", "task.reward: .style. is not one of answer, answer_and_work"),
        ("optim.schedule=step", "optim.schedule: 'step' is not one of constant, linear, cosine"),
        ("steps=2.5", "steps: expected int, got 2.5"),
        ("progress=maybe", "progress: expected true/false, got 'maybe'"),
        ("rollout.tempreature=1", "rollout.tempreature: unknown field; valid fields of RolloutConfig"),
        ("device=tpu", "device: 'tpu' is not one of auto, cpu, cuda"),
        ("rollout.truncated=keep", "rollout.truncated: 'keep' is not one of drop, zero, score"),
        ("rollout.max_reward_error_frac=2", r"rollout.max_reward_error_frac: must be in \[0, 1\], got 2.0"),
        ("update.max_consecutive_nonfinite=0", "update.max_consecutive_nonfinite: must be >= 1, got 0"),
        ("task.options.max_step=3", "task.options.max_step: unknown option of task 'synthetic'; valid: min_steps, max_steps"),
    ],
)
def test_invalid_values_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", [override])


def test_unknown_preset_lists_the_presets(tmp_path):
    with pytest.raises(ConfigError, match="neither a file nor a built-in preset.*demo.*tiny"):
        load_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)


def test_changing_the_objective_drops_the_old_objectives_params():
    config = load_config("demo", ["objective.name=grpo"])
    assert config.objective.name == "grpo" and config.objective.params == {}
    config = load_config("demo", ["objective.name=grpo", "objective.params.eps_high=0.28"])
    assert config.objective.params == {"eps_high": 0.28}
    config = load_config("demo", ["objective.name=sspo", "objective.params.tau_neg=2"])  # same name: merged
    assert config.objective.params == {"gate": "arctan", "tau_pos": 1.0, "tau_neg": 2}


def test_changing_the_task_starts_from_its_own_options(tmp_path):
    data = tmp_path / "test.jsonl"
    data.write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    config = load_config("tiny", ["task.name=gsm8k", f"task.path={data}"])  # the preset's synthetic options go
    assert config.task.name == "gsm8k" and config.task.options == {}
    config = load_config("tiny", ["task.name=gsm8k", "task.options.shuffle=true"])
    assert config.task.options == {"shuffle": True}
    with pytest.raises(ConfigError, match="task.options.min_steps: unknown option of task 'gsm8k'; valid: shuffle"):
        load_config("demo", ["task.name=gsm8k", "task.options.min_steps=2"])


def test_a_whole_mapping_override_replaces_instead_of_merging():
    assert load_config("demo", ["task.options={}"]).task.options == {}
    assert load_config("demo", ["task.options={max_steps: 2}"]).task.options == {"max_steps": 2}
    assert load_config("demo", ["objective.params={tau_pos: 2.0}"]).objective.params == {"tau_pos": 2.0}
    assert load_config("demo", ["task.options.max_steps=2"]).task.options["max_operand"] == 9  # one key: merged
