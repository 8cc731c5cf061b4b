"""Benchmark loaders and graders: the generated held-out split, MATH500, AIME'24, GPQA-Diamond.

- ``heldout``: ``data/<profile>/eval.jsonl`` (generated problems with integer answers), integer compare.
- ``math500``: ``benchmarks/math500/test.jsonl`` (shipped, see its SOURCE.md), graded offline with
  math-verify (LaTeX / boxed answers, symbolic equivalence).
- ``aime24``: ``benchmarks/aime24/aime24_nofigures.jsonl`` (shipped, the set s1 evaluated on), integer
  compare after stripping leading zeros.
- ``gpqa``: GPQA-Diamond from a CSV the user gives (never shipped: its authors ask that questions not
  appear in plain text online). Four choices shuffled per question with a fixed seed, the s1 prompt
  ``{Question}\\n\\nA) ..\\nB) ..\\nC) ..\\nD) ..``, graded by exact letter.

Graders read the answer phase of a budget-forced generation (the text after the forced ``Answer:``).
"""

from __future__ import annotations

import csv
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rank1.config import REPO_ROOT, data_dir
from rank1.constants import EVAL_JSONL
from rank1.data import iter_jsonl
from rank1.metrics import NUMBER_RE, normalize_number

BENCHMARKS_DIR = REPO_ROOT / "benchmarks"
BENCHMARK_NAMES = ("heldout", "math500", "aime24", "gpqa")
BENCHMARK_TITLES = {"heldout": "held-out (generated)", "math500": "MATH500", "aime24": "AIME'24",
                    "gpqa": "GPQA-Diamond"}
GPQA_COLUMNS = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
LETTERS = "ABCD"
LETTER_RE = re.compile(r"\(?\b([ABCD])\b\)?")


@dataclass(frozen=True)
class Item:
    """One problem: a stable id, the user message, and the gold answer as a string."""

    id: str
    question: str
    gold: str


@dataclass(frozen=True)
class Benchmark:
    name: str
    source: str  # the file the items came from
    items: list[Item]
    grade: Callable[[str, str], tuple[str | None, bool]]  # (answer text, gold) -> (prediction, correct)


@dataclass(frozen=True)
class BenchmarkSpec:
    """``name`` or ``name:N`` (the first N items) as given in ``--benchmarks``."""

    name: str
    limit: int = 0

    @classmethod
    def parse(cls, text: str) -> list[BenchmarkSpec]:
        specs = []
        for part in (p.strip() for p in text.split(",") if p.strip()):
            name, _, n = part.partition(":")
            if name not in BENCHMARK_NAMES:
                raise ValueError(f"unknown benchmark {name!r} in --benchmarks {text!r}; "
                                 f"known: {', '.join(BENCHMARK_NAMES)} (optionally name:N for the first N)")
            if n and (not n.isdigit() or int(n) < 1):
                raise ValueError(f"--benchmarks {part!r}: N in name:N must be a positive integer")
            specs.append(cls(name, int(n) if n else 0))
        if not specs:
            raise ValueError("--benchmarks is empty; give e.g. heldout,math500:30")
        if len({s.name for s in specs}) != len(specs):
            raise ValueError(f"--benchmarks {text!r} names a benchmark twice")
        return specs


# ---------------------------------------------------------------- graders


def first_number(answer: str) -> str | None:
    """The first number of the answer text, canonical (no commas, no leading zeros)."""
    found = NUMBER_RE.findall(answer)
    return normalize_number(found[0]) if found else None


def grade_integer(answer: str, gold: str) -> tuple[str | None, bool]:
    """Integer compare of the answer's first number with the gold (leading zeros stripped)."""
    pred = first_number(answer)
    return pred, pred is not None and pred == normalize_number(gold)


def grade_math(answer: str, gold: str) -> tuple[str | None, bool]:
    """math-verify: parse the gold as LaTeX and the answer text (boxed or plain), compare symbolically."""
    from math_verify import parse, verify

    gold_parsed = parse(f"${gold}$")
    pred_parsed = parse(answer)
    if not pred_parsed:
        return None, False
    return str(pred_parsed[-1]), bool(gold_parsed) and bool(verify(gold_parsed, pred_parsed))


def grade_letter(answer: str, gold: str) -> tuple[str | None, bool]:
    """The first standalone letter A-D of the answer text must be the gold letter."""
    m = LETTER_RE.search(answer)
    pred = m.group(1) if m else None
    return pred, pred == gold


# ---------------------------------------------------------------- loaders


def _jsonl_items(path: Path, id_key: str | None, question_key: str, gold_key: str) -> list[Item]:
    """Items of a JSONL file; a bad line raises a ValueError naming the file and line."""
    items = []
    for lineno, rec in iter_jsonl(path, "benchmark file"):
        missing = [k for k in (question_key, gold_key) if rec.get(k) in (None, "")]
        if missing:
            raise ValueError(f"{path}:{lineno}: missing field(s) {missing}")
        items.append(Item(str(rec[id_key]) if id_key and id_key in rec else str(len(items)),
                          str(rec[question_key]), str(rec[gold_key])))
    if not items:
        raise ValueError(f"benchmark file {path} holds no items")
    return items


def gpqa_prompt(question: str, choices: list[str]) -> str:
    """s1's GPQA prompt: the question, a blank line, then ``A) ..`` to ``D) ..``."""
    return question + "\n\n" + "\n".join(f"{letter}) {c}" for letter, c in zip(LETTERS, choices, strict=True))


def gpqa_items(path: Path, seed: int = 0) -> list[Item]:
    """GPQA-Diamond items from the CSV; choices shuffled per question by ``Random((seed, row))``."""
    if not path.is_file():
        raise FileNotFoundError(f"GPQA file {path} does not exist; pass --gpqa_path with the CSV that has "
                                f"the columns {list(GPQA_COLUMNS)}")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in GPQA_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: not a GPQA CSV, missing column(s) {missing}")
        items = []
        for row_no, row in enumerate(reader):
            texts = [(row[c] or "").strip() for c in GPQA_COLUMNS]
            if not all(texts):
                raise ValueError(f"{path}: data row {row_no + 1} has an empty question or choice")
            choices = texts[1:]
            random.Random(f"{seed}:{row_no}").shuffle(choices)
            gold = LETTERS[choices.index(texts[1])]
            items.append(Item(row.get("Record ID") or str(row_no), gpqa_prompt(texts[0], choices), gold))
    if not items:
        raise ValueError(f"{path}: no questions")
    return items


def load_benchmark(spec: BenchmarkSpec, profile: str, gpqa_path: str | None = None, gpqa_seed: int = 0,
                   limit: int = 0) -> Benchmark:
    """The items of ``spec`` (first ``spec.limit``, then capped at ``limit`` if given) and their grader."""
    name = spec.name
    if name == "heldout":
        path = data_dir(profile) / EVAL_JSONL
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: generate it with "
                                    f"`python s1_peft/prepare_data.py --profile {profile}`")
        items, grade = _jsonl_items(path, None, "question", "answer"), grade_integer
    elif name == "math500":
        path = BENCHMARKS_DIR / "math500" / "test.jsonl"
        items, grade = _jsonl_items(path, "unique_id", "problem", "answer"), grade_math
    elif name == "aime24":
        path = BENCHMARKS_DIR / "aime24" / "aime24_nofigures.jsonl"
        items, grade = _jsonl_items(path, "id", "problem", "answer"), grade_integer
    elif name == "gpqa":
        if not gpqa_path:
            raise ValueError("--benchmarks includes gpqa but no --gpqa_path was given: GPQA-Diamond is not "
                             "shipped (its authors ask that it stay out of public files); pass the CSV path")
        path = Path(gpqa_path)
        items, grade = gpqa_items(path, gpqa_seed), grade_letter
    else:
        raise ValueError(f"unknown benchmark {name!r}")
    for n in (spec.limit, limit):
        items = items[:n] if n else items
    return Benchmark(name, str(path), items, grade)
