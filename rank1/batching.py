"""Padded batches of token sequences, and longest-first grouping of sequences into batches.

Every stage that runs the model over sequences of unequal length pads them one way: token ids padded
with the pad id (right-padded, except for generation, which pads on the left), an int64 attention mask
of ones over the real tokens, and labels padded with ``IGNORE_INDEX`` whatever the pad id is (a pad id
that equals EOS is then never a target). ``torch.nn.utils.rnn.pad_sequence`` does the padding; what
this module adds, and no library function does, is the mask and labels that go with it from plain id
lists or numpy arrays (transformers' collators need a tokenizer and return dicts), the positions whose
next token is scored, and grouping under a budget that each stage counts in its own unit (padded
tokens, cache bytes, rows).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from rank1.constants import IGNORE_INDEX

SIDES = ("right", "left")


def pad_ids(seqs_B: Sequence[Sequence[int] | np.ndarray], pad_id: int,
            side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids_BT, attention_mask_BT)``, both int64 with T the longest length: row b holds
    ``seqs_B[b]`` at its start (``side="right"``: padding after it) or at its end (``"left"``), ``pad_id``
    elsewhere; the mask is 1 on the sequence's own tokens and 0 on the padding."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    ids = [torch.as_tensor(s, dtype=torch.long) for s in seqs_B]
    ones = [torch.ones(len(s), dtype=torch.long) for s in ids]
    return (pad_sequence(ids, batch_first=True, padding_value=pad_id, padding_side=side),
            pad_sequence(ones, batch_first=True, padding_value=0, padding_side=side))


def pad_items(items_B: Sequence[Mapping[str, Sequence[int]]],
              pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids_BT, attention_mask_BT, labels_BT)``, int64, right-padded, of items with
    ``input_ids`` and (optionally) ``labels`` of the same length: ids padded with ``pad_id``, labels with
    ``IGNORE_INDEX`` (an item without labels gets ``IGNORE_INDEX`` everywhere)."""
    ids_BT, mask_BT = pad_ids([it["input_ids"] for it in items_B], pad_id)
    labels = []
    for b, it in enumerate(items_B):
        n = len(it["input_ids"])
        row = it["labels"] if "labels" in it else [IGNORE_INDEX] * n
        if len(row) != n:
            raise ValueError(f"item {b} has {n} input ids but {len(row)} labels")
        labels.append(torch.as_tensor(row, dtype=torch.long))
    labels_BT = pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX)
    return ids_BT, mask_BT, labels_BT


def labelled_positions(labels_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(b_N, t_N)``: row and position of every position t whose next token t + 1 carries a label
    (``labels_BT[b, t + 1] != IGNORE_INDEX``), row-major: the positions where a next-token prediction is
    scored. ``t`` ranges over 0..T-2."""
    return torch.nonzero(labels_BT[:, 1:] != IGNORE_INDEX, as_tuple=True)


def longest_first(lengths: Sequence[int], limit: float,
                  cost: Callable[[list[int]], float] | None = None) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches, longest first (ties in index order) so that padding
    stays small: each index joins the current batch while ``cost(batch) <= limit`` still holds, else it
    starts the next one, so a batch holds one index at least. ``cost`` defaults to the padded size,
    batch size x longest length, making ``limit`` a token budget."""
    def padded_size(batch: list[int]) -> int:
        return len(batch) * lengths[batch[0]]  # the first index of a batch is its longest

    cost = padded_size if cost is None else cost
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out: list[list[int]] = []
    for i in order:
        if out:
            out[-1].append(i)
            if cost(out[-1]) <= limit:
                continue
            out[-1].pop()
        out.append([i])
    return out
