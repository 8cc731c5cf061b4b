"""Stage 3.2: the SAE feature dashboard, a static HTML folder that opens from disk (no server).

A list of every feature (alive latent) with search (name, explanation, category, top tokens), sort (latent,
density, max activation, activation mass, score) and a category filter; per feature its top examples and
decile samples as token heatmaps, the histogram of its firing values, its decoder direction over the layers x
projections grid, and its explanation, detection score and category once 3.3 has made them (the dashboard works
without them; rerun it afterwards to show them). Data files load on demand, so thousands of features stay fast.

Reads results/<profile>/sae_features/<run>/ (3.1) and, if present, explanations.jsonl and categories.json in
results/<profile>/sae_autointerp/<run>/; writes results/<profile>/sae_dashboard/<run>/index.html (+ core.js,
sae.js, style.css, data/*.js).

Usage:
    python 3_lora_sae/3.2_generate_sae_dashboard.py
    python 3_lora_sae/3.2_generate_sae_dashboard.py --n_examples 32 --context 48
"""

from rank1.config import parse_config
from rank1.logs import run_main
from rank1.sae.config import SaeDashboardConfig
from rank1.sae.stage import run_generate_sae_dashboard


def main(cfg: SaeDashboardConfig) -> None:
    run_generate_sae_dashboard(cfg, report=print)


if __name__ == "__main__":
    run_main(main, parse_config(SaeDashboardConfig, "sae_dashboard", __doc__))
