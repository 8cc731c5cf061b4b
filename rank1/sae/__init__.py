"""Stage 3 (``3_lora_sae/``): a BatchTopK SAE on the adapter state, its features, dashboard, explanations,
categories and Figure 3.

``config`` (the scripts' configs), ``stage`` (one ``run_<script>`` per script), ``split`` (held-out split and
training stream), ``train`` (SAELens training, saving, loading, evaluation), ``alive`` (what an alive latent is,
defined once), ``splice`` (the loss-gap shares against zero and mean ablation), ``features``, ``categories``,
``plots``, ``dashboard``. What other stages use is listed in ``__all__``.
"""

from rank1.sae.alive import alive_latents
from rank1.sae.config import SaeConfig
from rank1.sae.features import load_features, top_loadings
from rank1.sae.split import SaeError, Split, heldout_split
from rank1.sae.train import evaluate_sae, load_sae, save_inference_sae, train_sae

__all__ = ["SaeConfig", "SaeError", "Split", "alive_latents", "evaluate_sae", "heldout_split", "load_features",
           "load_sae", "save_inference_sae", "top_loadings", "train_sae"]
