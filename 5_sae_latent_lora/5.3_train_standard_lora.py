"""Stage 5.3: the standard rank-1 LoRA baseline on the same behaviour data, with the project's trainer.

rank1.training.train (PEFT rank-1 RSLoRA on the seven projections) restricted to layers layer..L-1, the layers the
SAE-LoRA reaches, with the same number of optimizer steps and batch. Resumes after a kill; skips when finished.
Writes results/<profile>/sae_lora/<name>/standard_lora/ (adapter/, config.json, loss_log.json, loss curve).

Usage:
    python 5_sae_latent_lora/5.3_train_standard_lora.py
    python 5_sae_latent_lora/5.3_train_standard_lora.py --lora_lr 1e-3
"""

from rank1.config import parse_config
from rank1.logs import run_main
from rank1.sae_lora.config import SaeLoraConfig
from rank1.sae_lora.stage import run_train_standard_lora


def main(cfg: SaeLoraConfig) -> None:
    print(f"standard LoRA: {run_train_standard_lora(cfg)}")


if __name__ == "__main__":
    run_main(main, parse_config(SaeLoraConfig, "sae_lora", __doc__))
