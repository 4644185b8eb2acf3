"""Verifiable tasks: small problems with a generator, an exact oracle and a plausible wrong answer.

Why: alignment methods (rejection sampling, preference optimisation, RL with verifiable rewards)
need a reward that is *correct*, cheap and not a learned model. Arithmetic, sorting, reversing and
counting have one right answer a program can check, and a tiny model can learn them partly in a
minute of CPU training, so progress is measurable.

Format. One compact line per problem, the prompt ends where the model starts answering::

    12+35=47            add
    7*8=56              mul
    max 47 52=52        compare (which number is larger)
    sort 5 2 9 1=1 2 5 9
    reverse c a t=t a c
    count b in a b c b=2

The tokenizer splits every digit into its own token, so numbers are plain digits. Letters in
``reverse`` are separated by spaces: a BPE tokenizer would merge "cat" into one opaque token,
and reversing it would then be an unlearnable lookup; spaced letters are one token each.
In training text a record is ``prompt + answer`` followed by a newline; the oracle therefore
reads a completion up to its first newline (or end of text) and compares it exactly, after
stripping surrounding whitespace.

Train/eval split. Every prompt is assigned to ``train`` or ``eval`` by a stable hash (CRC-32,
not Python's salted ``hash``), so the embedded pretraining data can use only ``train`` problems
and evaluations measure generalisation on problems the model has never seen, on every run.
"""

from __future__ import annotations

import random
import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

Split = Literal["train", "eval"]

#: Percentage of the problem space held out for evaluation (by hash of the prompt).
EVAL_PERCENT = 10
DIFFICULTIES = (1, 2, 3)

#: Text that ends a completion besides a newline: the eos token as decoded with special tokens.
_END_MARKERS = ("\n", "<eos>", "</s>", "<|endoftext|>")


@dataclass
class TaskRecord:
    """One problem. ``prompt + answer`` is the correct training line; ``meta`` holds the operands."""

    task: str
    prompt: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskRecord:
        return cls(task=data["task"], prompt=data["prompt"], answer=data["answer"],
                   meta=dict(data.get("meta", {})))

    @property
    def text(self) -> str:
        """The record as one training line (without the trailing newline)."""
        return self.prompt + self.answer


def extract_answer(completion: str) -> str:
    """The part of a completion the oracle judges: up to the first newline / end marker, stripped."""
    cut = len(completion)
    for marker in _END_MARKERS:
        pos = completion.find(marker)
        if pos != -1:
            cut = min(cut, pos)
    return completion[:cut].strip()


def problem_split(prompt: str) -> Split:
    """``eval`` for a fixed ~EVAL_PERCENT% of all prompts, ``train`` for the rest; stable everywhere."""
    return "eval" if zlib.crc32(prompt.encode("utf-8")) % 100 < EVAL_PERCENT else "train"


def _check_difficulty(difficulty: int) -> int:
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    return difficulty


def _swap_digits(n: int, rng: random.Random) -> int | None:
    """``n`` with two different adjacent digits swapped (no leading zero), or None if impossible."""
    s = str(n)
    spots = [i for i in range(len(s) - 1) if s[i] != s[i + 1] and not (i == 0 and s[1] == "0")]
    if not spots:
        return None
    i = rng.choice(spots)
    return int(s[:i] + s[i + 1] + s[i] + s[i + 2 :])


def _pick_wrong(truth: str, candidates: Sequence[str], rng: random.Random) -> str:
    options = sorted({c for c in candidates if c != truth})
    if not options:  # every task's generator makes this impossible; kept as a clear failure
        raise RuntimeError(f"no wrong answer available for {truth!r}")
    return rng.choice(options)


class Task(ABC):
    """A problem family: ``generate`` a record, ``solve`` its operands, judge a completion."""

    name: str
    description: str

    @abstractmethod
    def generate(self, rng: random.Random, difficulty: int = 1) -> TaskRecord:
        """A random problem at ``difficulty`` (1 = what a ~1M-param model can partly learn)."""

    @abstractmethod
    def solve(self, meta: dict[str, Any]) -> str:
        """The correct answer, recomputed from the operands (the oracle never trusts ``answer``)."""

    @abstractmethod
    def wrong_answer(self, record: TaskRecord, rng: random.Random) -> str:
        """A plausible but wrong answer in the same format (for preference pairs)."""

    def oracle(self, record: TaskRecord, completion: str) -> bool:
        """True iff the completion's first line is exactly the right answer."""
        return extract_answer(completion) == self.solve(record.meta)

    def _record(self, prompt: str, meta: dict[str, Any]) -> TaskRecord:
        return TaskRecord(task=self.name, prompt=prompt, answer=self.solve(meta), meta=meta)


class AddTask(Task):
    name = "add"
    description = "integer addition: 12+35=47"
    _RANGES: ClassVar[dict[int, int]] = {1: 99, 2: 999, 3: 9999}

    def generate(self, rng: random.Random, difficulty: int = 1) -> TaskRecord:
        hi = self._RANGES[_check_difficulty(difficulty)]
        a, b = rng.randint(0, hi), rng.randint(0, hi)
        return self._record(f"{a}+{b}=", {"a": a, "b": b})

    def solve(self, meta: dict[str, Any]) -> str:
        return str(meta["a"] + meta["b"])

    def wrong_answer(self, record: TaskRecord, rng: random.Random) -> str:
        s = record.meta["a"] + record.meta["b"]
        cands = [s + 1, s - 1, s + 10, s - 10, _swap_digits(s, rng)]
        return _pick_wrong(str(s), [str(c) for c in cands if c is not None and c >= 0], rng)


class MulTask(Task):
    name = "mul"
    description = "multiplication of small numbers: 7*8=56"
    # difficulty -> ((min, max) of a, (min, max) of b)
    _RANGES: ClassVar[dict[int, tuple[tuple[int, int], tuple[int, int]]]] = {
        1: ((1, 12), (1, 12)), 2: ((2, 99), (2, 9)), 3: ((10, 99), (10, 99))}

    def generate(self, rng: random.Random, difficulty: int = 1) -> TaskRecord:
        (alo, ahi), (blo, bhi) = self._RANGES[_check_difficulty(difficulty)]
        a, b = rng.randint(alo, ahi), rng.randint(blo, bhi)
        return self._record(f"{a}*{b}=", {"a": a, "b": b})

    def solve(self, meta: dict[str, Any]) -> str:
        return str(meta["a"] * meta["b"])

    def wrong_answer(self, record: TaskRecord, rng: random.Random) -> str:
        a, b = record.meta["a"], record.meta["b"]
        p = a * b
        # neighbouring table entries are the classic mistakes, then off-by-one and digit swaps
        cands = [p + a, p - a, p + b, p - b, p + 1, p - 1, _swap_digits(p, rng)]
        return _pick_wrong(str(p), [str(c) for c in cands if c is not None and c >= 0], rng)


class CompareTask(Task):
    name = "compare"
    description = "the larger of two different numbers: max 47 52=52"
    _RANGES: ClassVar[dict[int, tuple[int, int]]] = {1: (10, 99), 2: (100, 999), 3: (1000, 9999)}

    def generate(self, rng: random.Random, difficulty: int = 1) -> TaskRecord:
        lo, hi = self._RANGES[_check_difficulty(difficulty)]
        a, b = rng.sample(range(lo, hi + 1), 2)
        return self._record(f"max {a} {b}=", {"a": a, "b": b})

    def solve(self, meta: dict[str, Any]) -> str:
        return str(max(meta["a"], meta["b"]))

    def wrong_answer(self, record: TaskRecord, rng: random.Random) -> str:
        return str(min(record.meta["a"], record.meta["b"]))


class SortTask(Task):
    name = "sort"
    description = "sort small integers ascending: sort 5 2 9 1=1 2 5 9"
    # difficulty -> ((min, max) list length, largest value)
    _SHAPES: ClassVar[dict[int, tuple[tuple[int, int], int]]] = {
        1: ((3, 4), 9), 2: ((5, 6), 9), 3: ((5, 7), 99)}

    def generate(self, rng: random.Random, difficulty: int = 1) -> TaskRecord:
        (nlo, nhi), top = self._SHAPES[_check_difficulty(difficulty)]
        n = rng.randint(nlo, nhi)
        while True:  # at least two different values, so a wrong order exists
            items = [rng.randint(0, top) for _ in range(n)]
            if len(set(items)) > 1:
                break
        return self._record("sort " + " ".join(map(str, items)) + "=", {"items": items})

    def solve(self, meta: dict[str, Any]) -> str:
        return " ".join(map(str, sorted(meta["items"])))

    def wrong_answer(self, record: TaskRecord, rng: random.Random) -> str:
        items = list(record.meta["items"])
        ordered = sorted(items)
        cands = [items, ordered[::-1]]
        # "almost sorted": one adjacent pair of different values out of order
        for i in range(len(ordered) - 1):
            if ordered[i] != ordered[i + 1]:
                swapped = list(ordered)
                swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
                cands.append(swapped)
        return _pick_wrong(self.solve(record.meta), [" ".join(map(str, c)) for c in cands], rng)


class ReverseTask(Task):
    name = "reverse"
    description = "reverse a word, letters spaced: reverse c a t=t a c"
    _LENGTHS: ClassVar[dict[int, tuple[int, int]]] = {1: (3, 4), 2: (5, 6), 3: (7, 8)}
    _LETTERS = "abcdefghijklmnopqrstuvwxyz"

    def generate(self, rng: random.Random, difficulty: int = 1) -> TaskRecord:
        lo, hi = self._LENGTHS[_check_difficulty(difficulty)]
        while True:  # no palindromes: the unreversed word must be a wrong answer
            word = "".join(rng.choice(self._LETTERS) for _ in range(rng.randint(lo, hi)))
            if word != word[::-1]:
                break
        return self._record("reverse " + " ".join(word) + "=", {"word": word})

    def solve(self, meta: dict[str, Any]) -> str:
        return " ".join(meta["word"][::-1])

    def wrong_answer(self, record: TaskRecord, rng: random.Random) -> str:
        word: str = record.meta["word"]
        rev = word[::-1]
        cands = [word]
        for i in range(len(rev) - 1):  # reversed but with one adjacent pair of letters swapped
            if rev[i] != rev[i + 1]:
                cands.append(rev[:i] + rev[i + 1] + rev[i] + rev[i + 2 :])
        return _pick_wrong(self.solve(record.meta), [" ".join(c) for c in cands], rng)


class CountTask(Task):
    name = "count"
    description = "count occurrences of a letter: count b in a b c b=2"
    # difficulty -> ((min, max) list length, alphabet)
    _SHAPES: ClassVar[dict[int, tuple[tuple[int, int], str]]] = {
        1: ((4, 6), "abcd"), 2: ((6, 9), "abcde"), 3: ((10, 14), "abcdef")}

    def generate(self, rng: random.Random, difficulty: int = 1) -> TaskRecord:
        (lo, hi), alphabet = self._SHAPES[_check_difficulty(difficulty)]
        items = [rng.choice(alphabet) for _ in range(rng.randint(lo, hi))]
        target = rng.choice(alphabet)
        return self._record(f"count {target} in " + " ".join(items) + "=",
                            {"target": target, "items": items})

    def solve(self, meta: dict[str, Any]) -> str:
        return str(meta["items"].count(meta["target"]))

    def wrong_answer(self, record: TaskRecord, rng: random.Random) -> str:
        c = record.meta["items"].count(record.meta["target"])
        return _pick_wrong(str(c), [str(x) for x in (c - 1, c + 1) if x >= 0], rng)


TASKS: dict[str, Task] = {t.name: t for t in (AddTask(), MulTask(), CompareTask(), SortTask(),
                                              ReverseTask(), CountTask())}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}") from None


def make_task_records(
    n: int,
    seed: int,
    tasks: Sequence[str] | None = None,
    difficulty: int = 1,
    *,
    split: Split | None = None,
) -> list[TaskRecord]:
    """``n`` problems, the tasks balanced (round robin, then shuffled), deterministic in ``seed``.

    ``split="train"`` / ``"eval"`` keeps only problems on that side of the fixed hash split
    (`problem_split`): pretraining uses ``train``, evaluations ``eval``. ``None`` takes all.
    Records may repeat when a task's problem space is small (``mul`` at difficulty 1 has 144).
    """
    names = list(tasks) if tasks is not None else list(TASKS)
    if not names:
        raise ValueError("tasks must name at least one task")
    chosen = [get_task(name) for name in names]
    _check_difficulty(difficulty)
    rng = random.Random(seed)
    records: list[TaskRecord] = []
    for i in range(n):
        task = chosen[i % len(chosen)]
        for _ in range(10_000):
            record = task.generate(rng, difficulty)
            if split is None or problem_split(record.prompt) == split:
                break
        else:  # pragma: no cover - every task's space has both splits at every difficulty
            raise RuntimeError(f"task {task.name!r} found no {split} problem at difficulty {difficulty}")
        records.append(record)
    rng.shuffle(records)
    return records


def score(record: TaskRecord, completion: str) -> bool:
    """Whether ``completion`` (the text generated after ``record.prompt``) answers correctly."""
    return get_task(record.task).oracle(record, completion)
