"""Dashboards: escaping, payloads, and the real thing in headless Chromium (skipped, with the reason
printed, where no browser can be had; setup.sh installs one where apt-get works)."""

import json

import pytest
import torch

from helpers import dashboard_page, keep_screenshot, synthetic_store
from rank1.activations.dashboard import build_payloads
from rank1.constants import PROJECTIONS
from rank1.dashboard import data_script, safe_json, write_dashboard
from rank1.topk import compute_topk

EVIL = ("<script>window.__pwned = 1</script>", '<img src=x onerror="window.__pwned = 2">', "</script><!--", "a\u2028b")


def test_safe_json_cannot_close_a_script():
    text = data_script("k", {"t": EVIL})
    assert "<" not in text and ">" not in text and "\u2028" not in text
    assert json.loads(safe_json(list(EVIL))) == list(EVIL)


def _dashboard(tmp_path):
    sites = [{"layer": la, "name": p} for la in (0, 1) for p in PROJECTIONS]
    store, *_ = synthetic_store(tmp_path / "store", T=400, sites=sites, shards=2)
    res = compute_topk(store, k=6, context=4, n_per_decile=1, n_random=2)
    res.vocab = {i: f"t{i} " for i in range(50)}
    res.vocab.update({i: s for i, s in enumerate(EVIL)})
    res.meta.update({"identity": {"run": "demo <b>run</b>"}, "n_docs": 16})
    g = torch.Generator().manual_seed(0)
    dims = {"q_proj": (64, 64), "k_proj": (64, 32), "v_proj": (64, 32), "o_proj": (64, 64), "gate_proj": (64, 128),
            "up_proj": (64, 128), "down_proj": (128, 64)}
    vectors = {(la, p): (torch.randn(dims[p][0], generator=g), torch.randn(dims[p][1], generator=g))
               for la in (0, 1) for p in PROJECTIONS}
    index, pages = build_payloads(res, vectors, "LoRA activations <i>demo</i>", n_examples=6)
    return write_dashboard(tmp_path / "dash", index["title"], "lora.js", index, pages), index, pages, vectors


def test_payloads(tmp_path):
    folder, index, pages, vectors = _dashboard(tmp_path)
    assert sorted(pages) == ["layer_000", "layer_001"] and index["layers"] == [0, 1]
    layer = pages["layer_001"]
    assert [a["proj"] for a in layer["adapters"]] == list(PROJECTIONS)
    res = layer["cos_residual"]
    assert res["labels"] == ["q A", "k A", "v A", "gate A", "up A", "o B", "down B"]
    a, b = vectors[(1, "q_proj")][0], vectors[(1, "down_proj")][1]
    assert res["matrix"][0][6] == pytest.approx(float(a @ b / a.norm() / b.norm()), abs=1e-3)
    assert layer["cos_hidden"]["labels"] == ["gate B", "up B", "down A"]
    assert index["cross_layer"]["down B"][0][0] == pytest.approx(1.0)
    ex = layer["adapters"][0]["positive"]["examples"][0]
    assert ex["a"][ex["c"]] == pytest.approx(ex["v"], rel=1e-3)  # the target token carries the example's value
    assert (folder / "index.html").read_text().count("<i>") == 0  # the title is escaped


def test_dashboard_in_headless_chromium(tmp_path):
    folder, *_ = _dashboard(tmp_path)
    problems = []
    with dashboard_page(folder / "index.html", problems) as page:
        page.wait_for_selector('main#layer[data-layer="0"] article.card')
        assert page.locator("article.card").count() == 7
        layer_scripts = 'script[src^="data/layer_"]'
        assert page.locator(layer_scripts).count() == 1  # layers load on demand
        page.click("nav#layers button.layer >> text='1'")
        page.wait_for_selector('main#layer[data-layer="1"] article.card')
        assert page.locator(layer_scripts).count() == 2
        assert keep_screenshot(page, tmp_path / "dashboard.png").stat().st_size > 10_000
        assert page.evaluate("window.__pwned") is None  # the injected tokens did not run
        tokens = page.locator(".tok").all_text_contents()
        assert "<script>window.__pwned = 1</script>" in tokens
        assert any(t.startswith("<img src=x onerror=") for t in tokens)
        assert page.locator(".tokens img").count() == 0 and page.locator(".tokens script").count() == 0
        assert "demo <b>run</b>" in page.locator("header").inner_text()
    assert problems == []
