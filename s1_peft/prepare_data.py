"""Write the profile's reasoning data in the s1 format: data/<profile>/{train,eval}.jsonl.

Usage:
    python s1_peft/prepare_data.py --profile tiny          # generated traces, disjoint held-out split
    python s1_peft/prepare_data.py --n_train 4000 --overwrite

Profiles whose dataset is not 'synthetic' (paper: s1K-1.1) read their data directly; this script
then only checks that it loads.
"""

from rank1.config import parse_config
from rank1.logs import run_main
from rank1.training.config import DataConfig
from rank1.training.stage import run_prepare_data


def main(cfg: DataConfig) -> None:
    run_prepare_data(cfg)


if __name__ == "__main__":
    config = parse_config(DataConfig, "data", __doc__)
    run_main(main, config)
