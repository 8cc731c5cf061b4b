"""Stage 4.3: can adapter activations predict whether a rollout is correct?

Reads 4.2's rollouts of held-out problems (never the adapter's training data) and their per-rollout
activation means: over the whole thinking and over its last tokens. Logistic regression scored out of
fold, with folds grouped by problem and the regularisation chosen inside each training fold (see
rank1/interventions/probes.py). Baselines through the same procedure: majority class (a constant: AUC 0.5), thinking
length alone, and the matched base-model MLP neurons. ROC-AUC with 95% CIs from resampling problems, and
the probe's AUC minus each baseline's with its CI; the log says plainly whether the probe beats them.

Usage:
    python 4_lora_interventions/4.3_correctness_probes.py                 # tiny profile, newest run
    python 4_lora_interventions/4.3_correctness_probes.py --n_splits 10

Writes probes.json and probe_auc.{pdf,png} into results/<profile>/probes/<run>/.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.torch import load_file
from tqdm.auto import tqdm

from rank1 import constants as K
from rank1.artifacts import public_config, read_json, write_json
from rank1.config import option, parse_config, results_dir
from rank1.interventions.plots import plot_probes
from rank1.interventions.common import StageOptions, finished, output_folder, save_metadata
from rank1.logs import run_main
from rank1.interventions.probes import out_of_fold_scores
from rank1.runs import check_same_identity
from rank1.stats import grouped_auc

log = logging.getLogger("4.3_correctness_probes")
SETTINGS = ("n_splits", "inner_splits", "n_resamples", "rollouts", "cs")
PROBE = "adapters (trace + last)"


@dataclass
class ProbeConfig(StageOptions):
    rollouts: str | None = option("4.2's folder (default: results/<profile>/rollouts/<run>)")
    n_splits: int = option("outer folds, grouped by problem", 5)
    inner_splits: int = option("inner folds that choose the regularisation", 3)
    n_resamples: int = option("bootstrap resamples of problems for the AUC CIs", 2000)
    cs: str = option("inverse L2 strengths C the inner folds choose from", "0.01,0.1,1,10")
    one_class: str = option("when every rollout has the same grade: error (stop with an error) | record (write "
                            "probes.json saying so, no AUCs; for models that answer nothing right)", "error")

    def __post_init__(self):
        if self.one_class not in ("error", "record"):
            raise ValueError(f"--one_class must be error or record, got {self.one_class!r}")
        if self.n_splits < 2 or self.inner_splits < 2 or self.n_resamples < 1:
            raise ValueError("--n_splits and --inner_splits must be >= 2, --n_resamples >= 1")
        try:
            if not all(float(c) > 0 for c in self.cs.split(",")):
                raise ValueError
        except ValueError:
            raise ValueError(f"--cs must be comma-separated positive numbers, got {self.cs!r}") from None


def feature_sets(t: dict) -> dict:
    sets = {PROBE: np.hstack([t["lora_trace_RS"], t["lora_last_RS"]]),
            "adapters (last tokens)": t["lora_last_RS"].numpy(), "adapters (trace)": t["lora_trace_RS"].numpy(),
            "thinking length": t["think_tokens_R"].numpy()[:, None].astype(float)}
    if "mlp_trace_RS" in t:
        sets["MLP neurons (trace + last)"] = np.hstack([t["mlp_trace_RS"], t["mlp_last_RS"]])
    return sets


def main(cfg: ProbeConfig) -> None:
    run = cfg.resolve_run()
    folder = output_folder(cfg, K.PROBES_STAGE, run)
    config = public_config(cfg)
    report = finished(folder / K.PROBES_JSON, run, config, SETTINGS, cfg.overwrite)
    if report is None:
        src = Path(cfg.rollouts) if cfg.rollouts else results_dir(cfg.profile, K.ROLLOUTS_STAGE, run.name)
        if not (src / K.ROLLOUTS_JSON).is_file():
            raise FileNotFoundError(f"{src} holds no finished rollouts ({K.ROLLOUTS_JSON} missing): run "
                                    f"4_lora_interventions/4.2_counterfactual_rollouts.py first, or pass --rollouts")
        check_same_identity(run.identity(), read_json(src / K.ROLLOUTS_JSON)["identity"], f"rollouts in {src}")
        t = load_file(str(src / K.ROLLOUTS_ACTS))
        y, groups = t["correct_R"].numpy().astype(int), t["problem_R"].numpy()
        auc, vs, chosen = {}, {}, {}
        if len(set(y.tolist())) < 2:
            why = (f"all {len(y)} rollouts in {src} are {'correct' if y[0] else 'incorrect'}: nothing to predict; "
                   f"rerun 4.2 with more problems or samples")
            if cfg.one_class == "error":
                raise ValueError(why)
            log.warning("%s (recorded, --one_class record)", why)
        else:
            scores = {"majority class": np.full(len(y), float(y.mean() >= 0.5))}
            for name, X in tqdm(feature_sets(t).items(), desc="probes", unit="feature set"):
                scores[name], chosen[name] = out_of_fold_scores(X, y, groups, cfg.n_splits,
                                                                [float(c) for c in cfg.cs.split(",")], cfg.inner_splits)
            auc = {n: grouped_auc(y, s, groups, cfg.n_resamples).to_dict() for n, s in scores.items()}
            vs = {n: grouped_auc(y, scores[PROBE], groups, cfg.n_resamples, baseline_N=s).to_dict()
                  for n, s in scores.items() if n in ("thinking length", "MLP neurons (trace + last)")}
        report = {"identity": run.identity(), "config": config, "n_rollouts": len(y), "n_problems": len(set(groups)),
                  "base_rate": float(y.mean()), "auc": auc, "probe_minus_baseline": vs, "chosen_C": chosen,
                  "verdict": verdict(auc, vs) if auc else f"undefined: {why}"}
        save_metadata(folder, cfg, run)
        write_json(folder / K.PROBES_JSON, report)
    for name, e in report["auc"].items():
        ci = "" if e["lo"] is None else f" [{e['lo']:.3f}, {e['hi']:.3f}]"
        log.info("%-28s AUC %s", name, "undefined" if e["value"] is None else f"{e['value']:.3f}{ci}")
    log.info("%s", report["verdict"])
    for path in plot_probes(report, folder / K.PROBES_STEM) if report["auc"] else ():
        log.info("wrote %s", path)


def verdict(auc: dict, vs: dict) -> str:
    """One plain sentence: does the probe beat every baseline (its CI of the difference above 0)?"""
    better = [n for n, d in vs.items() if d["lo"] is not None and d["lo"] > 0]
    worse_or_same = [n for n in vs if n not in better]
    p = auc[PROBE]
    head = f"probe AUC {p['value']:.3f}" if p["value"] is not None else "probe AUC undefined"
    if p["lo"] is not None and p["hi"] < 0.5:
        head += " (below chance out of fold: its CI lies under 0.5)"
    elif p["lo"] is not None and p["lo"] <= 0.5:
        head += " (its CI includes chance)"
    if worse_or_same:
        return f"{head}: no better than {', '.join(worse_or_same)} (the CI of the difference includes 0)"
    return f"{head}: better than {', '.join(better)} (CI of the difference above 0)"


if __name__ == "__main__":
    run_main(main, parse_config(ProbeConfig, "probes", __doc__))
