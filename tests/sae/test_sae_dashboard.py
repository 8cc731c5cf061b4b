"""Stage 3's SAE dashboard: payloads from saved features, and the page in headless Chromium (escaping, search,
sorting, lazy pages)."""

import pytest
import torch

from helpers import dashboard_page, keep_screenshot, synthetic_store
from rank1 import constants as K
from rank1.dashboard import write_dashboard
from rank1.sae.dashboard import NOT_CATEGORISED, NOT_SAMPLED, NOT_SCORED, REASONS, blank_reasons, build_payloads
from rank1.sae.features import annotate_features
from rank1.topk import Columns, compute_topk

CATS = ["computational_operations", "symbolic_manipulation", "variable_value_tracking", "reasoning_flow_control",
        "domain_specific_patterns", "relational_logical_operators", "result_formulation"]


# ---------------------------------------------------------------- dashboard


EVIL = ("<script>window.__pwned = 1</script>", '<img src=x onerror="window.__pwned = 2">', "</script><!--", "a\u2028b")


def _sae_dashboard(tmp_path, n_latents=70):
    """Features of a relu-of-linear encoder over a synthetic store, with explanations and categories that try to
    inject markup."""
    sites = [{"layer": la, "name": p} for la in (0, 1) for p in K.PROJECTIONS]
    store, *_ = synthetic_store(tmp_path / "store", T=400, sites=sites, shards=2)
    W = torch.randn(14, n_latents, generator=torch.Generator().manual_seed(0))

    def values(sh, cols):
        return torch.relu(sh.acts_TS.float() @ W[:, cols] - 1.0)

    names = [f"latent_{i:04d}" for i in range(n_latents)]
    res = compute_topk(store, k=6, context=4, n_per_decile=1, n_random=2, active_frac=0.0, positive_only=True,
                       columns=Columns(names, [{"latent": i} for i in range(n_latents)], values, 16))
    x = torch.cat([sh.acts_TS.float() for sh in store.shards()])
    enc = torch.relu(x @ W - 1.0)
    latents = {"firing_count_L": (enc > 0).sum(0), "activation_mass_L": enc.double().sum(0), "max_L": enc.max(0).values,
               "n_tokens": torch.tensor(400), "W_dec_LS": W.T.contiguous()}
    annotate_features(res.features, latents, sites)
    res.vocab = {i: f"t{i} " for i in range(50)}
    res.vocab.update({i: s for i, s in enumerate(EVIL)})
    res.meta.update({"identity": {"run": "demo <b>run</b>"}, "n_docs": 16, "d_sae": n_latents})
    explanations = {n: {"feature": n, "explanation": EVIL[i % 4] + f" number {i}", "score": i / n_latents if i % 7
                        else None, "status": "ok"} for i, n in enumerate(names) if i % 5}
    categories = {"categories": CATS + ["<b>evil</b>"], "features": {
        n: {"category": (CATS + ["<b>evil</b>"])[i % 8], "subcategory": EVIL[0]} for i, n in enumerate(names) if i % 3}}
    index, pages = build_payloads(res, latents, explanations, categories, "SAE <i>demo</i>", n_examples=6, context=3,
                                  page_size=16)
    return write_dashboard(tmp_path / "dash", index["title"], "sae.js", index, pages), index, pages, res, enc


def test_sae_dashboard_payloads(tmp_path):
    folder, index, pages, res, enc = _sae_dashboard(tmp_path)
    n = len(res.features)
    assert sorted(pages) == [f"feat_{i:04d}" for i in range((n + 15) // 16)] and index["n_features"] == n
    f = 5
    feat = pages["feat_0000"]["features"][str(f)]
    latent = res.features[f]["latent"]
    fired = enc[:, latent][enc[:, latent] > 0]
    assert sum(feat["hist"]["counts"]) == len(fired)  # zeros removed from the histogram
    assert feat["top"][0]["v"] == pytest.approx(float(fired.max()), rel=1e-3)
    assert feat["top"][0]["a"][feat["top"][0]["c"]] == pytest.approx(feat["top"][0]["v"], rel=1e-3)
    assert len(feat["loadings"]) == 7 and len(feat["loadings"][0]) == 2  # projections x layers
    assert index["features"]["score"][0] is None and index["features"]["category"][0] is None
    assert (folder / "index.html").read_text().count("<i>") == 0
    why = dict(zip(index["features"]["name"], index["features"]["why"], strict=True))
    assert why["latent_0000"] == [NOT_SAMPLED, NOT_SAMPLED, NOT_CATEGORISED] and why["latent_0001"] == [0, 0, 0]
    assert why["latent_0007"] == [0, NOT_SCORED, 0]  # explained, its score missing


def test_blank_reasons():
    assert blank_reasons(None, {}, False, None) == (1, 1, 6)  # 3.3 has not run at all
    assert "run 3.3.0" in REASONS[1] and "run 3.3.1" in REASONS[6]
    assert blank_reasons({"status": "skipped", "explanation": None, "score": None}, {}, True, {}) == (3, 3, 7)
    assert blank_reasons({"status": "error", "explanation": None, "score": None}, {"category": "x"}, True, {}) == (
        4, 4, 0)


def test_sae_dashboard_in_headless_chromium(tmp_path):
    folder, index, *_ = _sae_dashboard(tmp_path)
    n = index["n_features"]
    problems = []
    with dashboard_page(folder / "index.html", problems) as page:
        page.wait_for_selector('main#feature[data-feature="0"]')
        assert page.locator("table.flist tr[data-feature]").count() == n
        assert page.locator('script[src^="data/feat_"]').count() == 1  # pages load on demand
        page.fill("#search", index["features"]["name"][3])
        assert page.locator("table.flist tr[data-feature]").count() == 1
        page.fill("#search", "number 1")  # explanations are searched
        assert page.locator("table.flist tr[data-feature]").count() == sum(
            "number 1" in e for e in index["features"]["explanation"])
        page.fill("#search", "")
        page.select_option("#sort", "density")
        first = int(page.locator("table.flist tr[data-feature]").first.get_attribute("data-feature"))
        assert index["features"]["density"][first] == max(index["features"]["density"])
        page.select_option("#category", "<b>evil</b>")
        shown = page.locator("table.flist tr[data-feature]").count()
        assert shown == sum(c == "<b>evil</b>" for c in index["features"]["category"]) > 0
        page.select_option("#category", "")
        last = n - 1
        page.locator(f'table.flist tr[data-feature="{last}"]').click()
        page.wait_for_selector(f'main#feature[data-feature="{last}"] .tokens')
        assert page.locator('script[src^="data/feat_"]').count() == 2
        assert page.evaluate("window.__pwned") is None  # nothing injected ran
        tokens = page.locator(".tok").all_text_contents()
        assert any(t.startswith("<img src=x onerror=") for t in tokens) or "<script>" in " ".join(tokens)
        assert page.locator(".tokens img, .tokens script, .explanation script, td script, td b").count() == 0
        assert "demo <b>run</b>" in page.locator("header").inner_text()
        text = page.locator("main#feature").inner_text()
        assert "<script>window.__pwned = 1</script>" in text or "onerror" in text
        keep_screenshot(page, tmp_path / "sae_dashboard.png")
        # every blank cell says why (tooltip), the header says what the column is, a footnote counts the reasons
        f7 = index["features"]["name"].index("latent_0007")
        score = page.locator(f'table.flist tr[data-feature="{f7}"] td').nth(3)
        assert score.inner_text() == "\u2013" and score.get_attribute("title") == REASONS[NOT_SCORED]
        f0 = index["features"]["name"].index("latent_0000")
        assert page.locator(f'table.flist tr[data-feature="{f0}"] td.why').count() == 3  # score, category, explanation
        assert "detection" in page.locator("table.flist th >> text=score").get_attribute("title")
        note = page.locator("#blank-reasons").inner_text()
        for code in (NOT_SAMPLED, NOT_SCORED):
            count = sum(w[1] == code for w in index["features"]["why"])
            assert f"score: {count} of {n} blank \u2013 {REASONS[code]}" in note
    assert problems == []
