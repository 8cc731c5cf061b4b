"""Iterative ablation: remove the least important adapter, one at a time, until all are gone.

Step k starts from the model with the adapters removed so far (set R) and scores every remaining
candidate c by the mean KL(P_full || P_{R + c}) over the sample (see ``rank1.ablation.sweep``); the candidate
with the smallest KL goes next. The curve of KL against the number removed says how many adapters
carry most of the effect.

Cost, with n candidates: exact greedy scores n + (n-1) + ... + 1 = n(n+1)/2 ablations. Two things keep
it affordable:

- the cached prefix: the current model (R removed) runs once per step and keeps the residual stream
  entering every candidate's layer; scoring c runs only layers layer(c)..L-1. After a removal at layer
  l, the next step recomputes only layers l..L-1 of that pass (everything before l is unchanged);
- ``rescore_every``: all remaining candidates are rescored every that many removals and the scores are
  reused in between (1 = exact greedy). The tracked KL after each removal is always exact: it is the
  output of the next step's pass.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from rank1.ablation.sweep import Batch, make_batch
from rank1.decoder import ForwardContext, LayerRunner
from rank1.hooks import ablate_adapters
from rank1.lora import AdapterSite
from rank1.metrics import Reference, head_kl_ce


@dataclass
class _State:
    """One batch: its inputs, the full model's log-probs, and the current model's cached streams."""

    batch: Batch
    ctx: ForwardContext
    ref: Reference
    cache: dict[int, torch.Tensor]
    seq_ptr: np.ndarray  # measured tokens of each of the batch's sequences


@dataclass
class GreedyResult:
    order: list[int]  # site indices in removal order
    kl_SK: np.ndarray  # [sequences, removed count 0..n]: per-sequence mean KL after k removals
    scores: list[list[tuple[int, float]]]  # per scoring round: (site, mean KL) of every candidate scored
    suffix_runs: int
    layer_forwards: int  # decoder-layer calls per batch, all passes together
    seconds: float


def _seq_mean(x_N: torch.Tensor, seq_ptr: np.ndarray) -> np.ndarray:
    x = x_N.numpy()
    return np.add.reduceat(x, seq_ptr[:-1]) / np.diff(seq_ptr)


@torch.inference_mode()
def greedy_removal(loaded, items: list[dict], candidates: Sequence[int], rescore_every: int = 1,
                   token_chunk: int = 256, desc: str = "iterative ablation") -> GreedyResult:
    """Greedy removal of ``candidates`` (indices into ``loaded.sites``) on ``items`` (one batch)."""
    runner, sites = LayerRunner(loaded.model), loaded.sites
    t0 = time.perf_counter()
    batch = make_batch(items, list(range(len(items))), loaded.tokenizer.pad_token_id, loaded.device)
    counts = np.bincount(batch.rows[0].cpu().numpy(), minlength=len(items))
    seq_ptr = np.concatenate([[0], np.cumsum(counts)])
    keep = {sites[c].layer for c in candidates}
    forwards = runner.num_layers
    with loaded.autocast():
        ctx = runner.prepare(batch.input_ids_BT, batch.attention_mask_BT)
        h, cache = runner.run(ctx.h0_BTD, ctx, keep=keep)
        ref = Reference.from_hidden(runner.logits, h[batch.rows], token_chunk)
    st = _State(batch, ctx, ref, cache, seq_ptr)
    removed: list[int] = []
    remaining = list(candidates)
    kl_curve = [np.zeros(len(items))]
    rounds: list[list[tuple[int, float]]] = []
    scores: dict[int, float] = {}
    runs = 0
    for step in tqdm(range(len(candidates)), desc=desc, unit="removal"):
        if step % rescore_every == 0:
            scored = []
            for c in remaining:
                with loaded.autocast():
                    kl_N = _suffix_kl(runner, sites, st, removed + [c], sites[c].layer, token_chunk)
                forwards += runner.num_layers - sites[c].layer
                scored.append((c, float(_seq_mean(kl_N, seq_ptr).mean())))
            runs += len(remaining)
            rounds.append(scored)
            scores = dict(scored)
        pick = min(remaining, key=lambda c: (scores[c], c))
        remaining.remove(pick)
        removed.append(pick)
        layer = sites[pick].layer
        with loaded.autocast(), ablate_adapters([sites[i] for i in removed]):  # advance the current model
            h, newer = runner.run(st.cache[layer], ctx, start=layer, keep=keep)
        forwards += runner.num_layers - layer
        st.cache.update(newer)
        with loaded.autocast():
            kl_N, _ = head_kl_ce(runner.logits, h[batch.rows], batch.targets_N, st.ref, token_chunk)
        kl_curve.append(_seq_mean(kl_N.cpu(), seq_ptr))
    return GreedyResult(removed, np.stack(kl_curve, 1), rounds, runs, forwards, time.perf_counter() - t0)


def _suffix_kl(runner: LayerRunner, sites: Sequence[AdapterSite], st: _State, ablated: list[int], start: int,
               token_chunk: int) -> torch.Tensor:
    with ablate_adapters([sites[i] for i in ablated]):
        h, _ = runner.run(st.cache[start], st.ctx, start=start)
    kl_N, _ = head_kl_ce(runner.logits, h[st.batch.rows], st.batch.targets_N, st.ref, token_chunk)
    return kl_N.cpu()


def carry_fraction(kl_curve: np.ndarray, share: float = 0.9) -> int:
    """Fewest adapters m such that keeping only the last m removed leaves KL <= (1 - share) x the KL
    with all removed (``kl_curve[k]``: KL after k removals, k = 0..n)."""
    n, total = len(kl_curve) - 1, kl_curve[-1]
    return next(m for m in range(n + 1) if kl_curve[n - m] <= (1 - share) * total or m == n)
