"""Stage 6: the report of the main job, built only from the saved artifacts under ``results/<profile>/``.

Finds every stage folder ``results/<profile>/*/<run>/`` (so a stage added later appears without code changes),
picks the run, reads the claims' artifacts (:mod:`rank1.report.claims`) and the stage times of
``logs/run_all-<profile>-times.tsv``, and writes ``reports/<profile>/REPORT.md`` and ``index.html``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from rank1 import constants as K
from rank1.artifacts import read_json, write_text
from rank1.config import project_root
from rank1.pipeline import stages, times_path
from rank1.report.claims import Claim, claims
from rank1.report.config import ReportConfig
from rank1.report.render import (
    REPORT_HTML,
    REPORT_MD,
    Report,
    StageFolder,
    StageTime,
    render_html,
    render_markdown,
)

FIGURE_EXT = ".png"
ARTIFACT_EXTS = (".json", ".jsonl", ".md", ".safetensors", ".html", ".pdf", ".csv", ".tsv")


def _load(results: Path, stage: str, run: str, name: str) -> tuple[Any, str]:
    rel = f"{stage}/{run}/{name}"
    path = results / rel
    return (read_json(path) if path.is_file() else None), rel


def read_claims(results: Path, run: str) -> list[Claim]:
    """Every claim of the paper from the artifacts of ``run`` under ``results``."""
    return claims(lambda stage, name: _load(results, stage, run, name))


def discover(results: Path) -> list[StageFolder]:
    """Every ``<stage>/<run>/`` folder under ``results`` (hidden ones skipped), with its figures (PNG, the
    PDF beside it linked too), its other artifacts, its config and run identity."""
    out = []
    for stage in sorted(p for p in results.glob("*") if p.is_dir() and not p.name.startswith(".")):
        for run in sorted(p for p in stage.glob("*") if p.is_dir() and not p.name.startswith(".")):
            files = sorted(p for p in run.iterdir() if p.is_file() and not p.name.startswith("."))
            figures = [p for p in files if p.suffix == FIGURE_EXT]
            artifacts = [p for p in files if p.suffix in ARTIFACT_EXTS]
            artifacts += [p / K.DASHBOARD_INDEX for p in sorted(run.iterdir())
                          if p.is_dir() and (p / K.DASHBOARD_INDEX).is_file()]
            config = _read_optional(run / K.CONFIG_JSON)
            manifest = _read_optional(run / K.STORE_MANIFEST)
            identity = (config or {}).get("identity") or ((config or {}).get("runs") or {}).get("lora") or \
                (manifest or {}).get("identity")
            out.append(StageFolder(stage.name, run.name, run, figures, artifacts, config, identity))
    return out


def _read_optional(path: Path) -> dict | None:
    try:
        value = read_json(path) if path.is_file() else None
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def pick_run(folders: list[StageFolder]) -> str | None:
    """The run found in the most stage folders (ties: the newest)."""
    if not folders:
        return None
    counts = Counter(f.run for f in folders)
    newest = {f.run: max(g.path.stat().st_mtime for g in folders if g.run == f.run) for f in folders}
    return max(counts, key=lambda r: (counts[r], newest[r]))


def read_times(path: Path) -> dict[str, list[int]]:
    """Stage name -> its logged wall times in seconds, oldest first (``logs/run_all-<profile>-times.tsv``),
    in the order stages last finished."""
    times: dict[str, list[int]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) == 3 and parts[2].endswith("s") and parts[2][:-1].isdigit():
                times[parts[1]] = times.pop(parts[1], []) + [int(parts[2][:-1])]
    return times


def stage_times(times: dict[str, list[int]]) -> list[StageTime]:
    """Every pipeline stage with its latest and longest logged time, then stages the log has that the
    pipeline does not list."""
    names = [s.name for s in stages()]
    names += [n for n in times if n not in names]
    return [StageTime(n, times[n][-1], max(times[n])) if n in times else StageTime(n, None, None) for n in names]


def build_report(cfg: ReportConfig) -> Report:
    """The report of ``cfg.profile`` from its results folder and its times log (nothing is written)."""
    results = project_root() / "results" / cfg.profile
    out = Path(cfg.out) if cfg.out else project_root() / "reports" / cfg.profile
    folders = discover(results) if results.is_dir() else []
    run = cfg.run or pick_run(folders)
    times = stage_times(read_times(times_path(cfg.profile)))
    return Report(cfg.profile, run, results, out, read_claims(results, run or "(no run)"), folders, times)


def run_write_report(cfg: ReportConfig) -> Report:
    """6.1: build the report from the saved artifacts and write ``REPORT.md`` and ``index.html`` (atomically)
    into ``rep.out``; returns the report (the script prints its verdict counts)."""
    rep = build_report(cfg)
    write_text(rep.out / REPORT_MD, render_markdown(rep))
    write_text(rep.out / REPORT_HTML, render_html(rep))
    return rep
