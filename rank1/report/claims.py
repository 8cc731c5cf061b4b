"""The claims of the paper and the rules of their verdicts: pure functions of the loaded artifacts.

For each claim: its number (:mod:`rank1.paper`), ours with its 95% CI where the artifact has one, and a
verdict by a rule stated beside it, decided by one function, :func:`decide`: ``yes`` or ``no`` only when a
CI (or a test) excludes the other answer, never from point estimates or overlapping CIs; ``cannot tell``
otherwise, with the numbers shown; ``underpowered`` when the test could not have reached significance on
this sample (not a null result); ``n/a`` when the artifact is missing or the claim needs what this run
does not have (an LLM-rated claim under the lexicon explainer). :data:`SOURCES` names the artifact each
claim reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rank1 import constants as K
from rank1.benchmarks import BENCHMARK_TITLES
from rank1.interventions import PROBE
from rank1.paper import PAPER_ABLATION, PAPER_INTERP, PAPER_RECOVERY, PAPER_SAE, PAPER_STEERING
from rank1.stats import gain_measurable, proportion_ci

YES, NO, NA = "yes", "no", "n/a"
CANNOT_TELL, UNDERPOWERED = "cannot tell", "underpowered"
VERDICTS = (YES, NO, CANNOT_TELL, UNDERPOWERED, NA)
DOMINANT_TOP = 4  # "a few layers": the paper names 4 (44, 45, 46, 62)
STEER_LARGE = 10.0  # natural standard deviations: "very large" steering


def decide(lo: float | None, hi: float | None, yes_above: float, no_below: float | None = None, *,
           powered: bool = True, needs_llm: bool = False, explainer: str | None = None) -> str:
    """The verdict of every claim from the CI ``[lo, hi]`` of its number (flip the sign of a number whose
    "yes" is small): ``n/a`` when the claim needs an LLM explainer and ``explainer`` is another one;
    ``underpowered`` when the test behind the CI could not have separated the answers on this sample;
    ``yes`` when the CI lies above ``yes_above``; ``no`` when it lies below ``no_below`` (default
    ``yes_above``); otherwise, a missing CI included, ``cannot tell``."""
    if needs_llm and explainer != "llm":
        return NA
    if not powered:
        return UNDERPOWERED
    if lo is None or hi is None:
        return CANNOT_TELL
    if lo > yes_above:
        return YES
    return NO if hi < (yes_above if no_below is None else no_below) else CANNOT_TELL


@dataclass
class Claim:
    """One row of the claims table."""

    section: str  # the paper's claim, in a few words
    item: str  # which number (a benchmark, a category, ...)
    paper: str  # the paper's number
    ours: str  # ours, with its CI where there is one
    verdict: str  # one of VERDICTS
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


def _apart(a: dict, b: dict, smaller_is_yes: bool = False) -> str:
    """:func:`decide` on two estimates with separate CIs: the gap between the CIs (lower end of a minus upper
    end of b, and the reverse) must clear 0 for yes or no; overlapping CIs cannot tell."""
    if a.get("lo") is None or b.get("lo") is None:
        return CANNOT_TELL
    lo, hi = a["lo"] - b["hi"], a["hi"] - b["lo"]
    return decide(-hi, -lo, 0.0) if smaller_is_yes else decide(lo, hi, 0.0)


def _paired(t: dict | None) -> str:
    """:func:`decide` on a paired test (:func:`rank1.stats.paired_difference`): a CI excluding 0 counts only
    with a sign-flip p <= 1 - level; a test that cannot reach that p is underpowered."""
    if not t:
        return CANNOT_TELL
    if not t["separated"]:
        return decide(None, None, 0.0, powered=t["powered"])
    return decide(t["lo"], t["hi"], 0.0, powered=t["powered"])


def _paired_text(t: dict) -> str:
    return (f"{t['mean_diff']:+.3g} [{t['lo']:+.3g}, {t['hi']:+.3g}] nats, larger on {t['units_positive']} of "
            f"{t['n_units']} sequences, sign-flip p {t['p_sign_flip']:.3g} (smallest attainable "
            f"{t['min_p_possible']:.3g}; {t['distinct_resamples']} distinct bootstrap resamples)")


# ---- the claims -----------------------------------------------------------------------------------------

RULE_RECOVERY = ("yes: the CI of our recovery lies above 50% (the LoRA keeps most of the full finetune's gain); "
                 "no: it lies below 50%; else cannot tell; n/a: the full finetune's gain is not measurable (its "
                 "accuracy CI overlaps base's)")
RULE_MLP_ATTN = ("yes: the CI of recovery with the MLP adapters ablated lies below the CI with the attention "
                 "adapters ablated; no: above it; else cannot tell; n/a: the full finetune's gain is not measurable")
RULE_MLP_ATTN_KL = ("yes: the CI of KL(all MLP removed) - KL(all attention removed), paired over sequences, lies "
                    "above 0 and its sign-flip p <= 0.05; no: the same below 0; else cannot tell (underpowered when "
                    "the sequences are too few for p <= 0.05)")
RULE_PROJ = ("the projection with the largest mean single-adapter ablation KL (Figure 1's bars), tested against "
             "the runner-up paired over sequences: yes: it is the paper's and the test separates them (CI of the "
             "difference above 0, sign-flip p <= 0.05); no: another one, separated from the runner-up; else "
             "cannot tell (underpowered when the sequences are too few for p <= 0.05)")
RULE_LAYERS = (f"yes: the CI (over sequences) of the share of the summed leave-one-layer-out KL carried by the top "
               f"{DOMINANT_TOP} layers lies above twice their uniform share (2 x {DOMINANT_TOP}/layers); no: below it; "
               f"else cannot tell (positions compared as depth only)")
RULE_ENRICH = ("yes: the enrichment's CI lies above 1 and its Benjamini-Hochberg q across the categories (where "
               "the artifact has it) is <= 0.05; no: the CI lies below 1; else cannot tell (not resolved at this "
               "sample size)")
RULE_ALIVE = ("alive = fired on at least one of the last `window` training tokens (the paper's dead-latent filter, "
              "window 1e6 tokens; rank1.sae.alive); yes: the 95% Wilson interval of our alive share (latents as "
              "units) lies above half the paper's share (2000/3584 = 56%, half 28%); no: below it; else cannot "
              "tell; n/a: the SAE was trained before the training-window count existed")
RULE_FVU = ("n/a: the paper gives no FVU or loss gap (shown for reference, with L0 and the share of the LoRA's loss "
            "gain kept when the reconstruction is spliced in, against zero ablation (the base model) and against "
            "mean ablation (the mean adapter state at every token))")
RULE_STEER = ("the lower median over the scalar-offset adapters of the KL onset, in natural standard deviations, "
              "with the interval made of the lower medians of the adapters' CI bounds (over problems; no onset "
              "within the sweep counts as beyond it): yes: the interval lies at or above 10; no: below 10; else "
              "cannot tell (also when the sweep has no CIs)")
RULE_STEER_CONTROL = ("yes: for at least half the scalar-offset adapters the LoRA direction's onset CI lies below the "
                      "random control's (a random vector of B's norm at the same site; beyond the sweep counts as "
                      "infinite); no: for at least half it lies above the control's (a random direction of that "
                      "size changes the output earlier); else cannot tell (the CIs overlap: the magnitude says "
                      "little about the LoRA's direction); n/a: the sweep has no control")


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
        measurable = gain_measurable(acc["full"][bench], acc["base"][bench])
        lora = rec["recovery"].get("lora", {}).get(bench)
        paper, paper_abl = _paper_recovery(bench)
        accs = ", ".join(f"{v} {fmt_ci(acc[v][bench], 100)}" for v in ("base", "lora", "full"))
        covers = f"; CI over {lora['ci_covers']}" if lora and lora.get("ci_covers") else ""
        equal = (rec.get("recovery_equal_budget") or {}).get("lora", {}).get(bench)
        against = f"; against the equal-budget full finetune {fmt_pct(equal)}" if equal else ""
        shown = fmt_pct(lora)
        value = shown if measurable or shown == "undefined" else f"n/a ({shown})"  # as recovery_tables.md has it
        ours = f"{value} (accuracy %: {accs}{covers}{against})"
        verdict = NA if not measurable or not lora or lora.get("value") is None else \
            decide(lora.get("lo"), lora.get("hi"), 0.5)
        out.append(Claim(sec1, title, paper, ours, verdict, RULE_RECOVERY, src))
        mlp, attn = (rec["recovery"].get(v, {}).get(bench) for v in ("mlp_ablated", "attn_ablated"))
        if mlp is None or attn is None:
            continue
        ok = measurable and mlp.get("value") is not None and attn.get("value") is not None
        verdict = NA if not ok else _apart(mlp, attn, smaller_is_yes=True)
        pair = f"{fmt_pct(mlp)} vs. {fmt_pct(attn)}"
        ablated.append(Claim(sec2, title, paper_abl, pair if measurable else f"n/a ({pair})", verdict,
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
    rankings = abl.get("rankings") or {}
    if "type" in abl:
        names, kl = abl["type"]["names"], abl["type"]["kl"]
        est = {n: {k: kl[k][i] for k in ("mean", "lo", "hi")} for i, n in enumerate(names)}
        if "mlp" in est and "attn" in est:
            m, a = est["mlp"], est["attn"]
            ours = " vs. ".join(f"{x['mean']:.3g} [{x['lo']:.3g}, {x['hi']:.3g}]" for x in (m, a)) + " nats"
            test = rankings.get("type", {}).get("mlp_vs_attn")
            ours += f"; paired MLP - attention {_paired_text(test)}" if test else "; no paired test in the artifact"
            out.append(Claim(sec_t, "KL(P_full || P_ablated), all MLP vs. all attention", paper_type, ours,
                             _paired(test), RULE_MLP_ATTN_KL, src))
    if "adapter_mean_by_projection" in abl:
        by = abl["adapter_mean_by_projection"]
        means = by["kl"]["mean"]
        i = max(range(len(means)), key=means.__getitem__)
        top = by["projections"][i]
        ours = f"{top} ({means[i]:.3g} [{by['kl']['lo'][i]:.3g}, {by['kl']['hi'][i]:.3g}] nats per adapter)"
        test = rankings.get("projection", {}).get("top_vs_runner_up")
        ours += f"; {top} - {test['runner_up']} {_paired_text(test)}" if test else "; no ranking test in the artifact"
        verdict = _paired(test)
        if verdict == YES and top != paper_proj:
            verdict = NO
        out.append(Claim(sec_p, "mean single-adapter KL by projection", paper_proj, ours, verdict, RULE_PROJ, src))
    if "layer" in abl:
        out.append(_layers_claim(abl, rankings.get("layer") or {}, sec_l, layers_text, src))
    return out


def _layers_claim(abl: dict, ranking: dict, sec: str, layers_text: str, src: str) -> Claim:
    """A few layers dominate: the top layers' share of the summed leave-one-layer-out KL, with its CI where
    the artifact has one, and the top layer tested against the runner-up."""
    layers, kl = abl["layer"]["layers"], abl["layer"]["kl"]["mean"]
    order = sorted(range(len(kl)), key=lambda j: -kl[j])[:DOMINANT_TOP]
    n = len(layers)
    share_est = ranking.get("top_share") if (ranking.get("top_share") or {}).get("top_k") == DOMINANT_TOP else None
    share = share_est["value"] if share_est else (sum(kl[j] for j in order) / sum(kl) if sum(kl) > 0 else 0.0)
    share_text = fmt_pct(share_est) if share_est else f"{100 * share:.0f}% (no CI in the artifact)"
    depth = ", ".join(f"{layers[j]} ({layers[j] / max(n - 1, 1):.2f})" for j in order)
    ours = f"layers {depth} (relative depth) carry {share_text} of the summed KL (uniform: " \
           f"{100 * min(DOMINANT_TOP, n) / n:.0f}%, twice uniform: {200 * min(DOMINANT_TOP, n) / n:.0f}%)"
    test = ranking.get("top_vs_runner_up")
    if test:
        ours += f"; layer {test['top']} - layer {test['runner_up']} {_paired_text(test)}"
    paper_n = PAPER_ABLATION["n_layers"]
    paper = f"layers {layers_text} (depth " + \
        ", ".join(f"{x / (paper_n - 1):.2f}" for x in PAPER_ABLATION["dominant_layers"]) + ")"
    verdict = NA if n <= 2 * DOMINANT_TOP else \
        decide(*((share_est["lo"], share_est["hi"]) if share_est else (None, None)), 2 * DOMINANT_TOP / n)
    return Claim(sec, "leave-one-layer-out KL", paper, ours, verdict,
                 RULE_LAYERS + f"; n/a with {2 * DOMINANT_TOP} layers or fewer", src)


MONO_MARGIN = 0.05  # "about as monosemantic": LoRA at most 5 points below MLP neurons
RULE_MONO = (f"LLM-rated only (the lexicon explainer rates how densely a feature fires, not how many meanings "
             f"it has: n/a under it). Sites as units (monosemantic if either polarity is). yes: the 95% CI of "
             f"LoRA minus MLP lies above -{100 * MONO_MARGIN:.0f} points; no: it lies below 0; else cannot tell")
RULE_CONTROL = ("yes: the 95% CI of LoRA minus the random-direction control (same sites, untrained directions of "
                "the trained A's norm, B = 0; paired by site) lies above 0; no: it lies below 0; else cannot tell")


def _diff_text(d: dict | None) -> str:
    return "undefined" if not d or d.get("value") is None else \
        f"{100 * d['value']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}] points"


def _ci_verdict(d: dict | None, above: float) -> str:
    """yes when the CI of a difference lies above ``above``, no when it lies below 0, else cannot tell
    (:func:`decide`)."""
    return decide(d.get("lo"), d.get("hi"), above, 0.0) if d else CANNOT_TELL


def interp_claims(comp: dict | None, src: str) -> list[Claim]:
    """Monosemantic share of LoRA directions vs. MLP neurons and vs. the random-direction control, and the
    category enrichments."""
    sec_m, sec_e = "LoRA directions about as monosemantic as MLP neurons", "category enrichment (LoRA over MLP)"
    item_c = "monosemantic sites, LoRA vs. random directions (control)"
    text, table = PAPER_INTERP["monosemantic_share_text"], PAPER_INTERP["committed_table"]
    paper_m = f"{100 * text['lora']:.1f}% vs. {100 * text['mlp']:.1f}% (committed table: " \
              f"{100 * table['lora']['monosemantic']:.1f}% vs. {100 * table['mlp']['monosemantic']:.1f}%)"
    names = {"operators": "Mathematical Operators", "answer": "Answer and Solution Markers",
             "procedure": "Instruction and Procedural Markers"}
    if comp is None:
        return [_missing(sec_m, "monosemantic share, LoRA vs. MLP", paper_m, RULE_MONO, src),
                _missing(sec_m, item_c, "none (the paper has no control)", RULE_CONTROL, src)] + \
            [_missing(sec_e, names.get(k, k), f"{v:.1f}x", RULE_ENRICH, src)
             for k, v in PAPER_INTERP["enrichment"].items()]
    lo, ml = (comp["classes"][s]["shares"]["monosemantic"] for s in ("lora", "mlp"))
    rnd = comp["classes"].get("random", {}).get("shares", {}).get("monosemantic")
    diffs = (comp.get("sites") or {}).get("lora_minus", {})
    counts = " / ".join(str(comp["classes"][s]["n"]) for s in ("lora", "mlp"))
    ours = f"{fmt_pct(lo)} vs. {fmt_pct(ml)} (n {counts})" + (f"; random directions {fmt_pct(rnd)}" if rnd else "")
    if comp.get("explainer") != "llm":
        verdict = NA
        ours += f"; n/a: rated by the {comp.get('explainer') or 'unknown'} explainer, which measures density"
    else:
        verdict = _ci_verdict(diffs.get("mlp"), -MONO_MARGIN)
        ours += f"; sites, LoRA minus MLP {_diff_text(diffs.get('mlp'))}" + \
            ("; cannot tell" if verdict == CANNOT_TELL else "")
    std = (comp.get("density") or {}).get("standardised_to_lora") or {}
    c_verdict = _ci_verdict(diffs["random"], 0.0) if "random" in diffs else NA  # nothing to compare with
    c_ours = "no random-direction control in the artifact (run 2.6, then 2.8): n/a" if "random" not in diffs \
        else f"sites, LoRA minus random {_diff_text(diffs['random'])}" + (
            f"; at LoRA's firing densities: random {100 * std['random']:.1f}%, MLP {100 * std['mlp']:.1f}%, LoRA "
            f"{100 * std['lora']:.1f}%" if all(std.get(k) is not None for k in ("lora", "mlp", "random")) else "") + \
        ("; cannot tell" if c_verdict == CANNOT_TELL else "")
    out = [Claim(sec_m, "monosemantic share, LoRA vs. MLP", paper_m, ours, verdict, RULE_MONO, src),
           Claim(sec_m, item_c, "none (the paper has no control)", c_ours, c_verdict, RULE_CONTROL, src)]
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
        q = e.get("q_bh")
        ours += "" if q is None else f", BH q {q:.2g}"
        verdict = decide(est.get("lo"), est.get("hi"), 1.0)
        if verdict == YES and q is not None and q > 0.05:
            verdict = CANNOT_TELL
        out.append(Claim(sec_e, name, f"{paper:.1f}x", ours, verdict, RULE_ENRICH, src))
    return out


def sae_claims(met: dict | None, src: str) -> list[Claim]:
    """Alive latents and held-out FVU of the SAE on the adapter state."""
    sec = "BatchTopK SAE on the adapter state"
    paper_alive = PAPER_SAE["n_alive"] / PAPER_SAE["d_sae"]
    paper_a = f"about {PAPER_SAE['n_alive']} of {PAPER_SAE['d_sae']} ({100 * paper_alive:.0f}%)"
    if met is None:
        return [_missing(sec, "alive latents", paper_a, RULE_ALIVE, src),
                _missing(sec, "held-out FVU", "not given", RULE_FVU, src)]
    h, a = met["heldout"], met.get("alive")
    paper_a += ", training window of 1e6 tokens"
    if a is None:
        out = [Claim(sec, "alive latents", paper_a, "not counted (an SAE trained before the training-window count; "
                                                    "rerun 3.0 with --overwrite)", NA, RULE_ALIVE, src)]
    else:
        ci = proportion_ci(a["n_alive"], a["d_sae"])
        out = [Claim(sec, "alive latents", paper_a, f"{a['n_alive']} of {a['d_sae']} ({fmt_pct(ci)}), training "
                                                    f"window of {a['window_tokens']} tokens",
                     decide(ci["lo"], ci["hi"], paper_alive / 2), RULE_ALIVE, src)]
    gap = met.get("loss_gap") or {}
    kept = (f"; loss gain kept when spliced: {fmt_pct(gap['recovered_vs_zero'])} vs zero ablation, "
            f"{fmt_pct(gap['recovered_vs_mean'])} vs mean ablation") if "recovered_vs_mean" in gap else ""
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
    top = max((abs(m) for m in st["config"].get("scalar_magnitudes", [])), default=0.0)
    median = _lower_median([o["kl_onset"] for o in rows])  # at least half the adapters need this much
    cis = [o.get("kl_onset_ci") for o in rows]
    lo, hi = (_lower_median([c["lo"] for c in cis]), _lower_median([c["hi"] for c in cis])) \
        if all(cis) else (None, None)
    shown = ", ".join(f"{o['adapter']} {o['kl_onset'] if o['kl_onset'] is not None else f'>{top:g}'}" for o in rows)
    theirs = [o["paper_m"] for o in rows if o.get("paper_m") is not None]
    span = f"{min(theirs):.0f}-{max(theirs):.0f}" if theirs and round(min(theirs)) != round(max(theirs)) else \
        f"{theirs[0]:.0f}" if theirs else ""
    recipe = f"; the authors' recipe here: {span} std" if theirs else ""
    beyond = lambda x: f">{top:g}" if x == float("inf") else f"{x:g}"  # noqa: E731
    interval = f" [{beyond(lo)}, {beyond(hi)}]" if lo is not None else " (no CIs in the artifact)"
    ours = f"median onset {beyond(median)}{interval} natural std ({shown}){recipe}"
    verdict = decide(lo, hi, STEER_LARGE - 1e-9, STEER_LARGE)  # "at or above 10"
    return [Claim(sec, "KL onset, scalar offset", paper, ours, verdict, RULE_STEER, src),
            steering_control_claim(rows, top, src)]


def _lower_median(values: list[float | None]) -> float:
    """The lower median of onsets (None: beyond the sweep, infinite)."""
    xs = sorted(float("inf") if v is None else abs(v) for v in values)
    return xs[(len(xs) - 1) // 2]


def _onset_ci_text(ci: dict | None, top: float) -> str:
    """``10 [3, >100]``: an onset with its CI over problems, ``>top`` where beyond the sweep."""
    if not ci:
        return "-"
    return "{} [{}, {}]".format(*(f">{top:g}" if x is None else f"{x:g}" for x in (ci["value"], ci["lo"], ci["hi"])))


def steering_control_claim(rows: list[dict], top: float, src: str) -> Claim:
    """The LoRA direction's KL onset against its random control of the same norm, per scalar-offset adapter."""
    sec, item = "steering onset belongs to the LoRA direction", "KL onset, LoRA B vs. a random vector of its norm"
    paper = "not tested (no random-direction control)"
    paired = [o for o in rows if o.get("kl_onset_ci") and o.get("random_kl_onset_ci")]
    if not paired:
        return Claim(sec, item, paper, "no random control in the artifact", NA, RULE_STEER_CONTROL, src)
    inf = float("inf")
    end = lambda ci, k: inf if ci[k] is None else ci[k]  # noqa: E731
    below = [o for o in paired if end(o["kl_onset_ci"], "hi") < end(o["random_kl_onset_ci"], "lo")]
    above = [o for o in paired if end(o["kl_onset_ci"], "lo") > end(o["random_kl_onset_ci"], "hi")]
    shown = "; ".join(f"{o['adapter']} {_onset_ci_text(o['kl_onset_ci'], top)} vs. "
                      f"{_onset_ci_text(o['random_kl_onset_ci'], top)}" for o in paired)
    ours = f"LoRA below the control on {len(below)}, above it on {len(above)} of {len(paired)} adapters (onset " \
           f"[95% CI over problems], natural std: {shown}; control seed {paired[0].get('random_seed')})"
    verdict = YES if 2 * len(below) >= len(paired) else NO if 2 * len(above) >= len(paired) else CANNOT_TELL
    return Claim(sec, item, paper, ours, verdict, RULE_STEER_CONTROL, src)


RULE_PROBE = ("yes: the permutation test of the out-of-fold AUC (labels shuffled by problem, the whole "
              "cross-validation refitted) gives p <= 0.05 and the AUC's CI over problems lies above 0.5; else "
              "cannot tell (a probe at chance is no evidence of absence at this size); underpowered: too few "
              "permutations to reach p <= 0.05")
RULE_ROLLOUTS = ("yes: some adapter's correct-minus-incorrect difference passes the sign-flip test with "
                 "Benjamini-Hochberg at the run's q; underpowered: with this many mixed problems no single adapter "
                 "could pass (smallest attainable p above q / adapters); else cannot tell")


def probe_claims(pr: dict | None, src: str) -> list[Claim]:
    """Do the adapter activations predict a rollout's correctness out of fold (4.3)?"""
    sec, item = "adapter activations predict correctness", "probe AUC, held-out problems"
    paper = "no held-out number (the authors' probe chose its model on its test split)"
    if pr is None:
        return [_missing(sec, item, paper, RULE_PROBE, src)]
    auc = (pr.get("auc") or {}).get(PROBE)
    if not auc or auc.get("value") is None:
        return [Claim(sec, item, paper, pr.get("verdict", "undefined"), NA, RULE_PROBE, src)]
    perm = pr.get("permutation") or {}
    ours = f"{fmt_ci(auc, digits=3)} ({pr['n_rollouts']} rollouts of {pr['n_problems']} problems)"
    if perm.get("p") is None:
        return [Claim(sec, item, paper, ours + "; no permutation test in the artifact", CANNOT_TELL, RULE_PROBE, src)]
    ours += (f"; permutation p {perm['p']:.3f} over {perm['n_defined']} permutations, null AUC median "
             f"{perm['null_median']:.3f}, 95% band [{perm['null_lo']:.3f}, {perm['null_hi']:.3f}]")
    powered = 1 / (1 + perm["n_defined"]) <= 0.05
    verdict = decide(auc["lo"], auc["hi"], 0.5, float("-inf"), powered=powered)
    if verdict == YES and perm["p"] > 0.05:
        verdict = CANNOT_TELL
    return [Claim(sec, item, paper, ours, verdict, RULE_PROBE, src)]


def rollout_claims(ro: dict | None, src: str) -> list[Claim]:
    """Do the adapters differ between correct and incorrect rollouts of one problem (4.2)?"""
    sec = "adapters differ between correct and incorrect rollouts"
    paper = "rollouts only, no test"
    if ro is None:
        return [_missing(sec, "adapter scalars, mean over the thinking", paper, RULE_ROLLOUTS, src)]
    out = []
    for key, item in (("lora_trace", "adapter scalars, mean over the thinking"),
                      ("lora_last", "adapter scalars, mean over the last tokens")):
        res = (ro.get("tests") or {}).get(key)
        if res is None:
            continue
        n_sig = len(res.get("significant", []))
        ours = f"{n_sig} of {len(res.get('p', [])) or '?'} adapters at BH q < {res.get('alpha', 0.05):g}"
        if "min_p_possible" in res:
            need = res.get("problems_needed")
            ours += (f"; {res['n_problems']} mixed problems, smallest attainable p {res['min_p_possible']:.3g} vs. "
                     f"{res['bh_threshold_single']:.2g} needed for one adapter"
                     + (f" ({need} mixed problems needed)" if need is not None else ""))
        powered = not res.get("underpowered", False)
        verdict = YES if n_sig and powered else decide(None, None, 0.0, powered=powered)
        out.append(Claim(sec, item, paper, ours, verdict, RULE_ROLLOUTS, src))
    return out


# (stage folder, artifact file, the claims read from it), in the paper's order
SOURCES: list[tuple[str, str, Callable[[Any, str], list[Claim]]]] = [
    ("eval", K.RECOVERY_JSON, recovery_claims),
    (K.ABLATION_STAGE, K.ABLATION_JSON, ablation_claims),
    (K.COMPARE_STAGE, K.COMPARE_JSON, interp_claims),
    (K.SAE_STAGE, K.SAE_METRICS_JSON, sae_claims),
    (K.STEERING_STAGE, K.STEERING_JSON, steering_claims),
    (K.ROLLOUTS_STAGE, K.ROLLOUTS_JSON, rollout_claims),
    (K.PROBES_STAGE, K.PROBES_JSON, probe_claims),
]


def claims(load: Callable[[str, str], tuple[Any, str]]) -> list[Claim]:
    """Every claim of the paper, ours beside it, in the paper's order; ``load(stage, file)`` gives an artifact
    (None when missing) and its path relative to the results folder."""
    return [c for stage, name, fn in SOURCES for c in fn(*load(stage, name))]
