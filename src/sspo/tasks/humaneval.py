"""HumanEval (164 hand-written Python functions with tests): ``openai/openai_humaneval`` or a local copy.

Records have ``task_id``, ``prompt`` (imports, the signature and a docstring), ``canonical_solution``
(the body), ``test`` (``check(candidate)``) and ``entry_point``. The question shows the prompt in a
fenced block and asks for the whole function back; the reward runs ``prompt + code`` (the prompt is
the trusted prefix, so imports and helper functions it defines are there even when the completion
leaves them out). HumanEval is an evaluation set: its one split is ``test``.
"""

from __future__ import annotations

from sspo.tasks.base import CodeProblem, check_split, read_source, require_fields, shuffle_and_limit
from sspo.tasks.prompts import CODE_INSTRUCTION

HUB_ID = "openai/openai_humaneval"
SPLITS = ("test",)
FIELDS = ("task_id", "prompt", "test", "entry_point")
LOCAL_NAMES = ("humaneval", "HumanEval")
"""Files looked for in a local directory besides ``test.*`` (``humaneval.jsonl.gz``, as in ``../shared/data/code``)."""


def question(prompt: str) -> str:
    """The text shown to the model: the function to complete, in a fenced block."""
    return f"Complete the following Python function.\n```python\n{prompt.rstrip()}\n```"


def load(
    split: str = "test",
    *,
    path: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    shuffle: bool = False,
) -> list[CodeProblem]:
    """HumanEval problems from ``path`` (a hub id or a local file/dir; default the hub).

    ``shuffle`` permutes the problems with ``seed`` before ``limit`` keeps the first ones.
    """
    check_split(split, SPLITS, "humaneval")
    source = path or HUB_ID
    problems = []
    for index, record in enumerate(read_source(source, split, "humaneval", names=LOCAL_NAMES)):
        require_fields(record, FIELDS, "humaneval", index)
        prompt = str(record["prompt"])
        body = record.get("canonical_solution")
        problems.append(
            CodeProblem(
                question=question(prompt),
                solution=f"```python\n{prompt}{body}```" if body else None,
                tests=str(record["test"]),
                entry_point=str(record["entry_point"]).strip(),
                prefix=prompt,
                instruction=CODE_INSTRUCTION,
                meta={"source": source, "task_id": record["task_id"], "index": index},
            )
        )
    return shuffle_and_limit(problems, limit, shuffle=shuffle, seed=seed)
