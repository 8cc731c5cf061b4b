"""Stage 1 figures, drawn from the saved JSON only (never a model). Each is written as PDF + PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator

from rank1.plots import plt, save_figure

KL_LABEL = "KL(P_full || P_ablated)\n[nats / assistant token]"


def _err(est: dict[str, list], idx=slice(None)) -> tuple[np.ndarray, np.ndarray]:
    """Means and asymmetric error bars from {"mean", "lo", "hi"}."""
    mean, lo, hi = (np.asarray(est[k], dtype=float)[idx] for k in ("mean", "lo", "hi"))
    return mean, np.stack([mean - lo, hi - mean])


def figure1(report: dict[str, Any], stem: Path) -> list[Path]:
    """The paper's Figure 1: per-layer KL bars, the 7 x layers per-adapter heatmap, mean KL by projection."""
    panels = [k for k in ("layer", "adapter", "adapter_mean_by_projection") if k in report]
    if not panels:
        raise ValueError("the results hold neither the layer nor the adapter family: run 1.0 with "
                         "--families layer,adapter")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False,
                             gridspec_kw={"width_ratios": [1.4 if p == "adapter" else 1 for p in panels]})
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "layer":
            lay = report["layer"]
            mean, err = _err(lay["kl"])
            ax.bar(lay["layers"], mean, yerr=err, color="tab:blue", ecolor="0.3", capsize=1.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("layer (all its adapters removed)")
            ax.set_ylabel(KL_LABEL)
            ax.set_title("leave-one-layer-out", fontsize=10)
        elif panel == "adapter":
            ad = report["adapter"]
            grid = np.array([[np.nan if v is None else v for v in row] for row in ad["kl"]["mean"]], dtype=float)
            from matplotlib.colors import LogNorm
            positive = grid[np.isfinite(grid) & (grid > 0)]
            spread = positive.size and positive.max() > positive.min()
            norm = LogNorm(positive.min(), positive.max()) if spread else None
            im = ax.imshow(np.where(grid > 0, grid, np.nan), aspect="auto", cmap="viridis", norm=norm,
                           interpolation="nearest")
            ax.set_yticks(range(len(ad["projections"])), [p.removesuffix("_proj") for p in ad["projections"]])
            step = max(1, round(len(ad["layers"]) / 10))
            ax.set_xticks(range(0, len(ad["layers"]), step), ad["layers"][::step])
            ax.set_xlabel("layer")
            ax.set_title("one adapter removed", fontsize=10)
            fig.colorbar(im, ax=ax, label="KL(P_full || P_ablated)")
        else:
            by = report["adapter_mean_by_projection"]
            mean, err = _err(by["kl"])
            colors = ["tab:orange" if p in ("gate_proj", "up_proj", "down_proj") else "tab:green"
                      for p in by["projections"]]
            ax.bar([p.removesuffix("_proj") for p in by["projections"]], mean, yerr=err, color=colors,
                   ecolor="0.3", capsize=2)
            ax.set_ylabel("mean over layers of single-adapter\n" + KL_LABEL)
            ax.set_title("by projection (attention green, MLP orange)", fontsize=10)
    fig.suptitle(f"Adapter ablations, run {report['run']}: {len(report['sample']['indices'])} sequences, "
                 f"95% bootstrap CIs over sequences", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, stem)


def by_type(report: dict[str, Any], stem: Path) -> list[Path]:
    """KL and CE change when every adapter of a type (one projection; MLP; attention; all) is removed."""
    t = report["type"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in ((axes[0], "kl", KL_LABEL),
                           (axes[1], "dce", "CE_ablated - CE_full\n[nats / assistant token]")):
        mean, err = _err(t[key])
        colors = ["0.4" if n in ("mlp", "attn", "all") else "tab:blue" for n in t["names"]]
        ax.bar([n.removesuffix("_proj") for n in t["names"]], mean, yerr=err, color=colors, ecolor="0.2", capsize=2)
        ax.set_ylabel(label)
        ax.set_yscale("log" if key == "kl" and (mean > 0).all() else "linear")
        ax.tick_params(axis="x", rotation=45)
    axes[0].set_title("all adapters of a type removed", fontsize=10)
    fig.suptitle(f"run {report['run']}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, stem)


def iterative(report: dict[str, Any], stem: Path) -> list[Path]:
    """KL after removing the k least important MLP adapters (greedy order), k = 0..n."""
    curve = report["curve"]
    k = np.arange(len(curve["kl"]["mean"]))
    mean, lo, hi = (np.asarray(curve["kl"][x]) for x in ("mean", "lo", "hi"))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(k, mean, color="tab:orange", lw=1.5, label="greedy removal (least important first)")
    ax.fill_between(k, lo, hi, color="tab:orange", alpha=0.25, lw=0, label="95% bootstrap CI over sequences")
    ax.set_xlabel("MLP adapters removed")
    ax.set_ylabel(KL_LABEL)
    carry = report.get("carry_90")
    if carry is not None:
        ax.axvline(len(k) - 1 - carry, color="0.4", ls="--", lw=0.8)
        ax.text(len(k) - 1 - carry, mean.max() * 0.9, f" {carry} adapters left\n carry 90% of the KL",
                fontsize=8, va="top")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"Iterative MLP ablation, run {report['run']} ({report['n_sequences']} sequences)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, stem)


def token_kl(tokens: list[str], kl_by_name: dict[str, np.ndarray], classes: dict[str, Any], title: str,
             stem: Path) -> list[Path]:
    """Per-token KL along one sequence for a few ablations, and the mean KL by class of predicted token."""
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(max(8, 0.09 * len(tokens)), 7), height_ratios=[2.2, 1])
    x = np.arange(len(tokens))
    for name, kl in kl_by_name.items():
        ax.plot(x, kl, lw=1, marker=".", ms=3, label=f"{name} removed")
    ax.set_xticks(x, [t.replace("\n", "\\n") for t in tokens], rotation=90, fontsize=5)
    ax.set_ylabel(KL_LABEL)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    names = classes["classes"]
    width = 0.8 / max(1, len(kl_by_name))
    for j, name in enumerate(kl_by_name):
        ax2.bar(np.arange(len(names)) + j * width, classes["mean_kl"][name], width=width, label=name)
    ax2.set_xticks(np.arange(len(names)) + 0.4 - width / 2,
                   [f"{c}\n(n={n})" for c, n in zip(names, classes["n_tokens"], strict=True)], fontsize=8)
    ax2.set_ylabel("mean KL, whole sample")
    ax2.set_xlabel("class of the predicted token")
    fig.tight_layout()
    return save_figure(fig, stem)
