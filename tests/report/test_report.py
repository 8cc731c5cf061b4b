"""The report: claims read from hand-made artifacts, missing stages, escaping, and the page in headless Chromium."""

import base64
import json
from pathlib import Path

from helpers import dashboard_page
from rank1.report import NA, NO, YES, ReportConfig, build_report, read_times, render_html, run_write_report
from rank1.report.claims import CANNOT_TELL, UNDERPOWERED, decide

EVIL = '<img src=x onerror="window.__pwned = 1">'
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAAB"
                       "JRU5ErkJggg==")  # 1 x 1 pixel


def est(value, lo, hi):
    return {"value": value, "lo": lo, "hi": hi, "level": 0.95, "n": 100, "undefined_share": 0.0}


def write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(obj, bytes):
        path.write_bytes(obj)
    else:
        path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def hand_made_results(root: Path) -> Path:
    """results/test/ of a run "r": eval, ablations, lora_vs_mlp, steering, a later stage; no SAE."""
    res = root / "results" / "test"
    acc = {"base": {"heldout": est(0.10, 0.05, 0.15)}, "lora": {"heldout": est(0.40, 0.33, 0.47)},
           "full": {"heldout": est(0.50, 0.43, 0.57)}, "mlp_ablated": {"heldout": est(0.12, 0.08, 0.16)},
           "attn_ablated": {"heldout": est(0.30, 0.24, 0.36)}}
    rec = {"lora": {"heldout": est(0.75, 0.6, 0.9)}, "mlp_ablated": {"heldout": est(0.05, 0.0, 0.1)},
           "attn_ablated": {"heldout": est(0.5, 0.4, 0.6)}}
    write(res / "eval/r/recovery.json", {"variants": list(acc), "benchmarks": ["heldout"], "accuracy": acc,
                                         "recovery": rec})
    write(res / "eval/r/config.json", {"profile": "test", "runs": {"lora": {"run": "r", "base_model": "m",
                                                                             "weights_sha256": "abcdef0123456789"}}})
    write(res / "eval/r/recovery_bars.png", PNG)
    write(res / "eval/r/recovery_bars.pdf", b"%PDF-1.4\n")
    names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "mlp", "attn", "all"]
    type_kl = [0.01, 0.01, 0.01, 0.01, 0.05, 0.02, 0.01, 0.4, 0.04, 1.9]
    layer_kl = [0.01] * 6 + [0.2, 0.3, 0.01, 0.01]  # layers 6 and 7 dominate
    write(res / "ablations/r/ablation_results.json", {
        "type": {"names": names,
                 "kl": {"mean": type_kl, "lo": [v / 2 for v in type_kl], "hi": [v * 2 for v in type_kl]}},
        "adapter_mean_by_projection": {"projections": names[:7], "kl": {
            "mean": [1, 1, 1, 1, 1, 3, 1], "lo": [0.5] * 7, "hi": [4] * 7}},
        "layer": {"layers": list(range(10)), "kl": {"mean": layer_kl, "lo": layer_kl, "hi": layer_kl}},
        "rankings": {"type": {"mlp_vs_attn": paired(0.36, 0.2, 0.5, 16)},
                     "projection": {"top_vs_runner_up": {**paired(2.0, 0.5, 3.5, 16), "top": "up_proj",
                                                         "runner_up": "q_proj"}},
                     "layer": {"top_share": {**est(0.9, 0.85, 0.95), "top_k": 4},
                               "top_vs_runner_up": {**paired(0.1, -0.05, 0.25, 4), "top": 7, "runner_up": 6}}}})
    mono = {"lora": {"n": 200, "shares": {"monosemantic": est(0.25, 0.19, 0.31)}},
            "mlp": {"n": 200, "shares": {"monosemantic": est(0.20, 0.15, 0.26)}}}
    enr = {"operators": {"name": "Mathematical Operators", "lora_count": 30, "mlp_count": 5,
                         "enrichment": est(6.0, 2.5, 15.0)},
           "answer": {"name": "Answer and Solution Markers", "lora_count": 4, "mlp_count": 4,
                      "enrichment": est(1.0, 0.3, 3.0)}}
    write(res / "lora_vs_mlp/r/lora_vs_mlp.json", {"classes": mono, "enrichment": enr})
    write(res / "steering/r/steering.json", {"config": {"scalar_magnitudes": [3, 10, 30]}, "onsets": [
        {"adapter": "L1.down_proj", "mode": "offset", "kl_onset": 10.0, "paper_m": 40.0,
         "kl_onset_ci": {"value": 10.0, "lo": 10.0, "hi": 30.0}},
        {"adapter": "L0.down_proj", "mode": "offset", "kl_onset": None, "paper_m": 60.0,
         "kl_onset_ci": {"value": None, "lo": 30.0, "hi": None}},
        {"adapter": "L0.down_proj", "mode": "vector", "kl_onset": 0.3, "paper_m": 0.5}]})
    write(res / "sae_lora/r/sae_lora_results.json", {"anything": 1})  # a stage the report does not know
    write(res / "sae_lora/r/sae_lora_latents.png", PNG)
    write(res / "sae_lora/r/config.json", {"profile": "test", "note": EVIL, "identity": {"run": "r"}})
    write(res / f"{EVIL}/r/config.json", {"x": EVIL})  # a hostile folder name
    write(root / "logs/run_all-test-times.tsv", "t\teval_benchmarks\t9s\nt\t4.0_steering\t5s\nt\teval_benchmarks\t7s\n"
                                               "t\t5.0_new_stage\t3s\n")
    return res


def paired(diff, lo, hi, n):
    """A paired test as rank1.stats.paired_difference writes it, on n units (all of one sign when the CI is)."""
    min_p = max(2 / 2**n, 2 / 10_001)
    p = min_p if lo > 0 or hi < 0 else 0.5
    return {"mean_diff": diff, "lo": lo, "hi": hi, "level": 0.95, "n_units": n, "p_sign_flip": p,
            "min_p_possible": min_p, "powered": min_p <= 0.05, "distinct_resamples": 35 if n == 4 else 10**8,
            "units_positive": n if lo > 0 else n // 2, "separated": (lo > 0 or hi < 0) and p <= 0.05}


def test_decide_on_constructed_cases():
    assert decide(0.6, 0.9, 0.5) == YES  # the CI lies above the threshold
    assert decide(0.1, 0.4, 0.5) == NO  # ... below it
    assert decide(0.4, 0.7, 0.5) == CANNOT_TELL  # a CI straddling the threshold is never yes or no
    assert decide(0.501, 0.9, 0.5) == YES and decide(0.5, 0.9, 0.5) == CANNOT_TELL  # touching is not excluding
    assert decide(-0.02, 0.1, -0.05, 0.0) == YES and decide(-0.1, -0.06, -0.05, 0.0) == NO
    assert decide(-0.04, -0.01, -0.05, 0.0) == YES  # "about as large": a margin for yes, 0 for no
    assert decide(None, None, 0.5) == CANNOT_TELL  # no CI: numbers shown, no verdict
    assert decide(0.6, 0.9, 0.5, powered=False) == UNDERPOWERED  # a test that could not have reached it
    assert decide(0.6, 0.9, 0.5, needs_llm=True, explainer="lexicon") == NA  # LLM-rated under the lexicon
    assert decide(0.6, 0.9, 0.5, needs_llm=True, explainer="llm") == YES


def test_claims_from_hand_made_artifacts(isolated_root):
    hand_made_results(isolated_root)
    rep = build_report(ReportConfig(profile="test"))
    assert rep.run == "r"
    rows = {(c.section, c.item): c for c in rep.claims}
    rec = rows[("recovery of the full finetune's gain", "held-out (generated)")]
    assert rec.ours.startswith("75.0 [60.0, 90.0]%") and rec.verdict == YES and rec.source == "eval/r/recovery.json"
    assert rows[("MLP- vs. attention-ablated recovery", "held-out (generated)")].verdict == YES
    kl = rows[("ablating all MLP adapters hurts more than all attention adapters",
               "KL(P_full || P_ablated), all MLP vs. all attention")]
    assert kl.ours.startswith("0.4 [0.2, 0.8] vs. 0.04") and kl.verdict == YES and "sign-flip p" in kl.ours
    proj = rows[("largest-KL projection type", "mean single-adapter KL by projection")]
    # up_proj is separated from the runner-up, and it is not the paper's gate_proj
    assert proj.ours.startswith("up_proj") and proj.paper == "gate_proj" and proj.verdict == NO
    assert "up_proj - q_proj +2 [+0.5, +3.5] nats" in proj.ours
    layers = rows[("a few layers dominate", "leave-one-layer-out KL")]
    # the top 4 layers' share has the CI [85, 95]%, above twice their uniform share (2 x 4/10 = 80%)
    assert layers.ours.startswith("layers 7 (0.78), 6 (0.67)") and layers.verdict == YES
    assert "90.0 [85.0, 95.0]%" in layers.ours and "35 distinct bootstrap resamples" in layers.ours
    mono = rows[("LoRA directions about as monosemantic as MLP neurons", "monosemantic share, LoRA vs. MLP")]
    # no LLM explainer recorded: an LLM-rated claim reads n/a, its numbers shown
    assert mono.ours.startswith("25.0 [19.0, 31.0]% vs. 20.0 [15.0, 26.0]%") and mono.verdict == NA
    enr = {c.item: c for c in rep.claims if c.section.startswith("category enrichment")}
    assert enr["Mathematical Operators"].verdict == YES and enr["Mathematical Operators"].paper == "8.5x"
    assert enr["Answer and Solution Markers"].verdict == CANNOT_TELL  # its CI [0.3, 3.0] straddles 1
    assert enr["Instruction and Procedural Markers"].verdict == NA  # no such category in the artifact
    steer = rows[("steering needs very large magnitudes", "KL onset, scalar offset")]
    # lower medians: onset 10 of (10, >30), interval [10 of (10, 30), 30 of (30, >30)]: at or above 10
    assert steer.ours.startswith("median onset 10 [10, 30] natural std") and steer.verdict == YES
    assert "L0.down_proj >30" in steer.ours and "40-60 std" in steer.ours


def test_recovery_claims_read_n_a_when_the_full_finetunes_gain_is_within_noise(isolated_root):
    res = hand_made_results(isolated_root)
    data = json.loads((res / "eval/r/recovery.json").read_text())
    data["accuracy"]["full"]["heldout"] = est(0.14, 0.09, 0.19)  # overlaps the base's [0.05, 0.15]
    write(res / "eval/r/recovery.json", data)
    rows = {(c.section, c.item): c for c in build_report(ReportConfig(profile="test")).claims}
    rec = rows[("recovery of the full finetune's gain", "held-out (generated)")]
    assert rec.verdict == NA and rec.ours.startswith("n/a (75.0 [60.0, 90.0]%) (accuracy %: base 10.0")
    abl = rows[("MLP- vs. attention-ablated recovery", "held-out (generated)")]
    assert abl.verdict == NA and abl.ours == "n/a (5.0 [0.0, 10.0]% vs. 50.0 [40.0, 60.0]%)"


def test_steering_and_alive_rules_on_intervals_that_straddle(isolated_root):
    res = hand_made_results(isolated_root)
    data = json.loads((res / "steering/r/steering.json").read_text())
    data["onsets"][0]["kl_onset_ci"] = {"value": 10.0, "lo": 3.0, "hi": 30.0}  # now [3, 30] straddles 10
    write(res / "steering/r/steering.json", data)
    data["onsets"][1]["kl_onset_ci"] = {"value": 1.0, "lo": 1.0, "hi": 3.0}
    write(res / "steering/r/steering.json", data)
    steer = {c.item: c for c in build_report(ReportConfig(profile="test")).claims}["KL onset, scalar offset"]
    assert steer.verdict == NO and "[1, 3]" in steer.ours.split("natural")[0]  # lower medians of (3, 1), (30, 3)
    data["onsets"][1]["kl_onset_ci"] = {"value": 30.0, "lo": 10.0, "hi": None}
    write(res / "steering/r/steering.json", data)
    steer = {c.item: c for c in build_report(ReportConfig(profile="test")).claims}["KL onset, scalar offset"]
    assert steer.verdict == CANNOT_TELL and "[3, 30]" in steer.ours  # the interval straddles 10
    data["onsets"][0].pop("kl_onset_ci")
    write(res / "steering/r/steering.json", data)
    steer = {c.item: c for c in build_report(ReportConfig(profile="test")).claims}["KL onset, scalar offset"]
    assert steer.verdict == CANNOT_TELL and "no CIs in the artifact" in steer.ours
    # alive share, Wilson interval over latents against half the paper's 2000/3584
    for n_alive, verdict in ((2000, YES), (1000, CANNOT_TELL), (700, NO)):
        write(res / "sae/r/sae_metrics.json", {"heldout": {"fvu": 0.2, "l0": 30.0},
                                               "alive": {"n_alive": n_alive, "d_sae": 3584, "window_tokens": 10**6}})
        alive = {c.item: c for c in build_report(ReportConfig(profile="test")).claims}["alive latents"]
        assert alive.verdict == verdict, (n_alive, alive.ours)


def test_layers_rule_says_no_when_kl_is_spread(isolated_root):
    res = hand_made_results(isolated_root)
    data = json.loads((res / "ablations/r/ablation_results.json").read_text())
    data["layer"]["kl"]["mean"] = [0.1] * 10
    data["rankings"]["layer"]["top_share"] = {**est(0.4, 0.35, 0.45), "top_k": 4}  # below 2 x 4/10
    write(res / "ablations/r/ablation_results.json", data)
    rep = build_report(ReportConfig(profile="test"))
    assert next(c for c in rep.claims if c.section == "a few layers dominate").verdict == NO
    data["rankings"]["layer"]["top_share"] = {**est(0.8, 0.7, 0.9), "top_k": 4}  # straddles 80%
    write(res / "ablations/r/ablation_results.json", data)
    rep = build_report(ReportConfig(profile="test"))
    assert next(c for c in rep.claims if c.section == "a few layers dominate").verdict == CANNOT_TELL
    del data["rankings"]  # an artifact without the tests: the point estimate alone decides nothing
    write(res / "ablations/r/ablation_results.json", data)
    rows = {c.section: c for c in build_report(ReportConfig(profile="test")).claims}
    assert rows["a few layers dominate"].verdict == CANNOT_TELL
    assert rows["largest-KL projection type"].verdict == CANNOT_TELL


def test_rankings_on_four_sequences_are_underpowered(isolated_root):
    res = hand_made_results(isolated_root)
    data = json.loads((res / "ablations/r/ablation_results.json").read_text())
    data["rankings"]["projection"]["top_vs_runner_up"] = {**paired(2.0, 1.0, 3.0, 4), "top": "gate_proj",
                                                          "runner_up": "up_proj"}
    data["rankings"]["type"]["mlp_vs_attn"] = paired(0.3, 0.1, 0.5, 4)
    write(res / "ablations/r/ablation_results.json", data)
    rows = {c.section: c for c in build_report(ReportConfig(profile="test")).claims}
    proj = rows["largest-KL projection type"]
    # the bootstrap CI is off 0, but 4 sequences cannot give a sign-flip p below 2/16
    assert proj.verdict == UNDERPOWERED and "smallest attainable 0.125; 35 distinct bootstrap resamples" in proj.ours
    assert rows["ablating all MLP adapters hurts more than all attention adapters"].verdict == UNDERPOWERED


def test_probe_and_rollout_claims_show_their_controls(isolated_root):
    res = hand_made_results(isolated_root)
    perm = {"n_permutations": 200, "n_defined": 200, "p": 0.4, "null_median": 0.5, "null_lo": 0.3, "null_hi": 0.7}
    probes = {"n_rollouts": 64, "n_problems": 16, "auc": {"adapters (trace + last)": est(0.21, 0.03, 0.45)},
              "permutation": perm, "verdict": "x"}
    write(res / "probes/r/probes.json", probes)
    test = {"n_problems": 6, "alpha": 0.05, "significant": [], "p": [0.5] * 210, "min_p_possible": 0.03125,
            "bh_threshold_single": 0.05 / 210, "problems_needed": 14, "underpowered": True}
    write(res / "rollouts/r/counterfactual.json", {"tests": {"lora_trace": test}})
    rows = {c.section: c for c in build_report(ReportConfig(profile="test")).claims}
    pr = rows["adapter activations predict correctness"]
    assert pr.verdict == CANNOT_TELL  # below 0.5 by its bootstrap CI, yet inside the permutation null
    assert "permutation p 0.400" in pr.ours and "95% band [0.300, 0.700]" in pr.ours
    ro = rows["adapters differ between correct and incorrect rollouts"]
    assert ro.verdict == UNDERPOWERED and "smallest attainable p 0.0312" in ro.ours and "14 mixed problems" in ro.ours
    probes["auc"]["adapters (trace + last)"] = est(0.8, 0.7, 0.9)
    probes["permutation"] = {**perm, "p": 1 / 201}
    write(res / "probes/r/probes.json", probes)
    test.update(n_problems=16, min_p_possible=2 / 10_001, underpowered=False, significant=[{"feature": "L1.q"}])
    write(res / "rollouts/r/counterfactual.json", {"tests": {"lora_trace": test}})
    rows = {c.section: c for c in build_report(ReportConfig(profile="test")).claims}
    assert rows["adapter activations predict correctness"].verdict == YES
    assert rows["adapters differ between correct and incorrect rollouts"].verdict == YES


def test_a_stage_that_has_not_run_shows_as_missing(isolated_root):
    hand_made_results(isolated_root)
    rep = run_write_report(ReportConfig(profile="test"))
    sae = [c for c in rep.claims if c.section == "BatchTopK SAE on the adapter state"]
    assert len(sae) == 2 and all(c.verdict == NA and c.ours.startswith("missing: sae/r/sae_metrics.json") for c in sae)
    md = (rep.out / "REPORT.md").read_text()
    assert "missing: sae/r/sae_metrics.json (its stage has not run)" in md
    assert "### sae_lora / r" in md and "sae_lora_results.json" in md  # found without knowing the stage
    times = {t.stage: (t.latest, t.longest) for t in rep.times}
    assert times["eval_benchmarks"] == (7, 9) and times["4.0_steering"] == (5, 5)
    assert times["3.0_train_sae"] == (None, None) and "| 3.0_train_sae | not run | not run |" in md
    assert times["5.0_new_stage"] == (3, 3) and rep.times[-1].stage == "5.0_new_stage"  # a stage added later
    assert read_times(isolated_root / "logs/nothing.tsv") == {}


def test_nothing_ran_at_all(isolated_root):
    rep = run_write_report(ReportConfig(profile="test"))
    assert rep.folders == [] and all(c.verdict == NA and c.ours.startswith("missing") for c in rep.claims)
    assert "no stage has run" in (rep.out / "REPORT.md").read_text()


def test_html_escapes_hostile_strings(isolated_root):
    hand_made_results(isolated_root)
    page = render_html(build_report(ReportConfig(profile="test")))
    assert EVIL not in page and "<img src=x" not in page
    assert "&lt;img src=x onerror=&quot;window.__pwned = 1&quot;&gt;" in page


def test_report_page_in_headless_chromium(isolated_root):
    hand_made_results(isolated_root)
    rep = run_write_report(ReportConfig(profile="test"))
    problems = []
    with dashboard_page(rep.out / "index.html", problems) as page:
        page.wait_for_selector("table")
        assert page.evaluate("window.__pwned") is None
        sizes = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
        assert len(sizes) == 2 and all(ok and w > 0 for ok, w in sizes)  # the thumbnails loaded
        hrefs = page.eval_on_selector_all("a", "els => els.map(e => e.href)")
        assert hrefs and all(h.startswith("file://") for h in hrefs)
        from urllib.parse import unquote, urlparse
        assert all(Path(unquote(urlparse(h).path)).exists() for h in hrefs)
        assert EVIL in page.locator("body").inner_text()  # shown as text
    assert problems == []
