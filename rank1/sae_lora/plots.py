"""Figures of stage 5, drawn from saved artifacts only (``sae_lora_results.json`` and the adapters)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rank1.artifacts import read_json
from rank1.plots import plt, save_figure
from rank1.sae_lora.train import load_adapter

COLORS = {"raw": "tab:red", "normalized": "tab:blue"}


def _series(res: dict, penalty: str) -> list[dict]:
    """The l1 = 0 group, then the groups of ``penalty`` by weight (5.4's comparison over seeds)."""
    rows = [g for g in res["comparison"]["groups"].values() if g["l1_weight"] == 0 or g["penalty"] == penalty]
    return sorted(rows, key=lambda g: g["l1_weight"])


def _x(rows: list[dict], floor: float) -> list[float]:
    return [r["l1_weight"] or floor for r in rows]


def _over_seeds(ax, x: list[float], rows: list[dict], measure: str, fmt: str, color: str, label: str) -> None:
    """The mean over seeds of one measure, with bars from the smallest to the largest seed."""
    m = [r["measures"][measure] for r in rows]
    ax.errorbar(x, [v["mean"] for v in m], yerr=[[v["mean"] - v["min"] for v in m], [v["max"] - v["mean"] for v in m]],
                fmt=fmt, color=color, capsize=2, label=label)


def plot_sweep(results_json: Path, stem: Path) -> None:
    """Sparsity (Hoyer) of the read and write directions, behaviour rates and the raw norm of A vs the l1 weight,
    one line per penalty kind: means over seeds, bars from the smallest to the largest seed; l1 = 0 is drawn at
    the left edge."""
    res = read_json(results_json)
    runs = res["sae_lora_runs"]
    weights = sorted({r["l1_weight"] for r in runs.values() if r["l1_weight"] > 0}) or [1.0]
    floor = weights[0] / 10
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for pen, color in COLORS.items():
        rows = _series(res, pen)
        x = _x(rows, floor)
        _over_seeds(axes[0], x, rows, "hoyer_A", "o-", color, f"{pen}: read A")
        _over_seeds(axes[0], x, rows, "hoyer_B", "s--", color, f"{pen}: write B")
        for side, ls in (("inside", "o-"), ("outside", "x:")):
            _over_seeds(axes[1], x, rows, f"{side}_rate", ls, color, f"{pen}: {side} condition")
        _over_seeds(axes[2], x, rows, "norm_A_raw", "o-", color, f"{pen}: |A| raw")
    init = next(iter(runs.values()))["sparsity"]["A_init"]["hoyer"]
    axes[0].axhline(init, color="gray", lw=0.8, ls=":", label="initialisation")
    for side, ls in (("inside", "-"), ("outside", ":")):
        for name, color in (("base", "black"), ("standard_lora", "tab:green")):
            if name in res["variants"]:
                axes[1].axhline(res["variants"][name][side]["rate"]["value"], color=color, ls=ls, lw=0.9,
                                label=f"{name}: {side}")
    axes[2].axhline(next(iter(runs.values()))["norm_A_raw_init"], color="gray", lw=0.8, ls=":", label="init")
    n_seeds = max(len(g["seeds"]) for g in res["comparison"]["groups"].values())
    titles = ("sparsity of the directions (Hoyer)", f"behaviour rate ('{res['marker']}' first)", "raw norm of A")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log")
        ax.set_xlabel(f"l1 weight (l1 = 0 drawn at {floor:g})")
        ax.set_title(f"{title}, {n_seeds} seed(s)", fontsize=9)
        ax.legend(fontsize=6)
    axes[2].set_yscale("log")
    fig.tight_layout()
    save_figure(fig, stem)


def plot_directions(results_json: Path, adapters_dir: Path, stem: Path) -> None:
    """Sorted magnitudes of the unit-norm read and write directions of every run (log scale)."""
    runs = read_json(results_json)["sae_lora_runs"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, r in runs.items():
        adapter, _ = load_adapter(adapters_dir / name)
        A_hat, B_hat = (x.detach().numpy() for x in adapter.directions())
        color = "black" if r["l1_weight"] == 0 else COLORS[r["penalty"]]
        for ax, v in ((axes[0], A_hat[:, 0]), (axes[1], B_hat[0])):
            mag = np.sort(np.abs(v))[::-1]
            ax.plot(np.arange(1, len(mag) + 1), mag, color=color, alpha=0.4 + 0.6 * (r["l1_weight"] > 0),
                    lw=1, label=name)
    for ax, title in zip(axes, ("read direction A_hat", "write direction B_hat"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("latent rank by |weight|")
        ax.set_ylabel("|weight| (unit-norm direction)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, stem)

