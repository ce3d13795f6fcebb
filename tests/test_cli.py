"""The command line fails as cleanly as the config does: every expected failure is one line
``sspo <command>: error: <field>: <what to do>`` on stderr and exit status 2, never a traceback.

Each case runs ``sspo.cli.main`` in-process and fails before any training: a model path that does not
exist, a GPU preset on a machine without CUDA, a model or data set on the hub with no network (the hub
is switched off here, as on a machine without network), and every option of the code tasks.
"""

from __future__ import annotations

import pytest
import torch

from sspo.cli import main


@pytest.fixture()
def offline_hub(monkeypatch):
    """No hub: what a machine without network sees (and no waiting on connection timeouts here)."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def fails_with(capsys, argv: list[str], expected: str) -> str:
    """Run ``sspo argv``: exit status 2 and exactly one line on stderr, starting with ``expected``."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(expected), lines[0]
    return lines[0]


def test_a_model_path_that_does_not_exist(tmp_path, capsys):
    line = fails_with(capsys, ["train", "--config", "tiny", "model=/nonexistent", f"out_dir={tmp_path}"],
                      "sspo train: error: model: '/nonexistent' is not an existing directory;")  # fmt: skip
    assert "'tiny'" in line  # what to do instead


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the paper preset would start training")
def test_a_gpu_preset_on_a_machine_without_cuda(tmp_path, capsys):
    line = fails_with(capsys, ["train", "--config", "qwen2.5-0.5b-gsm8k-sspo", f"out_dir={tmp_path}"],
                      "sspo train: error: device: 'cuda' requested but this machine has no CUDA device;")  # fmt: skip
    assert "device=cpu" in line


def test_a_hub_model_with_no_network(tmp_path, capsys, offline_hub):
    line = fails_with(capsys, ["train", "--config", "tiny", "model=sspo-tests/no-such-model", f"out_dir={tmp_path}"],
                      "sspo train: error: model: could not load model 'sspo-tests/no-such-model'")  # fmt: skip
    assert "local directory" in line


@pytest.mark.parametrize("task", ["gsm8k", "humaneval", "leetcode"])
def test_a_hub_data_set_with_no_network(tmp_path, capsys, offline_hub, task):
    split = ["task.train_split=test"] if task == "humaneval" else []  # HumanEval has only a test split
    line = fails_with(capsys, ["train", "--config", "tiny", f"task.name={task}", *split, f"out_dir={tmp_path}"],
                      f"sspo train: error: task.path: {task}: could not load")  # fmt: skip
    assert "local path" in line


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["task.options.num_examples=0"], "task.options.num_examples: must be an int >= 1, got 0"),
        (["task.options.num_hidden=-1"], "task.options.num_hidden: must be an int >= 1, got -1"),
        (["task.options.num_examples=8"], "task.options: num_examples + num_hidden: must be <= 10"),
        (["task.options.families=int,float"], "task.options.families: must be a comma-separated list of int, str"),
        (["task.options.test_fraction=0"], "task.options.test_fraction: must be in (0, 1), got 0"),
        (["task.options.max_steps=3"], "task.options.max_steps: unknown option of task 'synthetic_code'; valid: families"),
        (["task.reward=answer_and_work"], "task.reward: 'answer_and_work' is not a reward of the code task"),
        (["rollout.code_memory_mb=10"], "rollout.code_memory_mb: must be >= 64 (MiB), got 10"),
        (["rollout.reward_workers=0"], "rollout.reward_workers: must be >= 1 or none, got 0"),
        (["task.name=humaneval"], "task.train_split: task 'humaneval' has no split 'train'; valid: test"),
        (["task.name=leetcode", "task.options.difficulties=[easy]"], "task.options.difficulties: must be some of Easy"),
        (["task.name=leetcode", "task.options.shuffle=maybe"], "task.options.shuffle: must be true or false"),
        (["task.name=humaneval", "task.train_split=test", "task.options.difficulties=Easy"], "task.options.difficulties: unknown option of task 'humaneval'"),
        (["task.name=synthetic", "task.reward=partial"], "task.reward: 'partial' is not a reward of the math task"),
    ],
)
def test_each_code_task_option_fails_cleanly(tmp_path, capsys, overrides, expected):
    fails_with(capsys, ["train", "--config", "demo-code", *overrides, f"out_dir={tmp_path}"],
               "sspo train: error: " + expected)


def test_a_missing_local_data_set_names_the_path(tmp_path, capsys):
    fails_with(capsys, ["train", "--config", "demo-code", "task.name=leetcode", f"task.path={tmp_path / 'nope.jsonl'}",
                        f"out_dir={tmp_path / 'run'}"],
               "sspo train: error: task.path: leetcode: local data file")  # fmt: skip


def test_demo_and_resume_fail_cleanly(tmp_path, capsys):
    fails_with(capsys, ["demo", "--task", "code", f"--out={tmp_path}", "task.options.num_hidden=0"],
               "sspo demo: error: task.options.num_hidden: must be an int >= 1")  # fmt: skip
    fails_with(capsys, ["resume", str(tmp_path / "nothing")], "sspo resume: error: run_dir: ")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--model", "/nonexistent"], "--model: '/nonexistent' is not an existing directory"),
        (["--model", "tiny", "--task", "mbpp"], "--task: unknown task 'mbpp'"),
        (["--model", "tiny", "--task", "humaneval", "--split", "train"], "--split: task 'humaneval' has no split 'train'"),
        (["--model", "tiny", "--task", "synthetic_code", "--option", "num_examples=0"], "--option num_examples: must be an int >= 1"),
        (["--model", "tiny", "--task", "leetcode", "--option", "difficulties=Trivial"], "--option difficulties: must be some of"),
        (["--model", "tiny", "--task", "synthetic_code", "--option", "nothing"], "--option: 'nothing' must look like KEY=VALUE"),
        (["--model", "tiny", "--template", "chatty"], "--template: 'chatty' is not one of auto, chat, plain, raw"),
        (["--model", "tiny", "--pass-k", "-1"], "--pass-k: -1 is out of range"),
    ],
)
def test_eval_fails_cleanly(capsys, argv, expected):
    fails_with(capsys, ["eval", *argv], "sspo eval: error: " + expected)


def test_eval_with_a_hub_model_or_data_set_and_no_network(capsys, offline_hub):
    fails_with(capsys, ["eval", "--model", "sspo-tests/no-such-model"], "sspo eval: error: --model: could not load model")
    fails_with(capsys, ["eval", "--model", "tiny", "--task", "humaneval", "--num-problems", "2"],
               "sspo eval: error: --path: humaneval: could not load 'openai/openai_humaneval'")  # fmt: skip


def test_eval_scores_a_code_task_with_pass_at_k(tmp_path, capsys):
    """The untrained tiny model writes no working program: pass rate and pass@2 are 0 on synthetic_code."""
    import json

    assert main(["eval", "--model", "tiny", "--task", "synthetic_code", "--num-problems", "3", "--pass-k", "2",
                 "--max-new-tokens", "8", "--template", "raw"]) == 0  # fmt: skip
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["eval/accuracy"] == 0.0 and metrics["eval/pass@2"] == 0.0 and metrics["eval/num_problems"] == 3.0


def test_eval_of_a_run_directory_takes_its_task(tmp_path, capsys, monkeypatch):
    """``sspo eval --model RUN_DIR`` evaluates on the run's task, options, split and template unless told otherwise."""
    import json

    import yaml

    import sspo.tasks
    from sspo.models.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("tiny")
    model.save_pretrained(tmp_path / "final_model")
    tokenizer.save_pretrained(tmp_path / "final_model")
    task = {"name": "synthetic_code", "path": None, "template": "raw", "eval_split": "test", "options": {"families": "str"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": "tiny", "task": task}))
    seen = []
    real = sspo.tasks.load_task

    def spy(name, split, **kwargs):
        seen.append((name, split, kwargs))
        return real(name, split, **kwargs)

    monkeypatch.setattr(sspo.tasks, "load_task", spy)
    assert main(["eval", "--model", str(tmp_path), "--num-problems", "2", "--max-new-tokens", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["eval/num_problems"] == 2.0
    assert seen[-1][:2] == ("synthetic_code", "test") and seen[-1][2]["families"] == "str"
    assert main(["eval", "--model", str(tmp_path), "--task", "synthetic", "--num-problems", "2", "--max-new-tokens", "4"]) == 0
    assert seen[-1][:2] == ("synthetic", "test") and "families" not in seen[-1][2]  # another task: the run's options go


def test_a_non_finite_learning_rate_fails_cleanly(tmp_path, capsys):
    fails_with(capsys, ["train", "--config", "tiny", "optim.lr=.inf", f"out_dir={tmp_path}"],
               "sspo train: error: optim.lr: must be a finite number, got inf")  # fmt: skip
    fails_with(capsys, ["eval", "--model", "tiny", "--temperature", "inf"],
               "sspo eval: error: --temperature: inf is out of range; must be a finite number > 0")  # fmt: skip


@pytest.mark.parametrize("path", ["/sys/x", "/dev/null/x", "/proc/x", "FILE", "FILE/below"])
def test_an_out_dir_that_cannot_hold_a_run_fails_cleanly_before_loading_anything(tmp_path, capsys, monkeypatch, path):
    from pathlib import Path

    import sspo.trainer.loop as loop

    if path.startswith("FILE"):
        (tmp_path / "file").write_text("not a directory")
        path = path.replace("FILE", str(tmp_path / "file"))
    elif not Path(path).parent.exists():
        pytest.skip(f"no {Path(path).parent} on this machine")

    def boom(*args, **kwargs):
        raise AssertionError("loaded data before checking out_dir")

    monkeypatch.setattr(loop, "load_problems", boom)
    line = fails_with(capsys, ["train", "--config", "tiny", f"out_dir={path}"],
                      f"sspo train: error: out_dir: '{path}' cannot hold the run (")  # fmt: skip
    assert "; choose a directory you can write to" in line and "[Errno" not in line


def test_task_options_name_the_option_as_written(tmp_path, capsys):
    fails_with(capsys, ["train", "--config", "tiny", "task.options.max_steps=abc", f"out_dir={tmp_path}"],
               "sspo train: error: task.options.max_steps: must be an int >= min_steps (2), got 'abc'")  # fmt: skip
    fails_with(capsys, ["eval", "--model", "tiny", "--option", "max_steps=0"],
               "sspo eval: error: --option max_steps: must be an int >= min_steps (2), got 0")  # fmt: skip
