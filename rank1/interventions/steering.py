"""Steering with the adapters, from the first generated token on, and what it does to the output.

Two interventions, both in natural units:

- scalar: adapter ``s``'s own activation becomes ``a + m * std_s`` (``offset``) or ``m * a`` (``scale``),
  with ``std_s`` its standard deviation over the stage-2 corpus (:func:`site_moments`); this needs no
  assumption about where B writes, so it works for every projection;
- vector: ``m * mean_norm_l * B / ||B||`` is added to the residual stream after layer ``l`` for an
  adapter that writes to it (``o_proj``, ``down_proj``), ``mean_norm_l`` the mean residual norm there
  (:func:`residual_norms`).

"From the first generated token on": the forward pass that predicts the first generated token is the one
at the last prompt position, so steering acts at positions >= prompt length - 1. In generation
(:func:`rank1.generate.budget_forced_greedy`, which feeds the left-padded prompts in one prefill and then
one token per step) a forward pass over more than one position is the prefill, where only the last
position is steered; every later step is steered whole. Teacher-forced passes give the first steered
position per row (``start_B``). ``tests/test_interventions.py`` checks both agree.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from rank1 import constants as K
from rank1.artifacts import read_json
from rank1.batching import pad_ids
from rank1.capture import decoder_layers
from rank1.hooks import add_hooks, add_to_outputs, edit_adapter_activations
from rank1.lora import AdapterSite
from rank1.metrics import kl_per_token

MODES = ("offset", "scale", "vector")
RESIDUAL_WRITERS = ("o_proj", "down_proj")
MARKER_RE = re.compile(r"\bwait\b|\bverif\w*|\bcheck\w*|\bbacktrack\w*|\bhmm\b", re.IGNORECASE)


@dataclass(frozen=True)
class Steer:
    """One setting: ``mode`` offset | scale (the scalar of ``site``) or vector (B of ``site`` added after
    its layer), with magnitude ``m`` in natural units (std of the scalar, or mean residual norm)."""

    site: int
    mode: str
    m: float


def steered_positions(T: int, start_B: torch.Tensor | None, device) -> torch.Tensor:
    """[B or 1, T] mask of steered positions: ``t >= start_B[b]``; in generation (``start_B`` None) the
    last position of a multi-position (prefill) pass, or the single position of a decoding step."""
    t_T = torch.arange(T, device=device)
    if start_B is None:
        return (t_T >= T - 1)[None]
    return t_T[None] >= start_B.to(device)[:, None]


@contextmanager
def steering(sites: list[AdapterSite], steer: Steer, std_S: torch.Tensor, layer_norm_L: torch.Tensor,
             layers: list[torch.nn.Module], start_B: torch.Tensor | None = None) -> Iterator[None]:
    """Within the block the model is steered by ``steer`` (see the module docstring)."""
    if steer.mode not in MODES:
        raise ValueError(f"unknown steering mode {steer.mode!r}; choose from {MODES}")
    site = sites[steer.site]
    if steer.mode == "vector":
        if site.proj not in RESIDUAL_WRITERS:
            raise ValueError(f"layer {site.layer} {site.proj}: its B does not write to the residual stream; "
                             f"vector steering takes {RESIDUAL_WRITERS}")
        b_D = site.module.lora_B["default"].weight[:, 0].detach()
        vec_D = steer.m * float(layer_norm_L[site.layer]) * b_D / b_D.norm()

        def add(h: torch.Tensor) -> torch.Tensor:
            mask = steered_positions(h.shape[1], start_B, h.device)
            return mask[..., None].to(h.dtype) * vec_D.to(h.dtype)

        with add_to_outputs([(layers[site.layer], add)]):
            yield
        return
    std = float(std_S[steer.site])

    def edit(_i: int, a: torch.Tensor) -> torch.Tensor:
        mask = steered_positions(a.shape[1], start_B, a.device)[..., None]
        new = a + steer.m * std if steer.mode == "offset" else a * steer.m
        return torch.where(mask, new, a)

    with edit_adapter_activations([site], edit):
        yield


@torch.inference_mode()
def residual_norms(model: torch.nn.Module, ids_list: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean ||residual|| after each layer [L], mean ||MLP output|| of each layer [L]) over the tokens of
    ``ids_list`` (one sequence per forward pass)."""
    layers = decoder_layers(model)
    sums = torch.zeros(2, len(layers), dtype=torch.float64)
    count = 0

    def tap(row: int, j: int):
        def fn(_m, _i, output):
            h = output[0] if isinstance(output, tuple) else output
            sums[row, j] += h[0].double().norm(dim=-1).sum().cpu()
        return fn

    hooks = [(layer, tap(0, j)) for j, layer in enumerate(layers)]
    hooks += [(layer.mlp, tap(1, j)) for j, layer in enumerate(layers)]
    device = next(model.parameters()).device
    with add_hooks(hooks):
        for ids in ids_list:
            model(input_ids=torch.tensor([ids], device=device))
            count += len(ids)
    return (sums / max(count, 1)).float().unbind(0)


def site_moments(topk_folder: Path) -> tuple[list[dict], torch.Tensor, torch.Tensor, dict]:
    """(sites, mean_S, std_S, identity) of each adapter's scalar over the stage-2 corpus, from the
    top-k artifact of 2.1 (it keeps per-site moments; only those two tensors are read)."""
    for name in (K.TOPK_TENSORS, K.CONFIG_JSON):
        if not (topk_folder / name).is_file():
            raise FileNotFoundError(f"{topk_folder} holds no top-k artifact ({name} missing): make it with "
                                    f"2_lora_activation_interp/2.1_precompute_lora_topk.py, or pass --topk DIR")
    meta = read_json(topk_folder / K.CONFIG_JSON)
    with safe_open(str(topk_folder / K.TOPK_TENSORS), framework="pt") as f:
        mean_S, std_S = f.get_tensor("mean_S").float(), f.get_tensor("std_S").float()
    return meta["sites"], mean_S, std_S, meta.get("identity", {})


# ---------------------------------------------------------------- behaviour measures


def marker_rate(text: str, n_tokens: int) -> float:
    """Verification / backtracking markers ("Wait", "verify", "check", ...) per 100 generated tokens."""
    return 100.0 * len(MARKER_RE.findall(text)) / max(n_tokens, 1)


def repetition(ids: list[int], n: int = 4) -> float:
    """Share of repeated n-grams: 1 - distinct n-grams / n-grams (0 when shorter than n + 1)."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return 0.0 if len(grams) < 2 else 1.0 - len(set(grams)) / len(grams)


def onset(ms: list[float], values: list[float], threshold: float) -> float | None:
    """The smallest |m| whose value exceeds ``threshold`` (None if none does)."""
    over = [abs(m) for m, v in zip(ms, values, strict=True) if v is not None and v > threshold]
    return min(over) if over else None


def summarise(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


# ---------------------------------------------------------------- one setting


@torch.inference_mode()
def teacher_forced_kl(model, ctx, seqs: list[list[int]], starts: list[int], batch_size: int = 8) -> list[float]:
    """Mean KL(P_unsteered || P_steered) over the positions ``>= start`` of each sequence (those that
    predict generated tokens). ``ctx(start_B)`` steers the rows whose start is not beyond the sequence:
    each batch holds the sequences twice, unsteered (start past the end) and steered."""
    device = next(model.parameters()).device
    out = []
    for lo in range(0, len(seqs), batch_size):
        chunk, st = seqs[lo:lo + batch_size], starts[lo:lo + batch_size]
        T, n = max(len(x) for x in chunk), len(chunk)
        ids_BT, mask_BT = pad_ids(chunk + chunk, 0)
        start_B = torch.tensor([T + 1] * n + st)
        with ctx(start_B):
            logits = model(input_ids=ids_BT.to(device), attention_mask=mask_BT.to(device)).logits
        for b, (x, s0) in enumerate(zip(chunk, st, strict=True)):
            out.append(float(kl_per_token(logits[b, s0:len(x) - 1], logits[n + b, s0:len(x) - 1]).mean()))
    return out


def behaviour(gens, golds: list[str], grade, tokenizer) -> dict:
    """Per-generation measures and their means: accuracy, marker rate, thinking length, repetition."""
    rows = []
    for g, gold in zip(gens, golds, strict=True):
        ids = tokenizer(g.thinking, add_special_tokens=False)["input_ids"]
        rows.append({"correct": bool(grade(g.answer, gold)[1]),
                     "markers_per_100": marker_rate(g.thinking, g.think_tokens),
                     "has_marker": bool(MARKER_RE.search(g.thinking)), "think_tokens": g.think_tokens,
                     "repetition": repetition(ids)})
    return {k: summarise([float(r[k]) for r in rows]) for k in rows[0]}


def onset_table(records: list[dict], sites: list[AdapterSite], std_S: torch.Tensor, norm_L: torch.Tensor,
                mlp_norm_L: torch.Tensor, rslora: float, threshold: float) -> list[dict]:
    """Per (adapter, mode): the KL onset (smallest |m| with mean KL > ``threshold``) and ``paper_m``, the
    authors' recipe (raw B x 50 x sqrt(mean MLP-output norm of the layer)) in the same units: for an
    offset, ``50 sqrt(n) / (rslora x std)`` natural std (the offset adds ``m std rslora B``); for the unit
    vector, ``50 sqrt(n) ||B|| / residual norm``. None for ``scale``, which has no additive size."""
    out = []
    for layer, proj, mode in dict.fromkeys((r["layer"], r["proj"], r["mode"]) for r in records):
        rows = sorted((r for r in records if (r["layer"], r["proj"], r["mode"]) == (layer, proj, mode)),
                      key=lambda r: abs(r["m"]))
        s = next(i for i, x in enumerate(sites) if (x.layer, x.proj) == (layer, proj))
        b_norm = float(sites[s].module.lora_B["default"].weight.norm())
        paper = 50 * math.sqrt(float(mlp_norm_L[layer]))
        paper_m = (paper / (rslora * float(std_S[s])) if mode == "offset" else
                   paper * b_norm / float(norm_L[layer]) if mode == "vector" else None)
        out.append({"adapter": f"L{layer}.{proj}", "layer": layer, "proj": proj, "mode": mode,
                    "kl_onset": onset([r["m"] for r in rows], [r["kl"] for r in rows], threshold),
                    "paper_m": paper_m, "std": float(std_S[s]), "b_norm": b_norm})
    return out
