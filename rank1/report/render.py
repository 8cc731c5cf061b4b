"""The report as Markdown (``REPORT.md``) and as a static ``index.html`` that opens from disk.

The claims table with the rules of its verdicts (:mod:`rank1.report.claims`), then every stage folder with its
figures, artifacts, resolved config and run identity, then the wall time of each stage.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rank1 import constants as K
from rank1.dashboard import escape
from rank1.report.claims import CANNOT_TELL, NA, NO, UNDERPOWERED, YES, Claim

REPORT_MD = "REPORT.md"
REPORT_HTML = "index.html"


@dataclass
class StageFolder:
    """One ``results/<profile>/<stage>/<run>/`` folder: what the report links and shows of it."""

    stage: str
    run: str
    path: Path
    figures: list[Path] = field(default_factory=list)
    artifacts: list[Path] = field(default_factory=list)
    config: dict[str, Any] | None = None
    identity: dict[str, Any] | None = None


@dataclass
class StageTime:
    """A stage's wall times from the times log."""

    stage: str
    latest: int | None  # seconds of its latest logged run (None: never logged)
    longest: int | None  # seconds of its longest logged run: the one that did the work (later runs skip it)


@dataclass
class Report:
    """Everything the report shows: the claims, the stage folders and the stage times."""

    profile: str
    run: str | None
    results: Path
    out: Path
    claims: list[Claim]
    folders: list[StageFolder]
    times: list[StageTime]

    def rel(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.out)).as_posix()

    def artifacts(self) -> list[Path]:
        """Every file the report links to."""
        return [p for f in self.folders for p in (*f.figures, *f.artifacts)]


def _secs(s: int | None) -> str:
    return "not run" if s is None else f"{s} s" if s < 120 else f"{s / 60:.1f} min"


TIMES_NOTE = ("A stage whose artifacts exist skips its work, so a rerun logs only its start-up: the longest "
              "logged time is the run that did the work.")


def _identity_text(ident: dict | None) -> str:
    if not ident:
        return "none recorded"
    sha = str(ident.get("weights_sha256") or "")[:12]
    return f"run {ident.get('run')}, {ident.get('kind', 'lora')} on {ident.get('base_model')}" + \
        (f", weights sha256 {sha}" if sha else "")


def verdict_counts(claims: list[Claim]) -> str:
    """``3 of 12 comparisons point the paper's way, 1 does not, ...``: the count of every verdict."""
    n = Counter(c.verdict for c in claims)
    return (f"{n[YES]} of {len(claims)} comparisons point the paper's way, {n[NO]} do not, {n[CANNOT_TELL]} cannot "
            f"tell (the CI includes both answers), {n[UNDERPOWERED]} are underpowered (the sample could not have "
            f"shown it), {n[NA]} are n/a (missing, or not measurable here)")


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(rep: Report) -> str:
    lines = [f"# Did the paper's claims hold here? Profile {rep.profile}, run {rep.run}", "",
             f"{verdict_counts(rep.claims)}. Numbers are read from the artifacts under `results/{rep.profile}/`; "
             f"95% bootstrap CIs in "
             f"brackets. Paper: Qwen2.5-32B-Instruct on s1K-1.1.", "",
             "| claim | item | paper | ours | same way? |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {_md_cell(c.section)} | {_md_cell(c.item)} | {_md_cell(c.paper)} | {_md_cell(c.ours)} | "
              f"**{c.verdict}** |" for c in rep.claims]
    lines += ["", "## Rules of the verdicts", ""]
    lines += [f"- {s}: {r}" for s, r in dict.fromkeys((c.section, c.rule) for c in rep.claims)]
    lines += ["", "## Stage folders: figures, artifacts, config and run identity", ""]
    if not rep.folders:
        lines.append(f"No stage folders under `results/{rep.profile}/`: no stage has run.")
    for f in rep.folders:
        lines += [f"### {f.stage} / {f.run}", "", f"- run identity: {_identity_text(f.identity)}",
                  "- config: " + (f"[config.json]({rep.rel(f.path / K.CONFIG_JSON)})" if f.config else "none")]
        lines += [f"- figure: [{p.name}]({rep.rel(p)})" + (f" ([pdf]({rep.rel(p.with_suffix('.pdf'))}))"
                                                          if p.with_suffix(".pdf").is_file() else "")
                  for p in f.figures]
        lines += [f"- artifact: [{p.relative_to(f.path).as_posix()}]({rep.rel(p)})" for p in f.artifacts
                  if p.suffix != ".pdf"]
        lines.append("")
    lines += ["## Stage times (from the times log)", "", TIMES_NOTE, "", "| stage | latest | longest |",
              "| --- | ---: | ---: |"]
    lines += [f"| {_md_cell(t.stage)} | {_secs(t.latest)} | {_secs(t.longest)} |" for t in rep.times]
    total = sum(t.longest or 0 for t in rep.times)
    lines += ["", f"Sum of the longest times: {total / 60:.1f} min.", ""]
    return "\n".join(lines)


CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1300px;color:#222}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}
th{background:#f3f3f3}.yes{background:#d9f2d9}.no{background:#f8d7d7}.na{background:#eee}
.tell{background:#fff3cd}.weak{background:#e2e3f3}
.figs{display:flex;flex-wrap:wrap;gap:12px}.figs figure{margin:0}.figs img{width:260px;border:1px solid #ccc}
figcaption{font-size:12px}pre{background:#f7f7f7;padding:8px;overflow:auto;max-height:400px}.muted{color:#777}"""


VERDICT_CLASS = {YES: "yes", NO: "no", CANNOT_TELL: "tell", UNDERPOWERED: "weak", NA: "na"}


def render_html(rep: Report) -> str:
    e = escape
    rows = "".join(
        f"<tr><td>{e(c.section)}</td><td>{e(c.item)}</td><td>{e(c.paper)}</td><td>{e(c.ours)}</td>"
        f"<td class=\"{VERDICT_CLASS.get(c.verdict, 'na')}\"><b>{e(c.verdict)}</b></td></tr>"
        for c in rep.claims)
    rules = "".join(f"<li>{e(s)}: {e(r)}</li>" for s, r in dict.fromkeys((c.section, c.rule) for c in rep.claims))
    parts = [f"<h1>Did the paper's claims hold here? Profile {e(rep.profile)}, run {e(rep.run)}</h1>",
             f"<p>{e(verdict_counts(rep.claims))}. Numbers are read from the artifacts under "
             f"<code>results/{e(rep.profile)}/</code>; 95% bootstrap "
             f"CIs in brackets. Paper: Qwen2.5-32B-Instruct on s1K-1.1. Text version: "
             f"<a href=\"{REPORT_MD}\">{REPORT_MD}</a>.</p>",
             "<table><tr><th>claim</th><th>item</th><th>paper</th><th>ours</th><th>same way?</th></tr>",
             rows, "</table>", f"<h2>Rules of the verdicts</h2><ul>{rules}</ul>",
             "<h2>Stage folders: figures, artifacts, config and run identity</h2>"]
    if not rep.folders:
        parts.append(f"<p class=\"muted\">No stage folders under results/{e(rep.profile)}/: no stage has run.</p>")
    for f in rep.folders:
        figs = "".join(
            f"<figure><a href=\"{e(rep.rel(p))}\"><img src=\"{e(rep.rel(p))}\" alt=\"{e(p.name)}\"></a>"
            f"<figcaption>{e(p.stem)}" + (f" (<a href=\"{e(rep.rel(p.with_suffix('.pdf')))}\">pdf</a>)"
                                           if p.with_suffix(".pdf").is_file() else "") + "</figcaption></figure>"
            for p in f.figures)
        links = ", ".join(f"<a href=\"{e(rep.rel(p))}\">{e(p.relative_to(f.path).as_posix())}</a>"
                          for p in f.artifacts if p.suffix != ".pdf")
        config = (f"<details><summary>resolved config</summary><pre>{e(json.dumps(f.config, indent=1))}</pre>"
                  f"</details>") if f.config else "<p class=\"muted\">no config.json</p>"
        parts += [f"<h3>{e(f.stage)} / {e(f.run)}</h3>", f"<p>run identity: {e(_identity_text(f.identity))}</p>",
                  f"<div class=\"figs\">{figs}</div>" if figs else "", f"<p>artifacts: {links or 'none'}</p>", config]
    trows = "".join(f"<tr><td>{e(t.stage)}</td><td>{_secs(t.latest)}</td><td>{_secs(t.longest)}</td></tr>"
                    for t in rep.times)
    total = sum(t.longest or 0 for t in rep.times)
    parts += ["<h2>Stage times (from the times log)</h2>", f"<p>{e(TIMES_NOTE)}</p>",
              f"<table><tr><th>stage</th><th>latest</th><th>longest</th></tr>{trows}</table>",
              f"<p>Sum of the longest times: {total / 60:.1f} min.</p>"]
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Report: {e(rep.profile)}"
            f"</title><style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
