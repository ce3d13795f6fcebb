"""DeepMath-103K: ``zwhe99/DeepMath-103K`` or a local file with ``question``, ``final_answer``,
``difficulty`` and ``topic`` (answers are LaTeX, compared with math-verify).

The source is one table (the hub publishes only ``train``; a local directory is read from its
``train.*`` file). Splits: ``all`` is every row; ``train`` and ``test`` partition it by a stable hash
of the question, ``test`` taking about ``test_fraction`` of the rows. Filters: ``min_difficulty`` /
``max_difficulty`` (inclusive, DeepMath grades from 1 to 10) and ``topics`` (a row is kept when its
topic, e.g. ``"Mathematics -> Algebra -> Linear Algebra -> Matrices"``, contains any of them,
case-insensitively).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from sspo.tasks.base import Problem, check_split, read_source, require_fields, shuffle_and_limit

HUB_ID = "zwhe99/DeepMath-103K"
SPLITS = ("train", "test", "all")
FIELDS = ("question", "final_answer", "difficulty", "topic")


def in_test_split(question: str, test_fraction: float) -> bool:
    """Stable (process-independent) assignment of a question to the ``test`` split."""
    digest = hashlib.blake2b(question.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < test_fraction


def load(
    split: str = "train",
    *,
    path: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    shuffle: bool = False,
    min_difficulty: float | None = None,
    max_difficulty: float | None = None,
    topics: Sequence[str] | str | None = None,
    test_fraction: float = 0.01,
) -> list[Problem]:
    """DeepMath problems of ``split`` after the difficulty and topic filters (see module docstring)."""
    check_split(split, SPLITS, "deepmath")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"deepmath: test_fraction must be in (0, 1), got {test_fraction}")
    if min_difficulty is not None and max_difficulty is not None and min_difficulty > max_difficulty:
        raise ValueError(f"deepmath: min_difficulty {min_difficulty} > max_difficulty {max_difficulty}")
    wanted = [topics.lower()] if isinstance(topics, str) else [t.lower() for t in topics or ()]
    source = path or HUB_ID
    problems = []
    for index, record in enumerate(read_source(source, "train", "deepmath")):
        require_fields(record, FIELDS, "deepmath", index)
        question, difficulty, topic = (
            str(record["question"]).strip(),
            float(record["difficulty"]),
            str(record["topic"]),
        )
        if split != "all" and in_test_split(question, test_fraction) != (split == "test"):
            continue
        if min_difficulty is not None and difficulty < min_difficulty:
            continue
        if max_difficulty is not None and difficulty > max_difficulty:
            continue
        if wanted and not any(w in topic.lower() for w in wanted):
            continue
        problems.append(
            Problem(
                question=question,
                answer=str(record["final_answer"]).strip(),
                solution=record.get("r1_solution_1"),
                meta={"source": source, "index": index, "difficulty": difficulty, "topic": topic},
            )
        )
    return shuffle_and_limit(problems, limit, shuffle=shuffle, seed=seed)
