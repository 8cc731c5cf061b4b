"""Stage 2.6 (autointerp): the autointerp of 2.2 for the random-direction control (same explainer, scorer,
categoriser and settings; the profile's [autointerp] table serves all three sides).

Reads results/<profile>/random_topk/<run>/ and writes results/<profile>/random_autointerp/<run>/.

Usage:
    python 2_lora_activation_interp/2.6_run_random_autointerp.py
"""

from rank1.autointerp.stage import AutointerpConfig, run_stage
from rank1.config import parse_config
from rank1.logs import run_main


def main(cfg: AutointerpConfig) -> None:
    print(f"autointerp: {run_stage(cfg, 'random')}")


if __name__ == "__main__":
    run_main(main, parse_config(AutointerpConfig, "autointerp", __doc__))
