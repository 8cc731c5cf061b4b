"""Stage 1.1: the paper's Figure 1 from the saved ablation results (no model is loaded).

Panels: KL per left-out layer, the 7 x layers heatmap of single-adapter KL, and the mean single-adapter
KL by projection type, all as KL(P_full || P_ablated) with 95% bootstrap CIs over sequences. Also logs
which layers, adapters and types dominate.

Usage:
    python 1_lora_adapter_ablations/1.1_visualize_ablation_results.py                 # tiny profile, newest run
    python 1_lora_adapter_ablations/1.1_visualize_ablation_results.py --results_folder results/paper/ablations/RUN

Writes lora_component_ablation_final.pdf and .png beside ablation_results.json.
"""

import logging

import numpy as np

from rank1 import constants as K
from rank1.ablation.sweep import AblationConfig, read_result, results_folder
from rank1.ablation.plots import figure1
from rank1.config import parse_config
from rank1.logs import run_main

log = logging.getLogger("1.1_visualize_ablation_results")


def findings(report: dict) -> list[str]:
    """Plain-language summary: the largest layers, adapters and types."""
    lines = []
    if "layer" in report:
        kl = np.array(report["layer"]["kl"]["mean"])
        top = np.argsort(-kl)[:5]
        lines.append("layers by KL: " + ", ".join(f"L{report['layer']['layers'][i]} {kl[i]:.3g}" for i in top)
                     + f" (median layer {np.median(kl):.3g})")
    if "adapter" in report:
        ad = report["adapter"]
        cells = [(v, f"L{lay}.{p}") for p, row in zip(ad["projections"], ad["kl"]["mean"], strict=True)
                 for lay, v in zip(ad["layers"], row, strict=True) if v is not None]
        lines.append("adapters by KL: " + ", ".join(f"{n} {v:.3g}" for v, n in sorted(cells, reverse=True)[:8]))
    if "adapter_mean_by_projection" in report:
        by = report["adapter_mean_by_projection"]
        lines.append("mean single-adapter KL by projection: " + ", ".join(
            f"{p} {m:.3g} [{lo:.3g}, {hi:.3g}]" for p, m, lo, hi in
            zip(by["projections"], by["kl"]["mean"], by["kl"]["lo"], by["kl"]["hi"], strict=True)))
    if "type" in report:
        t = report["type"]
        lines.append("whole types removed: " + ", ".join(
            f"{n} {m:.3g}" for n, m in zip(t["names"], t["kl"]["mean"], strict=True)))
    return lines


def main(cfg: AblationConfig) -> None:
    folder = results_folder(cfg)
    report = read_result(folder, K.ABLATION_JSON, "1.0_generate_ablation_data.py")
    for line in findings(report):
        log.info("%s", line)
    for path in figure1(report, folder / K.FIGURE1_STEM):
        log.info("wrote %s", path)


if __name__ == "__main__":
    run_main(main, parse_config(AblationConfig, "ablation", __doc__))
