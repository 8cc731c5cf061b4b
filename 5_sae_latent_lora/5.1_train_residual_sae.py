"""Stage 5.1: a residual-stream SAE at the hook layer (stage 3's SAELens path), or one that SAELens loads.

Collects the residual stream entering --layer of the profile's corpus (its dataset) into an activation store, a
shard at a time, trains a BatchTopK SAE on it (held-out last documents, resumable; its data stream holds about
--sae_buffer_tokens tokens at once), and measures it: held-out FVU, L0, dead fraction, and the cross-entropy of the
assistant tokens with the reconstruction replacing the residual vs clean and vs zero and mean ablation. The base
model (the profile's, {size} filled by --model_size) and the SAE run on the GPU when there is one, the model in the
dtype of --precision. With --sae (a SAELens folder, or release:sae_id where the hub is reachable) nothing is
trained.
Writes results/<profile>/sae_lora/<name>/:
    resid_store/                       the activation store (manifest.json + shards/)
    sae/cfg.json, sae_weights.safetensors, resid_sae_metrics.json, sae_train_log.json

Usage:
    python 5_sae_latent_lora/5.1_train_residual_sae.py
    python 5_sae_latent_lora/5.1_train_residual_sae.py --layer 20 --expansion 8 --k 64
    python 5_sae_latent_lora/5.1_train_residual_sae.py --sae path/to/saelens_folder
    python 5_sae_latent_lora/5.1_train_residual_sae.py --profile paper --model_size 7B --layer 21
"""

from rank1.artifacts import read_json
from rank1.config import parse_config
from rank1.constants import RESID_SAE_METRICS
from rank1.logs import run_main
from rank1.sae_lora.config import SaeLoraConfig
from rank1.sae_lora.stage import run_train_residual_sae


def main(cfg: SaeLoraConfig) -> None:
    m = read_json(run_train_residual_sae(cfg) / RESID_SAE_METRICS)
    h, s = m["heldout"], m["splice"]
    print(f"SAE at layer {m['layer']}: {m['d_model']} -> {m['d_sae']} latents; held-out FVU {h['fvu']:.4f}, "
          f"L0 {h['l0']:.1f}, {h['n_firing']} latents fire on held-out tokens\nCE clean {s['ce_clean']:.4f}, "
          f"SAE {s['ce_sae']:.4f}, "
          f"mean-ablated {s['ce_mean']:.4f}, zero-ablated {s['ce_zero']:.4f}; recovered vs mean "
          f"{s['recovered_vs_mean']['value']:.3f}")


if __name__ == "__main__":
    run_main(main, parse_config(SaeLoraConfig, "sae_lora", __doc__))
