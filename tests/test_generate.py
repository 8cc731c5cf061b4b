import copy
import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from rank1.constants import PROJECTIONS
from rank1.generate import (
    FORCED_ALLOWANCE,
    BatchTooLarge,
    Budget,
    Generation,
    HFBackend,
    KVDims,
    StopTokens,
    _free_gpu_bytes,
    _spare_cache,
    _SpareLayer,
    budget_forced_greedy,
    check_kv_fits,
    forced_answer_ids,
    think_prompt,
)
from rank1.logs import report_error
from rank1.models import load_model
from rank1.serving import (
    EngineSizing,
    FixedLogprobs,
    ParityError,
    ParityThresholds,
    ReplayBackend,
    adapter_rank,
    check_logprob_parity,
    context_length,
    parity_numbers,
    subprocess_command,
    topk_overlap,
    topk_union_kl,
    vllm_lora_rank,
)

QUESTIONS = ["hi", "What is 12 + 30?", "a much longer question than the first two, with more bytes", "7", "abc",
             "Solve x"]


@pytest.fixture(scope="module")
def model(tiny_tok):
    """random-qwen2 with larger weights and likelier stop tokens: varied outputs that sometimes stop
    on their own and sometimes run out of budget, in both phases (seeded)."""
    m = load_model("random-qwen2").eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
        for t in ("<|im_start|>", "<|im_end|>"):
            m.lm_head.weight[tiny_tok.convert_tokens_to_ids(t)] *= 1.5
    return m


def hf_greedy(model, tok, ids: list[int], max_new: int, stops) -> tuple[list[int], bool]:
    """Reference: one prompt, no padding, HF generate; returns (tokens before the stop, stopped)."""
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=max_new, do_sample=False, eos_token_id=sorted(stops),
                         pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
    cut = next((i for i, t in enumerate(out) if t in stops), None)
    return (out, False) if cut is None else (out[:cut], True)


@pytest.mark.parametrize("think_tokens", [3, 12])
def test_budget_forced_greedy_equals_hf_greedy_phase_by_phase(model, tiny_tok, think_tokens):
    """Batched, left-padded, rows dropped as they finish: each phase equals HF greedy on one prompt."""
    budget = Budget(think_tokens, answer_tokens=6)
    stops = StopTokens.of(tiny_tok)
    prompts = [think_prompt(tiny_tok, q) for q in QUESTIONS]
    gens = budget_forced_greedy(model, tiny_tok, prompts, budget, batch_size=4)
    if think_tokens == 12:  # both endings of both phases occur
        assert {g.think_budget_hit for g in gens} == {True, False}
        assert {g.answer_budget_hit for g in gens} == {True, False}
    for p, g in zip(prompts, gens, strict=True):
        ids = tiny_tok(p, add_special_tokens=False)["input_ids"]
        think, stopped = hf_greedy(model, tiny_tok, ids, think_tokens, stops.think)
        assert tiny_tok.decode(think) == g.thinking and len(think) == g.think_tokens
        assert g.think_budget_hit == (not stopped)
        forced = ids + think + forced_answer_ids(tiny_tok, g.thinking)
        answer, stopped = hf_greedy(model, tiny_tok, forced, 6, stops.answer)
        assert tiny_tok.decode(answer) == g.answer and g.answer_budget_hit == (not stopped)


def test_budget_hit_forces_the_answer_tag(model, tiny_tok):
    g = budget_forced_greedy(model, tiny_tok, [think_prompt(tiny_tok, "x")], Budget(2, 0))[0]
    assert g.think_tokens == 2 and g.think_budget_hit and g.answer == "" and g.answer_tokens == 0
    assert tiny_tok.decode(forced_answer_ids(tiny_tok, "abc")) == "\n<|im_start|>answer\nAnswer:"
    assert tiny_tok.decode(forced_answer_ids(tiny_tok, "abc\n")) == "<|im_start|>answer\nAnswer:"


def test_order_is_kept_and_batch_size_does_not_matter(model, tiny_tok):
    prompts = [think_prompt(tiny_tok, q) for q in QUESTIONS]
    one = budget_forced_greedy(model, tiny_tok, prompts, Budget(5, 3), batch_size=1)
    many = budget_forced_greedy(model, tiny_tok, prompts, Budget(5, 3), batch_size=4)
    assert one == many


@pytest.fixture(scope="module")
def peft_model(model):
    """A rank-1 RSLoRA adapter (alpha 16) on all seven projections, its B drawn so the adapter matters."""
    m = get_peft_model(copy.deepcopy(model), LoraConfig(r=1, lora_alpha=16, use_rslora=True, target_modules=list(
        PROJECTIONS), lora_dropout=0.0)).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "lora_B" in name:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    return m


class NoisyLogits:
    """The PEFT model's next-token log-probs after Gaussian noise of std ``std`` on its logits: a stand-in for a
    second engine whose kernels round differently."""

    def __init__(self, model, tok, std: float):
        self.model, self.tok, self.g = model, tok, torch.Generator().manual_seed(3)
        self.std = std

    @torch.no_grad()
    def first_token_logprobs(self, prompts, k):
        out = []
        for p in prompts:
            logits_V = self.model(torch.tensor([self.tok(p, add_special_tokens=False)["input_ids"]])).logits[0, -1]
            logp_V = torch.log_softmax(logits_V.double() + self.std * torch.randn(logits_V.shape, generator=self.g,
                                                                                  dtype=torch.float64), -1)
            top = torch.topk(logp_V, k)
            out.append({int(i): float(v) for i, v in zip(top.indices, top.values, strict=True)})
        return out


def test_topk_union_kl_and_overlap_hand_computed():
    ref = {1: math.log(0.5), 2: math.log(0.3), 3: math.log(0.2)}
    cand = {1: math.log(0.5), 2: math.log(0.2), 4: math.log(0.3)}
    # k=2: union {1, 2, 4}; the reference has not ranked 4 in its top 2: capped at its 2nd value (0.3);
    # the candidate's 2 is outside its top 2 and reported below its floor: kept at 0.2
    p, q = [0.5 / 1.1, 0.3 / 1.1, 0.3 / 1.1], [0.5, 0.2, 0.3]
    expected = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    assert topk_union_kl(ref, cand, 2) == pytest.approx(expected, rel=1e-12)
    assert topk_overlap(ref, cand, 2) == 0.5 and topk_overlap(ref, cand, 1) == 1.0
    assert topk_union_kl(ref, ref, 3) == 0.0
    numbers = parity_numbers([ref, ref], [cand, ref], ParityThresholds(top_k=2, max_kl=0.5, min_overlap=0.5))
    assert numbers["max_kl"] == pytest.approx(expected) and numbers["min_overlap"] == 0.5 and numbers["passed"]
    assert numbers["top1_agreement"] == 1.0 and numbers["prompts"][1]["kl"] == 0.0


def test_parity_passes_merged_and_noise_and_fails_a_wrong_scale_or_dropped_adapter(peft_model, tiny_tok, capsys):
    prompts = [think_prompt(tiny_tok, q) for q in QUESTIONS[:4]]
    ref = HFBackend(peft_model, tiny_tok)
    with peft_model.disable_adapter():
        base = HFBackend(peft_model, tiny_tok).first_token_logprobs(prompts, 20)
    base_kl = parity_numbers(ref.first_token_logprobs(prompts, 20), base, ParityThresholds())["max_kl"]
    merged = copy.deepcopy(peft_model).merge_and_unload()
    same = check_logprob_parity(ref, HFBackend(merged, tiny_tok), prompts, what="merged")
    assert same["passed"] and same["max_kl"] < 1e-8 and same["min_overlap"] == 1.0 and len(same["prompts"]) == 4
    noisy = check_logprob_parity(ref, NoisyLogits(peft_model, tiny_tok, std=0.02), prompts, what="noisy")
    assert noisy["passed"] and 0 < noisy["max_kl"] < 0.05 * base_kl

    fixed = FixedLogprobs(ref.first_token_logprobs(prompts, 20))  # the adapter-on numbers, kept
    with peft_model.disable_adapter(), pytest.raises(ParityError, match=r"vllm lora: .*max KL [0-9.e-]+ nats"):
        check_logprob_parity(fixed, HFBackend(peft_model, tiny_tok), prompts, what="vllm lora")
    doubled, scaled = copy.deepcopy(peft_model), 0
    for module in doubled.modules():
        if isinstance(getattr(module, "scaling", None), dict) and "default" in module.scaling:  # LoRA layers
            module.scaling["default"] *= 2
            scaled += 1
    assert scaled == 7 * len(doubled.base_model.model.model.layers)
    with pytest.raises(ParityError) as e:
        check_logprob_parity(ref, HFBackend(doubled, tiny_tok), prompts, what="vllm lora")
    message = str(e.value)
    assert "KL per prompt [" in message and "\n" not in message and "limit 0.05" in message
    assert report_error(e.value)
    assert capsys.readouterr().err == f"error: {message}\n"


def test_parity_thresholds_reject_bad_values():
    with pytest.raises(ValueError, match="min_overlap"):
        ParityThresholds(min_overlap=1.5)
    with pytest.raises(ValueError, match="at least one prompt"):
        check_logprob_parity(None, None, [])


def test_budget_rejects_bad_values():
    with pytest.raises(ValueError, match="think_tokens >= 1"):
        Budget(0, 4)


def test_sampling_is_seeded_per_item_and_greedy_is_unchanged(model, tiny_tok):
    from rank1.generate import Sampling

    prompts = [think_prompt(tiny_tok, q) for q in ("What is 2+2?", "Name a color.", "Count to three.")]
    budget = Budget(10, 3)
    greedy = budget_forced_greedy(model, tiny_tok, prompts, budget, batch_size=2)
    assert budget_forced_greedy(model, tiny_tok, prompts, budget, batch_size=3, sampling=None) == greedy
    s = Sampling(temperature=1.0, seed=7)
    a = budget_forced_greedy(model, tiny_tok, prompts * 2, budget, batch_size=6, sampling=s)
    b = budget_forced_greedy(model, tiny_tok, prompts * 2, budget, batch_size=1, sampling=s)
    assert a == b  # an item's sample does not depend on its batch
    assert a[:3] != a[3:] and a != greedy  # repeats of a prompt are different draws
    assert budget_forced_greedy(model, tiny_tok, prompts, budget, sampling=Sampling(1.0, seed=8)) != a[:3]
    with pytest.raises(ValueError, match="temperature > 0"):
        Sampling(0.0)


def test_spare_cache_holds_what_concatenation_holds():
    """Appending in place (fixed room, grown by fixed steps) and dropping rows give the tensors DynamicCache builds
    by concatenation."""
    from transformers import DynamicCache

    g = torch.Generator().manual_seed(0)
    for capacity, room in ((64, 64 + _SpareLayer.GROW_STEP), (90, 90)):
        ours, ref = _spare_cache(capacity), DynamicCache()
        steps = [torch.randn(3, 2, 40, 4, generator=g)] + [torch.randn(3, 2, 1, 4, generator=g) for _ in range(50)]
        rows = torch.arange(3)
        for i, kv in enumerate(steps):
            if i == 10:  # a row finishes
                keep = torch.tensor([0, 2])
                ours.batch_select_indices(keep), ref.batch_select_indices(keep)
                rows = rows[keep]
            k1, v1 = ours.update(kv[rows], 2 * kv[rows], 0)
            k2, v2 = ref.update(kv[rows], 2 * kv[rows], 0)
            assert torch.equal(k1, k2) and torch.equal(v1, v2)
        assert ours.get_seq_length() == ref.get_seq_length() == 90
        assert ours.layers[0]._k.shape[-2] == room  # 90 positions: grown once by a fixed step, or exactly the room


QWEN32B = KVDims(layers=64, kv_heads=8, heads=40, head_dim=128, dtype_bytes=2)


def test_kv_check_refuses_a_batch_that_cannot_fit_and_names_the_batch_that_does():
    # per token: 2 x 64 x 8 x 128 x 2 B = 262144 B of cache, plus one layer repeated to 40 heads: 2 x 40 x 128 x 2
    per_token = 262144 + 20480
    tokens = 512 + 8192 + 16 + 512
    assert QWEN32B.need(1, tokens) == per_token * tokens
    free = 20 * (1 << 30)
    check_kv_fits(QWEN32B, 8, tokens, free)  # 8 x 9232 x 282624 B = 19.4 GiB: fits
    with pytest.raises(BatchTooLarge, match=r"batch of 16 sequences of up to 9232 tokens needs 38\.9 GiB .* 20\.0 GiB "
                                            r"free; use --batch_size 8 or less"):
        check_kv_fits(QWEN32B, 16, tokens, free)
    with pytest.raises(BatchTooLarge, match="no batch of one fits"):
        check_kv_fits(QWEN32B, 1, tokens, per_token * tokens - 1)
    mha = KVDims(layers=2, kv_heads=4, heads=4, head_dim=8, dtype_bytes=4)  # no grouped heads: nothing repeated
    assert mha.need(3, 10) == 2 * 2 * 4 * 8 * 4 * 3 * 10


def test_kv_dims_of_a_model(model):
    c = model.config
    dims = KVDims.of(model)
    assert (dims.layers, dims.kv_heads, dims.heads, dims.dtype_bytes) == (
        c.num_hidden_layers, c.num_key_value_heads, c.num_attention_heads, 4)
    assert dims.head_dim == getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    assert _free_gpu_bytes(model) is None  # on the CPU nothing is checked


def test_vllm_sizing_without_vllm(tmp_path):
    assert [vllm_lora_rank(r) for r in (1, 2, 8, 9, 300, 512)] == [1, 8, 8, 16, 320, 512]
    for bad in (0, 513):
        with pytest.raises(ValueError, match="vLLM serves LoRA ranks 1 to 512"):
            vllm_lora_rank(bad)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 1, "rank_pattern": {"down_proj": 12}}))
    assert adapter_rank(tmp_path) == 12
    assert context_length(512, Budget(8192, 512)) == 512 + 8192 + FORCED_ALLOWANCE + 512
    sizing = EngineSizing(tensor_parallel_size=8, max_model_len=9232, gpu_memory_utilization=0.85, max_lora_rank=16)
    kw = sizing.llm_kwargs("/m")
    assert kw["tensor_parallel_size"] == 8 and kw["max_model_len"] == 9232 and kw["max_lora_rank"] == 16
    assert kw["enable_lora"] and kw["gpu_memory_utilization"] == 0.85 and kw["model"] == kw["tokenizer"] == "/m"
    assert "enable_lora" not in EngineSizing().llm_kwargs("/m")
    with pytest.raises(ValueError, match="max_lora_rank 2 is not one of"):
        EngineSizing(max_lora_rank=2)
    cmd = subprocess_command(tmp_path / "request.json")
    assert cmd == [sys.executable, "-m", "rank1.serving", str(tmp_path / "request.json")]


def test_serving_options_size_the_engine_from_the_config(tmp_path):
    from rank1.interventions.config import RolloutConfig
    from rank1.training.config import EvalConfig

    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 1}))
    cfg = EvalConfig(tensor_parallel_size=2, prompt_tokens=300, parity_max_kl=0.1)
    sizing = cfg.engine_sizing(Budget(100, 20), [tmp_path])
    assert (sizing.tensor_parallel_size, sizing.max_model_len, sizing.max_lora_rank) == (2, 300 + 100 + 16 + 20, 1)
    assert cfg.engine_sizing(Budget(100, 20)).max_lora_rank is None
    assert EvalConfig(max_model_len=4096).engine_sizing(Budget(100, 20)).max_model_len == 4096
    assert cfg.parity_thresholds() == ParityThresholds(20, 0.1, 0.6)
    with pytest.raises(ValueError, match="gpu_memory_utilization must be in"):
        RolloutConfig(gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="min_overlap"):
        RolloutConfig(parity_min_overlap=-0.1)


def test_replay_backend_hands_out_by_prompt():
    gens = [Generation("a", "1", 1, 1, False, False), Generation("b", "2", 1, 1, True, False)]
    replay = ReplayBackend(["p", "q"], gens)
    assert replay.generate(["q", "p", "q"], Budget(1, 1)) == [gens[1], gens[0], gens[1]]
    with pytest.raises(ValueError, match="1 prompts were not generated"):
        replay.generate(["r"], Budget(1, 1))


def test_a_failed_child_process_is_one_check_failure(tmp_path):
    """The child (python -m rank1.serving) cannot load a model folder that does not exist: the parent raises one
    CheckFailed naming it and leaves no request files behind."""
    import tempfile

    from rank1.errors import CheckFailed
    from rank1.serving import generate_in_subprocess

    before = set(Path(tempfile.gettempdir()).glob("rank1-vllm-*"))
    missing = str(tmp_path / "no_model")
    with pytest.raises(CheckFailed, match=rf"the vLLM process for {re.escape(missing)} failed \(exit 1; its log"):
        generate_in_subprocess({"model_path": missing, "tokenizer": missing, "sizing": {}, "prompts": ["x"],
                                "budget": {"think_tokens": 1, "answer_tokens": 1}})
    assert set(Path(tempfile.gettempdir()).glob("rank1-vllm-*")) == before
