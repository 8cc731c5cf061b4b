"""The SAE's data on the activation store: which tokens train and which are held out, and the stream of training
batches.

- the split (:func:`heldout_split`): the last documents of the store (at least ``heldout_frac`` of its tokens,
  whole documents) are held out; everything before them trains;
- the data (:func:`iter_batches`): an endless stream of fixed-size float32 batches of training tokens, in
  bounded memory. Each epoch visits the shards in a seeded random order, groups them into buffers of about
  ``buffer_tokens`` tokens and permutes each buffer with a seed of (seed, epoch, buffer); batches run across
  buffer and epoch boundaries. The stream depends only on its position, so a resumed run skips to the sample
  it stopped at without reading what came before (SAELens' own mixing buffer draws from the global RNG and
  cannot resume, hence this);
- the exact input statistics over the training tokens (:func:`input_statistics`), from which the input
  normalisation is set.

:class:`SaeError` is the error of every stage-3 module for an SAE or inputs that cannot be used as asked.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rank1.store import Store

SPLIT_RULE = "held out: the last documents of the store, at least heldout_frac of its tokens (whole documents)"


class SaeError(ValueError):
    """An SAE or its inputs cannot be used as asked (the message says why and what to do)."""


@dataclass(frozen=True)
class Split:
    """Training tokens: documents before ``heldout_doc``; held-out tokens: that document and every later one;
    on both sides without the first ``skip`` tokens of each document."""

    heldout_doc: int
    skip: int
    train_per_shard: tuple[int, ...]  # training tokens in each shard
    heldout_per_shard: tuple[int, ...]

    @property
    def n_train(self) -> int:
        return sum(self.train_per_shard)

    @property
    def n_heldout(self) -> int:
        return sum(self.heldout_per_shard)

    def train_mask(self, sh) -> torch.Tensor:
        return (sh.doc_ids_T < self.heldout_doc) & (sh.positions_T >= self.skip)

    def heldout_mask(self, sh) -> torch.Tensor:
        return (sh.doc_ids_T >= self.heldout_doc) & (sh.positions_T >= self.skip)

    def describe(self, store: Store) -> dict[str, Any]:
        return {"rule": SPLIT_RULE, "skip_first_tokens": self.skip, "heldout_doc_start": self.heldout_doc,
                "heldout_docs": store.manifest["n_docs"] - self.heldout_doc, "n_heldout_tokens": self.n_heldout,
                "n_train_tokens": self.n_train}


def heldout_split(store: Store, heldout_frac: float, batch_size: int = 1, skip: int = 0) -> Split:
    """Hold out the last documents, at least ``heldout_frac`` of the (counted) tokens; raise if either side is
    empty. Tokens at positions below ``skip`` count on neither side."""
    if not 0 < heldout_frac < 1:
        raise SaeError(f"heldout_frac must be in (0, 1) (the held-out slice cannot be empty), got {heldout_frac}")
    n_shards = len(store.manifest["shards"])
    kept = [store.tensor(i, "doc_ids_T")[store.tensor(i, "positions_T") >= skip] for i in range(n_shards)]
    lengths = torch.bincount(torch.cat(kept).long(), minlength=store.manifest["n_docs"]).tolist() if kept else []
    target, total, start = math.ceil(heldout_frac * sum(lengths)), 0, len(lengths)
    while start > 0 and total < target:
        start -= 1
        total += lengths[start]
    if total == 0:
        raise SaeError(f"the held-out slice of {store.folder} is empty (no document has tokens beyond the first "
                       f"{skip}); extract a store with 2.0 first")
    split = Split(start, skip, tuple(int((d < start).sum()) for d in kept),
                  tuple(int((d >= start).sum()) for d in kept))
    if split.n_train < batch_size:
        raise SaeError(f"holding out {heldout_frac:.3g} of {store.n_tokens} tokens ({len(lengths) - start} of "
                       f"{len(lengths)} documents) leaves {split.n_train} training tokens, fewer than one batch of "
                       f"{batch_size}; lower --heldout_frac or extract more tokens")
    return split


def _epoch_buffers(split: Split, seed: int, epoch: int, buffer_tokens: int) -> list[list[int]]:
    """The shards of each buffer of one epoch: a seeded random shard order, cut every ``buffer_tokens``."""
    order = np.random.default_rng([seed, epoch]).permutation(len(split.train_per_shard)).tolist()
    buffers, cur, n = [], [], 0
    for i in order:
        if split.train_per_shard[i] == 0:
            continue
        cur.append(i)
        n += split.train_per_shard[i]
        if n >= buffer_tokens:
            buffers.append(cur)
            cur, n = [], 0
    return buffers + ([cur] if cur else [])


def _load_buffer(store: Store, split: Split, shards: list[int], seed: int, epoch: int, b: int) -> torch.Tensor:
    """The training rows of ``shards``, permuted with the seed (seed, epoch, buffer); storage dtype."""
    rows = []
    for i in shards:
        sh = store.shard(i)
        rows.append(sh.acts_TS[split.train_mask(sh)])
    x = torch.cat(rows)
    perm = torch.from_numpy(np.random.default_rng([seed, epoch, b]).permutation(len(x)))
    return x[perm]


def iter_batches(store: Store, split: Split, batch_size: int, seed: int, buffer_tokens: int,
                 start: int = 0) -> Iterator[torch.Tensor]:
    """float32 [batch_size, sites] batches of the training tokens, epoch after epoch without end, beginning at
    sample ``start`` of the stream (buffers before it are skipped unread)."""
    epoch, skip = divmod(start, split.n_train)
    parts: list[torch.Tensor] = []
    have = 0
    while True:
        for b, shards in enumerate(_epoch_buffers(split, seed, epoch, buffer_tokens)):
            size = sum(split.train_per_shard[i] for i in shards)
            if skip >= size:
                skip -= size
                continue
            x = _load_buffer(store, split, shards, seed, epoch, b)[skip:]
            skip = 0
            while len(x):
                take = min(batch_size - have, len(x))
                parts.append(x[:take])
                have += take
                x = x[take:]
                if have == batch_size:
                    yield torch.cat(parts).float() if len(parts) > 1 else parts[0].float()
                    parts, have = [], 0
        epoch += 1


def input_statistics(store: Store, split: Split) -> dict[str, torch.Tensor]:
    """Exact float64 mean and std per site and mean L2 norm over the training tokens (one pass)."""
    S = len(store.sites)
    s1, s2 = torch.zeros(S, dtype=torch.float64), torch.zeros(S, dtype=torch.float64)
    norm = torch.zeros((), dtype=torch.float64)
    for sh in store.shards():
        x = sh.acts_TS[split.train_mask(sh)].double()
        s1 += x.sum(0)
        s2 += (x ** 2).sum(0)
        norm += x.norm(dim=1).sum()
    n = split.n_train
    mean = s1 / n
    return {"mean_S": mean, "std_S": (s2 / n - mean ** 2).clamp(min=0).sqrt(), "mean_norm": norm / n}
