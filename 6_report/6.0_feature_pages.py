"""Stage 6.0: feature pages. What each rank-1 direction reads, writes and does, on one page per feature.

One page per adapter x polarity and per SAE latent, in three sections: reads (top and decile contexts, the
activation histogram, density, explanation with its held-out scores beside the random-direction control's at
the same site), writes (where B lives; the logit lens of B for o_proj and down_proj with its sign convention;
cosines with the layer's other vectors in B's space beside chance), does (ablation KL with CI and rank, steering
onset in natural units beside the random control's, attribution share, the SAE latents that load on it). An
index sorts every feature by any column and searches names and explanations. Built from saved artifacts only;
a section whose stage has not run says which script makes it.

Writes results/<profile>/feature_pages/<run>/: index.html (open it from disk, no server; #f=<feature> opens one
page), neuronpedia/ (Neuronpedia's export layout: features, activations, explanations as gzipped JSONL batches),
model_card_adapter.md and model_card_sae.md (also written as README.md beside the adapter and the SAE, ready for
`hf upload`).

Usage:
    python 6_report/6.0_feature_pages.py --profile tiny
    python 6_report/6.0_feature_pages.py --n_examples 40 --context 24
"""

from rank1 import constants as K
from rank1.config import parse_config
from rank1.logs import run_main
from rank1.report import FeaturePagesConfig, run_feature_pages


def main(cfg: FeaturePagesConfig) -> None:
    out = run_feature_pages(cfg)
    print(f"feature pages: {out / K.DASHBOARD_INDEX} (Neuronpedia export in {out / 'neuronpedia'})")


if __name__ == "__main__":
    run_main(main, parse_config(FeaturePagesConfig, "feature_pages", __doc__))
