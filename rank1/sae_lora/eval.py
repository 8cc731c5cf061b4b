"""Stage 5.4's measures: behaviour rates, sparsity of the read and write directions, their top latents.

The penalty comparison over seeds (:func:`seed_comparison`): every (penalty, l1) was trained once per seed, and a
seed fixes the initialisation of A and B and the data order in every group, so the seed is the unit and the
groups are paired by it. Per group, the mean and spread (std, min, max) over seeds of the behaviour rates, the
final CE and the sparsity of the directions; against the l1 = 0 group, per measure, the paired difference over the
common seeds (:func:`rank1.stats.paired_difference`: bootstrap CI and two-sided sign-flip p) and a verdict by
:func:`paired_verdict`: ``lower`` or ``higher`` only when the CI excludes 0 and p <= 0.05; ``underpowered`` when no
outcome could reach that (the smallest sign-flip p is 2 / 2^n: 6 seeds are needed), ``cannot tell`` otherwise.
Pooling the seeds as independent runs (complete separation of the two groups, 2 / C(2n, n)) would be wrong here:
a seed effect shared by both groups makes separation likelier than that.

Behaviour measure (exact and cheap): each held-out record is teacher-forced up to and including
``<|im_start|>answer\\n`` (its own trace, the base model's format) and the greedy next token is read; the behaviour
is present when that token is the marker's first token (``Product``), absent otherwise (normally ``Answer``).
All variants share the residual entering the hook layer (the layers below are the base model's in every variant:
the SAE-LoRA edits that layer's input, the standard LoRA adapts only layers ``layer..L-1``), so each variant runs
only the layers from there on. Rates carry percentile bootstrap CIs over prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rank1.batching import pad_items
from rank1.sae_lora.adapter import SaeLora, placement, residual_cache, sparsity_metrics, stack_cached
from rank1.sae_lora.behavior import INSIDE, OUTSIDE, teacher_forced_prefix
from rank1.sae_lora.config import run_name
from rank1.sae_lora.resid_sae import encoded_chunks
from rank1.stats import bootstrap_mean, paired_difference, sign_flip_min_p
from rank1.store import Store

MEASURE = ("greedy next token after the teacher-forced held-out trace and '<|im_start|>answer\\n' is the marker's "
           "first token (one forward pass per prompt, no sampling)")


@torch.no_grad()
def next_tokens(runner, h_cache: list[torch.Tensor], prefix_ids: list[list[int]], layer: int, pad: int,
                edit=None, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(greedy next token id, log-softmax row) at the end of every prefix, layers ``layer..L-1`` run from the
    cached residual (``edit(h)`` applied first, in float32; the layers run in the model's dtype)."""
    device, dtype = placement(runner)
    ids_out, logp_out = [], []
    for i in range(0, len(prefix_ids), batch):
        items = [{"input_ids": p} for p in prefix_ids[i:i + batch]]
        ids, mask, _ = pad_items(items, pad)
        h = stack_cached(h_cache[i:i + batch], device)
        if edit is not None:
            h = edit(h)
        ctx = runner.prepare(ids.to(device), mask.to(device))
        out, _ = runner.run(h.to(dtype), ctx, layer)
        last = torch.tensor([len(p["input_ids"]) - 1 for p in items], device=device)
        logp = torch.log_softmax(runner.logits(out[torch.arange(len(items), device=device), last]).float(), -1).cpu()
        ids_out.append(logp.argmax(-1).numpy())
        logp_out.append(logp.numpy())
    return np.concatenate(ids_out), np.concatenate(logp_out)


def rates(hit_N: np.ndarray, sides: np.ndarray, logp_marker_N: np.ndarray, n_resamples: int) -> dict[str, Any]:
    out = {}
    for side in (INSIDE, OUTSIDE):
        sel = sides == side
        out[side] = {"rate": bootstrap_mean(hit_N[sel].astype(float), n_resamples).to_dict(),
                     "mean_logp_marker": float(logp_marker_N[sel].mean())}
    return out


@torch.no_grad()
def latent_examples(sae, store: Store, latents: list[int], tokenizer, k: int, context: int) -> dict[int, Any]:
    """Per latent: firing density over the store and its ``k`` top-activating tokens with +-``context`` tokens."""
    sel = torch.tensor(latents, dtype=torch.long, device=sae.device)
    vals, toks, docs, fired = [], [], [], torch.zeros(len(latents))
    for sh in store.shards():
        acts = torch.cat([f[:, sel].cpu() for f in encoded_chunks(sae, sh.acts_TS)])
        acts[sh.positions_T == 0] = 0  # the opening token (attention sink), outside the SAE's data
        vals.append(acts)
        fired += (acts > 0).sum(0)
        toks.append(sh.token_ids_T.long())
        docs.append(sh.doc_ids_T.long())
    v, t, d = torch.cat(vals), torch.cat(toks), torch.cat(docs)
    top_v, top_i = v.topk(min(k, len(v)), dim=0)
    out = {}
    for j, lat in enumerate(latents):
        ex = []
        for val, i in zip(top_v[:, j].tolist(), top_i[:, j].tolist(), strict=True):
            if val <= 0:
                break
            lo, hi = max(0, i - context), min(len(t), i + context + 1)
            same = d[lo:hi] == d[i]
            ids = t[lo:hi][same].tolist()
            at = int(same[:i - lo].sum())
            ex.append({"activation": val, "token": tokenizer.decode([int(t[i])]),
                       "context": tokenizer.decode(ids[:at]) + "[[" + tokenizer.decode(ids[at:at + 1]) + "]]"
                       + tokenizer.decode(ids[at + 1:])})
        out[lat] = {"density": float(fired[j] / len(v)), "examples": ex}
    return out


@torch.no_grad()
def latent_density(sae, store: Store) -> np.ndarray:
    """Share of the store's tokens (opening tokens left out) on which each latent fires."""
    fired, n = torch.zeros(sae.cfg.d_sae), 0
    for sh in store.shards():
        keep = sh.positions_T > 0
        for f in encoded_chunks(sae, sh.acts_TS[keep]):
            fired += (f > 0).sum(0).cpu()
        n += int(keep.sum())
    return (fired / max(n, 1)).numpy()


def alive_mass(v_N: np.ndarray, density_N: np.ndarray) -> float:
    """Share of a unit direction's squared norm on latents that fire at least once in the store: the rest sits on
    latents the data never activates (a read weight there gets no gradient from the loss)."""
    return float((v_N[density_N > 0] ** 2).sum() / max((v_N ** 2).sum(), 1e-30))


def mean_metrics(dirs_RF: np.ndarray) -> dict[str, float]:
    """Sparsity metrics of each rank component's direction, averaged over the components."""
    per = [sparsity_metrics(v) for v in dirs_RF]
    return {k: float(np.mean([p[k] for p in per])) for k in per[0]}


def top_latents(v_N: np.ndarray, n: int) -> list[dict[str, Any]]:
    order = np.argsort(-np.abs(v_N))[:n]
    return [{"latent": int(i), "weight": float(v_N[i])} for i in order]


@dataclass
class HeldOut:
    """The held-out prompts as every variant reads them: the residual entering the hook layer of each prefix
    (teacher-forced up to the answer tag), the prefix token ids, the side of each prompt, the marker's first
    token."""

    h_cache: list[torch.Tensor]
    prefix_ids: list[list[int]]
    sides: np.ndarray
    layer: int
    pad: int
    marker_id: int


def held_out_prompts(runner, tokenizer, records: list[dict], marker: str, layer: int) -> HeldOut:
    """Tokenize the teacher-forced prefixes of ``records`` and cache their residual entering ``layer``."""
    pad = tokenizer.pad_token_id or 0
    marker_id = tokenizer(marker, add_special_tokens=False)["input_ids"][0]
    prefix_ids = [tokenizer(teacher_forced_prefix(tokenizer, r), add_special_tokens=False)["input_ids"]
                  for r in records]
    sides = np.array([r["side"] for r in records])
    h_cache = residual_cache(runner, [{"input_ids": p} for p in prefix_ids], layer, pad, desc="held-out residual")
    return HeldOut(h_cache, prefix_ids, sides, layer, pad, marker_id)


def measure(runner, held: HeldOut, tokenizer, n_resamples: int, edit=None) -> dict[str, Any]:
    """Behaviour rates inside and outside the condition of one variant (``edit`` applied to the residual), and
    the counts of the greedy next tokens on each side."""
    ids, logp = next_tokens(runner, held.h_cache, held.prefix_ids, held.layer, held.pad, edit)
    hit = ids == held.marker_id
    out = rates(hit, held.sides, logp[:, held.marker_id], n_resamples)
    out["next_token_counts"] = {s: dict(zip(*np.unique([tokenizer.decode([int(i)]) for i in ids[held.sides == s]],
                                                       return_counts=True), strict=True))
                                for s in (INSIDE, OUTSIDE)}
    for s in (INSIDE, OUTSIDE):
        out["next_token_counts"][s] = {k: int(v) for k, v in out["next_token_counts"][s].items()}
    return out


def direction_metrics(adapter: SaeLora, init: SaeLora, records: list[dict[str, Any]], density_F: np.ndarray,
                      n_top: int) -> dict[str, Any]:
    """Scales, raw norms, CE of the first and last training step (``records``), sparsity, alive mass and
    cosine to the initialisation of the read and write directions, and their ``n_top`` largest latents."""
    with torch.no_grad():
        A_hat, B_hat = (x.cpu().numpy() for x in adapter.directions())
        A0, B0 = (x.cpu().numpy() for x in init.directions())
    reads, writes, reads0, writes0 = A_hat.T, B_hat, A0.T, B0  # [r, d_sae] each
    return {"s": adapter.s.tolist(), "norm_A_raw": float(adapter.A.norm()),
            "norm_B_raw": float(adapter.B.norm()), "norm_A_raw_init": float(init.A.norm()),
            "norm_B_raw_init": float(init.B.norm()),
            "final_ce": records[-1]["ce"], "first_ce": records[0]["ce"],
            "sparsity": {"A": mean_metrics(reads), "B": mean_metrics(writes),
                         "A_init": mean_metrics(reads0), "B_init": mean_metrics(writes0)},
            "alive_mass": {k: float(np.mean([alive_mass(v, density_F) for v in m]))
                           for k, m in (("A", reads), ("B", writes), ("A_init", reads0),
                                        ("B_init", writes0))},
            "cos_to_init": {"A": float(np.mean((reads * reads0).sum(1))),
                            "B": float(np.mean((writes * writes0).sum(1)))},
            "top_read": top_latents(reads[0], n_top),
            "top_write": top_latents(writes[0], n_top)}


CANNOT_TELL, UNDERPOWERED = "cannot tell", "underpowered"
LEVEL = 0.95
SPREAD_RULE = ("paired by seed (a seed fixes the initialisation and data order in every group): lower / higher: the "
               "95% bootstrap CI of the mean difference from l1 = 0 over the common seeds excludes 0 and its two-sided "
               "sign-flip p is <= 0.05; underpowered: too few common seeds for any outcome to reach p <= 0.05 (the "
               "smallest p is 2 / 2^n: 6 seeds are needed); cannot tell: otherwise")
# (name, how to read it from a run of 5.4) of the measures compared over seeds
COMPARED = {
    "inside_rate": lambda r: r["inside"]["rate"]["value"],
    "outside_rate": lambda r: r["outside"]["rate"]["value"],
    "final_ce": lambda r: r["final_ce"],
    "hoyer_A": lambda r: r["sparsity"]["A"]["hoyer"],
    "hoyer_B": lambda r: r["sparsity"]["B"]["hoyer"],
    "alive_mass_A": lambda r: r["alive_mass"]["A"],
    "norm_A_raw": lambda r: r["norm_A_raw"],
}


def spread(values: list[float]) -> dict[str, Any]:
    """Mean, population std, min and max of one measure over seeds, and the seed count."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max()),
            "n": len(v)}


def seeds_needed(level: float = LEVEL) -> int:
    """The fewest seeds for which the sign-flip test over seeds can reach p <= 1 - ``level``."""
    return next(n for n in range(2, 64) if sign_flip_min_p(n) <= 1 - level + 1e-12)


def paired_verdict(values: list[float], reference: list[float]) -> tuple[str, dict[str, Any] | None]:
    """(verdict, paired test) of one measure of a group against the l1 = 0 group, the two lists aligned by seed
    (:data:`SPREAD_RULE`); no test below 2 seeds."""
    if len(values) < 2:
        return UNDERPOWERED, None
    test = paired_difference(np.asarray(values), np.asarray(reference), level=LEVEL)
    if not test["powered"]:
        return UNDERPOWERED, test
    if not test["separated"]:
        return CANNOT_TELL, test
    return ("higher" if test["mean_diff"] > 0 else "lower"), test


def seed_comparison(runs: dict[str, Any]) -> dict[str, Any]:
    """Per (penalty, l1) group of ``runs`` (5.4's per-run results, each with ``penalty``, ``l1_weight``, ``seed``):
    the :func:`spread` of every measure of :data:`COMPARED` over its seeds and, against the l1 = 0 group where there
    is one, the paired test and verdict per measure over the seeds both have. ``powered``: every comparison could
    reach a verdict (None without an l1 = 0 group)."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in runs.values():
        groups.setdefault(("raw" if r["l1_weight"] == 0 else r["penalty"], r["l1_weight"]), []).append(r)
    out, by_seed = {}, {}
    for (pen, w), rows in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        name = run_name(pen, w)
        by_seed[name] = {r["seed"]: r for r in rows}
        out[name] = {"penalty": pen, "l1_weight": w, "seeds": sorted(by_seed[name]),
                     "measures": {k: spread([get(r) for r in rows]) for k, get in COMPARED.items()}}
    powered = None
    if "l1_0" in out:
        powered = True
        ref = by_seed["l1_0"]
        for name, g in out.items():
            if name == "l1_0":
                continue
            common = sorted(set(by_seed[name]) & set(ref))
            g["paired_seeds"], g["vs_l1_0"], g["paired"] = common, {}, {}
            for k, get in COMPARED.items():
                verdict, test = paired_verdict([get(by_seed[name][s]) for s in common], [get(ref[s]) for s in common])
                g["vs_l1_0"][k], g["paired"][k] = verdict, test
                powered &= verdict != UNDERPOWERED
    return {"groups": out, "rule": SPREAD_RULE, "seeds_needed": seeds_needed(), "powered": powered}
