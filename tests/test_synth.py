import re

import pytest

from rank1.synth import FAMILIES, generate_splits


def recompute(rec):
    """Independent check of a generated answer from the question text alone."""
    q = rec["question"]
    if m := re.fullmatch(r"What is (\d+) ([+\-×]) (\d+)\?", q):
        a, op, b = int(m[1]), m[2], int(m[3])
        return {"+": a + b, "-": a - b, "×": a * b}[op]
    if m := re.fullmatch(r"Solve for x: (\d+)x ([+-]) (\d+) = (-?\d+)\. Give x\.", q):
        a, sign, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        x, rem = divmod(c - (b if sign == "+" else -b), a)
        assert rem == 0
        return x
    g, n, k = map(int, re.findall(r"\d+", q))
    return g * n - k


def test_answers_are_correct_and_traces_end_with_them():
    train, held = generate_splits(500, 50, seed=3)
    for rec in train + held:
        assert int(rec["answer"]) == recompute(rec), rec["question"]
        assert rec["deepseek_attempt"] == f"Answer: {rec['answer']}"
        assert "Wait, let me verify" in rec["deepseek_thinking_trajectory"]


def test_deterministic_balanced_and_disjoint():
    a_train, a_held = generate_splits(200, 40, seed=7)
    b_train, b_held = generate_splits(200, 40, seed=7)
    assert a_train == b_train and a_held == b_held
    assert generate_splits(200, 40, seed=8)[0] != a_train
    assert not {r["question"] for r in a_train} & {r["question"] for r in a_held}
    counts = {f: sum(r["family"] == f for r in a_held) for f in FAMILIES}
    assert set(counts.values()) == {8}


def test_held_out_split_stable_when_train_grows():
    assert generate_splits(100, 30, seed=1)[1] == generate_splits(900, 30, seed=1)[1]


def test_some_traces_contain_corrected_slips():
    train, _ = generate_splits(1000, 1, seed=0)
    slips = [r for r in train if "Wait, I forgot" in r["deepseek_thinking_trajectory"]
             or "Wait, that is wrong" in r["deepseek_thinking_trajectory"]
             or re.search(r"Wait, \d+ × -?\d+ = -?\d+, not", r["deepseek_thinking_trajectory"])]
    assert 0.03 < len(slips) / len(train) < 0.2


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown families"):
        generate_splits(10, 2, 0, families=("calculus",))
    with pytest.raises(ValueError, match="n_train"):
        generate_splits(0, 2, 0)
