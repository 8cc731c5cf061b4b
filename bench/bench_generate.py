"""Generation throughput: our batched budget-forced greedy loop vs. one-prompt-at-a-time HF generate.

Both sides decode the same held-out prompts greedily with the same thinking budget and stop tokens,
in one process, interleaved (batched, single, single, batched, ...); prints tokens/s per repeat, the
medians and their ratio (target >= 8x on 2 CPU cores). The batch and the thinking budget default to the
evaluation's (``[eval] batch_size`` and ``think_tokens``: 64 prompts and 160 tokens on tiny), so the load
is the one the evaluation runs; ``--n 32`` measures at batch 32. With a short budget the prefill of the
prompts, which costs both sides the same multiply-adds, dominates the batched side. With a LoRA run, both
sides run the model the way the evaluation does (``variant_context(..., "adapter_on")``: adapters folded
into the weights on CPU; ``--no_fold`` keeps them as separate modules).

``--vllm`` also times vLLM (one engine, the adapter as a LoRA request, fp32 on CPU) on the same prompts and budget
after the other two, and prints its ratio to the batched side; where vLLM cannot run (not installed, or a CPU
without AVX-512 and no GPU) it says why and times the rest.

Usage:
    python bench/bench_generate.py --run tiny-r1-all        # tiny profile (SmolLM2-135M + adapter), 64 prompts
    python bench/bench_generate.py --profile test --n 8 --tokens 16
    python bench/bench_generate.py --run tiny-r1-all --vllm # and vLLM beside them
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--n", type=int, default=None, help="prompts (= the batch size of the batched side; "
                                                            "default: the profile's [eval] batch_size)")
    parser.add_argument("--tokens", type=int, default=None, help="thinking budget per prompt (default: the "
                                                                 "profile's [eval] think_tokens)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side, interleaved")
    parser.add_argument("--run", help="a trained run (its long reasoning traces make a fairer load than the "
                                      "base model, which often stops at once); default: the base model")
    parser.add_argument("--adapter", help="a PEFT adapter folder instead of --run")
    parser.add_argument("--no_fold", action="store_true", help="keep the adapters as separate modules (the "
                                                               "evaluation folds them into the weights on CPU)")
    parser.add_argument("--vllm", action="store_true", help="also time vLLM on the same prompts (where it runs)")
    args = parser.parse_args()

    from rank1.benchmarks import BenchmarkSpec, load_benchmark
    from rank1.config import load_profile
    from rank1.generate import Budget, StopTokens, budget_forced_greedy, think_prompt
    from rank1.models import load_model, load_tokenizer
    from rank1.runs import resolve_run
    from rank1.training.evaluate import variant_context

    profile = load_profile(args.profile)
    evaluation = profile.section("eval")
    for arg, key in (("n", "batch_size"), ("tokens", "think_tokens")):
        if getattr(args, arg) is None:
            if key not in evaluation:
                parser.error(f"profile {args.profile} sets no [eval] {key}: pass --{arg}")
            setattr(args, arg, int(evaluation[key]))
    if args.adapter or args.run:
        loaded = resolve_run(args.run, args.profile, adapter=args.adapter,
                             model_id=profile.common("model")).load("fp32")
        tok, model, model_id = loaded.tokenizer, loaded.model, f"{loaded.run.name} on {loaded.run.model_id}"
        context = variant_context(loaded, "adapter_on", fold=not args.no_fold)  # as the evaluation runs it
    else:
        model_id = profile.common("model")
        tok, model = load_tokenizer(model_id), load_model(model_id, dtype=torch.float32).eval()
        context = contextlib.nullcontext()
    bench = load_benchmark(BenchmarkSpec("heldout", args.n), args.profile)
    prompts = [think_prompt(tok, it.question) for it in bench.items]
    stops = sorted(StopTokens.of(tok).think)

    def batched() -> int:
        gens = budget_forced_greedy(model, tok, prompts, Budget(args.tokens, 0), batch_size=len(prompts),
                                    desc="batched")
        return sum(g.think_tokens for g in gens)

    @torch.inference_mode()
    def single() -> int:
        total = 0
        for p in prompts:
            ids = tok(p, return_tensors="pt", add_special_tokens=False)
            out = model.generate(**ids, max_new_tokens=args.tokens, do_sample=False, eos_token_id=stops,
                                 pad_token_id=tok.pad_token_id)[0, ids["input_ids"].shape[1]:].tolist()
            total += next((i for i, t in enumerate(out) if t in stops), len(out))
        return total

    print(f"profile={args.profile} model={model_id} prompts={len(prompts)} budget={args.tokens} "
          f"threads={torch.get_num_threads()}")
    rates: dict[str, list[float]] = {"batched": [], "single": []}
    with context:
        for r in range(args.repeats):
            for name in (("batched", "single") if r % 2 == 0 else ("single", "batched")):
                t0 = time.perf_counter()
                tokens = (batched if name == "batched" else single)()
                rates[name].append(tokens / (time.perf_counter() - t0))
                print(f"  repeat {r}: {name:7s} {tokens:5d} tokens  {rates[name][-1]:7.1f} tokens/s", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"median tokens/s: batched {med['batched']:.1f}, one at a time {med['single']:.1f}")
    print(f"speed-up batched / one at a time: {med['batched'] / med['single']:.1f}x  (target >= 8x)")
    if args.vllm:
        why = vllm_cannot_run()
        if why:
            print(f"vLLM not timed: {why}")
            return
        vllm_rate = time_vllm(args, tok, prompts, loaded.run.weights_dir if args.adapter or args.run else None,
                              model_id if not (args.adapter or args.run) else loaded.run.model_id)
        print(f"median tokens/s: vLLM {vllm_rate:.1f}; vLLM / batched: {vllm_rate / med['batched']:.1f}x")


def vllm_cannot_run() -> str | None:
    """Why vLLM cannot generate on this machine (None: it can)."""
    import importlib.util
    import re
    from pathlib import Path

    from rank1.serving import VLLM_MISSING

    if importlib.util.find_spec("vllm") is None:
        return VLLM_MISSING
    if torch.cuda.is_available():
        return None
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags = re.search(r"^flags\s*:\s*(.+)$", info, re.M)
    if flags and "avx512f" in flags.group(1).split():
        return None
    name = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    return f"vLLM's CPU backend needs AVX-512; this CPU ({name.group(1).strip() if name else 'unknown'}) lacks avx512f"


def time_vllm(args, tok, prompts, adapter, model_id: str) -> float:
    """Median thinking tokens/s of vLLM over ``args.repeats`` runs (the engine started once, before timing)."""
    from rank1.generate import Budget
    from rank1.models import resolve_model_source
    from rank1.serving import EngineSizing, VLLMEngine, adapter_rank, context_length, vllm_lora_rank

    budget = Budget(args.tokens, 0)
    longest = max(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    sizing = EngineSizing(max_model_len=context_length(longest, budget), gpu_memory_utilization=0.5,
                          max_lora_rank=vllm_lora_rank(adapter_rank(adapter)) if adapter else None,
                          dtype="bfloat16" if torch.cuda.is_available() else "float32")
    engine = VLLMEngine(resolve_model_source(model_id), tok, sizing)
    backend, rates = engine.backend(str(adapter) if adapter else None), []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        tokens = sum(g.think_tokens for g in backend.generate(prompts, budget))
        rates.append(tokens / (time.perf_counter() - t0))
        print(f"  repeat {r}: vllm    {tokens:5d} tokens  {rates[-1]:7.1f} tokens/s", flush=True)
    engine.close()
    return statistics.median(rates)


if __name__ == "__main__":
    main()
