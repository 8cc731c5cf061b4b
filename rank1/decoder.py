"""Run a decoder-only causal LM layer by layer, the way its own ``forward`` does.

A stage that changes something at layer ``l`` (an ablated adapter, a steering vector) leaves every
layer before ``l`` untouched, so it can keep the residual stream entering ``l`` and rerun only the
suffix: layers ``l..L-1``, the final norm and the LM head. :class:`LayerRunner` exposes exactly those
steps. It mirrors ``LlamaModel.forward`` / ``Qwen2Model.forward`` of transformers 5.23: the causal mask
comes from ``create_causal_mask`` (plus the sliding-window mask for models whose ``config.layer_types``
have sliding layers), the rotary ``position_embeddings`` from the model's ``rotary_emb``, and each decoder
layer is called with the same keyword arguments, without a KV cache. Transformers has no public API
for "resume the forward pass at layer l" (``output_hidden_states`` only reads the stream), which is why
this is written here; ``tests/test_ablation.py`` checks it against the model's own forward pass for every
start layer, with padding present.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"


@dataclass
class ForwardContext:
    """What every decoder layer needs besides the residual stream, built once per batch."""

    h0_BTD: torch.Tensor  # token embeddings: the residual stream entering layer 0
    masks: dict[str, Any]  # attention mask per layer type (a tensor, or None when SDPA needs none)
    position_embeddings: tuple[torch.Tensor, torch.Tensor]  # rotary (cos, sin)
    position_ids: torch.Tensor


class LayerRunner:
    """Layer-by-layer forward of a (PEFT-wrapped) Llama / Qwen2-style causal LM."""

    def __init__(self, model: torch.nn.Module):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        body = getattr(base, "model", None)
        needed = ("embed_tokens", "layers", "norm", "rotary_emb")
        if body is None or not all(hasattr(body, n) for n in needed) or not hasattr(base, "lm_head"):
            raise ValueError(f"{type(base).__name__} is not a Llama/Qwen2-style causal LM (model.model with "
                             f"{', '.join(needed)}, and lm_head); the layer-by-layer runner cannot drive it")
        self.body, self.lm_head, self.config = body, base.lm_head, base.config
        self.num_layers = len(body.layers)
        self.vocab_size = base.lm_head.weight.shape[0]  # the head's width (may exceed config.vocab_size)
        types = getattr(self.config, "layer_types", None)
        self.layer_types = list(types) if types else [FULL_ATTENTION] * self.num_layers

    def prepare(self, input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor) -> ForwardContext:
        """Embeddings, masks and rotary embeddings, as the model's forward builds them."""
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        h0_BTD = self.body.embed_tokens(input_ids_BT)
        position_ids = torch.arange(input_ids_BT.shape[1], device=h0_BTD.device)[None]
        kwargs = {"config": self.config, "inputs_embeds": h0_BTD, "attention_mask": attention_mask_BT,
                  "past_key_values": None, "position_ids": position_ids}
        masks = {FULL_ATTENTION: create_causal_mask(**kwargs)}
        if SLIDING_ATTENTION in self.layer_types:
            masks[SLIDING_ATTENTION] = create_sliding_window_causal_mask(**kwargs)
        return ForwardContext(h0_BTD, masks, self.body.rotary_emb(h0_BTD, position_ids), position_ids)

    def layer(self, i: int, h_BTD: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """The residual stream leaving decoder layer ``i``."""
        return self.body.layers[i](h_BTD, attention_mask=ctx.masks[self.layer_types[i]],
                                   position_embeddings=ctx.position_embeddings, position_ids=ctx.position_ids,
                                   past_key_values=None, use_cache=False)

    def run(self, h_BTD: torch.Tensor, ctx: ForwardContext, start: int = 0, stop: int | None = None,
            keep: set[int] | None = None) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Layers ``start..stop-1`` from the stream entering ``start``; returns the stream leaving the
        last one and the streams entering every layer in ``keep`` (a cache for later suffix runs)."""
        kept = {}
        for i in range(start, self.num_layers if stop is None else stop):
            if keep is not None and i in keep:
                kept[i] = h_BTD
            h_BTD = self.layer(i, h_BTD, ctx)
        return h_BTD, kept

    def logits(self, h_NH: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head on the residual stream of selected positions (any leading shape)."""
        return self.lm_head(self.body.norm(h_NH))
