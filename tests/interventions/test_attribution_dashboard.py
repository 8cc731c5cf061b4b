"""The attribution dashboard at a 1400 px viewport: readable cells and labels, a colour key with numbers, and a
token axis that scrolls inside its own box instead of widening the page."""

import pytest
import torch

from helpers import dashboard_page, keep_screenshot
from rank1.constants import PROJECTIONS
from rank1.dashboard import write_dashboard
from rank1.interventions.dashboard import build_payloads

T = 160  # positions: far wider than the viewport at 16 px a column


def _attribution(tmp_path):
    sites = [{"layer": la, "proj": p} for la in range(4) for p in PROJECTIONS]
    g = torch.Generator().manual_seed(0)
    attr = {"attr_ST_0": torch.randn(len(sites), T, generator=g), "ids_T_0": torch.arange(T)}
    attr["attr_ST_0"][3, 7] = -2.5  # the largest magnitude: the colour scale runs from -2.5 to 2.5
    attr["attr_ST_0"].clamp_(-2.5, 2.0)
    report = {"sites": sites, "mean_abs_by_adapter": [0.1 * (i + 1) for i in range(len(sites))],
              "identity": {"run": "r"}, "config": {"target": "logit", "freeze": True},
              "problems": [{"id": "p0", "question": "What is 3 \u00d7 4?", "gold": "12", "target_token": " 12",
                            "target_value": 1.5}]}
    index, pages = build_payloads(report, attr, lambda ids: [f"tok{i} \u00d7" for i in ids], 12, "attribution")
    return write_dashboard(tmp_path / "dash", "attribution", "attribution.js", index, pages), pages, attr, sites


def test_payload_rows_are_the_largest(tmp_path):
    _, pages, attr, sites = _attribution(tmp_path)
    p = pages["problem_0000"]
    sums = attr["attr_ST_0"].abs().sum(1).tolist()
    top = sorted(range(len(sites)), key=lambda s: -sums[s])[:12]
    assert p["rows"] == [f"L{sites[s]['layer']} {sites[s]['proj'].removesuffix('_proj')}" for s in top]
    assert len(p["matrix"][0]) == T and p["matrix"][0][0] == pytest.approx(float(attr["attr_ST_0"][top[0], 0]),
                                                                          rel=1e-2)


def test_readable_at_1400_px(tmp_path):
    folder, *_ = _attribution(tmp_path)
    problems = []
    with dashboard_page(folder / "index.html", problems) as page:
        page.set_viewport_size({"width": 1400, "height": 900})
        page.wait_for_selector("#attr-scroll table.attr td")
        assert page.evaluate("document.documentElement.scrollWidth") <= 1400  # the page itself does not widen
        box = page.evaluate("(() => { const s = document.getElementById('attr-scroll');"
                            " return [s.scrollWidth, s.clientWidth]; })()")
        assert box[0] > box[1]  # the token axis scrolls inside its own container
        cell = page.locator("#attr-scroll table.attr td").first.evaluate(
            "c => { const r = c.getBoundingClientRect(); return [r.width, r.height]; }")
        assert min(cell) >= 14
        sizes = page.locator("#attr-scroll table.attr th").evaluate_all(
            "hs => hs.map(h => parseFloat(getComputedStyle(h).fontSize))")
        assert min(sizes) >= 11
        legend = page.locator("#problem .colour-legend")
        assert legend.count() == 1
        ticks = [float(t) for t in legend.locator(".legend-ticks span").all_text_contents()]
        assert ticks[0] == pytest.approx(-2.5) and ticks[-1] == pytest.approx(2.5) and 0.0 in ticks
        assert "tok5 \u00d7" in page.locator("#attr-scroll th").all_text_contents()
        assert "3 \u00d7 4" in page.locator("p.question").inner_text()
        keep_screenshot(page, tmp_path / "attribution.png")
    assert problems == []
