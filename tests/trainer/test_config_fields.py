"""Every field of ``objective``, ``optim`` and ``update`` reaches the update it configures.

Each test sets a non-default value and checks a value-level consequence against a reference computed
here from the literal values (never from the trainer's config): the gradient handed to the optimizer
equals ``sspo.policy_loss`` with those values (and differs from it with the default value), the
parameters after AdamW steps equal ``torch.optim.AdamW`` replayed on the same gradients, the
learning rate of each optimizer step follows the schedule, the number and rows of the updates, the
policy that sampled and the behaviour log-probs the ratios used. A trainer that drops a configured
value fails here. :data:`UPDATE_FIELDS` names the test(s) of every field; a new field without a
test (or an explicit reason in :data:`NO_UPDATE_EFFECT`) fails :func:`test_every_field_has_a_test`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing

import pytest
import torch
from trainer_cases import tiny_config

import sspo
from sspo.trainer import Trainer, TrainingError
from sspo.trainer import loop as loop_module
from sspo.trainer import rollout as rollout_module
from sspo.trainer.config import ObjectiveConfig, OptimConfig, UpdateConfig
from sspo.trainer.policy import response_logprobs, response_logprobs_no_grad
from sspo.trainer.rollout import make_rollout

UPDATE_FIELDS = {
    "objective.name": ("test_objective_name_selects_the_loss",),
    "objective.params": ("test_objective_params_reach_the_loss",),
    "objective.loss_agg_mode": ("test_loss_agg_mode_reaches_the_loss",),
    "objective.advantage": ("test_advantage_method_gives_the_batch_advantages",),
    "objective.kl_coef": ("test_kl_coef_adds_the_kl_gradient", "test_kl_reference_is_the_initial_policy",
                          "test_a_kl_term_alone_is_signal_enough"),
    "objective.kl_estimator": ("test_kl_estimator_reaches_the_kl_term",),
    "objective.entropy_coef": ("test_entropy_coef_adds_the_entropy_gradient", "test_an_entropy_term_alone_is_signal_enough"),
    "optim.lr": ("test_lr_is_the_step_size_of_adamw",),
    "optim.weight_decay": ("test_weight_decay_is_adamws",),
    "optim.betas": ("test_betas_are_adamws",),
    "optim.grad_clip": ("test_grad_clip_bounds_the_applied_gradient", "test_grad_clip_zero_applies_the_raw_gradient"),
    "optim.warmup_steps": ("test_warmup_steps_ramp_the_lr",),
    "optim.schedule": ("test_schedule_decays_the_lr",),
    "update.mini_batches": ("test_mini_batches_give_k_updates_over_disjoint_rows",),
    "update.epochs": ("test_epochs_repeat_the_pass_over_the_batch",),
    "update.micro_batch_size": ("test_micro_batches_split_the_forward_and_keep_the_gradient",),
    "update.staleness": ("test_staleness_samples_and_scores_with_the_policy_of_n_updates_ago",),
    "update.old_logprobs": ("test_old_logprobs_source", "test_proximal_old_logprobs_are_the_current_policys"),
    "objective.rollout_correction.rollout_is": ("test_rollout_is_weights_the_terms",),
    "objective.rollout_correction.rollout_is_threshold": ("test_rollout_is_threshold_truncates_or_bands_the_weights",),
    "objective.rollout_correction.rollout_is_batch_normalize": ("test_rollout_is_batch_normalize_divides_by_the_mean",),
    "objective.rollout_correction.rollout_rs": ("test_rollout_rs_rejects_and_micro_batches_count_what_it_keeps",),
    "objective.rollout_correction.rollout_rs_threshold": ("test_rollout_rs_threshold_bounds_the_rejection",),
    "objective.rollout_correction.bypass_mode": ("test_bypass_mode_centres_the_ratios_on_the_sampler",
                                                 "test_bypass_rejection_counts_what_it_keeps_across_micro_batches"),
}  # fmt: skip
"""Field → the tests that fail when the trainer ignores it."""

NO_UPDATE_EFFECT = {
    "update.max_consecutive_nonfinite": (
        "changes no applied update (a non-finite one is skipped whatever it is), only when the run stops; "
        "tested anyway", ("test_max_consecutive_nonfinite_stops_after_that_many",)),
}  # fmt: skip
"""Fields of these sections that cannot change an update: the reason, and the tests they have all the same.
(``objective.name`` also names the run in the progress bar and the summary; its use in the loss is tested.)"""

SECTIONS = {"objective": ObjectiveConfig, "optim": OptimConfig, "update": UpdateConfig}


def _fields(cls, prefix: str):
    """Dotted names of the fields of ``cls``, those of a nested section (``objective.rollout_correction``) included."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"


def test_every_field_has_a_test():
    fields = {name for section, cls in SECTIONS.items() for name in _fields(cls, f"{section}.")}
    assert "objective.rollout_correction.rollout_is" in fields  # nested sections are counted field by field
    assert fields - set(UPDATE_FIELDS) - set(NO_UPDATE_EFFECT) == set(), "a field without a test or a reason"
    assert set(UPDATE_FIELDS) | set(NO_UPDATE_EFFECT) <= fields, "a stale entry"
    assert not set(UPDATE_FIELDS) & set(NO_UPDATE_EFFECT)
    for name, (reason, tests) in NO_UPDATE_EFFECT.items():
        assert reason and isinstance(tests, tuple), name
    named = [*UPDATE_FIELDS.items(), *((name, tests) for name, (_, tests) in NO_UPDATE_EFFECT.items())]
    for name, tests in named:
        assert tests, name
        for test in tests:
            assert test.startswith("test_") and callable(globals().get(test)), f"{name}: no test {test}"


# ----------------------------------------------------------------------------- helpers
def quiet(*_args):
    return None


class StubScorer:
    """Rewards by row position: every group of 4 holds two right and two wrong (mixed pairs too)."""

    last_error = None

    def __init__(self, rewards=lambda i: float(i % 2 == 0)):
        self.rewards = rewards

    def score_batch(self, completions, references):
        rewards = [self.rewards(i) for i in range(len(completions))]
        return rewards, {"reward/mean": sum(rewards) / len(rewards), "reward/error_frac": 0.0}

    def close(self):
        pass


BASE = ("objective.entropy_coef=0", "optim.grad_clip=0")
"""Raw gradients and no entropy term unless a test asks for them (the references assume so)."""


def make_trainer(tmp_path, *overrides) -> Trainer:
    trainer = Trainer(tiny_config(tmp_path, *BASE, *overrides), log=quiet)
    trainer.scorer = StubScorer()
    return trainer


def perturbed(model, scale: float = 0.02, seed: int = 7):
    """A copy of ``model`` with seeded noise on every weight (another policy)."""
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return other


def fixed_batch(trainer: Trainer, *, reference=None):
    """A rollout of the trainer's model with unequal response lengths (3..8 tokens) and behaviour
    log-probs moved off-policy by seeded noise (ratios far from 1, so gates and clips act)."""
    c = trainer.config
    batch = make_rollout(
        trainer.model, trainer.tokenizer, trainer._problems_for(1), trainer.scorer,
        samples_per_prompt=c.rollout.samples_per_prompt, max_new_tokens=c.rollout.max_new_tokens,
        temperature=c.rollout.temperature, top_p=1.0, template=c.task.template, advantage="grpo",
        generator=torch.Generator().manual_seed(1), recompute=True, truncated=c.rollout.truncated,
        reference=reference,
    )  # fmt: skip
    n, width = batch.response_mask.shape
    keep = 3 + torch.arange(n) % 6
    batch.response_mask = batch.response_mask & (torch.arange(width) < keep[:, None])
    noise = 0.4 * torch.randn(batch.old_log_probs.shape, generator=torch.Generator().manual_seed(2))
    batch.old_log_probs = torch.where(batch.response_mask, batch.old_log_probs + noise, torch.zeros(()))
    if batch.ref_log_probs is not None:
        batch.ref_log_probs = torch.where(batch.response_mask, batch.ref_log_probs, torch.zeros(()))
    assert batch.advantages.abs().min() > 0 and len(set(batch.response_mask.sum(-1).tolist())) > 1
    return batch


class Steps:
    """Records, at every optimizer step, the gradients it applies and its learning rate."""

    def __init__(self, trainer: Trainer):
        self.params = list(trainer.model.parameters())
        self.grads: list[list[torch.Tensor]] = []
        self.lrs: list[float] = []
        trainer.optimizer.register_step_pre_hook(self._hook)

    def _hook(self, optimizer, args, kwargs):
        self.grads.append(
            [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in self.params]
        )
        self.lrs.append(optimizer.param_groups[0]["lr"])


def expected_grads(model, batch, idx=None, *, name="sspo", params=None, loss_agg_mode=None, kl_coef=0.0,
                   kl_estimator="k3", entropy_coef=0.0, temperature=1.0, correction=None,
                   micro=None, norms=None) -> list[torch.Tensor]:  # fmt: skip
    """The gradient of one update on rows ``idx`` computed here, with the values given. ``correction``:
    ``policy_loss``'s rollout-correction arguments, with the batch's sampler log-probs. ``micro`` rows
    per forward, with the global counts ``norms`` (default: one forward, the loss counts itself)."""
    m = copy.deepcopy(model)
    rows = torch.arange(batch.input_ids.shape[0]) if idx is None else idx
    extra = {} if correction is None else dict(correction)
    for part in rows.split(micro or len(rows)):
        mb = batch.select(part)
        logp, entropy = response_logprobs(m, mb["input_ids"], mb["attention_mask"], mb["response_ids"],
                                          temperature=temperature, groups=mb["groups"])  # fmt: skip
        if correction is not None:
            extra["rollout_log_probs"] = mb["rollout_log_probs"]
        out = sspo.policy_loss(name, logp, mb["old_log_probs"], mb["advantages"], mb["response_mask"],
                               loss_agg_mode=loss_agg_mode, kl_coef=kl_coef, ref_log_probs=mb["ref_log_probs"],
                               kl_estimator=kl_estimator, entropy=entropy, entropy_coef=entropy_coef,
                               **(norms or {}), **extra, **(params or {}))  # fmt: skip
        out.loss.backward()
    return [torch.zeros_like(p) if p.grad is None else p.grad for p in m.parameters()]


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().double().flatten() for t in tensors])


def rel(a, b) -> float:
    """``‖a − b‖ / ‖b‖`` over all tensors."""
    a, b = flat(a), flat(b)
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def assert_matches(actual, expected, default):
    """``actual`` equals ``expected`` (the configured value's), which the default value's is not."""
    assert rel(actual, expected) < 1e-5, rel(actual, expected)
    assert rel(default, expected) > 1e-3, "the test cannot tell the configured value from the default"


def one_update_grads(trainer: Trainer, batch) -> list[torch.Tensor]:
    steps = Steps(trainer)
    metrics, outcome = trainer._update(batch, torch.arange(batch.input_ids.shape[0]))
    assert outcome == "applied" and len(steps.grads) == 1
    return steps.grads[0]


# ----------------------------------------------------------------------------- objective
def test_objective_name_selects_the_loss(tmp_path):
    trainer = make_trainer(tmp_path, "objective.name=grpo")
    start, batch = copy.deepcopy(trainer.model), fixed_batch(trainer)
    got = one_update_grads(trainer, batch)
    assert_matches(got, expected_grads(start, batch, name="grpo"), expected_grads(start, batch, name="sspo"))


def test_objective_params_reach_the_loss(tmp_path):
    params = {"gate": "sigmoid", "tau_pos": 3.0, "tau_neg": 5.0}
    trainer = make_trainer(tmp_path, "objective.params={gate: sigmoid, tau_pos: 3.0, tau_neg: 5.0}")
    start, batch = copy.deepcopy(trainer.model), fixed_batch(trainer)
    got = one_update_grads(trainer, batch)
    assert_matches(got, expected_grads(start, batch, params=params), expected_grads(start, batch))


def test_loss_agg_mode_reaches_the_loss(tmp_path):
    trainer = make_trainer(tmp_path, "objective.name=grpo", "objective.loss_agg_mode=token-mean")
    start, batch = copy.deepcopy(trainer.model), fixed_batch(trainer)
    got = one_update_grads(trainer, batch)
    assert_matches(got, expected_grads(start, batch, name="grpo", loss_agg_mode="token-mean"),
                   expected_grads(start, batch, name="grpo"))  # fmt: skip


def test_kl_coef_adds_the_kl_gradient(tmp_path):
    trainer = make_trainer(tmp_path, "objective.kl_coef=0.5")
    start = copy.deepcopy(trainer.model)
    batch = fixed_batch(trainer, reference=perturbed(trainer.model))
    got = one_update_grads(trainer, batch)
    assert_matches(got, expected_grads(start, batch, kl_coef=0.5), expected_grads(start, batch))


def test_kl_estimator_reaches_the_kl_term(tmp_path):
    trainer = make_trainer(tmp_path, "objective.kl_coef=0.5", "objective.kl_estimator=k1")
    start = copy.deepcopy(trainer.model)
    batch = fixed_batch(trainer, reference=perturbed(trainer.model))
    got = one_update_grads(trainer, batch)
    assert_matches(got, expected_grads(start, batch, kl_coef=0.5, kl_estimator="k1"),
                   expected_grads(start, batch, kl_coef=0.5))  # fmt: skip


def test_entropy_coef_adds_the_entropy_gradient(tmp_path):
    trainer = make_trainer(tmp_path, "objective.entropy_coef=0.3")
    start, batch = copy.deepcopy(trainer.model), fixed_batch(trainer)
    got = one_update_grads(trainer, batch)
    assert_matches(got, expected_grads(start, batch, entropy_coef=0.3), expected_grads(start, batch))


def _zero_advantage_update(trainer: Trainer, reference=None) -> str:
    batch = fixed_batch(trainer, reference=reference)
    batch.advantages = torch.zeros_like(batch.advantages)
    before = copy.deepcopy(trainer.model.state_dict())
    _, outcome = trainer._update(batch, torch.arange(batch.input_ids.shape[0]))
    moved = any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert moved == (outcome == "applied")
    return outcome


def test_a_kl_term_alone_is_signal_enough(tmp_path):
    assert _zero_advantage_update(make_trainer(tmp_path / "off")) == "skipped_zero_signal"  # the control
    trainer = make_trainer(tmp_path / "on", "objective.kl_coef=0.5")
    assert _zero_advantage_update(trainer, reference=perturbed(trainer.model)) == "applied"


def test_an_entropy_term_alone_is_signal_enough(tmp_path):
    assert _zero_advantage_update(make_trainer(tmp_path, "objective.entropy_coef=0.3")) == "applied"


def _run_steps(trainer: Trainer, monkeypatch, steps: int):
    """Run ``train_step(1..steps)``; record each rollout (sampler weights, batch, old log-probs as
    returned), each update's rows, and the weights after each step."""
    rec = {"sampler": [], "batches": [], "old": [], "rows": [], "after": [], "metrics": []}
    real = loop_module.make_rollout

    def spy_rollout(behaviour, *args, **kwargs):
        rec["sampler"].append(copy.deepcopy(behaviour.state_dict()))
        batch = real(behaviour, *args, **kwargs)
        rec["batches"].append(batch)
        rec["old"].append(batch.old_log_probs.clone())
        return batch

    real_update = trainer._update

    def spy_update(batch, idx, **kwargs):
        rec["rows"].append(idx.clone())
        return real_update(batch, idx, **kwargs)

    monkeypatch.setattr(loop_module, "make_rollout", spy_rollout)
    monkeypatch.setattr(trainer, "_update", spy_update)
    for step in range(1, steps + 1):
        rec["metrics"].append(trainer.train_step(step))
        rec["after"].append(copy.deepcopy(trainer.model.state_dict()))
    return rec


def _logprobs(model, batch):
    logp = response_logprobs_no_grad(model, batch.input_ids, batch.attention_mask, batch.response_ids,
                                     temperature=1.0, groups=batch.groups)  # fmt: skip
    return torch.where(batch.response_mask, logp, torch.zeros(()))


def test_kl_reference_is_the_initial_policy(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, "objective.kl_coef=0.5", "update.mini_batches=1")
    initial = copy.deepcopy(trainer.model)
    trainer.model.load_state_dict(perturbed(trainer.model).state_dict())  # the policy has moved away from it
    start = copy.deepcopy(trainer.model)
    steps = Steps(trainer)
    rec = _run_steps(trainer, monkeypatch, 1)
    batch = rec["batches"][0]
    ref = torch.where(batch.response_mask, batch.ref_log_probs, torch.zeros(()))
    torch.testing.assert_close(ref, _logprobs(initial, batch), rtol=0, atol=1e-6)
    assert (ref - _logprobs(start, batch)).abs().max() > 1e-2
    assert_matches(steps.grads[0], expected_grads(start, batch, kl_coef=0.5), expected_grads(start, batch))


def test_advantage_method_gives_the_batch_advantages(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, "objective.advantage=drgrpo", "update.mini_batches=1")
    start = copy.deepcopy(trainer.model)
    steps = Steps(trainer)
    batch = _run_steps(trainer, monkeypatch, 1)["batches"][0]
    r = batch.rewards.view(-1, 4)
    torch.testing.assert_close(batch.advantages, (r - r.mean(1, keepdim=True)).flatten())  # Dr.GRPO: not /std
    assert_matches(steps.grads[0], expected_grads(start, batch), _grads_with_grpo_advantages(start, batch))


def _grads_with_grpo_advantages(model, batch):
    other = copy.copy(batch)
    r = batch.rewards.view(-1, 4)
    other.advantages = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-6)).flatten()
    return expected_grads(model, other)


# ----------------------------------------------------------------------------- optim
def _two_updates(trainer: Trainer):
    """Two applied updates on the two halves of a fixed batch; the start weights and their records."""
    start = [p.detach().clone() for p in trainer.model.parameters()]
    batch = fixed_batch(trainer)
    steps = Steps(trainer)
    for idx in trainer.mini_batches(1, 0, batch.input_ids.shape[0]):
        assert trainer._update(batch, idx)[1] == "applied"
    assert len(steps.grads) == 2
    return start, steps


def adamw_replay(start, grads, lrs, *, betas=(0.9, 0.99), weight_decay=0.0):
    """``torch.optim.AdamW`` (the reference, not fused) stepped on the recorded gradients."""
    params = [p.clone().requires_grad_(True) for p in start]
    opt = torch.optim.AdamW(params, lr=lrs[0], betas=betas, weight_decay=weight_decay, foreach=False)
    for step_grads, lr in zip(grads, lrs):
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.param_groups[0]["lr"] = lr
        opt.step()
    return [p.detach() for p in params]


def _assert_adamw(trainer, start, steps, configured: dict, default: dict):
    now = [p.detach() for p in trainer.model.parameters()]
    want = adamw_replay(start, steps.grads, **configured)
    other = adamw_replay(start, steps.grads, **default)
    moved = [a - s for a, s in zip(want, start)]
    err = max(float((a - b).abs().max()) for a, b in zip(now, want))
    gap = max(float((a - b).abs().max()) for a, b in zip(other, want))
    assert err < 1e-6, err
    assert gap > 1e-4 and gap > 100 * err, gap
    assert max(float(m.abs().max()) for m in moved) > 1e-4


def test_lr_is_the_step_size_of_adamw(tmp_path):
    trainer = make_trainer(tmp_path, "optim.lr=0.02")
    start, steps = _two_updates(trainer)
    assert steps.lrs == [0.02, 0.02]
    _assert_adamw(trainer, start, steps, {"lrs": [0.02, 0.02]}, {"lrs": [3e-4, 3e-4]})


def test_weight_decay_is_adamws(tmp_path):
    trainer = make_trainer(tmp_path, "optim.lr=0.01", "optim.weight_decay=0.5")
    start, steps = _two_updates(trainer)
    _assert_adamw(trainer, start, steps, {"lrs": [0.01] * 2, "weight_decay": 0.5}, {"lrs": [0.01] * 2})


def test_betas_are_adamws(tmp_path):
    trainer = make_trainer(tmp_path, "optim.lr=0.01", "optim.betas=[0.5, 0.8]")
    start, steps = _two_updates(trainer)
    _assert_adamw(trainer, start, steps, {"lrs": [0.01] * 2, "betas": (0.5, 0.8)}, {"lrs": [0.01] * 2})


def test_grad_clip_bounds_the_applied_gradient(tmp_path):
    trainer = make_trainer(tmp_path, "optim.grad_clip=0.05")
    start, batch = copy.deepcopy(trainer.model), fixed_batch(trainer)
    got = one_update_grads(trainer, batch)
    raw = expected_grads(start, batch)
    norm = float(flat(raw).norm())
    assert norm > 1.0  # so neither the default clip (1.0) nor none would give a norm of 0.05
    assert float(flat(got).norm()) == pytest.approx(0.05, rel=1e-4)
    assert rel(got, [g * (0.05 / norm) for g in raw]) < 1e-5


def test_grad_clip_zero_applies_the_raw_gradient(tmp_path):
    trainer = make_trainer(tmp_path, "optim.grad_clip=0")
    start, batch = copy.deepcopy(trainer.model), fixed_batch(trainer)
    got = one_update_grads(trainer, batch)
    raw = expected_grads(start, batch)
    assert float(flat(raw).norm()) > 1.5  # the default clip (1.0) would bind
    assert rel(got, raw) < 1e-5


def _lrs_of_updates(trainer: Trainer, n: int) -> list[float]:
    batch = fixed_batch(trainer)
    steps = Steps(trainer)
    for _ in range(n):
        assert trainer._update(batch, torch.arange(batch.input_ids.shape[0]))[1] == "applied"
    return steps.lrs


def test_warmup_steps_ramp_the_lr(tmp_path):
    # steps=3 × K=2 × epochs=1: 6 updates in all
    trainer = make_trainer(
        tmp_path, "optim.lr=0.01", "optim.warmup_steps=3", "steps=3", "update.mini_batches=2"
    )
    assert _lrs_of_updates(trainer, 6) == pytest.approx([0.01 * f for f in (1 / 3, 2 / 3, 1, 1, 1, 1)])


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_schedule_decays_the_lr(tmp_path, schedule):
    trainer = make_trainer(tmp_path, "optim.lr=0.01", f"optim.schedule={schedule}", "optim.warmup_steps=2", "steps=3",
                           "update.mini_batches=2")  # fmt: skip
    progress = [(u - 2) / 4 for u in range(2, 6)]  # after the 2 warm-up updates, over the remaining 4
    decay = [1 - p if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * p)) for p in progress]
    assert _lrs_of_updates(trainer, 6) == pytest.approx([0.01 * f for f in (0.5, 1.0, *decay)])


# ----------------------------------------------------------------------------- update
def test_mini_batches_give_k_updates_over_disjoint_rows(tmp_path, monkeypatch):
    trainer = make_trainer(
        tmp_path, "update.mini_batches=4", "optim.schedule=linear", "optim.lr=0.01", "steps=1"
    )
    steps = Steps(trainer)
    rec = _run_steps(trainer, monkeypatch, 1)
    assert [len(r) for r in rec["rows"]] == [2, 2, 2, 2]
    assert sorted(torch.cat(rec["rows"]).tolist()) == list(range(8))
    assert rec["metrics"][0]["update/applied"] == 4 and trainer.updates == 4 and len(steps.grads) == 4
    # the schedule spans exactly steps × K updates: linear decay to 0 at the last
    assert steps.lrs == pytest.approx([0.01, 0.0075, 0.005, 0.0025])
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


def test_epochs_repeat_the_pass_over_the_batch(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, "update.epochs=3", "update.mini_batches=2", "optim.schedule=linear",
                           "optim.lr=0.01", "steps=1")  # fmt: skip
    steps = Steps(trainer)
    rec = _run_steps(trainer, monkeypatch, 1)
    assert len(rec["rows"]) == 6 and len(steps.grads) == 6 and rec["metrics"][0]["update/applied"] == 6
    for epoch in range(3):
        assert sorted(torch.cat(rec["rows"][2 * epoch : 2 * epoch + 2]).tolist()) == list(range(8))
    assert steps.lrs == pytest.approx([0.01 * (1 - u / 6) for u in range(6)])


def test_micro_batches_split_the_forward_and_keep_the_gradient(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, "update.micro_batch_size=3", "objective.entropy_coef=0.1")
    start, batch = copy.deepcopy(trainer.model), fixed_batch(trainer)
    rows: list[int] = []
    real = loop_module.response_logprobs

    def counting(model, input_ids, *args, **kwargs):
        rows.append(input_ids.shape[0])
        return real(model, input_ids, *args, **kwargs)

    monkeypatch.setattr(loop_module, "response_logprobs", counting)
    got = one_update_grads(trainer, batch)
    assert rows == [3, 3, 2]
    # globally normalised: the same gradient as one forward over the mini-batch (unequal lengths)
    assert rel(got, expected_grads(start, batch, entropy_coef=0.1)) < 1e-5


def test_staleness_samples_and_scores_with_the_policy_of_n_updates_ago(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, "update.staleness=2", "update.mini_batches=1", "optim.lr=0.01")
    policies = [copy.deepcopy(trainer.model.state_dict())]  # policies[u]: after u updates
    rec = _run_steps(trainer, monkeypatch, 4)
    policies += rec["after"]
    assert [m["update/applied"] for m in rec["metrics"]] == [1, 1, 1, 1]
    for step, sampler in enumerate(rec["sampler"], start=1):
        done = step - 1  # updates before this step's rollout
        want = policies[max(0, done - 2)]
        assert all(torch.equal(sampler[k], want[k]) for k in want), f"step {step}"
        if done >= 1:  # a policy that differs from the current one
            assert not all(torch.equal(sampler[k], policies[done][k]) for k in want)
    # the ratios of step 4 are taken against the policy of 2 updates before (the sampler's log-probs)
    batch, old = rec["batches"][3], rec["old"][3]
    stale, current = copy.deepcopy(trainer.model), copy.deepcopy(trainer.model)
    stale.load_state_dict(policies[1])
    current.load_state_dict(policies[3])
    assert (old - _logprobs(stale, batch)).abs().max() < 1e-4
    assert (old - _logprobs(current, batch)).abs().max() > 1e-3


MARK = 1e-3
"""Added to the recomputed behaviour log-probs in :func:`test_old_logprobs_source`."""


@pytest.mark.parametrize("mode", ["recompute", "sampler"])
def test_old_logprobs_source(tmp_path, monkeypatch, mode):
    trainer = make_trainer(tmp_path, f"update.old_logprobs={mode}", "update.mini_batches=2")
    start = copy.deepcopy(trainer.model)
    sampled, recomputed = [], []
    real_sample, real_no_grad = rollout_module.sample, rollout_module.response_logprobs_no_grad

    def spy_sample(*args, **kwargs):
        out = real_sample(*args, **kwargs)
        sampled.append(out.old_log_probs.clone())
        return out

    def spy_no_grad(*args, **kwargs):  # marks the recomputed log-probs, to find them in the batch
        recomputed.append(1)
        return real_no_grad(*args, **kwargs) + MARK

    monkeypatch.setattr(rollout_module, "sample", spy_sample)
    monkeypatch.setattr(rollout_module, "response_logprobs_no_grad", spy_no_grad)
    rec = _run_steps(trainer, monkeypatch, 1)
    batch, mask = rec["batches"][0], rec["batches"][0].response_mask
    forward = torch.where(mask, _logprobs(start, batch) + MARK, torch.zeros(()))  # the recompute, marked
    sampler = torch.where(mask, sampled[0], torch.zeros(()))
    assert not torch.equal(forward, sampler)  # the two sources differ, so they can be told apart
    second = rec["rows"][1]  # rows of the second update: the first may take its own log-probs
    if mode == "recompute":  # every row's ratios, the first update's too, are against the recompute
        assert len(recomputed) == 1 and torch.equal(rec["old"][0], forward)
        assert torch.equal(batch.old_log_probs, forward)
    else:
        assert recomputed == [] and torch.equal(rec["old"][0], sampler)
        assert torch.equal(batch.old_log_probs[second], sampler[second])


def test_max_consecutive_nonfinite_stops_after_that_many(tmp_path, monkeypatch):
    real = loop_module.policy_loss

    def nan_loss(*args, **kwargs):
        out = real(*args, **kwargs)
        return dataclasses.replace(out, loss=out.loss * float("nan"))

    for limit in (2, 5):
        trainer = make_trainer(tmp_path / str(limit), f"update.max_consecutive_nonfinite={limit}")
        batch = fixed_batch(trainer)
        start = copy.deepcopy(trainer.model.state_dict())
        monkeypatch.setattr(loop_module, "policy_loss", nan_loss)
        rows = torch.arange(batch.input_ids.shape[0])
        for _ in range(limit - 1):
            assert trainer._update(batch, rows)[1] == "skipped_nonfinite"
        with pytest.raises(
            TrainingError, match=rf"update.max_consecutive_nonfinite: {limit} updates in a row"
        ):
            trainer._update(batch, rows)
        monkeypatch.setattr(loop_module, "policy_loss", real)
        assert all(torch.equal(start[k], v) for k, v in trainer.model.state_dict().items())


# ----------------------------------------------------------------------------- objective.rollout_correction
RC = "objective.rollout_correction."


def _corrected_trainer(tmp_path, *overrides, old_logprobs="recompute"):
    """A trainer whose old log-probs are not the sampler's, and the fixed batch (old = recompute + noise,
    so the sampler's log-probs are 0.4-noise away from them) with its start weights."""
    trainer = make_trainer(tmp_path, f"update.old_logprobs={old_logprobs}", *overrides)
    start, batch = copy.deepcopy(trainer.model), fixed_batch(trainer)
    gap = (batch.old_log_probs - batch.rollout_log_probs)[batch.response_mask].abs()
    assert gap.max() > 0.5  # weights far from 1, so truncation, bands and rejection act
    return trainer, start, batch


def _one_update(trainer, batch):
    """The gradient and metrics of one update on the whole fixed batch."""
    steps = Steps(trainer)
    metrics, outcome = trainer._update(batch, torch.arange(batch.input_ids.shape[0]))
    assert outcome == "applied" and len(steps.grads) == 1
    return steps.grads[0], metrics


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_rollout_is_weights_the_terms(tmp_path, level):
    trainer, start, batch = _corrected_trainer(tmp_path, f"{RC}rollout_is={level}")
    got, metrics = _one_update(trainer, batch)
    assert_matches(got, expected_grads(start, batch, correction={"rollout_is": level}),
                   expected_grads(start, batch))  # fmt: skip
    assert metrics["rollout_corr/is_truncated_frac"] > 0 and metrics["rollout_corr/is_max"] == pytest.approx(2.0)


@pytest.mark.parametrize(("written", "value"), [("1.2", 1.2), ("0.7_1.5", "0.7_1.5")])
def test_rollout_is_threshold_truncates_or_bands_the_weights(tmp_path, written, value):
    trainer, start, batch = _corrected_trainer(tmp_path, f"{RC}rollout_is=token", f"{RC}rollout_is_threshold={written}")
    assert trainer.config.objective.rollout_correction.rollout_is_threshold == value  # a band stays a string
    got, metrics = _one_update(trainer, batch)
    assert_matches(got, expected_grads(start, batch, correction={"rollout_is": "token", "rollout_is_threshold": value}),
                   expected_grads(start, batch, correction={"rollout_is": "token"}))  # fmt: skip
    if isinstance(value, str):  # IcePop: weights outside [0.7, 1.5] are zeroed, none truncated
        assert 0 < metrics["rollout_corr/is_masked_frac"] < 1 and metrics["rollout_corr/is_max"] <= 1.5
    else:
        assert metrics["rollout_corr/is_max"] == pytest.approx(1.2)


def test_rollout_is_batch_normalize_divides_by_the_mean(tmp_path):
    trainer, start, batch = _corrected_trainer(tmp_path, f"{RC}rollout_is=token", f"{RC}rollout_is_batch_normalize=true")
    got, metrics = _one_update(trainer, batch)
    assert_matches(got, expected_grads(start, batch, correction={"rollout_is": "token", "rollout_is_batch_normalize": True}),
                   expected_grads(start, batch, correction={"rollout_is": "token"}))  # fmt: skip
    assert metrics["rollout_corr/is_mean"] == pytest.approx(1.0, abs=1e-6)


def _counts(mask):
    return {"global_num_tokens": mask.sum(), "global_num_seqs": mask.any(-1).sum()}


def test_rollout_rs_rejects_and_micro_batches_count_what_it_keeps(tmp_path):
    rs = {"rollout_rs": "token_k1,seq_mean_k3", "rollout_rs_threshold": "1.6,0.09"}
    trainer, start, batch = _corrected_trainer(tmp_path, f"{RC}rollout_rs=token_k1,seq_mean_k3",
                                               f"{RC}rollout_rs_threshold=1.6,0.09", "update.micro_batch_size=3")  # fmt: skip
    got, metrics = _one_update(trainer, batch)
    assert 0 < metrics["rollout_corr/rs_masked_frac"] < 1 and 0 < metrics["rollout_corr/rs_seq_masked_frac"] < 1
    full = expected_grads(start, batch, correction=rs)  # one forward: the loss counts the kept tokens itself
    assert_matches(got, full, expected_grads(start, batch))
    # micro-batches normalised by the response mask's counts, not the kept tokens', would be another gradient
    uncorrected = expected_grads(start, batch, correction=rs, micro=3, norms=_counts(batch.response_mask))
    assert rel(uncorrected, full) > 1e-3


def test_rollout_rs_threshold_bounds_the_rejection(tmp_path):
    trainer, start, batch = _corrected_trainer(tmp_path, f"{RC}rollout_rs=token_k1", f"{RC}rollout_rs_threshold=1.5")
    got, metrics = _one_update(trainer, batch)
    assert_matches(got, expected_grads(start, batch, correction={"rollout_rs": "token_k1", "rollout_rs_threshold": 1.5}),
                   expected_grads(start, batch, correction={"rollout_rs": "token_k1", "rollout_rs_threshold": 3.0}))  # fmt: skip
    gap = (batch.old_log_probs - batch.rollout_log_probs)[batch.response_mask].abs()
    assert metrics["rollout_corr/rs_masked_frac"] == pytest.approx(float((gap > math.log(1.5)).float().mean()), abs=1e-6)


def test_bypass_mode_centres_the_ratios_on_the_sampler(tmp_path):
    trainer, start, batch = _corrected_trainer(tmp_path, f"{RC}bypass_mode=true", old_logprobs="sampler")
    got, metrics = _one_update(trainer, batch)
    assert_matches(got, expected_grads(start, batch, correction={"bypass_mode": True}), expected_grads(start, batch))
    assert metrics["ratio/max"] < 1 + 1e-4 and metrics["ratio/min"] > 1 - 1e-4  # the sampler is this policy


def test_bypass_rejection_counts_what_it_keeps_across_micro_batches(tmp_path):
    """The rejection depends on the current policy here: the trainer counts the kept tokens with a no-grad
    forward before the micro-batches (token-mean: the global token count is every micro-batch's divisor)."""
    rs = {"bypass_mode": True, "rollout_rs": "token_k1", "rollout_rs_threshold": 1.5}
    loss = {"name": "grpo", "loss_agg_mode": "token-mean"}
    trainer, start, batch = _corrected_trainer(tmp_path, f"{RC}bypass_mode=true", f"{RC}rollout_rs=token_k1",
                                               f"{RC}rollout_rs_threshold=1.5", "update.micro_batch_size=3",
                                               "objective.name=grpo", "objective.loss_agg_mode=token-mean",
                                               old_logprobs="sampler")  # fmt: skip
    noise = 0.4 * torch.randn(batch.rollout_log_probs.shape, generator=torch.Generator().manual_seed(3))
    batch.rollout_log_probs = torch.where(batch.response_mask, batch.rollout_log_probs + noise, torch.zeros(()))
    got, metrics = _one_update(trainer, batch)
    assert 0 < metrics["rollout_corr/rs_masked_frac"] < 1
    full = expected_grads(start, batch, correction=rs, **loss)
    assert_matches(got, full, expected_grads(start, batch, correction={"bypass_mode": True}, **loss))
    uncorrected = expected_grads(start, batch, correction=rs, micro=3, norms=_counts(batch.response_mask), **loss)
    assert rel(uncorrected, full) > 1e-3


def test_proximal_old_logprobs_are_the_current_policys(tmp_path, monkeypatch):
    """Decoupled PPO: with staleness 1 the ratios are centred on the policy at the start of the step's
    updates, and the loss gets the sampler's (one update older) log-probs as ``rollout_log_probs``."""
    trainer = make_trainer(tmp_path, "update.old_logprobs=proximal", "update.staleness=1", f"{RC}rollout_is=token",
                           "update.mini_batches=1", "optim.lr=0.01")  # fmt: skip
    calls = []
    real = loop_module.policy_loss

    def spy(name, log_probs, old_log_probs, *args, **kwargs):
        calls.append((old_log_probs.clone(), kwargs["rollout_log_probs"].clone(), kwargs["rollout_is"]))
        return real(name, log_probs, old_log_probs, *args, **kwargs)

    monkeypatch.setattr(loop_module, "policy_loss", spy)
    policies = [copy.deepcopy(trainer.model.state_dict())]
    rec = _run_steps(trainer, monkeypatch, 3)
    policies += rec["after"]
    assert [m["update/applied"] for m in rec["metrics"]] == [1, 1, 1] and len(calls) == 3
    batch = rec["batches"][2]  # step 3: sampled by the policy after 1 update, trained from the one after 2
    stale, current = copy.deepcopy(trainer.model), copy.deepcopy(trainer.model)
    stale.load_state_dict(policies[1])
    current.load_state_dict(policies[2])
    old, rollout, level = calls[2]
    rows, width = rec["rows"][2], old.shape[1]  # the loss sees the mini-batch's rows, trimmed to their longest
    assert level == "token"
    torch.testing.assert_close(old, _logprobs(current, batch)[rows, :width], rtol=0, atol=1e-6)
    assert (rollout - _logprobs(stale, batch)[rows, :width]).abs().max() < 1e-4  # the sampler's own log-probs
    assert (rollout - old).abs().max() > 1e-3
    assert rec["metrics"][2]["ratio/first_update_max_dev"] < 1e-5  # centred on the current policy
    assert rec["metrics"][2]["rollout_corr/kl"] != 0 and "rollout_corr/is_mean" in rec["metrics"][2]
