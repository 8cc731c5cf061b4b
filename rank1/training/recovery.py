"""The recovery tables (paper Table 1 and Table 2) and their figure, from saved generation files.

Accuracy per (variant, benchmark) with a bootstrap CI over problems; recovery of the full finetune's
gain, (variant - base) / (full - base), with a paired bootstrap over the same problems
(:func:`rank1.stats.paired_recovery`); undefined (shown as such) when full and base score the same, and n/a
(with the number in brackets) when their accuracy CIs overlap (:func:`rank1.stats.gain_measurable`).

Training seeds. One trained run per variant leaves the CI covering problem sampling only. Further seeds of a run
are separate runs under ``s1_peft/ckpts_{lora,full}/replicates/`` named ``<run>-seed<k>`` (one folder deeper,
so "the profile's newest run", which every later stage reads by default, never picks a replicate), and an
equal-budget full finetune (the LoRA's steps and tokens, its own learning rate) is ``<full run>-equal``
(``-equal-seed<k>`` for its seeds); :func:`replicate_folders` finds them. Their generations are variants named
``<variant>-seed<k>`` and ``full_equal[-seed<k>]``. A variant with replicates gets its recovery from a two-level
bootstrap (:func:`two_level_recovery`: resample each variant's seeds, then problems, the same problems for
every variant), and each recovery says which it covers (:func:`ci_covers`); with one seed everywhere it is
the problem bootstrap of before, number for number.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from rank1 import constants as K
from rank1.artifacts import write_json, write_text, write_with
from rank1.benchmarks import BENCHMARK_TITLES
from rank1.config import runs_dir
from rank1.metrics import recovery
from rank1.paper import PAPER_RECOVERY
from rank1.plots import plt
from rank1.stats import Estimate, bootstrap_mean, gain_measurable, paired_recovery
from rank1.training.evaluate import generations_path, read_generations

log = logging.getLogger(__name__)

VARIANT_TITLES = {"base": "base", "lora": "rank-1 LoRA", "full": "full finetune",
                  "mlp_ablated": "LoRA, MLP adapters ablated", "attn_ablated": "LoRA, attention adapters ablated",
                  "full_equal": "full finetune, the LoRA's budget"}
REPLICATES_DIR = "replicates"  # under the runs folder: further seeds and the equal-budget full finetune
EQUAL_BUDGET = "full_equal"  # the variant of the equal-budget full finetune (run <full run>-equal)
SEED_RE = re.compile(r"^(?P<primary>.+)-seed(?P<k>[1-9][0-9]*)$")
DENOMINATORS = ("full", EQUAL_BUDGET)  # recovery is read against each one present


def replicate_folders(name: str, full: bool) -> dict[str, Path]:
    """{suffix: folder} of the replicates of run ``name`` under ``<runs folder>/replicates/``: ``-seed<k>``
    (another training seed), ``-equal`` and ``-equal-seed<k>`` (the equal-budget full finetune), by suffix."""
    root = runs_dir(full) / REPLICATES_DIR
    if not root.is_dir():
        return {}
    pattern = re.compile(re.escape(name) + r"(?P<suffix>(-equal)?(-seed[1-9][0-9]*)?)$")
    found = {m["suffix"]: p for p in root.iterdir() if p.is_dir() and (m := pattern.match(p.name)) and m["suffix"]}
    return dict(sorted(found.items(), key=lambda kv: (kv[0].startswith("-equal"), _seed_of(kv[0]))))


def _seed_of(name: str) -> int:
    m = re.search(r"-seed([0-9]+)$", name)
    return int(m[1]) if m else 0


def seed_groups(variants: list[str]) -> dict[str, list[str]]:
    """{primary variant: [its variant names, seed 0 first]}: ``lora-seed2`` is a seed of ``lora``; a seed whose
    primary is not among ``variants`` is a primary of its own."""
    groups: dict[str, list[str]] = {}
    for v in variants:
        m = SEED_RE.match(v)
        primary = m["primary"] if m and m["primary"] in variants else v
        groups.setdefault(primary, []).append(v)
    return {k: sorted(vs, key=_seed_of) for k, vs in groups.items()}


def ci_covers(n_seeds: int, n_full_seeds: int) -> str:
    """What a recovery CI covers: problem sampling only when both the variant and the full finetune have one
    training seed, else seeds and problems (and how many of each)."""
    if n_seeds == 1 and n_full_seeds == 1:
        return "problems only (1 seed)"
    if n_seeds == n_full_seeds:
        return f"seeds and problems ({n_seeds} seeds)"
    return f"seeds and problems ({n_seeds} seeds; full finetune {n_full_seeds})"


def two_level_recovery(variant_SP: np.ndarray, base_P: np.ndarray, full_SP: np.ndarray,
                       n_resamples: int = 10_000, level: float = 0.95, seed: int = 0) -> Estimate:
    """:func:`rank1.metrics.recovery` of seed-averaged accuracies (``variant_SP``: seeds x problems, ``full_SP``
    likewise, ``base_P`` untrained) with a two-level percentile bootstrap: each resample draws each variant's
    seeds with replacement (independent trainings), then problems with replacement (the same problems for
    every variant: they are paired). With one seed of each it is :func:`rank1.stats.paired_recovery`."""
    variant_SP, full_SP = np.atleast_2d(variant_SP).astype(float), np.atleast_2d(full_SP).astype(float)
    base_P = np.asarray(base_P, dtype=float)
    if len(variant_SP) == 1 and len(full_SP) == 1:
        return paired_recovery(variant_SP[0], base_P, full_SP[0], n_resamples, level, seed)
    if not variant_SP.shape[1] == full_SP.shape[1] == len(base_P) > 0:
        raise ValueError(f"two_level_recovery needs the same problems everywhere, got {variant_SP.shape}, "
                         f"{full_SP.shape} and {base_P.shape}")
    rng = np.random.default_rng(seed)
    idx_RP = rng.integers(0, len(base_P), size=(n_resamples, len(base_P)))

    def seed_averaged(x_SP: np.ndarray) -> np.ndarray:  # [R]: mean over resampled seeds of resampled problems
        acc_SR = x_SP[:, idx_RP].mean(axis=2)
        pick_RS = rng.integers(0, len(x_SP), size=(n_resamples, len(x_SP)))
        return np.take_along_axis(acc_SR.T, pick_RS, axis=1).mean(axis=1)

    v_R, f_R, b_R = seed_averaged(variant_SP), seed_averaged(full_SP), base_P[idx_RP].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        reps = np.where(f_R != b_R, (v_R - b_R) / (f_R - b_R), np.nan)
    defined = reps[np.isfinite(reps)]
    point = recovery(variant_SP.mean(axis=0), base_P, full_SP.mean(axis=0))
    undefined = 1.0 - len(defined) / n_resamples
    if point is None:
        return Estimate(None, None, None, level, len(base_P), undefined)
    if len(defined) == 0:
        return Estimate(point, None, None, level, len(base_P), undefined)
    lo, hi = np.quantile(defined, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(point, float(lo), float(hi), level, len(base_P), undefined)


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
    """All numbers of the tables: accuracy per variant (every seed's file) and benchmark; recovery per primary
    variant against the full finetune (and against the equal-budget one where it was evaluated), over all their
    seeds (:func:`two_level_recovery`), each saying what its CI covers; the seeds found per primary variant."""
    groups = seed_groups(variants)
    acc: dict[str, dict[str, Any]] = {v: {} for v in variants}
    rows = [v for v in groups if v not in ("base", *DENOMINATORS)]
    recs: dict[str, dict[str, dict[str, Any]]] = {d: {v: {} for v in rows} for d in DENOMINATORS if d in groups}
    budget: dict[str, dict[str, Any]] = {v: {} for v in variants}
    for b in benchmarks:
        _, grades = correct_matrix(folder, variants, b)
        for v in variants:
            acc[v][b] = bootstrap_mean(grades[v], n_resamples, seed=seed).to_dict()
            recs_v = read_generations(generations_path(folder, v, b))
            budget[v][b] = {"think_budget_hit": float(np.mean([r["think_budget_hit"] for r in recs_v])),
                            "mean_think_tokens": float(np.mean([r["think_tokens"] for r in recs_v]))}
        if "base" not in grades:
            continue
        for d, rec in recs.items():
            full_SP = np.stack([grades[x] for x in groups[d]])
            for v in rows:
                v_SP = np.stack([grades[x] for x in groups[v]])
                est = two_level_recovery(v_SP, grades["base"], full_SP, n_resamples, seed=seed).to_dict()
                rec[v][b] = {**est, "n_seeds": len(v_SP), "n_full_seeds": len(full_SP),
                             "ci_covers": ci_covers(len(v_SP), len(full_SP))}
    return {"variants": variants, "benchmarks": benchmarks, "seeds": groups, "accuracy": acc,
            "recovery": recs.get("full", {v: {} for v in rows}), "recovery_equal_budget": recs.get(EQUAL_BUDGET),
            "generation": budget, "paper_recovery_percent": PAPER_RECOVERY, "n_resamples": n_resamples}


def _pct(e: dict[str, Any] | None) -> str:
    """An estimate in percent with its CI, or 'undefined'."""
    if not e:
        return "-"
    est = Estimate(**{k: e[k] for k in Estimate.__dataclass_fields__ if k in e})
    if est.value is None:
        return "undefined (full = base)"
    if est.lo is None:
        return f"{100 * est.value:.1f}"
    return f"{100 * est.value:.1f} [{100 * est.lo:.1f}, {100 * est.hi:.1f}]"


NOT_MEASURABLE = "n/a"
NOT_MEASURABLE_NOTE = (f"{NOT_MEASURABLE}: the full finetune's accuracy CI overlaps the base's on this benchmark, so "
                       "the gain it is divided by is not measurable (it may be 0) and no recovery is read from it; "
                       "the computed value and its CI are in brackets.")


def _recovery(e: dict[str, Any] | None, acc: dict[str, Any], denominator: str, bench: str) -> str:
    """A recovery cell: the estimate, or n/a with the estimate in brackets where the denominator's gain over
    the base is not measurable (:func:`rank1.stats.gain_measurable`)."""
    text = _pct(e)
    if not e or e.get("value") is None or gain_measurable(acc[denominator][bench], acc["base"][bench]):
        return text
    return f"{NOT_MEASURABLE} ({text})"


def _paper(variant: str, bench: str) -> str:
    value = PAPER_RECOVERY.get(variant, {}).get(bench)
    return "-" if value is None else f"{value:.2f}"


def _covers(e: dict[str, Any] | None) -> str:
    return (e or {}).get("ci_covers", "-")


def markdown_tables(summary: dict[str, Any], title: str) -> str:
    """Table 1 (recovery per benchmark, what its CI covers, and against the equal-budget full finetune where
    evaluated) and Table 2 (MLP- vs attention-ablated, extra runs), then every seed's accuracy."""
    variants, benches = summary["variants"], summary["benchmarks"]
    acc, rec, equal = summary["accuracy"], summary["recovery"], summary.get("recovery_equal_budget")
    groups = summary.get("seeds") or {v: [v] for v in variants}
    shown = [v for v in ("base", "lora", "full") if v in variants]
    lines = [f"# Recovery of the full finetune's gain: {title}", "",
             "Accuracy in %, 95% bootstrap CI over problems in brackets (seed 0's run); recovery = (variant - "
             "base) / (full - base) in %, over every training seed found, with a paired bootstrap CI (resampling "
             "seeds, then problems, where there are several seeds; 'CI over' says which). Paper: "
             "Qwen2.5-32B-Instruct on s1K-1.1; '-' where the paper gives no number (or where no generated split "
             "exists there).", "",
             "## Table 1: rank-1 LoRA vs. full finetune", "",
             "| benchmark | n | " + " | ".join(VARIANT_TITLES.get(v, v) for v in shown) +
             " | recovery (ours) | CI over |" + (" recovery vs. the equal-budget full finetune |" if equal else "") +
             " recovery (paper) |",
             "| --- | ---: |" + " ---: |" * (len(shown) + 1) + " --- |" + (" ---: |" if equal else "") + " ---: |"]
    for b in benches:
        n = next(iter(acc.values()))[b]["n"]
        cells = [_pct(acc[v][b]) for v in shown]
        lora = rec.get("lora", {}).get(b)
        eq = f" {_recovery(equal.get('lora', {}).get(b), acc, EQUAL_BUDGET, b)} |" if equal else ""
        lines.append(f"| {BENCHMARK_TITLES.get(b, b)} | {n} | " + " | ".join(cells) +
                     f" | {_recovery(lora, acc, 'full', b)} | {_covers(lora)} |{eq} {_paper('lora', b)} |")
    rows = [v for v in groups if v not in ("base", *DENOMINATORS)]
    lines += ["", "## Table 2: which adapters carry the gain (accuracy / recovery)", "",
              "| variant | " + " | ".join(f"{BENCHMARK_TITLES.get(b, b)} accuracy | recovery | paper"
                                         for b in benches) + " |",
              "| --- |" + " ---: | ---: | ---: |" * len(benches)]
    for v in rows:
        cells = [f"{_pct(acc[v][b])} | {_recovery(rec[v].get(b), acc, 'full', b)} | {_paper(v, b)}" for b in benches]
        lines.append(f"| {VARIANT_TITLES.get(v, v)} | " + " | ".join(cells) + " |")
    if any(f"| {NOT_MEASURABLE} (" in line for line in lines):
        lines += ["", NOT_MEASURABLE_NOTE]
    several = {v: names for v, names in groups.items() if len(names) > 1}
    if several:
        lines += ["", "Accuracy of every training seed (%):", ""]
        lines += [f"- {VARIANT_TITLES.get(v, v)}: " + "; ".join(
            f"{BENCHMARK_TITLES.get(b, b)} " + ", ".join(f"{x} {_pct(acc[x][b])}" for x in names) for b in benches)
            for v, names in several.items()]
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
