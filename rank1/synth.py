"""Deterministic generator of short step-by-step reasoning traces in the s1 record format.

Five task families (addition, subtraction, multiplication, linear equations, word problems), each
trace written step by step, ending with a self-check ("Wait, let me verify ...") and, with a fixed
probability, a slip that is noticed and corrected. Every answer is an integer, so it can be checked
exactly. The same seed gives the same records on every machine.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rank1.artifacts import write_text
from rank1.constants import EVAL_JSONL, TRAIN_JSONL

FAMILIES = ("addition", "subtraction", "multiplication", "linear_equation", "word_problem")
PLACES = ("Ones", "Tens", "Hundreds", "Thousands", "Ten-thousands")


def _columns(a: int, b: int, op: str, slip: bool = False) -> tuple[list[str], int]:
    """Column-by-column addition or subtraction steps, with carries or borrows.

    With ``slip``, the first column that receives a carry is first written without it, then
    corrected ("Wait, I forgot the carry").
    """
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry, digits = [], 0, []
    for i in range(len(da)):
        x, y = int(da[i]), int(db[i]) if i < len(db) else 0
        if op == "+":
            s = x + y + carry
            line = f"{PLACES[i]}: {x} + {y}{' + 1' if carry else ''} = {s}"
            if slip and carry:
                line = f"{PLACES[i]}: {x} + {y} = {x + y}. Wait, I forgot the carry: " \
                       f"{x} + {y} + 1 = {s}"
                slip = False
            carry, digit = divmod(s, 10)
            line += f", write {digit}, carry 1." if carry else "."
        else:
            borrowed = f"{x} - 1 (borrowed) = {x - carry}, " if carry else ""
            x -= carry
            borrow = x < y
            digit = x + 10 - y if borrow else x - y
            line = (f"{PLACES[i]}: {borrowed}{x} < {y}, borrow: {x + 10} - {y} = {digit}."
                    if borrow else f"{PLACES[i]}: {borrowed}{x} - {y} = {digit}.")
            carry = int(borrow)
        digits.append(digit)
        steps.append(line)
    if op == "+" and carry:
        digits.append(carry)
        steps.append(f"{PLACES[len(da)]}: carry 1.")
    return steps, int("".join(map(str, digits[::-1])))


def addition(rng: random.Random) -> dict[str, Any]:
    a, b = rng.randint(10, 999), rng.randint(10, 99)
    a, b = max(a, b), min(a, b)
    steps, ans = _columns(a, b, "+", slip=rng.random() < SLIP_RATE)
    return _record(f"What is {a} + {b}?", [f"I need {a} + {b}.", *steps, f"So {a} + {b} = {ans}.",
                   f"Wait, let me verify: {ans} - {b} = {a}. Correct."], ans, "addition")


def subtraction(rng: random.Random) -> dict[str, Any]:
    a, b = rng.randint(20, 999), rng.randint(10, 99)
    a, b = max(a, b), min(a, b)
    steps, ans = _columns(a, b, "-")
    return _record(f"What is {a} - {b}?", [f"I need {a} - {b}.", *steps, f"So {a} - {b} = {ans}.",
                   f"Wait, let me verify: {ans} + {b} = {a}. Correct."], ans, "subtraction")


def multiplication(rng: random.Random) -> dict[str, Any]:
    a, b = rng.randint(12, 99), rng.randint(2, 9)
    tens, ones = a - a % 10, a % 10
    p1, p2 = tens * b, ones * b
    lines = [f"I need {a} × {b}.", f"Split {a} = {tens} + {ones}.", f"{tens} × {b} = {p1}."]
    if rng.random() < SLIP_RATE:
        lines.append(f"{ones} × {b} = {p2 + 1}. Wait, that is wrong: {ones} × {b} = {p2}.")
    else:
        lines.append(f"{ones} × {b} = {p2}.")
    ans = a * b
    lines += [f"{p1} + {p2} = {ans}.", f"Wait, let me verify: {ans} / {b} = {a}. Correct."]
    return _record(f"What is {a} × {b}?", lines, ans, "multiplication")


def linear_equation(rng: random.Random) -> dict[str, Any]:
    a, x, b = rng.randint(2, 9), rng.randint(-10, 15), rng.randint(-30, 30) or 7
    c = a * x + b
    sign, mag = ("+", b) if b > 0 else ("-", -b)
    move = f"Subtract {mag} from both sides" if b > 0 else f"Add {mag} to both sides"
    lines = [f"Solve {a}x {sign} {mag} = {c}.", f"{move}: {a}x = {c - b}."]
    if rng.random() < SLIP_RATE:
        lines.append(f"Divide both sides by {a}: x = {x + 1}. Wait, {a} × {x + 1} = {a * (x + 1)}, "
                     f"not {c - b}. So x = {x}.")
    else:
        lines.append(f"Divide both sides by {a}: x = {x}.")
    lines.append(f"Wait, let me verify: {a} × {x} {sign} {mag} = {a * x} {sign} {mag} = {c}. Correct.")
    return _record(f"Solve for x: {a}x {sign} {mag} = {c}. Give x.", lines, x, "linear_equation")


WORD_TEMPLATES = (
    ("A baker bakes {g} trays of {n} muffins and sells {k} muffins.", "muffins", "are left"),
    ("A farmer packs {g} boxes of {n} eggs and {k} eggs break.", "eggs", "are unbroken"),
    ("A library has {g} shelves of {n} books and lends out {k} books.", "books", "remain"),
    ("A class collects {g} bags of {n} cans and recycles {k} cans.", "cans", "are left"),
)


def word_problem(rng: random.Random) -> dict[str, Any]:
    template, unit, rest = rng.choice(WORD_TEMPLATES)
    g, n = rng.randint(2, 9), rng.randint(3, 12)
    total = g * n
    k = rng.randint(1, total - 1)
    ans = total - k
    question = template.format(g=g, n=n, k=k) + f" How many {unit} {rest}?"
    lines = [f"Total {unit}: {g} × {n} = {total}.", f"Remove {k}: {total} - {k} = {ans}.",
             f"Wait, let me verify: {ans} + {k} = {total}, and {total} / {n} = {g}. Correct."]
    return _record(question, lines, ans, "word_problem")


SLIP_RATE = 0.15
GENERATORS: dict[str, Callable[[random.Random], dict[str, Any]]] = {
    "addition": addition, "subtraction": subtraction, "multiplication": multiplication,
    "linear_equation": linear_equation, "word_problem": word_problem,
}


def _record(question: str, lines: list[str], answer: int, family: str) -> dict[str, Any]:
    return {"question": question, "deepseek_thinking_trajectory": "\n".join(lines),
            "deepseek_attempt": f"Answer: {answer}", "solution": str(answer),
            "answer": str(answer), "family": family}


def generate_splits(n_train: int, n_eval: int, seed: int,
                    families: tuple[str, ...] = FAMILIES) -> tuple[list[dict], list[dict]]:
    """Generate disjoint train and held-out splits (no question appears in both).

    Families rotate round-robin so each split is balanced. Held-out records are drawn first from
    the same stream, so growing ``n_train`` never changes the held-out set.
    """
    if n_train < 1 or n_eval < 0:
        raise ValueError(f"need n_train >= 1 and n_eval >= 0, got {n_train}, {n_eval}")
    unknown = set(families) - set(GENERATORS)
    if unknown:
        raise ValueError(f"unknown families {sorted(unknown)}; choose from {FAMILIES}")
    rng, seen, out = random.Random(seed), set(), []
    attempts = 0
    while len(out) < n_train + n_eval:
        attempts += 1
        if attempts > 20 * (n_train + n_eval) + 1000:
            raise ValueError("cannot generate that many distinct questions; lower n_train/n_eval")
        rec = GENERATORS[families[len(out) % len(families)]](rng)
        if rec["question"] not in seen:
            seen.add(rec["question"])
            out.append(rec)
    return out[n_eval:], out[:n_eval]


def write_splits(folder: Path, n_train: int, n_eval: int, seed: int,
                 families: tuple[str, ...] = FAMILIES) -> tuple[Path, Path]:
    """Generate both splits and write ``train.jsonl`` and ``eval.jsonl`` into ``folder``."""
    train, held_out = generate_splits(n_train, n_eval, seed, families)
    paths = folder / TRAIN_JSONL, folder / EVAL_JSONL
    for path, records in zip(paths, (train, held_out), strict=True):
        write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    return paths
