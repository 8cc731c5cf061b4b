"""Stage 5.2: train the SAE-LoRA (a rank-r update in the SAE's latent space) on the behaviour dataset.

Base model and SAE frozen; A, B, s trained on the next-token cross-entropy of the assistant tokens plus
l1_weight x L1 (raw: of the parameters, the seed's; normalized: of the unit-norm directions). The residual
entering --layer is computed once; only layers layer..L-1 run per step. By default the whole sweep: l1 = 0 once,
then every weight of --sweep_l1 for both penalties (--no-sweep: one run with --penalty / --l1_weight), each once
per seed of --seeds (--init alive: A and B start nonzero only on the latents alive on the training tokens). Each
run is skipped when finished and resumes from its newest complete checkpoint after a kill. Writes
results/<profile>/sae_lora/<name>/adapters/<run>_seed<seed>/: adapter.safetensors (A, B, s), adapter_config.json,
train_log.json.

Usage:
    python 5_sae_latent_lora/5.2_train_sae_lora.py
    python 5_sae_latent_lora/5.2_train_sae_lora.py --sweep_l1 0,0.001,0.01,0.05
    python 5_sae_latent_lora/5.2_train_sae_lora.py --seeds 0,1,2,3,4 --init alive
    python 5_sae_latent_lora/5.2_train_sae_lora.py --no-sweep --penalty raw --l1_weight 0.05 --mode sae_replace
"""

from rank1.artifacts import read_json
from rank1.config import parse_config
from rank1.constants import CONFIG_JSON, SAE_LORA_LOG
from rank1.logs import run_main
from rank1.sae_lora.config import SaeLoraConfig
from rank1.sae_lora.stage import run_train_sae_lora


def main(cfg: SaeLoraConfig) -> None:
    adapters = run_train_sae_lora(cfg)
    for name in read_json(adapters / CONFIG_JSON)["runs"]:
        last = read_json(adapters / name / SAE_LORA_LOG)[-1]
        print(f"{name}: CE {last['ce']:.4f}, s {last['s']}, |A| {last['norm_A']:.3g}, |B| {last['norm_B']:.3g}, "
              f"Hoyer A {last['hoyer_A']:.3f}, B {last['hoyer_B']:.3f}")


if __name__ == "__main__":
    run_main(main, parse_config(SaeLoraConfig, "sae_lora", __doc__))
