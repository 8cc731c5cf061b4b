"""The final report: did the paper's claims hold here? ``reports/<profile>/REPORT.md`` and a static
``index.html`` (opens from disk), built only from saved artifacts.

For each claim of the paper: its number (:mod:`rank1.paper`), ours with its 95% CI where the artifact has
one, and a verdict by a rule stated beside it: ``yes`` (ours points the same way), ``no``, or ``n/a`` (the
artifact is missing, or it cannot tell). Then every stage folder found under ``results/<profile>/*/<run>/``
(so a stage added later appears without code changes) with its figures, artifacts, resolved config and run
identity, and the wall time of each stage from ``logs/run_all-<profile>-times.tsv``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rank1 import constants as K
from rank1.artifacts import read_json, write_text
from rank1.config import option, project_root
from rank1.dashboard import escape
from rank1.paper import PAPER_ABLATION, PAPER_INTERP, PAPER_RECOVERY, PAPER_SAE, PAPER_STEERING
from rank1.training.recovery import BENCHMARK_TITLES

REPORT_MD = "REPORT.md"
REPORT_HTML = "index.html"
YES, NO, NA = "yes", "no", "n/a"
FIGURE_EXT = ".png"
ARTIFACT_EXTS = (".json", ".jsonl", ".md", ".safetensors", ".html", ".pdf", ".csv", ".tsv")
DOMINANT_TOP = 4  # "a few layers": the paper names 4 (44, 45, 46, 62)


@dataclass
class ReportConfig:
    profile: str = option("profile the defaults came from", "tiny")
    run: str | None = option("run whose artifacts the claims read (default: the run found in the most stage folders)")
    out: str | None = option("output folder (default: reports/<profile>)")

    def __post_init__(self):
        if self.run is not None and (not self.run or "/" in self.run):
            raise ValueError(f"--run must be a run folder name, got {self.run!r}")


@dataclass
class Claim:
    section: str  # the paper's claim, in a few words
    item: str  # which number (a benchmark, a category, ...)
    paper: str  # the paper's number
    ours: str  # ours, with its CI where there is one
    verdict: str  # yes | no | n/a
    rule: str  # how the verdict is decided
    source: str | None = None  # the artifact it was read from (relative to the results folder)


@dataclass
class StageFolder:
    stage: str
    run: str
    path: Path
    figures: list[Path] = field(default_factory=list)
    artifacts: list[Path] = field(default_factory=list)
    config: dict[str, Any] | None = None
    identity: dict[str, Any] | None = None


# ---- small formatting helpers ---------------------------------------------------------------------------

def fmt_ci(est: dict | None, scale: float = 1.0, digits: int = 1) -> str:
    """``value [lo, hi]`` of an estimate dict (``value``, ``lo``, ``hi``), times ``scale``."""
    if not est or est.get("value") is None:
        return "undefined"
    v, lo, hi = (est.get(k) for k in ("value", "lo", "hi"))
    text = f"{v * scale:.{digits}f}"
    return text + (f" [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]" if lo is not None and hi is not None else "")


def fmt_pct(est: dict | None) -> str:
    """An estimate of a share as ``value [lo, hi]%`` (``undefined`` without a value)."""
    text = fmt_ci(est, 100)
    return text if text == "undefined" else text + "%"


def _missing(section: str, item: str, paper: str, rule: str, source: str) -> Claim:
    return Claim(section, item, paper, f"missing: {source} (its stage has not run)", NA, rule, source)


def _load(results: Path, stage: str, run: str, name: str) -> tuple[Any, str]:
    rel = f"{stage}/{run}/{name}"
    path = results / rel
    return (read_json(path) if path.is_file() else None), rel


def _overlap(a: dict, b: dict) -> bool:
    return a["lo"] <= b["hi"] and b["lo"] <= a["hi"]


# ---- the claims -----------------------------------------------------------------------------------------

RULE_RECOVERY = ("yes: our recovery >= 50% (the LoRA keeps most of the full finetune's gain); no: below 50%; "
                 "n/a: the full finetune's gain is not measurable (its accuracy CI overlaps base's)")
RULE_MLP_ATTN = ("yes: recovery with the MLP adapters ablated < recovery with the attention adapters ablated; "
                 "no: otherwise; n/a: the full finetune's gain is not measurable")
RULE_MLP_ATTN_KL = "yes: KL of removing all MLP adapters > KL of removing all attention adapters; no: otherwise"
RULE_PROJ = ("yes: the projection with the largest mean single-adapter ablation KL (Figure 1's bars) is the "
             "paper's; no: another one")
RULE_LAYERS = (f"yes: the top {DOMINANT_TOP} layers by leave-one-layer-out KL carry at least twice their uniform "
               f"share (2 x {DOMINANT_TOP}/layers) of the summed KL; no: otherwise (positions compared as depth only)")
RULE_MONO = ("yes: the LoRA monosemantic share's CI overlaps the MLP share's CI or lies above it (about as "
             "monosemantic or more); no: it lies entirely below")
RULE_ENRICH = "yes: the enrichment's CI lies above 1; no: otherwise (not enriched at this sample size)"
RULE_ALIVE = "yes: our alive share is at least half the paper's (2000/3584 = 56%); no: below"
RULE_FVU = "n/a: the paper gives no FVU (shown for reference, with L0 and the share of the loss gain kept)"
RULE_STEER = ("yes: the (lower) median KL onset of the scalar-offset sweep is >= 10 natural standard deviations "
              "(no onset within the sweep counts as beyond it); no: below")


def _paper_recovery(bench: str) -> tuple[str, str]:
    """The paper's LoRA recovery and its MLP- vs. attention-ablated recovery for ``bench``; for a benchmark
    the paper does not have, the numbers it does have, said so."""
    lora, mlp, attn = (PAPER_RECOVERY[v] for v in ("lora", "mlp_ablated", "attn_ablated"))
    titles = ", ".join(BENCHMARK_TITLES.get(b, b) for b in lora)
    first = lora.get(bench)
    lora_text = f"{first:.1f}%" if first is not None else \
        f"{min(lora.values()):.0f}-{max(lora.values()):.0f}% on {titles} (not this benchmark)"
    both = [b for b in mlp if b in attn]
    if bench in both:
        abl_text = f"{mlp[bench]:.1f}% vs. {attn[bench]:.1f}%"
    else:
        abl_text = "; ".join(f"{mlp[b]:.1f}% vs. {attn[b]:.1f}% on {BENCHMARK_TITLES.get(b, b)}" for b in both) + \
            " (not this benchmark)"
    return lora_text, abl_text


def recovery_claims(results: Path, run: str) -> list[Claim]:
    rec, src = _load(results, "eval", run, K.RECOVERY_JSON)
    sec1, sec2 = "recovery of the full finetune's gain", "MLP- vs. attention-ablated recovery"
    if rec is None:
        lora_text, abl_text = _paper_recovery("")
        return [_missing(sec1, "all benchmarks", lora_text, RULE_RECOVERY, src),
                _missing(sec2, "all benchmarks", abl_text, RULE_MLP_ATTN, src)]
    out, ablated = [], []
    for bench in rec["benchmarks"]:
        acc = rec["accuracy"]
        title = BENCHMARK_TITLES.get(bench, bench)
        measurable = not _overlap(acc["full"][bench], acc["base"][bench])
        lora = rec["recovery"].get("lora", {}).get(bench)
        paper, paper_abl = _paper_recovery(bench)
        accs = ", ".join(f"{v} {fmt_ci(acc[v][bench], 100)}" for v in ("base", "lora", "full"))
        ours = f"{fmt_pct(lora)} (accuracy %: {accs})"
        verdict = NA if not measurable or not lora or lora.get("value") is None else \
            YES if lora["value"] >= 0.5 else NO
        out.append(Claim(sec1, title, paper, ours, verdict, RULE_RECOVERY, src))
        mlp, attn = (rec["recovery"].get(v, {}).get(bench) for v in ("mlp_ablated", "attn_ablated"))
        if mlp is None or attn is None:
            continue
        ok = measurable and mlp.get("value") is not None and attn.get("value") is not None
        verdict = NA if not ok else YES if mlp["value"] < attn["value"] else NO
        ablated.append(Claim(sec2, title, paper_abl, f"{fmt_pct(mlp)} vs. {fmt_pct(attn)}", verdict,
                             RULE_MLP_ATTN, src))
    return out + ablated


def ablation_claims(results: Path, run: str) -> list[Claim]:
    abl, src = _load(results, K.ABLATION_STAGE, run, K.ABLATION_JSON)
    sec_t, sec_p, sec_l = ("ablating all MLP adapters hurts more than all attention adapters",
                           "largest-KL projection type", "a few layers dominate")
    paper_proj, paper_type = PAPER_ABLATION["largest_kl_projection"], PAPER_ABLATION["mlp_vs_attention"]
    layers_text = ", ".join(map(str, PAPER_ABLATION["dominant_layers"])) + f" of {PAPER_ABLATION['n_layers']}"
    if abl is None:
        return [_missing(sec_t, "KL, all MLP vs. all attention", paper_type, RULE_MLP_ATTN_KL, src),
                _missing(sec_p, "mean KL by projection", paper_proj, RULE_PROJ, src),
                _missing(sec_l, "leave-one-layer-out KL", layers_text, RULE_LAYERS, src)]
    out = []
    if "type" in abl:
        names, kl = abl["type"]["names"], abl["type"]["kl"]
        est = {n: {k: kl[k][i] for k in ("mean", "lo", "hi")} for i, n in enumerate(names)}
        if "mlp" in est and "attn" in est:
            m, a = est["mlp"], est["attn"]
            ours = " vs. ".join(f"{x['mean']:.3g} [{x['lo']:.3g}, {x['hi']:.3g}]" for x in (m, a)) + " nats"
            out.append(Claim(sec_t, "KL(P_full || P_ablated), all MLP vs. all attention", paper_type, ours,
                             YES if m["mean"] > a["mean"] else NO, RULE_MLP_ATTN_KL, src))
    if "adapter_mean_by_projection" in abl:
        by = abl["adapter_mean_by_projection"]
        means = by["kl"]["mean"]
        i = max(range(len(means)), key=means.__getitem__)
        top = by["projections"][i]
        ours = f"{top} ({means[i]:.3g} [{by['kl']['lo'][i]:.3g}, {by['kl']['hi'][i]:.3g}] nats per adapter)"
        out.append(Claim(sec_p, "mean single-adapter KL by projection", paper_proj, ours,
                         YES if top == paper_proj else NO, RULE_PROJ, src))
    if "layer" in abl:
        layers, kl = abl["layer"]["layers"], abl["layer"]["kl"]["mean"]
        order = sorted(range(len(kl)), key=lambda j: -kl[j])[:DOMINANT_TOP]
        share = sum(kl[j] for j in order) / sum(kl) if sum(kl) > 0 else 0.0
        n = len(layers)
        depth = ", ".join(f"{layers[j]} ({layers[j] / max(n - 1, 1):.2f})" for j in order)
        ours = f"layers {depth} (relative depth) carry {100 * share:.0f}% of the summed KL (uniform: " \
               f"{100 * min(DOMINANT_TOP, n) / n:.0f}%)"
        paper_n = PAPER_ABLATION["n_layers"]
        paper = f"layers {layers_text} (depth " + \
            ", ".join(f"{x / (paper_n - 1):.2f}" for x in PAPER_ABLATION["dominant_layers"]) + ")"
        verdict = YES if n > 2 * DOMINANT_TOP and share >= 2 * DOMINANT_TOP / n else NA if n <= 2 * DOMINANT_TOP else NO
        out.append(Claim(sec_l, "leave-one-layer-out KL", paper, ours, verdict,
                         RULE_LAYERS + f"; n/a with {2 * DOMINANT_TOP} layers or fewer", src))
    return out


def interp_claims(results: Path, run: str) -> list[Claim]:
    comp, src = _load(results, K.COMPARE_STAGE, run, K.COMPARE_JSON)
    sec_m, sec_e = "LoRA directions about as monosemantic as MLP neurons", "category enrichment (LoRA over MLP)"
    text, table = PAPER_INTERP["monosemantic_share_text"], PAPER_INTERP["committed_table"]
    paper_m = f"{100 * text['lora']:.1f}% vs. {100 * text['mlp']:.1f}% (committed table: " \
              f"{100 * table['lora']['monosemantic']:.1f}% vs. {100 * table['mlp']['monosemantic']:.1f}%)"
    names = {"operators": "Mathematical Operators", "answer": "Answer and Solution Markers",
             "procedure": "Instruction and Procedural Markers"}
    if comp is None:
        return [_missing(sec_m, "monosemantic share, LoRA vs. MLP", paper_m, RULE_MONO, src)] + \
            [_missing(sec_e, names.get(k, k), f"{v:.1f}x", RULE_ENRICH, src)
             for k, v in PAPER_INTERP["enrichment"].items()]
    lo, ml = (comp["classes"][s]["shares"]["monosemantic"] for s in ("lora", "mlp"))
    verdict = YES if lo["hi"] >= ml["lo"] else NO
    counts = " / ".join(str(comp["classes"][s]["n"]) for s in ("lora", "mlp"))
    ours = f"{fmt_pct(lo)} vs. {fmt_pct(ml)} (n {counts})"
    out = [Claim(sec_m, "monosemantic share, LoRA vs. MLP", paper_m, ours, verdict, RULE_MONO, src)]
    enr = comp.get("enrichment") or {}
    for key, paper in PAPER_INTERP["enrichment"].items():
        name = enr.get(key, {}).get("name", names.get(key, key))
        est = enr.get(key, {}).get("enrichment")
        if not est or est.get("value") is None:
            out.append(Claim(sec_e, name, f"{paper:.1f}x", "undefined (no features of this category)", NA,
                             RULE_ENRICH, src))
            continue
        e = enr[key]
        ours = f"{fmt_ci(est, digits=2)}x ({e['lora_count']} LoRA / {e['mlp_count']} MLP features)"
        out.append(Claim(sec_e, name, f"{paper:.1f}x", ours, YES if est["lo"] > 1 else NO, RULE_ENRICH, src))
    return out


def sae_claims(results: Path, run: str) -> list[Claim]:
    met, src = _load(results, K.SAE_STAGE, run, K.SAE_METRICS_JSON)
    sec = "BatchTopK SAE on the adapter state"
    paper_alive = PAPER_SAE["n_alive"] / PAPER_SAE["d_sae"]
    paper_a = f"about {PAPER_SAE['n_alive']} of {PAPER_SAE['d_sae']} ({100 * paper_alive:.0f}%)"
    if met is None:
        return [_missing(sec, "alive latents", paper_a, RULE_ALIVE, src),
                _missing(sec, "held-out FVU", "not given", RULE_FVU, src)]
    h = met["heldout"]
    alive = h["n_alive"] / h["d_sae"]
    out = [Claim(sec, "alive latents", paper_a, f"{h['n_alive']} of {h['d_sae']} ({100 * alive:.1f}%)",
                 YES if alive >= paper_alive / 2 else NO, RULE_ALIVE, src)]
    share = (met.get("loss_gap") or {}).get("share")
    kept = f"; loss gain kept when spliced {fmt_pct(share)}" if share else ""
    out.append(Claim(sec, "held-out FVU", "not given", f"{h['fvu']:.3f} (L0 {h['l0']:.1f}{kept})", NA, RULE_FVU, src))
    return out


def steering_claims(results: Path, run: str) -> list[Claim]:
    st, src = _load(results, K.STEERING_STAGE, run, K.STEERING_JSON)
    sec = "steering needs very large magnitudes"
    paper = f"over {PAPER_STEERING['magnitude']:.0f}x normal activations"
    if st is None:
        return [_missing(sec, "KL onset, scalar offset", paper, RULE_STEER, src)]
    rows = [o for o in st.get("onsets", []) if o["mode"] == "offset"]
    if not rows:
        return [Claim(sec, "KL onset, scalar offset", paper, "no offset sweep in the artifact", NA, RULE_STEER, src)]
    top = max(abs(float(m)) for m in str(st["config"].get("scalar_magnitudes", "0")).split(","))
    onsets = sorted(float("inf") if o["kl_onset"] is None else abs(o["kl_onset"]) for o in rows)
    median = onsets[(len(onsets) - 1) // 2]  # the lower median: at least half the adapters need this much
    shown = ", ".join(f"{o['adapter']} {o['kl_onset'] if o['kl_onset'] is not None else f'>{top:g}'}" for o in rows)
    theirs = [o["paper_m"] for o in rows if o.get("paper_m") is not None]
    span = f"{min(theirs):.0f}-{max(theirs):.0f}" if theirs and round(min(theirs)) != round(max(theirs)) else \
        f"{theirs[0]:.0f}" if theirs else ""
    recipe = f"; the authors' recipe here: {span} std" if theirs else ""
    median_text = f">{top:g}" if median == float("inf") else f"{median:g}"
    ours = f"median onset {median_text} natural std ({shown}){recipe}"
    return [Claim(sec, "KL onset, scalar offset", paper, ours, YES if median >= 10 else NO, RULE_STEER, src)]


CLAIMS: list[Callable[[Path, str], list[Claim]]] = [recovery_claims, ablation_claims, interp_claims, sae_claims,
                                                     steering_claims]


def claims(results: Path, run: str) -> list[Claim]:
    """Every claim of the paper, ours beside it, in the paper's order."""
    return [c for fn in CLAIMS for c in fn(results, run)]


# ---- stage folders and times ----------------------------------------------------------------------------

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


@dataclass
class StageTime:
    stage: str
    latest: int | None  # seconds of its latest logged run (None: never logged)
    longest: int | None  # seconds of its longest logged run: the one that did the work (later runs skip it)


def stage_times(times: dict[str, list[int]]) -> list[StageTime]:
    """Every pipeline stage with its latest and longest logged time, then stages the log has that the
    pipeline does not list."""
    from rank1.pipeline import STAGES

    names = [s.name for s in STAGES]
    names += [n for n in times if n not in names]
    return [StageTime(n, times[n][-1], max(times[n])) if n in times else StageTime(n, None, None) for n in names]


def _secs(s: int | None) -> str:
    return "not run" if s is None else f"{s} s" if s < 120 else f"{s / 60:.1f} min"


TIMES_NOTE = ("A stage whose artifacts exist skips its work, so a rerun logs only its start-up: the longest "
              "logged time is the run that did the work.")


# ---- writing --------------------------------------------------------------------------------------------

@dataclass
class Report:
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


def build_report(cfg: ReportConfig) -> Report:
    results = project_root() / "results" / cfg.profile
    out = Path(cfg.out) if cfg.out else project_root() / "reports" / cfg.profile
    folders = discover(results) if results.is_dir() else []
    run = cfg.run or pick_run(folders)
    from rank1.pipeline import times_path

    times = stage_times(read_times(times_path(cfg.profile)))
    return Report(cfg.profile, run, results, out, claims(results, run) if run else claims(results, "(no run)"),
                  folders, times)


def _identity_text(ident: dict | None) -> str:
    if not ident:
        return "none recorded"
    sha = str(ident.get("weights_sha256") or "")[:12]
    return f"run {ident.get('run')}, {ident.get('kind', 'lora')} on {ident.get('base_model')}" + \
        (f", weights sha256 {sha}" if sha else "")


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(rep: Report) -> str:
    n = Counter(c.verdict for c in rep.claims)
    lines = [f"# Did the paper's claims hold here? Profile {rep.profile}, run {rep.run}", "",
             f"{n[YES]} of {len(rep.claims)} comparisons point the paper's way, {n[NO]} do not, {n[NA]} cannot tell "
             f"(n/a). Numbers are read from the artifacts under `results/{rep.profile}/`; 95% bootstrap CIs in "
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
.figs{display:flex;flex-wrap:wrap;gap:12px}.figs figure{margin:0}.figs img{width:260px;border:1px solid #ccc}
figcaption{font-size:12px}pre{background:#f7f7f7;padding:8px;overflow:auto;max-height:400px}.muted{color:#777}"""


def render_html(rep: Report) -> str:
    e = escape
    n = Counter(c.verdict for c in rep.claims)
    rows = "".join(
        f"<tr><td>{e(c.section)}</td><td>{e(c.item)}</td><td>{e(c.paper)}</td><td>{e(c.ours)}</td>"
        f"<td class=\"{'na' if c.verdict == NA else e(c.verdict)}\"><b>{e(c.verdict)}</b></td></tr>"
        for c in rep.claims)
    rules = "".join(f"<li>{e(s)}: {e(r)}</li>" for s, r in dict.fromkeys((c.section, c.rule) for c in rep.claims))
    parts = [f"<h1>Did the paper's claims hold here? Profile {e(rep.profile)}, run {e(rep.run)}</h1>",
             f"<p>{n[YES]} of {len(rep.claims)} comparisons point the paper's way, {n[NO]} do not, {n[NA]} cannot tell "
             f"(n/a). Numbers are read from the artifacts under <code>results/{e(rep.profile)}/</code>; 95% bootstrap "
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


def write_report(cfg: ReportConfig) -> Report:
    """Build the report from the saved artifacts and write ``REPORT.md`` and ``index.html`` (atomically)."""
    rep = build_report(cfg)
    write_text(rep.out / REPORT_MD, render_markdown(rep))
    write_text(rep.out / REPORT_HTML, render_html(rep))
    return rep
