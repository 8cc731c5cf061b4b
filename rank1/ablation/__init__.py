"""Stage 1: how much each adapter, layer and projection type matters, measured by ablation.

``config`` holds the scripts' config, ``stage`` one ``run_<script>`` per script of
``1_lora_adapter_ablations/``; ``sweep`` (the ablation sweep with the cached prefix) and ``greedy`` (iterative
removal) are the numerics, ``plots`` draws the figures from the saved results. Later stages read its results
files, not its modules.
"""

__all__: list[str] = []
