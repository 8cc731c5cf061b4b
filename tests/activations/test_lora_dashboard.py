"""The LoRA dashboard's explanations: written as a placeholder by 2.3, filled from 2.2's explanations.jsonl
afterwards (or by 2.3 when it runs after 2.2), searched in the page by name and explanation text."""

import json

import pytest
import torch

from helpers import dashboard_page, synthetic_store
from rank1.activations.dashboard import (
    attach_explanations,
    build_payloads,
    explanations_payload,
    refresh_after_autointerp,
)
from rank1.constants import PROJECTIONS
from rank1.dashboard import write_dashboard
from rank1.topk import compute_topk

EVIL = '<img src=x onerror="window.__pwned = 3">'


@pytest.fixture
def dashboard(tmp_path):
    sites = [{"layer": la, "name": p} for la in (0, 1) for p in PROJECTIONS]
    store, *_ = synthetic_store(tmp_path / "store", T=200, sites=sites, shards=1)
    res = compute_topk(store, k=4, context=3, n_per_decile=1, n_random=1)
    res.vocab = {i: f"t{i} " for i in range(50)}
    res.meta.update({"identity": {"run": "r"}, "n_docs": 8})
    g = torch.Generator().manual_seed(0)
    vectors = {(la, p): (torch.randn(8, generator=g), torch.randn(8, generator=g))
               for la in (0, 1) for p in PROJECTIONS}
    index, pages = build_payloads(res, vectors, "LoRA", n_examples=4)
    return write_dashboard(tmp_path / "dash", "LoRA", "lora.js", index, pages), res


def _record(name, status="ok", explanation=None, detection=0.75, fuzzing=None):
    score = {"balanced_accuracy": detection, "n": 8} if detection is not None else {
        "balanced_accuracy": None, "n": 4, "error": "needs examples of both labels"}
    return {"name": name, "status": status, "explanation": explanation, "class_name": "monosemantic",
            "category": "arithmetic", "detection": score if status == "ok" else None,
            "fuzzing": {"balanced_accuracy": fuzzing, "n": 8} if fuzzing is not None else score,
            "errors": {} if status == "ok" else {"explain": "no activating examples"}}


def _autointerp(folder, records, **config):
    folder.mkdir(parents=True)
    (folder / "explanations.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                                               encoding="utf-8")
    (folder / "config.json").write_text(json.dumps({"explainer": "lexicon", "scorer": "offline", **config}))
    return folder


def test_explanations_payload_says_why_a_value_is_missing():
    recs = [_record("a", explanation="digits", detection=0.75, fuzzing=0.5), _record("b", status="skipped"),
            _record("c", explanation="plus signs", detection=None)]
    p = explanations_payload(recs, {"scorer": "offline", "max_features": 3}, "src")
    a, b, c = (p["features"][n] for n in "abc")
    assert a["detection"] == {"v": 0.75, "n": 8} and a["fuzzing"] == {"v": 0.5, "n": 8} and a["why"] is None
    assert b["explanation"] is None and b["why"] == "nothing to explain: this polarity never fires"
    assert b["detection"] == {"why": "no explanation to score"}
    assert c["detection"] == {"why": "not scored: needs examples of both labels"}
    assert "random sample of 3 features" in p["missing"]
    none = explanations_payload([_record("a", explanation="x")], {"scorer": "none"}, "src")
    assert none["features"]["a"]["fuzzing"]["v"] == 0.75  # a result that is there is shown whatever the config


def test_attach_needs_a_dashboard_and_finished_results(tmp_path, dashboard):
    folder, res = dashboard
    ai = _autointerp(tmp_path / "ai", [_record(res.features[0]["name"], explanation="digits")])
    assert attach_explanations(tmp_path / "nowhere", ai) is None
    assert attach_explanations(folder, tmp_path / "empty") is None
    path = attach_explanations(folder, ai)
    assert path == folder / "data" / "explanations.js" and "digits" in path.read_text(encoding="utf-8")
    assert refresh_after_autointerp("mlp", "tiny", "r", ai) is None  # only the LoRA side has this dashboard


def test_refresh_after_autointerp_finds_the_default_dashboard(tmp_path, monkeypatch, dashboard):
    folder, res = dashboard
    monkeypatch.setenv("RANK1_ROOT", str(tmp_path))
    target = tmp_path / "results" / "tiny" / "lora_dashboard" / "r"
    target.parent.mkdir(parents=True)
    folder.rename(target)
    ai = _autointerp(tmp_path / "ai", [_record(res.features[0]["name"], explanation="digits")])
    assert refresh_after_autointerp("lora", "tiny", "r", ai) == target / "data" / "explanations.js"


def test_explanations_in_headless_chromium(tmp_path, dashboard):
    folder, res = dashboard
    names = [f["name"] for f in res.features]
    problems = []
    with dashboard_page(folder / "index.html", problems) as page:  # before 2.2: the page says so, no blank cells
        page.wait_for_selector('main#layer[data-layer="0"] article.card')
        page.wait_for_selector("#expl-status:not(:has-text('loading'))")
        assert "run 2.2" in page.locator("#expl-status").inner_text()
        assert all("run 2.2" in t for t in page.locator("section.side .expl").all_inner_texts())
        assert page.locator("section.side .expl").count() == 14
    text = "3 \u00d7 4 then\u2028a new line " + EVIL
    recs = [_record(names[0], explanation=text), _record(names[1], status="skipped"),
            _record("L1_gate_proj_positive", explanation="gate digits", detection=None, fuzzing=0.25)]
    attach_explanations(folder, _autointerp(tmp_path / "ai", recs))
    with dashboard_page(folder / "index.html", problems) as page:
        page.wait_for_selector(f'section.side[data-feature="{names[0]}"] .explanation')
        shown = page.locator(f'section.side[data-feature="{names[0]}"] .explanation').text_content()
        assert shown == text and page.evaluate("window.__pwned") is None  # the markup is text, multi-byte intact
        assert "detection: 0.75 (n=8)" in page.locator(f'section.side[data-feature="{names[0]}"] .expl').inner_text()
        assert "never fires" in page.locator(f'section.side[data-feature="{names[1]}"] .expl').inner_text()
        other = page.locator(f'section.side[data-feature="{names[2]}"] .expl').inner_text()
        assert "not in the autointerp results" in other  # a feature 2.2 did not explain says why
        rows = "table#features tr[data-feature]"
        assert page.locator(rows).count() == len(names)
        page.fill("#feature-search", "\u00d7 4")  # explanation text
        assert page.locator(rows).all_inner_texts()[0].startswith(names[0]) and page.locator(rows).count() == 1
        page.fill("#feature-search", "layer 1 gate")  # name: layer and projection
        assert sorted(page.locator(rows).evaluate_all("rs => rs.map(r => r.dataset.feature)")) == [
            "L1_gate_proj_negative", "L1_gate_proj_positive"]
        page.click('table#features tr[data-feature="L1_gate_proj_positive"]')
        page.wait_for_selector('main#layer[data-layer="1"] section.side[data-feature="L1_gate_proj_positive"]')
        card = page.locator('section.side[data-feature="L1_gate_proj_positive"] .expl').inner_text()
        assert "gate digits" in card and "not scored: needs examples of both labels" in card and "0.25" in card
    assert problems == []
