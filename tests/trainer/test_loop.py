"""The training loop: rollout masking, advantages wiring, mini-batches, staleness, checkpoints, resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from trainer_cases import TINY, tiny_config

from sspo.trainer import Trainer
from sspo.trainer.checkpoint import checkpoint_dirs, load_checkpoint
from sspo.trainer.metrics_log import read_metrics

TIMING = ("time/", "throughput/")


def _comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def test_rollout_masks_advantages_and_first_update_ratio(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "update.mini_batches=2"), log=lambda *a: None)
    problems = trainer._problems_for(1)
    from sspo.trainer.rollout import make_rollout

    batch = make_rollout(trainer.model, trainer.tokenizer, problems, trainer.scorer, samples_per_prompt=4,
                         max_new_tokens=8, temperature=1.0, top_p=1.0, template="raw", advantage="grpo",
                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    mask, ids = batch.response_mask, batch.response_ids
    eos = trainer.tokenizer.eos_token_id
    for row_ids, row_mask in zip(ids, mask):
        n = int(row_mask.sum())
        assert row_mask[:n].all() and not row_mask[n:].any()  # a prefix
        hits = (row_ids[:n] == eos).nonzero()
        assert len(hits) <= 1 and (len(hits) == 0 or int(hits[0]) == n - 1)  # stops at EOS, EOS included
    assert (batch.old_log_probs[~mask] == 0).all() and (batch.old_log_probs[mask] < 0).all()
    groups = batch.rewards.view(2, 4)
    expected = (groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-6)
    torch.testing.assert_close(batch.advantages.view(2, 4), expected)
    assert batch.metrics["rollout/logprob_mismatch_max"] < 1e-4  # sampler vs training forward

    metrics = trainer.train_step(1)
    assert metrics["ratio/first_update_max_dev"] < 1e-5  # fresh rollout: first update is on-policy
    assert trainer.updates == 2  # K = 2 mini-batches, one update each
    assert metrics["ratio/max"] > 1 + 1e-6 or metrics["ratio/min"] < 1 - 1e-6  # the second update is off-policy


def test_staleness_samples_with_an_older_policy(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "update.mini_batches=1", "update.staleness=1", "optim.lr=1e-2"),
                      log=lambda *a: None)  # fmt: skip
    first = trainer.train_step(1)
    second = trainer.train_step(2)
    assert first["ratio/first_update_max_dev"] < 1e-5  # the behaviour policy is still the initial one
    assert second["ratio/first_update_max_dev"] > 1e-4  # rollouts of step 2 come from 1 update ago
    assert len(trainer.history) == 2


def test_checkpoint_round_trip(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "steps=2", "checkpoint_every=1", "keep_checkpoints=1"), log=lambda *a: None)
    trainer.run()
    ckpts = checkpoint_dirs(tmp_path)
    assert [p.name for p in ckpts] == ["step_000002"]  # only the last one kept
    fresh = Trainer(tiny_config(tmp_path / "other"), log=lambda *a: None)
    state, snapshots = load_checkpoint(ckpts[0], model=fresh.model, optimizer=fresh.optimizer, scheduler=fresh.scheduler)
    assert state["step"] == 2 and state["updates"] == 4 and snapshots == []
    for (name, a), b in zip(trainer.model.state_dict().items(), fresh.model.state_dict().values()):
        assert torch.equal(a, b), name
    sa, sb = trainer.optimizer.state_dict()["state"], fresh.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]) for k in sa)
    summary = json.loads((tmp_path / "final_metrics.json").read_text())
    assert summary["steps"] == 2 and (tmp_path / "plots" / "training.png").stat().st_size > 10_000
    assert (tmp_path / "final_model" / "model.safetensors").is_file()
    assert list((tmp_path / "tensorboard").iterdir())


def test_refuses_to_overwrite_a_run(tmp_path):
    Trainer(tiny_config(tmp_path, "steps=1"), log=lambda *a: None).run()
    with pytest.raises(FileExistsError, match="already holds a run; use `sspo resume"):
        Trainer(tiny_config(tmp_path, "steps=1"), log=lambda *a: None)


def _cli(*args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "sspo.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)  # fmt: skip


def test_sigkilled_run_resumes_to_the_same_metrics(tmp_path):
    common = [*TINY, "steps=5", "checkpoint_every=1", "update.staleness=1", "objective.name=grpo"]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert _cli("train", *common, f"out_dir={whole}").wait(timeout=600) == 0

    proc = _cli("train", *common, f"out_dir={broken}")
    deadline = time.time() + 300
    while not (broken / "checkpoints" / "step_000002").is_dir():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else ""
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere inside step 3 (or later): a kill at an arbitrary moment
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (broken / "final_metrics.json").exists()
    out = _cli("resume", str(broken))
    assert out.wait(timeout=600) == 0, out.stdout.read()
    assert _comparable(read_metrics(broken)) == _comparable(read_metrics(whole))
    a = json.loads((whole / "final_metrics.json").read_text())
    b = json.loads((broken / "final_metrics.json").read_text())
    assert a["accuracy_after"] == b["accuracy_after"] and b["steps"] == 5


def test_train_cli_smoke_and_bad_config_error(tmp_path):
    proc = _cli("train", *TINY, "steps=2", f"out_dir={tmp_path}")
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output
    assert '"accuracy_after"' in output
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2, 2]
    assert {"reward/mean", "entropy", "grad_norm", "seq_weight/ess", "gate/weight_mean", "loss"} <= rows[1].keys()
    bad = _cli("train", "rollout.top_p=2", f"out_dir={tmp_path / 'x'}")
    output = bad.communicate(timeout=120)[0]
    assert bad.returncode == 2 and "rollout.top_p: must be in (0, 1], got 2.0" in output
    assert not (tmp_path / "x").exists()


def test_work_check_zeroes_right_answers_with_wrong_work():
    from sspo.tasks import Problem
    from sspo.trainer.rewards import MathReward

    completions = ["3+4=7. #### 7", "3+4=8. 8-1=7. #### 7", "3+4=7. #### 9", "#### 7"]
    problems = [Problem("3+4?", "7")] * 4
    reward = MathReward(check_work=True)
    try:
        rewards, metrics = reward.score_batch(completions, problems)
        assert rewards == [1.0, 0.0, 0.0, 0.0]
        assert {k: metrics[k] for k in ("reward/mean", "reward/answer_mean", "reward/bad_work_frac")} == {
            "reward/mean": 0.25, "reward/answer_mean": 0.75, "reward/bad_work_frac": 0.5}  # fmt: skip
        assert reward.success_batch(completions, problems) == [1.0, 1.0, 0.0, 1.0]  # evaluation: the answer alone
    finally:
        reward.close()


@pytest.mark.parametrize("source", ["recompute", "sampler"])
def test_behaviour_logprob_sources_start_on_policy(tmp_path, source):
    trainer = Trainer(tiny_config(tmp_path, "update.mini_batches=2", f"update.old_logprobs={source}"),
                      log=lambda *a: None)  # fmt: skip
    assert trainer.recompute_old is (source == "recompute")
    metrics = trainer.train_step(1)
    assert metrics["ratio/first_update_max_dev"] < 1e-5
    if source == "sampler":
        assert metrics["ratio/first_update_max_dev"] == 0.0  # its own detached log-probs
    assert 0.0 < metrics["rollout/logprob_mismatch_max"] < 1e-4  # sampler vs training forward, both fp32
    assert metrics["ratio/max"] > 1 + 1e-6 or metrics["ratio/min"] < 1 - 1e-6  # the second update is off-policy


def test_auto_recomputes_behaviour_logprobs_only_outside_float32(tmp_path):
    assert not Trainer(tiny_config(tmp_path / "a"), log=lambda *a: None).recompute_old
    assert Trainer(tiny_config(tmp_path / "b", "dtype=bfloat16"), log=lambda *a: None).recompute_old


def test_resume_after_the_final_evaluation_was_logged_does_not_log_it_twice(tmp_path):
    import shutil

    from sspo.trainer.loop import resume

    whole = tmp_path / "whole"
    Trainer(tiny_config(whole, "steps=2", "checkpoint_every=1"), log=lambda *a: None).run()
    broken = tmp_path / "broken"
    shutil.copytree(whole, broken)
    (broken / "final_metrics.json").unlink()  # killed after the final evaluation row, before the summary
    resume(broken, log=lambda *a: None)
    rows = read_metrics(broken)
    assert _comparable(rows) == _comparable(read_metrics(whole))
    assert sum("eval/accuracy" in r and r["step"] == 2 for r in rows) == 1
    assert (broken / "metrics.replayed.jsonl").read_text().count('"eval/accuracy"') == 1


RC = "objective.rollout_correction."


def test_decoupled_ppo_with_staleness_trains_and_logs_the_correction(tmp_path):
    """``update.old_logprobs=proximal`` + staleness + ``rollout_is``: a whole run, its correction in metrics.jsonl."""
    config = tiny_config(tmp_path, "steps=3", "update.staleness=2", "update.old_logprobs=proximal", f"{RC}rollout_is=token",
                         f"{RC}rollout_rs=token_k1", f"{RC}rollout_rs_threshold=10", "optim.lr=1e-2")  # fmt: skip
    summary = Trainer(config, log=lambda *a: None).run()
    assert summary["steps"] == 3
    rows = [r for r in read_metrics(tmp_path) if "loss" in r]
    assert len(rows) == 3 and all(r["update/applied"] == 2 for r in rows)
    assert rows[0]["rollout_corr/kl"] == pytest.approx(0.0, abs=1e-5)  # step 1: the sampler is the current policy
    assert abs(rows[2]["rollout_corr/kl"]) > 1e-4 and rows[2]["rollout_corr/is_max"] != pytest.approx(1.0, abs=1e-4)
    assert all(r["ratio/first_update_max_dev"] < 1e-5 for r in rows)  # centred on the policy the step starts from
    assert {"rollout_corr/is_mean", "rollout_corr/is_min", "rollout_corr/rs_masked_frac"} <= set(rows[2])


@pytest.mark.parametrize("overrides", [(), ("update.staleness=1", "optim.lr=1e-2"), ("rollout.sampler_dtype=bfloat16",)])
def test_without_a_correction_or_old_logprobs_of_their_own_the_loss_call_is_unchanged(tmp_path, monkeypatch, overrides):
    """No correction asked and the old log-probs the sampler's: policy_loss gets no rollout argument, and
    no ``rollout_corr/*`` metric appears (the update is today's, value for value)."""
    from sspo.trainer import loop

    seen = []
    real = loop.policy_loss

    def spy(*args, **kwargs):
        seen.append(sorted(k for k in kwargs if "rollout" in k or k == "bypass_mode"))
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "policy_loss", spy)
    trainer = Trainer(tiny_config(tmp_path, *overrides), log=lambda *a: None)
    assert not trainer.pass_rollout
    metrics = [trainer.train_step(step) for step in (1, 2)]
    assert seen and all(keys == [] for keys in seen)
    assert not any(k.startswith("rollout_corr/") for m in metrics for k in m)


def test_handing_the_sampler_logprobs_over_without_a_correction_changes_no_value(tmp_path, monkeypatch):
    """``update.old_logprobs=recompute`` passes the sampler's log-probs (``rollout_corr/kl`` is logged);
    with no correction asked every other metric equals that of the call without them."""
    from sspo.trainer import loop

    def run(out, strip):
        real = loop.policy_loss

        def call(*args, **kwargs):
            if strip:
                for key in ("rollout_log_probs", "rollout_is", "rollout_is_threshold", "rollout_is_batch_normalize",
                            "rollout_rs", "rollout_rs_threshold", "bypass_mode"):  # fmt: skip
                    kwargs.pop(key)
            return real(*args, **kwargs)

        with monkeypatch.context() as m:
            m.setattr(loop, "policy_loss", call)
            trainer = Trainer(tiny_config(out, "update.old_logprobs=recompute", "optim.lr=1e-2"), log=lambda *a: None)
            assert trainer.pass_rollout
            return [{k: v for k, v in trainer.train_step(s).items() if not k.startswith(TIMING)} for s in (1, 2)]

    handed, plain = run(tmp_path / "a", strip=False), run(tmp_path / "b", strip=True)
    assert all("rollout_corr/kl" in r and abs(r["rollout_corr/kl"]) < 1e-4 for r in handed)
    assert [{k: v for k, v in r.items() if k != "rollout_corr/kl"} for r in handed] == plain
