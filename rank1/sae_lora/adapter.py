"""Stage 5: a low-rank finetune that lives in an SAE's latent space (SAE-LoRA).

At one decoder layer ``l`` the residual stream ``h`` entering it is encoded by a frozen SAE into latents ``f``;
the adapter adds a rank-r update in latent space::

    delta_f = ((f @ A_hat) * s) @ B_hat         A (d_sae x r), B (r x d_sae), s (r)

where ``A_hat[:, j] = A[:, j] / ||A[:, j]||_2`` (the read direction of component j) and
``B_hat[j, :] = B[j, :] / ||B[j, :]||_2`` (its write direction): each rank component reads one unit vector of
latents and writes one, with the free scale ``s[j]``. The seed text says "A rows normalised, B columns
normalised"; read literally for r = 1 that normalises every scalar entry of A (a row of a d_sae x 1 matrix) to
+-1, i.e. sign vectors with no magnitudes at all. This module normalises each component over the d_sae axis
instead, which is what makes "component j reads latents X, Y and writes Z" a meaningful statement.

Two hook modes (:func:`apply_adapter`):

- ``resid_add``: ``h + delta_f @ W_dec`` (the decoder without its bias): the SAE's reconstruction error never
  enters, and with ``delta_f = 0`` the model is exactly the base model;
- ``sae_replace``: ``decode(f + delta_f)``, plus the SAE error ``h - decode(f)`` when ``keep_error`` (then, the
  decoder being affine, it equals ``resid_add`` exactly), without it otherwise (the model then runs on the
  reconstruction and pays the SAE's loss gap even with ``delta_f = 0``).

The penalty (:func:`penalty`) on top of the next-token cross-entropy of the assistant tokens:

- ``raw`` (the seed's): ``|A|_1 + |B|_1`` of the raw parameters. The forward pass only sees ``A_hat``, ``B_hat``
  and ``s``, so ``(cA, cB)`` computes the same function for every ``c > 0`` while the penalty scales with ``c``:
  it is minimised by shrinking A and B uniformly, which leaves the directions (what is read and written) free.
- ``normalized``: ``|A_hat|_1 + |B_hat|_1``, an L1/L2 ratio per component; invariant to that rescaling and
  smallest (1 per direction) for a one-hot direction, so it can only be lowered by concentrating the mass.

Sparsity of a direction (:func:`sparsity_metrics`): Hoyer's measure (1 - normalised L1/L2; 1 one-hot,
0 flat), the share of the L1 mass in the top 10 latents, and the Gini coefficient of the magnitudes.

The residual entering ``l`` comes from the frozen layers below it, once per dataset (:func:`residual_cache`,
float32 in host memory, moved to the model's device a batch at a time); only layers ``l..L-1`` run from there
(:func:`suffix_ce`, :class:`rank1.decoder.LayerRunner`), in the model's dtype. The SAE and the adapter compute in
float32 on the model's device. The training loop is :mod:`rank1.sae_lora.train`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from rank1.batching import labelled_positions, pad_items
from rank1.data import tokenize_record
from rank1.metrics import token_ce
from rank1.sae import alive_latents
from rank1.sae_lora.config import MODES, PENALTIES

EPS = 1e-12


class SaeLoraError(ValueError):
    """Inputs of stage 5 that cannot be used as asked (the message says why and what to do)."""


# ---------------------------------------------------------------- the adapter


class SaeLora(torch.nn.Module):
    """Rank-r update in SAE latent space: read directions ``A`` (d_sae x r), write directions ``B``
    (r x d_sae), scales ``s`` (r). See the module docstring."""

    def __init__(self, d_sae: int, rank: int = 1, init_std: float = 1.0, seed: int = 0,
                 support_F: torch.Tensor | None = None):
        """A and B drawn from N(0, init_std) with ``seed``; with ``support_F`` (bool [d_sae]) the same draw is kept
        on those latents only and zeroed elsewhere (alive-only initialisation); s starts at 0."""
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        A = torch.randn(d_sae, rank, generator=g) * init_std
        B = torch.randn(rank, d_sae, generator=g) * init_std
        if support_F is not None:
            if support_F.shape != (d_sae,) or not support_F.any():
                raise SaeLoraError(f"the initialisation support must be a non-empty mask of {d_sae} latents")
            A, B = A * support_F[:, None], B * support_F[None, :]
        self.A = torch.nn.Parameter(A)
        self.B = torch.nn.Parameter(B)
        self.s = torch.nn.Parameter(torch.zeros(rank))

    def directions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A_hat [d_sae, r], B_hat [r, d_sae]): each component's read and write direction, unit L2 norm."""
        A_hat = self.A / self.A.norm(dim=0, keepdim=True).clamp(min=EPS)
        B_hat = self.B / self.B.norm(dim=1, keepdim=True).clamp(min=EPS)
        return A_hat, B_hat

    def forward(self, f_NF: torch.Tensor) -> torch.Tensor:
        """The latent update ``delta_f`` [..., d_sae] of latents ``f`` [..., d_sae]."""
        A_hat, B_hat = self.directions()
        return ((f_NF @ A_hat) * self.s) @ B_hat


def apply_adapter(h_BTD: torch.Tensor, sae, adapter: SaeLora, mode: str, keep_error: bool = True) -> torch.Tensor:
    """The residual stream after the hook (see the module docstring for the two modes)."""
    f = sae.encode(h_BTD)
    delta = adapter(f)
    if mode == "resid_add":
        return h_BTD + delta @ sae.W_dec
    if mode != "sae_replace":
        raise SaeLoraError(f"unknown hook mode {mode!r}; one of {MODES}")
    out = sae.decode(f + delta)
    return out + (h_BTD - sae.decode(f)) if keep_error else out


def penalty(adapter: SaeLora, kind: str) -> torch.Tensor:
    """L1 of the raw parameters (``raw``) or of the unit-norm directions (``normalized``)."""
    if kind == "raw":
        return adapter.A.abs().sum() + adapter.B.abs().sum()
    if kind == "normalized":
        A_hat, B_hat = adapter.directions()
        return A_hat.abs().sum() + B_hat.abs().sum()
    raise SaeLoraError(f"unknown penalty {kind!r}; one of {PENALTIES}")


def hoyer(v_N: np.ndarray) -> float:
    """Hoyer's sparsity of ``|v|``: (sqrt(n) - L1/L2) / (sqrt(n) - 1); 1 for one-hot, 0 for equal magnitudes."""
    v = np.abs(np.asarray(v_N, dtype=np.float64))
    n = len(v)
    return float((math.sqrt(n) - v.sum() / max(np.sqrt((v ** 2).sum()), EPS)) / (math.sqrt(n) - 1))


def gini(v_N: np.ndarray) -> float:
    """Gini coefficient of ``|v|``: 0 for equal magnitudes, (n-1)/n (its maximum) for one-hot."""
    v = np.sort(np.abs(np.asarray(v_N, dtype=np.float64)))
    n, total = len(v), v.sum()
    if total <= 0:
        return 0.0
    return float((2 * np.arange(1, n + 1) - n - 1) @ v / (n * total))


def top_share(v_N: np.ndarray, k: int = 10) -> float:
    """Share of the L1 mass of ``v`` in its ``k`` largest magnitudes."""
    v = np.abs(np.asarray(v_N, dtype=np.float64))
    return float(np.sort(v)[::-1][:k].sum() / max(v.sum(), EPS))


def sparsity_metrics(v_N: np.ndarray) -> dict[str, float]:
    return {"hoyer": hoyer(v_N), "gini": gini(v_N), "top10_share": top_share(v_N, 10)}


# ---------------------------------------------------------------- data and the residual cache


def tokenize_items(tokenizer, records: list[dict[str, Any]]) -> list[dict[str, list[int]]]:
    return [tokenize_record(tokenizer, r) for r in records]


def placement(runner) -> tuple[torch.device, torch.dtype]:
    """(device, weight dtype) of the model ``runner`` drives."""
    w = runner.body.embed_tokens.weight
    return w.device, w.dtype


def check_layer(runner, layer: int) -> None:
    if not 0 <= layer < runner.num_layers:
        raise SaeLoraError(f"--layer {layer} is out of range: the model has decoder layers 0..{runner.num_layers - 1}")


@torch.no_grad()
def residual_cache(runner, items: list[dict], layer: int, pad_id: int, batch: int = 8,
                   desc: str = "residual cache") -> list[torch.Tensor]:
    """Per item, the residual stream entering ``layer`` ([T, D], float32, in host memory) from the frozen layers
    below it."""
    check_layer(runner, layer)
    device, _ = placement(runner)
    out: list[torch.Tensor] = []
    for i in tqdm(range(0, len(items), batch), desc=desc, unit="batch", dynamic_ncols=True):
        group = items[i:i + batch]
        ids, mask, _ = pad_items(group, pad_id)
        ctx = runner.prepare(ids.to(device), mask.to(device))
        h, _ = runner.run(ctx.h0_BTD, ctx, 0, layer)
        out += [h[r, :len(it["input_ids"])].to("cpu", torch.float32, copy=True) for r, it in enumerate(group)]
    return out


@torch.no_grad()
def alive_on(sae, h_cache: list[torch.Tensor], skip: int = 1) -> torch.Tensor:
    """Bool [d_sae]: the latents alive on the cached residuals (:func:`rank1.sae.alive.alive_latents`, the window
    being every token; the first ``skip`` tokens of each sequence, the opening token, left out)."""
    return alive_latents((sae.encode(h[skip:].to(sae.device, torch.float32)) for h in h_cache), sae.cfg.d_sae)


def stack_cached(h_list: list[torch.Tensor], device: torch.device | str = "cpu") -> torch.Tensor:
    """Cached residuals [T_i, D] right-padded with zeros into one float32 batch [B, T, D] on ``device``."""
    n = max(len(h) for h in h_list)
    out = torch.zeros(len(h_list), n, h_list[0].shape[-1])
    for r, h in enumerate(h_list):
        out[r, :len(h)] = h
    return out.to(device)


def suffix_ce(runner, h_BTD: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
              layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: (summed next-token CE of its labelled tokens [B], their count [B]), running layers
    ``layer..L-1`` from ``h`` (cast to the model's dtype); the CE is the float32 training loss (differentiable),
    on the model's device."""
    device, dtype = placement(runner)
    ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
    ctx = runner.prepare(ids, mask)
    out, _ = runner.run(h_BTD.to(device, dtype), ctx, layer)
    b, t = labelled_positions(labels)
    ce = token_ce(runner.logits(out[b, t]), labels[b, t + 1], dtype=torch.float32)
    rows = torch.zeros(len(ids), dtype=ce.dtype, device=device).index_add(0, b, ce)
    return rows, torch.bincount(b, minlength=len(ids))
