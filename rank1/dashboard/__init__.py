"""Static HTML dashboards that open from disk (file://) with no server, shared by every stage.

A dashboard folder holds ``index.html``, the renderer (``core.js``: token heatmaps, histograms, matrices,
line charts; ``style.css``), one app script per dashboard kind (``lora.js``, ``sae.js``) and
``data/<key>.js`` files. Browsers block ``fetch()`` of ``file://`` URLs, so data travels as scripts:
each data file calls ``window.__rank1_register(key, payload)`` and the app loads one with ``R.load(key)``
(a ``<script>`` tag added on demand), so a 64-layer model opens as fast as a 2-layer one.

Safety: payloads are JSON with ``<``, ``>``, ``&`` and the JS line separators escaped, and the renderer
only ever puts dataset strings into the page through ``textContent`` and DOM properties, never through
``innerHTML``: a token ``<script>`` or ``<img onerror=...>`` is shown as text.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any

from rank1 import constants as K
from rank1.artifacts import write_with

STATIC = Path(__file__).parent / "static"
CORE_ASSETS = ("core.js", "style.css")
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
        (tmp / K.DASHBOARD_INDEX).write_text(index_html(title, app))
        (tmp / "data" / "index.js").write_text(data_script("index", index))
        for key, payload in pages.items():
            (tmp / "data" / f"{key}.js").write_text(data_script(key, payload))

    return write_with(Path(folder), write)
