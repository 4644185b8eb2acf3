"""Verifiable tasks: exact oracles, plausible wrong answers, deterministic and split generation."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from trainlab.data.tasks import (
    DIFFICULTIES,
    TASKS,
    TaskRecord,
    extract_answer,
    make_task_records,
    problem_split,
    score,
)

# What an answer looks like, per task: the wrong answer must look the same.
ANSWER_SHAPE = {
    "add": r"\d+", "mul": r"\d+", "compare": r"\d+", "count": r"\d+",
    "sort": r"\d+( \d+)+", "reverse": r"[a-z]( [a-z])+",
}


def test_registry_has_the_required_tasks() -> None:
    assert {"add", "mul", "compare", "sort", "reverse", "count"} <= set(TASKS)
    assert all(task.name == name for name, task in TASKS.items())


@pytest.mark.parametrize("name", sorted(TASKS))
@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_oracle_accepts_the_answer_and_rejects_wrong_answers(name: str, difficulty: int) -> None:
    task = TASKS[name]
    for seed in range(150):
        record = task.generate(random.Random(seed), difficulty)
        assert record.task == name and record.prompt.endswith("=")
        assert task.oracle(record, record.answer)
        assert score(record, f" {record.answer}\n12+1=13")  # only the first line counts
        assert score(record, record.answer + "<eos>")
        wrong = task.wrong_answer(record, random.Random(seed))
        assert wrong != record.answer
        assert re.fullmatch(ANSWER_SHAPE[name], wrong), wrong
        assert not task.oracle(record, wrong)
        assert not score(record, wrong + "\n" + record.answer)
        assert not score(record, "")


def test_examples_of_each_format() -> None:
    cases = {
        "add": ({"a": 12, "b": 35}, "47"),
        "mul": ({"a": 7, "b": 8}, "56"),
        "compare": ({"a": 47, "b": 52}, "52"),
        "sort": ({"items": [5, 2, 9, 1]}, "1 2 5 9"),
        "reverse": ({"word": "cat"}, "t a c"),
        "count": ({"target": "b", "items": list("abcb")}, "2"),
    }
    for name, (meta, answer) in cases.items():
        assert TASKS[name].solve(meta) == answer
    record = make_task_records(1, 0, tasks=["add"])[0]
    assert re.fullmatch(r"\d+\+\d+=", record.prompt) and record.text == record.prompt + record.answer


def test_oracle_is_exact_after_stripping() -> None:
    record = TaskRecord("sort", "sort 3 1 2=", "1 2 3", {"items": [3, 1, 2]})
    assert score(record, "  1 2 3  \n")
    assert not score(record, "1 2 3 4")
    assert not score(record, "1  2 3")
    assert not score(record, "123")
    assert extract_answer("47\n5+5=10") == "47"
    assert extract_answer(" 47 <eos><pad>") == "47"


def test_oracle_judges_the_operands_not_the_stored_answer() -> None:
    record = TaskRecord("add", "2+2=", "5", {"a": 2, "b": 2})
    assert score(record, "4") and not score(record, "5")


def test_make_task_records_is_deterministic_and_balanced() -> None:
    a = make_task_records(600, 3)
    assert a == make_task_records(600, 3)
    assert a != make_task_records(600, 4)
    assert Counter(r.task for r in a) == {name: 100 for name in TASKS}
    only = make_task_records(20, 3, tasks=["sort", "reverse"], difficulty=2)
    assert {r.task for r in only} == {"sort", "reverse"}
    with pytest.raises(ValueError, match="unknown task"):
        make_task_records(5, 0, tasks=["divide"])
    with pytest.raises(ValueError, match="difficulty"):
        make_task_records(5, 0, difficulty=7)


def test_train_and_eval_problems_never_overlap() -> None:
    train = make_task_records(3000, 0, split="train")
    evals = make_task_records(600, 1, split="eval")
    assert all(problem_split(r.prompt) == "train" for r in train)
    assert all(problem_split(r.prompt) == "eval" for r in evals)
    assert not {r.prompt for r in train} & {r.prompt for r in evals}
    everything = make_task_records(5000, 2)
    share = sum(problem_split(r.prompt) == "eval" for r in everything) / len(everything)
    assert 0.05 < share < 0.15


def test_records_round_trip_through_dicts() -> None:
    for record in make_task_records(12, 5):
        assert TaskRecord.from_dict(record.to_dict()) == record
