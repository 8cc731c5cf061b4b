"""Stage 2: what the adapters' activations respond to, against a baseline of MLP neurons.

``config`` holds the scripts' configs, ``stage`` one ``run_<script>`` per script of
``2_lora_activation_interp/``; ``interpretability`` computes the class shares and LoRA vs. MLP numbers,
``plots`` and ``dashboard`` draw from saved artifacts. Later stages read its stores and top-k folders (through
``rank1.store`` and ``rank1.topk``), not its modules.
"""

__all__: list[str] = []
