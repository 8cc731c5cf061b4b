"""Padding, labelled positions and longest-first batches, by hand on tiny inputs and against explicit per-row
loops on random inputs."""

import random

import numpy as np
import pytest
import torch

from rank1.batching import labelled_positions, longest_first, pad_ids, pad_items
from rank1.constants import IGNORE_INDEX

X = IGNORE_INDEX


def test_pad_items_two_sequences_of_lengths_2_and_3_by_hand():
    items = [{"input_ids": [5, 6], "labels": [X, 6]}, {"input_ids": [7, 8, 9], "labels": [X, X, 9]}]
    ids, mask, labels = pad_items(items, pad_id=0)
    assert ids.tolist() == [[5, 6, 0], [7, 8, 9]]
    assert mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert labels.tolist() == [[X, 6, X], [X, X, 9]]
    assert ids.dtype == mask.dtype == labels.dtype == torch.int64


def test_padded_labels_are_ignored_even_when_pad_is_eos_and_items_without_labels():
    eos = 9
    ids, mask, labels = pad_items([{"input_ids": [1, eos], "labels": [X, eos]}, {"input_ids": [1]}], pad_id=eos)
    assert ids.tolist() == [[1, eos], [1, eos]]
    assert labels.tolist() == [[X, eos], [X, X]]
    assert mask.tolist() == [[1, 1], [1, 0]]
    with pytest.raises(ValueError, match="2 input ids but 1 labels"):
        pad_items([{"input_ids": [1, 2], "labels": [X]}], 0)


def test_pad_ids_right_and_left_from_lists_and_numpy():
    seqs = [np.array([3, 4], dtype=np.int32), [5, 6, 7]]
    ids, mask = pad_ids(seqs, pad_id=1)
    assert ids.tolist() == [[3, 4, 1], [5, 6, 7]] and mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    ids, mask = pad_ids(seqs, pad_id=1, side="left")
    assert ids.tolist() == [[1, 3, 4], [5, 6, 7]] and mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert ids.dtype == mask.dtype == torch.int64
    with pytest.raises(ValueError, match="side"):
        pad_ids(seqs, 1, side="middle")


def test_labelled_positions_are_those_whose_next_token_is_labelled():
    labels = torch.tensor([[X, X, 6, 7], [X, 4, X, X]])
    b, t = labelled_positions(labels)
    assert b.tolist() == [0, 0, 1] and t.tolist() == [1, 2, 0]
    assert labels[b, t + 1].tolist() == [6, 7, 4]


def test_longest_first_token_budget_by_hand():
    # lengths 3, 5, 2, 5, 9 with a budget of 10 padded tokens: order 4, 1, 3, 0, 2 (ties in index order)
    assert longest_first([3, 5, 2, 5, 9], 10) == [[4], [1, 3], [0, 2]]
    assert longest_first([12], 10) == [[0]]  # longer than the budget: a batch of its own
    assert longest_first([], 10) == []


def test_longest_first_respects_a_custom_cost():
    lengths, measured = [10, 50, 30, 20, 40], [5, 30, 20, 10, 25]

    def cost(batch):
        t = max(lengths[i] for i in batch)
        return sum(t * 10 + measured[i] for i in batch)

    batches = longest_first(lengths, 700, cost)
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]
    assert all(len(b) == 1 or cost(b) <= 700 for b in batches)
    assert batches[0][0] == 1  # longest first
    assert longest_first(list(range(1, 8)), 3, cost=len) == [[6, 5, 4], [3, 2, 1], [0]]  # fixed batch size


def _random_items(rng: random.Random, n: int) -> list[dict[str, list[int]]]:
    items = []
    for _ in range(n):
        k = rng.randint(1, 12)
        ids = [rng.randrange(1000) for _ in range(k)]
        items.append({"input_ids": ids, "labels": [X if rng.random() < 0.4 else i for i in ids]})
    return items


def test_padding_equals_the_per_row_loops_on_random_input():
    rng = random.Random(0)
    items = _random_items(rng, 9)
    pad = 7
    n = max(len(it["input_ids"]) for it in items)
    ids_e = torch.full((len(items), n), pad, dtype=torch.long)
    mask_e = torch.zeros((len(items), n), dtype=torch.long)
    labels_e = torch.full((len(items), n), IGNORE_INDEX, dtype=torch.long)
    left_e = torch.full((len(items), n), pad, dtype=torch.long)
    left_mask_e = torch.zeros((len(items), n), dtype=torch.long)
    for r, it in enumerate(items):
        m = len(it["input_ids"])
        ids_e[r, :m], labels_e[r, :m], mask_e[r, :m] = torch.tensor(it["input_ids"]), torch.tensor(it["labels"]), 1
        left_e[r, n - m:], left_mask_e[r, n - m:] = torch.tensor(it["input_ids"]), 1
    ids, mask, labels = pad_items(items, pad)
    assert torch.equal(ids, ids_e) and torch.equal(mask, mask_e) and torch.equal(labels, labels_e)
    docs = [np.array(it["input_ids"], dtype=np.int32) for it in items]
    assert all(torch.equal(a, b) for a, b in zip(pad_ids(docs, pad), (ids_e, mask_e), strict=True))
    left = pad_ids([it["input_ids"] for it in items], pad, side="left")
    assert torch.equal(left[0], left_e) and torch.equal(left[1], left_mask_e)
    b_e, t_e = torch.nonzero(labels_e[:, 1:] != IGNORE_INDEX, as_tuple=True)
    b, t = labelled_positions(labels)
    assert torch.equal(b, b_e) and torch.equal(t, t_e)


def test_longest_first_equals_the_token_budget_and_cache_bound_loops_on_random_input():
    rng = random.Random(1)
    lengths = [rng.randint(1, 40) for _ in range(60)]
    measured = [rng.randint(0, n) for n in lengths]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for budget in (1, 37, 100, 400):  # a token budget: cut when the padded batch would exceed it
        expected, cur = [], []
        for i in order:
            if cur and lengths[cur[0]] * (len(cur) + 1) > budget:
                expected.append(cur)
                cur = []
            cur.append(i)
        expected.append(cur)
        assert longest_first(lengths, budget) == expected

    def per_sequence(t, m):
        return 3 * t + 8 * m

    def cost(batch):
        t = max(lengths[j] for j in batch)
        return sum(per_sequence(t, measured[j]) for j in batch)

    for limit in (10.0, 500.0, 2000.0):  # a memory bound: extend the last batch while the estimate fits
        expected = []
        for i in order:
            if expected:
                cur = expected[-1] + [i]
                t = max(lengths[j] for j in cur)
                if sum(per_sequence(t, measured[j]) for j in cur) <= limit:
                    expected[-1] = cur
                    continue
            expected.append([i])
        assert longest_first(lengths, limit, cost) == expected
