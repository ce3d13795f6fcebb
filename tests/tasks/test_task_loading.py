"""Loading GSM8K and DeepMath from local files, directories and (unreachable) hub ids."""

import json
from pathlib import Path

import pytest

from sspo.tasks import TASKS, DatasetUnavailableError, Problem, load_task

GSM8K_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "gsm8k"

GSM8K_ROWS = [
    {"question": "Q1?", "answer": "1+1=<<1+1=2>>2\n#### 2"},
    {"question": "Q2?", "answer": "It is big.\n#### 1,450,000"},
    {"question": "Q3?", "answer": "Lost money.\n#### -3"},
]
DEEPMATH_ROWS = [
    {
        "question": f"Problem {i}",
        "final_answer": answer,
        "difficulty": difficulty,
        "topic": topic,
        "r1_solution_1": f"... \\boxed{{{answer}}}",
    }
    for i, (answer, difficulty, topic) in enumerate(
        [
            ("\\frac{1}{2}", 3.0, "Mathematics -> Algebra -> Linear Algebra -> Matrices"),
            ("\\sqrt{2}", 5.5, "Mathematics -> Geometry -> Plane Geometry -> Triangles"),
            ("(0, 1]", 7.0, "Mathematics -> Calculus -> Integral Calculus -> Integrals"),
            ("12", 9.0, "Mathematics -> Algebra -> Abstract Algebra -> Group Theory"),
        ]
        * 50
    )
]


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _write_parquet(path: Path, rows) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_gsm8k_from_a_jsonl_file(tmp_path):
    problems = load_task("gsm8k", "test", path=str(_write_jsonl(tmp_path / "g.jsonl", GSM8K_ROWS)))
    assert [p.answer for p in problems] == ["2", "1450000", "-3"]
    assert problems[0] == Problem("Q1?", "2", GSM8K_ROWS[0]["answer"])
    assert problems[1].meta["index"] == 1


def test_gsm8k_from_a_directory_of_split_files_parquet_and_json(tmp_path):
    _write_parquet(tmp_path / "train.parquet", GSM8K_ROWS)
    (tmp_path / "test.json").write_text(json.dumps(GSM8K_ROWS[:2]), encoding="utf-8")
    assert [p.answer for p in load_task("gsm8k", "train", path=str(tmp_path))] == ["2", "1450000", "-3"]
    assert [p.answer for p in load_task("gsm8k", "test", path=str(tmp_path))] == ["2", "1450000"]


def test_gsm8k_limit_and_seeded_shuffle(tmp_path):
    path = str(_write_jsonl(tmp_path / "g.jsonl", GSM8K_ROWS * 10))
    assert [p.question for p in load_task("gsm8k", path=path, limit=2)] == ["Q1?", "Q2?"]
    first = load_task("gsm8k", path=path, limit=10, seed=1, shuffle=True)
    assert first == load_task("gsm8k", path=path, limit=10, seed=1, shuffle=True)
    assert first != load_task("gsm8k", path=path, limit=10, seed=2, shuffle=True)


def test_shared_gsm8k_copy_loads():
    if not (GSM8K_DIR / "test.jsonl").is_file():
        pytest.skip(f"{GSM8K_DIR} is absent")
    problems = load_task("gsm8k", "test", path=str(GSM8K_DIR))
    assert len(problems) == 1319
    assert problems[0].answer == "18" and problems[0].question.startswith("Janet")
    assert all(p.answer and "," not in p.answer for p in problems)


def test_missing_field_is_named(tmp_path):
    path = _write_jsonl(tmp_path / "bad.jsonl", [GSM8K_ROWS[0], {"question": "Q?", "solution": "#### 1"}])
    with pytest.raises(ValueError, match=r"record 1 is missing field 'answer'"):
        load_task("gsm8k", path=str(path))
    rows = [{k: v for k, v in DEEPMATH_ROWS[0].items() if k != "topic"}]
    with pytest.raises(ValueError, match="'topic'"):
        load_task("deepmath", "all", path=str(_write_jsonl(tmp_path / "d.jsonl", rows)))


def test_gsm8k_answer_without_hashes_is_an_error(tmp_path):
    path = _write_jsonl(tmp_path / "g.jsonl", [{"question": "Q", "answer": "no marker"}])
    with pytest.raises(ValueError, match="####"):
        load_task("gsm8k", path=str(path))


def test_unknown_split_task_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match=r"unknown split 'dev'.*train, test"):
        load_task("gsm8k", "dev", path=str(tmp_path))
    with pytest.raises(ValueError, match=r"unknown task 'math'.*gsm8k, deepmath, synthetic"):
        load_task("math")
    with pytest.raises(FileNotFoundError, match="nothere.jsonl"):
        load_task("gsm8k", path=str(tmp_path / "nothere.jsonl"))
    with pytest.raises(FileNotFoundError, match="test.jsonl"):
        load_task("gsm8k", "test", path=str(tmp_path))
    assert TASKS == ("gsm8k", "deepmath", "synthetic", "humaneval", "leetcode", "synthetic_code")


def test_unreachable_hub_id_says_so_and_suggests_a_local_path(monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DatasetUnavailableError, match=r"could not load 'sspo-tests/no-such-set'.*local path"):
        load_task("gsm8k", "test", path="sspo-tests/no-such-set")
    with pytest.raises(DatasetUnavailableError, match="zwhe99/DeepMath-103K"):
        load_task("deepmath")


def test_deepmath_filters_and_fields(tmp_path):
    path = str(_write_parquet(tmp_path / "deepmath.parquet", DEEPMATH_ROWS))
    everything = load_task("deepmath", "all", path=path)
    assert len(everything) == 200
    assert everything[0].answer == "\\frac{1}{2}" and everything[0].solution.endswith("\\boxed{\\frac{1}{2}}")
    assert everything[0].meta["difficulty"] == 3.0
    hard = load_task("deepmath", "all", path=path, min_difficulty=5.5, max_difficulty=7)
    assert {p.answer for p in hard} == {"\\sqrt{2}", "(0, 1]"}
    algebra = load_task("deepmath", "all", path=path, topics=["algebra"])
    assert {p.answer for p in algebra} == {"\\frac{1}{2}", "12"}
    assert {p.answer for p in load_task("deepmath", "all", path=path, topics="Group Theory")} == {"12"}
    with pytest.raises(ValueError, match="min_difficulty"):
        load_task("deepmath", "all", path=path, min_difficulty=8, max_difficulty=2)


def test_deepmath_train_and_test_partition_the_rows(tmp_path):
    rows = [dict(DEEPMATH_ROWS[0], question=f"Distinct problem {i}") for i in range(400)]
    path = str(_write_jsonl(tmp_path / "d.jsonl", rows))
    train = load_task("deepmath", "train", path=path, test_fraction=0.25)
    test = load_task("deepmath", "test", path=path, test_fraction=0.25)
    assert len(train) + len(test) == 400
    assert not {p.question for p in train} & {p.question for p in test}
    assert 60 < len(test) < 140
