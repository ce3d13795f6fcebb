"""What every task returns (:class:`Problem`) and how records are read (local file, directory or hub id).

A *source* is either a local path or a Hugging Face hub id:

* a file ``.jsonl``, ``.json`` (a list of records, or JSON lines) or ``.parquet``, or a gzipped
  ``.jsonl.gz`` / ``.json.gz`` — used as is;
* a directory holding ``{split}.jsonl``, ``{split}.json`` or ``{split}.parquet`` (also gzipped, also
  looked for under ``data/``), e.g. ``train.jsonl`` / ``test.jsonl``; a task may name other files to
  look for (``leetcode-train.jsonl.gz``);
* anything else of the form ``owner/name`` — loaded with :func:`datasets.load_dataset`; when the
  hub cannot be reached a :class:`DatasetUnavailableError` says so and suggests a local path.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz")


@dataclass(frozen=True)
class Problem:
    """One prompt with its gold answer."""

    question: str
    """The problem statement shown to the model (not yet wrapped in a prompt template)."""
    answer: str
    """The gold final answer, compared with :func:`sspo.rewards.math_reward`."""
    solution: str | None = None
    """A worked solution when the source has one (GSM8K's answer field; synthetic's ``… #### N``)."""
    meta: dict = field(default_factory=dict, compare=False, hash=False)
    """Source-specific extras (difficulty, topic, index, …)."""
    instruction: str | None = None
    """What the ``chat`` and ``plain`` templates append to the question (``None``: the math default,
    :data:`sspo.tasks.prompts.DEFAULT_INSTRUCTION`)."""


@dataclass(frozen=True)
class CodeProblem(Problem):
    """A coding problem: the reward runs the completion's program against ``tests``
    (:class:`sspo.rewards.CodeScorer` reads ``tests``, ``entry_point`` and ``prefix``). ``answer`` is
    unused (empty); ``solution`` is a reference program, for supervised warm starts only — never
    part of a prompt."""

    answer: str = ""
    tests: str = ""
    """Source of ``check(candidate)`` (HumanEval / LeetCodeDataset format)."""
    entry_point: str = ""
    """The expression naming the candidate: ``add``, ``Solution().twoSum``."""
    prefix: str = ""
    """Trusted text put before the program (imports, helper classes, a signature)."""


class DatasetUnavailableError(RuntimeError):
    """A hub dataset could not be loaded (no network, unknown id, …)."""


def is_local(path: str) -> bool:
    """Whether ``path`` names a local file or directory (or looks like one that is missing)."""
    return os.path.exists(path) or path.endswith(LOCAL_SUFFIXES) or path.startswith((".", "/", "~"))


def read_local(path: str, split: str, task: str, names: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Records of ``split`` from a local file or a directory of split files (``{split}.*``, then
    ``{name}.*`` for each of ``names``)."""
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        stems = (split, *names)
        for folder in (path, os.path.join(path, "data")):
            for stem in stems:
                for suffix in LOCAL_SUFFIXES:
                    candidate = os.path.join(folder, stem + suffix)
                    if os.path.isfile(candidate):
                        return read_file(candidate)
        looked = ", ".join(f"{stem}{suffix}" for stem in stems for suffix in LOCAL_SUFFIXES[:3])
        raise FileNotFoundError(
            f"{task}: no file for split {split!r} in directory {path!r} (looked for {looked}, also gzipped)"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{task}: local data file {path!r} does not exist")
    return read_file(path)


def read_file(path: str) -> list[dict[str, Any]]:
    """Records of one ``.jsonl``, ``.json`` or ``.parquet`` file (the JSON ones may be gzipped)."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        text = handle.read()
    if path.removesuffix(".gz").endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # JSON lines saved as .json
        if isinstance(data, list):
            return data
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            return data["data"]
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not a JSON record ({exc.msg})") from exc
    return records


def read_hub(hub_id: str, split: str, task: str, config: str | None = None) -> Iterable[dict[str, Any]]:
    """Records of ``split`` of a hub dataset, or :class:`DatasetUnavailableError` with a hint."""
    try:
        import datasets

        return datasets.load_dataset(hub_id, config, split=split)
    except Exception as exc:
        raise DatasetUnavailableError(
            f"{task}: could not load {hub_id!r} (split {split!r}) from the Hugging Face hub "
            f"({type(exc).__name__}: {str(exc)[:300]}). If there is no network, download it elsewhere "
            f"and pass a local path, e.g. path='data/{task}' (a directory with {split}.jsonl or "
            f"{split}.parquet) or path='data/{task}/{split}.jsonl'."
        ) from exc


def read_source(
    path: str, split: str, task: str, config: str | None = None, names: Sequence[str] = ()
) -> Iterable[dict[str, Any]]:
    """Records from a local path or a hub id (see the module docstring; ``names``: see :func:`read_local`)."""
    if is_local(path):
        return read_local(path, split, task, names)
    return read_hub(path, split, task, config)


def require_fields(record: Any, fields: Sequence[str], task: str, index: int) -> None:
    """``ValueError`` naming the first missing field of record ``index``."""
    if not isinstance(record, dict):
        raise ValueError(f"{task}: record {index} is a {type(record).__name__}, expected a JSON object")
    for name in fields:
        if name not in record or record[name] is None:
            raise ValueError(
                f"{task}: record {index} is missing field {name!r} (has: {', '.join(sorted(record))})"
            )


def check_split(split: str, splits: Sequence[str], task: str) -> None:
    if split not in splits:
        raise ValueError(f"{task}: unknown split {split!r}; valid splits: {', '.join(splits)}")


def hash_split(key: str, test_fraction: float, salt: bytes) -> str:
    """``"test"`` when the stable hash of ``key`` (salted per task) falls below ``test_fraction``, else
    ``"train"``: a generated problem's split depends on the problem alone, never on a seed."""
    digest = hashlib.blake2b(key.encode("ascii"), digest_size=8, person=salt).digest()
    return "test" if int.from_bytes(digest, "big") / 2**64 < test_fraction else "train"


def shuffle_and_limit(
    problems: list[Problem], limit: int | None, *, shuffle: bool, seed: int
) -> list[Problem]:
    """Optionally shuffle (seeded), then keep the first ``limit`` problems."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    if shuffle:
        problems = list(problems)
        random.Random(seed).shuffle(problems)
    return problems if limit is None else problems[:limit]
