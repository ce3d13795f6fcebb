"""Time batched sampling on the built-in tiny model: fast back-end vs the generic HF back-end.

Two workloads, each one RL step of ``--num-seqs`` completions of up to ``--new-tokens`` tokens:

- ``distinct``: every prompt different (20-60 tokens), EOS disabled, so every row runs to the end.
- ``grpo``: ``--num-seqs / --group-size`` prompts of 80-100 tokens, each sampled ``--group-size`` times,
  with ``--stop-tokens`` token ids acting as EOS so responses end at different lengths (the random
  model samples near-uniformly; 3 of 99 ids give a mean length of about 28 of 64). The fast back-end
  prefills each distinct prompt once, keeps its keys/values once for the whole group and drops finished
  rows; the HF back-end does none of these.

``model.generate`` is timed on ``distinct`` as a reference. Threads: with 2 cores shared by other
processes, torch's intra-op threads oversubscribe and every op slows down several-fold, so the
default here is one thread (``--threads 0`` keeps torch's default).

    python benchmarks/sampling.py [--num-seqs 64] [--new-tokens 64] [--group-size 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import time


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-seqs", type=int, default=64, help="completions per batch")
    parser.add_argument("--new-tokens", type=int, default=64, help="max new tokens per completion")
    parser.add_argument("--group-size", type=int, default=8, help="samples per prompt in the grpo workload")
    parser.add_argument("--stop-tokens", type=int, default=3, help="token ids acting as EOS in the grpo workload")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (the best is reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads; 0 keeps torch's default")
    parser.add_argument("--skip-generate", action="store_true", help="do not time model.generate")
    return parser.parse_args()


def best_time(fn, repeats: int) -> tuple[float, object]:
    result = fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    args = parse_args()
    import torch

    from sspo.models.tiny import build_char_tokenizer, build_tiny_model
    from sspo.trainer.sampling import left_pad, sample

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer)
    vocab, pad = len(tokenizer), tokenizer.pad_token_id
    rng = torch.Generator().manual_seed(0)

    def random_prompt(low: int, high: int) -> list[int]:
        return torch.randint(3, vocab, (int(torch.randint(low, high + 1, (1,), generator=rng)),), generator=rng).tolist()

    groups = args.num_seqs // args.group_size
    workloads = {
        "distinct": ([random_prompt(20, 60) for _ in range(args.num_seqs)], None),
        "grpo": ([p for p in (random_prompt(80, 100) for _ in range(groups)) for _ in range(args.group_size)],
                 list(range(vocab - args.stop_tokens, vocab))),
    }
    params = sum(p.numel() for p in model.parameters())
    print(f"tiny model {params / 1e6:.2f}M params; {args.num_seqs} completions x <= {args.new_tokens} tokens; "
          f"torch threads {torch.get_num_threads()}")
    for workload, (prompts, stop) in workloads.items():
        results = {}
        for backend in ("fast", "hf"):
            def run(backend=backend, prompts=prompts, stop=stop):
                return sample(model, prompts, max_new_tokens=args.new_tokens, eos_token_id=stop, pad_token_id=pad,
                              generator=torch.Generator().manual_seed(1), backend=backend)

            seconds, rollout = best_time(run, args.repeats)
            tokens = int(rollout.response_lengths.sum())
            results[backend] = seconds
            print(f"{workload:>8} {backend:>8}: {seconds * 1e3:7.1f} ms/step  {tokens / seconds:8.0f} tokens/s  "
                  f"({tokens} tokens, {len(prompts) / seconds:6.1f} completions/s)")
        if workload == "distinct" and not args.skip_generate:
            ids, mask = left_pad(prompts, pad)

            def generate(ids=ids, mask=mask):
                with torch.inference_mode():
                    return model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0,
                                          max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                          pad_token_id=pad)

            seconds, _ = best_time(generate, args.repeats)
            tokens = args.num_seqs * args.new_tokens
            print(f"{workload:>8} {'generate':>8}: {seconds * 1e3:7.1f} ms/step  {tokens / seconds:8.0f} tokens/s  "
                  f"(HF model.generate); fast is {seconds / results['fast']:.1f}x faster")
        print(f"{workload:>8} speed-up fast vs hf: {results['hf'] / results['fast']:.2f}x")


if __name__ == "__main__":
    main()
