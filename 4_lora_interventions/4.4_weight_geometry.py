"""Stage 4.4: geometry of the rank-1 factors, from the saved adapter alone (no model is loaded).

Norms of A and B per layer and projection; layer x layer cosines of down B, gate A and up A; the
cross-projection cosines up A vs down B, gate A vs down B and up A vs gate A (row layer vs column layer,
the diagonal within a layer). |cos| by default: the sign of one factor of a rank-1 update is arbitrary
(--no-absolute shows signed cosines with the trained signs). Every matrix is reported with the |cos| two
random directions of its dimension would have.

Usage:
    python 4_lora_interventions/4.4_weight_geometry.py                 # tiny profile, newest run
    python 4_lora_interventions/4.4_weight_geometry.py --run tiny-r1-all --no-absolute

Writes weight_geometry.json and weight_geometry_{norms,across_layers,cross_projection,
cross_projection_same_layer}.{pdf,png} into results/<profile>/weight_geometry/<run>/.
"""

from rank1.config import parse_config
from rank1.interventions.config import GeometryConfig
from rank1.interventions.stage import run_weight_geometry
from rank1.logs import run_main


def main() -> None:
    cfg = parse_config(GeometryConfig, "weight_geometry", __doc__)
    run_main(run_weight_geometry, cfg)


if __name__ == "__main__":
    main()
