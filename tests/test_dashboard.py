"""Dashboards: escaping, UTF-8, payloads, and the real thing in headless Chromium (skipped, with the reason
printed, where no browser can be had; setup.sh installs one where apt-get works)."""

import json

import pytest
import torch

from helpers import dashboard_page, keep_screenshot, synthetic_store
from rank1.activations.dashboard import build_payloads
from rank1.constants import PROJECTIONS
from rank1.dashboard import (
    BYTE_DECODER,
    data_script,
    read_data_file,
    safe_json,
    token_bytes,
    token_texts,
    write_dashboard,
)
from rank1.topk import compute_topk

BYTE_CHAR = {b: c for c, b in BYTE_DECODER.items()}

EVIL = ("<script>window.__pwned = 1</script>", '<img src=x onerror="window.__pwned = 2">', "</script><!--", "a\u2028b")


def test_safe_json_cannot_close_a_script():
    text = data_script("k", {"t": EVIL})
    assert "<" not in text and ">" not in text and "\u2028" not in text
    assert json.loads(safe_json(list(EVIL))) == list(EVIL)


def test_data_file_round_trip(tmp_path):
    folder = write_dashboard(tmp_path / "d", "t", "lora.js", {"a": 1}, {"page_1": {"t": list(EVIL), "x": 1.5}})
    assert read_data_file(folder, "page_1") == {"t": list(EVIL), "x": 1.5}
    assert read_data_file(folder, "index") == {"a": 1}
    (folder / "data" / "bad.js").write_text("alert(1)")
    with pytest.raises(ValueError, match="is not a dashboard data file"):
        read_data_file(folder, "bad")


def test_safe_json_keeps_multibyte_text_and_escapes_separators():
    text = data_script("k", {"t": "3 \u00d7 4\u2028\u2029 \U0001f600 \u597d"})
    assert "\u00d7" in text and "\U0001f600" in text and "\u597d" in text  # kept as characters, not ?-escaped
    assert "\\u2028" in text and "\\u2029" in text and "\u2028" not in text


class ByteTokenizer:
    """A byte-level BPE tokenizer by hand: each id is a run of raw bytes (what GPT-2-style vocabularies hold)."""

    def __init__(self, pieces: list[bytes]):
        self.pieces = pieces

    def decode(self, ids):
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")

    def convert_ids_to_tokens(self, i):
        return "".join(BYTE_CHAR[b] for b in self.pieces[i])


# "3 \u00d7 4", then U+2028 split 2 + 1 bytes, an emoji split 1 + 3 bytes with a leading space, a whole CJK character
PIECES = [b"3", " \u00d7".encode(), b" 4", "\u2028".encode()[:2], "\u2028".encode()[2:], b" \xf0",
          "\U0001f600".encode()[1:], "\u597d".encode()]


def test_token_texts_put_each_character_on_the_token_that_completes_it():
    tok = ByteTokenizer(PIECES)
    assert [tok.decode([i]) for i in (3, 4)] == ["\ufffd", "\ufffd"]  # one token alone cannot show it
    assert token_texts(tok.decode, list(range(8))) == ["3", " \u00d7", " 4", "", "\u2028", "", " \U0001f600", "\u597d"]
    assert token_texts(tok.decode, [3]) == ["\ufffd"]  # a character cut off at the end stays visible as such


def test_token_bytes_round_trip():
    tok = ByteTokenizer(PIECES)
    got = token_bytes(tok, range(8))
    assert sorted(got) == ["3", "4", "5", "6"]  # only the tokens that are not whole UTF-8
    assert bytes.fromhex(got["3"] + got["4"]).decode() == "\u2028"
    assert bytes.fromhex(got["5"] + got["6"]).decode() == " \U0001f600"


def _dashboard(tmp_path):
    sites = [{"layer": la, "name": p} for la in (0, 1) for p in PROJECTIONS]
    store, *_ = synthetic_store(tmp_path / "store", T=400, sites=sites, shards=2)
    res = compute_topk(store, k=6, context=4, n_per_decile=1, n_random=2)
    res.vocab = {i: f"t{i} " for i in range(50)}
    res.vocab.update({i: s for i, s in enumerate(EVIL)})
    res.vocab.update({4: " \u00d7", 5: "x\u2028y", 6: " \U0001f600\u597d"})
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
    assert sorted(pages) == ["explanations", "layer_000", "layer_001"] and index["layers"] == [0, 1]
    assert pages["explanations"]["available"] is False and "run 2.2" in pages["explanations"]["reason"]
    assert len(index["features"]) == 28 and index["features"][0]["name"] == "L0_q_proj_positive"
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
    assert (folder / "index.html").read_text(encoding="utf-8").count("<i>") == 0  # the title is escaped
    assert '<meta charset="utf-8">' in (folder / "index.html").read_text(encoding="utf-8")


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
        # multi-byte text renders as itself (read back as code points, so no font can hide a replacement glyph)
        assert " \u00d7" in tokens and "x\u2028y" in tokens and " \U0001f600\u597d" in tokens
        assert not any("\ufffd" in t or "?" in t for t in tokens)
        # partial-character tokens joined in the browser from their bytes
        joined = page.evaluate("R.texts([1, 2, 3, 4], {4: 'z'}, {1: 'e280', 2: 'a8', 3: 'f0'})")
        assert joined == ["", "\u2028", "", "\ufffdz"]
    assert problems == []
