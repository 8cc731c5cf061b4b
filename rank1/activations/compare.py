"""Drivers of 2.3 (class shares of one side) and 2.8 (LoRA vs. MLP, Figure 2): read finished autointerp
folders, write a JSON of every number and the figure (PDF + PNG), and log the findings in words.

Both read saved artifacts only and recompute in seconds, so they always rewrite their outputs
(atomically). Folders: ``results/<profile>/<kind>_interpretability/<run>/`` and
``results/<profile>/lora_vs_mlp/<run>/``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rank1 import constants as K
from rank1.artifacts import write_json, write_run_metadata
from rank1.activations.interpretability import analyze, check_comparable, compare, load_autointerp, scheme_of
from rank1.activations.plots import plot_figure2, plot_interpretability
from rank1.config import option, results_dir
from rank1.runs import RunOptions, check_same_identity
from rank1.stats import DEFAULT_RESAMPLES
from rank1.store import check_writable

log = logging.getLogger(__name__)
KINDS = ("lora", "mlp")


@dataclass
class InterpretabilityConfig(RunOptions):
    kind: str = option("which side: lora (adapter features) | mlp (the MLP-neuron baseline)", "lora")
    autointerp: str | None = option("autointerp folder (default: results/<profile>/<kind>_autointerp/<run>)")
    layer_bin: int = option("layers per bin (the authors used 8 on 64 layers); 0: thirds of the network", 0)
    n_resamples: int = option("bootstrap resamples of every CI", DEFAULT_RESAMPLES)
    seed: int = option("bootstrap seed", 0)
    out: str | None = option("output folder (default: results/<profile>/<kind>_interpretability/<run>)")

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"--kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.layer_bin < 0 or self.n_resamples < 100:
            raise ValueError("need --layer_bin >= 0 and --n_resamples >= 100")


@dataclass
class CompareConfig(RunOptions):
    lora: str | None = option("LoRA autointerp folder (default: results/<profile>/lora_autointerp/<run>)")
    mlp: str | None = option("MLP autointerp folder (default: results/<profile>/mlp_autointerp/<run>)")
    n_resamples: int = option("bootstrap resamples of every CI", DEFAULT_RESAMPLES)
    seed: int = option("bootstrap seed", 0)
    out: str | None = option("output folder (default: results/<profile>/lora_vs_mlp/<run>)")

    def __post_init__(self):
        if self.n_resamples < 100:
            raise ValueError("need --n_resamples >= 100")


def _fmt(e: dict[str, Any], pct: bool = True) -> str:
    if e.get("value") is None:
        return "undefined"
    f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.2f}")
    return f"{f(e['value'])} [{f(e['lo'])}, {f(e['hi'])}]" if e.get("lo") is not None else f(e["value"])


def interpretability(cfg: InterpretabilityConfig) -> Path:
    run = cfg.resolve_run()
    src = Path(cfg.autointerp) if cfg.autointerp else results_dir(
        cfg.profile, K.AUTOINTERP_STAGE.format(kind=cfg.kind), run.name)
    out = Path(cfg.out) if cfg.out else results_dir(cfg.profile, K.INTERPRETABILITY_STAGE.format(kind=cfg.kind),
                                                    run.name)
    records, config = load_autointerp(src)
    check_same_identity(run.identity(), config.get("identity") or {}, f"autointerp results {src}")
    check_writable(out)
    report = analyze(records, config.get("n_layers"), cfg.layer_bin, cfg.n_resamples, cfg.seed, scheme_of(config))
    report["source"] = str(src)
    for line in interpretability_findings(report):
        log.info("%s", line)
    write_json(out / K.INTERPRETABILITY_JSON, report)
    plot_interpretability(report, out / K.INTERPRETABILITY_STEM, f"{cfg.kind} features of {run.name}: autointerp "
                          f"({config.get('explainer')} explainer, {config.get('scorer')} scorer)")
    write_run_metadata(out, cfg, {"identity": config.get("identity"), "autointerp": str(src)})
    return out


def interpretability_findings(report: dict[str, Any]) -> list[str]:
    c = report["classes"]
    lines = [f"{c['n']} rated of {report['n_features']} features ({report['status']}): " +
             ", ".join(f"{k} {_fmt(v)}" for k, v in c["shares"].items())]
    for b in report.get("by_layer_bin", []):
        lines.append(f"layers {b['layers'][0]}-{b['layers'][1]} (n={b['n']}): monosemantic "
                     f"{_fmt(b['shares']['monosemantic'])}")
    for m, s in report["scores"].items():
        if s.get("mean"):
            lines.append(f"held-out {m}: mean balanced accuracy {_fmt(s['mean'], pct=False)} over {s['n']} features "
                         f"({s['n_undefined']} without a score)")
    return lines


def lora_vs_mlp(cfg: CompareConfig) -> Path:
    run = cfg.resolve_run()
    lora_dir = Path(cfg.lora) if cfg.lora else results_dir(cfg.profile, K.AUTOINTERP_STAGE.format(kind="lora"),
                                                           run.name)
    mlp_dir = Path(cfg.mlp) if cfg.mlp else results_dir(cfg.profile, K.AUTOINTERP_STAGE.format(kind="mlp"), run.name)
    out = Path(cfg.out) if cfg.out else results_dir(cfg.profile, K.COMPARE_STAGE, run.name)
    lora, lora_cfg = load_autointerp(lora_dir)
    mlp, mlp_cfg = load_autointerp(mlp_dir)
    check_same_identity(run.identity(), lora_cfg.get("identity") or {}, f"autointerp results {lora_dir}")
    check_comparable(lora_cfg, mlp_cfg, lora_dir, mlp_dir)
    check_writable(out)
    comp = compare(lora, mlp, cfg.n_resamples, cfg.seed, scheme_of(lora_cfg))
    comp["sources"] = {"lora": str(lora_dir), "mlp": str(mlp_dir)}
    for line in comparison_findings(comp):
        log.info("%s", line)
    write_json(out / K.COMPARE_JSON, comp)
    plot_figure2(comp, out / K.FIGURE2_STEM, f"LoRA directions vs. MLP neurons ({run.name}; "
                 f"{lora_cfg.get('explainer')} explainer, {lora_cfg.get('scorer')} scorer)")
    write_run_metadata(out, cfg, {"identity": lora_cfg.get("identity"), "lora": str(lora_dir), "mlp": str(mlp_dir)})
    return out


def comparison_findings(comp: dict[str, Any]) -> list[str]:
    cl = comp["classes"]
    chi = comp["chi_square"]
    lines = [f"monosemantic: LoRA {_fmt(cl['lora']['shares']['monosemantic'])} (n={cl['lora']['n']}) vs. MLP "
             f"{_fmt(cl['mlp']['shares']['monosemantic'])} (n={cl['mlp']['n']}); paper 22.4% vs. 20.2%",
             "chi-square 2 x 3: " + ("undefined" if chi["statistic"] is None else
                                     f"{chi['statistic']:.2f} (dof {chi['dof']}, p {chi['p_value']:.3g})")]
    for m, s in comp["scores"].items():
        mw = s["mann_whitney"]
        if mw["p_value"] is not None:
            lines.append(f"{m}: median LoRA {mw['median_a']:.3f} vs. MLP {mw['median_b']:.3f}, P(LoRA > MLP) "
                         f"{mw['effect']:.2f}, Mann-Whitney p {mw['p_value']:.3g}")
    for e in (comp.get("enrichment") or {}).values():
        paper = f" (paper {e['paper']}x)" if e.get("paper") else ""
        lines.append(f"enrichment {e['name']}: {_fmt(e['enrichment'], pct=False)} "
                     f"({e['lora_count']} LoRA / {e['mlp_count']} MLP){paper}")
    return lines
