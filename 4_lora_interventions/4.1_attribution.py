"""Stage 4.1: which adapters drive a prediction? Gradient x activation of a target with respect to every
adapter's scalar at every position, checked against actually zeroing activations.

The sequence is a held-out problem with its gold trace, up to the forced ``Answer:``; the target is the
logit of the gold answer's first token there minus the largest other logit (``--target logit_diff``,
the default: a confident model's log-prob sits near 0) or its log-prob (``logprob``). With ``--freeze``
(default, the authors' linearisation) RMSNorm scales and attention patterns are constants; the plain
gradient is computed as well for the check. attr = act x grad predicts the change of the target when
that activation is zeroed (-attr); the check zeroes the largest and some random (adapter, position)
pairs, and whole adapters, and reports Pearson r and sign agreement of prediction and actual change.

Usage:
    python 4_lora_interventions/4.1_attribution.py                       # tiny profile, newest run
    python 4_lora_interventions/4.1_attribution.py --n_problems 32 --target logit_diff --no-freeze

Writes into results/<profile>/attribution/<run>/: attribution.json (top adapters per problem, agreement),
attribution.safetensors (adapters x positions per problem), attribution_by_adapter.{pdf,png}, and the
dashboard html/index.html (adapters x positions heatmaps, tokens escaped). Resumes per problem.
"""

import logging
import shutil
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from rank1 import constants as K
from rank1.artifacts import public_config, read_json, write_json, write_with
from rank1.interventions.attribution import TARGETS, agreement, answer_target, attribute, check_problem, target_value
from rank1.config import data_dir, option, parse_config
from rank1.dashboard import write_dashboard
from rank1.interventions.dashboard import build_payloads
from rank1.data import read_jsonl
from rank1.interventions.plots import plot_agreement, plot_site_grid
from rank1.interventions.common import StageOptions, finished, heldout_problems, output_folder, save_metadata
from rank1.logs import run_main
from rank1.models import load_tokenizer

log = logging.getLogger("4.1_attribution")
SETTINGS = ("n_problems", "offset", "target", "freeze", "n_check", "seed")


@dataclass
class AttributionConfig(StageOptions):
    n_problems: int = option("held-out problems to attribute", 8)
    offset: int = option("first held-out problem", 0)
    target: str = option(f"what is attributed: one of {TARGETS}", "logit_diff")
    freeze: bool = option("freeze RMSNorm scales and attention patterns (the authors' linearisation)", True)
    n_check: int = option("per problem: top and random (adapter, position) pairs and top adapters zeroed", 8)
    n_rows: int = option("adapters shown per problem in the dashboard", 40)
    top: int = option("top adapters reported per problem", 10)
    seed: int = option("seed of the random pairs checked", 0)
    precision: str = option("auto | bf16 | fp32", "fp32")

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"--target must be one of {TARGETS}, got {self.target!r}")
        if min(self.n_problems, self.n_check, self.n_rows, self.top) < 1:
            raise ValueError("--n_problems, --n_check, --n_rows and --top must be >= 1")


def problem_records(cfg: AttributionConfig) -> list[dict]:
    """Held-out items with their gold traces (the generated split keeps the trace beside the answer)."""
    bench = heldout_problems(cfg.profile, cfg.n_problems, cfg.offset)
    records = read_jsonl(data_dir(cfg.profile) / K.EVAL_JSONL)[cfg.offset:cfg.offset + cfg.n_problems]
    return [{"id": it.id, "question": it.question, "gold": it.gold, "trace": r["deepseek_thinking_trajectory"]}
            for it, r in zip(bench.items, records, strict=True)]


def attribute_all(cfg: AttributionConfig, loaded, problems: list[dict], partial) -> list[dict]:
    """Attribute and check each problem, saving each one under ``partial`` so a killed run resumes."""
    sites, tok = loaded.sites, loaded.tokenizer
    out = []
    for i, prob in enumerate(tqdm(problems, desc="attribution", unit="problem")):
        done = partial / f"problem_{i:04d}.json"
        if done.is_file():
            out.append(read_json(done))
            continue
        ids_T, pos, token = answer_target(tok, prob["question"], prob["trace"], prob["gold"])

        def target(logits_TV, pos=pos, token=token):
            return target_value(logits_TV[pos], token, cfg.target)

        res = attribute(loaded.model, sites, ids_T, target, cfg.freeze, loaded.autocast)
        exact = attribute(loaded.model, sites, ids_T, target, False, loaded.autocast) if cfg.freeze else res
        checks = check_problem(loaded.model, sites, ids_T, target, res, exact, cfg.n_check, cfg.seed + i,
                               loaded.autocast)
        per_site = res.attr_ST.sum(1)
        top = torch.argsort(per_site.abs(), descending=True)[:cfg.top].tolist()
        rec = {"id": prob["id"], "question": prob["question"], "gold": prob["gold"],
               "target_token": tok.decode([token]), "target_value": res.target, "n_tokens": len(ids_T),
               "top_adapters": [{"layer": sites[s].layer, "proj": sites[s].proj, "attr": float(per_site[s])}
                                for s in top],
               "checks": checks}
        tensors = {"attr_ST": res.attr_ST.contiguous(), "acts_ST": res.acts_ST.contiguous(), "ids_T": ids_T}
        write_with(partial / f"problem_{i:04d}.safetensors", lambda p, t=tensors: save_file(t, str(p)))
        write_json(done, rec)
        out.append(rec)
    return out


def main(cfg: AttributionConfig) -> None:
    run = cfg.resolve_run()
    folder = output_folder(cfg, K.ATTRIBUTION_STAGE, run)
    config = public_config(cfg)
    report = finished(folder / K.ATTRIBUTION_JSON, run, config, SETTINGS, cfg.overwrite)
    loaded = None
    if report is None:
        problems = problem_records(cfg)
        loaded = run.load(cfg.precision)
        partial = folder / K.ATTRIBUTION_PARTIAL_DIR
        if cfg.overwrite:
            shutil.rmtree(partial, ignore_errors=True)
        marker = partial / "settings.json"
        if marker.is_file() and read_json(marker) != {k: config[k] for k in SETTINGS} | run.identity():
            raise ValueError(f"{partial} holds an interrupted run with other settings or weights; pass --overwrite")
        write_json(marker, {k: config[k] for k in SETTINGS} | run.identity())
        records = attribute_all(cfg, loaded, problems, partial)
        tensors = {}
        for i in range(len(records)):
            for name, t in load_file(str(partial / f"problem_{i:04d}.safetensors")).items():
                tensors[f"{name}_{i}"] = t
        mean_abs = torch.stack([tensors[f"attr_ST_{i}"].abs().mean(1) for i in range(len(records))]).mean(0)
        sites = [{"layer": s.layer, "proj": s.proj} for s in loaded.sites]
        report = {"identity": run.identity(), "config": config, "sites": sites,
                  "mean_abs_by_adapter": mean_abs.tolist(), "agreement": agreement([r["checks"] for r in records]),
                  "problems": records}
        save_metadata(folder, cfg, run)
        write_with(folder / K.ATTRIBUTION_TENSORS, lambda p: save_file(tensors, str(p)))
        write_json(folder / K.ATTRIBUTION_JSON, report)
        shutil.rmtree(partial, ignore_errors=True)
    name = "linearised" if report["config"]["freeze"] else "plain gradient"
    for kind, row in report["agreement"].items():
        log.info("zeroing %-14s n=%-4d r(%s)=%s r(plain gradient)=%s, sign agreement %s / %s", kind, row["n"], name,
                 *(f"{row[k]:.3f}" if row[k] is not None else "-" for k in
                   ("pearson_predicted", "pearson_predicted_exact", "sign_agreement_predicted",
                    "sign_agreement_predicted_exact")))
    order = sorted(range(len(report["sites"])), key=lambda s: -report["mean_abs_by_adapter"][s])[:10]
    log.info("adapters by mean |attr|: %s", ", ".join(
        f"L{report['sites'][s]['layer']}.{report['sites'][s]['proj']} {report['mean_abs_by_adapter'][s]:.3g}"
        for s in order))
    for path in plot_site_grid(report["sites"], report["mean_abs_by_adapter"], "mean |grad x act| per position",
                               folder / K.ATTRIBUTION_STEM):
        log.info("wrote %s", path)
    plot_agreement(report["agreement"], [r["checks"] for r in report["problems"]], folder / K.ATTRIBUTION_CHECK_STEM)
    tok = loaded.tokenizer if loaded else load_tokenizer(run.model_id)
    index, pages = build_payloads(report, load_file(str(folder / K.ATTRIBUTION_TENSORS)),
                                  lambda ids: [tok.decode([t]) for t in ids], cfg.n_rows,
                                  f"Adapter attribution: {run.name}")
    write_dashboard(folder / K.ATTRIBUTION_HTML_DIR, index["title"], "attribution.js", index, pages)
    log.info("dashboard: %s", folder / K.ATTRIBUTION_HTML_DIR / K.DASHBOARD_INDEX)


if __name__ == "__main__":
    run_main(main, parse_config(AttributionConfig, "attribution", __doc__))
