"""Benchmark loaders and graders. GPQA tests use made-up questions written here (never real ones)."""

import csv
import hashlib
import re

import pytest

from rank1.benchmarks import (
    BENCHMARKS_DIR,
    GPQA_COLUMNS,
    BenchmarkSpec,
    gpqa_items,
    grade_integer,
    grade_letter,
    grade_math,
    load_benchmark,
)
from rank1.config import data_dir


def test_spec_parsing():
    assert BenchmarkSpec.parse("heldout, math500:30") == [BenchmarkSpec("heldout"), BenchmarkSpec("math500", 30)]
    for bad, msg in [("mmlu", "unknown benchmark 'mmlu'"), ("math500:x", "positive integer"),
                     ("heldout,heldout", "twice"), (" , ", "empty")]:
        with pytest.raises(ValueError, match=msg):
            BenchmarkSpec.parse(bad)


def test_integer_grading_strips_leading_zeros_and_commas():
    assert grade_integer(" 23", "023") == ("23", True)
    assert grade_integer(" 1,204 apples", "1204") == ("1204", True)
    assert grade_integer(" -7, then 5", "-7") == ("-7", True)
    assert grade_integer(" 24", "023") == ("24", False)
    assert grade_integer(" no number", "5") == (None, False)


def test_integer_grading_takes_the_first_number_of_the_answer_not_the_last():
    assert grade_integer(" 71. Wait, let me verify: 71 - 48 = 23.", "71") == ("71", True)
    assert grade_integer(" 23 + 48 = 100", "71") == ("23", False)
    assert grade_integer(" 12.0", "12") == ("12", True)


def test_math_grading_is_symbolic():
    assert grade_math(r" $\boxed{0.5}$", r"\frac{1}{2}")[1]
    assert grade_math(r" $\left( 3, \frac{\pi}{2} \right)$", r"\left( 3, \frac{\pi}{2} \right)")[1]
    assert not grade_math(r" $\boxed{\frac{1}{3}}$", r"\frac{1}{2}")[1]
    assert grade_math(" I do not know", "4") == (None, False)


def test_letter_grading():
    assert grade_letter(" B) because", "B") == ("B", True)
    assert grade_letter(" (C)", "B") == ("C", False)
    assert grade_letter(" A lot of text", "A") == ("A", True)  # the first standalone letter counts
    assert grade_letter(" none", "A") == (None, False)


def test_shipped_files_are_the_sourced_ones():
    for folder, name, n in [("math500", "test.jsonl", 500), ("aime24", "aime24_nofigures.jsonl", 30)]:
        path = BENCHMARKS_DIR / folder / name
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        assert sha in (BENCHMARKS_DIR / folder / "SOURCE.md").read_text()
        assert len(load_benchmark(BenchmarkSpec(folder), "tiny").items) == n
    aime = load_benchmark(BenchmarkSpec("aime24", 2), "tiny", limit=5)
    assert [it.id for it in aime.items] == ["60", "61"] and aime.items[0].gold.isdigit()


def test_malformed_heldout_file_names_the_line(isolated_root):
    path = data_dir("test") / "eval.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text('{"question": "q", "answer": "1"}\n\n{"question": "q2"\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: not valid JSON")):
        load_benchmark(BenchmarkSpec("heldout"), "test")
    path.write_text('{"question": "q", "answer": "1"}\n{"question": "q2"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: missing field(s) ['answer']")):
        load_benchmark(BenchmarkSpec("heldout"), "test")
    path.unlink()
    with pytest.raises(FileNotFoundError, match="prepare_data.py --profile test"):
        load_benchmark(BenchmarkSpec("heldout"), "test")


def write_fake_gpqa(path, rows):
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["Record ID", *GPQA_COLUMNS, "Explanation"])
        w.writeheader()
        for i, (q, right, *wrong) in enumerate(rows):
            w.writerow({"Record ID": f"rec{i}", "Question": q, "Correct Answer": right,
                        "Incorrect Answer 1": wrong[0], "Incorrect Answer 2": wrong[1],
                        "Incorrect Answer 3": wrong[2], "Explanation": "made up"})


FAKE = [(f"Made-up question {i}: which colour is token {i}?\nSecond line.", f"right {i}", f"wrong {i}a",
         f"wrong {i}b", f"wrong {i}c") for i in range(6)]


def test_gpqa_prompt_gold_and_seeded_shuffle(tmp_path):
    path = tmp_path / "fake_gpqa.csv"
    write_fake_gpqa(path, FAKE)
    items = gpqa_items(path, seed=0)
    assert [it.id for it in items] == [f"rec{i}" for i in range(6)]
    for i, it in enumerate(items):
        head, choices = it.question.split("\n\n")
        assert head == FAKE[i][0]
        lines = choices.split("\n")
        assert [ln[:3] for ln in lines] == ["A) ", "B) ", "C) ", "D) "]
        assert sorted(ln[3:] for ln in lines) == sorted(FAKE[i][1:])
        assert lines["ABCD".index(it.gold)][3:] == f"right {i}"
    assert gpqa_items(path, seed=0) == items
    assert [it.gold for it in gpqa_items(path, seed=1)] != [it.gold for it in items]
    bench = load_benchmark(BenchmarkSpec("gpqa", 3), "tiny", gpqa_path=str(path))
    assert len(bench.items) == 3 and bench.grade(f" {bench.items[0].gold}", bench.items[0].gold)[1]


def test_gpqa_bad_input(tmp_path):
    with pytest.raises(ValueError, match="no --gpqa_path was given"):
        load_benchmark(BenchmarkSpec("gpqa"), "tiny")
    with pytest.raises(FileNotFoundError, match="pass --gpqa_path"):
        load_benchmark(BenchmarkSpec("gpqa"), "tiny", gpqa_path=str(tmp_path / "nope.csv"))
    bad = tmp_path / "bad.csv"
    bad.write_text("Question,Correct Answer\nq,a\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['Incorrect Answer 1'"):
        gpqa_items(bad)
