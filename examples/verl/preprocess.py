"""Write the parquet files the verl launch scripts read: GSM8K, DeepMath-103K and LeetCodeDataset in
verl's RL schema.

    python examples/verl/preprocess.py --out ~/data/sspo            # all three
    python examples/verl/preprocess.py --out ~/data/sspo --only gsm8k
    python examples/verl/preprocess.py --out ~/data/sspo --only leetcode --leetcode-path ../shared/data/code

Each row: ``data_source``, ``prompt`` (chat messages), ``ability``, ``reward_model`` (``style: rule``,
``ground_truth``), ``extra_info``. For LeetCodeDataset the prompt is the problem statement with its
starter code and sspo's code instruction (never the reference solution), and ``ground_truth`` is JSON
with ``tests``, ``entry_point`` and ``prefix``, which ``reward.py`` runs in sspo's sandbox. Needs the
Hugging Face hub (``openai/gsm8k``, ``zwhe99/DeepMath-103K``, ``newfacade/LeetCodeDataset``) unless
``--leetcode-path`` names a local copy.
"""

from __future__ import annotations

import argparse
import json
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


LEETCODE_SOURCE = "newfacade/LeetCodeDataset"


def row(source: str, question: str, answer: str, split: str, index: int, ability: str = "math") -> dict:
    """One verl RL row."""
    return {
        "data_source": source,
        "prompt": [{"role": "user", "content": question}],
        "ability": ability,
        "reward_model": {"style": "rule", "ground_truth": answer},
        "extra_info": {"split": split, "index": index},
    }


def leetcode_rows(split: str, path: str | None = None) -> list[dict]:
    """LeetCodeDataset ``split`` as verl rows, read with :func:`sspo.tasks.load_task` (hub id or local copy)."""
    from sspo.tasks import load_task

    rows = []
    for index, problem in enumerate(load_task("leetcode", split, path=path)):
        truth = json.dumps({"tests": problem.tests, "entry_point": problem.entry_point, "prefix": problem.prefix})
        rows.append(row(LEETCODE_SOURCE, f"{problem.question}\n{problem.instruction}", truth, split, index, "code"))
    return rows


def leetcode(out: str, path: str | None = None) -> None:
    from datasets import Dataset

    for split in ("train", "test"):
        Dataset.from_list(leetcode_rows(split, path)).to_parquet(os.path.join(out, "leetcode", f"{split}.parquet"))


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
    parser.add_argument("--only", choices=("gsm8k", "deepmath", "leetcode"), help="write one data set only")
    parser.add_argument("--leetcode-path", default=None,
                        help="local LeetCodeDataset copy (a directory with leetcode-{train,test}.jsonl.gz); default: the hub")
    parser.add_argument("--deepmath-test-size", type=int, default=500, help="held-out DeepMath questions")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    writers = {"gsm8k": lambda: gsm8k(args.out), "deepmath": lambda: deepmath(args.out, args.deepmath_test_size, args.seed),
               "leetcode": lambda: leetcode(args.out, args.leetcode_path)}  # fmt: skip
    for name, write in writers.items():
        if args.only in (None, name):
            os.makedirs(os.path.join(args.out, name), exist_ok=True)
            write()
            print(f"wrote {os.path.join(args.out, name)}/{{train,test}}.parquet")


if __name__ == "__main__":
    main()
