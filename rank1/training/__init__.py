"""Stage 0: the data, the rank-1 LoRA (or full finetune) training run and the benchmark evaluation.

``config`` holds the scripts' configs, ``stage`` one ``run_<script>`` per script of ``s1_peft/``; ``trainer`` is
the training run, ``evaluate`` generates and grades the variants, ``recovery`` makes the recovery tables. Later
stages train with :func:`train` and :class:`TrainConfig` (stage 5's standard LoRA baseline).
"""

from rank1.training.config import TrainConfig
from rank1.training.trainer import train

__all__ = ["TrainConfig", "train"]
