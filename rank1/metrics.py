"""Pure numeric functions shared by the stages: answer matching, KL, recovery."""

from __future__ import annotations

import re

import torch

from rank1.constants import ANSWER_TAG

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


def extract_answer(completion: str) -> str | None:
    """The model's final numeric answer.

    Looks after the last ``Answer:`` (else after ``<|im_start|>answer``); takes the first number
    there. Without either marker, takes the last number in the completion.
    """
    for marker in ("Answer:", ANSWER_TAG):
        idx = completion.rfind(marker)
        if idx >= 0:
            found = NUMBER_RE.findall(completion[idx + len(marker):])
            if found:
                return normalize_number(found[0])
    found = NUMBER_RE.findall(completion)
    return normalize_number(found[-1]) if found else None


def exact_match(completion: str, gold: str) -> bool:
    pred = extract_answer(completion)
    return pred is not None and pred == normalize_number(gold)


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
    """KL(P || Q) per position (shape of the logits without the vocabulary axis), in float64."""
    return kl_from_log_probs(log_probs64(logits_p_BTV), log_probs64(logits_q_BTV))


def kl_divergence(logits_p_BTV: torch.Tensor, logits_q_BTV: torch.Tensor,
                  mask_BT: torch.Tensor | None = None) -> torch.Tensor:
    """KL(P || Q) = sum_v p_v (log p_v - log q_v) per position, in float64; P is the first argument.

    For ablations call it as ``kl_divergence(full_logits, ablated_logits)``: how much information
    is lost when the ablated model stands in for the full one. Returns the mean over positions
    where ``mask_BT`` is true (all positions if None).
    """
    kl_BT = kl_per_token(logits_p_BTV, logits_q_BTV)
    if mask_BT is None:
        return kl_BT.mean()
    mask_BT = mask_BT.bool()
    return kl_BT[mask_BT].mean()


def recovery(base: float, adapted: float, full: float) -> float:
    """Share of the full finetune's gain that the adapter recovers: (adapted-base)/(full-base)."""
    if full == base:
        raise ValueError(f"full finetune equals base ({full}); recovery is undefined")
    return (adapted - base) / (full - base)
