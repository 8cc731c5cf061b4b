import copy

import pytest
import torch

from rank1.generate import (
    Budget,
    HFBackend,
    ParityError,
    StopTokens,
    budget_forced_greedy,
    check_logprob_parity,
    forced_answer_ids,
    think_prompt,
)
from rank1.models import load_model

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


def test_logprob_parity_passes_on_itself_and_fails_on_a_perturbed_model(model, tiny_tok):
    prompts = [think_prompt(tiny_tok, q) for q in QUESTIONS[:2]]
    ref = HFBackend(model, tiny_tok)
    assert check_logprob_parity(ref, HFBackend(model, tiny_tok), prompts) == 0.0
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model.layers[1].mlp.down_proj.weight.mul_(1.05)
    with pytest.raises(ParityError, match="differ from the PEFT model on prompt 0"):
        check_logprob_parity(ref, HFBackend(other, tiny_tok), prompts, what="vllm")


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
    """Appending in place (room doubling) and dropping rows give the tensors DynamicCache builds by cat."""
    from transformers import DynamicCache

    from rank1.generate import _spare_cache

    g = torch.Generator().manual_seed(0)
    ours, ref = _spare_cache(), DynamicCache()
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
    assert ours.layers[0]._k.shape[-2] == 2 * 81  # 80 filled, then doubled
