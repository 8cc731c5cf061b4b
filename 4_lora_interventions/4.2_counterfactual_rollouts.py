"""Stage 4.2: what differs between a correct and an incorrect attempt at the same problem?

N sampled rollouts per held-out problem (temperature, seed and s1 budget forcing as in the evaluation
stage; vLLM serves them when installed and asked for), each graded and saved. Problems with at least one
correct and one incorrect complete rollout are kept. Then, beyond the authors: the adapter scalars of
every rollout (teacher-forced; mean over the thinking and over its last tokens), and the same for the
matched base-model MLP neurons of stage 2.4; per mixed problem, correct minus incorrect; across problems,
a sign-flip permutation test per feature with Benjamini-Hochberg correction.

Usage:
    python 4_lora_interventions/4.2_counterfactual_rollouts.py                  # tiny profile, newest run
    python 4_lora_interventions/4.2_counterfactual_rollouts.py --n_problems 64 --n_samples 8 --backend vllm

Writes into results/<profile>/rollouts/<run>/: rollouts.jsonl (every rollout and grade),
rollout_activations.safetensors (per-rollout means, read by 4.3), counterfactual.json (tests) and
counterfactual_differences.{pdf,png}. Resumes per group of problems.
"""

import gc
import importlib.util
import json
import logging
import shutil
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import save_file

from rank1 import constants as K
from rank1.artifacts import public_config, read_json, write_json, write_text, write_with
from rank1.capture import Capture, CaptureSpec
from rank1.config import option, parse_config, results_dir
from rank1.generate import (
    Budget,
    FixedLogprobs,
    HFBackend,
    Sampling,
    VLLMBackend,
    check_logprob_parity,
    think_prompt,
)
from rank1.interventions.plots import plot_counterfactual
from rank1.interventions.common import StageOptions, finished, heldout_problems, output_folder, save_metadata
from rank1.logs import run_main
from rank1.models import resolve_model_source
from rank1.interventions.rollouts import compare, mixed_problems, paired_differences, rollout_ids, sample_rollouts, trace_means

log = logging.getLogger("4.2_counterfactual_rollouts")
SETTINGS = ("n_problems", "offset", "n_samples", "temperature", "seed", "think_tokens", "answer_tokens",
            "last_tokens", "mlp_baseline", "require_complete", "backend")


@dataclass
class RolloutConfig(StageOptions):
    n_problems: int = option("held-out problems", 10)
    offset: int = option("first held-out problem", 0)
    n_samples: int = option("rollouts per problem", 4)
    temperature: float = option("sampling temperature (the authors: 0.7)", 0.7)
    seed: int = option("sampling seed (rollout i of the run uses seed (seed, i))", 0)
    think_tokens: int = option("thinking budget", 160)
    answer_tokens: int = option("answer budget", 16)
    batch_size: int = option("generation and extraction batch size", 16)
    last_tokens: int = option("activations are also averaged over the last N thinking tokens", 16)
    require_complete: bool = option("only rollouts whose thinking ended before its budget count", True)
    mlp_baseline: bool = option("also read the matched base-model MLP neurons of stage 2.4", True)
    n_resamples: int = option("sign flips of the permutation test", 10000)
    alpha: float = option("false discovery rate of the Benjamini-Hochberg correction", 0.05)
    backend: str = option("hf | vllm (GPU; needs the vllm package)", "hf")
    precision: str = option("auto | bf16 | fp32", "fp32")

    def __post_init__(self):
        if self.backend not in ("hf", "vllm"):
            raise ValueError(f"--backend must be hf or vllm, got {self.backend!r}")
        if self.backend == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ValueError("--backend vllm asked for, but vllm is not installed (it needs a CUDA torch): "
                             "pip install vllm on a GPU machine, or use --backend hf")
        if self.n_samples < 2:
            raise ValueError(f"--n_samples must be >= 2 to compare attempts of one problem, got {self.n_samples}")
        if min(self.n_problems, self.last_tokens, self.batch_size) < 1 or self.temperature <= 0:
            raise ValueError("--n_problems, --last_tokens, --batch_size must be >= 1 and --temperature > 0")


def mlp_spec(cfg: RolloutConfig, run, n_adapters_per_layer: int) -> tuple[dict, list | None]:
    """(neurons per layer and seed, 2.4's site list) of stage 2.4's sample; without 2.4, as many neurons
    per layer as the run has adapters per layer, seed 0."""
    manifest = results_dir(cfg.profile, "mlp_activations", run.name) / K.STORE_MANIFEST
    if not manifest.is_file():
        return {"neurons_per_layer": n_adapters_per_layer, "seed": 0}, None
    m = read_json(manifest)
    per_layer = sum(1 for s in m["sites"] if s["layer"] == m["sites"][0]["layer"])
    return {"neurons_per_layer": per_layer, "seed": m["config"].get("neuron_seed", 0)}, m["sites"]


def vllm_backend(cfg: RolloutConfig, run, bench):
    """vLLM serving the adapter, checked first against the PEFT model's first-token log-probs (computed
    and freed before vLLM takes the GPU), as the evaluation stage does."""
    loaded = run.load(cfg.precision, device_map="auto")
    prompts = [think_prompt(loaded.tokenizer, it.question) for it in bench.items[:4]]
    reference = FixedLogprobs(HFBackend(loaded.model, loaded.tokenizer).first_token_logprobs(prompts, 5))
    tokenizer = loaded.tokenizer
    del loaded
    gc.collect()
    torch.cuda.empty_cache()
    backend = VLLMBackend(resolve_model_source(run.model_id), tokenizer, str(run.weights_dir))
    check_logprob_parity(reference, backend, prompts, k=5, atol=0.1, what="vllm rollouts")
    return backend, tokenizer


def main(cfg: RolloutConfig) -> None:
    run = cfg.resolve_run()
    folder = output_folder(cfg, K.ROLLOUTS_STAGE, run)
    config = public_config(cfg)
    report = finished(folder / K.ROLLOUTS_JSON, run, config, SETTINGS, cfg.overwrite)
    if report is None:
        report = compute(cfg, run, folder, config)
    log.info("%d rollouts, accuracy %.3f; %d of %d problems mixed", report["n_rollouts"], report["accuracy"],
             len(report["mixed_problems"]), cfg.n_problems)
    for name, res in report["tests"].items():
        best = res["features"][0] if res.get("features") else None
        smallest = f"; smallest p {best['p']:.3g} ({best['feature']})" if best else ""
        log.info("%-10s %d mixed problems, %d features with q < %.2f%s", name, res["n_problems"],
                 len(res["significant"]), cfg.alpha, smallest)
    for path in plot_counterfactual(report, folder / K.ROLLOUTS_STEM):
        log.info("wrote %s", path)


def compute(cfg: RolloutConfig, run, folder, config) -> dict:
    bench = heldout_problems(cfg.profile, cfg.n_problems, cfg.offset)
    partial = folder / K.ROLLOUTS_PARTIAL_DIR
    if cfg.overwrite:
        shutil.rmtree(partial, ignore_errors=True)
    stamp = {k: config[k] for k in SETTINGS} | run.identity()
    if (partial / "settings.json").is_file() and read_json(partial / "settings.json") != stamp:
        raise ValueError(f"{partial} holds interrupted rollouts with other settings or weights; pass --overwrite")
    write_json(partial / "settings.json", stamp)
    budget, sampling = Budget(cfg.think_tokens, cfg.answer_tokens), Sampling(cfg.temperature, cfg.seed)
    if cfg.backend == "vllm":
        backend, tokenizer = vllm_backend(cfg, run, bench)
        records = sample_rollouts(backend.generate, tokenizer, bench, cfg.n_samples, budget, sampling, partial)
        del backend
        gc.collect()
        loaded = run.load(cfg.precision)
    else:
        loaded = run.load(cfg.precision)
        backend = HFBackend(loaded.model, loaded.tokenizer, cfg.batch_size, loaded.autocast)
        records = sample_rollouts(backend.generate, loaded.tokenizer, bench, cfg.n_samples, budget, sampling,
                                  partial)
    question = {it.id: it.question for it in bench.items}
    seqs = [rollout_ids(loaded.tokenizer, question[r["id"]], r["thinking"]) for r in records]
    kinds = ["lora"] + (["mlp"] if cfg.mlp_baseline else [])
    tensors, names = {}, {}
    for kind in kinds:
        extra, expected = mlp_spec(cfg, run, len(loaded.sites) // len({s.layer for s in loaded.sites})) \
            if kind == "mlp" else ({}, None)
        capture = Capture(CaptureSpec(run, kind, cfg.precision, **extra), loaded)
        if expected is not None and capture.sites != expected:
            raise ValueError("the MLP neurons drawn here differ from stage 2.4's; rerun 2.4 or pass --no-mlp_baseline")
        names[kind] = [f"L{s['layer']}.{s['name']}" for s in capture.sites]
        for key, t in trace_means(capture, seqs, cfg.last_tokens, cfg.batch_size).items():
            tensors[f"{kind}_{key}"] = t.contiguous()
    pid = {it.id: i for i, it in enumerate(bench.items)}
    tensors |= {"correct_R": torch.tensor([r["correct"] for r in records]),
                "complete_R": torch.tensor([r["complete"] for r in records]),
                "think_tokens_R": torch.tensor([r["think_tokens"] for r in records]),
                "problem_R": torch.tensor([pid[r["id"]] for r in records])}
    mixed = mixed_problems(records, cfg.require_complete)
    tests = {}
    for kind in kinds:
        for span in ("trace", "last"):
            d_PS = paired_differences(tensors[f"{kind}_{span}_RS"].numpy(), records, mixed, cfg.require_complete)
            tests[f"{kind}_{span}"] = compare(d_PS, names[kind], cfg.n_resamples, cfg.alpha)
    report = {"identity": run.identity(), "config": config, "n_rollouts": len(records),
              "accuracy": float(np.mean([r["correct"] for r in records])),
              "complete_share": float(np.mean([r["complete"] for r in records])),
              "mixed_problems": mixed, "sites": {k: names[k] for k in kinds}, "tests": tests}
    save_metadata(folder, cfg, run)
    write_text(folder / K.ROLLOUTS_JSONL, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                  for r in records))
    write_with(folder / K.ROLLOUTS_ACTS, lambda p: save_file(tensors, str(p), metadata={
        "sites": json.dumps(names)}))
    write_json(folder / K.ROLLOUTS_JSON, report)
    shutil.rmtree(partial, ignore_errors=True)
    return report


if __name__ == "__main__":
    run_main(main, parse_config(RolloutConfig, "rollouts", __doc__))
