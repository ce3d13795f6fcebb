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
        ("objective.loss_agg_mode=token-mean", "objective.loss_agg_mode: objective 'sspo' is sequence-level"),
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


RC = "objective.rollout_correction."
PROXIMAL = ("update.old_logprobs=proximal",)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ((*PROXIMAL, f"{RC}rollout_is=tokens"), rf"^{RC}rollout_is: 'tokens' is not one of none, token, sequence$"),
        ((*PROXIMAL, f"{RC}rollout_is=token", f"{RC}rollout_is_threshold=0"), rf"^{RC}rollout_is_threshold: .*finite and > 0"),
        ((*PROXIMAL, f"{RC}rollout_is=token", f"{RC}rollout_is_threshold=5.0_0.5"),
         rf"^{RC}rollout_is_threshold: .*lower bound is above the upper one"),
        ((*PROXIMAL, f"{RC}rollout_is=token", f"{RC}rollout_is_threshold=lots"), rf"^{RC}rollout_is_threshold: .*not a number"),
        ((f"{RC}rollout_is_batch_normalize=true",), rf"^{RC}rollout_is_batch_normalize: .*set rollout_is too"),
        ((f"{RC}rollout_is_batch_normalize=sometimes",), rf"^{RC}rollout_is_batch_normalize: expected true/false"),
        ((*PROXIMAL, f"{RC}rollout_rs=token_k4", f"{RC}rollout_rs_threshold=2"), rf"^{RC}rollout_rs: unknown criterion 'token_k4'"),
        ((*PROXIMAL, f"{RC}rollout_rs=token_k1"), rf"^{RC}rollout_rs_threshold: rollout_rs needs rollout_rs_threshold"),
        ((*PROXIMAL, f"{RC}rollout_rs=token_k1,seq_mean_k3", f"{RC}rollout_rs_threshold=2,0.1,3"),
         rf"^{RC}rollout_rs_threshold: .*3 values for 2 criteria"),
        ((*PROXIMAL, f"{RC}rollout_rs=token_k3", f"{RC}rollout_rs_threshold=0.5_2.0"),
         rf"^{RC}rollout_rs_threshold: .*a k2/k3 criterion takes one upper bound"),
        ((f"{RC}rollout_rs_threshold=2",), rf"^{RC}rollout_rs_threshold: 2.0 bounds no criterion: set rollout_rs too$"),
        ((f"{RC}bypass_mode=true", "update.old_logprobs=recompute"), rf"^{RC}bypass_mode: .*set update.old_logprobs=sampler$"),
        ((f"{RC}rollout_is=token",), rf"^{RC}rollout_is: .*update.old_logprobs=auto takes those from the sampler"),
        ((f"{RC}rollout_rs=token_k1", f"{RC}rollout_rs_threshold=2", "update.old_logprobs=sampler"),
         rf"^{RC}rollout_rs: .*set update.old_logprobs=proximal \(decoupled PPO\) or recompute, or bypass_mode=true$"),
        ((*PROXIMAL, "update.staleness=2"), r"^update.old_logprobs: proximal .*\(update.staleness\) would go uncorrected"),
        ((*PROXIMAL, "rollout.sampler_dtype=bfloat16"), r"^update.old_logprobs: proximal .*\(rollout.sampler_dtype\)"),
        ((f"{RC}rollout=token",), rf"^{RC}rollout: unknown field; valid fields of RolloutCorrectionConfig"),
        (("update.old_logprobs=prox",), r"^update.old_logprobs: 'prox' is not one of auto, recompute, sampler, proximal$"),
        (("objective.name=luspo", "objective.loss_agg_mode=token-mean"),
         r"^objective.loss_agg_mode: objective 'luspo' scales each sequence's term by its length itself"),
    ],
)
def test_bad_rollout_corrections_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", list(overrides))


def test_every_objective_trains_in_the_config_with_its_params():
    import sspo

    assert {"vespo", "luspo", "dppo_tv", "dppo_kl"} <= set(sspo.OBJECTIVES)
    for name in sspo.OBJECTIVES:
        objective = sspo.get_objective(name)
        config = load_config("tiny", [f"objective.name={name}", f"objective.loss_agg_mode={objective.agg_modes[-1]}"])
        assert config.objective.name == name and config.objective.loss_agg_mode == objective.agg_modes[-1]
        for key, default in objective.defaults.items():  # each hyperparameter, at its default value
            if isinstance(default, int | float) and not isinstance(default, bool):
                assert load_config("tiny", [f"objective.name={name}", f"objective.params.{key}={default!r}"])
    with pytest.raises(ConfigError, match="objective.params: objective 'luspo' has no hyperparameter 'tau_pos'"):
        load_config("tiny", ["objective.name=luspo", "objective.params.tau_pos=1.0"])


def test_rollout_correction_values_are_read_as_written(tmp_path):
    config = load_config("tiny", [*PROXIMAL, "update.staleness=1", f"{RC}rollout_is=sequence", f"{RC}rollout_is_threshold=0.5_5",
                                  f"{RC}rollout_rs=token_k3,seq_mean_k3", f"{RC}rollout_rs_threshold=1e-3"])  # fmt: skip
    rc = config.objective.rollout_correction
    assert rc.rollout_is == "sequence" and rc.rollout_is_threshold == "0.5_5"  # a band, not YAML 1.1's 0.55
    assert rc.rollout_rs_threshold == 0.001 and rc.rollout_rs == "token_k3,seq_mean_k3"
    preset = tmp_path / "decoupled.yaml"
    preset.write_text("include: tiny.yaml\nupdate: {old_logprobs: proximal}\nobjective:\n  rollout_correction:\n"
                      "    rollout_is: token\n    rollout_is_threshold: 0.5_5\n    rollout_is_batch_normalize: true\n")
    from sspo.trainer.config import PRESET_DIR

    preset.write_text(preset.read_text().replace("tiny.yaml", str(PRESET_DIR / "tiny.yaml")))
    rc = load_config(preset).objective.rollout_correction
    assert rc.rollout_is_threshold == "0.5_5" and rc.rollout_is_batch_normalize is True
    assert load_config("tiny", ["steps=1_000"]).steps == 1000  # numbers of number fields still take underscores
    assert load_config("tiny", [f"{RC}rollout_is_threshold=3"]).objective.rollout_correction.rollout_is_threshold == 3.0
    # a sampler of its own precision may be recomputed away when the gap is corrected for
    assert load_config("tiny", ["rollout.sampler_dtype=bfloat16", "update.old_logprobs=recompute", f"{RC}rollout_is=token"])
