"""The loop never fails silently: each test here fails on a loop that updates wrongly or hides a fault.

Covered: an update raises J; the configured params, advantage method and temperature reach the maths;
non-finite updates are skipped, counted, logged as such and stop the run; zero-signal updates leave the
weights alone; exactly K mini-batches; verifier errors; truncated responses; evaluation is not training time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time

import pytest
import torch
from trainer_cases import TINY, tiny_config

import sspo
from sspo.experiments.compare.aggregate import summarise_run
from sspo.trainer import Trainer, TrainingError
from sspo.trainer import loop as loop_module
from sspo.trainer import rollout as rollout_module
from sspo.trainer.checkpoint import checkpoint_dirs
from sspo.trainer.metrics_log import read_metrics
from sspo.trainer.policy import response_logprobs_no_grad
from sspo.trainer.rollout import make_rollout


def quiet(*_args):
    return None


class StubScorer:
    """Rewards by row position (so every group of 4 has two right and two wrong), optional errors."""

    def __init__(self, rewards=lambda i: float(i % 2 == 0), error_frac: float = 0.0):
        self.rewards, self.error_frac = rewards, error_frac
        self.last_error = "TypeError: broken verifier" if error_frac else None

    def score_batch(self, completions, references):
        rewards = [self.rewards(i) for i in range(len(completions))]
        return rewards, {"reward/mean": sum(rewards) / len(rewards), "reward/error_frac": self.error_frac}

    def close(self):
        pass


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def rollout(trainer: Trainer, step: int = 1):
    c = trainer.config
    return make_rollout(
        trainer.model, trainer.tokenizer, trainer._problems_for(step), trainer.scorer,
        samples_per_prompt=c.rollout.samples_per_prompt, max_new_tokens=c.rollout.max_new_tokens,
        temperature=c.rollout.temperature, top_p=1.0, template=c.task.template, advantage=c.objective.advantage,
        generator=torch.Generator().manual_seed(step), recompute=True, truncated=c.rollout.truncated,
    )  # fmt: skip


OBJECTIVE = ["objective.name=sspo", "objective.params={gate: sigmoid, tau_pos: 2.0, tau_neg: 3.0}",
             "objective.advantage=rloo", "rollout.temperature=0.7"]  # fmt: skip


# ----------------------------------------------------------------------------- the update is right
def test_one_update_raises_the_objective_on_its_batch(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, *OBJECTIVE, "update.mini_batches=1", "optim.lr=1e-3",
                                  "objective.entropy_coef=0"), log=quiet)  # fmt: skip
    trainer.scorer = StubScorer()
    batch = rollout(trainer)
    assert batch.advantages.abs().sum() > 0

    def objective_value() -> float:
        logp = response_logprobs_no_grad(trainer.model, batch.input_ids, batch.attention_mask, batch.response_ids,
                                          temperature=0.7, groups=batch.groups).double()  # fmt: skip
        out = sspo.policy_loss("sspo", logp, before.double(), batch.advantages.double(), batch.response_mask,
                               **trainer.config.objective.params)  # fmt: skip
        return -float(out.loss)

    before = response_logprobs_no_grad(trainer.model, batch.input_ids, batch.attention_mask, batch.response_ids,
                                       temperature=0.7, groups=batch.groups)  # fmt: skip
    j0 = objective_value()
    metrics, outcome = trainer._update(batch, torch.arange(batch.input_ids.shape[0]))
    assert outcome == "applied" and trainer.updates == 1
    j1 = objective_value()
    assert j1 > j0 + 1e-4, (j0, j1)  # gradient ascent on J, not descent


def test_the_configured_params_advantage_and_temperature_reach_the_maths(tmp_path, monkeypatch):
    seen: dict[str, list] = {"loss": [], "adv": [], "temperature": []}
    real_loss, real_adv, real_logprobs = loop_module.policy_loss, rollout_module.group_advantages, loop_module.response_logprobs

    def spy_loss(name, *args, **kwargs):
        seen["loss"].append((name, kwargs))
        return real_loss(name, *args, **kwargs)

    def spy_adv(*args, **kwargs):
        seen["adv"].append(kwargs["method"])
        return real_adv(*args, **kwargs)

    def spy_logprobs(*args, **kwargs):
        seen["temperature"].append(kwargs["temperature"])
        return real_logprobs(*args, **kwargs)

    monkeypatch.setattr(loop_module, "policy_loss", spy_loss)
    monkeypatch.setattr(rollout_module, "group_advantages", spy_adv)
    monkeypatch.setattr(loop_module, "response_logprobs", spy_logprobs)
    trainer = Trainer(tiny_config(tmp_path, *OBJECTIVE, "update.mini_batches=2"), log=quiet)
    trainer.scorer = StubScorer()
    metrics = trainer.train_step(1)

    assert [name for name, _ in seen["loss"]] == ["sspo", "sspo"]
    for _, kwargs in seen["loss"]:
        assert {k: kwargs[k] for k in ("gate", "tau_pos", "tau_neg")} == {"gate": "sigmoid", "tau_pos": 2.0, "tau_neg": 3.0}
        assert kwargs["entropy_coef"] == 0.01
    assert seen["adv"] == ["rloo"] and seen["temperature"] == [0.7, 0.7]
    # values, not just calls: the sampler (at 0.7) and the training forward agree, and the advantages are RLOO's
    assert 0.0 < metrics["rollout/logprob_mismatch_max"] < 1e-4
    batch = rollout(trainer)
    r = batch.rewards.view(-1, 4)
    rloo = (r - (r.sum(1, keepdim=True) - r) / 3).flatten()
    torch.testing.assert_close(batch.advantages, rloo)


# ----------------------------------------------------------------------------- non-finite updates
def _nan_on_calls(monkeypatch, calls, at_nan=None):
    """Make the loss of the given (1-based) ``policy_loss`` calls NaN."""
    real = loop_module.policy_loss
    count = {"n": 0}

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        count["n"] += 1
        if calls == "all" or count["n"] in calls:
            if at_nan is not None:
                at_nan()
            return dataclasses.replace(out, loss=out.loss * float("nan"))
        return out

    monkeypatch.setattr(loop_module, "policy_loss", poisoned)


def test_a_nan_update_is_skipped_counted_logged_and_never_checkpointed(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(tmp_path, "steps=2", "checkpoint_every=1", "update.mini_batches=2"), log=quiet)
    _nan_on_calls(monkeypatch, {2})
    trainer.run()
    rows = read_metrics(tmp_path)
    step1 = next(r for r in rows if r["step"] == 1 and "loss" in r)
    assert step1["update/skipped_nonfinite"] == 1 and step1["update/applied"] == 1
    assert math.isnan(step1["loss"])  # logged as NaN, not as null
    assert '"loss": "NaN"' in (tmp_path / "metrics.jsonl").read_text()
    assert trainer.updates == 3 and trainer.scheduler.last_epoch == 3  # 4 tried, the NaN one skipped
    for path in checkpoint_dirs(tmp_path):
        from safetensors.torch import load_file

        assert all(torch.isfinite(t).all() for t in load_file(path / "model.safetensors").values())
    summary = summarise_run(rows, json.loads((tmp_path / "final_metrics.json").read_text()))
    assert summary["loss_spikes"] >= 1 and summary["grad_spikes"] >= 1 and summary["nonfinite_updates"] == 1


def test_a_skipped_update_leaves_the_weights_where_it_found_them(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(tmp_path, "update.mini_batches=2"), log=quiet)
    held = {}
    _nan_on_calls(monkeypatch, {2}, at_nan=lambda: held.update(params(trainer.model)))
    metrics = trainer.train_step(1)
    assert metrics["update/skipped_nonfinite"] == 1 and held and same(held, params(trainer.model))


def test_consecutive_nan_updates_stop_the_run_with_weights_intact(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(tmp_path, "steps=5", "update.mini_batches=2", "update.max_consecutive_nonfinite=3"),
                      log=quiet)  # fmt: skip
    start = params(trainer.model)
    _nan_on_calls(monkeypatch, "all")
    with pytest.raises(TrainingError, match=r"update.max_consecutive_nonfinite: 3 updates in a row"):
        trainer.run()
    assert same(start, params(trainer.model)) and trainer.updates == 0


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    trainer = Trainer(tiny_config(tmp_path), log=quiet)
    with torch.no_grad():
        next(trainer.model.parameters())[0] = float("inf")
    with pytest.raises(TrainingError, match="non-finite"):
        trainer._checkpoint()
    assert checkpoint_dirs(tmp_path) == []


# ----------------------------------------------------------------------------- updates without signal
def test_zero_signal_updates_leave_weights_and_schedule_alone(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "objective.entropy_coef=0", "update.mini_batches=2",
                                  "optim.schedule=linear", "steps=10"), log=quiet)  # fmt: skip
    trainer.scorer = StubScorer()
    trainer.train_step(1)  # mixed rewards: two applied updates, AdamW now has momentum
    assert trainer.updates == 2
    after_first, lr = params(trainer.model), trainer.scheduler.get_last_lr()[0]
    trainer.scorer = StubScorer(rewards=lambda i: 1.0)  # every group equal: no advantage anywhere
    metrics = trainer.train_step(2)
    assert metrics["update/skipped_zero_signal"] == 2 and metrics["update/applied"] == 0
    assert same(after_first, params(trainer.model))
    assert trainer.updates == 2 and trainer.scheduler.get_last_lr()[0] == lr


def test_an_entropy_term_is_signal_enough(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "objective.entropy_coef=0.01"), log=quiet)
    trainer.scorer = StubScorer(rewards=lambda i: 0.0)
    assert trainer.train_step(1)["update/applied"] == 2


# ----------------------------------------------------------------------------- mini-batches
def test_exactly_k_mini_batches_and_the_schedule_counts_them(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "update.mini_batches=7", "steps=1", "optim.schedule=linear"), log=quiet)
    parts = trainer.mini_batches(1, 0, 8)
    assert sorted(len(p) for p in parts) == [1, 1, 1, 1, 1, 1, 2]
    assert sorted(torch.cat(parts).tolist()) == list(range(8))
    trainer.scorer = StubScorer()
    assert trainer.train_step(1)["update/applied"] == 7
    assert trainer.updates == 7 and trainer.scheduler.get_last_lr()[0] == 0.0  # "linear to 0" reaches 0


def test_whole_groups_stay_together_when_k_divides_p(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "update.mini_batches=2"), log=quiet)
    for part in trainer.mini_batches(3, 0, 8):
        assert len(part) == 4 and len(set((part // 4).tolist())) == 1


# ----------------------------------------------------------------------------- verifier errors
def test_verifier_errors_warn_once_then_stop_past_the_share(tmp_path):
    logged = []
    trainer = Trainer(tiny_config(tmp_path, "rollout.max_reward_error_frac=0.5"), log=logged.append)
    trainer.scorer = StubScorer(error_frac=0.25)
    trainer.train_step(1)
    trainer.train_step(2)
    warnings = [m for m in logged if "verifier errors" in m]
    assert len(warnings) == 1 and "TypeError: broken verifier" in warnings[0]
    trainer.scorer = StubScorer(error_frac=0.75)
    with pytest.raises(TrainingError, match=r"rollout.max_reward_error_frac: 75% of step 3's rewards .*TypeError"):
        trainer.train_step(3)


# ----------------------------------------------------------------------------- truncated responses
@pytest.mark.parametrize("mode", ["score", "zero", "drop"])
def test_truncated_responses(tmp_path, monkeypatch, mode):
    """Even rows stop at their third token; odd rows are cut off at max_new_tokens. Rows 0, 1 of each
    group of four are rewarded."""
    real = rollout_module.sample

    def some_stop(model, prompt_ids, **kwargs):
        out = real(model, prompt_ids, **kwargs)
        eos = kwargs["eos_token_id"]
        ids, mask = out.response_ids.clone(), out.response_mask.clone()
        assert ((ids == eos) & mask).sum() == 0  # an untrained model: nobody stops by itself here
        even = torch.arange(ids.shape[0]) % 2 == 0
        ids[even, 2] = eos
        mask[even, 3:] = False
        return dataclasses.replace(out, response_ids=ids, response_mask=mask)

    monkeypatch.setattr(rollout_module, "sample", some_stop)
    trainer = Trainer(tiny_config(tmp_path, f"rollout.truncated={mode}"), log=quiet)
    trainer.scorer = StubScorer(rewards=lambda i: float(i % 4 < 2))
    batch = rollout(trainer)
    odd = torch.arange(8) % 2 == 1
    assert batch.metrics["rollout/truncated_frac"] == 0.5
    assert batch.metrics["reward/truncated_rewarded_frac"] == 0.25  # rows 1 and 5
    if mode == "score":
        assert batch.rewards.tolist() == [1, 1, 0, 0] * 2 and batch.response_mask[odd].any(-1).all()
    elif mode == "zero":
        assert batch.rewards.tolist() == [1, 0, 0, 0] * 2 and batch.response_mask[odd].any(-1).all()
    else:
        assert batch.rewards.tolist() == [1, 0, 0, 0] * 2
        assert not batch.response_mask[odd].any() and (batch.advantages[odd] == 0).all()
        # finished rows 0 (reward 1) and 2 (reward 0): a group of two, std-normalised
        expected = torch.tensor([1.0, -1.0]) / (torch.tensor([1.0, 0.0]).std() + 1e-6) / 2
        torch.testing.assert_close(batch.advantages[~odd], expected.repeat(2))


# ----------------------------------------------------------------------------- timing
def test_evaluation_time_is_not_training_time(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(tmp_path, "steps=3", "eval.every=1"), log=quiet)
    real = trainer._evaluate

    def slow_evaluate():
        time.sleep(0.4)
        return real()

    monkeypatch.setattr(trainer, "_evaluate", slow_evaluate)
    summary = trainer.run()
    rows = read_metrics(tmp_path)
    step_seconds = sum(r["time/step_s"] for r in rows if "time/step_s" in r)
    assert sum(r.get("time/eval_s", 0) for r in rows) >= 0.8  # two periodic evaluations (steps 1 and 2)
    assert summary["train_seconds"] == pytest.approx(step_seconds, abs=0.1)


def test_a_stopped_run_is_one_line_and_status_2_on_the_command_line(tmp_path, monkeypatch, capsys):
    from sspo.cli import main

    _nan_on_calls(monkeypatch, "all")
    assert main(["train", *TINY, "steps=3", f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sspo train: error: update.max_consecutive_nonfinite: 3 updates in a row")
    assert not any("Traceback" in line for line in err)


# ----------------------------------------------------------------------------- train–inference mismatch
@pytest.mark.parametrize("sampler_dtype", ["same", "bfloat16"])
def test_the_mismatch_knob_gives_a_sampler_trainer_gap_only_when_on(tmp_path, sampler_dtype):
    trainer = Trainer(tiny_config(tmp_path, f"rollout.sampler_dtype={sampler_dtype}", "update.mini_batches=1"),
                      log=quiet)  # fmt: skip
    first = trainer.train_step(1)
    if sampler_dtype == "same":
        assert first["ratio/first_update_max_dev"] == 0.0 and first["drift/abs_log_ratio_p99"] == 0.0
    else:  # behaviour log-probs from the bf16 sampler, the trainer in float32: ratios ≠ 1 before any update
        assert trainer.sampler_copy is not None and next(trainer.sampler_copy.parameters()).dtype == torch.bfloat16
        assert first["ratio/first_update_max_dev"] > 1e-3 and first["drift/abs_log_ratio_p99"] > 1e-3
        assert next(trainer.model.parameters()).dtype == torch.float32


def test_a_mismatched_sampler_cannot_be_recomputed_away(tmp_path):
    from sspo.trainer import ConfigError

    with pytest.raises(ConfigError, match="rollout.sampler_dtype: a sampler of its own precision needs"):
        tiny_config(tmp_path, "rollout.sampler_dtype=bfloat16", "update.old_logprobs=recompute")
