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

from dataclasses import dataclass
from pathlib import Path

from rank1 import constants as K
from rank1.config import option, parse_config, results_dir
from rank1.dashboard import write_dashboard
from rank1.sae.dashboard import build_payloads
from rank1.logs import run_main
from rank1.runs import RunOptions
from rank1.sae.categories import read_categories, read_explanations
from rank1.sae.features import load_run_features
from rank1.store import check_writable


@dataclass
class SaeDashboardConfig(RunOptions):
    features: str | None = option("features folder of 3.1 (default: results/<profile>/sae_features/<run>)")
    autointerp: str | None = option("folder with explanations.jsonl / categories.json (default: "
                                    "results/<profile>/sae_autointerp/<run>; used when present)")
    n_examples: int = option("top examples per feature (at most the k of 3.1)", 20)
    context: int = option("tokens shown on each side of an example (at most the context of 3.1)", 24)
    page_size: int = option("features per data file", 32)
    out: str | None = option("output folder (default: results/<profile>/sae_dashboard/<run>)")

    def __post_init__(self):
        if min(self.n_examples, self.page_size) < 1 or self.context < 0:
            raise ValueError("need --n_examples >= 1, --page_size >= 1 and --context >= 0")


def main(cfg: SaeDashboardConfig) -> None:
    run, src, res, latents = load_run_features(cfg, cfg.features)
    interp = Path(cfg.autointerp) if cfg.autointerp else results_dir(cfg.profile, K.SAE_AUTOINTERP_STAGE, run.name)
    out = Path(cfg.out) if cfg.out else results_dir(cfg.profile, K.SAE_DASHBOARD_STAGE, run.name)
    names = [f["name"] for f in res.features]
    explanations = read_explanations(interp)
    categories = read_categories(interp, names, required=False)
    check_writable(out.parent)
    index, pages = build_payloads(res, latents, explanations, categories, f"SAE features: {run.name}",
                                  cfg.n_examples, cfg.context, cfg.page_size)
    write_dashboard(out, index["title"], "sae.js", index, pages)
    print(f"dashboard: {out / K.DASHBOARD_INDEX} ({len(names)} features; explanations for {len(explanations)}, "
          f"categories for {len((categories or {}).get('features', {}))})")


if __name__ == "__main__":
    run_main(main, parse_config(SaeDashboardConfig, "sae_dashboard", __doc__))
