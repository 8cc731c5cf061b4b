"""Write the profile's reasoning data in the s1 format: data/<profile>/{train,eval}.jsonl.

Usage:
    python s1_peft/prepare_data.py --profile tiny          # generated traces, disjoint held-out split
    python s1_peft/prepare_data.py --n_train 4000 --overwrite

Profiles whose dataset is not 'synthetic' (paper: s1K-1.1) read their data directly; this script
then only checks that it loads.
"""

import logging
from dataclasses import dataclass, field

from rank1.artifacts import write_run_metadata
from rank1.config import data_dir, parse_config
from rank1.constants import EVAL_JSONL, TRAIN_JSONL
from rank1.data import load_reasoning_records
from rank1.logs import run_main
from rank1.synth import FAMILIES, write_splits

log = logging.getLogger("s1_peft.prepare_data")


@dataclass
class DataConfig:
    profile: str = field(default="tiny", metadata={"help": "profile the defaults came from"})
    dataset: str = field(default="synthetic", metadata={"help": "'synthetic' or a path / hub id"})
    n_train: int = field(default=2000, metadata={"help": "generated training records"})
    n_eval: int = field(default=64, metadata={"help": "generated held-out records (disjoint)"})
    seed: int = field(default=0, metadata={"help": "generator seed"})
    families: str = field(default=",".join(FAMILIES), metadata={"help": "comma-separated task families"})
    overwrite: bool = field(default=False, metadata={"help": "regenerate existing files"})

    def __post_init__(self):
        if self.n_train < 1 or self.n_eval < 1:
            raise ValueError(f"need n_train >= 1 and n_eval >= 1, got {self.n_train}, {self.n_eval}")


def main(cfg: DataConfig) -> None:
    if cfg.dataset != "synthetic":
        records = load_reasoning_records(cfg.dataset)
        log.info("dataset %s loads: %d records", cfg.dataset, len(records))
        return
    out = data_dir(cfg.profile)
    if (out / TRAIN_JSONL).is_file() and (out / EVAL_JSONL).is_file() and not cfg.overwrite:
        log.info("%s already holds train.jsonl and eval.jsonl; skipping (--overwrite regenerates)", out)
        return
    write_splits(out, cfg.n_train, cfg.n_eval, cfg.seed, tuple(cfg.families.split(",")))
    write_run_metadata(out, cfg)
    log.info("wrote %d train and %d held-out records to %s", cfg.n_train, cfg.n_eval, out)


if __name__ == "__main__":
    config = parse_config(DataConfig, "data", __doc__)
    run_main(main, config)
