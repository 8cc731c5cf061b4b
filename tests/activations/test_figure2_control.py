"""Figure 2 with the random-direction control: sites as units, density bins, BH-corrected enrichment, and
detection negatives for dense features, on hand-made records."""

import numpy as np
import pytest
from scipy.stats import false_discovery_control, fisher_exact

from rank1.activations.interpretability import compare, site_monosemantic
from rank1.autointerp.examples import Window, low_decile_spans
from rank1.report.claims import NA, NO, YES, interp_claims


def rec(layer, site, pol, cls, n_active, cat="numbers"):
    return {"layer": layer, "site_name": site, "polarity": pol, "status": "ok", "classification": cls,
            "n_active": n_active, "category": cat}


def side(mono_sites, n_sites=20, dense=False, cat="numbers"):
    """Two polarities per site; in the sites of ``mono_sites`` only the negative polarity is monosemantic."""
    out = []
    for s in range(n_sites):
        for pol in (1, -1):
            cls = 0 if (s in mono_sites and pol == -1) else 2
            out.append(rec(s // 7, f"p{s % 7}", pol, cls, 900 if dense else 10 + s, cat if s % 2 else "operators"))
    return out


def test_a_site_is_monosemantic_if_either_polarity_is():
    recs = side({0, 3})
    m = site_monosemantic(recs)
    assert len(m) == 20 and sum(m.values()) == 2
    recs[1]["status"] = "error"  # the monosemantic polarity of site 0 was not rated: site 0 is not monosemantic
    assert sum(site_monosemantic(recs).values()) == 1


def test_compare_three_sides_sites_density_and_bh():
    lora, mlp, rnd = side(set(range(10))), side({0, 1}, dense=True), side({0, 1, 2, 3, 4})
    comp = compare(lora, mlp, 200, 0, random=rnd, n_tokens={"lora": 1000, "mlp": 1000, "random": 1000},
                   density_bins=2)
    assert list(comp["classes"]) == ["lora", "mlp", "random"]
    assert comp["classes"]["lora"]["shares"]["monosemantic"]["value"] == pytest.approx(10 / 40)
    sites = comp["sites"]
    assert sites["shares"]["lora"]["monosemantic"]["value"] == pytest.approx(10 / 20)  # one unit per site
    assert sites["shares"]["random"]["monosemantic"]["value"] == pytest.approx(5 / 20)
    d = sites["lora_minus"]["random"]
    assert d["test"] == "paired by site" and d["value"] == pytest.approx(0.25) and d["lo"] > 0
    assert sites["lora_minus"]["mlp"]["test"] == "two-sample bootstrap"
    assert sites["lora_minus"]["mlp"]["value"] == pytest.approx(0.5 - 0.1)
    # density: MLP neurons all at 0.9, LoRA and control at 0.010-0.029; recomputed: the pooled median edge
    dens = comp["density"]
    d = {k: np.array([r["n_active"] / 1000 for r in v]) for k, v in (("lora", lora), ("mlp", mlp), ("random", rnd))}
    mid = np.median(np.concatenate(list(d.values())))
    assert dens["bins"][0]["density"] == [0.0, pytest.approx(mid)] and dens["bins"][1]["density"][1] == 1.0
    for k, x in d.items():
        assert [b[k]["n"] for b in dens["bins"]] == [int((x < mid).sum()), int((x >= mid).sum())]
    assert dens["standardised_to_lora"]["lora"] == pytest.approx(10 / 40)  # LoRA weighted by itself
    assert dens["standardised_to_lora"]["mlp"] is None  # MLP neurons have none at LoRA's low densities
    lo_mono = [r["classification"] == 0 for r in rnd if r["n_active"] / 1000 < mid]
    hi_mono = [r["classification"] == 0 for r in rnd if r["n_active"] / 1000 >= mid]
    w = [b["lora"]["n"] / 40 for b in dens["bins"]]
    assert dens["standardised_to_lora"]["random"] == pytest.approx(w[0] * np.mean(lo_mono) + w[1] * np.mean(hi_mono))
    # enrichment: Fisher p per category, BH across all of them
    e = comp["enrichment"]
    ps = [e[k]["p_fisher"] for k in e]
    assert e["numbers"]["p_fisher"] == pytest.approx(fisher_exact([[20, 20], [20, 20]])[1])
    assert [e[k]["q_bh"] for k in e] == pytest.approx(list(false_discovery_control(ps, method="bh")))


def test_claims_need_the_control_and_an_llm_rating():
    lora, mlp, rnd = side(set(range(10))), side({0, 1}), side({0, 1, 2, 3, 4})
    n = {"lora": 1000, "mlp": 1000, "random": 1000}
    comp = compare(lora, mlp, 200, 0, random=rnd, n_tokens=n)
    comp["explainer"] = "lexicon"
    mono, ctl = interp_claims(comp, "x")[:2]
    assert mono.verdict == NA and "lexicon explainer" in mono.ours
    assert ctl.verdict == YES and ctl.ours.startswith("sites, LoRA minus random +25.0")
    comp["explainer"] = "llm"
    assert interp_claims(comp, "x")[0].verdict == YES  # LoRA 50% vs. MLP 10% of sites
    comp = compare(mlp, lora, 200, 0, random=lora, n_tokens=n)  # "LoRA" 10% vs. "control" 50%, paired
    comp["explainer"] = "llm"
    mono, ctl = interp_claims(comp, "x")[:2]
    assert mono.verdict == NO and ctl.verdict == NO
    comp = compare(lora, mlp, 200, 0, n_tokens=n)  # no control
    ctl = interp_claims(comp, "x")[1]
    assert ctl.verdict == NA and "no random-direction control" in ctl.ours


def test_dense_feature_negatives_come_from_its_low_deciles():
    acts = [0.5, 0.6, 0.55, 0.5, 0.9, 0.95, 1.0, 0.6, 0.5, 0.55, 0.6, 0.5]  # active (> 0.1) everywhere
    w = Window([f"t{i}" for i in range(len(acts))], acts, center=6)
    edges = list(np.linspace(0.5, 1.0, 11))  # decile edges of the active values
    spans, k = low_decile_spans([w], edges, window=1, n=3)
    # k = 1: <= 0.55 needs 3 tokens in a row at <= 0.55: none; k = 2: <= 0.6: positions 1-3 (0.6, 0.55, 0.5)
    assert k == 2 and len(spans) == 1 and max(spans[0].acts[spans[0].span(1)]) <= edges[2] + 1e-12
    assert abs(spans[0].center - w.center) > 1
    assert low_decile_spans([w], [0.5] + [0.52] * 10, window=1, n=3) == ([], 0)
