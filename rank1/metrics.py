"""Pure numeric functions shared by the stages: number normalisation, per-token KL and cross-entropy,
recovery.

Every measured KL and cross-entropy is computed in float64 from the model's logits, chunk by chunk
from hidden states so that the [positions, vocabulary] buffers stay bounded, with one reference
distribution compared with many others (an ablation sweep); torch's ``kl_div`` and ``cross_entropy``
compute in their inputs' dtype on whole tensors, which is why these are written here. The one
float32 cross-entropy (a training loss) is torch's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def normalize_number(text: str) -> str | None:
    """Canonical string of a number: no commas, no leading zeros, no trailing ``.0``."""
    text = text.replace(",", "").strip()
    try:
        value = float(text)
    except ValueError:
        return None
    if value.is_integer():
        return str(int(value))
    return repr(value)


def log_probs64(logits_NV: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the last axis in float64 (the precision every KL here is computed in)."""
    return torch.log_softmax(logits_NV.double(), dim=-1)


def kl_from_log_probs(logp_p_NV: torch.Tensor, logp_q_NV: torch.Tensor,
                      p_NV: torch.Tensor | None = None) -> torch.Tensor:
    """KL(P || Q) = sum_v p_v (log p_v - log q_v) per row, from float64 log-probabilities; P first.
    ``p_NV`` (= exp(logp_p_NV)) may be passed when P is compared with many Q."""
    p_NV = logp_p_NV.exp() if p_NV is None else p_NV
    return (p_NV * (logp_p_NV - logp_q_NV)).sum(-1)


def kl_to_logits(logp_p_NV: torch.Tensor, logits_q_NV: torch.Tensor, p_NV: torch.Tensor | None = None,
                 neg_entropy_N: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(P || Q) per row for Q = softmax(logits_q), in float64, without materialising log Q:
    KL = sum_v p_v log p_v - sum_v p_v z_v + logsumexp_v z_v (about twice as fast as the log-softmax
    route when one P meets many Q). Returns (KL, logsumexp z); log Q(v) = z_v - logsumexp z.
    ``p_NV`` and ``neg_entropy_N`` (= sum_v p_v log p_v) may be passed precomputed."""
    p_NV = logp_p_NV.exp() if p_NV is None else p_NV
    neg_entropy_N = (p_NV * logp_p_NV).sum(-1) if neg_entropy_N is None else neg_entropy_N
    z_NV = logits_q_NV.double()
    lse_N = torch.logsumexp(z_NV, dim=-1)
    return neg_entropy_N - torch.einsum("nv,nv->n", p_NV, z_NV) + lse_N, lse_N


def kl_per_token(logits_p_BTV: torch.Tensor, logits_q_BTV: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) = sum_v p_v (log p_v - log q_v) per position (the logits' shape without the vocabulary
    axis), in float64, from logits of any dtype; P is the first argument. For a steered or ablated model
    call it as ``kl_per_token(reference_logits, changed_logits)``: the information lost when the changed
    model stands in for the reference."""
    return kl_from_log_probs(log_probs64(logits_p_BTV), log_probs64(logits_q_BTV))


TOKEN_CE_DTYPES = (torch.float64, torch.float32)


def token_ce(logits_NV: torch.Tensor, targets_N: torch.Tensor, lse_N: torch.Tensor | None = None,
             dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Cross-entropy -log softmax(logits_NV[n])[targets_N[n]] per row, shape [N].

    ``dtype=torch.float64`` (every measurement): ``logsumexp(z) - z[target]`` on the logits cast to
    float64; ``lse_N`` (float64 ``logsumexp(z)`` per row) may be passed when already computed.
    ``dtype=torch.float32`` (a training loss, differentiable): torch's ``cross_entropy`` on the logits
    cast to float32."""
    if dtype == torch.float32:
        if lse_N is not None:
            raise ValueError("lse_N is for the float64 cross-entropy")
        return torch.nn.functional.cross_entropy(logits_NV.float(), targets_N, reduction="none")
    if dtype != torch.float64:
        raise ValueError(f"dtype must be one of {TOKEN_CE_DTYPES}, got {dtype}")
    lse_N = torch.logsumexp(logits_NV.double(), dim=-1) if lse_N is None else lse_N
    return lse_N - logits_NV.gather(-1, targets_N[:, None])[:, 0].double()


KL_ROWS = 16  # rows per float64 KL / cross-entropy step of head_kl_ce


@dataclass
class Reference:
    """A reference distribution P_ref at N positions: float64 log-probs [N, V], probs [N, V] and negative
    entropy sum_v p_v log p_v [N], kept to compare many others with it (:func:`head_kl_ce`)."""

    logp_NV: torch.Tensor
    p_NV: torch.Tensor
    neg_entropy_N: torch.Tensor

    @classmethod
    def from_hidden(cls, head: Callable[[torch.Tensor], torch.Tensor], h_ND: torch.Tensor,
                    chunk: int) -> Reference:
        """From hidden states [N, D] whose logits are ``head(h)``, ``chunk`` rows at a time (N >= 1)."""
        logp_NV = None
        for a in range(0, len(h_ND), chunk):
            logp = log_probs64(head(h_ND[a:a + chunk]))
            if logp_NV is None:
                logp_NV = torch.empty((len(h_ND), logp.shape[-1]), dtype=torch.float64, device=h_ND.device)
            logp_NV[a:a + chunk] = logp
        if logp_NV is None:
            raise ValueError("a reference distribution needs one position at least")
        p_NV = logp_NV.exp()
        return cls(logp_NV, p_NV, (p_NV * logp_NV).sum(-1))

    def tensors(self) -> list[torch.Tensor]:
        return [self.logp_NV, self.p_NV, self.neg_entropy_N]


def head_kl_ce(head: Callable[[torch.Tensor], torch.Tensor], h_ND: torch.Tensor, targets_N: torch.Tensor,
               ref: Reference | None = None, chunk: int = 256,
               rows: int = KL_ROWS) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Per position n of the hidden states ``h_ND`` [N, D], with P_n = softmax(head(h_ND[n])):
    ``(kl_N, ce_N)``, both float64 [N]: KL(P_ref,n || P_n) against ``ref`` (None without one) and the
    cross-entropy of ``targets_N[n]`` under P_n (:func:`token_ce`).

    ``head`` (final norm and LM head) runs ``chunk`` rows at a time, one read of its weights per chunk;
    KL and cross-entropy ``rows`` rows at a time (the default keeps the [rows, vocab] float64 buffers in
    the CPU's cache: about 2.5x faster than whole chunks on a 49k vocabulary)."""
    kl, ce = [], []
    for a in range(0, len(h_ND), chunk):
        end = min(a + chunk, len(h_ND))
        logits = head(h_ND[a:end])
        for b in range(a, end, rows):
            c = slice(b, min(b + rows, end))
            z = logits[c.start - a:c.stop - a]
            lse_n = None
            if ref is not None:
                kl_n, lse_n = kl_to_logits(ref.logp_NV[c], z, ref.p_NV[c], ref.neg_entropy_N[c])
                kl.append(kl_n)
            ce.append(token_ce(z, targets_N[c], lse_n))
    if not ce:
        empty = torch.zeros(0, dtype=torch.float64, device=h_ND.device)
        return (None if ref is None else empty), empty
    return (None if ref is None else torch.cat(kl)), torch.cat(ce)


def recovery(variant: np.ndarray, base: np.ndarray, full: np.ndarray) -> float | None:
    """Share of the full finetune's gain that a variant recovers, from per-unit scores (one per problem or
    document): (mean variant - mean base) / (mean full - mean base); None when full and base are equal."""
    gap = full.mean() - base.mean()
    if gap == 0:
        return None
    return float((variant.mean() - base.mean()) / gap)
