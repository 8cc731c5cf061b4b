"""Stage 1: how much each adapter, layer and projection type matters, measured by ablation.

An ablation removes a set of adapters (``rank1.hooks.ablate_adapters``: their ``lora_B`` output is
zero) and compares the ablated model with the full one on the assistant tokens of a fixed sample of
training-format sequences, per token:

- ``kl``: KL(P_full || P_ablated) over the next-token distribution, in nats (``rank1.metrics``, float64):
  how much is lost when the ablated model stands in for the full one. This is the direction the paper
  intends; the authors' code computed the same direction while its comment said the reverse.
- ``dce``: CE_ablated - CE_full of the true next token (positive: the ablation hurts).

Families: ``layer`` (all adapters of one layer), ``adapter`` (one adapter: the 7 x layers matrix) and
``type`` (every adapter of one projection; all MLP; all attention; all, which is the base model).

The cached prefix: adapters at layer ``l`` change nothing before ``l``. Per batch of sequences the full
model runs once, keeping the residual stream entering every layer where some ablation starts; each
ablation then runs only layers ``l..L-1`` + final norm + LM head (``rank1.decoder.LayerRunner``), and the
LM head only at the measured positions. Cache memory (the kept streams plus the full model's float64
log-probabilities at the measured positions) is estimated per sequence and batches are cut so it stays
under ``cache_limit_mb``; the peak actually held is reported.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from rank1 import constants as K
from rank1.artifacts import resume_partial
from rank1.batching import labelled_positions, longest_first, pad_items
from rank1.data import IGNORE_INDEX, tokenize_record
from rank1.decoder import LayerRunner
from rank1.hooks import ablate_adapters
from rank1.lora import AdapterSite
from rank1.metrics import Reference, head_kl_ce
from rank1.runs import Loaded
from rank1.stats import bootstrap_means, paired_bootstrap, paired_difference
from rank1.tokens import TOKEN_CLASSES

KL_DIRECTION = ("KL(P_full || P_ablated): the full model's next-token distribution P_full against the "
                "ablated model's, sum_v P_full(v) log(P_full(v) / P_ablated(v)), nats per assistant token")
DCE_MEANING = "CE_ablated - CE_full of the true next token, nats per assistant token (positive: ablation hurts)"
MEAN_MEANING = ("mean over sequences of each sequence's mean over its assistant tokens; 95% percentile "
                "bootstrap CI over sequences")


# ---------------------------------------------------------------- run, sample, plan


def draw_sample(n_records: int, n: int, seed: int, source: str) -> list[int]:
    """A fixed, seeded draw of ``n`` distinct record indices (in draw order)."""
    if n > n_records:
        raise ValueError(f"a sample of {n} sequences is larger than the data ({n_records} records in {source}); "
                         f"lower --n_samples")
    return random.Random(seed).sample(range(n_records), n)


def tokenize_sample(tokenizer, records: list[dict], indices: list[int], max_tokens: int,
                    context: int | None) -> list[dict[str, list[int]]]:
    """Training-format token ids and labels of the sampled records, truncated to ``max_tokens``."""
    if context is not None and max_tokens > context:
        raise ValueError(f"--max_tokens {max_tokens} is beyond the model's context ({context} positions); "
                         f"lower --max_tokens")
    items = [tokenize_record(tokenizer, records[i], max_tokens) for i in indices]
    for i, it in zip(indices, items, strict=True):
        if sum(t != IGNORE_INDEX for t in it["labels"][1:]) == 0:
            raise ValueError(f"record {i} has no assistant tokens within --max_tokens {max_tokens}; raise it")
    return items


@dataclass(frozen=True)
class Ablation:
    """A set of adapters removed together (indices into the site list) and its first layer."""

    name: str
    family: str
    sites: tuple[int, ...]
    start: int


def plan_ablations(sites: Sequence[AdapterSite], families: Sequence[str]) -> list[Ablation]:
    """Ablations of the requested families, named ``L3``, ``L3.gate_proj``, ``gate_proj``, ``mlp``,
    ``attn``, ``all``."""
    def make(name: str, family: str, idx: list[int]) -> Ablation:
        return Ablation(name, family, tuple(idx), min(sites[i].layer for i in idx))

    layers = sorted({s.layer for s in sites})
    plans: list[Ablation] = []
    if "layer" in families:
        plans += [make(f"L{lay}", "layer", [i for i, s in enumerate(sites) if s.layer == lay]) for lay in layers]
    if "adapter" in families:
        plans += [make(f"L{s.layer}.{s.proj}", "adapter", [i]) for i, s in enumerate(sites)]
    if "type" in families:
        groups = {p: [p] for p in K.PROJECTIONS} | {"mlp": K.MLP_PROJECTIONS, "attn": K.ATTN_PROJECTIONS,
                                                     "all": K.PROJECTIONS}
        for name, projs in groups.items():
            idx = [i for i, s in enumerate(sites) if s.proj in projs]
            if idx:
                plans.append(make(name, "type", idx))
    return plans


# ---------------------------------------------------------------- batches and the cached prefix


def cache_bytes_per_sequence(n_tokens: int, n_measured: int, n_cached_layers: int, hidden: int, vocab: int,
                             elem: int) -> int:
    """Bytes one sequence adds to a batch's cache: the kept residual streams and the float64
    log-probabilities and probabilities of the full model at its measured positions."""
    return n_cached_layers * n_tokens * hidden * elem + 2 * n_measured * vocab * 8


@dataclass
class Batch:
    """Right-padded ids of some sample sequences and the positions measured in them."""

    seqs: list[int]  # positions in the sample
    input_ids_BT: torch.Tensor
    attention_mask_BT: torch.Tensor
    rows: tuple[torch.Tensor, torch.Tensor]  # (batch row, position) of each measured token, sequence-major
    targets_N: torch.Tensor  # the true next token at each measured position


def make_batch(items: list[dict[str, list[int]]], seqs: list[int], pad_id: int, device) -> Batch:
    """Measured positions ``t`` are those whose next token ``t+1`` is an assistant token."""
    ids, mask, labels = pad_items([items[s] for s in seqs], pad_id)
    bi, ti = labelled_positions(labels)
    return Batch(seqs, ids.to(device), mask.to(device), (bi.to(device), ti.to(device)),
                 ids[bi, ti + 1].to(device))


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@torch.inference_mode()
def sweep_batch(runner: LayerRunner, sites: Sequence[AdapterSite], batch: Batch, ablations: Sequence[Ablation],
                cached_prefix: bool = True, token_chunk: int = 256, bar=None) -> dict[str, torch.Tensor | int]:
    """KL and CE change of every ablation on one batch (float64, [ablations, measured tokens]);
    ``bar`` (a tqdm bar) advances by one per ablation."""
    ctx = runner.prepare(batch.input_ids_BT, batch.attention_mask_BT)
    keep = {a.start for a in ablations} if cached_prefix else set()
    h_BTD, cache = runner.run(ctx.h0_BTD, ctx, keep=keep)
    ref = Reference.from_hidden(runner.logits, h_BTD[batch.rows], token_chunk)
    ce_full = -ref.logp_NV.gather(-1, batch.targets_N[:, None])[:, 0]
    kl = torch.empty((len(ablations), len(ce_full)), dtype=torch.float64)
    dce = torch.empty_like(kl)
    for k, a in enumerate(ablations):
        start = a.start if cached_prefix else 0
        with ablate_adapters([sites[i] for i in a.sites]):
            h, _ = runner.run(cache[start] if cached_prefix else ctx.h0_BTD, ctx, start=start)
        kl_n, ce_n = head_kl_ce(runner.logits, h[batch.rows], batch.targets_N, ref, token_chunk)
        kl[k], dce[k] = kl_n.cpu(), (ce_n - ce_full).cpu()
        if bar is not None:
            bar.update(1)
    held = tensor_bytes([*cache.values(), *ref.tensors()])
    return {"kl": kl, "dce": dce, "ce_full": ce_full.double().cpu(), "cache_bytes": held}


# ---------------------------------------------------------------- the sweep (resumable by batch)


@dataclass
class SweepResult:
    ablations: list[Ablation]
    kl_AN: np.ndarray  # float64, measured tokens concatenated in sample order
    dce_AN: np.ndarray
    ce_full_N: np.ndarray
    seq_ptr: np.ndarray  # tokens of sequence s are columns seq_ptr[s]:seq_ptr[s+1]
    peak_cache_bytes: int
    n_batches: int
    seconds: float

    def seq_means(self, x_AN: np.ndarray) -> np.ndarray:
        """[ablations, sequences]: each sequence's mean over its measured tokens."""
        return np.add.reduceat(x_AN, self.seq_ptr[:-1], axis=1) / np.diff(self.seq_ptr)


def run_sweep(loaded: Loaded, items: list[dict[str, list[int]]], ablations: list[Ablation],
              cache_limit_mb: float, token_chunk: int = 256, cached_prefix: bool = True,
              partial_dir: Path | None = None, partial_key: str = "", desc: str = "ablation sweep") -> SweepResult:
    """Every ablation on every sample sequence. With ``partial_dir``, each finished batch is saved there
    and reused by a later call with the same ``partial_key`` (a killed sweep continues)."""
    runner, sites = LayerRunner(loaded.model), loaded.sites
    cfg = runner.config
    elem = next(loaded.model.parameters()).element_size()
    n_cached = len({a.start for a in ablations}) if cached_prefix else 0
    measured = [sum(t != IGNORE_INDEX for t in it["labels"][1:]) for it in items]
    lengths = [len(it["input_ids"]) for it in items]

    def cache_bytes(seqs: list[int]) -> int:  # a batch's estimated cache, padded to its longest sequence
        t = max(lengths[j] for j in seqs)
        return sum(cache_bytes_per_sequence(t, measured[j], n_cached, cfg.hidden_size, runner.vocab_size, elem)
                   for j in seqs)

    batches = longest_first(lengths, cache_limit_mb * 2**20, cache_bytes)
    if partial_dir is not None:
        # batches of another config or run are cheap to redo: start over rather than refuse
        resume_partial(partial_dir, partial_key, overwrite=False, restart_other=True)
    t0, peak, parts = time.perf_counter(), 0, {}
    bar = tqdm(total=len(batches) * len(ablations), desc=f"{desc} ({len(batches)} batches)", unit="ablation")
    for k, seqs in enumerate(batches):
        path = partial_dir / f"batch_{k:04d}.safetensors" if partial_dir is not None else None
        if path is not None and path.is_file():
            parts[k] = load_file(str(path))
            bar.update(len(ablations))
            continue
        batch = make_batch(items, seqs, loaded.tokenizer.pad_token_id, loaded.device)
        with loaded.autocast():
            out = sweep_batch(runner, sites, batch, ablations, cached_prefix, token_chunk, bar)
        peak = max(peak, int(out.pop("cache_bytes")))
        parts[k] = out
        if path is not None:
            save_file({n: t.contiguous() for n, t in out.items()}, str(path))
    bar.close()
    # reassemble in sample order: batch b holds its sequences' tokens sequence-major
    cols_kl, cols_dce, cols_ce = [None] * len(items), [None] * len(items), [None] * len(items)
    for k, seqs in enumerate(batches):
        offs = np.cumsum([0] + [measured[s] for s in seqs])
        for j, s in enumerate(seqs):
            sl = slice(offs[j], offs[j + 1])
            cols_kl[s], cols_dce[s] = parts[k]["kl"][:, sl].numpy(), parts[k]["dce"][:, sl].numpy()
            cols_ce[s] = parts[k]["ce_full"][sl].numpy()
    return SweepResult(ablations, np.concatenate(cols_kl, 1), np.concatenate(cols_dce, 1), np.concatenate(cols_ce),
                       np.cumsum([0] + measured), peak, len(batches), time.perf_counter() - t0)


# ---------------------------------------------------------------- summaries


def estimates(seq_means_SK: np.ndarray, n_resamples: int, seed: int = 0) -> dict[str, list[float]]:
    """Column means over sequences with percentile bootstrap CIs (units: sequences)."""
    mean, lo, hi = bootstrap_means(seq_means_SK, n_resamples=n_resamples, seed=seed)
    return {"mean": mean.tolist(), "lo": lo.tolist(), "hi": hi.tolist()}


def summarize(result: SweepResult, sites: Sequence[AdapterSite], n_resamples: int) -> dict[str, Any]:
    """Per-family means with CIs; the per-adapter matrix is projections x layers (None where no adapter)."""
    kl_AS, dce_AS = result.seq_means(result.kl_AN), result.seq_means(result.dce_AN)
    kl, dce = estimates(kl_AS.T, n_resamples), estimates(dce_AS.T, n_resamples)
    index = {a.name: k for k, a in enumerate(result.ablations)}
    out: dict[str, Any] = {}

    def pick(est: dict[str, list[float]], names: list[str | None]) -> dict[str, list]:
        return {k: [None if n is None else v[index[n]] for n in names] for k, v in est.items()}

    by_family: dict[str, list[str]] = {}
    for a in result.ablations:
        by_family.setdefault(a.family, []).append(a.name)
    layers = sorted({s.layer for s in sites})
    if "layer" in by_family:
        out["layer"] = {"layers": layers, "kl": pick(kl, by_family["layer"]), "dce": pick(dce, by_family["layer"])}
    if "type" in by_family:
        out["type"] = {"names": by_family["type"], "kl": pick(kl, by_family["type"]),
                       "dce": pick(dce, by_family["type"])}
    if "adapter" in by_family:
        grid = [[f"L{lay}.{p}" if f"L{lay}.{p}" in index else None for lay in layers] for p in K.PROJECTIONS]
        out["adapter"] = {"projections": list(K.PROJECTIONS), "layers": layers,
                          "kl": {k: [pick(kl, row)[k] for row in grid] for k in ("mean", "lo", "hi")},
                          "dce": {k: [pick(dce, row)[k] for row in grid] for k in ("mean", "lo", "hi")}}
        # Figure 1's "mean KL by projection type": per sequence, the mean over layers of that
        # projection's single-adapter KLs; then the mean over sequences with its CI
        projs = [p for p in K.PROJECTIONS if any(n is not None for n in grid[K.PROJECTIONS.index(p)])]
        cols = [np.mean([kl_AS[index[n]] for n in grid[K.PROJECTIONS.index(p)] if n is not None], axis=0)
                for p in projs]
        out["adapter_mean_by_projection"] = {"projections": projs, "kl": estimates(np.stack(cols, 1), n_resamples)}
    rankings = {}
    if "layer" in by_family:
        rankings["layer"] = {"layers": layers, **ranking_tests(kl_AS[[index[n] for n in by_family["layer"]]],
                                                              layers, n_resamples)}
    if "type" in by_family and {"mlp", "attn"} <= set(by_family["type"]) and kl_AS.shape[1] >= 2:
        rankings["type"] = {"mlp_vs_attn": {"top": "mlp", "runner_up": "attn", **paired_difference(
            kl_AS[index["mlp"]], kl_AS[index["attn"]], n_resamples)}}
    if "adapter" in by_family and len(projs) >= 2:
        rankings["projection"] = ranking_tests(np.stack(cols), projs, n_resamples)
    if rankings:
        out["rankings"] = rankings
    return out


TOP_LAYERS = 4  # "a few layers dominate": the paper names 4 (44, 45, 46, 62 of 64)


def ranking_tests(kl_KS: np.ndarray, names: Sequence, n_resamples: int, top_k: int = TOP_LAYERS) -> dict[str, Any]:
    """Is the ranking of ``names`` by mean KL over sequences resolved? The largest against the runner-up,
    paired over the sequences the KL was measured on (:func:`rank1.stats.paired_difference`: bootstrap CI
    of the mean difference, sign-flip p, the distinct resamples the sample allows), and the share of the
    summed KL that the ``top_k`` largest carry, with a bootstrap CI over sequences (the top ``top_k`` chosen
    on the whole sample)."""
    mean_K = kl_KS.mean(1)
    order = np.argsort(-mean_K, kind="stable")
    out: dict[str, Any] = {"order": [names[k] for k in order], "mean": mean_K[order].tolist()}
    if kl_KS.shape[1] >= 2 and len(names) >= 2:
        out["top_vs_runner_up"] = {"top": names[order[0]], "runner_up": names[order[1]],
                                   **paired_difference(kl_KS[order[0]], kl_KS[order[1]], n_resamples)}
    if len(names) > top_k:
        top = kl_KS[order[:top_k]].sum(0)
        est = paired_bootstrap({"top": top, "total": kl_KS.sum(0)},
                               lambda top, total: top.mean() / total.mean() if total.mean() > 0 else None, n_resamples)
        out["top_share"] = {"top_k": top_k, "names": [names[k] for k in order[:top_k]],
                            "uniform": top_k / len(names), **est.to_dict()}
    return out


def class_summary(kl_AN: np.ndarray, names: list[str], classes_N: np.ndarray) -> dict:
    """Per ablation: mean KL of the tokens of each class, and the class's share of all KL mass."""
    present = [c for c in TOKEN_CLASSES if (classes_N == c).any()]
    masks = [classes_N == c for c in present]
    total = kl_AN.sum(1)
    return {"classes": present, "n_tokens": [int(m.sum()) for m in masks],
            "token_share": [float(m.mean()) for m in masks],
            "mean_kl": {n: [float(kl_AN[a, m].mean()) for m in masks] for a, n in enumerate(names)},
            "kl_share": {n: [float(kl_AN[a, m].sum() / total[a]) if total[a] > 0 else None for m in masks]
                         for a, n in enumerate(names)}}
