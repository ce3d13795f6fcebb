"""GSM8K (grade-school math word problems): ``openai/gsm8k`` (config ``main``) or a local copy.

Records have ``question`` and ``answer``; the answer field is a worked solution whose last line is
``#### N``. The gold answer is what follows the last ``####``, with commas removed.
"""

from __future__ import annotations

from sspo.tasks.base import Problem, check_split, read_source, require_fields, shuffle_and_limit

HUB_ID = "openai/gsm8k"
HUB_CONFIG = "main"
SPLITS = ("train", "test")


def gold_answer(solution: str) -> str:
    """What follows the last ``####`` of a GSM8K solution, commas removed; ``ValueError`` if none."""
    if "####" not in solution:
        raise ValueError(f"gsm8k: solution has no '####' line: {solution[-80:]!r}")
    answer = solution.rsplit("####", 1)[1].strip().replace(",", "")
    if not answer:
        raise ValueError(f"gsm8k: empty answer after '####' in {solution[-80:]!r}")
    return answer


def load(
    split: str = "train",
    *,
    path: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    shuffle: bool = False,
) -> list[Problem]:
    """GSM8K problems of ``split`` from ``path`` (a hub id or a local file/dir; default the hub).

    ``shuffle`` permutes the rows with ``seed`` before ``limit`` keeps the first ones.
    """
    check_split(split, SPLITS, "gsm8k")
    source = path or HUB_ID
    problems = []
    for index, record in enumerate(
        read_source(source, split, "gsm8k", HUB_CONFIG if source == HUB_ID else None)
    ):
        require_fields(record, ("question", "answer"), "gsm8k", index)
        problems.append(
            Problem(
                question=str(record["question"]).strip(),
                answer=gold_answer(str(record["answer"])),
                solution=str(record["answer"]),
                meta={"source": source, "split": split, "index": index},
            )
        )
    return shuffle_and_limit(problems, limit, shuffle=shuffle, seed=seed)
