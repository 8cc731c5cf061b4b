"""The recovery tables (paper Table 1 and Table 2) and their figure, from saved generation files.

Accuracy per (variant, benchmark) with a bootstrap CI over problems; recovery of the full finetune's
gain, (variant - base) / (full - base), with a paired bootstrap over the same problems
(:func:`rank1.stats.paired_recovery`); undefined (shown as such) when full and base score the same.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from rank1 import constants as K
from rank1.artifacts import write_json, write_text, write_with
from rank1.benchmarks import BENCHMARK_TITLES
from rank1.paper import PAPER_RECOVERY
from rank1.plots import plt
from rank1.stats import Estimate, bootstrap_mean, paired_recovery
from rank1.training.evaluate import generations_path, read_generations

log = logging.getLogger(__name__)

VARIANT_TITLES = {"base": "base", "lora": "rank-1 LoRA", "full": "full finetune",
                  "mlp_ablated": "LoRA, MLP adapters ablated", "attn_ablated": "LoRA, attention adapters ablated"}


def correct_matrix(folder: Path, variants: list[str], benchmark: str) -> tuple[list[str], dict[str, np.ndarray]]:
    """Per variant, the 0/1 grades of ``benchmark`` aligned on the same item ids."""
    ids, grades = None, {}
    for v in variants:
        path = generations_path(folder, v, benchmark)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run the evaluation (without --regrade) first")
        recs = read_generations(path)
        these = [r["id"] for r in recs]
        if ids is not None and these != ids:
            raise ValueError(f"{path} holds other items than {variants[0]}'s file; regenerate it (--overwrite)")
        ids = these
        grades[v] = np.array([float(r["correct"]) for r in recs])
    return ids or [], grades


def summarize(folder: Path, variants: list[str], benchmarks: list[str], n_resamples: int = 10_000,
              seed: int = 0) -> dict[str, Any]:
    """All numbers of the tables: accuracy and recovery estimates per variant and benchmark."""
    acc: dict[str, dict[str, Any]] = {v: {} for v in variants}
    rec: dict[str, dict[str, Any]] = {v: {} for v in variants if v not in ("base", "full")}
    budget: dict[str, dict[str, Any]] = {v: {} for v in variants}
    for b in benchmarks:
        _, grades = correct_matrix(folder, variants, b)
        for v in variants:
            acc[v][b] = bootstrap_mean(grades[v], n_resamples, seed=seed).to_dict()
            recs = read_generations(generations_path(folder, v, b))
            budget[v][b] = {"think_budget_hit": float(np.mean([r["think_budget_hit"] for r in recs])),
                            "mean_think_tokens": float(np.mean([r["think_tokens"] for r in recs]))}
        for v in rec:
            if "base" in grades and "full" in grades:
                rec[v][b] = paired_recovery(grades[v], grades["base"], grades["full"], n_resamples,
                                            seed=seed).to_dict()
    return {"variants": variants, "benchmarks": benchmarks, "accuracy": acc, "recovery": rec,
            "generation": budget, "paper_recovery_percent": PAPER_RECOVERY, "n_resamples": n_resamples}


def _pct(e: dict[str, Any] | None) -> str:
    """An estimate in percent with its CI, or 'undefined'."""
    if not e:
        return "-"
    est = Estimate(**e)
    if est.value is None:
        return "undefined (full = base)"
    if est.lo is None:
        return f"{100 * est.value:.1f}"
    return f"{100 * est.value:.1f} [{100 * est.lo:.1f}, {100 * est.hi:.1f}]"


def _paper(variant: str, bench: str) -> str:
    value = PAPER_RECOVERY.get(variant, {}).get(bench)
    return "-" if value is None else f"{value:.2f}"


def markdown_tables(summary: dict[str, Any], title: str) -> str:
    """Table 1 (recovery per benchmark) and Table 2 (MLP- vs attention-ablated, extra runs)."""
    variants, benches = summary["variants"], summary["benchmarks"]
    acc, rec = summary["accuracy"], summary["recovery"]
    lines = [f"# Recovery of the full finetune's gain: {title}", "",
             "Accuracy in %, 95% bootstrap CI over problems in brackets; recovery = (variant - base) / "
             "(full - base) in %, paired bootstrap CI. Paper: Qwen2.5-32B-Instruct on s1K-1.1; '-' where the "
             "paper gives no number (or where no generated split exists there).", "",
             "## Table 1: rank-1 LoRA vs. full finetune", "",
             "| benchmark | n | " + " | ".join(VARIANT_TITLES.get(v, v) for v in ("base", "lora", "full")
                                              if v in variants) + " | recovery (ours) | recovery (paper) |",
             "| --- | ---: |" + " ---: |" * (sum(v in variants for v in ("base", "lora", "full")) + 2)]
    for b in benches:
        n = next(iter(acc.values()))[b]["n"]
        cells = [_pct(acc[v][b]) for v in ("base", "lora", "full") if v in variants]
        lines.append(f"| {BENCHMARK_TITLES.get(b, b)} | {n} | " + " | ".join(cells) +
                     f" | {_pct(rec.get('lora', {}).get(b))} | {_paper('lora', b)} |")
    rows = [v for v in variants if v not in ("base", "full")]
    lines += ["", "## Table 2: which adapters carry the gain (accuracy / recovery)", "",
              "| variant | " + " | ".join(f"{BENCHMARK_TITLES.get(b, b)} accuracy | recovery | paper"
                                         for b in benches) + " |",
              "| --- |" + " ---: | ---: | ---: |" * len(benches)]
    for v in rows:
        cells = [f"{_pct(acc[v][b])} | {_pct(rec[v].get(b))} | {_paper(v, b)}" for b in benches]
        lines.append(f"| {VARIANT_TITLES.get(v, v)} | " + " | ".join(cells) + " |")
    lines += ["", "Thinking budget hit (share of items) / mean thinking tokens:", ""]
    for v in variants:
        gen = summary["generation"][v]
        lines.append(f"- {VARIANT_TITLES.get(v, v)}: " + ", ".join(
            f"{BENCHMARK_TITLES.get(b, b)} {100 * gen[b]['think_budget_hit']:.0f}% / "
            f"{gen[b]['mean_think_tokens']:.0f}" for b in benches))
    return "\n".join(lines) + "\n"


def plot_accuracy(summary: dict[str, Any], pdf: Path, png: Path, title: str) -> None:
    """Grouped bars: accuracy per benchmark (groups) and variant (bars), with 95% CIs."""
    variants, benches, acc = summary["variants"], summary["benchmarks"], summary["accuracy"]
    width = 0.8 / len(variants)
    x = np.arange(len(benches))
    fig, ax = plt.subplots(figsize=(3.6 + 1.4 * len(benches) * max(1, len(variants) / 4), 3.6))
    for i, v in enumerate(variants):
        vals = np.array([100 * acc[v][b]["value"] for b in benches])
        lo = vals - np.array([100 * acc[v][b]["lo"] for b in benches])
        hi = np.array([100 * acc[v][b]["hi"] for b in benches]) - vals
        ax.bar(x + (i - (len(variants) - 1) / 2) * width, vals, width, yerr=[lo, hi], capsize=2,
               label=VARIANT_TITLES.get(v, v))
    ax.set_xticks(x, [BENCHMARK_TITLES.get(b, b) for b in benches])
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    for path, fmt in ((pdf, "pdf"), (png, "png")):
        write_with(path, lambda tmp, fmt=fmt: fig.savefig(tmp, format=fmt, dpi=150))
    plt.close(fig)


def write_tables(folder: Path, variants: list[str], benchmarks: list[str], title: str) -> dict[str, Any]:
    """Write the JSON of all numbers, the Markdown tables and the figure into ``folder``."""
    summary = summarize(folder, variants, benchmarks)
    write_json(folder / K.RECOVERY_JSON, summary)
    write_text(folder / K.RECOVERY_MD, markdown_tables(summary, title))
    plot_accuracy(summary, folder / K.RECOVERY_PDF, folder / K.RECOVERY_PNG, title)
    return summary
