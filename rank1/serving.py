"""Serving a model for generation, checked against the PEFT model it stands for.

- The parity check (:func:`check_logprob_parity`): a served model's numbers count only after its next-token
  distributions matched the PEFT model's on a few prompts (KL and top-k overlap, thresholds in
  :class:`ParityThresholds`); the numbers are saved with the results.
- vLLM (:class:`VLLMEngine`): one engine per base model serves the base model, the LoRA and every ablated copy of
  it as LoRA requests, so a variant is a request, not a reload; a model that needs its own engine (a full
  finetune) runs in a child process (:func:`generate_in_subprocess`), because vLLM returns its GPU memory reliably
  only when its process ends.

Why in-process ``vllm.LLM`` rather than ``vllm serve`` behind the OpenAI-compatible API: budget forcing feeds
token ids (the forced answer tag after the thinking) and reads per-token log-probs, which the offline engine takes
and returns directly, and one engine serving LoRA requests is what ``vllm serve --enable-lora`` would run anyway.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from rank1.config import option
from rank1.errors import CheckFailed
from rank1.generate import FORCED_ALLOWANCE, Backend, Budget, Generation, Sampling, StopTokens, forced_answer_ids
from rank1.models import load_tokenizer

log = logging.getLogger(__name__)

class ParityError(CheckFailed):
    """A serving backend's log-probs disagree with the reference (PEFT) model's."""


@dataclass(frozen=True)
class ParityThresholds:
    """When a served model counts as the PEFT model it serves: per prompt, the KL of the next-token distributions
    (:func:`topk_union_kl`) at most ``max_kl`` nats and the top-``top_k`` overlap at least ``min_overlap``.

    Why these two numbers and not an exact top-1 match with a log-prob tolerance: two bf16 engines with different
    kernels legitimately swap near-tied tokens and move log-probs by a few hundredths, which an exact test fails on
    when nothing is wrong; a dropped adapter or a wrong LoRA scale moves the whole distribution, which shows in the
    KL and the overlap at once."""

    top_k: int = 20
    max_kl: float = 0.05
    min_overlap: float = 0.6

    def __post_init__(self):
        if self.top_k < 1 or self.max_kl <= 0 or not 0 <= self.min_overlap <= 1:
            raise ValueError(f"parity needs top_k >= 1, max_kl > 0 and 0 <= min_overlap <= 1, got {self}")


def _top(logprobs: dict[int, float], k: int) -> list[int]:
    return sorted(logprobs, key=lambda t: (-logprobs[t], t))[:k]


def topk_union_kl(reference: dict[int, float], candidate: dict[int, float], k: int) -> float:
    """KL(reference || candidate) in nats over the union U of both top-``k`` token sets, each side renormalised
    over U (float64). A token one side did not report gets that side's smallest reported log-prob: its true value
    is at most that, so the gap a missing token adds is never overstated (a served engine reports only its top-k).
    """
    r_top, c_top = _top(reference, k), _top(candidate, k)
    union = sorted(set(r_top) | set(c_top))
    r_U, c_U = _on_union(reference, r_top, union), _on_union(candidate, c_top, union)
    return float((r_U.exp() * (r_U - c_U)).sum().clamp(min=0.0))


def _on_union(logprobs: dict[int, float], top: list[int], union: list[int]) -> torch.Tensor:
    """Log-probs over ``union``, renormalised; a token outside ``top`` is capped at the smallest top value."""
    floor = min(logprobs[t] for t in top)
    lp_U = torch.tensor([logprobs[t] if t in top else min(logprobs.get(t, floor), floor) for t in union],
                        dtype=torch.float64)
    return torch.log_softmax(lp_U, 0)


def topk_overlap(reference: dict[int, float], candidate: dict[int, float], k: int) -> float:
    """Share of the reference's top-``k`` tokens that are also in the candidate's top-``k``."""
    r_top = _top(reference, k)
    return len(set(r_top) & set(_top(candidate, k))) / len(r_top)


def parity_numbers(reference: list[dict[int, float]], candidate: list[dict[int, float]],
                   thresholds: ParityThresholds) -> dict:
    """Per prompt (KL, top-k overlap, both top-1 tokens, largest |log-prob difference| on shared tokens) and the
    summary the check decides on; JSON-ready."""
    k, per = thresholds.top_k, []
    for i, (r, c) in enumerate(zip(reference, candidate, strict=True)):
        shared = set(_top(r, k)) & set(_top(c, k))
        per.append({"prompt": i, "kl": topk_union_kl(r, c, k), "overlap": topk_overlap(r, c, k),
                    "top1_reference": _top(r, 1)[0], "top1_candidate": _top(c, 1)[0],
                    "max_abs_logprob_diff": max((abs(r[t] - c[t]) for t in shared), default=None)})
    kls, overlaps = [p["kl"] for p in per], [p["overlap"] for p in per]
    return {"thresholds": asdict(thresholds), "prompts": per, "max_kl": max(kls), "mean_kl": sum(kls) / len(kls),
            "min_overlap": min(overlaps), "top1_agreement": sum(p["top1_reference"] == p["top1_candidate"]
                                                                for p in per) / len(per),
            "passed": max(kls) <= thresholds.max_kl and min(overlaps) >= thresholds.min_overlap}


def check_logprob_parity(reference: Backend, candidate: Backend, prompts: Sequence[str],
                         thresholds: ParityThresholds = ParityThresholds(), what: str = "candidate") -> dict:
    """Compare the next-token distributions of ``candidate`` and ``reference`` (the PEFT model) after each of
    ``prompts`` (:func:`parity_numbers`); returns the numbers, to be saved with the results. Raises
    :class:`ParityError`, its one-line message giving the numbers, when the KL or the overlap of any prompt is
    past its threshold (a dropped adapter, a wrong RSLoRA scale, another checkpoint)."""
    if not prompts:
        raise ValueError("the parity check needs at least one prompt")
    k = thresholds.top_k
    numbers = parity_numbers(reference.first_token_logprobs(prompts, k), candidate.first_token_logprobs(prompts, k),
                             thresholds)
    if not numbers["passed"]:
        kl = ", ".join(f"{p['kl']:.3g}" for p in numbers["prompts"])
        ov = ", ".join(f"{p['overlap']:.2f}" for p in numbers["prompts"])
        raise ParityError(
            f"{what}: next-token distributions differ from the PEFT model's on {len(prompts)} prompts: max KL "
            f"{numbers['max_kl']:.4g} nats (limit {thresholds.max_kl}), min top-{k} overlap "
            f"{numbers['min_overlap']:.2f} (limit {thresholds.min_overlap}); KL per prompt [{kl}], overlap [{ov}], "
            f"top-1 agreement {numbers['top1_agreement']:.2f}; do not trust its numbers (a dropped adapter or a "
            f"wrong LoRA scale looks like this: check the engine's LoRA rank/RSLoRA support, or use --backend hf)")
    log.info("%s: parity ok on %d prompts (max KL %.2e nats, min top-%d overlap %.2f)", what, len(prompts),
             numbers["max_kl"], k, numbers["min_overlap"])
    return numbers


# ---- vLLM ------------------------------------------------------------------------------------------------

# The values vLLM accepts for ``max_lora_rank`` (vllm.config.lora.MaxLoRARanks, vLLM 0.10 to 0.32).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_MISSING = "vllm is not installed: bash setup.sh --vllm-cpu on a CPU with AVX-512, or --gpu"


def vllm_lora_rank(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds an adapter of rank ``rank``."""
    fit = [r for r in VLLM_LORA_RANKS if r >= rank]
    if rank < 1 or not fit:
        raise ValueError(f"adapter rank {rank}: vLLM serves LoRA ranks 1 to {VLLM_LORA_RANKS[-1]}; use --backend hf")
    return fit[0]


def adapter_rank(adapter_dir: str | Path) -> int:
    """The largest rank in a PEFT adapter folder's ``adapter_config.json`` (``r`` and any ``rank_pattern``)."""
    path = Path(adapter_dir) / "adapter_config.json"
    config = json.loads(path.read_text())
    if "r" not in config:
        raise ValueError(f"{path} has no 'r': not a LoRA adapter config; retrain the run (0_train_lora.sh)")
    return max([int(config["r"]), *map(int, (config.get("rank_pattern") or {}).values())])


def context_length(prompt_tokens: int, budget: Budget) -> int:
    """vLLM's ``max_model_len`` for prompts of up to ``prompt_tokens`` tokens: prompt, thinking budget, the forced
    answer tag (:data:`FORCED_ALLOWANCE`) and the answer budget."""
    return prompt_tokens + budget.think_tokens + FORCED_ALLOWANCE + budget.answer_tokens


@dataclass(frozen=True)
class EngineSizing:
    """How one vLLM engine is sized: GPUs per model, context length, the GPU memory share it takes, and the
    largest LoRA rank it serves (None: no LoRA)."""

    tensor_parallel_size: int = 1
    max_model_len: int = 32768
    gpu_memory_utilization: float = 0.9
    max_lora_rank: int | None = None
    dtype: str = "bfloat16"

    def __post_init__(self):
        if self.tensor_parallel_size < 1 or self.max_model_len < 2 or not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"need tensor_parallel_size >= 1, max_model_len >= 2 and 0 < gpu_memory_utilization <= 1,"
                             f" got {self}")
        if self.max_lora_rank is not None and self.max_lora_rank not in VLLM_LORA_RANKS:
            raise ValueError(f"max_lora_rank {self.max_lora_rank} is not one of vLLM's {VLLM_LORA_RANKS}")

    def llm_kwargs(self, model_path: str) -> dict:
        """Keyword arguments of ``vllm.LLM`` (eager mode: no CUDA-graph capture, which costs minutes per engine and
        memory per batch size, for long generations where decode time dominates anyway)."""
        lora = {"enable_lora": True, "max_lora_rank": self.max_lora_rank, "max_loras": 1} \
            if self.max_lora_rank is not None else {}
        return {"model": model_path, "tokenizer": model_path, "dtype": self.dtype, "seed": 0,
                "tensor_parallel_size": self.tensor_parallel_size, "max_model_len": self.max_model_len,
                "gpu_memory_utilization": self.gpu_memory_utilization, "enforce_eager": True, **lora}


@dataclass
class ServingOptions:
    """The config fields of a stage that may generate with vLLM (``--backend vllm``): how its engine is sized and
    when the served model counts as the PEFT model (:class:`ParityThresholds`). Stage configs inherit them."""

    tensor_parallel_size: int = option("vllm: GPUs per model (tensor parallelism)", 1)
    prompt_tokens: int = option("vllm: tokens allowed for a prompt (max_model_len = this + the thinking and answer "
                                f"budgets + {FORCED_ALLOWANCE} for the forced answer tag)", 1024)
    max_model_len: int = option("vllm: context length (0: from --prompt_tokens and the budgets)", 0)
    gpu_memory_utilization: float = option("vllm: share of each GPU's memory the engine takes", 0.9)
    parity_prompts: int = option("vllm: prompts of the parity check against the PEFT model", 4)
    parity_top_k: int = option("vllm: tokens per distribution compared by the parity check", 20)
    parity_max_kl: float = option("vllm: largest next-token KL (nats, over the union of the top-k) accepted", 0.05)
    parity_min_overlap: float = option("vllm: smallest share of the PEFT model's top-k the served top-k must hold",
                                       0.6)

    def check_serving(self) -> None:
        """The checks of these fields (called by the inheriting config's ``__post_init__``)."""
        if self.tensor_parallel_size < 1 or self.prompt_tokens < 1 or self.max_model_len < 0 or self.parity_prompts < 1:
            raise ValueError("need --tensor_parallel_size, --prompt_tokens, --parity_prompts >= 1 and "
                             "--max_model_len >= 0")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"--gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        self.parity_thresholds()

    def parity_thresholds(self) -> ParityThresholds:
        return ParityThresholds(self.parity_top_k, self.parity_max_kl, self.parity_min_overlap)

    def engine_sizing(self, budget: Budget, adapters: Sequence[str | Path] = ()) -> EngineSizing:
        """The engine for ``budget`` serving ``adapters`` (their largest rank, rounded up to one vLLM accepts)."""
        rank = max((adapter_rank(a) for a in adapters), default=None)
        return EngineSizing(self.tensor_parallel_size, self.max_model_len or context_length(self.prompt_tokens, budget),
                            self.gpu_memory_utilization, None if rank is None else vllm_lora_rank(rank))


class VLLMEngine:
    """One vLLM engine on one model folder; every adapter it serves (the LoRA, its ablated copies) is a
    ``LoRARequest`` on it (:meth:`backend`), so the variants of one base model share one load. vLLM starts
    its engine in a spawned process: the calling script needs the ``if __name__ == "__main__"`` guard."""

    def __init__(self, model_path: str, tokenizer: PreTrainedTokenizerBase, sizing: EngineSizing):
        try:
            from vllm import LLM
        except ImportError:
            raise ValueError(f"--backend vllm asked for, but {VLLM_MISSING}; or use --backend hf") from None
        self.tokenizer, self.sizing, self._ids = tokenizer, sizing, {}
        self.llm = LLM(**sizing.llm_kwargs(model_path))

    def backend(self, adapter_dir: str | None = None) -> VLLMBackend:
        """A backend serving the engine's model, with the adapter folder ``adapter_dir`` on (None: without)."""
        if adapter_dir is None:
            return VLLMBackend(self, None)
        if self.sizing.max_lora_rank is None:
            raise ValueError(f"this engine was started without LoRA, so it cannot serve {adapter_dir}")
        rank = adapter_rank(adapter_dir)
        if rank > self.sizing.max_lora_rank:
            raise ValueError(f"{adapter_dir} has rank {rank} > the engine's max_lora_rank {self.sizing.max_lora_rank}")
        from vllm.lora.request import LoRARequest
        lora_id = self._ids.setdefault(str(adapter_dir), len(self._ids) + 1)
        return VLLMBackend(self, LoRARequest(f"adapter{lora_id}", lora_id, str(adapter_dir)))

    def close(self) -> None:
        """Free the engine's GPU memory (as far as vLLM lets a process; a model that must load after it runs in
        its own process, :func:`generate_in_subprocess`)."""
        self.llm = None
        gc.collect()
        with contextlib.suppress(ImportError):
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
            cleanup_dist_env_and_memory()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class VLLMBackend:
    """Budget-forced generation on a :class:`VLLMEngine`, with one adapter (a ``LoRARequest``) or none.

    vLLM's rank-1 / RSLoRA handling came late, so :func:`check_logprob_parity` against the PEFT model must pass
    before its numbers are used (the evaluation and rollout stages do this)."""

    def __init__(self, engine: VLLMEngine, lora_request=None):
        self.engine, self.lora = engine, lora_request
        self.tokenizer, self.stops = engine.tokenizer, StopTokens.of(engine.tokenizer)

    def _run(self, ids: list[list[int]], max_tokens: int, stops: frozenset[int], logprobs: int | None = None,
             sampling: Sampling | None = None):
        from vllm import SamplingParams

        def params_of(i: int | None):
            temp, seed = (0.0, None) if sampling is None else (
                sampling.temperature, sampling.seed * 1_000_003 + sampling.first_item + i)
            return SamplingParams(temperature=temp, seed=seed, max_tokens=max_tokens, stop_token_ids=sorted(stops),
                                  skip_special_tokens=False, logprobs=logprobs)

        params = params_of(None) if sampling is None else [params_of(i) for i in range(len(ids))]
        outs = self.engine.llm.generate([{"prompt_token_ids": x} for x in ids], params, lora_request=self.lora)
        return [o.outputs[0] for o in outs]

    def _check_lengths(self, ids: list[list[int]], budget: Budget) -> None:
        longest = max((len(x) for x in ids), default=0)
        room = self.engine.sizing.max_model_len - budget.think_tokens - FORCED_ALLOWANCE - budget.answer_tokens
        if longest > room:
            raise ValueError(f"a prompt of {longest} tokens does not fit vLLM's max_model_len "
                             f"{self.engine.sizing.max_model_len} with the budgets ({budget.think_tokens} + "
                             f"{budget.answer_tokens} tokens); raise --prompt_tokens to at least {longest}")

    def generate(self, prompts: Sequence[str], budget: Budget, desc: str = "generate",  # noqa: ARG002 (vLLM shows its own progress)
                 sampling: Sampling | None = None) -> list[Generation]:
        tok = self.tokenizer
        ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        self._check_lengths(ids, budget)
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


# ---- a model in its own process ---------------------------------------------------------------------------


def subprocess_command(request: Path) -> list[str]:
    """The command that serves one request file (:func:`serve_request`) in a fresh Python process."""
    return [sys.executable, "-m", "rank1.serving", str(request)]


def generate_in_subprocess(request: dict) -> dict:
    """Run :func:`serve_request` on ``request`` in its own process (vLLM frees its GPU memory reliably only when
    its process ends) and return its result. The request: ``model_path``, ``tokenizer`` (a model spec of
    :func:`rank1.models.load_tokenizer`), ``sizing`` (:class:`EngineSizing` fields), ``prompts``, ``budget``,
    optional ``sampling``, and ``parity`` (``prompts``, ``reference`` log-probs, ``thresholds``, ``what``).
    A failed parity check in the child is raised here as :class:`ParityError`."""
    with tempfile.TemporaryDirectory(prefix="rank1-vllm-") as tmp:
        req, res = Path(tmp) / "request.json", Path(tmp) / "request.result.json"
        req.write_text(json.dumps(request))
        proc = subprocess.run(subprocess_command(req), check=False)  # its log goes where this process's goes
        result = json.loads(res.read_text()) if res.is_file() else None
    if result is not None and "parity_error" in result:
        raise ParityError(result["parity_error"])
    if proc.returncode != 0 or result is None:
        raise CheckFailed(f"the vLLM process for {request['model_path']} failed (exit {proc.returncode}; its log "
                          f"and traceback are above); fix what it names and rerun")
    result["generations"] = [Generation(**g) for g in result["generations"]]
    return result


def serve_request(request_path: Path) -> None:
    """Child side of :func:`generate_in_subprocess`: one engine, the parity check, the generations, written to
    ``<request>.result.json`` beside the request."""
    request = json.loads(request_path.read_text())
    out = request_path.with_name(request_path.stem + ".result.json")
    engine = VLLMEngine(request["model_path"], load_tokenizer(request["tokenizer"]),
                        EngineSizing(**request["sizing"]))
    backend, result = engine.backend(None), {}
    if request.get("parity"):
        p = request["parity"]
        reference = FixedLogprobs([{int(t): v for t, v in d.items()} for d in p["reference"]])
        try:
            result["parity"] = check_logprob_parity(reference, backend, p["prompts"],
                                                    ParityThresholds(**p["thresholds"]), p["what"])
        except ParityError as e:
            out.write_text(json.dumps({"parity_error": str(e)}))
            return
    sampling = Sampling(**request["sampling"]) if request.get("sampling") else None
    gens = backend.generate(request["prompts"], Budget(**request["budget"]), sampling=sampling)
    result["generations"] = [g.to_dict() for g in gens]
    out.write_text(json.dumps(result))


class FixedLogprobs:
    """Reference log-probs computed earlier (e.g. by the PEFT model before vLLM took the GPU)."""

    def __init__(self, logprobs: list[dict[int, float]]):
        self.logprobs = logprobs

    def first_token_logprobs(self, prompts: Sequence[str], k: int) -> list[dict[int, float]]:  # noqa: ARG002 (fixed)
        if len(prompts) != len(self.logprobs):
            raise ValueError(f"{len(self.logprobs)} reference log-prob sets for {len(prompts)} prompts")
        return self.logprobs



class ReplayBackend:
    """Generations made earlier (by a child process, :func:`generate_in_subprocess`), handed out by prompt."""

    def __init__(self, prompts: Sequence[str], generations: Sequence[Generation]):
        self.by_prompt = dict(zip(prompts, generations, strict=True))

    def generate(self, prompts: Sequence[str], budget: Budget, desc: str = "generate",  # noqa: ARG002 (made already)
                 sampling: Sampling | None = None) -> list[Generation]:  # noqa: ARG002
        missing = [p for p in prompts if p not in self.by_prompt]
        if missing:
            raise ValueError(f"{len(missing)} prompts were not generated by the child process")
        return [self.by_prompt[p] for p in prompts]




if __name__ == "__main__":  # the child process of generate_in_subprocess
    serve_request(Path(sys.argv[1]))
