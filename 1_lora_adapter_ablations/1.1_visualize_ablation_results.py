"""Stage 1.1: the paper's Figure 1 from the saved ablation results (no model is loaded).

Panels: KL per left-out layer, the 7 x layers heatmap of single-adapter KL, and the mean single-adapter
KL by projection type, all as KL(P_full || P_ablated) with 95% bootstrap CIs over sequences. Also logs
which layers, adapters and types dominate.

Usage:
    python 1_lora_adapter_ablations/1.1_visualize_ablation_results.py                 # tiny profile, newest run
    python 1_lora_adapter_ablations/1.1_visualize_ablation_results.py --results_folder results/paper/ablations/RUN

Writes lora_component_ablation_final.pdf and .png beside ablation_results.json.
"""

from rank1.ablation.config import AblationConfig
from rank1.ablation.stage import run_visualize_ablation_results
from rank1.config import parse_config
from rank1.logs import run_main


def main(cfg: AblationConfig) -> None:
    run_visualize_ablation_results(cfg)


if __name__ == "__main__":
    run_main(main, parse_config(AblationConfig, "ablation", __doc__))
