"""The claims of the paper and the rules of their verdicts: pure functions of the loaded artifacts.

For each claim: its number (:mod:`rank1.paper`), ours with its 95% CI where the artifact has one, and a
verdict by a rule stated beside it: ``yes`` (ours points the same way), ``no``, or ``n/a`` (the artifact is
missing, or it cannot tell). :data:`SOURCES` names the artifact each claim reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rank1 import constants as K
from rank1.benchmarks import BENCHMARK_TITLES
from rank1.paper import PAPER_ABLATION, PAPER_INTERP, PAPER_RECOVERY, PAPER_SAE, PAPER_STEERING

YES, NO, NA = "yes", "no", "n/a"
DOMINANT_TOP = 4  # "a few layers": the paper names 4 (44, 45, 46, 62)


@dataclass
class Claim:
    """One row of the claims table."""

    section: str  # the paper's claim, in a few words
    item: str  # which number (a benchmark, a category, ...)
    paper: str  # the paper's number
    ours: str  # ours, with its CI where there is one
    verdict: str  # yes | no | n/a
    rule: str  # how the verdict is decided
    source: str | None = None  # the artifact it was read from (relative to the results folder)


# ---- small formatting helpers ---------------------------------------------------------------------------

def fmt_ci(est: dict | None, scale: float = 1.0, digits: int = 1) -> str:
    """``value [lo, hi]`` of an estimate dict (``value``, ``lo``, ``hi``), times ``scale``."""
    if not est or est.get("value") is None:
        return "undefined"
    v, lo, hi = (est.get(k) for k in ("value", "lo", "hi"))
    text = f"{v * scale:.{digits}f}"
    return text + (f" [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]" if lo is not None and hi is not None else "")


def fmt_pct(est: dict | None) -> str:
    """An estimate of a share as ``value [lo, hi]%`` (``undefined`` without a value)."""
    text = fmt_ci(est, 100)
    return text if text == "undefined" else text + "%"


def _missing(section: str, item: str, paper: str, rule: str, source: str) -> Claim:
    return Claim(section, item, paper, f"missing: {source} (its stage has not run)", NA, rule, source)


def _overlap(a: dict, b: dict) -> bool:
    return a["lo"] <= b["hi"] and b["lo"] <= a["hi"]


# ---- the claims -----------------------------------------------------------------------------------------

RULE_RECOVERY = ("yes: our recovery >= 50% (the LoRA keeps most of the full finetune's gain); no: below 50%; "
                 "n/a: the full finetune's gain is not measurable (its accuracy CI overlaps base's)")
RULE_MLP_ATTN = ("yes: recovery with the MLP adapters ablated < recovery with the attention adapters ablated; "
                 "no: otherwise; n/a: the full finetune's gain is not measurable")
RULE_MLP_ATTN_KL = "yes: KL of removing all MLP adapters > KL of removing all attention adapters; no: otherwise"
RULE_PROJ = ("yes: the projection with the largest mean single-adapter ablation KL (Figure 1's bars) is the "
             "paper's; no: another one")
RULE_LAYERS = (f"yes: the top {DOMINANT_TOP} layers by leave-one-layer-out KL carry at least twice their uniform "
               f"share (2 x {DOMINANT_TOP}/layers) of the summed KL; no: otherwise (positions compared as depth only)")
RULE_MONO = ("yes: the LoRA monosemantic share's CI overlaps the MLP share's CI or lies above it (about as "
             "monosemantic or more); no: it lies entirely below")
RULE_ENRICH = "yes: the enrichment's CI lies above 1; no: otherwise (not enriched at this sample size)"
RULE_ALIVE = "yes: our alive share is at least half the paper's (2000/3584 = 56%); no: below"
RULE_FVU = "n/a: the paper gives no FVU (shown for reference, with L0 and the share of the loss gain kept)"
RULE_STEER = ("yes: the (lower) median KL onset of the scalar-offset sweep is >= 10 natural standard deviations "
              "(no onset within the sweep counts as beyond it); no: below")


def _paper_recovery(bench: str) -> tuple[str, str]:
    """The paper's LoRA recovery and its MLP- vs. attention-ablated recovery for ``bench``; for a benchmark
    the paper does not have, the numbers it does have, said so."""
    lora, mlp, attn = (PAPER_RECOVERY[v] for v in ("lora", "mlp_ablated", "attn_ablated"))
    titles = ", ".join(BENCHMARK_TITLES.get(b, b) for b in lora)
    first = lora.get(bench)
    lora_text = f"{first:.1f}%" if first is not None else \
        f"{min(lora.values()):.0f}-{max(lora.values()):.0f}% on {titles} (not this benchmark)"
    both = [b for b in mlp if b in attn]
    if bench in both:
        abl_text = f"{mlp[bench]:.1f}% vs. {attn[bench]:.1f}%"
    else:
        abl_text = "; ".join(f"{mlp[b]:.1f}% vs. {attn[b]:.1f}% on {BENCHMARK_TITLES.get(b, b)}" for b in both) + \
            " (not this benchmark)"
    return lora_text, abl_text


def recovery_claims(rec: dict | None, src: str) -> list[Claim]:
    """Recovery per benchmark (paper Table 1) and MLP- vs. attention-ablated recovery (Table 2)."""
    sec1, sec2 = "recovery of the full finetune's gain", "MLP- vs. attention-ablated recovery"
    if rec is None:
        lora_text, abl_text = _paper_recovery("")
        return [_missing(sec1, "all benchmarks", lora_text, RULE_RECOVERY, src),
                _missing(sec2, "all benchmarks", abl_text, RULE_MLP_ATTN, src)]
    out, ablated = [], []
    for bench in rec["benchmarks"]:
        acc = rec["accuracy"]
        title = BENCHMARK_TITLES.get(bench, bench)
        measurable = not _overlap(acc["full"][bench], acc["base"][bench])
        lora = rec["recovery"].get("lora", {}).get(bench)
        paper, paper_abl = _paper_recovery(bench)
        accs = ", ".join(f"{v} {fmt_ci(acc[v][bench], 100)}" for v in ("base", "lora", "full"))
        ours = f"{fmt_pct(lora)} (accuracy %: {accs})"
        verdict = NA if not measurable or not lora or lora.get("value") is None else \
            YES if lora["value"] >= 0.5 else NO
        out.append(Claim(sec1, title, paper, ours, verdict, RULE_RECOVERY, src))
        mlp, attn = (rec["recovery"].get(v, {}).get(bench) for v in ("mlp_ablated", "attn_ablated"))
        if mlp is None or attn is None:
            continue
        ok = measurable and mlp.get("value") is not None and attn.get("value") is not None
        verdict = NA if not ok else YES if mlp["value"] < attn["value"] else NO
        ablated.append(Claim(sec2, title, paper_abl, f"{fmt_pct(mlp)} vs. {fmt_pct(attn)}", verdict,
                             RULE_MLP_ATTN, src))
    return out + ablated


def ablation_claims(abl: dict | None, src: str) -> list[Claim]:
    """All MLP vs. all attention adapters ablated, the largest-KL projection, the dominant layers (Figure 1)."""
    sec_t, sec_p, sec_l = ("ablating all MLP adapters hurts more than all attention adapters",
                           "largest-KL projection type", "a few layers dominate")
    paper_proj, paper_type = PAPER_ABLATION["largest_kl_projection"], PAPER_ABLATION["mlp_vs_attention"]
    layers_text = ", ".join(map(str, PAPER_ABLATION["dominant_layers"])) + f" of {PAPER_ABLATION['n_layers']}"
    if abl is None:
        return [_missing(sec_t, "KL, all MLP vs. all attention", paper_type, RULE_MLP_ATTN_KL, src),
                _missing(sec_p, "mean KL by projection", paper_proj, RULE_PROJ, src),
                _missing(sec_l, "leave-one-layer-out KL", layers_text, RULE_LAYERS, src)]
    out = []
    if "type" in abl:
        names, kl = abl["type"]["names"], abl["type"]["kl"]
        est = {n: {k: kl[k][i] for k in ("mean", "lo", "hi")} for i, n in enumerate(names)}
        if "mlp" in est and "attn" in est:
            m, a = est["mlp"], est["attn"]
            ours = " vs. ".join(f"{x['mean']:.3g} [{x['lo']:.3g}, {x['hi']:.3g}]" for x in (m, a)) + " nats"
            out.append(Claim(sec_t, "KL(P_full || P_ablated), all MLP vs. all attention", paper_type, ours,
                             YES if m["mean"] > a["mean"] else NO, RULE_MLP_ATTN_KL, src))
    if "adapter_mean_by_projection" in abl:
        by = abl["adapter_mean_by_projection"]
        means = by["kl"]["mean"]
        i = max(range(len(means)), key=means.__getitem__)
        top = by["projections"][i]
        ours = f"{top} ({means[i]:.3g} [{by['kl']['lo'][i]:.3g}, {by['kl']['hi'][i]:.3g}] nats per adapter)"
        out.append(Claim(sec_p, "mean single-adapter KL by projection", paper_proj, ours,
                         YES if top == paper_proj else NO, RULE_PROJ, src))
    if "layer" in abl:
        layers, kl = abl["layer"]["layers"], abl["layer"]["kl"]["mean"]
        order = sorted(range(len(kl)), key=lambda j: -kl[j])[:DOMINANT_TOP]
        share = sum(kl[j] for j in order) / sum(kl) if sum(kl) > 0 else 0.0
        n = len(layers)
        depth = ", ".join(f"{layers[j]} ({layers[j] / max(n - 1, 1):.2f})" for j in order)
        ours = f"layers {depth} (relative depth) carry {100 * share:.0f}% of the summed KL (uniform: " \
               f"{100 * min(DOMINANT_TOP, n) / n:.0f}%)"
        paper_n = PAPER_ABLATION["n_layers"]
        paper = f"layers {layers_text} (depth " + \
            ", ".join(f"{x / (paper_n - 1):.2f}" for x in PAPER_ABLATION["dominant_layers"]) + ")"
        verdict = YES if n > 2 * DOMINANT_TOP and share >= 2 * DOMINANT_TOP / n else NA if n <= 2 * DOMINANT_TOP else NO
        out.append(Claim(sec_l, "leave-one-layer-out KL", paper, ours, verdict,
                         RULE_LAYERS + f"; n/a with {2 * DOMINANT_TOP} layers or fewer", src))
    return out


def interp_claims(comp: dict | None, src: str) -> list[Claim]:
    """Monosemantic share of LoRA directions vs. MLP neurons, and the category enrichments."""
    sec_m, sec_e = "LoRA directions about as monosemantic as MLP neurons", "category enrichment (LoRA over MLP)"
    text, table = PAPER_INTERP["monosemantic_share_text"], PAPER_INTERP["committed_table"]
    paper_m = f"{100 * text['lora']:.1f}% vs. {100 * text['mlp']:.1f}% (committed table: " \
              f"{100 * table['lora']['monosemantic']:.1f}% vs. {100 * table['mlp']['monosemantic']:.1f}%)"
    names = {"operators": "Mathematical Operators", "answer": "Answer and Solution Markers",
             "procedure": "Instruction and Procedural Markers"}
    if comp is None:
        return [_missing(sec_m, "monosemantic share, LoRA vs. MLP", paper_m, RULE_MONO, src)] + \
            [_missing(sec_e, names.get(k, k), f"{v:.1f}x", RULE_ENRICH, src)
             for k, v in PAPER_INTERP["enrichment"].items()]
    lo, ml = (comp["classes"][s]["shares"]["monosemantic"] for s in ("lora", "mlp"))
    verdict = YES if lo["hi"] >= ml["lo"] else NO
    counts = " / ".join(str(comp["classes"][s]["n"]) for s in ("lora", "mlp"))
    ours = f"{fmt_pct(lo)} vs. {fmt_pct(ml)} (n {counts})"
    out = [Claim(sec_m, "monosemantic share, LoRA vs. MLP", paper_m, ours, verdict, RULE_MONO, src)]
    enr = comp.get("enrichment") or {}
    for key, paper in PAPER_INTERP["enrichment"].items():
        name = enr.get(key, {}).get("name", names.get(key, key))
        est = enr.get(key, {}).get("enrichment")
        if not est or est.get("value") is None:
            out.append(Claim(sec_e, name, f"{paper:.1f}x", "undefined (no features of this category)", NA,
                             RULE_ENRICH, src))
            continue
        e = enr[key]
        ours = f"{fmt_ci(est, digits=2)}x ({e['lora_count']} LoRA / {e['mlp_count']} MLP features)"
        out.append(Claim(sec_e, name, f"{paper:.1f}x", ours, YES if est["lo"] > 1 else NO, RULE_ENRICH, src))
    return out


def sae_claims(met: dict | None, src: str) -> list[Claim]:
    """Alive latents and held-out FVU of the SAE on the adapter state."""
    sec = "BatchTopK SAE on the adapter state"
    paper_alive = PAPER_SAE["n_alive"] / PAPER_SAE["d_sae"]
    paper_a = f"about {PAPER_SAE['n_alive']} of {PAPER_SAE['d_sae']} ({100 * paper_alive:.0f}%)"
    if met is None:
        return [_missing(sec, "alive latents", paper_a, RULE_ALIVE, src),
                _missing(sec, "held-out FVU", "not given", RULE_FVU, src)]
    h = met["heldout"]
    alive = h["n_alive"] / h["d_sae"]
    out = [Claim(sec, "alive latents", paper_a, f"{h['n_alive']} of {h['d_sae']} ({100 * alive:.1f}%)",
                 YES if alive >= paper_alive / 2 else NO, RULE_ALIVE, src)]
    share = (met.get("loss_gap") or {}).get("share")
    kept = f"; loss gain kept when spliced {fmt_pct(share)}" if share else ""
    out.append(Claim(sec, "held-out FVU", "not given", f"{h['fvu']:.3f} (L0 {h['l0']:.1f}{kept})", NA, RULE_FVU, src))
    return out


def steering_claims(st: dict | None, src: str) -> list[Claim]:
    """The KL onset of the scalar-offset steering sweep, in natural standard deviations."""
    sec = "steering needs very large magnitudes"
    paper = f"over {PAPER_STEERING['magnitude']:.0f}x normal activations"
    if st is None:
        return [_missing(sec, "KL onset, scalar offset", paper, RULE_STEER, src)]
    rows = [o for o in st.get("onsets", []) if o["mode"] == "offset"]
    if not rows:
        return [Claim(sec, "KL onset, scalar offset", paper, "no offset sweep in the artifact", NA, RULE_STEER, src)]
    top = max(abs(float(m)) for m in str(st["config"].get("scalar_magnitudes", "0")).split(","))
    onsets = sorted(float("inf") if o["kl_onset"] is None else abs(o["kl_onset"]) for o in rows)
    median = onsets[(len(onsets) - 1) // 2]  # the lower median: at least half the adapters need this much
    shown = ", ".join(f"{o['adapter']} {o['kl_onset'] if o['kl_onset'] is not None else f'>{top:g}'}" for o in rows)
    theirs = [o["paper_m"] for o in rows if o.get("paper_m") is not None]
    span = f"{min(theirs):.0f}-{max(theirs):.0f}" if theirs and round(min(theirs)) != round(max(theirs)) else \
        f"{theirs[0]:.0f}" if theirs else ""
    recipe = f"; the authors' recipe here: {span} std" if theirs else ""
    median_text = f">{top:g}" if median == float("inf") else f"{median:g}"
    ours = f"median onset {median_text} natural std ({shown}){recipe}"
    return [Claim(sec, "KL onset, scalar offset", paper, ours, YES if median >= 10 else NO, RULE_STEER, src)]


# (stage folder, artifact file, the claims read from it), in the paper's order
SOURCES: list[tuple[str, str, Callable[[Any, str], list[Claim]]]] = [
    ("eval", K.RECOVERY_JSON, recovery_claims),
    (K.ABLATION_STAGE, K.ABLATION_JSON, ablation_claims),
    (K.COMPARE_STAGE, K.COMPARE_JSON, interp_claims),
    (K.SAE_STAGE, K.SAE_METRICS_JSON, sae_claims),
    (K.STEERING_STAGE, K.STEERING_JSON, steering_claims),
]


def claims(load: Callable[[str, str], tuple[Any, str]]) -> list[Claim]:
    """Every claim of the paper, ours beside it, in the paper's order; ``load(stage, file)`` gives an artifact
    (None when missing) and its path relative to the results folder."""
    return [c for stage, name, fn in SOURCES for c in fn(*load(stage, name))]
