"""Generation with s1 budget forcing, behind one interface: batched transformers (CPU/GPU) or vLLM.

Budget forcing (s1): the assistant turn starts with ``<|im_start|>think\\n``; the model thinks for at
most ``think_tokens`` tokens. When the budget runs out, or the model ends thinking by itself (it emits
``<|im_start|>`` or ``<|im_end|>``), ``<|im_start|>answer\\nAnswer:`` is forced (after a newline if the
thinking did not end with one) and the answer is generated greedily with its own ``answer_tokens``
budget until ``<|im_end|>``. Each item records whether either budget was hit.

Why a hand-written greedy loop (:func:`budget_forced_greedy`) instead of ``model.generate``:
``generate`` keeps finished rows in the batch until the longest one ends, and it cannot switch a
row into the answer phase in place, so forcing would need a second call that re-reads (prefills) the
whole prompt and thinking of every row. The loop here keeps one KV cache per batch, feeds the forced
tokens through it, drops finished rows from the cache, and sorts prompts by length so a batch holds
similar lengths. It decodes greedily (``tests/test_generate.py`` checks it equals HF greedy output,
phase by phase), or samples at a temperature with one seeded generator per item (:class:`Sampling`,
for rollouts), so an item's sample does not depend on what else is in its batch. On a GPU, each batch's KV
cache is allocated once at its longest possible length, after :func:`check_kv_fits` has compared it with the free
memory (a batch too large is refused with the batch size that fits, before anything is generated).

Serving (vLLM, the parity check against the PEFT model, a model in its own process) is :mod:`rank1.serving`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer

from rank1.batching import longest_first, pad_ids
from rank1.constants import ANSWER_TAG, THINK_TAG
from rank1.data import prompt_text
from rank1.errors import Rank1Error

log = logging.getLogger(__name__)

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
FORCED_ANSWER = f"{ANSWER_TAG}\nAnswer:"
# Room for the forced ``[\n]<|im_start|>answer\nAnswer:`` between the thinking and the answer (5-7 tokens with
# the ChatML tokenizers used here), so a thinking that ran out of budget still fits the context with its answer.
FORCED_ALLOWANCE = 16


@dataclass(frozen=True)
class Budget:
    """Token budgets of the two phases (``answer_tokens = 0``: stop after thinking, no answer)."""

    think_tokens: int
    answer_tokens: int

    def __post_init__(self):
        if self.think_tokens < 1 or self.answer_tokens < 0:
            raise ValueError(f"need think_tokens >= 1 and answer_tokens >= 0, got {self}")


@dataclass
class Generation:
    """One item's output: the thinking and answer texts, their token counts and budget flags."""

    thinking: str
    answer: str
    think_tokens: int
    answer_tokens: int
    think_budget_hit: bool  # the thinking was cut by the budget (the answer was forced)
    answer_budget_hit: bool  # the answer did not end within its budget

    def to_dict(self) -> dict:
        return asdict(self)


class Backend(Protocol):
    """What the evaluation needs from a generation engine."""

    def generate(self, prompts: Sequence[str], budget: Budget, desc: str = "generate",
                 sampling: Sampling | None = None) -> list[Generation]:
        """Budget-forced generations of chat-formatted prompts (see :func:`think_prompt`), greedy unless
        ``sampling`` is given."""

    def first_token_logprobs(self, prompts: Sequence[str], k: int) -> list[dict[int, float]]:
        """Top-``k`` log-probabilities of the first generated token of each prompt."""


def think_prompt(tokenizer: PreTrainedTokenizerBase, question: str) -> str:
    """The chat prompt up to ``<|im_start|>assistant\\n`` followed by ``<|im_start|>think\\n``."""
    return prompt_text(tokenizer, question) + THINK_TAG + "\n"


def special_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or tid == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {token} token; s1 budget forcing needs a ChatML tokenizer")
    return tid


@dataclass(frozen=True)
class StopTokens:
    """Token ids that end the thinking phase and the answer phase."""

    think: frozenset[int]
    answer: frozenset[int]

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerBase) -> StopTokens:
        ends = {special_id(tokenizer, IM_START), special_id(tokenizer, IM_END)}
        if tokenizer.eos_token_id is not None:
            ends.add(tokenizer.eos_token_id)
        return cls(frozenset(ends), frozenset(ends))


def forced_answer_ids(tokenizer: PreTrainedTokenizerBase, thinking: str) -> list[int]:
    """Token ids forced after the thinking: ``[\\n]<|im_start|>answer\\nAnswer:``."""
    text = ("" if thinking.endswith("\n") or not thinking else "\n") + FORCED_ANSWER
    return tokenizer(text, add_special_tokens=False)["input_ids"]


class _Row:
    """Decoding state of one item inside a batch."""

    def __init__(self, index: int):
        self.index = index
        self.think: list[int] = []
        self.answer: list[int] = []
        self.forced: list[int] = []  # tokens still to be fed before the answer phase generates
        self.in_answer = False
        self.think_budget_hit = False
        self.answer_budget_hit = False
        self.done = False


def _next_input(row: _Row, argmax: int, tokenizer, stops: StopTokens, budget: Budget) -> int | None:
    """The token to feed for ``row`` given the model's greedy choice; None when the row is done."""
    if row.forced:
        return row.forced.pop(0)
    if not row.in_answer:
        budget_hit = len(row.think) >= budget.think_tokens
        if not budget_hit and argmax not in stops.think:
            row.think.append(argmax)
            return argmax
        row.think_budget_hit, row.in_answer = budget_hit, True
        if budget.answer_tokens == 0:
            row.done = True
            return None
        row.forced = forced_answer_ids(tokenizer, tokenizer.decode(row.think, skip_special_tokens=False))
        return row.forced.pop(0)
    if argmax in stops.answer:
        row.done = True
        return None
    row.answer.append(argmax)
    if len(row.answer) >= budget.answer_tokens:  # as a server's finish_reason "length"
        row.answer_budget_hit, row.done = True, True
        return None
    return argmax


class _SpareLayer(DynamicLayer):
    """The KV cache of one layer in buffers with room along the sequence: a decoding step writes its position in
    place, where transformers' ``DynamicLayer`` concatenates the whole cache again (a copy that grows with the length
    at every step). The room is the batch's longest possible sequence (``capacity``: prompt, both budgets and the
    forced answer tag), so it is allocated once; should a sequence outgrow it, it grows by ``GROW_STEP`` positions
    (never doubling: the memory :func:`check_kv_fits` planned is the memory used). Keys/values handed to attention
    are views of the filled part, the same numbers as the concatenated tensors."""

    capacity = 64
    GROW_STEP = 256

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self._k = self._v = None
            self._n = 0
        n, add = self._n, key_states.shape[-2]
        if self._k is None or n + add > self._k.shape[-2]:
            room = self.capacity if self._k is None else self._k.shape[-2]
            while room < n + add:
                room += self.GROW_STEP
            k = key_states.new_empty((*key_states.shape[:-2], room, key_states.shape[-1]))
            v = value_states.new_empty((*value_states.shape[:-2], room, value_states.shape[-1]))
            if n:
                k[..., :n, :], v[..., :n, :] = self._k[..., :n, :], self._v[..., :n, :]
            self._k, self._v = k, v
        self._k[..., n:n + add, :] = key_states
        self._v[..., n:n + add, :] = value_states
        self._n = n + add
        self.keys, self.values = self._k[..., :self._n, :], self._v[..., :self._n, :]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() > 0:
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[..., :self._n, :], self._v[..., :self._n, :]


def _spare_cache(capacity: int = 64) -> DynamicCache:
    """A cache whose layers (:class:`_SpareLayer`) hold ``capacity`` positions from the start."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = type("_SizedSpareLayer", (_SpareLayer,), {"capacity": max(capacity, 1)})
    return cache


class BatchTooLarge(Rank1Error, ValueError):
    """A generation batch whose KV cache cannot fit the free GPU memory."""


@dataclass(frozen=True)
class KVDims:
    """What one position of one sequence costs in the KV cache: layers x KV heads x head dim x bytes, and the
    attention heads (grouped-query attention repeats K and V up to them inside attention, one layer at a time)."""

    layers: int
    kv_heads: int
    heads: int
    head_dim: int
    dtype_bytes: int

    @classmethod
    def of(cls, model: PreTrainedModel) -> KVDims:
        c = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        heads = c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
        return cls(c.num_hidden_layers, getattr(c, "num_key_value_heads", None) or heads, heads, head_dim,
                   next(model.parameters()).element_size())

    def cache_bytes(self, batch: int, tokens: int) -> int:
        """K and V of every layer for ``batch`` sequences of ``tokens`` positions."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes * batch * tokens

    def repeat_bytes(self, batch: int, tokens: int) -> int:
        """The K and V copies of one layer repeated to every attention head (transformers' ``repeat_kv``, which a
        padded batch cannot skip), alive while that layer attends."""
        return 2 * self.heads * self.head_dim * self.dtype_bytes * batch * tokens if self.heads != self.kv_heads else 0

    def need(self, batch: int, tokens: int) -> int:
        return self.cache_bytes(batch, tokens) + self.repeat_bytes(batch, tokens)


def check_kv_fits(dims: KVDims, batch: int, tokens: int, free_bytes: int) -> None:
    """Raise :class:`BatchTooLarge`, naming the numbers and the batch size that would fit, when the KV cache of
    ``batch`` sequences of ``tokens`` positions (plus one layer's repeated K/V) exceeds ``free_bytes``."""
    need = dims.need(batch, tokens)
    if need <= free_bytes:
        return
    fits = free_bytes // max(dims.need(1, tokens), 1)
    gib = 1 << 30
    raise BatchTooLarge(
        f"a batch of {batch} sequences of up to {tokens} tokens needs {need / gib:.1f} GiB of KV cache (2 x "
        f"{dims.layers} layers x {dims.kv_heads} kv heads x {dims.head_dim} x {dims.dtype_bytes} B per token, plus "
        f"one layer repeated to {dims.heads} heads), but the GPU has {free_bytes / gib:.1f} GiB free; "
        + (f"use --batch_size {fits} or less" if fits else "lower the budgets (no batch of one fits)")
        + ", or --backend vllm")


def _free_gpu_bytes(model: PreTrainedModel) -> int | None:
    """Free memory of the GPUs ``model`` is on, counting what PyTorch's allocator holds unused (an earlier batch's
    cache), summed over the devices of a split model; None on CPU."""
    devices = {p.device for p in model.parameters() if p.device.type == "cuda"}
    return sum(torch.cuda.mem_get_info(d)[0] + torch.cuda.memory_reserved(d) - torch.cuda.memory_allocated(d)
               for d in devices) if devices else None


@dataclass(frozen=True)
class Sampling:
    """Temperature sampling instead of greedy choice. Item ``i`` of a call draws from its own generator
    seeded with ``(seed, first_item + i)``, so its tokens do not depend on the batch size or the other
    items (``first_item`` lets a long job be split into calls without changing any item's draws)."""

    temperature: float
    seed: int = 0
    first_item: int = 0

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"sampling needs a temperature > 0, got {self.temperature} (greedy: no sampling)")

    def generators(self, items: list[int]) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(self.seed * 1_000_003 + self.first_item + i) for i in items]


def _choose(logits_BV: torch.Tensor, sampling: Sampling | None, gens: list[torch.Generator]) -> list[int]:
    """Greedy argmax, or one draw per row from softmax(logits / temperature) with the row's generator."""
    if sampling is None:
        return logits_BV.argmax(-1).tolist()
    probs_BV = torch.softmax(logits_BV.float().cpu() / sampling.temperature, dim=-1)
    return [int(torch.multinomial(p_V, 1, generator=g)) for p_V, g in zip(probs_BV, gens, strict=True)]


@torch.inference_mode()
def _decode_batch(model: PreTrainedModel, tokenizer, prompt_ids: list[list[int]], stops: StopTokens,
                  budget: Budget, sampling: Sampling | None = None,
                  generators: list[torch.Generator] | None = None) -> list[_Row]:
    """Budget-forced decoding (greedy, or sampled with one generator per row) of one left-padded batch,
    dropping rows as they finish."""
    device = next(model.parameters()).device
    inputs_BT, mask_BT = pad_ids(prompt_ids, tokenizer.pad_token_id, side="left")
    inputs_BT, mask_BT = inputs_BT.to(device), mask_BT.to(device)
    positions_BT = (mask_BT.cumsum(-1) - 1).clamp(min=0)
    rows, active = [_Row(i) for i in range(len(prompt_ids))], list(range(len(prompt_ids)))
    cache = _spare_cache(inputs_BT.shape[1] + budget.think_tokens + FORCED_ALLOWANCE + budget.answer_tokens)
    while True:
        logits = model(input_ids=inputs_BT, attention_mask=mask_BT, position_ids=positions_BT,
                       past_key_values=cache, use_cache=True, logits_to_keep=1).logits
        argmax_B = _choose(logits[:, -1], sampling, [generators[i] for i in active] if sampling else [])
        feed = [_next_input(rows[i], a, tokenizer, stops, budget) for i, a in zip(active, argmax_B, strict=True)]
        last_B1 = positions_BT[:, -1:]
        keep = [j for j, i in enumerate(active) if not rows[i].done]
        if not keep:
            return rows
        if len(keep) < len(active):  # finished rows leave the batch and the cache
            keep_K = torch.tensor(keep)  # on the CPU: indexes cache layers on any GPU (device_map="auto")
            cache.batch_select_indices(keep_K)
            mask_BT, last_B1 = mask_BT[keep_K.to(device)], last_B1[keep_K.to(device)]
            active, feed = [active[j] for j in keep], [feed[j] for j in keep]
        inputs_BT = torch.tensor(feed, dtype=torch.long, device=device)[:, None]
        positions_BT = last_B1 + 1
        mask_BT = torch.cat([mask_BT, mask_BT.new_ones((len(active), 1))], dim=1)


def budget_forced_greedy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                         budget: Budget, batch_size: int = 32, desc: str = "generate",
                         autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                         sampling: Sampling | None = None) -> list[Generation]:
    """Greedy s1 generations for ``prompts`` (already formatted, see :func:`think_prompt`), in the
    order given. Prompts are sorted by token length into batches of ``batch_size``. With ``sampling``
    every token (thinking and answer) is drawn at its temperature instead, item ``i`` with seed
    ``(sampling.seed, i)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stops = StopTokens.of(tokenizer)
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    out: list[Generation | None] = [None] * len(prompts)
    bar = tqdm(total=len(prompts), desc=desc, unit="item", leave=False)
    tokens, free = 0, _free_gpu_bytes(model)
    dims = KVDims.of(model) if free is not None else None
    for chunk in longest_first([len(e) for e in encoded], batch_size, cost=len):
        if dims is not None:  # before the first (longest) batch allocates anything
            longest = max(len(encoded[i]) for i in chunk) + budget.think_tokens + FORCED_ALLOWANCE
            check_kv_fits(dims, len(chunk), longest + budget.answer_tokens, _free_gpu_bytes(model))
        with autocast():
            rows = _decode_batch(model, tokenizer, [encoded[i] for i in chunk], stops, budget, sampling,
                                 sampling.generators(chunk) if sampling else None)
        for r in rows:
            out[chunk[r.index]] = Generation(
                thinking=tokenizer.decode(r.think, skip_special_tokens=False),
                answer=tokenizer.decode(r.answer, skip_special_tokens=False),
                think_tokens=len(r.think), answer_tokens=len(r.answer),
                think_budget_hit=r.think_budget_hit, answer_budget_hit=r.answer_budget_hit)
            tokens += len(r.think) + len(r.answer)
        bar.update(len(chunk))
        bar.set_postfix(tokens=tokens, refresh=False)
    bar.close()
    return out  # type: ignore[return-value]


@torch.inference_mode()
def hf_first_token_logprobs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                            k: int) -> list[dict[int, float]]:
    """Top-``k`` next-token log-probabilities after each prompt (one prompt per forward pass)."""
    device = next(model.parameters()).device
    out = []
    for p in prompts:
        ids = torch.tensor([tokenizer(p, add_special_tokens=False)["input_ids"]], device=device)
        logp_V = torch.log_softmax(model(input_ids=ids).logits[0, -1].double(), dim=-1)
        top = torch.topk(logp_V, k)
        out.append({int(i): float(v) for i, v in zip(top.indices, top.values, strict=True)})
    return out


class HFBackend:
    """Batched transformers generation on whatever device the model is on (CPU fp32, GPU bf16)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 32,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        self.model, self.tokenizer, self.batch_size, self.autocast = model, tokenizer, batch_size, autocast

    def generate(self, prompts: Sequence[str], budget: Budget, desc: str = "generate",
                 sampling: Sampling | None = None) -> list[Generation]:
        return budget_forced_greedy(self.model, self.tokenizer, prompts, budget, self.batch_size, desc,
                                    self.autocast, sampling)

    def first_token_logprobs(self, prompts: Sequence[str], k: int) -> list[dict[int, float]]:
        with self.autocast():
            return hf_first_token_logprobs(self.model, self.tokenizer, prompts, k)
