"""Expected failures name the field and say what to do; warnings and progress say what is true.

Non-finite numbers anywhere in the config, an ``out_dir`` that cannot hold a run, task options of the
wrong type, training on the evaluated split, Hugging Face's progress bars from ``sspo.train`` and the
trainer's progress bar counting the bound that ends the run.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing

import pytest
from trainer_cases import tiny_config

import sspo
from sspo.trainer import Trainer, load_config, train
from sspo.trainer import loop as loop_module
from sspo.trainer.config import ConfigError, TrainConfig, check_out_dir, split_overlap
from sspo.trainer.loop import progress_bound


# ----------------------------------------------------------------------------- 1. numbers are finite
def _float_fields(cls=TrainConfig, prefix=""):
    """Dotted names of every float field (``float`` or ``float | None``) of the config, nested sections included."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            yield from _float_fields(kind, f"{prefix}{f.name}.")
        elif kind is float or (typing.get_origin(kind) in (typing.Union, types.UnionType) and float in typing.get_args(kind)):
            yield f"{prefix}{f.name}"


FLOAT_FIELDS = sorted(_float_fields())


def test_the_config_has_float_fields_to_check():
    assert {"optim.lr", "time_budget_s", "rollout.temperature", "warm_start.lr", "objective.entropy_coef"} <= set(FLOAT_FIELDS)


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "inf", "nan"])
@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_every_float_field_refuses_a_non_finite_value(name, value):
    with pytest.raises(ConfigError, match=rf"^{name}: must be a finite number"):
        load_config("tiny", [f"{name}={value}"])


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("optim.betas=[0.9, .nan]", "optim.betas[1]"),
        ("optim.betas=[.inf, 0.99]", "optim.betas[0]"),
        ("objective.params.tau_pos=.inf", "objective.params.tau_pos"),
        ("objective.params={eps_high: .nan}", "objective.params.eps_high"),
        ("task.options.test_fraction=.nan", "task.options.test_fraction"),
    ],
)
def test_non_finite_items_and_option_values_name_their_place(override, field):
    with pytest.raises(ConfigError, match=rf"^{re.escape(field)}: must be a finite number"):
        load_config("tiny", [override])


def test_an_infinite_learning_rate_is_refused_before_any_work():
    with pytest.raises(ConfigError, match=r"^optim.lr: must be a finite number, got inf$"):
        load_config("tiny", ["optim.lr=.inf"])
    with pytest.raises(ConfigError, match=r"^time_budget_s: must be a finite number \(none: no time limit\)"):
        load_config("tiny", ["time_budget_s=.inf"])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("eval.max_new_tokens=0", "eval.max_new_tokens: must be >= 1 or none"),
        ("seed=10000000000000000000", "seed: must be an int in [-2**63, 2**63)"),
        ("warm_start.lr=-1", "warm_start.lr: must be > 0"),
        ("rollout.reward_timeout=0", "rollout.reward_timeout: must be > 0"),
    ],
)
def test_out_of_domain_numbers_name_the_field(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config("tiny", [override])
    assert str(info.value).startswith(expected), info.value


# ----------------------------------------------------------------------------- 2. out_dir
@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/dev/null/x", "'/dev/null' exists and is not a directory"),
        ("/proc/x", "cannot create or write in it: No such file or directory"),
        ("/sys/x", "cannot create or write in it: "),
    ],
)
def test_an_out_dir_that_cannot_hold_a_run_is_a_config_error(path, reason):
    from pathlib import Path

    if not Path(path.rsplit("/", 1)[0]).exists():
        pytest.skip(f"no {path.rsplit('/', 1)[0]} on this machine")
    with pytest.raises(ConfigError) as info:
        check_out_dir(path)
    message = str(info.value)
    assert message.startswith(f"out_dir: '{path}' cannot hold the run ({reason}"), message
    assert "choose a directory you can write to" in message


def test_an_out_dir_that_is_a_file_is_a_config_error(tmp_path):
    existing = tmp_path / "a-file"
    existing.write_text("x")
    for path in (existing, existing / "below"):
        with pytest.raises(ConfigError, match=r"^out_dir: .* exists and is not a directory\); choose"):
            check_out_dir(path)
    check_out_dir(tmp_path / "new" / "run")  # a directory that can be made is made, and nothing is left in it
    assert list((tmp_path / "new" / "run").iterdir()) == []


def test_the_out_dir_is_checked_before_data_or_model_load(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("loaded data before checking out_dir")

    monkeypatch.setattr(loop_module, "load_problems", boom)
    monkeypatch.setattr(loop_module, "prepare_model", boom)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"^out_dir: "):
        Trainer(tiny_config(tmp_path / "file"))


# ----------------------------------------------------------------------------- 3. task options
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["task.options.max_steps=abc"], "task.options.max_steps: must be an int >= min_steps (2), got 'abc'"),
        (["task.options.max_steps=0"], "task.options.max_steps: must be an int >= min_steps (2), got 0"),
        (["task.options.min_steps=1.5"], "task.options.min_steps: must be an int >= 1, got 1.5"),
        (["task.options.max_operand=[3]"], "task.options.max_operand: must be an int >= 2, got [3]"),
        (["task.options.operations=5"], "task.options.operations: must be a non-empty string of '+-*', got 5"),
        (["task.options.test_fraction=abc"], "task.options.test_fraction: must be a number in (0, 1), got 'abc'"),
        (["task.name=synthetic_code", "task.options.test_fraction=abc"],
         "task.options.test_fraction: must be in (0, 1), got 'abc'"),
        (["task.name=deepmath", "task.options.min_difficulty=hard"],
         "task.options.min_difficulty: must be a number (DeepMath difficulties run 1-10) or none, got 'hard'"),
        (["task.name=deepmath", "task.options={min_difficulty: 5, max_difficulty: 3}"],
         "task.options.max_difficulty: must be >= min_difficulty (5), got 3"),
        (["task.name=deepmath", "task.options.topics=3"], "task.options.topics: must be a string or a list of strings"),
        (["task.name=deepmath", "task.options.test_fraction=2"], "task.options.test_fraction: must be a number in (0, 1)"),
    ],
)
def test_task_options_of_the_wrong_type_or_range_name_the_option(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_config("tiny", overrides)
    assert str(info.value).startswith(expected), info.value
    assert "SyntheticConfig" not in str(info.value) and "not supported between" not in str(info.value)


def test_synthetic_config_messages_name_the_option_as_written():
    with pytest.raises(ValueError, match=r"^max_steps: must be an int >= min_steps \(2\), got 1$"):
        sspo.tasks.SyntheticConfig(max_steps=1)


# ----------------------------------------------------------------------------- 4. training on the evaluated split
def test_the_default_splits_do_not_overlap():
    assert split_overlap(load_config("tiny")) is None


def test_the_same_split_for_training_and_evaluation_is_warned_about():
    message = split_overlap(load_config("tiny", ["task.train_split=test"]))
    assert message.startswith("task.train_split and task.eval_split are both 'test': the run trains on the "
                              "problems it is evaluated on")  # fmt: skip


def test_one_file_as_the_path_of_a_split_by_file_task_is_warned_about(tmp_path):
    data = tmp_path / "gsm8k.jsonl"
    data.write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    message = split_overlap(load_config("tiny", ["task.name=gsm8k", f"task.path={data}"]))
    assert message.startswith(f"task.path '{data}' is one file, so task.train_split 'train' and task.eval_split "
                              "'test' are the same problems")  # fmt: skip
    assert split_overlap(load_config("tiny", ["task.name=gsm8k", f"task.path={tmp_path}"])) is None  # a directory
    deepmath = split_overlap(load_config("tiny", ["task.name=deepmath", "task.train_split=all"]))
    assert deepmath.startswith("deepmath's split 'all' holds the other one")


def test_the_trainer_prints_the_overlap_as_one_warning_line(tmp_path):
    lines = []
    trainer = Trainer(tiny_config(tmp_path, "task.train_split=test"), log=lines.append)
    trainer.scorer.close()
    trainer.logger.close()
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and "task.train_split and task.eval_split are both 'test'" in warnings[0]
    assert "\n" not in warnings[0]


# ----------------------------------------------------------------------------- 5. no Hugging Face progress bars
def test_train_prints_no_hugging_face_progress_bar(tmp_path, capfd):
    import huggingface_hub.utils as hub
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()  # as in a fresh interpreter (the CLI's tests switch them off)
    try:
        capfd.readouterr()
        train(tiny_config(tmp_path, "steps=1"), log=lambda message: None)
        captured = capfd.readouterr()
        assert hf_logging.is_progress_bar_enabled() and not hub.are_progress_bars_disabled()  # restored
    finally:
        (hf_logging.enable_progress_bar if was_on else hf_logging.disable_progress_bar)()
    text = captured.out + captured.err
    for bar in ("Writing model shards", "Loading weights", "it/s]", "%|"):
        assert bar not in text, text[-500:]


# ----------------------------------------------------------------------------- 6. the progress bar's bound
def test_progress_counts_steps_unless_the_time_budget_ends_the_run_first():
    assert progress_bound(50, None, 0, 0.0) == ("steps", 50, 0, "steps")
    assert progress_bound(50, None, 10, 99.0) == ("steps", 50, 10, "steps")
    # a budget, nothing timed yet: steps, naming the cap
    assert progress_bound(50, 240.0, 0, 0.0) == ("steps", 50, 0, "steps; time cap 240 s")
    # 1 s a step: 50 steps fit in 240 s, so the steps end the run
    assert progress_bound(50, 240.0, 10, 10.0) == ("steps", 50, 10, "steps; time cap 240 s")
    # 1 s a step: 1000 steps do not fit, the budget ends the run: training seconds
    assert progress_bound(1000, 240.0, 10, 10.0) == ("seconds", 240.0, 10.0, "training seconds; at most 1000 steps")
    assert progress_bound(1000, 240.0, 300, 250.0)[2] == 240.0  # never past the total


class _RecordingProgress:
    """What the bar shows: ``(total, completed, description)``."""

    instances: list = []

    def __init__(self, total, *, enabled, description="training", completed=0):
        self.shown = (total, completed, description)
        _RecordingProgress.instances.append(self)

    def set_bound(self, total, completed, description):
        self.shown = (total, completed, description)

    def update(self, advance=1, **fields):
        total, completed, description = self.shown
        self.shown = (total, completed + advance, description)

    def close(self):
        pass


@pytest.mark.parametrize(
    ("overrides", "stopped", "last"),
    [
        (["steps=2"], "steps", (2, 2, "sspo (steps)")),
        (["steps=2", "time_budget_s=100000"], "steps", (2, 2, "sspo (steps; time cap 100000 s)")),
        (["steps=3", "time_budget_s=0.000001"], "time_budget", (1e-6, 1e-6, "sspo (training seconds; at most 3 steps)")),
    ],
)
def test_the_run_shows_the_bound_that_ends_it(tmp_path, monkeypatch, overrides, stopped, last):
    _RecordingProgress.instances = []
    monkeypatch.setattr(loop_module, "Progress", _RecordingProgress)
    summary = train(tiny_config(tmp_path, *overrides), log=lambda message: None)
    assert summary["stopped"] == stopped
    (progress,) = _RecordingProgress.instances
    assert progress.shown == last
