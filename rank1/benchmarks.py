"""Benchmark loaders and graders: the generated held-out split, MATH500, AIME'24, GPQA-Diamond.

- ``heldout``: ``data/<profile>/eval.jsonl`` (generated problems with integer answers), integer compare.
- ``math500``: ``benchmarks/math500/test.jsonl`` (shipped, see its SOURCE.md), graded offline with
  math-verify (LaTeX / boxed answers, symbolic equivalence).
- ``aime24``: ``benchmarks/aime24/aime24_nofigures.jsonl`` (shipped, the set s1 evaluated on), integer
  compare after stripping leading zeros.
- ``gpqa``: GPQA-Diamond from a CSV the user gives (never shipped: its authors ask that questions not
  appear in plain text online). Four choices shuffled per question with a fixed seed, the s1 prompt
  ``{Question}\\n\\nA) ..\\nB) ..\\nC) ..\\nD) ..``, graded by exact letter.

Graders read the answer phase of a budget-forced generation (the text after the forced ``Answer:``) and
take its final answer. On the paper profile that text is a long write-up (the model is trained on
``Answer: {deepseek_attempt}``, DeepSeek-R1 attempts ending in ``\\boxed{..}``), so the first number or letter
of it is usually a number of the problem statement or the article "A". Every grader takes, in order:

1. the last ``\\boxed{..}`` / ``\\fbox{..}`` / ``\\framebox{..}`` (balanced braces; also ``\\boxed 5``) that
   states a value;
2. else the last final-answer phrase that does (``Answer: X``, ``the answer is X``, ``Final answer: X``,
   ``**Final Answer**`` then X on the next line), read to the end of its sentence;
3. else a fallback on the whole text: the last number of a write-up, the first number of a short answer
   (under ``WRITE_UP_CHARS`` characters); the last choice letter.

A boxed content or answer phrase states the first number after its last ``=`` (``m+n = 20``) or its first
choice letter. The short-answer rule fits the generated traces of the tiny and test profiles: their models
answer first (``Answer: 42``) and, when they do not stop, go on with the traces' self-check
(``42. Wait, let me verify: 42 - 5 = 37``), whose numbers are not the answer. A choice letter stands alone
(``C``, ``(C)``, ``C)``, ``**C**``, ``\\text{C}``), not inside a word, a unit (``25 °C``) or a bond (``C=O``); a
bare ``A`` that starts a sentence and is followed by a lowercase word (``A careful analysis``) may be the
article, and counts only when no other letter does.

MATH500 is graded by math-verify, whose own extraction already follows this order (boxed, then answer
phrases, then the rightmost expression) and compares symbolically; only ``\\fbox`` and ``\\framebox``
are renamed ``\\boxed`` for it. The integer and letter graders are written here because math-verify's extraction does
not fit them: its plain-number fallback takes the rightmost number, which would read the self-check of a
short answer, and its letter extraction does not see ``(C)``, ``C)`` or ``\\boxed{C}`` and prefers a letter
at the start of the text, which reads ``A careful analysis ... (C)`` as A.
"""

from __future__ import annotations

import csv
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rank1.config import REPO_ROOT, data_dir, parse_list
from rank1.constants import EVAL_JSONL
from rank1.data import iter_jsonl
from rank1.metrics import NUMBER_RE, normalize_number

BENCHMARKS_DIR = REPO_ROOT / "benchmarks"
BENCHMARK_NAMES = ("heldout", "math500", "aime24", "gpqa")
BENCHMARK_TITLES = {"heldout": "held-out (generated)", "math500": "MATH500", "aime24": "AIME'24",
                    "gpqa": "GPQA-Diamond"}
GPQA_COLUMNS = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
LETTERS = "ABCD"


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

    @property
    def text(self) -> str:
        """The spec as ``--benchmarks`` writes it (``math500:30``; ``heldout`` without a limit)."""
        return f"{self.name}:{self.limit}" if self.limit else self.name

    @classmethod
    def parse(cls, items: Sequence[str] | str) -> list[BenchmarkSpec]:
        """The specs of the ``--benchmarks`` list ``items`` (a string: a comma-separated list, as an older profile
        gives it)."""
        items = parse_list(items, str) if isinstance(items, str) else list(items)
        specs = []
        for part in items:
            name, _, n = part.partition(":")
            if name not in BENCHMARK_NAMES:
                raise ValueError(f"unknown benchmark {name!r} in --benchmarks {','.join(items)!r}; "
                                 f"known: {', '.join(BENCHMARK_NAMES)} (optionally name:N for the first N)")
            if n and (not n.isdigit() or int(n) < 1):
                raise ValueError(f"--benchmarks {part!r}: N in name:N must be a positive integer")
            specs.append(cls(name, int(n) if n else 0))
        if not specs:
            raise ValueError("--benchmarks is empty; give e.g. heldout,math500:30")
        if len({s.name for s in specs}) != len(specs):
            raise ValueError(f"--benchmarks {','.join(items)!r} names a benchmark twice")
        return specs


# ---------------------------------------------------------------- final-answer extraction

BOXED_RE = re.compile(r"\\(?:boxed|fbox|framebox)(?![A-Za-z])[ \t]*")
# "Answer: X", "the answer is X", "Final Answer: X", "**Final Answer**\n X" (any case)
ANSWER_PHRASE_RE = re.compile(r"(?i)\bfinal\s+answer\b(?:\W{0,3}is\b)?|\banswer\s+is\b|\banswer\s*:")
SENTENCE_END_RE = re.compile(r"[.!?](?:\s|$)")
# a choice letter on its own: C, (C), C), **C**, \text{C}; not inside words, units (25 °C) or bonds (C=O, C-H)
CHOICE_RE = re.compile(r"(?<![\w\\°'’.^_/-])\(?(?:\*\*)?([ABCD])(?:\*\*)?\)?(?![\w'’°^_=+/-])")
WRITE_UP_CHARS = 200  # an answer at least this long is a write-up: its fallback number is the last one


def boxed_contents(text: str) -> list[str]:
    """The contents of every ``\\boxed{..}`` / ``\\fbox{..}`` / ``\\framebox{..}`` (balanced braces) or
    ``\\boxed X``, in order; an unclosed one (a write-up cut off by the answer budget) is skipped."""
    out = []
    for m in BOXED_RE.finditer(text):
        start = m.end()
        if text.startswith("{", start):
            depth = 0
            for end in range(start, len(text)):
                depth += {"{": 1, "}": -1}.get(text[end], 0)
                if depth == 0:
                    out.append(text[start + 1:end])
                    break
        elif token := re.match(r"[^\s$]+", text[start:]):
            out.append(token.group())
    return [c.strip() for c in out if c.strip()]


def answer_phrases(text: str) -> list[str]:
    """What follows each final-answer phrase (``Answer: X``, ``the answer is X``, ``Final answer: X``) to the
    end of its sentence, in order."""
    out = []
    for m in ANSWER_PHRASE_RE.finditer(text):
        line = text[m.end():].lstrip(" \t\r\n*:").split("\n", 1)[0]
        end = SENTENCE_END_RE.search(line)
        out.append(line[:end.start()] if end else line)
    return out


def final_answer(text: str, read: Callable[[str], str | None],
                 fallback: Callable[[str], str | None]) -> str | None:
    """``read`` of the last ``\\boxed{}`` that gives a value, else of the last final-answer phrase that
    does, else ``fallback`` of the whole text."""
    for segment in [*reversed(boxed_contents(text)), *reversed(answer_phrases(text))]:
        if (value := read(segment)) is not None:
            return value
    return fallback(text)


def first_number(text: str) -> str | None:
    """The first number of ``text``, canonical (no commas, no leading zeros)."""
    found = NUMBER_RE.findall(text)
    return normalize_number(found[0]) if found else None


def stated_number(segment: str) -> str | None:
    """The number a boxed content or answer phrase states: the first after its last ``=`` (``m+n = 20``)."""
    return first_number(segment.replace("{,}", ",").rsplit("=", 1)[-1])


def fallback_number(text: str) -> str | None:
    """A write-up's last number; a short answer's first (``42. Wait, let me verify: 42 - 5 = 37``)."""
    found = NUMBER_RE.findall(text)
    if not found:
        return None
    return normalize_number(found[-1] if len(text.strip()) >= WRITE_UP_CHARS else found[0])


def choice_letters(text: str) -> list[tuple[str, bool]]:
    """Every standalone choice letter A-D, in order, each with whether it may be the English article
    (a bare ``A`` that starts a sentence and is followed by a lowercase word: ``A careful analysis``)."""
    out = []
    for m in CHOICE_RE.finditer(text):
        before = text[max(0, m.start() - 40):m.start()].rstrip(" \t*#>")
        starts_sentence = not before or before[-1] in ".!?\n"
        article = m.group(0) == "A" and starts_sentence and re.match(r"\s+[a-z]", text[m.end():]) is not None
        out.append((m.group(1), article))
    return out


def stated_letter(segment: str) -> str | None:
    """The letter a boxed content or answer phrase states: its first choice letter."""
    letters = choice_letters(segment)
    return letters[0][0] if letters else None


def fallback_letter(text: str) -> str | None:
    """The last choice letter that cannot be the article ``A``; else the last one."""
    letters = choice_letters(text)
    real = [letter for letter, article in letters if not article]
    return real[-1] if real else letters[-1][0] if letters else None


# ---------------------------------------------------------------- graders


def grade_integer(answer: str, gold: str) -> tuple[str | None, bool]:
    """Integer compare of the answer's final number with the gold (leading zeros stripped)."""
    pred = final_answer(answer, stated_number, fallback_number)
    return pred, pred is not None and pred == normalize_number(gold)


def grade_math(answer: str, gold: str) -> tuple[str | None, bool]:
    """math-verify: parse the gold as LaTeX and the answer text (its last boxed, else answer phrase, else
    last expression), compare symbolically."""
    from math_verify import parse, verify

    gold_parsed = parse(f"${gold}$")
    pred_parsed = parse(re.sub(r"\\(?:fbox|framebox)(?![A-Za-z])", r"\\boxed", answer))
    if not pred_parsed:
        return None, False
    return str(pred_parsed[-1]), bool(gold_parsed) and bool(verify(gold_parsed, pred_parsed))


def grade_letter(answer: str, gold: str) -> tuple[str | None, bool]:
    """The answer's final choice letter A-D must be the gold letter."""
    pred = final_answer(answer, stated_letter, fallback_letter)
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
