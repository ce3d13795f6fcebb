"""Score correct programs in each isolation mode and report, as one JSON line, what happened.

Run by ``test_code_imports.py`` with the interpreter under test (a virtual environment below a
private directory): ``python code_imports_run.py CONFIG_JSON``, where the config names the modes
and the programs (each a correct ``add``). Per mode: the refusal (the scorer's ``RuntimeError`` at
start-up, and the grade a program then gets), or every program's grade.
"""

from __future__ import annotations

import json
import sys
import warnings

from sspo.rewards import CodeScorer

ADD = {"tests": "def check(candidate):\n    assert candidate(2, 3) == 5\n", "entry_point": "add"}


def main(config: dict) -> dict:
    report: dict = {"modules": {}}
    for name in config.get("where", []):  # where this interpreter (and so the zygote) finds them
        module = __import__(name)
        report["modules"][name] = module.__file__
    for mode in config["modes"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # degraded layers: reported below instead
            with CodeScorer(workers=1, isolation=mode, timeout=10.0) as scorer:
                try:
                    scorer.warmup()
                except RuntimeError as exc:
                    grade = scorer.grade(config["programs"][0][1], ADD)
                    report[mode] = {"refused": str(exc), "grade": grade.__dict__}
                    continue
                grades = scorer.grade_batch([p for _, p in config["programs"]], [ADD] * len(config["programs"]))
                report[mode] = {
                    "grades": {name: g.__dict__ for (name, _), g in zip(config["programs"], grades)},
                    "layers": scorer.layers,
                    "missing": scorer.missing_layers,
                }
    return report


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))), flush=True)
