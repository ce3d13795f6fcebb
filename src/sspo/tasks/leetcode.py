"""LeetCodeDataset (Python problems with tests, v0.2.0): ``newfacade/LeetCodeDataset`` or a local copy.

Records have ``task_id``, ``query`` (the problem statement, ending in the class to complete),
``prompt`` (the imports and ``ListNode``/``TreeNode`` helpers every solution may use), ``test``
(``check(candidate)``), ``entry_point`` (``Solution().twoSum``) and a difficulty (``difficulty``, or
``meta.difficulty`` in the GitHub files). The question is the ``query``; the reward runs
``prompt + code``, the prompt being the trusted prefix. The reference solution (``completion``)
becomes :attr:`CodeProblem.solution` for supervised warm starts; no prompt contains it. Splits:
``train`` and ``test``; ``difficulties`` keeps some of ``Easy``, ``Medium``, ``Hard``.
"""

from __future__ import annotations

from collections.abc import Sequence

from sspo.tasks.base import CodeProblem, check_split, read_source, require_fields, shuffle_and_limit
from sspo.tasks.prompts import CODE_INSTRUCTION

HUB_ID = "newfacade/LeetCodeDataset"
SPLITS = ("train", "test")
DIFFICULTIES = ("Easy", "Medium", "Hard")
FIELDS = ("task_id", "query", "prompt", "test", "entry_point")


def difficulty_of(record: dict) -> str | None:
    """``difficulty`` (hub) or ``meta.difficulty`` (GitHub files)."""
    value = record.get("difficulty")
    if value is None and isinstance(record.get("meta"), dict):
        value = record["meta"].get("difficulty")
    return None if value is None else str(value)


def check_difficulties(difficulties: Sequence[str] | str | None) -> tuple[str, ...]:
    """The difficulties kept (all for ``None``); ``ValueError`` naming the option otherwise."""
    if difficulties is None:
        return DIFFICULTIES
    wanted = [difficulties] if isinstance(difficulties, str) else list(difficulties)
    bad = [d for d in wanted if d not in DIFFICULTIES]
    if not wanted or bad:
        raise ValueError(f"difficulties: must be some of {', '.join(DIFFICULTIES)}, got {difficulties!r}")
    return tuple(wanted)


def load(
    split: str = "train",
    *,
    path: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    shuffle: bool = False,
    difficulties: Sequence[str] | str | None = None,
) -> list[CodeProblem]:
    """LeetCodeDataset problems of ``split`` from ``path`` (a hub id or a local file/dir; default the hub)."""
    check_split(split, SPLITS, "leetcode")
    keep = check_difficulties(difficulties)
    source = path or HUB_ID
    problems = []
    for index, record in enumerate(read_source(source, split, "leetcode", names=(f"leetcode-{split}",))):
        require_fields(record, FIELDS, "leetcode", index)
        difficulty = difficulty_of(record)
        if difficulties is not None and difficulty not in keep:
            continue
        reference = record.get("completion")
        problems.append(
            CodeProblem(
                question=str(record["query"]).strip(),
                solution=f"```python\n{reference.rstrip()}\n```" if reference else None,
                tests=str(record["test"]),
                entry_point=str(record["entry_point"]).strip(),
                prefix=str(record["prompt"]),
                instruction=CODE_INSTRUCTION,
                meta={"source": source, "split": split, "index": index, "task_id": record["task_id"],
                      "difficulty": difficulty},  # fmt: skip
            )
        )
    return shuffle_and_limit(problems, limit, shuffle=shuffle, seed=seed)
