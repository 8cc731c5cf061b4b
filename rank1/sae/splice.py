"""The SAE spliced back into the model: how much of the adapter's effect on the next-token loss survives when
every token's adapter scalars are replaced by the SAE's reconstruction of them (through
:func:`rank1.hooks.replace_adapter_activations`).

Two baselines, because one alone flatters the SAE: zero ablation (every adapter scalar 0: exactly the base
model) and mean ablation (every token's adapter scalars replaced by their mean over the SAE's training tokens).
A reconstruction that only knew the mean adapter state would already keep much of the adapter's effect against
the base model; recovered vs mean says how much of what the mean misses the SAE adds.

The measured tokens are the held-out documents of the SAE's split, tokenized again in the training format for
their loss mask (assistant tokens, as in training and stage 1) and checked against the store's token ids.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from rank1.batching import labelled_positions, longest_first, pad_items
from rank1.capture import backbone
from rank1.data import IGNORE_INDEX, load_reasoning_records, tokenize_record
from rank1.hooks import read_adapter_activations, replace_adapter_activations
from rank1.metrics import head_kl_ce
from rank1.sae.split import SaeError, Split
from rank1.stats import DEFAULT_RESAMPLES, paired_recovery
from rank1.store import Store

CE_CHUNK = 256  # positions per LM-head call of the loss gap


def heldout_items(store: Store, split: Split, tokenizer, max_tokens: int) -> list[dict[str, Any]]:
    """The first held-out documents (whole, until ``max_tokens``), tokenized again in the training format to get
    their loss mask, each checked against the store's token ids (a corpus that changed since the extraction is
    refused)."""
    source = store.manifest.get("corpus", {}).get("source")
    block_size = store.manifest.get("config", {}).get("block_size")
    if not source or source == "in-memory" or block_size is None:
        raise SaeError(f"the store {store.folder} does not record the corpus it was extracted from; the loss gap "
                       f"needs it (pass --no-loss_gap)")
    tokens: dict[int, list[int]] = {}
    for i, count in enumerate(split.heldout_per_shard):
        if count:
            sh = store.shard(i)
            keep = sh.doc_ids_T >= split.heldout_doc
            for d in torch.unique(sh.doc_ids_T[keep]).tolist():
                tokens[d] = sh.token_ids_T[sh.doc_ids_T == d].tolist()
    records = load_reasoning_records(source)
    items, n = [], 0
    for d in sorted(tokens):
        if n >= max_tokens:
            break
        item = tokenize_record(tokenizer, records[d], block_size) if d < len(records) else None
        if item is None or item["input_ids"] != tokens[d]:
            raise SaeError(f"document {d} of {source} no longer matches the store {store.folder}: the corpus "
                           f"changed since the extraction; re-extract the store, or pass --no-loss_gap")
        if any(t != IGNORE_INDEX for t in item["labels"][1:]):
            items.append({**item, "doc": d})
            n += len(item["input_ids"])
    return items


def _ce(loaded, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Per row, the summed float64 cross-entropy of every labelled next token (positions t with labels[t+1]);
    the LM head runs ``CE_CHUNK`` positions at a time."""
    model = loaded.model
    head = (model.get_base_model() if hasattr(model, "get_base_model") else model).lm_head
    with loaded.autocast():
        h = backbone(model)(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        b, t = labelled_positions(labels)
        _, ce_N = head_kl_ce(head, h[b, t], labels[b, t + 1], chunk=CE_CHUNK, rows=CE_CHUNK)
        return torch.zeros(len(labels), dtype=torch.float64, device=h.device).index_add_(0, b, ce_N).cpu().numpy()


def recovered(ce_spliced_N: np.ndarray, ce_ablated_N: np.ndarray, ce_clean_N: np.ndarray,
              n_resamples: int = DEFAULT_RESAMPLES) -> dict[str, Any]:
    """(CE_ablated - CE_spliced) / (CE_ablated - CE_clean) of per-document summed CEs (1: the reconstruction keeps
    the whole effect the ablation removes, 0: none of it), with a 95% paired bootstrap CI over documents."""
    return paired_recovery(ce_spliced_N, ce_ablated_N, ce_clean_N, n_resamples=n_resamples).to_dict()


def _splices(x_BTS: torch.Tensor, sae, mean_S: torch.Tensor, skip: int) -> dict[str, torch.Tensor]:
    """The adapter scalars each variant splices in: the SAE reconstruction and the training mean of every token,
    the first ``skip`` tokens of each document keeping their own."""
    x_hat = sae(x_BTS.reshape(-1, x_BTS.shape[-1]).to(sae.device)).reshape(x_BTS.shape).to(x_BTS.device)
    out = {"spliced": x_hat, "mean": mean_S.to(x_BTS.device, x_BTS.dtype).expand_as(x_BTS).clone()}
    for x in out.values():
        x[:, :skip] = x_BTS[:, :skip]
    return out


@torch.no_grad()
def loss_gap(loaded, sae, items: list[dict[str, Any]], batch_tokens: int, mean_S: torch.Tensor,
             skip: int = 0) -> dict[str, Any]:
    """Next-token cross-entropy (nats per assistant token) of the base model (adapter off: zero ablation), of the
    LoRA model, of the LoRA model whose adapter scalars at every token are replaced by the SAE reconstruction of
    that token's adapter state (read from a clean forward pass first: all layers are replaced at once, so the
    reconstruction cannot be recomputed layer by layer), and of the LoRA model with ``mean_S`` (the mean adapter
    state over the SAE's training tokens) at every token instead (mean ablation). recovered_vs_zero =
    (CE_base - CE_spliced) / (CE_base - CE_lora), recovered_vs_mean = (CE_mean - CE_spliced) / (CE_mean - CE_lora).
    The first ``skip`` tokens of each document, which the SAE did not learn, keep their own activations in both
    splices. CIs: paired bootstrap over documents."""
    model, sites = loaded.model, loaded.sites
    if len(sites) != sae.cfg.d_in or len(mean_S) != sae.cfg.d_in:
        raise SaeError(f"the model has {len(sites)} adapters and the mean state {len(mean_S)}, the SAE reads "
                       f"{sae.cfg.d_in}")
    if not items:
        raise SaeError("no held-out document has assistant tokens to measure the loss gap on")
    pad = loaded.tokenizer.pad_token_id or 0
    sums = {name: np.zeros(len(items)) for name in ("base", "lora", "spliced", "mean")}
    groups = longest_first([len(it["input_ids"]) for it in items], batch_tokens)
    for group in tqdm(groups, desc="loss gap", unit="batch", dynamic_ncols=True):
        batch = [x.to(loaded.device) for x in pad_items([items[i] for i in group], pad)]
        with read_adapter_activations(sites) as acts:
            sums["lora"][group] = _ce(loaded, *batch)
            x_BTS = acts.scalars_BTS()
        for name, x in _splices(x_BTS, sae, mean_S, skip).items():
            with replace_adapter_activations(sites, x.to(loaded.device)):
                sums[name][group] = _ce(loaded, *batch)
        with model.disable_adapter():
            sums["base"][group] = _ce(loaded, *batch)
    total = float(sum(sum(t != IGNORE_INDEX for t in it["labels"][1:]) for it in items))
    return {"n_docs": len(items), "n_tokens": int(total),
            **{f"ce_{name}": float(v.sum() / total) for name, v in sums.items()},
            "recovered_vs_zero": recovered(sums["spliced"], sums["base"], sums["lora"]),
            "recovered_vs_mean": recovered(sums["spliced"], sums["mean"], sums["lora"]),
            "meaning": "recovered_vs_zero = (CE_base - CE_spliced) / (CE_base - CE_lora) (zero ablation: the adapter "
                       "off); recovered_vs_mean = (CE_mean - CE_spliced) / (CE_mean - CE_lora) (every token's "
                       "adapter scalars replaced by their mean over the SAE's training tokens); nats per assistant "
                       "token; 95% CIs over documents (paired bootstrap)"}
