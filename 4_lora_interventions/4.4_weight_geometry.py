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

import logging
from dataclasses import dataclass

from rank1 import constants as K
from rank1.artifacts import public_config, write_json
from rank1.config import option, parse_config
from rank1.interventions.common import StageOptions, finished, output_folder, save_metadata
from rank1.logs import run_main
from rank1.lora import adapter_vectors
from rank1.plots import save_figure
from rank1.interventions.geometry import geometry, plot_geometry

log = logging.getLogger("4.4_weight_geometry")


@dataclass
class GeometryConfig(StageOptions):
    absolute: bool = option("show |cos| (the sign of a rank-1 factor is arbitrary); else trained signs", True)


def main(cfg: GeometryConfig) -> None:
    run = cfg.resolve_run()
    folder = output_folder(cfg, K.GEOMETRY_STAGE, run)
    config = public_config(cfg)
    geo = finished(folder / K.GEOMETRY_JSON, run, config, ("absolute",), cfg.overwrite)
    if geo is None:
        geo = {"identity": run.identity(), "config": config, **geometry(adapter_vectors(run.weights_dir), cfg.absolute)}
        save_metadata(folder, cfg, run)
        write_json(folder / K.GEOMETRY_JSON, geo)
    for name, m in {**geo["across_layers"], **geo["cross_projection"]}.items():
        log.info("%-28s mean |cos| within layer %.3f, across layers %s (random directions %.3f)", name,
                 m["mean_abs_diagonal"], "-" if m["mean_abs_offdiag"] is None else f"{m['mean_abs_offdiag']:.3f}",
                 m["random_abs_cos"])
    for name, fig in plot_geometry(geo, f"rank-1 factors of {run.name}"):
        for path in save_figure(fig, folder / f"{K.GEOMETRY_STEM}_{name}"):
            log.info("wrote %s", path)


if __name__ == "__main__":
    run_main(main, parse_config(GeometryConfig, "weight_geometry", __doc__))
