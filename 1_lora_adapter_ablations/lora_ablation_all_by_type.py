"""Stage 1: remove every adapter of one type at once (each projection; all MLP; all attention; all).

Reads the by-type family from 1.0's results when they were made from the same run and sample, and
measures it otherwise (KL(P_full || P_ablated) and CE change per assistant token, bootstrap CIs over
sequences). Removing all adapters gives the base model.

Usage:
    python 1_lora_adapter_ablations/lora_ablation_all_by_type.py                      # tiny profile, newest run
    python 1_lora_adapter_ablations/lora_ablation_all_by_type.py --run tiny-r1-all --n_samples 8

Writes ablation_all_by_type.json and lora_ablation_all_by_type.pdf/.png into
results/<profile>/ablations/<run>/.
"""

from rank1.ablation.config import AblationConfig
from rank1.ablation.stage import run_ablation_all_by_type
from rank1.config import parse_config
from rank1.logs import run_main


def main(cfg: AblationConfig) -> None:
    run_ablation_all_by_type(cfg)


if __name__ == "__main__":
    run_main(main, parse_config(AblationConfig, "ablation", __doc__))
