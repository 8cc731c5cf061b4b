"""Benchmark loaders and graders. GPQA tests use made-up questions written here (never real ones)."""

import csv
import hashlib
import re

import pytest

from rank1.benchmarks import (
    BENCHMARKS_DIR,
    GPQA_COLUMNS,
    WRITE_UP_CHARS,
    BenchmarkSpec,
    boxed_contents,
    gpqa_items,
    grade_integer,
    grade_letter,
    grade_math,
    load_benchmark,
)
from rank1.config import data_dir
from rank1.synth import generate_splits


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
    assert grade_letter(" A lot of text", "A") == ("A", True)  # no other letter: the article is all there is
    assert grade_letter(" none", "A") == (None, False)


# ---------------------------------------------------------------- write-ups (s1K-style attempts)

AIME_WRITE_UP = r"""Given the 3 conditions, write $m = 2^a 3^b$ with $a, b \ge 0$.

**Step 1.** From the first condition, $a + b = 4$, so there are 5 pairs $(a, b)$.

**Step 2.** Checking each pair against the second condition leaves $m = 7$ and $n = 13$ (with 1 and 2
ruled out above).

Therefore $m+n=\boxed{20}$."""


def test_aime_write_up_is_graded_by_its_last_boxed():
    assert grade_integer(AIME_WRITE_UP, "20") == ("20", True)
    assert grade_integer(AIME_WRITE_UP, "3") == ("20", False)  # not the first number
    assert grade_integer(AIME_WRITE_UP.replace(r"\boxed{20}", r"\boxed{m + n = 20}"), "20") == ("20", True)
    earlier_box = r"First $\boxed{5}$ cases, then more work with 8 and 9." + "\n" + AIME_WRITE_UP
    assert grade_integer(earlier_box, "20") == ("20", True)  # the last box, not the first
    leading_zeros = "We count 12 + 61 = 73 paths and check 3 of them again.\n\n**Final Answer**\n\\boxed{073}"
    assert grade_integer(leading_zeros, "073") == ("73", True)
    assert grade_integer(leading_zeros, "72") == ("73", False)


def test_boxed_contents_balance_braces_and_skip_an_unclosed_box():
    text = r"So $\boxed{\frac{1}{2}}$, $\fbox{7}$, \boxed 9$, $\framebox{204}$ and, cut off, \boxed{\frac{3}{"
    assert boxed_contents(text) == [r"\frac{1}{2}", "7", "9", "204"]
    assert boxed_contents(r"\boxed{}, \boxedx{3} and \boxed {4}") == ["4"]


def test_an_answer_phrase_is_read_when_there_is_no_box():
    steps = "There are 3 cases; in each, 12 choices remain, and 5 of them repeat.\n"
    assert grade_integer(steps + "Answer: 31", "31") == ("31", True)
    assert grade_integer(steps + "So the answer is 31. (Check: 3 * 12 - 5 = 31, not 30.)", "31") == ("31", True)
    assert grade_integer(steps + "**Final Answer:** 031, since 36 - 5 = 31 of the 40", "31") == ("31", True)
    assert grade_integer(steps + "**Final Answer**\n\n031", "31") == ("31", True)
    assert grade_integer(steps + "The final answer is $m + n = 31$.", "31") == ("31", True)


def test_a_write_up_without_box_or_phrase_gives_its_last_number():
    body = "We have 3 conditions and 12 cases; removing the 5 repeats leaves the count we want. " * 3
    write_up = body + "That leaves 31"
    assert len(write_up) >= WRITE_UP_CHARS
    assert grade_integer(write_up, "31") == ("31", True)
    short = "3 conditions, 12 cases, 31 left"  # too short to be a write-up: its first number
    assert len(short) < WRITE_UP_CHARS
    assert grade_integer(short, "31") == ("3", False)


GPQA_WRITE_UPS = [
    "A careful analysis of the spectrum shows two peaks, so options A and B are out. The compound is (C).",
    "Option A) fails the charge count, B) the spin count. Hence $\\boxed{C}$",
    "A quick check: D) is too heavy and B) too light.\n\n**C**",
    "Both A) and B) break symmetry, so the answer is C.",
    "A and B are ruled out by the selection rules; D by energy.\nAnswer: C",
    "Option B) fails at 100 °C; the only one left is C) 4.2 eV.",
    "A careful analysis shows that B) overcounts. The answer is (C), since D) breaks the selection rule.",
]


@pytest.mark.parametrize("write_up", GPQA_WRITE_UPS)
def test_gpqa_write_up_is_graded_by_its_final_letter(write_up):
    assert grade_letter(write_up, "C") == ("C", True)
    assert grade_letter(write_up, "A") == ("C", False)


def test_the_article_a_counts_only_when_no_other_letter_follows():
    assert grade_letter("A careful analysis rules nothing out. So (A).", "A") == ("A", True)
    assert grade_letter("B) is ruled out, so A is correct.", "A") == ("A", True)  # mid-sentence: a letter
    assert grade_letter("Only A) survives at 100 °C and keeps its C=O and C-H bonds.", "A") == ("A", True)


MATH_WRITE_UP = r"""Let $x = 3$ first: then $2x = 6$, which fails. Trying $x = \frac{1}{3}$ gives $\frac{2}{3}$.

The only value that works is
$$\boxed{\frac{1}{2}}$$"""


def test_math_write_up_is_graded_by_its_last_boxed():
    pred, ok = grade_math(MATH_WRITE_UP, r"\frac{1}{2}")
    assert ok and pred == r"\frac{1}{2}"
    assert not grade_math(MATH_WRITE_UP, "3")[1]
    assert grade_math(MATH_WRITE_UP.replace(r"\boxed", r"\fbox"), "0.5")[1]
    assert grade_math(r"So the value is \fbox{7} (not 9).", "7") == ("7", True)


@pytest.mark.parametrize("grade", [grade_integer, grade_letter, grade_math])
def test_a_text_without_an_answer_grades_none(grade):
    assert grade(" I am not sure how to approach this problem; let me think about it again later.", "4") == (
        None, False)


def test_short_answers_of_the_generated_traces_keep_their_first_number():
    """The tiny profile is trained on attempts ``Answer: 42``: after the forced ``Answer:`` it writes the
    number, and when it does not stop, the self-check of its traces, whose numbers must not count."""
    _, records = generate_splits(n_train=5, n_eval=20, seed=0)
    for rec in records:
        assert rec["deepseek_attempt"].startswith("Answer: ")
        answer = rec["deepseek_attempt"].removeprefix("Answer:")
        self_check = rec["deepseek_thinking_trajectory"].rsplit("\n", 1)[-1][:60]
        assert self_check.startswith("Wait, let me verify:")
        assert grade_integer(answer, rec["answer"]) == (rec["answer"], True)
        assert grade_integer(f"{answer}. {self_check}", rec["answer"]) == (rec["answer"], True)
        assert grade_integer(f"{answer}\n{self_check}", str(int(rec["answer"]) + 1)) == (rec["answer"], False)


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
