"""verl's own actor worker trains with every loss mode the plug-in registers.

Two GRPO steps of the tiny model per loss mode on CPU, through verl 0.9.1's ``ActorRolloutRefWorker``
(FSDP2 over gloo, world size 1, in-process, no Ray): ``verl_worker_run.py`` runs them in a fresh
interpreter (verl initialises a process group, patches transformers and reads its environment) and
records what verl computed; the tests below check it. Every step carries verl's rollout-correction
weights, sequence-level in the first step and token-level in the second.
"""

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("verl") is None:
    pytest.skip("verl is not installed", allow_module_level=True)

import sspo
import sspo.integrations.verl as sv

HERE = Path(__file__).resolve().parent
LOSS_MODES = sorted(sv.verl_names())
BATCH_COUPLED = {"m2po"}
"""Objectives whose terms depend on the whole batch given (M2PO's mask is over the micro-batch's tokens, as in
AReaL): their mini-batch loss is the sum of per-micro-batch calls, not one call over the mini-batch."""


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("verl-worker") / "runs.pt"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        # every verl worker imports these at `import verl`: the test's CPU platform, then the plug-in
        "VERL_USE_EXTERNAL_MODULES": "verl_cpu_platform,sspo.integrations.verl",
        "VERL_USE_EXTERNAL_PLUGINS": "none",
        "VERL_PLATFORM": "cpu",
        "VERL_ENGINE_DEVICE": "cuda",  # verl registers its FSDP engine class for cuda/npu only
        # what Ray sets for a worker of a one-process group
        "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": free_port(),
        "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
    }  # fmt: skip
    cmd = [sys.executable, str(HERE / "verl_worker_run.py"), str(out), *LOSS_MODES]
    proc = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return torch.load(out, weights_only=True)


def expected_hyperparameters(loss_mode: str, actor: dict) -> dict:
    """The objective's hyperparameters from verl's actor fields, as docs/integrations.md states the mapping."""
    objective, fixed = sv.verl_names()[loss_mode]
    low, high = actor["clip_ratio_low"], actor["clip_ratio_high"]
    dppo = {"clip_ratio": actor["clip_ratio"], "clip_ratio_low": low, "clip_ratio_high": high,
            "clip_ratio_c": actor["clip_ratio_c"]}  # fmt: skip
    by_objective = {
        "grpo": {"eps_low": low, "eps_high": high},
        "gspo": {"eps_low": low, "eps_high": high},
        "gspo_token": {"eps_low": low, "eps_high": high},
        "luspo": {"eps_low": low, "eps_high": high},
        "gmpo": {"clip_low": low, "clip_high": high},
        "sapo": {"tau_pos": actor["tau_pos"], "tau_neg": actor["tau_neg"]},
        "sspo": {"tau_pos": actor["tau_pos"], "tau_neg": actor["tau_neg"]},
        "cispo": {"ratio_max": 1.0 + high},
        "dppo_tv": dppo,
        "dppo_kl": dppo,
    }
    return {**by_objective.get(objective, {}), **fixed}  # vespo, m2po: no actor field, their defaults


def mini_batches(run: dict, step: dict) -> list[dict]:
    """The recorded micro-batch calls of each mini-batch, joined into one float64 batch per mini-batch."""
    calls = step["calls"]
    per = len(calls) // run["mini_batches"]
    assert per * run["mini_batches"] == len(calls) and per >= 2  # several micro-batches per mini-batch
    joined = []
    for j in range(run["mini_batches"]):
        group = calls[j * per : (j + 1) * per]
        length = max(c["mask"].shape[1] for c in group)

        def cat(key, group=group, length=length):
            return torch.cat([torch.nn.functional.pad(c[key], (0, length - c[key].shape[1])) for c in group])

        joined.append({
            "log_probs": cat("log_probs").double(), "old_log_probs": cat("old_log_probs").double(),
            "advantages": cat("advantages").double(), "mask": cat("mask").bool(),
            "rollout_is_weights": cat("rollout_is_weights").double(), "calls": group,
        })  # fmt: skip
    return joined


def weights_at(batch: dict, level: str) -> torch.Tensor:
    """verl's weights as the level verl computed them at says: ``[B, T]`` per token, ``[B]`` per sequence (the
    row's weight, which verl broadcast over it)."""
    w, mask = batch["rollout_is_weights"], batch["mask"]
    if level == "token":
        return w
    return torch.where(mask, w, 0.0).amax(-1)


def reference(run: dict, loss_mode: str, batch: dict, level: str, *, as_level: str | None = None):
    """One float64 ``sspo.policy_loss`` over the mini-batch with verl's weights read at ``as_level`` (default:
    the level verl computed them at); for :data:`BATCH_COUPLED` objectives the sum of per-micro-batch calls
    with verl's global counts, as verl calls the loss."""
    hp = expected_hyperparameters(loss_mode, run["actor"])
    parts = [batch] if run["objective"] not in BATCH_COUPLED else batch["calls"]
    total, out = 0.0, None
    for part in parts:
        info = part.get("global_batch_info", {})
        norm = {} if part is batch else {"global_num_tokens": info["batch_num_tokens"],
                                         "global_num_seqs": info["global_batch_size"]}  # fmt: skip
        part = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in part.items()}
        part["mask"] = part["mask"].bool()
        out = sspo.policy_loss(run["objective"], part["log_probs"], part["old_log_probs"], part["advantages"],
                               part["mask"], loss_agg_mode=run["loss_agg_mode"],
                               rollout_is_weights=weights_at(part, as_level or level), **norm, **hp)  # fmt: skip
        total = total + out.loss
    out.loss = total
    return out


def test_every_registered_loss_mode_ran(runs):
    assert sorted(runs) == LOSS_MODES
    assert {run["objective"] for run in runs.values()} == set(sspo.OBJECTIVES)
    for run in runs.values():
        assert len(run["steps"]) == 2 and run["mini_batches"] == 2


@pytest.mark.parametrize("loss_mode", LOSS_MODES)
def test_plugin_metrics_are_in_verls_metrics(runs, loss_mode):
    run = runs[loss_mode]
    for step in run["steps"]:
        metrics = step["metrics"]
        ours = reference(run, loss_mode, mini_batches(run, step)[0], step["rollout_is"]).metrics
        expected = {f"actor/sspo/{k}" for k in ours if k != "pg_loss"}
        expected |= {"actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"}
        assert expected <= set(metrics), expected - set(metrics)
        for key in expected:  # one value per mini-batch
            assert len(metrics[key]) == run["mini_batches"]


@pytest.mark.parametrize("loss_mode", LOSS_MODES)
def test_first_mini_batch_is_on_policy_and_later_ones_are_not(runs, loss_mode):
    run = runs[loss_mode]
    for step in run["steps"]:
        batches = mini_batches(run, step)
        drift = [(b["log_probs"] - b["old_log_probs"])[b["mask"]].abs().max().item() for b in batches]
        assert drift[0] == 0.0  # exactly: verl's update recomputes what compute_log_prob computed
        assert all(d > 0 for d in drift[1:])  # the first update moved the policy
        ratio_min, ratio_max = step["metrics"]["actor/sspo/ratio/min"], step["metrics"]["actor/sspo/ratio/max"]
        assert ratio_min[0] == ratio_max[0] == 1.0
        assert all((lo, hi) != (1.0, 1.0) for lo, hi in zip(ratio_min[1:], ratio_max[1:]))


@pytest.mark.parametrize("loss_mode", LOSS_MODES)
def test_weights_change(runs, loss_mode):
    assert all(step["max_weight_change"] > 1e-4 for step in runs[loss_mode]["steps"])


@pytest.mark.parametrize("loss_mode", LOSS_MODES)
def test_logged_loss_equals_policy_loss_on_the_same_tensors(runs, loss_mode):
    """verl logs, per mini-batch, the sum of its micro-batch losses (``loss``; ``actor/pg_loss`` without
    entropy and KL terms). With verl's global batch counts that sum is the mini-batch's loss."""
    run = runs[loss_mode]
    values = []
    for step in run["steps"]:
        for j, batch in enumerate(mini_batches(run, step)):
            ref = reference(run, loss_mode, batch, step["rollout_is"]).loss.item()
            # verl sums float32 micro-batch losses; the reference is one float64 call
            assert step["metrics"]["loss"][j] == pytest.approx(ref, rel=1e-5, abs=5e-7)
            assert step["metrics"]["actor/pg_loss"][j] == pytest.approx(ref, rel=1e-5, abs=5e-7)
            values.append(ref)
    assert max(abs(v) for v in values) > 1e-3  # off-policy mini-batches carry a real loss


def test_verl_hands_the_loss_its_rollout_correction_weights(runs):
    """verl's sequence-level weights reach the loss broadcast over each row, its token-level ones vary."""
    for run in runs.values():
        for step in run["steps"]:
            for batch in mini_batches(run, step):
                w, mask = batch["rollout_is_weights"], batch["mask"]
                spread = (torch.where(mask, w, -1.0).amax(-1) - torch.where(mask, w, 9.0).amin(-1))[mask.any(-1)]
                assert (spread.max().item() == 0.0) == (step["rollout_is"] == "sequence")
                assert w[mask].std() > 0.01  # real corrections, not all 1
            assert step["metrics"]["actor/sspo/rollout_corr/is_mean"][0] != 1.0


@pytest.mark.parametrize("loss_mode", [m for m in LOSS_MODES if sspo.get_objective(sv.verl_names()[m][0]).own_rollout_weight])
def test_vespo_folds_a_sequence_weight_once_and_token_weights_per_token(runs, loss_mode):
    """VESPO adds ``log ρ_i`` once for verl's sequence weight (handed over as ``[B, T]``), ``Σ_t log ρ_t`` for
    token weights; reading the broadcast sequence weight per token would add ``n_i·log ρ_i``."""
    run = runs[loss_mode]
    for step in run["steps"]:
        for j, batch in enumerate(mini_batches(run, step)):
            logged = step["metrics"]["loss"][j]
            right = reference(run, loss_mode, batch, step["rollout_is"]).loss.item()
            assert logged == pytest.approx(right, rel=1e-5, abs=5e-7)
            if step["rollout_is"] == "sequence":
                wrong = reference(run, loss_mode, batch, "sequence", as_level="token").loss.item()
                assert abs(wrong - right) > 1e-3
