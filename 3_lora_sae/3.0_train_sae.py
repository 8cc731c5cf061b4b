"""Stage 3.0: a BatchTopK SAE (SAELens) on the adapter state: the 7 x layers scalar adapter activations of each
token (layer-major, as the store of 2.0 holds them), expansion 8, k=16, aux-k loss on dead latents.

Reads the LoRA activation store of 2.0 (checked to come from the same run), holds out its last documents,
trains on the rest (streamed from the shards, shuffled with a seed, bounded memory; resumes after a kill) and
writes results/<profile>/sae/<run>/:
    cfg.json, sae_weights.safetensors   the SAELens inference SAE (sae_lens.SAE.load_from_disk(folder)); it
                                        takes raw store activations and encodes each token on its own
    sae_metrics.json                    held-out FVU, L0, alive latents (training window), loss-gap shares vs zero
                                        and vs mean ablation with their CIs
    sae_train_log.json, config.json, argv.json

Usage:
    python 3_lora_sae/3.0_train_sae.py
    python 3_lora_sae/3.0_train_sae.py --k 32 --expansion 16 --epochs 2
    python 3_lora_sae/3.0_train_sae.py --matryoshka_widths 256,1024 --out results/tiny/sae/matryoshka
"""

from rank1.config import parse_config
from rank1.logs import run_main
from rank1.sae.config import SaeConfig
from rank1.sae.stage import run_train_sae


def main(cfg: SaeConfig) -> None:
    run_train_sae(cfg, report=print)


if __name__ == "__main__":
    run_main(main, parse_config(SaeConfig, "sae", __doc__))
