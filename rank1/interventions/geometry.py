"""Geometry of the saved rank-1 factors, from the adapter file alone: norms of A and B per layer and
projection, layer x layer cosines of one factor across layers, and cross-projection cosines.

Which vectors can be compared: the ones that live in one space. A of q, k, v, gate, up reads the
(normed) residual stream and B of o, down writes to it, all in d_model; B of gate, up and A of down live
in the MLP's hidden space (d_ff). So "up A vs down B" compares what an MLP adapter reads with what the
layer's down adapter writes, both in d_model.

Sign: ``B A`` is unchanged when A and B both flip sign, so the sign of one factor alone is arbitrary.
Every matrix here is |cos| unless asked for signed values, which then use the trained signs (those the
activations use; see :data:`rank1.activations.dashboard.SIGN_NOTE`). The chance level of |cos| between two
independent random directions in R^d (:func:`random_abs_cos`) is written beside every matrix.

Norms and across-layer cosines come from :mod:`rank1.lora` (:func:`~rank1.lora.factor_norms`,
:func:`~rank1.lora.across_layers`), which the stage-2 dashboard draws with too.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from rank1.constants import PROJECTIONS
from rank1.lora import Vectors, across_layers, cosine_matrix, factor, factor_norms

# Factors compared across layers (the authors' heatmaps) and pairs compared across projections.
ACROSS_LAYERS = (("down_proj", "B"), ("gate_proj", "A"), ("up_proj", "A"))
CROSS_PAIRS = ((("up_proj", "A"), ("down_proj", "B")), (("gate_proj", "A"), ("down_proj", "B")),
               (("up_proj", "A"), ("gate_proj", "A")))


def layers_of(vectors: Vectors) -> list[int]:
    return sorted({layer for layer, _ in vectors})


def projections_of(vectors: Vectors) -> list[str]:
    return [p for p in PROJECTIONS if any(q == p for _, q in vectors)]


def cross_projection(vectors: Vectors, first: tuple[str, str], second: tuple[str, str],
                     layers: list[int]) -> torch.Tensor | None:
    """[L, L] signed cosines: row i is ``first`` at layer i, column j is ``second`` at layer j (the
    diagonal compares the two inside one layer). None when a layer lacks either adapter or the two
    factors live in different spaces."""
    if not all((la, p) in vectors for la in layers for p in (first[0], second[0])):
        return None
    x = torch.stack([factor(vectors, la, *first) for la in layers])
    y = torch.stack([factor(vectors, la, *second) for la in layers])
    if x.shape[1] != y.shape[1]:
        return None
    both = cosine_matrix(torch.cat([x, y]))
    return both[:len(layers), len(layers):]


def random_abs_cos(dim: int) -> float:
    """E|cos| of two independent uniformly random directions in R^dim: Gamma(d/2) / (sqrt(pi)
    Gamma((d+1)/2)) (2/pi for d = 2; about sqrt(2 / (pi d)) for large d)."""
    if dim < 1:
        raise ValueError(f"dimension must be >= 1, got {dim}")
    return math.exp(math.lgamma(dim / 2) - math.lgamma((dim + 1) / 2)) / math.sqrt(math.pi)


def _summary(m_LL: torch.Tensor, absolute: bool, dim: int) -> dict[str, Any]:
    """The matrix as shown (|cos| or signed), its diagonal, mean |cos| on and off it, the chance level."""
    shown = m_LL.abs() if absolute else m_LL
    off = m_LL[~torch.eye(m_LL.shape[0], dtype=torch.bool)].abs()
    return {"matrix": np.round(shown.numpy(), 4).tolist(), "diagonal": np.round(shown.diagonal().numpy(), 4).tolist(),
            "mean_abs_diagonal": float(m_LL.diagonal().abs().mean()),
            "mean_abs_offdiag": float(off.mean()) if off.numel() else None,
            "dim": dim, "random_abs_cos": random_abs_cos(dim)}


def geometry(vectors: Vectors, absolute: bool = True) -> dict[str, Any]:
    """Norms, across-layer cosines of :data:`ACROSS_LAYERS` and cross-projection cosines of
    :data:`CROSS_PAIRS` (|cos| when ``absolute``), each with its chance level."""
    if not vectors:
        raise ValueError("the adapter holds no rank-1 factors")
    layers, projs = layers_of(vectors), projections_of(vectors)
    out: dict[str, Any] = {"layers": layers, "projections": projs, "absolute": absolute,
                           "norms": factor_norms(vectors, layers, projs), "across_layers": {}, "cross_projection": {}}
    for proj, ab in ACROSS_LAYERS:
        m = across_layers(vectors, proj, ab, layers)
        if m is not None:
            dim = factor(vectors, layers[0], proj, ab).numel()
            out["across_layers"][f"{proj} {ab}"] = _summary(m, absolute, dim)
    for first, second in CROSS_PAIRS:
        m = cross_projection(vectors, first, second, layers)
        if m is not None:
            dim = factor(vectors, layers[0], *first).numel()
            out["cross_projection"][f"{first[0]} {first[1]} vs {second[0]} {second[1]}"] = _summary(m, absolute, dim)
    return out
