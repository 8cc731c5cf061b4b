"""Stage 2.7: the autointerp of 2.2 for the MLP-neuron baseline (same explainer, scorer, categoriser and
settings; the profile's [autointerp] table serves both; failed features are retried and --max_failed_share
checked as in 2.2).

Reads results/<profile>/mlp_topk/<run>/ (2.5) and writes results/<profile>/mlp_autointerp/<run>/.

Usage:
    python 2_lora_activation_interp/2.7_run_mlp_autointerp.py
"""

from rank1.autointerp.stage import AutointerpConfig, run_stage
from rank1.config import parse_config
from rank1.logs import run_main


def main(cfg: AutointerpConfig) -> None:
    print(f"autointerp: {run_stage(cfg, 'mlp')}")


if __name__ == "__main__":
    run_main(main, parse_config(AutointerpConfig, "autointerp", __doc__))
