"""Figures of the stage-4 scripts, drawn from their saved results only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


STEERING_PANELS = (("kl", "KL(unsteered || steered), nats"), ("markers_per_100", "markers per 100 tokens"),
                   ("correct", "accuracy"), ("think_tokens", "thinking tokens"), ("repetition", "repeated 4-grams"))


def plot_steering(report: dict, stem: Path) -> list[Path]:
    """One row per steering mode, one column per measure, a line per adapter over the magnitude m: solid along
    the LoRA's B, dashed in the same colour along the random control of B's norm (where the sweep has it)."""
    modes = list(dict.fromkeys(r["mode"] for r in report["settings"]))
    fig, axes = plt.subplots(len(modes), len(STEERING_PANELS), figsize=(3.2 * len(STEERING_PANELS), 2.8 * len(modes)),
                             squeeze=False)
    unit = {"offset": "m (natural std of the scalar)", "scale": "m (factor on the scalar)",
            "vector": "m (mean residual norm)"}
    for row, mode in zip(axes, modes, strict=True):
        rows = [r for r in report["settings"] if r["mode"] == mode]
        for k, adapter in enumerate(dict.fromkeys((r["layer"], r["proj"]) for r in rows)):
            name = f"L{adapter[0]} {adapter[1].removesuffix('_proj')}"
            for direction, ls in (("lora", "-"), ("random", "--")):
                mine = sorted((r for r in rows if (r["layer"], r["proj"]) == adapter
                               and r.get("direction", "lora") == direction), key=lambda r: r["m"])
                for ax, (key, _) in zip(row, STEERING_PANELS, strict=True):
                    if mine:
                        ax.plot([r["m"] for r in mine], [r[key] for r in mine], marker=".", lw=1, ls=ls,
                                color=f"C{k}", label=name if direction == "lora" else f"{name} random")
        for k, o in enumerate(o for o in report["onsets"] if o["mode"] == mode and o["paper_m"] is not None):
            row[0].axvline(o["paper_m"], color=f"C{k}", ls=":", lw=0.8)
        if "kl_threshold" in report.get("config", {}):
            row[0].axhline(report["config"]["kl_threshold"], color="tab:red", ls=":", lw=0.8)
        for ax, (key, label) in zip(row, STEERING_PANELS, strict=True):
            ax.axhline(report["unsteered"][key], color="gray", ls="--", lw=0.8)
            if all(r["m"] > 0 for r in rows):
                ax.set_xscale("log")
            else:
                ax.set_xscale("symlog", linthresh=min(abs(r["m"]) for r in rows if r["m"]) or 1.0)
            ax.set_xlabel(unit[mode], fontsize=8)
            ax.set_ylabel(label, fontsize=8)
        row[0].set_title(f"{mode} steering (dashed: random direction of B's norm; dotted: the authors' 50x "
                         f"recipe; red: the KL threshold of the onset)", fontsize=8, loc="left")
        row[0].legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, stem)


def plot_counterfactual(report: dict, stem: Path) -> list[Path]:
    """Per test (adapters / MLP neurons x trace / last tokens): sorted p-values against the uniform
    line and the BH threshold, and the mean correct - incorrect difference of the adapters by layer."""
    tests = {k: v for k, v in report["tests"].items() if v.get("tested")}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    ax = axes[0]
    for name, res in tests.items():
        p = np.sort(res["p"])
        ax.plot(np.arange(1, len(p) + 1) / len(p), p, lw=1, label=name)
    ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=0.8, label="uniform (no effect)")
    if tests:
        alpha = next(iter(tests.values()))["alpha"]
        ax.plot([0, 1], [0, alpha], color="tab:red", ls=":", lw=0.8, label=f"BH line, q={alpha}")
    ax.set_xlabel("rank / number of features")
    ax.set_ylabel("sign-flip p-value")
    ax.set_title(f"{len(report['mixed_problems'])} mixed problems", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1]
    lora = tests.get("lora_trace")
    if lora:
        sites = [{"layer": int(f.split(".")[0][1:]), "proj": f.split(".", 1)[1]} for f in report["sites"]["lora"]]
        effect = {r["feature"]: r["effect_size"] for r in lora["features"]}
        grid, layers, projs = site_grid(sites, [effect[f] for f in report["sites"]["lora"]])
        vmax = np.nanmax(np.abs(grid)) or 1.0
        im = ax.imshow(grid.T, aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_yticks(range(len(projs)), [p.removesuffix("_proj") for p in projs])
        ax.set_xlabel("layer index")
        fig.colorbar(im, ax=ax, label="mean d / sd (correct - incorrect)")
        ax.set_title("adapters, mean over the thinking", fontsize=9)
    else:
        ax.text(0.5, 0.5, "fewer than 2 mixed problems", ha="center", va="center")
        ax.set_axis_off()
    fig.tight_layout()
    return save_figure(fig, stem)


def plot_probes(report: dict, stem: Path) -> list[Path]:
    """ROC-AUC with its CI per probe and baseline; chance at 0.5."""
    names = list(report["auc"])
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(names) + 1.2))
    for i, n in enumerate(names):
        e = report["auc"][n]
        if e["value"] is None:
            continue
        lo, hi = (e["lo"], e["hi"]) if e["lo"] is not None else (e["value"], e["value"])
        ax.errorbar(e["value"], i, xerr=[[e["value"] - lo], [hi - e["value"]]], fmt="o", capsize=3,
                    color="tab:blue" if n.startswith("adapters") else "tab:gray")
    ax.axvline(0.5, color="gray", ls="--", lw=0.8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("ROC-AUC, out of fold (95% CI over problems)")
    ax.set_title(f"{report['n_rollouts']} rollouts of {report['n_problems']} problems", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, stem)


def plot_geometry(geo: dict[str, Any], title: str) -> list:
    """Three figures (norms, across-layer heatmaps, cross-projection heatmaps + same-layer curves) of
    4.4's saved geometry, as (name, figure) pairs."""
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
