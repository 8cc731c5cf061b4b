"""Static HTML dashboards that open from disk (file://) with no server, shared by every stage.

A dashboard folder holds ``index.html``, the renderer (``core.js``: token heatmaps, histograms, matrices,
line charts; ``style.css``), one app script per dashboard kind (``lora.js``, ``sae.js``) and
``data/<key>.js`` files. Browsers block ``fetch()`` of ``file://`` URLs, so data travels as scripts:
each data file calls ``window.__rank1_register(key, payload)`` and the app loads one with ``R.load(key)``
(a ``<script>`` tag added on demand), so a 64-layer model opens as fast as a 2-layer one.

Text is UTF-8 end to end: every file is written as UTF-8 and ``index.html`` declares it. A byte-level BPE
token can hold part of a character (U+2028 is three bytes, an emoji four, often split over two tokens), which
decoded alone is only a replacement glyph. :func:`token_texts` decodes a sequence of ids so that each
character appears whole on the token that completes it; :func:`token_bytes` gives the raw bytes of such
partial tokens, which a page carries as ``bytes`` beside its ``vocab`` so that the renderer (``R.texts``)
joins them in the browser with a streaming ``TextDecoder``. Both are written here because tokenizers only
offer whole-sequence or one-token decoding.

Safety: payloads are JSON with ``<``, ``>``, ``&`` and the JS line separators escaped, and the renderer
only ever puts dataset strings into the page through ``textContent`` and DOM properties, never through
``innerHTML``: a token ``<script>`` or ``<img onerror=...>`` is shown as text.
"""

from __future__ import annotations

import html
import json
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rank1 import constants as K
from rank1.artifacts import atomic_path, write_with

STATIC = Path(__file__).parent / "static"
CORE_ASSETS = ("core.js", "style.css")
REPLACEMENT = "\ufffd"
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def safe_json(obj: Any) -> str:
    """JSON that is also safe inside a ``<script>`` element (no ``</script>``, no ``<!--``)."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for ch, esc in _ESCAPES.items():
        text = text.replace(ch, esc)
    return text


def escape(value: Any) -> str:
    """Any value as HTML text, safe in element content and in quoted attributes (``<``, ``>``, ``&``,
    quotes). Pages written in Python (the index of a dashboard, the report) put every string through it."""
    return html.escape(str(value), quote=True)


def data_script(key: str, payload: Any) -> str:
    return f"window.__rank1_register({safe_json(key)}, {safe_json(payload)});\n"


def token_texts(decode: Callable[[list[int]], str], ids: list[int]) -> list[str]:
    """One display string per token of ``ids``: a character split over several tokens is shown whole on the
    token that completes it (the ones before it get ``""``), where ``decode([id])`` would give replacement
    glyphs. ``decode`` decodes a list of ids to text (a tokenizer's ``decode``). A UTF-8 character has at most
    4 bytes, so a replacement glyph still there after 4 tokens is real and shown as it is."""
    out: list[str] = []
    start = 0
    for i in range(len(ids)):
        text = decode(ids[start:i + 1])
        if text.endswith(REPLACEMENT) and i + 1 < len(ids) and i - start < 3:
            out.append("")
            continue
        out.append(text)
        start = i + 1
    return out


def _byte_decoder() -> dict[str, int]:
    """Character -> byte of byte-level BPE (GPT-2's ``bytes_to_unicode``, inverted). Written here because
    ``transformers`` has moved that table between versions and ``tokenizers`` does not export it: printable
    Latin-1 bytes stand for themselves, the other bytes for code points 256 and up, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
            *range(ord("\u00ae"), ord("\u00ff") + 1)]
    chars = {b: chr(b) for b in keep}
    extra = (b for b in range(256) if b not in chars)
    chars.update({b: chr(256 + n) for n, b in enumerate(extra)})
    return {c: b for b, c in chars.items()}


BYTE_DECODER = _byte_decoder()


def token_bytes(tokenizer, ids: Iterable[int]) -> dict[str, str]:
    """Hex of the raw bytes of each token in ``ids`` that is not whole UTF-8 on its own (it decodes to a
    replacement glyph): byte-level BPE pieces and ``<0xNN>`` byte-fallback pieces. Keys are ids as strings,
    like a page's ``vocab``; other tokens are left out (their ``vocab`` string is exact)."""
    out = {}
    for i in ids:
        if REPLACEMENT not in tokenizer.decode([int(i)]):
            continue
        piece = tokenizer.convert_ids_to_tokens(int(i))
        m = _BYTE_FALLBACK.match(piece or "")
        if m:
            out[str(i)] = m.group(1).lower()
        elif piece and all(c in BYTE_DECODER for c in piece):
            out[str(i)] = bytes(BYTE_DECODER[c] for c in piece).hex()
    return out


def index_html(title: str, app: str) -> str:
    t = escape(title)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{t}</title><link rel="stylesheet" href="style.css"></head>
<body><div id="app"><p class="muted">Loading ... (this page needs JavaScript)</p></div>
<script src="core.js"></script><script src="data/index.js"></script><script src="{escape(app)}"></script>
</body></html>
"""


def write_dashboard(folder: str | Path, title: str, app: str, index: Any, pages: dict[str, Any]) -> Path:
    """Write a dashboard: ``app`` is the name of a script in ``static/`` that renders ``index`` (registered
    as ``index``) and loads ``pages`` (key -> payload) on demand. The folder is replaced atomically."""
    if not (STATIC / app).is_file():
        raise ValueError(f"no dashboard app {app!r} in {STATIC}")

    def write(tmp: Path) -> None:
        (tmp / "data").mkdir(parents=True)
        for name in (*CORE_ASSETS, app):
            shutil.copyfile(STATIC / name, tmp / name)
        (tmp / K.DASHBOARD_INDEX).write_text(index_html(title, app), encoding="utf-8")
        (tmp / "data" / "index.js").write_text(data_script("index", index), encoding="utf-8")
        for key, payload in pages.items():
            (tmp / "data" / f"{key}.js").write_text(data_script(key, payload), encoding="utf-8")

    return write_with(Path(folder), write)


def read_data_file(folder: str | Path, key: str) -> Any:
    """The payload of a dashboard's ``data/<key>.js`` (what :func:`data_script` wrote), for tests and tools that
    compare a page with the artifacts it came from."""
    path = Path(folder) / "data" / f"{key}.js"
    text = path.read_text(encoding="utf-8").strip()
    head, tail = "window.__rank1_register(", ");"
    if not (text.startswith(head) and text.endswith(tail)):
        raise ValueError(f"{path} is not a dashboard data file (expected {head}key, payload{tail})")
    found, payload = json.loads("[" + text[len(head):-len(tail)] + "]")
    if found != key:
        raise ValueError(f"{path} registers {found!r}, not {key!r}")
    return payload


def write_data_file(folder: str | Path, key: str, payload: Any) -> Path:
    """Replace one data file (``data/<key>.js``) of an existing dashboard atomically; a later stage uses it to
    add what it made to a dashboard written before it."""
    path = Path(folder) / "data" / f"{key}.js"
    with atomic_path(path) as tmp:
        tmp.write_text(data_script(key, payload), encoding="utf-8")
    return path
