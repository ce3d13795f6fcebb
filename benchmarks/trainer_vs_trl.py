"""Samples per second of one GRPO training step: this trainer vs TRL's ``GRPOTrainer``, on CPU, in one run.

    python benchmarks/trainer_vs_trl.py [--steps 5] [--threads N] [--quick]

The same step in both: the built-in tiny model (~0.8M-parameter Qwen2, character tokenizer, the same
seed-0 weights in fp32), the synthetic task's prompts as raw ``"question\\n"`` text (the very same
prompts, in the same order), 8 prompts x 8 samples = 64 completions of at most 64 new tokens at
temperature 1.0, the rewards of :class:`sspo.rewards.RewardScorer`, std-normalised group advantages,
behaviour log-probs, then 4 AdamW updates of 16 completions each
(betas (0.9, 0.99), gradient clipping 1.0, constant schedule, clipped GRPO loss with eps 0.2 averaged
per sequence, entropies computed, no KL, no reference model). The learning rate (``--lr``, default 1e-5)
does not change the arithmetic; a small one keeps both policies near their common initial weights, so
both sample from nearly the same distribution (at 3e-4 the two runs' completion lengths drift apart
within a few steps, this trainer's usually the longer).

Batch shape in TRL 1.16's ``GRPOConfig``: ``num_generations=8``, ``per_device_train_batch_size=16``,
``gradient_accumulation_steps=1``, ``steps_per_generation=4`` (so ``generation_batch_size`` = 16 x 1
process x 4 = 64 = 8 prompts x 8), ``num_iterations=1``: TRL generates 64 completions once every 4
optimizer steps and spends one slice of 16 on each, which is this trainer's
``rollout.prompts_per_step=8, rollout.samples_per_prompt=8, update.mini_batches=4``. One step below is
therefore 4 of TRL's ``global_step``s. Because ``steps_per_generation`` > ``gradient_accumulation_steps``
TRL recomputes the old log-probs after generation, as this trainer does. Also ``loss_type="grpo"``,
``beta=0``, ``bf16=False`` and ``gradient_checkpointing=False`` (GRPOConfig defaults both to True; a
0.8M model needs neither), ``shuffle_dataset=False`` (the dataset is this trainer's prompt order), and
no logging, reporting, evaluation or saving.

Behaviour log-probs: TRL recomputes them after generation (a forward over all 64 completions; its
``generate`` returns none). This trainer, in float32, by default takes the ones its sampler computed
anyway (``update.old_logprobs=auto``; they agree with the training forward to ~1e-5) and the first
mini-batch's own detached log-probs, so its first update's ratios are exactly 1. ``--old-logprobs
recompute`` makes it recompute them as TRL does, for a same-arithmetic comparison.

Measurement: TRL's ``trainer.train()`` drives the run; a callback runs one step of this trainer after
each of TRL's generation batches (every 4th ``global_step``), so the two alternate step by step and
share whatever else loads the machine. A TRL step is the wall time between two such callbacks minus
the time of our step inside it (generation, scoring, old log-probs, 4 updates, TRL's bookkeeping);
ours is the wall time of ``Trainer.train_step``. The first step of each is a warm-up and not counted.
Samples/s = 64 / the median seconds per step; tokens/s = samples/s x the mean completion length.
Mean completion lengths show both do comparable work: the untrained model stops at EOS now and then
(mean length about 50 of 64); TRL's ``generate`` runs every batch to its longest row, this trainer's
decoder drops finished rows, and both trim the update batches to their longest completion.
Threads: torch's default; on a small machine shared with other jobs ``--threads 1`` is faster for both.
The last line is ``speedup_vs_trl <ours samples/s / TRL samples/s>``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

PROMPTS, GENERATIONS, MAX_NEW_TOKENS, MINI_BATCHES = 8, 8, 64, 4
BATCH = PROMPTS * GENERATIONS


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each system (after warm-up)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps of each system")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 keeps torch's default")
    parser.add_argument("--lr", type=float, default=1e-5, help="learning rate of both (no effect on the arithmetic)")
    parser.add_argument("--quick", action="store_true", help="2 timed steps (a smoke run)")
    parser.add_argument("--old-logprobs", default="auto", choices=("auto", "recompute", "sampler"),
                        help="this trainer's update.old_logprobs (TRL always recomputes)")
    return parser.parse_args()


def our_trainer(out_dir: Path, total_steps: int, lr: float, old_logprobs: str = "auto"):
    from sspo.trainer import Trainer, load_config

    config = load_config(None, [
        "model=tiny", "task.name=synthetic", "task.template=raw", "warm_start.steps=0", "seed=0",
        f"rollout.prompts_per_step={PROMPTS}", f"rollout.samples_per_prompt={GENERATIONS}",
        f"rollout.max_new_tokens={MAX_NEW_TOKENS}", "rollout.temperature=1.0", f"update.mini_batches={MINI_BATCHES}",
        "objective.name=grpo", f"optim.lr={lr}", "eval.num_problems=4", "progress=false", "dtype=float32",
        "device=cpu", f"steps={total_steps}", f"out_dir={out_dir}", f"update.old_logprobs={old_logprobs}",
    ])  # fmt: skip
    return Trainer(config, log=lambda *a, **k: None)


def trl_trainer(ours, out_dir: Path, total_steps: int, callback):
    """TRL's ``GRPOTrainer`` on the same model weights, prompts (in our order) and reward scorer."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    from sspo.models.loading import load_model_and_tokenizer
    from sspo.rewards import RewardScorer
    from sspo.tasks import format_prompt

    model, tokenizer = load_model_and_tokenizer("tiny", dtype="float32")
    assert all(bool((a == b).all()) for a, b in zip(model.state_dict().values(), ours.model.state_dict().values()))
    problems = [p for step in range(1, total_steps + 1) for p in ours._problems_for(step)]
    dataset = Dataset.from_dict({
        "prompt": [format_prompt(p.question, tokenizer, template="raw") for p in problems],
        "answer": [p.answer for p in problems],
    })  # fmt: skip
    scorer = RewardScorer(timeout=ours.config.rollout.reward_timeout)

    def math_reward(completions, answer, **kwargs):
        return scorer.score_batch(completions, answer)[0]

    args = GRPOConfig(
        output_dir=str(out_dir), seed=0, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        num_generations=GENERATIONS, per_device_train_batch_size=BATCH // MINI_BATCHES, gradient_accumulation_steps=1,
        steps_per_generation=MINI_BATCHES, num_iterations=1, max_steps=total_steps * MINI_BATCHES,
        max_completion_length=MAX_NEW_TOKENS, temperature=1.0, top_p=1.0, shuffle_dataset=False,
        loss_type="grpo", beta=0.0, epsilon=0.2, scale_rewards="group",
        learning_rate=ours.config.optim.lr, adam_beta1=0.9, adam_beta2=0.99, weight_decay=0.0, max_grad_norm=1.0,
        lr_scheduler_type="constant", warmup_steps=0,
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True,
        log_completions=False, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=math_reward, args=args,
                          train_dataset=dataset, callbacks=[callback])  # fmt: skip
    trainer.remove_callback(PrinterCallback)  # it prints the final train metrics
    return trainer, scorer


def make_callback(our_step):
    """A ``TrainerCallback`` that times TRL's generation batches and runs ``our_step(i)`` after each."""
    from transformers import TrainerCallback

    class Interleave(TrainerCallback):
        def __init__(self):
            self.trainer = None
            self.trl: list[dict] = []
            self.start = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % MINI_BATCHES:
                return
            seconds = time.perf_counter() - self.start
            metrics = self.trainer._metrics["train"]
            self.trl.append({"seconds": seconds, "length": metrics["completions/mean_length"][-1],
                             "reward": metrics["reward"][-1]})  # fmt: skip
            our_step(state.global_step // MINI_BATCHES)
            self.start = time.perf_counter()

    return Interleave()


def summary(name: str, rows: list[dict]) -> dict:
    seconds = [r["seconds"] for r in rows]
    median = statistics.median(seconds)
    return {"name": name, "median_s": median, "mean_s": statistics.fmean(seconds), "min_s": min(seconds),
            "samples_per_s": BATCH / median, "length": statistics.fmean(r["length"] for r in rows),
            "reward": statistics.fmean(r["reward"] for r in rows)}  # fmt: skip


def main() -> None:
    args = parse_args()
    steps = 2 if args.quick else args.steps
    total = args.warmup + steps
    warnings.filterwarnings("ignore")
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("trl").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)

    ours_rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        ours = our_trainer(Path(tmp) / "sspo", total, args.lr, args.old_logprobs)

        def our_step(step: int) -> None:
            start = time.perf_counter()
            metrics = ours.train_step(step)
            ours_rows.append({"seconds": time.perf_counter() - start, "length": metrics["response/length_mean"],
                              "reward": metrics["reward/mean"], "rollout_s": metrics["time/rollout_s"],
                              "update_s": metrics["time/update_s"]})  # fmt: skip

        callback = make_callback(our_step)
        trl, scorer = trl_trainer(ours, Path(tmp) / "trl", total, callback)
        callback.trainer = trl
        try:
            trl.train()
        finally:
            scorer.close()
            ours.scorer.close()
            ours.logger.close()

    if len(ours_rows) != total or len(callback.trl) != total:
        raise RuntimeError(f"expected {total} steps of each, got sspo {len(ours_rows)} and TRL {len(callback.trl)}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {__import__('trl').__version__}, "
          f"{torch.get_num_threads()} torch threads; {steps} timed steps each (+{args.warmup} warm-up), "
          f"interleaved; one step = {PROMPTS}x{GENERATIONS} completions of <= {MAX_NEW_TOKENS} tokens "
          f"+ {MINI_BATCHES} updates of {BATCH // MINI_BATCHES}; sspo old log-probs: "
          f"{'recompute' if ours.recompute_old else 'sampler'}")  # fmt: skip
    timed_ours = ours_rows[args.warmup :]
    rollout = statistics.median(r["rollout_s"] for r in timed_ours)
    update = statistics.median(r["update_s"] for r in timed_ours)
    rows = [summary("sspo Trainer", timed_ours), summary("TRL GRPOTrainer", callback.trl[args.warmup :])]
    print(f"{'system':<16} {'s/step (median)':>15} {'mean':>7} {'min':>7} {'samples/s':>10} {'tokens/s':>9} "
          f"{'mean len':>9} {'reward':>7}")  # fmt: skip
    for r in rows:
        print(f"{r['name']:<16} {r['median_s']:>15.3f} {r['mean_s']:>7.3f} {r['min_s']:>7.3f} "
              f"{r['samples_per_s']:>10.1f} {r['samples_per_s'] * r['length']:>9.0f} {r['length']:>9.1f} "
              f"{r['reward']:>7.3f}")  # fmt: skip
    print(f"sspo step split (median): rollout {rollout:.3f} s, {MINI_BATCHES} updates {update:.3f} s")
    print(f"speedup_vs_trl {rows[0]['samples_per_s'] / rows[1]['samples_per_s']:.2f}")


if __name__ == "__main__":
    main()
