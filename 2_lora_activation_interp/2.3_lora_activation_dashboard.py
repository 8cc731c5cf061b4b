"""Stage 2.3: the LoRA activation dashboard, a static HTML folder that opens from disk (no server).

Per layer, the seven adapters side by side (gate, up, down, then q, k, v, o): positive and negative top
examples as token heatmaps (red positive, blue negative, target token outlined, exact value on hover),
activation histogram and min/max/mean/std; cosines between the layer's A and B vectors that share a space;
across layers: activation std, norms of A and B, |cos| layer x layer. Reads only saved artifacts: the
top-k examples of 2.1 and the run's adapter weights.

Writes results/<profile>/lora_dashboard/<run>/index.html (+ core.js, lora.js, style.css, data/*.js).

Usage:
    python 2_lora_activation_interp/2.3_lora_activation_dashboard.py
    python 2_lora_activation_interp/2.3_lora_activation_dashboard.py --n_examples 20
"""

from rank1 import constants as K
from rank1.activations.config import DashboardConfig
from rank1.activations.stage import run_lora_activation_dashboard
from rank1.config import parse_config
from rank1.logs import run_main


def main(cfg: DashboardConfig) -> None:
    print(f"dashboard: {run_lora_activation_dashboard(cfg) / K.DASHBOARD_INDEX}")


if __name__ == "__main__":
    run_main(main, parse_config(DashboardConfig, "dashboard", __doc__))
