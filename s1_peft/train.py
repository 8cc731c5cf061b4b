"""Train the rank-1 LoRA (or, with --full, the full finetune baseline) on s1-format reasoning data.

Usage:
    python s1_peft/train.py --profile tiny
    python s1_peft/train.py --profile paper --layer_start 32 --layer_end 64
    torchrun --nproc_per_node 2 s1_peft/train.py --profile test      # data parallel
Normally launched by 0_train_lora.sh. Re-running the same command resumes from the newest complete
checkpoint, or skips a finished run (--overwrite retrains).
"""

from rank1.config import parse_config
from rank1.logs import run_main
from rank1.training.config import TrainConfig
from rank1.training.stage import run_train


def main(cfg: TrainConfig) -> None:
    run_train(cfg)


if __name__ == "__main__":
    config = parse_config(TrainConfig, "train", __doc__)
    run_main(main, config)
