"""Stage 2.3: the LoRA activation dashboard, a static HTML folder that opens from disk (no server).

Per layer, the seven adapters side by side (gate, up, down, then q, k, v, o): positive and negative top
examples as token heatmaps (red positive, blue negative, target token outlined, exact value on hover),
activation histogram and min/max/mean/std; cosines between the layer's A and B vectors that share a space;
across layers: activation std, norms of A and B, |cos| layer x layer; a search over feature names and
explanations. Reads only saved artifacts: the top-k examples of 2.1, the run's adapter weights and, once 2.2
has run, its explanations, ratings and held-out scores (results/<profile>/lora_autointerp/<run>/
explanations.jsonl). This step runs before 2.2, so 2.2 adds them to the dashboard when it finishes
(data/explanations.js); until then the page says to run 2.2.

Writes results/<profile>/lora_dashboard/<run>/index.html (+ core.js, lora.js, style.css, data/*.js).

Usage:
    python 2_lora_activation_interp/2.3_lora_activation_dashboard.py
    python 2_lora_activation_interp/2.3_lora_activation_dashboard.py --n_examples 20
"""

from rank1 import constants as K
from rank1.activations.config import DashboardConfig
from rank1.activations.dashboard import attach_explanations
from rank1.activations.stage import run_lora_activation_dashboard
from rank1.config import parse_config, results_dir
from rank1.logs import run_main


def main(cfg: DashboardConfig) -> None:
    folder = run_lora_activation_dashboard(cfg)
    autointerp = results_dir(cfg.profile, K.AUTOINTERP_STAGE.format(kind="lora"), cfg.resolve_run().name)
    added = attach_explanations(folder, autointerp)
    print(f"dashboard: {folder / K.DASHBOARD_INDEX}" + (f" (explanations from {autointerp})" if added else
                                                          " (no explanations yet: run 2.2 to add them)"))


if __name__ == "__main__":
    run_main(main, parse_config(DashboardConfig, "dashboard", __doc__))
