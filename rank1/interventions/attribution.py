"""Gradient x activation attribution of a target to every adapter's scalar at every position.

``attr[s, t] = a[s, t] * d target / d a[s, t]`` is the first-order estimate of how much the target
would drop if adapter ``s``'s activation at position ``t`` were zeroed (``target(a=0) - target ~ -attr``).
The gradient is taken through a zero tensor added to each ``lora_A`` output, so it is the total
derivative: it includes the paths through later adapters.

The authors' linearisation (``freeze=True``): every RMSNorm's scale ``1/rms(x)`` and every attention
pattern is treated as a constant. Norms: the forward value is kept and only ``weight * x / rms(x)`` with
``rms`` detached carries a gradient. Attention: the outputs of ``q_proj`` and ``k_proj`` are detached, so
the pattern gets no gradient and gradients flow through V and O only; q and k adapters, which act only
through the pattern, then get zero attribution by construction. ``freeze=False`` is the plain gradient.

Hand-written because none of the attribution libraries (captum, TransformerLens) hooks PEFT's rank-1
``lora_A`` outputs or freezes these pieces of a Hugging Face decoder; everything goes through
:func:`rank1.hooks.add_hooks`, so nothing stays hooked after a call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from rank1.constants import ANSWER_PREFIX, ANSWER_TAG, THINK_TAG
from rank1.data import prompt_text
from rank1.hooks import add_hooks, edit_adapter_activations
from rank1.lora import AdapterSite

TARGETS = ("logprob", "logit_diff")


def _frozen_norm(module, inputs, output):
    x = inputs[0]
    scale = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + module.variance_epsilon).detach()
    linear = module.weight * (x.float() * scale).to(x.dtype)
    return output.detach() + (linear - linear.detach())


def _detached(_module, _inputs, output):
    return output.detach()


@contextmanager
def linearised(model: torch.nn.Module, freeze_norms: bool = True, freeze_attention: bool = True) -> Iterator[None]:
    """Within the block, RMSNorm scales and/or attention patterns carry no gradient (values unchanged)."""
    hooks = []
    for name, module in model.named_modules():
        if freeze_norms and type(module).__name__.endswith("RMSNorm"):
            if not hasattr(module, "variance_epsilon"):
                raise ValueError(f"{name}: an RMSNorm without variance_epsilon; cannot freeze its scale")
            hooks.append((module, _frozen_norm))
        elif freeze_attention and name.endswith(("self_attn.q_proj", "self_attn.k_proj")):
            hooks.append((module, _detached))
    if (freeze_norms or freeze_attention) and not hooks:
        raise ValueError("found no RMSNorm or q_proj/k_proj modules to freeze in this model")
    with add_hooks(hooks):
        yield


def target_value(logits_V: torch.Tensor, token: int, kind: str = "logprob") -> torch.Tensor:
    """``logprob``: log P(token); ``logit_diff``: logit(token) minus the largest other logit."""
    if kind == "logprob":
        return torch.log_softmax(logits_V.float(), dim=-1)[token]
    if kind == "logit_diff":
        others = logits_V.float().clone()
        others[token] = -torch.inf
        return logits_V[token].float() - others.max()
    raise ValueError(f"unknown target {kind!r}; choose from {TARGETS}")


@dataclass
class Attribution:
    """One sequence: activations, gradients and their product per (adapter, position)."""

    acts_ST: torch.Tensor
    grads_ST: torch.Tensor
    target: float

    @property
    def attr_ST(self) -> torch.Tensor:
        return self.acts_ST * self.grads_ST


def attribute(model: torch.nn.Module, sites: list[AdapterSite], ids_T: torch.Tensor,
              target: Callable[[torch.Tensor], torch.Tensor], freeze: bool = True,
              autocast: Callable = nullcontext) -> Attribution:
    """Gradient of ``target(logits_TV)`` with respect to each adapter's scalar at each position of
    ``ids_T`` (one sequence), with the linearisation when ``freeze``. Rank-1 adapters only."""
    acts: list[torch.Tensor | None] = [None] * len(sites)
    zeros: list[torch.Tensor | None] = [None] * len(sites)

    def tap(i: int, a: torch.Tensor) -> torch.Tensor:
        if a.shape[-1] != 1:
            raise ValueError(f"attribution needs rank-1 adapters, layer {sites[i].layer} {sites[i].proj} "
                             f"has rank {a.shape[-1]}")
        acts[i] = a.detach()[0, :, 0].float()
        zeros[i] = torch.zeros_like(a, requires_grad=True)
        return a + zeros[i]

    freezing = linearised(model) if freeze else nullcontext()
    with torch.enable_grad(), freezing, edit_adapter_activations(sites, tap), autocast():
        logits_TV = model(input_ids=ids_T[None].to(next(model.parameters()).device)).logits[0]
        value = target(logits_TV)
        grads = torch.autograd.grad(value, zeros, allow_unused=True)
    grads_ST = torch.stack([torch.zeros_like(a) if g is None else g[0, :, 0].float()
                            for a, g in zip(acts, grads, strict=True)])
    return Attribution(torch.stack(acts).cpu(), grads_ST.cpu(), float(value.detach()))


@torch.inference_mode()
def zeroing_effects(model: torch.nn.Module, sites: list[AdapterSite], ids_T: torch.Tensor,
                    target: Callable[[torch.Tensor], torch.Tensor], masks_BST: torch.Tensor,
                    autocast: Callable = nullcontext, batch_size: int = 16) -> list[float]:
    """For each mask: target(activations zeroed where the mask is set) - target(unchanged), which
    ``-attr`` predicts. Masks run as rows of one batch (``batch_size`` at a time)."""
    device = next(model.parameters()).device
    with autocast():
        before = target(model(input_ids=ids_T[None].to(device)).logits[0])
        out = []
        for start in range(0, len(masks_BST), batch_size):
            keep_BST = ~masks_BST[start:start + batch_size].to(device)

            def zero(i: int, a: torch.Tensor, keep_BST=keep_BST) -> torch.Tensor:
                return a * keep_BST[:, i, :, None].to(a.dtype)

            ids_BT = ids_T[None].expand(len(keep_BST), -1).to(device)
            with edit_adapter_activations(sites, zero):
                logits_BTV = model(input_ids=ids_BT).logits
            out += [float(target(logits_TV) - before) for logits_TV in logits_BTV]
    return out


def zeroing_effect(model: torch.nn.Module, sites: list[AdapterSite], ids_T: torch.Tensor,
                   target: Callable[[torch.Tensor], torch.Tensor], mask_ST: torch.Tensor,
                   autocast: Callable = nullcontext) -> float:
    """One mask of :func:`zeroing_effects`."""
    return zeroing_effects(model, sites, ids_T, target, mask_ST[None], autocast)[0]


# ---------------------------------------------------------------- one problem, checked against zeroing


def answer_target(tokenizer, question: str, trace: str, gold: str) -> tuple[torch.Tensor, int, int]:
    """(ids_T, position, token): the s1 turn with the gold trace up to ``Answer:`` (and any whitespace
    tokens that follow it); the target is the first non-blank token of `` <gold>``, predicted at the
    last position."""
    prefix = f"{prompt_text(tokenizer, question)}{THINK_TAG}\n{trace.strip()}\n{ANSWER_TAG}\n{ANSWER_PREFIX.strip()}"
    ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    full = tokenizer(f"{prefix} {gold}", add_special_tokens=False)["input_ids"]
    if full[:len(ids)] != ids or len(full) == len(ids):
        raise ValueError(f"the gold answer {gold!r} does not tokenize as a continuation of 'Answer:'")
    k = len(ids)
    while k < len(full) - 1 and not tokenizer.decode([full[k]]).strip():
        k += 1
    return torch.tensor(full[:k]), k - 1, full[k]


def _pearson(x: list[float], y: list[float]) -> float | None:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def check_problem(model, sites: list[AdapterSite], ids_T: torch.Tensor, target: Callable, res: Attribution,
                  exact: Attribution, n_check: int, seed: int, autocast: Callable = nullcontext) -> dict:
    """Zero the ``n_check`` (adapter, position) pairs with the largest |attr|, ``n_check`` random ones,
    and the ``n_check`` adapters with the largest |sum over positions|; record the actual change of the
    target beside the predictions ``-attr`` of ``res`` and of the plain gradient ``exact``."""
    S, T = res.attr_ST.shape
    top = torch.argsort(res.attr_ST.abs().flatten(), descending=True)[:n_check].tolist()
    g = torch.Generator().manual_seed(seed)
    rand = torch.randperm(S * T, generator=g)[:n_check].tolist()
    per_site = res.attr_ST.sum(1)
    whole = torch.argsort(per_site.abs(), descending=True)[:n_check].tolist()
    masks = torch.zeros(2 * n_check + len(whole), S, T, dtype=torch.bool)
    for j, c in enumerate(top + rand):
        masks[j].view(-1)[c] = True
    for j, s in enumerate(whole):
        masks[len(top) + len(rand) + j, s] = True
    actual = zeroing_effects(model, sites, ids_T, target, masks[:len(top) + len(rand) + len(whole)], autocast)
    out = {}
    for name, cells, lo in (("top_pairs", top, 0), ("random_pairs", rand, len(top))):
        out[name] = {"cells": [[c // T, c % T] for c in cells], "actual": actual[lo:lo + len(cells)],
                     "predicted": [-float(res.attr_ST.view(-1)[c]) for c in cells],
                     "predicted_exact": [-float(exact.attr_ST.view(-1)[c]) for c in cells]}
    out["whole_adapters"] = {"sites": whole, "actual": actual[len(top) + len(rand):],
                             "predicted": [-float(per_site[s]) for s in whole],
                             "predicted_exact": [-float(exact.attr_ST[s].sum()) for s in whole]}
    return out


def agreement(checks: list[dict]) -> dict[str, dict[str, float | None]]:
    """Pooled over problems, per kind of check: Pearson r and sign agreement between the actual effect
    of zeroing and the prediction (linearised and exact gradient)."""
    out = {}
    for kind in ("top_pairs", "random_pairs", "whole_adapters"):
        actual = [v for c in checks for v in c[kind]["actual"]]
        row = {"n": len(actual)}
        for pred in ("predicted", "predicted_exact"):
            p = [v for c in checks for v in c[kind][pred]]
            row[f"pearson_{pred}"] = _pearson(p, actual)
            row[f"sign_agreement_{pred}"] = float(np.mean(np.sign(p) == np.sign(actual))) if actual else None
        out[kind] = row
    return out
