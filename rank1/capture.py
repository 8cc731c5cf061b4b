"""What the activation store records per token: the LoRA scalars, or sampled MLP neurons of the base model.

A capture is built from a :class:`CaptureSpec` (picklable, so every data-parallel worker builds its own
model) and returns, per forward pass of a right-padded batch, ``acts_BTS`` (float32, one column per site).

- ``lora``: the output of every adapter's ``lora_A`` (the projection's input dotted with A, before the
  RSLoRA scale and B), through :func:`rank1.hooks.read_adapter_activations`. Sites are ordered by
  (layer, projection); a site is ``{"layer": 3, "name": "gate_proj"}``.
- ``mlp``: MLP neurons of the base model (adapter disabled): the SwiGLU product ``act(gate) * up``, i.e.
  the input of ``down_proj``, for ``neurons_per_layer`` neurons per layer drawn at random with a fixed
  seed (:func:`sample_neurons`). A site is ``{"layer": 3, "name": "n1234", "neuron": 1234}``.

Only the decoder stack runs (no LM head): the logits are not needed and cost a fifth of SmolLM2's forward.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rank1.hooks import add_hooks, read_adapter_activations
from rank1.runs import Loaded, Run

KINDS = ("lora", "mlp")


@dataclass(frozen=True)
class CaptureSpec:
    """Everything a worker needs to rebuild the capture: the run, the precision, the kind of sites."""

    run: Run
    kind: str = "lora"
    precision: str = "auto"
    neurons_per_layer: int = 7  # mlp only
    seed: int = 0  # mlp only: which neurons
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"capture kind must be one of {KINDS}, got {self.kind!r}")


def sample_neurons(n_layers: int, width: int, per_layer: int, seed: int) -> list[list[int]]:
    """``per_layer`` distinct neuron indices in [0, width) for each layer, sorted; layer l's draw depends
    only on (seed, l), so adding layers never changes the others."""
    if not 1 <= per_layer <= width:
        raise ValueError(f"neurons per layer must be in 1..{width} (the MLP width), got {per_layer}")
    return [sorted(np.random.default_rng([seed, layer]).choice(width, per_layer, replace=False).tolist())
            for layer in range(n_layers)]


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layers of a (PEFT-wrapped) causal LM."""
    return backbone(model).layers


def backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack without the LM head (``model.model`` of a ``*ForCausalLM``, through PEFT)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model


class Capture:
    """A loaded model plus the hooks that read its sites; call it on a batch to get ``acts_BTS``."""

    def __init__(self, spec: CaptureSpec, loaded: Loaded):
        self.spec, self.loaded = spec, loaded
        self.device = loaded.device
        model = loaded.model
        if spec.kind == "lora":
            lora_sites = loaded.sites
            if not lora_sites:
                raise ValueError(f"run {spec.run.name} has no LoRA adapters to read")
            self.sites = [{"layer": s.layer, "name": s.proj} for s in lora_sites]
            self._enter = lambda stack: self._lora(stack, lora_sites)
        else:
            layers = decoder_layers(model)
            width = layers[0].mlp.down_proj.in_features
            self.neurons = sample_neurons(len(layers), width, spec.neurons_per_layer, spec.seed)
            self.sites = [{"layer": li, "name": f"n{n}", "neuron": n}
                          for li, idx in enumerate(self.neurons) for n in idx]
            self._enter = lambda stack: self._mlp(stack, layers)

    def _lora(self, stack: ExitStack, sites) -> Callable[[], torch.Tensor]:
        store = stack.enter_context(read_adapter_activations(sites))
        return store.scalars_BTS

    def _mlp(self, stack: ExitStack, layers) -> Callable[[], torch.Tensor]:
        if hasattr(self.loaded.model, "disable_adapter"):
            stack.enter_context(self.loaded.model.disable_adapter())
        got: list[torch.Tensor | None] = [None] * len(layers)
        index = [torch.tensor(idx, device=self.device) for idx in self.neurons]

        def keep(i: int):
            def fn(_module, args):
                got[i] = args[0].detach().index_select(-1, index[i])
            return fn

        stack.enter_context(add_hooks(pre_hooks=[(layer.mlp.down_proj, keep(i)) for i, layer in enumerate(layers)]))
        return lambda: torch.cat(got, dim=-1).float()

    @torch.inference_mode()
    def __call__(self, input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor) -> torch.Tensor:
        """float32 ``acts_BTS`` of one right-padded batch (on the model's device)."""
        with ExitStack() as stack:
            read = self._enter(stack)
            with self.loaded.autocast():
                backbone(self.loaded.model)(input_ids=input_ids_BT.to(self.device),
                                            attention_mask=attention_mask_BT.to(self.device), use_cache=False)
            return read()


def build_capture(spec: CaptureSpec) -> Capture:
    return Capture(spec, spec.run.load(spec.precision))
