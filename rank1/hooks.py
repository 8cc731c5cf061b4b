"""Hooks, only through context managers that remove every handle on exit.

The scalar activation of a rank-1 adapter is the output of its ``lora_A`` module: the projection's
input dotted with A, before the RSLoRA scale and before B. Hooking ``lora_A`` directly reads exactly
that, whichever input the projection gets (after input_layernorm for q/k/v, the attention output for
o, after post_attention_layernorm for gate/up, the SwiGLU product for down).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch

from rank1.lora import AdapterSite

ForwardHook = Callable[[torch.nn.Module, tuple, torch.Tensor], torch.Tensor | None]


@contextmanager
def add_hooks(forward_hooks: Iterable[tuple[torch.nn.Module, ForwardHook]] = (),
              pre_hooks: Iterable[tuple[torch.nn.Module, Callable]] = ()) -> Iterator[None]:
    """Register forward and forward-pre hooks for the duration of the block."""
    handles = []
    try:
        for module, fn in pre_hooks:
            handles.append(module.register_forward_pre_hook(fn))
        for module, fn in forward_hooks:
            handles.append(module.register_forward_hook(fn))
        yield
    finally:
        for h in handles:
            h.remove()


class ActivationStore:
    """Collects adapter activations of each forward pass: ``stacked()`` gives [B, T, sites, r]."""

    def __init__(self, sites: list[AdapterSite]):
        self.sites = sites
        self.latest: list[torch.Tensor | None] = [None] * len(sites)

    def hook(self, i: int) -> ForwardHook:
        def fn(_module, _inputs, output):
            self.latest[i] = output.detach()
        return fn

    def stacked(self) -> torch.Tensor:
        missing = [self.sites[i] for i, t in enumerate(self.latest) if t is None]
        if missing:
            raise RuntimeError(f"{len(missing)} adapters did not run in the last forward pass, e.g. "
                               f"layer {missing[0].layer} {missing[0].proj}")
        return torch.stack(self.latest, dim=2)

    def scalars_BTS(self) -> torch.Tensor:
        """Rank-1 activations as [batch, tokens, sites] (float32)."""
        acts = self.stacked()
        if acts.shape[-1] != 1:
            raise ValueError(f"scalar activations need rank 1, adapters have rank {acts.shape[-1]}")
        return acts[..., 0].float()


@contextmanager
def read_adapter_activations(sites: list[AdapterSite], adapter: str = "default") -> Iterator[ActivationStore]:
    """Within the block, every forward pass records each adapter's ``lora_A`` output."""
    store = ActivationStore(sites)
    with add_hooks([(s.module.lora_A[adapter], store.hook(i)) for i, s in enumerate(sites)]):
        yield store


def _zero_output(_module, _inputs, output):
    return torch.zeros_like(output)


@contextmanager
def ablate_adapters(sites: Iterable[AdapterSite], adapter: str = "default") -> Iterator[None]:
    """Within the block, the given adapters contribute nothing (their ``lora_B`` output is zero)."""
    with add_hooks([(s.module.lora_B[adapter], _zero_output) for s in sites]):
        yield


@contextmanager
def folded_adapters(on: Iterable[AdapterSite], off: Iterable[AdapterSite] = (),
                    adapter: str = "default") -> Iterator[None]:
    """Within the block, the adapters ``on`` are folded into their projections' weights (W + s B A: one
    matrix multiplication per projection instead of the adapter's three small extra ops, about a tenth of
    a batched decode step on CPU) and the adapters ``off`` are switched off. The model computes the same
    function as with ``on`` active and ``off`` ablated, up to float rounding. On exit every adapter is as it
    was and every weight is restored bit for bit (from a copy, not by subtracting the update again).
    For float32 weights only: folding a small update into bf16 weights would round most of it away."""
    on, off = list(on), list(off)
    saved = []
    try:
        for s in off:
            s.module.enable_adapters(False)
            saved.append((s.module, None))
        for s in on:
            weight = s.module.get_base_layer().weight
            if weight.dtype != torch.float32:
                raise ValueError(f"folding adapters needs float32 weights; layer {s.layer} {s.proj} is {weight.dtype}")
            saved.append((s.module, weight.detach().clone()))
            s.module.merge(adapter_names=[adapter])
        yield
    finally:
        for module, weight in reversed(saved):
            if weight is None:
                module.enable_adapters(True)
            elif module.merged:
                module.unmerge()
                module.get_base_layer().weight.data.copy_(weight)


@contextmanager
def replace_adapter_activations(sites: list[AdapterSite], values_BTS: torch.Tensor,
                                adapter: str = "default") -> Iterator[None]:
    """Within the block, adapter ``i``'s scalar activation (its ``lora_A`` output) is ``values_BTS[..., i]``
    instead of the one it computes, for a forward pass on inputs of shape [B, T]; ``lora_B`` and the
    RSLoRA scale then act on it as usual. Zeros give the base model; the activations themselves, the
    unchanged model."""
    if values_BTS.shape[-1] != len(sites):
        raise ValueError(f"values have {values_BTS.shape[-1]} columns, there are {len(sites)} adapters")

    def replace(i: int, output: torch.Tensor) -> torch.Tensor:
        if output.shape[:-1] != values_BTS.shape[:-1] or output.shape[-1] != 1:
            raise ValueError(f"adapter output {tuple(output.shape)} does not match values "
                             f"{tuple(values_BTS.shape)} (rank-1 adapters, same batch)")
        return values_BTS[..., i:i + 1].to(output.dtype)

    with edit_adapter_activations(sites, replace, adapter):
        yield


def count_hooks(model: torch.nn.Module) -> int:
    """Number of forward and pre-forward hooks registered anywhere in ``model``."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


ActivationEdit = Callable[[int, torch.Tensor], torch.Tensor]


@contextmanager
def edit_adapter_activations(sites: list[AdapterSite], edit: ActivationEdit,
                             adapter: str = "default") -> Iterator[None]:
    """Within the block, adapter ``i``'s scalar activation ``a`` ([B, T, r], the ``lora_A`` output) is
    replaced by ``edit(i, a)`` before B reads it: scaling, offsetting or zeroing it at chosen positions."""
    def hook(i: int) -> ForwardHook:
        def fn(_module, _inputs, output):
            return edit(i, output)
        return fn

    with add_hooks([(s.module.lora_A[adapter], hook(i)) for i, s in enumerate(sites)]):
        yield


def _layer_output(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def add_to_outputs(edits: Iterable[tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]]) -> Iterator[None]:
    """Within the block, each module's output hidden states ``h`` ([B, T, d]) become ``h + fn(h)``
    (a decoder layer's output is the residual stream after that layer; tuple outputs keep their tail)."""
    def hook(fn):
        def wrapped(_module, _inputs, output):
            h = _layer_output(output)
            new = h + fn(h)
            return (new, *output[1:]) if isinstance(output, tuple) else new
        return wrapped

    with add_hooks([(module, hook(fn)) for module, fn in edits]):
        yield
