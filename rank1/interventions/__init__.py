"""Stage 4 (``4_lora_interventions/``): steering, attribution, counterfactual rollouts, correctness probes
and the geometry of the rank-1 factors. ``config`` holds the scripts' configs, ``stage`` one
``run_<script>`` per script; the other modules are the numerics and the figures. The report reads
the name of the probe every baseline is compared with; the feature pages the chance level of |cos|."""

from rank1.interventions.config import PROBE
from rank1.interventions.geometry import random_abs_cos

__all__ = ["PROBE", "random_abs_cos"]
