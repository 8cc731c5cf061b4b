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

The random control (``Steer.direction == "random"``): the same setting with B replaced by a random vector of
the same norm at the same site (:func:`random_direction`, seeded by (seed, layer, projection) so a site's
control is the same vector in every setting and every run). For a scalar setting the change the edit makes to
the scalar is written along that vector instead of B (a hook on ``lora_B`` adds ``(a' - a) R``, so the trained
``B a`` is untouched); for a vector setting the unit random vector is added instead of unit B. Without it an
onset of "30-100 natural std" could be a property of the site and the norm, not of the LoRA's direction.

The onset (the smallest |m| whose mean KL over problems exceeds the threshold) gets a percentile bootstrap CI
over problems (:func:`onset_ci`): problems are resampled once per resample for every magnitude of a curve,
and a resample whose curve never crosses counts as "beyond the sweep" (an upper bound of None).
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
DIRECTIONS = ("lora", "random")  # steer along the trained B, or the random control of the same norm
RESIDUAL_WRITERS = ("o_proj", "down_proj")
MARKER_RE = re.compile(r"\bwait\b|\bverif\w*|\bcheck\w*|\bbacktrack\w*|\bhmm\b", re.IGNORECASE)


@dataclass(frozen=True)
class Steer:
    """One setting: ``mode`` offset | scale (the scalar of ``site``) or vector (B of ``site`` added after
    its layer), with magnitude ``m`` in natural units (std of the scalar, or mean residual norm), along
    ``direction``: the trained B (``lora``) or a random vector of B's norm at the same site (``random``)."""

    site: int
    mode: str
    m: float
    direction: str = "lora"


def random_direction(like: torch.Tensor, seed: int, layer: int, proj: str) -> torch.Tensor:
    """A Gaussian random tensor of ``like``'s shape, dtype and device with ``like``'s (Frobenius) norm, drawn on
    the CPU from ``numpy.random.default_rng([seed, layer, index of proj])``: the same for a (seed, site) on
    every machine, another one for another seed or site."""
    rng = np.random.default_rng([seed, layer, K.PROJECTIONS.index(proj)])
    r = torch.from_numpy(rng.standard_normal(tuple(like.shape))).to(torch.float64)
    r = r * (float(like.detach().double().norm()) / float(r.norm()))
    return r.to(dtype=like.dtype, device=like.device)


def steered_positions(T: int, start_B: torch.Tensor | None, device) -> torch.Tensor:
    """[B or 1, T] mask of steered positions: ``t >= start_B[b]``; in generation (``start_B`` None) the
    last position of a multi-position (prefill) pass, or the single position of a decoding step."""
    t_T = torch.arange(T, device=device)
    if start_B is None:
        return (t_T >= T - 1)[None]
    return t_T[None] >= start_B.to(device)[:, None]


def steer_direction(site: AdapterSite, direction: str, seed: int) -> torch.Tensor:
    """[D, r] the vector a setting writes along: B of ``site``, or its random control (:func:`random_direction`)."""
    b_DR = site.module.lora_B["default"].weight.detach()
    return b_DR if direction == "lora" else random_direction(b_DR, seed, site.layer, site.proj)


@contextmanager
def steering(sites: list[AdapterSite], steer: Steer, std_S: torch.Tensor, layer_norm_L: torch.Tensor,
             layers: list[torch.nn.Module], start_B: torch.Tensor | None = None, seed: int = 0) -> Iterator[None]:
    """Within the block the model is steered by ``steer`` (see the module docstring); ``seed`` draws the
    random control's vector."""
    if steer.mode not in MODES:
        raise ValueError(f"unknown steering mode {steer.mode!r}; choose from {MODES}")
    if steer.direction not in DIRECTIONS:
        raise ValueError(f"unknown steering direction {steer.direction!r}; choose from {DIRECTIONS}")
    site = sites[steer.site]
    if steer.mode == "vector":
        if site.proj not in RESIDUAL_WRITERS:
            raise ValueError(f"layer {site.layer} {site.proj}: its B does not write to the residual stream; "
                             f"vector steering takes {RESIDUAL_WRITERS}")
        b_D = steer_direction(site, steer.direction, seed)[:, 0]
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

    if steer.direction == "lora":
        with edit_adapter_activations([site], edit):
            yield
        return
    r_DR = steer_direction(site, "random", seed)

    def along_random(_m, inputs, output):  # lora_B's input is the scalar a; B a stays, (a' - a) R is added
        a = inputs[0]
        return output + (edit(0, a) - a).to(output.dtype) @ r_DR.T.to(output.dtype)

    with add_hooks([(site.module.lora_B["default"], along_random)]):
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


def onset_ci(ms: list[float], kl_PM: np.ndarray, threshold: float, n_resamples: int = 2000, level: float = 0.95,
             seed: int = 0) -> dict:
    """:func:`onset` of the mean-over-problems curve (``kl_PM``: P problems x M magnitudes ``ms``) with a
    percentile bootstrap CI over problems: each resample draws P problems with replacement, averages their
    curves and takes its onset; a resample that never crosses is beyond the sweep (infinite). The bounds are
    order statistics (``inverted_cdf``), so always swept magnitudes; None means beyond the sweep.
    ``beyond_share`` is the share of resamples without an onset."""
    kl_PM = np.asarray(kl_PM, dtype=np.float64)
    if kl_PM.ndim != 2 or kl_PM.shape[1] != len(ms) or len(kl_PM) == 0:
        raise ValueError(f"onset_ci needs [problems, {len(ms)} magnitudes] values, got shape {kl_PM.shape}")
    order = np.argsort(np.abs(ms), kind="stable")
    abs_M = np.abs(np.asarray(ms, dtype=np.float64))[order]
    rng = np.random.default_rng(seed)
    idx_RP = rng.integers(0, len(kl_PM), size=(n_resamples, len(kl_PM)))
    over_RM = kl_PM[:, order][idx_RP].mean(axis=1) > threshold
    onset_R = np.where(over_RM.any(axis=1), abs_M[over_RM.argmax(axis=1)], np.inf)
    lo, hi = np.quantile(onset_R, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    point = onset(list(ms), kl_PM.mean(axis=0).tolist(), threshold)

    def finite(x: float) -> float | None:
        return float(x) if np.isfinite(x) else None

    return {"value": point, "lo": finite(lo), "hi": finite(hi), "level": level, "n": len(kl_PM),
            "beyond_share": float(np.isinf(onset_R).mean())}


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


def curve_onset(rows: list[dict], threshold: float, n_resamples: int, seed: int) -> dict | None:
    """The KL onset with its CI over problems (:func:`onset_ci`) of one curve's settings (``kl_per_problem``
    each); None for settings saved without per-problem KL."""
    if not rows or any("kl_per_problem" not in r for r in rows):
        return None
    return onset_ci([r["m"] for r in rows], np.array([r["kl_per_problem"] for r in rows]).T, threshold,
                    n_resamples, seed=seed)


def onset_table(records: list[dict], sites: list[AdapterSite], std_S: torch.Tensor, norm_L: torch.Tensor,
                mlp_norm_L: torch.Tensor, rslora: float, threshold: float, n_resamples: int = 2000,
                random_seed: int | None = None) -> list[dict]:
    """Per (adapter, mode): the KL onset (smallest |m| with mean KL > ``threshold``) of the LoRA direction and,
    where the sweep has them, of the random control (``random_kl_onset``), each with its CI over problems
    (``*_ci``), and ``paper_m``, the authors' recipe (raw B x 50 x sqrt(mean MLP-output norm of the layer)) in
    the same units: for an offset, ``50 sqrt(n) / (rslora x std)`` natural std (the offset adds
    ``m std rslora B``); for the unit vector, ``50 sqrt(n) ||B|| / residual norm``. None for ``scale``, which
    has no additive size."""
    out = []
    for layer, proj, mode in dict.fromkeys((r["layer"], r["proj"], r["mode"]) for r in records):
        curves = {d: sorted((r for r in records if (r["layer"], r["proj"], r["mode"]) == (layer, proj, mode)
                             and r.get("direction", "lora") == d), key=lambda r: abs(r["m"])) for d in DIRECTIONS}
        rows, control = curves["lora"], curves["random"]
        s = next(i for i, x in enumerate(sites) if (x.layer, x.proj) == (layer, proj))
        b_norm = float(sites[s].module.lora_B["default"].weight.detach().norm())
        paper = 50 * math.sqrt(float(mlp_norm_L[layer]))
        paper_m = (paper / (rslora * float(std_S[s])) if mode == "offset" else
                   paper * b_norm / float(norm_L[layer]) if mode == "vector" else None)
        row = {"adapter": f"L{layer}.{proj}", "layer": layer, "proj": proj, "mode": mode,
               "kl_onset": onset([r["m"] for r in rows], [r["kl"] for r in rows], threshold) if rows else None,
               "kl_onset_ci": curve_onset(rows, threshold, n_resamples, seed=0),
               "paper_m": paper_m, "std": float(std_S[s]), "b_norm": b_norm}
        if control:
            row |= {"random_kl_onset": onset([r["m"] for r in control], [r["kl"] for r in control], threshold),
                    "random_kl_onset_ci": curve_onset(control, threshold, n_resamples, seed=0),
                    "random_seed": random_seed}
        out.append(row)
    return out
