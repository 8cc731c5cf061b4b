"""Figure 3 of stage 3, drawn from saved artifacts only: the donut of SAE feature categories from
``category_densities.json`` (3.3.2): categories on the inner ring (shares labelled from 5%, names in the
legend), subcategories on the outer ring.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rank1.plots import save_figure
from rank1.sae.categories import MEASURES, NO_SUBCATEGORY

LABEL_MIN_SHARE = 0.05  # inner-ring labels from this share on


def plot_donut(densities: dict[str, Any], measure: str, stem: str | Path, title: str = "") -> list[Path]:
    """Figure 3: inner ring the categories' shares of ``measure`` (labels from 5%), outer ring each category's
    subcategories (in the category's colour, lighter). Returns the PDF and PNG paths."""
    import matplotlib.pyplot as plt

    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    cats = [(name, c) for name, c in densities["categories"].items() if c[f"{measure}_share"] > 0]
    cmap = plt.get_cmap("tab10")
    inner = [c[f"{measure}_share"] for _, c in cats]
    colors = [cmap(i % 10) for i in range(len(cats))]
    outer, outer_colors, outer_labels = [], [], []
    for (_, c), color in zip(cats, colors, strict=True):
        subs = sorted(c["subcategories"].items(), key=lambda kv: -kv[1][measure])
        for j, (sname, s) in enumerate(subs):
            share = c[f"{measure}_share"] * s[f"{measure}_share_in_category"]
            if share <= 0:
                continue
            light = 0.25 + 0.6 * j / max(1, len(subs))
            outer.append(share)
            outer_colors.append(tuple(np.array(color[:3]) * (1 - light) + light))
            shown = sname if len(sname) <= 28 else sname[:27] + "\u2026"
            outer_labels.append(shown if share >= LABEL_MIN_SHARE / 2 and sname != NO_SUBCATEGORY else "")
    fig, ax = plt.subplots(figsize=(8, 8))
    ax.pie(outer, radius=1.0, colors=outer_colors, labels=outer_labels, labeldistance=1.05, textprops={"fontsize": 7},
           wedgeprops={"width": 0.3, "edgecolor": "white", "linewidth": 0.5}, startangle=90, counterclock=False)
    labels = [f"{share:.0%}" if share >= LABEL_MIN_SHARE else "" for share in inner]
    ax.pie(inner, radius=0.7, colors=colors, labels=labels, labeldistance=0.72, textprops={"fontsize": 9},
           wedgeprops={"width": 0.4, "edgecolor": "white", "linewidth": 1}, startangle=90, counterclock=False)
    what = "activation mass" if measure == "mass" else "firing count"
    ax.set_title(title or f"SAE features by category ({what} share)", fontsize=11)
    ax.legend([plt.Rectangle((0, 0), 1, 1, color=c) for c in colors],
              [f"{n.replace('_', ' ')} ({s:.1%})" for (n, _), s in zip(cats, inner, strict=True)],
              loc="lower center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8, frameon=False)
    ax.set_aspect("equal")
    fig.tight_layout()
    return save_figure(fig, stem)
