"""Stage 3.1: the SAE's features (its alive latents, as 3.0 counted them: fired in the last training window;
rank1.sae.alive): top examples with +-48 tokens of context, firing rate (density), activation mass, quantiles,
decile and non-firing samples for scoring, and the adapters each decoder direction loads on (layers x
projections). Every token is encoded on its own (the saved JumpReLU SAE), shard by shard; no latent store is
written.

Reads the store of 2.0 and the SAE of 3.0 (checked: same run, same width) and writes
results/<profile>/sae_features/<run>/ in the top-k format of 2.1 (topk.safetensors, features.json, vocab.json,
config.json; read it with rank1.topk.TopKResult.load) plus latents.safetensors (per latent: firing count,
activation mass, maximum, decoder row).

Usage:
    python 3_lora_sae/3.1_collect_sae_features.py
    python 3_lora_sae/3.1_collect_sae_features.py --k 64 --context 16
"""

from rank1.config import parse_config
from rank1.logs import run_main
from rank1.sae.config import SaeFeaturesConfig
from rank1.sae.stage import run_collect_sae_features


def main(cfg: SaeFeaturesConfig) -> None:
    run_collect_sae_features(cfg, report=print)


if __name__ == "__main__":
    run_main(main, parse_config(SaeFeaturesConfig, "sae_features", __doc__))
