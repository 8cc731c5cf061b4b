"""Top-k examples, statistics and scoring samples per feature, vectorised over a whole activation store.

Every site of a store gives two features, positive and negative polarity (feature ``2*s + p``, value
``v = +x`` for p=0 and ``-x`` for p=1, named ``L{layer}_{name}_{positive|negative}`` as the paper does).
Per feature (all columns at once, one shard in memory at a time, four streaming passes):

1. moments of the signed activation per site: min, max, mean, std;
2. a fine histogram of the signed activation per site (quantiles, and the coarse histogram shown in
   dashboards), a fine histogram of the *active* values per feature (``v > active_frac * max v``: its
   deciles), and the top-k tokens. Top-k order is exact and deterministic: value descending, then token
   index ascending (one int64 key per entry, so ``torch.topk`` has no ties to break arbitrarily); only
   tokens with ``v > 0`` count;
3. for scoring (detection / fuzzing in part 2): ``n_per_decile`` tokens drawn at random from each decile of
   the active values and ``n_random`` tokens whose whole window (+-``context``) stays below the active
   threshold, all disjoint from the top-k. Each token gets a random priority (seeded); a bucket keeps its
   lowest priorities, which over the whole store is a uniform sample without replacement;
4. contexts: +-``context`` tokens around every example, clipped to its document (shards never split a
   document), as token ids (-1 outside the document) and feature values (``v``, so a negative feature's
   examples are positive numbers; multiply by ``polarity`` for the raw activation).

Columns other than the store's sites: :class:`Columns` maps each shard's activations to the columns the
features are made of, block by block (stage 3 passes the SAE encoder, one column per latent, with
``positive_only``: features are the columns themselves, named by the column), so a latent "store" is never
written to disk; everything above applies to those columns unchanged.

Quantiles and decile edges come from 2000-bin histograms (exact to 1/2000 of the range); min and max are
exact. No library does grouped top-k with these tie rules and sampling over a sharded store, hence the code.
:func:`heapq_topk` is the plain reference the tests and ``bench/bench_store.py`` compare against.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from rank1 import constants as K
from rank1.artifacts import read_json, write_json, write_with
from rank1.store import Shard, Store, StoreError

log = logging.getLogger(__name__)

POLARITIES = ("positive", "negative")
QUANTILE_LEVELS = (0.0, 0.001, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999, 1.0)
FINE_BINS = 2000
SHOW_BINS = 50  # FINE_BINS must be a multiple
N_DECILES = 10
NONE = torch.iinfo(torch.int64).min  # key of "no example"
SUFFIX = {"top": "FK", "decile": "FDN", "random": "FN"}  # shape suffix of each example group
COLUMN_CHUNK = 128  # columns per vectorised step (bounds memory at T x 128 int64)


# ---------------------------------------------------------------- keys


def round_sig(x: float | None, digits: int = 4) -> float | None:
    """``x`` to ``digits`` significant digits, as pages and dashboards show numbers (None for None or NaN)."""
    return None if x is None or x != x else float(f"{x:.{digits}g}")


def ordered_keys(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """int64 keys ordering entries by value (descending) then global token index (ascending); entries with
    value <= 0 get NONE. ``values`` float32, ``index`` int64 of a broadcastable shape."""
    bits = values.contiguous().view(torch.int32).to(torch.int64)
    mono = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    keys = mono * (1 << 32) + ((1 << 32) - 1 - index)
    return torch.where(values > 0, keys, torch.full_like(keys, NONE))


def decode_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(token index, value) of keys from :func:`ordered_keys`; NONE gives (-1, nan)."""
    low = keys & 0xFFFFFFFF
    mono = keys >> 32
    bits = torch.where(mono >= 0, mono, mono ^ 0x7FFFFFFF).to(torch.int32)
    index = torch.where(keys == NONE, -1, (1 << 32) - 1 - low)
    value = torch.where(keys == NONE, torch.nan, bits.view(torch.float32))
    return index, value


def column_topk_keys(values_TF: torch.Tensor, token_start: int, k: int, block: int = 16) -> torch.Tensor:
    """[F, k] largest keys per column of a block of rows (token ``token_start + row``), NONE-padded.

    Keys are only built for candidates: with the rows cut into blocks of ``block``, the k-th largest block
    maximum ``tau`` is a lower bound of the k-th largest value (k blocks hold a value >= tau), so every
    top-k entry, ties included, is among the entries >= tau, which lie in the blocks whose maximum is
    >= tau: one cheap pass (block maxima) over the data, then only those blocks are looked at.
    """
    T, F_ = values_TF.shape
    full = T // block
    block_max = values_TF[:full * block].view(full, block, F_).amax(1)
    if full * block < T:
        block_max = torch.cat([block_max, values_TF[full * block:].amax(0, keepdim=True)])
    tau = block_max.topk(k, dim=0).values[-1] if block_max.shape[0] >= k else torch.full((F_,), -torch.inf)
    smallest = torch.finfo(torch.float32).smallest_normal * 2 ** -23  # the smallest positive float: v >= it <=> v > 0
    tau = tau.clamp(min=smallest)
    cand_f, cand_b = (block_max.T >= tau[:, None]).nonzero(as_tuple=True)  # blocks that can hold a top entry
    r = cand_b[:, None] * block + torch.arange(block)  # [n, block] their rows
    vals = values_TF[r.clamp(max=T - 1), cand_f[:, None]]
    i, j = ((vals >= tau[cand_f][:, None]) & (r < T)).nonzero(as_tuple=True)  # sorted by column
    rows, cols = r[i, j], cand_f[i]
    keys = ordered_keys(values_TF[rows, cols], rows.to(torch.int64) + token_start)
    counts = torch.bincount(cols, minlength=F_)
    width = max(k, int(counts.max()) if len(cols) else 0)
    slot = torch.arange(len(cols)) - (torch.cumsum(counts, 0) - counts)[cols]
    grid = torch.full((F_, width), NONE, dtype=torch.int64)
    grid[cols, slot] = keys
    return grid.topk(k, dim=1).values


def merge_topk(running_FK: torch.Tensor, values_TF: torch.Tensor, token_start: int, k: int) -> torch.Tensor:
    """Largest ``k`` keys per feature of the running [F, k] set and a block of values [T, F]."""
    new_FK = column_topk_keys(values_TF, token_start, k)
    return torch.cat([running_FK, new_FK], dim=1).topk(k, dim=1).values


def store_topk(store: Store, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(token index, value) of the top-k of every feature, [2S, k] each (-1 / nan where fewer than k)."""
    top = torch.full((2 * len(store.sites), k), NONE, dtype=torch.int64)
    for sh in store.shards():
        x = sh.acts_TS.float()
        top[0::2] = merge_topk(top[0::2], x, sh.token_start, k)
        top[1::2] = merge_topk(top[1::2], -x, sh.token_start, k)
    return decode_keys(top)


def feature_values(acts_TS: torch.Tensor, polarities: int = 2) -> torch.Tensor:
    """[T, 2S] float32: column 2s is site s, column 2s+1 its negation (``polarities=1``: the sites as they are)."""
    x = acts_TS.float()
    return x if polarities == 1 else torch.stack([x, -x], dim=2).reshape(x.shape[0], -1)


def heapq_topk(values_TF: np.ndarray, k: int) -> list[list[tuple[float, int]]]:
    """Reference: per column a heap of (value, -index), the k largest values > 0, ties to the lower index."""
    out = []
    for f in range(values_TF.shape[1]):
        heap: list[tuple[float, int]] = []
        for t, v in enumerate(values_TF[:, f].tolist()):
            if v <= 0:
                continue
            if len(heap) < k:
                heapq.heappush(heap, (v, -t))
            elif (v, -t) > heap[0]:
                heapq.heapreplace(heap, (v, -t))
        out.append([(v, -nt) for v, nt in sorted(heap, reverse=True)])
    return out


# ---------------------------------------------------------------- histograms and quantiles


def histogram_rows(values_TF: torch.Tensor, lo_F: torch.Tensor, hi_F: torch.Tensor, bins: int,
                   keep_TF: torch.Tensor | None = None) -> torch.Tensor:
    """Per column, counts of ``values`` in ``bins`` equal bins over [lo, hi] (clamped); [F, bins] int64."""
    width = torch.where(hi_F > lo_F, hi_F - lo_F, torch.ones_like(hi_F))
    b = ((values_TF - lo_F) / width * bins).floor().clamp_(0, bins - 1).long()
    flat = b + torch.arange(values_TF.shape[1])[None] * bins
    if keep_TF is not None:
        flat = flat[keep_TF]
    return torch.bincount(flat.reshape(-1), minlength=values_TF.shape[1] * bins).reshape(-1, bins)


def quantiles_from_histogram(counts_FB: torch.Tensor, lo_F: torch.Tensor, hi_F: torch.Tensor,
                             levels: tuple[float, ...]) -> torch.Tensor:
    """[F, Q] quantiles, linear within a bin; level 0 and 1 give lo and hi; empty rows give nan."""
    c = counts_FB.double()
    cdf = torch.cumsum(c, 1)
    total = cdf[:, -1:]
    bins = c.shape[1]
    width = (hi_F - lo_F).double()[:, None] / bins
    out = []
    for q in levels:
        target = q * total
        b = torch.searchsorted(cdf, target).clamp(max=bins - 1)
        before = torch.where(b > 0, cdf.gather(1, (b - 1).clamp(min=0)), torch.zeros_like(target))
        inside = c.gather(1, b)
        frac = torch.where(inside > 0, (target - before) / inside, torch.zeros_like(target)).clamp(0, 1)
        out.append(lo_F.double()[:, None] + (b + frac) * width)
    qs = torch.cat(out, 1)
    qs[:, 0], qs[:, -1] = lo_F.double(), hi_F.double()
    qs[total[:, 0] == 0] = torch.nan
    return qs.float()


# ---------------------------------------------------------------- the passes


@dataclass
class TopKResult:
    """Tensors (names with shape suffixes; F = 2 x sites) and one record per feature."""

    tensors: dict[str, torch.Tensor]
    features: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)
    vocab: dict[int, str] = field(default_factory=dict)

    def example(self, kind: str, f: int, idx: tuple[int, ...], context: int, used: set[int]) -> dict | None:
        """One saved example of feature ``f`` as a page shows it: {t: token ids, a: values (3 significant
        digits), c: index of the target token, v: its value (4 digits), d: document, p: position}, cropped to
        ``context`` tokens each side; None where the slot is empty. Its ids are added to ``used`` (the page's
        vocabulary). ``kind`` and ``idx`` as in :meth:`window`."""
        t, s = self.tensors, SUFFIX[kind]
        if int(t[f"{kind}_index_{s}"][(f, *idx)]) < 0:
            return None
        ids, acts = t[f"{kind}_tokens_{s}W"][(f, *idx)], t[f"{kind}_acts_{s}W"][(f, *idx)]
        mid = ids.shape[0] // 2
        lo, hi = max(0, mid - context), mid + context + 1
        ids, acts = ids[lo:hi], acts[lo:hi]
        keep = ids >= 0
        tok = ids[keep].tolist()
        used.update(tok)
        return {"t": tok, "a": [round_sig(v, 3) for v in acts[keep].tolist()], "c": int(keep[:mid - lo].sum()),
                "v": round_sig(float(acts[mid - lo])), "d": int(t[f"{kind}_doc_{s}"][(f, *idx)]),
                "p": int(t[f"{kind}_pos_{s}"][(f, *idx)])}

    def window(self, kind: str, f: int, *idx: int) -> tuple[list[str], list[float], int]:
        """One example of feature ``f``: (token strings, feature values, index of the target token), cropped
        to its document. ``kind`` top: idx = (rank,); decile: (decile, j); random: (j,)."""
        ids = self.tensors[f"{kind}_tokens_{SUFFIX[kind]}W"][(f, *idx)]
        acts = self.tensors[f"{kind}_acts_{SUFFIX[kind]}W"][(f, *idx)]
        keep = ids >= 0
        center = int(keep[:ids.shape[0] // 2].sum())
        return [self.vocab.get(i, "") for i in ids[keep].tolist()], acts[keep].tolist(), center

    @classmethod
    def load(cls, folder: str | Path,
             made_by: str = "2_lora_activation_interp/2.1_precompute_lora_topk.py") -> TopKResult:
        """Read a saved result; ``made_by`` names the script that writes it (for the error message)."""
        folder = Path(folder)
        for name in (K.TOPK_TENSORS, K.TOPK_FEATURES, K.TOPK_VOCAB, K.CONFIG_JSON):
            if not (folder / name).is_file():
                raise StoreError(f"{folder} holds no top-k examples ({name} missing); make them with {made_by}")
        vocab = {int(i): s for i, s in read_json(folder / K.TOPK_VOCAB).items()}
        return cls(load_file(str(folder / K.TOPK_TENSORS)), read_json(folder / K.TOPK_FEATURES),
                   read_json(folder / K.CONFIG_JSON), vocab)

    def save(self, folder: Path) -> None:
        """Tensors, features and vocab; the caller writes config.json last (what marks it finished)."""
        write_with(folder / K.TOPK_TENSORS, lambda tmp: save_file({k: v.contiguous() for k, v in self.tensors.items()},
                                                                  str(tmp)))
        write_json(folder / K.TOPK_FEATURES, self.features)
        write_json(folder / K.TOPK_VOCAB, {str(k): v for k, v in sorted(self.vocab.items())})


def _chunks(start: int, stop: int):
    """Feature slices of at most COLUMN_CHUNK inside [start, stop)."""
    for c0 in range(start, stop, COLUMN_CHUNK):
        yield slice(c0, min(stop, c0 + COLUMN_CHUNK))


@dataclass
class Columns:
    """What the features are made of: one value per token and column, computed from a shard's ``acts_TS``.

    By default (:func:`store_columns`) the columns are the store's sites. Any per-token map of a shard's
    activations works the same way (stage 3: the batch-independent SAE encoder, one column per latent), so
    no second store is ever written: ``values(shard, cols)`` gives the [T, n] float32 values of the column
    slice ``cols`` for the shard's tokens, evaluated ``block`` columns at a time (0: all at once), which
    bounds memory at [shard tokens, block]. A feature is named ``{name}_{polarity}`` (with both polarities)
    or ``{name}`` (positive only); ``records[c]`` are extra fields of column c's feature records."""

    names: list[str]
    records: list[dict[str, Any]]
    values: Callable[[Shard, slice], torch.Tensor]
    block: int = 0


def store_columns(store: Store) -> Columns:
    """The store's own sites as columns (``L{layer}_{name}``)."""
    return Columns(store.site_names(), [{"layer": s["layer"], "site_name": s["name"]} for s in store.sites],
                   lambda sh, cols: sh.acts_TS[:, cols].float())


def _blocks(n: int, block: int):
    size = block or n
    for b0 in range(0, n, size):
        yield slice(b0, min(n, b0 + size))


def _moments(shards, columns: Columns, S: int) -> tuple[torch.Tensor, ...]:
    """Per column over every token of ``shards``: min, max, sum and sum of squares (float64)."""
    lo, hi = torch.full((S,), torch.inf), torch.full((S,), -torch.inf)
    s1, s2 = torch.zeros(S, dtype=torch.float64), torch.zeros(S, dtype=torch.float64)
    for sh in shards:
        for sb in _blocks(S, columns.block):
            x = columns.values(sh, sb)
            lo[sb], hi[sb] = torch.minimum(lo[sb], x.min(0).values), torch.maximum(hi[sb], x.max(0).values)
            s1[sb] += x.double().sum(0)
            s2[sb] += (x.double() ** 2).sum(0)
    return lo, hi, s1, s2


def compute_topk(store: Store, k: int = 50, context: int = 30, n_per_decile: int = 5, n_random: int = 20,
                 active_frac: float = 0.1, seed: int = 0, columns: Columns | None = None,
                 positive_only: bool = False) -> TopKResult:
    """Top-k, statistics and scoring samples of every feature of ``store`` (see the module docstring).
    ``columns`` replaces the store's sites by another per-token map of them (see :class:`Columns`);
    ``positive_only`` keeps only the positive polarity (feature f = column f)."""
    if k < 1 or context < 0 or n_per_decile < 0 or n_random < 0 or not 0 <= active_frac < 1:
        raise ValueError(f"need k >= 1, context >= 0, n_per_decile >= 0, n_random >= 0 and 0 <= active_frac < 1; "
                         f"got {k}, {context}, {n_per_decile}, {n_random}, {active_frac}")
    if k > store.n_tokens:
        raise StoreError(f"k={k} is larger than the store's {store.n_tokens} tokens; lower --k or extract more "
                         f"tokens")
    columns = columns or store_columns(store)
    S = len(columns.names)
    if len(columns.records) != S:
        raise ValueError(f"columns: {S} names but {len(columns.records)} records")
    P = 1 if positive_only else len(POLARITIES)
    n_shards = len(store.manifest["shards"])
    bar = lambda desc: tqdm(store.shards(), total=n_shards, desc=desc, unit="shard", dynamic_ncols=True)  # noqa: E731

    # 1. moments
    lo, hi, s1, s2 = _moments(bar("topk 1/4 moments"), columns, S)
    n = store.n_tokens
    mean = s1 / n
    std = (s2 / n - mean ** 2).clamp(min=0).sqrt()
    fmax = torch.stack([hi, -lo], 1).reshape(-1) if P == 2 else hi  # [F]: the largest value in each polarity
    thr = torch.where(fmax > 0, active_frac * fmax, torch.full_like(fmax, torch.inf))

    # 2. histograms and top-k
    F_ = P * S
    hist = torch.zeros(S, FINE_BINS, dtype=torch.int64)
    active_hist = torch.zeros(F_, FINE_BINS, dtype=torch.int64)
    top = torch.full((F_, k), NONE, dtype=torch.int64)
    for sh in bar("topk 2/4 histograms, top-k"):
        for sb in _blocks(S, columns.block):
            x = columns.values(sh, sb)
            hist[sb] += histogram_rows(x, lo[sb], hi[sb], FINE_BINS)
            for cols in _chunks(P * sb.start, P * sb.stop):
                v = feature_values(x[:, cols.start // P - sb.start:-(-cols.stop // P) - sb.start], P)
                active_hist[cols] += histogram_rows(v, thr[cols], fmax[cols], FINE_BINS, v > thr[cols])
                top[cols] = merge_topk(top[cols], v, sh.token_start, k)
    top_index, top_value = decode_keys(top)
    decile_edges = quantiles_from_histogram(active_hist, thr.clamp(max=torch.finfo(torch.float32).max),
                                            fmax, tuple(i / N_DECILES for i in range(N_DECILES + 1)))

    # 3. scoring samples
    n_pick = max(n_per_decile, n_random, 1)
    pick_pr = torch.full((F_, N_DECILES + 1, n_pick), torch.iinfo(torch.int64).max, dtype=torch.int64)
    pick_ix = torch.full((F_, N_DECILES + 1, n_pick), -1, dtype=torch.int64)
    for sh in bar("topk 3/4 scoring samples"):
        T = sh.n_tokens
        prio = torch.from_numpy(np.random.default_rng([seed, sh.index]).integers(0, 1 << 62, T))
        for sb in _blocks(S, columns.block):
            x = columns.values(sh, sb)
            for cols in _chunks(P * sb.start, P * sb.stop):
                v = feature_values(x[:, cols.start // P - sb.start:-(-cols.stop // P) - sb.start], P)
                bucket = _buckets(v, thr[cols], decile_edges[cols], context)
                in_top = top_index[cols] - sh.token_start  # exclude the top-k examples
                rows = (in_top >= 0) & (in_top < T)
                f_ix = torch.arange(cols.stop - cols.start)[:, None].expand_as(in_top)
                bucket[in_top[rows], f_ix[rows]] = -1
                pr, ix = _lowest_per_bucket(bucket, prio, n_pick, N_DECILES + 1)
                pr = torch.where(ix >= 0, pr, torch.iinfo(torch.int64).max)
                all_pr = torch.cat([pick_pr[cols], pr], 2)
                all_ix = torch.cat([pick_ix[cols], torch.where(ix >= 0, ix + sh.token_start, -1)], 2)
                best = all_pr.topk(n_pick, dim=2, largest=False)
                pick_pr[cols], pick_ix[cols] = best.values, all_ix.gather(2, best.indices)
    decile_index = pick_ix[:, :N_DECILES, :n_per_decile]
    random_index = pick_ix[:, N_DECILES, :n_random]

    # 4. contexts
    groups = {"top": top_index, "decile": decile_index, "random": random_index}
    tensors = _gather_contexts(store, groups, context, columns, P)
    for name, ix in groups.items():
        tensors[f"{name}_index_{SUFFIX[name]}"] = ix
    tensors.update({
        "top_value_FK": top_value.float(), "decile_edges_FD1": decile_edges, "threshold_F": thr,
        "min_S": lo, "max_S": hi, "mean_S": mean.float(), "std_S": std.float(),
        "hist_counts_SB": hist.reshape(S, SHOW_BINS, -1).sum(2), "hist_fine_counts_SB": hist,
        "quantile_levels_Q": torch.tensor(QUANTILE_LEVELS), "quantiles_SQ": quantiles_from_histogram(
            hist, lo, hi, QUANTILE_LEVELS),
        "active_count_F": active_hist.sum(1),
    })
    features = []
    for s, (name, extra) in enumerate(zip(columns.names, columns.records, strict=True)):
        for p, pol in enumerate(POLARITIES[:P]):
            f = P * s + p
            features.append({"feature": f, "name": f"{name}_{pol}" if P > 1 else name, "site": s, **extra,
                             "polarity": 1 - 2 * p,
                             "n_top": int((top_index[f] >= 0).sum()), "n_active": int(active_hist[f].sum()),
                             "threshold": float(thr[f]) if torch.isfinite(thr[f]) else None})
    meta = {"k": k, "context": context, "n_per_decile": n_per_decile, "n_random": n_random,
            "active_frac": active_frac, "seed": seed, "n_tokens": n, "sites": store.sites,
            "positive_only": positive_only}
    return TopKResult(tensors, features, meta)


def _buckets(v_TF: torch.Tensor, thr_F: torch.Tensor, edges_FD1: torch.Tensor, context: int) -> torch.Tensor:
    """Per entry: decile 0..9 of an active value, 10 when the whole +-context window is below the threshold,
    -1 otherwise (int64, [T, F])."""
    active = v_TF > thr_F
    inner = edges_FD1[:, 1:-1].contiguous()  # [F, 9]
    decile = torch.searchsorted(inner, v_TF.T.contiguous(), right=True).T
    window_max = F.max_pool1d(v_TF.T[None], 2 * context + 1, stride=1, padding=context)[0].T if context else v_TF
    quiet = window_max <= thr_F
    return torch.where(active, decile, torch.where(quiet, N_DECILES, -1))


def _lowest_per_bucket(bucket_TF: torch.Tensor, prio_T: torch.Tensor, n: int, n_buckets: int):
    """Per column and bucket, the ``n`` rows of lowest priority: (priorities, rows) as [F, n_buckets, n],
    rows -1 where a bucket has fewer entries."""
    T, Fc = bucket_TF.shape
    order = prio_T.argsort()  # rows by priority
    b = bucket_TF[order]  # [T, F] buckets in priority order
    key = torch.where(b >= 0, b * T + torch.arange(T)[:, None], n_buckets * T)  # bucket-major, then priority rank
    sorted_key = key.T.sort(dim=1).values.contiguous()  # [F, T]
    starts = torch.searchsorted(sorted_key, (torch.arange(n_buckets) * T)[None].expand(Fc, -1).contiguous())
    pos = starts[:, :, None] + torch.arange(n)  # [F, B, n]
    got = sorted_key.gather(1, pos.clamp(max=T - 1).reshape(Fc, -1)).reshape(Fc, n_buckets, n)
    valid = (pos < T) & (got // T == torch.arange(n_buckets)[None, :, None])
    rank = torch.where(valid, got % T, 0)
    rows = torch.where(valid, order[rank], -1)
    return torch.where(valid, prio_T[rows.clamp(min=0)], 0), rows


def _gather_contexts(store: Store, groups: dict[str, torch.Tensor], context: int, columns: Columns,
                     P: int) -> dict[str, torch.Tensor]:
    """For each example index (any shape [F, ...]), its window of token ids and feature values, plus its
    document and position; -1 / 0 outside the document or where there is no example."""
    W = 2 * context + 1
    out = {}
    flat = {name: ix.reshape(ix.shape[0], -1) for name, ix in groups.items()}
    for name, ix in flat.items():
        out[name] = {"tokens": torch.full((*ix.shape, W), -1, dtype=torch.int32),
                     "acts": torch.zeros((*ix.shape, W), dtype=torch.float32),
                     "doc": torch.full(ix.shape, -1, dtype=torch.int32),
                     "pos": torch.full(ix.shape, -1, dtype=torch.int32)}
    offsets = torch.arange(-context, context + 1)
    for sh in tqdm(store.shards(), total=len(store.manifest["shards"]), desc="topk 4/4 contexts", unit="shard",
                   dynamic_ncols=True):
        T = sh.n_tokens
        for sb in _blocks(len(columns.names), columns.block):
            x = None  # the block's values, computed only if one of its features has an example in this shard
            for name, ix in flat.items():
                local = ix - sh.token_start
                sel = (ix >= 0) & (local < T) & (local >= 0)
                sel[:P * sb.start], sel[P * sb.stop:] = False, False
                if not sel.any():
                    continue
                x = columns.values(sh, sb) if x is None else x
                f, j = sel.nonzero(as_tuple=True)
                centre = local[f, j]
                win = centre[:, None] + offsets
                inside = (win >= 0) & (win < T)
                win_c = win.clamp(0, T - 1)
                inside &= sh.doc_ids_T[win_c] == sh.doc_ids_T[centre][:, None]
                site = f // P - sb.start
                sign = 1.0 - 2.0 * (f % P).float()
                acts = x[win_c, site[:, None]] * sign[:, None]
                o = out[name]
                o["tokens"][f, j] = torch.where(inside, sh.token_ids_T[win_c], -1)
                o["acts"][f, j] = torch.where(inside, acts, 0.0)
                o["doc"][f, j] = sh.doc_ids_T[centre]
                o["pos"][f, j] = sh.positions_T[centre]
    tensors = {}
    for name, ix in groups.items():
        shape = tuple(ix.shape)
        o = out[name]
        tensors[f"{name}_tokens_{SUFFIX[name]}W"] = o["tokens"].reshape(*shape, W)
        tensors[f"{name}_acts_{SUFFIX[name]}W"] = o["acts"].reshape(*shape, W)
        tensors[f"{name}_doc_{SUFFIX[name]}"] = o["doc"].reshape(shape)
        tensors[f"{name}_pos_{SUFFIX[name]}"] = o["pos"].reshape(shape)
    return tensors


def used_token_ids(result: TopKResult) -> list[int]:
    ids = torch.cat([t.reshape(-1) for name, t in result.tensors.items() if "_tokens_" in name])
    return sorted(set(ids[ids >= 0].tolist()))


def decode_vocab(tokenizer, ids: list[int]) -> dict[int, str]:
    """Each token as the text it adds (``decode([id])``); what dashboards and explainers show."""
    return {i: tokenizer.decode([i]) for i in ids}
