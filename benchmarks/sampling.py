"""Time batched sampling on the built-in tiny model: fast back-end vs the generic HF back-end.

Default workload: one RL step of 64 completions x 64 new tokens (EOS disabled so every row runs to
the end), prompts of 20-60 characters. Also times ``model.generate`` as a reference point.

    python benchmarks/sampling.py [--num-seqs 64] [--new-tokens 64] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import time


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-seqs", type=int, default=64, help="completions per batch")
    parser.add_argument("--new-tokens", type=int, default=64, help="new tokens per completion")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (best is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--skip-generate", action="store_true", help="do not time model.generate")
    return parser.parse_args()


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    args = parse_args()
    import torch

    from sspo.models.tiny import build_char_tokenizer, build_tiny_model
    from sspo.train.sampling import left_pad, sample

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer)
    rng = torch.Generator().manual_seed(0)
    lengths = torch.randint(20, 61, (args.num_seqs,), generator=rng).tolist()
    prompts = [torch.randint(3, len(tokenizer), (n,), generator=rng).tolist() for n in lengths]
    total = args.num_seqs * args.new_tokens
    params = sum(p.numel() for p in model.parameters())
    print(f"tiny model: {params / 1e6:.2f}M params, {args.num_seqs} seqs x {args.new_tokens} new tokens, "
          f"torch threads {torch.get_num_threads()}")

    results = {}
    for backend in ("fast", "hf"):
        def run(backend=backend):
            rollout = sample(model, prompts, max_new_tokens=args.new_tokens, eos_token_id=None,
                             pad_token_id=tokenizer.pad_token_id, generator=torch.Generator().manual_seed(1),
                             backend=backend)
            assert rollout.response_ids.shape == (args.num_seqs, args.new_tokens)

        seconds = best_time(run, args.repeats)
        results[backend] = seconds
        print(f"{backend:>8}: {seconds * 1e3:8.1f} ms/batch  {total / seconds:10.0f} tokens/s  "
              f"{seconds / args.new_tokens * 1e3:6.2f} ms/decode step")
    if not args.skip_generate:
        ids, mask = left_pad(prompts, tokenizer.pad_token_id)

        def generate():
            with torch.inference_mode():
                model.generate(input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=args.new_tokens,
                               min_new_tokens=args.new_tokens, pad_token_id=tokenizer.pad_token_id)

        seconds = best_time(generate, args.repeats)
        results["generate"] = seconds
        print(f"{'generate':>8}: {seconds * 1e3:8.1f} ms/batch  {total / seconds:10.0f} tokens/s  (HF model.generate)")
    print(f"speed-up fast vs hf: {results['hf'] / results['fast']:.1f}x", end="")
    if "generate" in results:
        print(f"; fast vs model.generate: {results['generate'] / results['fast']:.1f}x")
    else:
        print()


if __name__ == "__main__":
    main()
