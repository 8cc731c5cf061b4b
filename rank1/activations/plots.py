"""Figures of the autointerp analysis, drawn from the saved JSON only: class shares (2.3) and Figure 2 (2.8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rank1.autointerp.prompts import CLASSES
from rank1.plots import plt, save_figure

CLASS_COLORS = ("tab:green", "tab:orange", "tab:gray")
SIDE_COLORS = {"lora": "tab:red", "mlp": "tab:blue", "random": "tab:gray"}
SIDE_LABELS = {"lora": "LoRA directions", "mlp": "MLP neurons", "random": "random directions (control)"}


def _err(shares: dict[str, Any], name: str) -> tuple[float, list[float]]:
    e = shares["shares"][name]
    v = e["value"] or 0.0
    return v, [v - (e["lo"] if e["lo"] is not None else v), (e["hi"] if e["hi"] is not None else v) - v]


def _grouped(ax, groups: list[tuple[str, dict]], title: str) -> None:
    """Bars of the three class shares for each group, with CIs."""
    names = list(CLASSES.values())
    width = 0.8 / len(names)
    x = np.arange(len(groups))
    for j, (name, color) in enumerate(zip(names, CLASS_COLORS, strict=True)):
        vals, errs = zip(*(_err(g, name) for _, g in groups), strict=True)
        ax.bar(x + (j - 1) * width, vals, width, yerr=np.array(errs).T, color=color, label=name, capsize=2)
    ax.set_xticks(x, [f"{label}\n(n={g['n']})" for label, g in groups], fontsize=7)
    ax.set_xlim(-0.7, len(groups) - 0.3)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of rated features")
    ax.set_title(title, fontsize=9)


def plot_interpretability(analysis: dict[str, Any], stem: str | Path, title: str) -> list[Path]:
    """Class shares overall, by layer bin, by projection (or polarity); held-out score histograms."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    _grouped(axes[0, 0], [("all", analysis["classes"])], "class shares (95% bootstrap CI)")
    axes[0, 0].legend(fontsize=7)
    bins = analysis.get("by_layer_bin") or []
    _grouped(axes[0, 1], [(f"L{b['layers'][0]}-{b['layers'][1]}", b) for b in bins], "by layer bin")
    by = analysis.get("by_projection") or analysis.get("by_polarity") or {}
    _grouped(axes[1, 0], [(k.replace("_proj", ""), v) for k, v in by.items()],
             "by projection" if "by_projection" in analysis else "by polarity")
    ax = axes[1, 1]
    for method, style in (("detection", "-"), ("fuzzing", "--")):
        s = analysis["scores"].get(method, {})
        if s.get("histogram"):
            edges, counts = s["histogram"]["edges"], s["histogram"]["counts"]
            ax.stairs(counts, edges, linestyle=style, label=f"{method} (n={s['n']}, {s['n_undefined']} undefined)")
    ax.axvline(0.5, color="k", lw=0.6, ls=":")
    ax.set_xlabel("held-out balanced accuracy")
    ax.set_ylabel("features")
    ax.set_title("held-out scores (0.5 = chance)", fontsize=9)
    ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, stem)


def plot_figure2(comp: dict[str, Any], stem: str | Path, title: str) -> list[Path]:
    """Figure 2: class shares of LoRA directions, MLP neurons and the random-direction control (when compared),
    held-out scores, category enrichment."""
    fig = plt.figure(figsize=(14, 4.8))
    gs = fig.add_gridspec(1, 3, width_ratios=[1.1, 1, 1.3])
    ax = fig.add_subplot(gs[0])
    names = list(CLASSES.values())
    x = np.arange(len(names))
    sides = list(comp["classes"])
    width = 0.8 / len(sides)
    for j, side in enumerate(sides):
        off = (j - (len(sides) - 1) / 2) * width
        vals, errs = zip(*(_err(comp["classes"][side], n) for n in names), strict=True)
        ax.bar(x + off, vals, width, yerr=np.array(errs).T, capsize=2, color=SIDE_COLORS[side],
               label=f"{SIDE_LABELS[side]} (n={comp['classes'][side]['n']})")
        paper = comp["paper"]["committed_table"].get(side)
        if paper:
            ax.scatter(x + off, [paper[n] for n in names], marker="x", color="k", s=18, zorder=3,
                       label="paper (committed table)" if j == 0 else None)
    chi = comp["chi_square"]
    chi_txt = f"chi2={chi['statistic']:.1f}, p={chi['p_value']:.2g}" if chi["statistic"] is not None else "chi2 n/a"
    ax.set_xticks(x, [n.replace("but ", "but\n") for n in names], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of rated features")
    ax.set_title(f"interpretability class ({chi_txt})", fontsize=9)
    ax.legend(fontsize=7)

    ax = fig.add_subplot(gs[1])
    data, labels, colors = [], [], []
    for m in ("detection", "fuzzing"):
        for side in sides:
            s = comp["scores"][m][side]
            data.append(_values(s))
            labels.append(f"{m}\n{side}")
            colors.append(SIDE_COLORS[side])
    ax.boxplot([d if len(d) else [np.nan] for d in data], tick_labels=labels, showfliers=False)
    for i, (d, c) in enumerate(zip(data, colors, strict=True), 1):
        if len(d):
            ax.scatter(np.full(len(d), i) + np.random.default_rng(i).uniform(-0.15, 0.15, len(d)), d, s=3,
                       color=c, alpha=0.35)
    ax.axhline(0.5, color="k", lw=0.6, ls=":")
    p = [comp["scores"][m]["mann_whitney"]["p_value"] for m in ("detection", "fuzzing")]
    ax.set_title("held-out balanced accuracy (Mann-Whitney p: " +
                 ", ".join("n/a" if v is None else f"{v:.2g}" for v in p) + ")", fontsize=9)
    ax.tick_params(axis="x", labelsize=7)

    ax = fig.add_subplot(gs[2])
    enr = comp.get("enrichment") or {}
    keys = list(enr)
    y = np.arange(len(keys))[::-1]
    for yi, k in zip(y, keys, strict=True):
        e = enr[k]["enrichment"]
        label = f"{enr[k]['lora_count']} / {enr[k]['mlp_count']}"
        if e["value"] is None or e["value"] == 0:
            ax.text(1, yi, f"undefined ({label})" if e["value"] is None else f"0 ({label})", va="center",
                    ha="center", fontsize=7)
            continue
        lo, hi = e["lo"] or e["value"], e["hi"] or e["value"]
        ax.errorbar(e["value"], yi, xerr=[[e["value"] - lo], [hi - e["value"]]], fmt="o", color="tab:red", capsize=3)
        ax.text(e["value"], yi + 0.25, label, fontsize=6, ha="center")
        if enr[k].get("paper"):
            ax.scatter(enr[k]["paper"], yi, marker="x", color="k", zorder=3)
    ax.axvline(1, color="k", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_yticks(y, [enr[k]["name"] for k in keys], fontsize=7)
    ax.set_xlabel("share among LoRA / share among MLP (x: paper)")
    ax.set_title("category enrichment (labels: LoRA / MLP counts)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, stem)


def _values(summary: dict[str, Any]) -> np.ndarray:
    return np.asarray(summary.get("values", []), dtype=float)
