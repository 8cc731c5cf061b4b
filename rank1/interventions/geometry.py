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

The stage-2 dashboard draws its norms and across-layer maps with the same functions.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from rank1.constants import PROJECTIONS
from rank1.lora import cosine_matrix

Vectors = dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]  # (layer, proj) -> (A [in], B [out])

# Factors compared across layers (the authors' heatmaps) and pairs compared across projections.
ACROSS_LAYERS = (("down_proj", "B"), ("gate_proj", "A"), ("up_proj", "A"))
CROSS_PAIRS = ((("up_proj", "A"), ("down_proj", "B")), (("gate_proj", "A"), ("down_proj", "B")),
               (("up_proj", "A"), ("gate_proj", "A")))


def factor(vectors: Vectors, layer: int, proj: str, ab: str) -> torch.Tensor:
    """A (``ab == "A"``) or B of one adapter."""
    if ab not in ("A", "B"):
        raise ValueError(f"factor must be 'A' or 'B', got {ab!r}")
    return vectors[(layer, proj)][0 if ab == "A" else 1]


def layers_of(vectors: Vectors) -> list[int]:
    return sorted({layer for layer, _ in vectors})


def projections_of(vectors: Vectors) -> list[str]:
    return [p for p in PROJECTIONS if any(q == p for _, q in vectors)]


def factor_norms(vectors: Vectors, layers: list[int], projections: list[str]) -> dict[str, dict[str, list]]:
    """{"A"|"B": {proj: [||factor|| per layer, None where the layer has no such adapter]}}."""
    return {ab: {p: [float(factor(vectors, la, p, ab).norm()) if (la, p) in vectors else None for la in layers]
                 for p in projections} for ab in "AB"}


def across_layers(vectors: Vectors, proj: str, ab: str, layers: list[int]) -> torch.Tensor | None:
    """[L, L] signed cosines of one factor between layers; None unless every layer has the adapter."""
    if not all((la, proj) in vectors for la in layers):
        return None
    return cosine_matrix(torch.stack([factor(vectors, la, proj, ab) for la in layers]))


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


def plot_geometry(geo: dict[str, Any], title: str) -> list:
    """Three figures (norms, across-layer heatmaps, cross-projection heatmaps + same-layer curves)."""
    import matplotlib.pyplot as plt

    layers = geo["layers"]
    kind = "|cos|" if geo["absolute"] else "cos (trained signs)"
    vmin = 0.0 if geo["absolute"] else -1.0
    figs = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, ab in zip(axes, "AB", strict=True):
        for p, values in geo["norms"][ab].items():
            ax.plot(layers, [np.nan if v is None else v for v in values], marker=".", lw=1,
                    label=p.removesuffix("_proj"))
        ax.set_xlabel("layer")
        ax.set_ylabel(f"||{ab}||")
        ax.set_yscale("log")
        ax.set_title(f"norm of {ab} by layer", fontsize=9)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    figs.append(("norms", fig))
    for key, label in (("across_layers", "layer x layer"), ("cross_projection", "row layer vs column layer")):
        mats = geo[key]
        if not mats:
            continue
        fig, axes = plt.subplots(1, len(mats), figsize=(4.2 * len(mats), 4), squeeze=False)
        for ax, (name, m) in zip(axes[0], mats.items(), strict=True):
            im = ax.imshow(np.array(m["matrix"]), vmin=vmin, vmax=1.0, cmap="viridis" if geo["absolute"] else "RdBu_r",
                           extent=(layers[0] - .5, layers[-1] + .5, layers[-1] + .5, layers[0] - .5))
            ax.set_title(f"{name}\n{kind}, chance {m['random_abs_cos']:.3f}", fontsize=8)
            ax.set_xlabel("layer")
            ax.set_ylabel("layer")
            fig.colorbar(im, ax=ax, fraction=0.046)
        fig.suptitle(f"{title}: {label}", fontsize=9)
        fig.tight_layout()
        figs.append((key, fig))
    if geo["cross_projection"]:
        fig, ax = plt.subplots(figsize=(6, 3.4))
        for name, m in geo["cross_projection"].items():
            ax.plot(layers, m["diagonal"], marker=".", lw=1, label=name)
        some = next(iter(geo["cross_projection"].values()))
        ax.axhline(some["random_abs_cos"], color="gray", ls="--", lw=0.8, label="random directions")
        ax.set_xlabel("layer")
        ax.set_ylabel(f"{kind} within the layer")
        ax.legend(fontsize=7)
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        figs.append(("cross_projection_same_layer", fig))
    return figs
