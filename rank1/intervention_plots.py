"""Figures of the stage-4 scripts, drawn from their saved results only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rank1.constants import PROJECTIONS
from rank1.plots import plt, save_figure


def site_grid(sites: list[dict], values: list[float]) -> tuple[np.ndarray, list[int], list[str]]:
    """[layers, projections] array of one value per adapter (NaN where a layer lacks the projection)."""
    layers = sorted({s["layer"] for s in sites})
    projs = [p for p in PROJECTIONS if any(s["proj"] == p for s in sites)]
    grid = np.full((len(layers), len(projs)), np.nan)
    for s, v in zip(sites, values, strict=True):
        grid[layers.index(s["layer"]), projs.index(s["proj"])] = np.nan if v is None else v
    return grid, layers, projs


def plot_site_grid(sites: list[dict], values: list[float], label: str, stem: Path, signed: bool = False,
                   title: str = "") -> list[Path]:
    """Heatmap of one value per adapter, projections as rows and layers as columns."""
    grid, layers, projs = site_grid(sites, values)
    fig, ax = plt.subplots(figsize=(max(5, 0.25 * len(layers) + 2), 2.8))
    vmax = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
    im = ax.imshow(grid.T, aspect="auto", cmap="RdBu_r" if signed else "viridis",
                   vmin=-vmax if signed else 0, vmax=vmax)
    ax.set_yticks(range(len(projs)), [p.removesuffix("_proj") for p in projs])
    step = max(1, len(layers) // 15)
    ax.set_xticks(range(0, len(layers), step), [str(la) for la in layers[::step]])
    ax.set_xlabel("layer")
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(title or label, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, stem)


def plot_agreement(summary: dict, checks: list[dict], stem: Path) -> list[Path]:
    """Predicted (-attr) vs actual change of the target when zeroing, one panel per kind of check."""
    kinds = list(summary)
    fig, axes = plt.subplots(1, len(kinds), figsize=(4 * len(kinds), 3.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        actual = [v for c in checks for v in c[kind]["actual"]]
        for pred, color in (("predicted", "tab:blue"), ("predicted_exact", "tab:orange")):
            p = [v for c in checks for v in c[kind][pred]]
            r = summary[kind][f"pearson_{pred}"]
            name = "linearised" if pred == "predicted" else "plain gradient"
            ax.scatter(p, actual, s=8, alpha=0.6, color=color,
                       label=f"{name} (r={'-' if r is None else f'{r:.2f}'})")
        lim = max([abs(v) for v in actual] + [1e-9])
        ax.plot([-lim, lim], [-lim, lim], color="gray", lw=0.8, ls="--")
        ax.set_xlabel("predicted change (-grad x act)")
        ax.set_ylabel("actual change when zeroed")
        ax.set_title(kind.replace("_", " "), fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, stem)
