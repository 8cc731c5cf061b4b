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
for rollouts), so an item's sample does not depend on what else is in its batch.
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
from rank1.errors import CheckFailed

log = logging.getLogger(__name__)

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
FORCED_ANSWER = f"{ANSWER_TAG}\nAnswer:"


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
    """The KV cache of one layer in buffers with spare room along the sequence: a decoding step writes its
    position in place, where transformers' ``DynamicLayer`` concatenates the whole cache again (a copy that
    grows with the length at every step). Room doubles when full; keys/values handed to attention are views of
    the filled part, the same numbers as the concatenated tensors."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self._k = self._v = None
            self._n = 0
        n, add = self._n, key_states.shape[-2]
        if self._k is None or n + add > self._k.shape[-2]:
            room = max(2 * (n + add), 64)
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


def _spare_cache() -> DynamicCache:
    cache = DynamicCache()
    cache.layer_class_to_replicate = _SpareLayer
    return cache


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
    cache = _spare_cache()
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
    tokens = 0
    for chunk in longest_first([len(e) for e in encoded], batch_size, cost=len):
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


class ParityError(CheckFailed):
    """A serving backend's log-probs disagree with the reference (PEFT) model's."""


def check_logprob_parity(reference: Backend, candidate: Backend, prompts: Sequence[str], k: int = 5,
                         atol: float = 0.05, what: str = "candidate") -> float:
    """Compare first-token top-``k`` log-probs of ``candidate`` with ``reference`` on ``prompts``.

    The top-1 token must agree, and on every token both report, the log-probs must agree within
    ``atol``. Returns the largest difference; raises :class:`ParityError` on a mismatch (a wrong
    adapter scale, a missing adapter, another checkpoint all show up here).
    """
    ref, cand = reference.first_token_logprobs(prompts, k), candidate.first_token_logprobs(prompts, k)
    worst = 0.0
    for i, (r, c) in enumerate(zip(ref, cand, strict=True)):
        r_top, c_top = max(r, key=r.get), max(c, key=c.get)
        shared = set(r) & set(c)
        diff = max((abs(r[t] - c[t]) for t in shared), default=float("inf"))
        worst = max(worst, diff)
        if r_top != c_top or diff > atol:
            raise ParityError(f"{what}: first-token log-probs differ from the PEFT model on prompt {i} "
                              f"(top token {c_top} vs {r_top}, max |diff| {diff:.4f} > {atol} over "
                              f"{len(shared)} shared tokens); do not trust its numbers (check the adapter "
                              f"scale/rank support of the serving engine, or use --backend hf)")
    log.info("%s: first-token log-prob parity ok on %d prompts (max |diff| %.2e)", what, len(prompts), worst)
    return worst


class VLLMBackend:
    """vLLM serving of the base model (optionally a LoRA adapter folder), or of a full model folder.

    Used only when ``vllm`` is importable (GPU machines). The adapter is served unmerged through
    ``LoRARequest``; vLLM's rank-1 / RSLoRA handling came late, so :func:`check_logprob_parity`
    against the PEFT model must pass before its numbers are used (the evaluation stage does this).
    """

    def __init__(self, model_path: str, tokenizer: PreTrainedTokenizerBase, adapter_dir: str | None = None,
                 tensor_parallel: int = 1, max_model_len: int = 32768, gpu_memory_utilization: float = 0.9):
        try:
            from vllm import LLM
            from vllm.lora.request import LoRARequest
        except ImportError:
            raise ValueError("--backend vllm asked for, but vllm is not installed (it needs a CUDA torch): "
                             "pip install vllm on a GPU machine, or use --backend hf") from None
        self.tokenizer, self.stops = tokenizer, StopTokens.of(tokenizer)
        self.llm = LLM(model=model_path, tokenizer=model_path, dtype="bfloat16", seed=0,
                       tensor_parallel_size=tensor_parallel, max_model_len=max_model_len,
                       gpu_memory_utilization=gpu_memory_utilization, enable_lora=adapter_dir is not None,
                       max_lora_rank=8 if adapter_dir else None)
        self.lora = LoRARequest("adapter", 1, adapter_dir) if adapter_dir else None

    def _run(self, ids: list[list[int]], max_tokens: int, stops: frozenset[int], logprobs: int | None = None,
             sampling: Sampling | None = None):
        from vllm import SamplingParams

        def params_of(i: int | None):
            temp, seed = (0.0, None) if sampling is None else (
                sampling.temperature, sampling.seed * 1_000_003 + sampling.first_item + i)
            return SamplingParams(temperature=temp, seed=seed, max_tokens=max_tokens, stop_token_ids=sorted(stops),
                                  skip_special_tokens=False, logprobs=logprobs)

        params = params_of(None) if sampling is None else [params_of(i) for i in range(len(ids))]
        outs = self.llm.generate([{"prompt_token_ids": x} for x in ids], params, lora_request=self.lora)
        return [o.outputs[0] for o in outs]

    def generate(self, prompts: Sequence[str], budget: Budget, desc: str = "generate",  # noqa: ARG002 (vLLM shows its own progress)
                 sampling: Sampling | None = None) -> list[Generation]:
        tok = self.tokenizer
        ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        think = [(list(o.token_ids), o.finish_reason == "length")
                 for o in self._run(ids, budget.think_tokens, self.stops.think, sampling=sampling)]
        think = [([t for t in x if t not in self.stops.think], hit) for x, hit in think]
        texts = [tok.decode(x, skip_special_tokens=False) for x, _ in think]
        answers: list[tuple[list[int], bool]] = [([], False)] * len(prompts)
        if budget.answer_tokens:
            forced = [p + t + forced_answer_ids(tok, s) for p, (t, _), s in zip(ids, think, texts, strict=True)]
            answers = [([t for t in o.token_ids if t not in self.stops.answer], o.finish_reason == "length")
                       for o in self._run(forced, budget.answer_tokens, self.stops.answer, sampling=sampling)]
        return [Generation(s, tok.decode(a, skip_special_tokens=False), len(t), len(a), th, ah)
                for (t, th), s, (a, ah) in zip(think, texts, answers, strict=True)]

    def first_token_logprobs(self, prompts: Sequence[str], k: int) -> list[dict[int, float]]:
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        outs = self._run(ids, 1, frozenset(), logprobs=k)
        return [{int(t): float(lp.logprob) for t, lp in o.logprobs[0].items()} for o in outs]


class FixedLogprobs:
    """Reference log-probs computed earlier (e.g. by the PEFT model before vLLM took the GPU)."""

    def __init__(self, logprobs: list[dict[int, float]]):
        self.logprobs = logprobs

    def first_token_logprobs(self, prompts: Sequence[str], k: int) -> list[dict[int, float]]:  # noqa: ARG002 (fixed)
        if len(prompts) != len(self.logprobs):
            raise ValueError(f"{len(self.logprobs)} reference log-prob sets for {len(prompts)} prompts")
        return self.logprobs
