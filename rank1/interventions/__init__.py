"""Stage 4 (``4_lora_interventions/``): steering, attribution, counterfactual rollouts, correctness probes
and the geometry of the rank-1 factors. ``config`` holds the scripts' configs, ``stage`` one
``run_<script>`` per script; the other modules are the numerics and the figures. No later stage reads
anything of it."""

__all__: list[str] = []
