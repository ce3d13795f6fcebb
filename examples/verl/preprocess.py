"""Write the parquet files the verl launch scripts read: GSM8K and DeepMath-103K in verl's RL schema.

    python examples/verl/preprocess.py --out ~/data/sspo            # both
    python examples/verl/preprocess.py --out ~/data/sspo --only gsm8k

Each row: ``data_source``, ``prompt`` (chat messages), ``ability``, ``reward_model`` (``style: rule``,
``ground_truth``), ``extra_info``. Needs the Hugging Face hub (``openai/gsm8k``, ``zwhe99/DeepMath-103K``).
"""

from __future__ import annotations

import argparse
import os
import re

GSM8K_SUFFIX = ' Let\'s think step by step and output the final answer after "####".'
BOXED_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."


def gsm8k_answer(solution: str) -> str:
    """The number after ``####`` in a GSM8K solution, without thousands separators."""
    match = re.search(r"####\s*(-?[0-9.,]+)", solution)
    if match is None:
        raise ValueError(f"no '#### answer' in {solution[-80:]!r}")
    return match.group(1).replace(",", "")


def row(source: str, question: str, answer: str, split: str, index: int) -> dict:
    """One verl RL row."""
    return {
        "data_source": source,
        "prompt": [{"role": "user", "content": question}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": answer},
        "extra_info": {"split": split, "index": index},
    }


def gsm8k(out: str) -> None:
    from datasets import load_dataset

    data = load_dataset("openai/gsm8k", "main")
    for split in ("train", "test"):
        rows = data[split].map(
            lambda ex, i, s=split: row("openai/gsm8k", ex["question"] + GSM8K_SUFFIX, gsm8k_answer(ex["answer"]), s, i),
            with_indices=True, remove_columns=data[split].column_names,
        )  # fmt: skip
        rows.to_parquet(os.path.join(out, "gsm8k", f"{split}.parquet"))


def deepmath(out: str, test_size: int, seed: int) -> None:
    from datasets import load_dataset

    data = load_dataset("zwhe99/DeepMath-103K", split="train").train_test_split(
        test_size=test_size, seed=seed
    )
    for split in ("train", "test"):
        rows = data[split].map(
            lambda ex, i, s=split: row("deepmath", ex["question"] + BOXED_SUFFIX, str(ex["final_answer"]), s, i),
            with_indices=True, remove_columns=data[split].column_names,
        )  # fmt: skip
        rows.to_parquet(os.path.join(out, "deepmath", f"{split}.parquet"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.expanduser("~/data/sspo"), help="output folder")
    parser.add_argument("--only", choices=("gsm8k", "deepmath"), help="write one data set only")
    parser.add_argument("--deepmath-test-size", type=int, default=500, help="held-out DeepMath questions")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("gsm8k", "deepmath"):
        if args.only in (None, name):
            os.makedirs(os.path.join(args.out, name), exist_ok=True)
            gsm8k(args.out) if name == "gsm8k" else deepmath(args.out, args.deepmath_test_size, args.seed)
            print(f"wrote {os.path.join(args.out, name)}/{{train,test}}.parquet")


if __name__ == "__main__":
    main()
