"""rollout.filter_groups / rollout.oversample: DAPO's dynamic sampling keeps only groups whose rewards
are not all equal, the first P of oversample × P sampled prompts, in both the synchronous trainer and an
asynchronous worker's rollout."""

from __future__ import annotations

import pytest
import torch
from trainer_cases import tiny_config

from sspo.trainer import Trainer
from sspo.trainer.config import ConfigError
from sspo.trainer.rollout import informative_groups, make_rollout


class GroupScorer:
    """Row ``i`` of group ``g = i // 4``: groups 1, 3, 4 mixed (right on even rows), the others all wrong."""

    last_error = None
    mixed = (1, 3, 4)

    def score_batch(self, completions, references):
        rewards = [float(i // 4 in self.mixed and i % 2 == 0) for i in range(len(completions))]
        return rewards, {"reward/mean": sum(rewards) / len(rewards), "reward/error_frac": 0.0}

    def close(self):
        pass


def quiet(*_args):
    return None


def test_informative_groups_are_the_first_with_a_non_zero_advantage():
    adv = torch.tensor([0, 0, 1, -1, 0, 0, 0, 0, 0.5, -0.5, 2, -2], dtype=torch.float32)
    assert informative_groups(adv, 2, 2).tolist() == [1, 4]
    assert informative_groups(adv, 2, 9).tolist() == [1, 4, 5]
    assert informative_groups(torch.zeros(6), 2, 3).tolist() == [0]  # none: one group, its update skipped


def _rollout(trainer, problems, keep_groups=None):
    return make_rollout(trainer.model, trainer.tokenizer, problems, trainer.scorer, samples_per_prompt=4,
                        max_new_tokens=8, temperature=1.0, top_p=1.0, template="raw", advantage="grpo",
                        generator=torch.Generator().manual_seed(0), truncated="score", keep_groups=keep_groups)  # fmt: skip


def test_make_rollout_keeps_the_rows_of_the_first_informative_groups(tmp_path):
    trainer = Trainer(tiny_config(tmp_path), log=quiet)
    trainer.scorer = GroupScorer()
    problems = [trainer.train_problems[i] for i in range(6)]
    full, kept = _rollout(trainer, problems), _rollout(trainer, problems, keep_groups=2)
    rows = torch.tensor([4, 5, 6, 7, 12, 13, 14, 15])  # groups 1 and 3, the first two mixed ones
    assert kept.input_ids.shape[0] == 8 and kept.completions == [full.completions[i] for i in rows.tolist()]
    for name in ("input_ids", "response_ids", "response_mask", "old_log_probs", "advantages", "rewards"):
        torch.testing.assert_close(getattr(kept, name), getattr(full, name)[rows], msg=name)
    assert kept.groups.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert (kept.advantages.view(2, 4) != 0).any(-1).all()
    assert kept.metrics["rollout/groups_kept"] == 2.0
    assert kept.metrics["rollout/groups_informative_frac"] == pytest.approx(0.5)  # 3 of 6
    assert kept.metrics["reward/mean"] == full.metrics["reward/mean"]  # logged over everything sampled


def test_the_trainer_samples_oversample_times_p_prompts_and_updates_on_the_kept_rows(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(tmp_path, "rollout.filter_groups=true", "rollout.oversample=3",
                                  "update.mini_batches=1"), log=quiet)  # fmt: skip
    trainer.scorer = GroupScorer()
    assert len(trainer._problems_for(1)) == 6
    seen = []
    original = trainer._update

    def record(batch, idx, **kwargs):
        seen.append((batch.rewards[idx].clone(), batch.advantages[idx].clone()))
        return original(batch, idx, **kwargs)

    monkeypatch.setattr(trainer, "_update", record)
    metrics = trainer.train_step(1)
    (rewards, advantages), = seen
    assert rewards.numel() == 8 and (advantages.view(2, 4) != 0).any(-1).all()
    assert metrics["rollout/groups_kept"] == 2.0 and metrics["update/applied"] == 1.0


def test_without_filter_groups_every_sampled_group_is_trained_on(tmp_path, monkeypatch):
    """The control: the same step, unfiltered, updates on all P groups, equal rewards included."""
    trainer = Trainer(tiny_config(tmp_path, "update.mini_batches=1"), log=quiet)
    trainer.scorer = GroupScorer()
    seen = []
    original = trainer._update
    monkeypatch.setattr(trainer, "_update", lambda batch, idx, **kw: (seen.append(idx.numel()), original(batch, idx, **kw))[1])
    metrics = trainer.train_step(1)
    assert seen == [8] and "rollout/groups_kept" not in metrics  # groups 0 (all wrong) and 1


def test_an_asynchronous_worker_filters_the_same_way(tmp_path):
    from sspo.trainer.asynchronous import trainer_rollout

    config = tiny_config(tmp_path, "rollout.filter_groups=true", "rollout.oversample=3")
    trainer = Trainer(config, log=quiet)
    rollout = trainer_rollout.TrainerRollout(config, trainer.tokenizer, trainer.train_problems, recompute=True)
    trainer_rollout._SCORERS[id(rollout)] = GroupScorer()
    try:
        batch = rollout(trainer.model, 1)
    finally:
        trainer_rollout._SCORERS.pop(id(rollout), None)
    assert batch.input_ids.shape[0] == 8 and batch.metrics["rollout/groups_kept"] == 2.0
    assert (batch.advantages.view(2, 4) != 0).any(-1).all()


@pytest.mark.parametrize(("overrides", "message"), [
    (("rollout.oversample=0",), "rollout.oversample: must be >= 1, got 0"),
    (("rollout.oversample=2",), "rollout.oversample: oversampling only changes a run with rollout.filter_groups=true"),
])  # fmt: skip
def test_oversample_is_checked(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        tiny_config(tmp_path, *overrides)


def test_fewer_kept_rows_than_mini_batches_skips_the_empty_ones(tmp_path):
    """One informative group of 4 rows and K = 8 mini-batches: four updates of one row, four skipped."""

    class OneMixedGroup(GroupScorer):
        mixed = (1,)

    trainer = Trainer(tiny_config(tmp_path, "rollout.filter_groups=true", "rollout.oversample=2",
                                  "update.mini_batches=8"), log=quiet)  # fmt: skip
    trainer.scorer = OneMixedGroup()
    metrics = trainer.train_step(1)
    assert metrics["rollout/groups_kept"] == 1.0
    assert metrics["update/applied"] + metrics["update/skipped_zero_signal"] == 8
    assert metrics["update/skipped_zero_signal"] >= 4
