"""The stage-4 runs (``4_lora_interventions/``), one ``run_<script>(cfg)`` per numbered script: where each
writes, whether finished work is reused or refused, resuming an interrupted run from its partial folder,
and what it writes. Each returns its output folder; what a script reports is logged under its name."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from rank1 import constants as K
from rank1.artifacts import (
    public_config,
    read_json,
    resume_partial,
    reuse_finished,
    write_json,
    write_run_metadata,
    write_text,
    write_with,
)
from rank1.benchmarks import Benchmark, BenchmarkSpec, load_benchmark
from rank1.capture import Capture, CaptureSpec, decoder_layers
from rank1.config import data_dir, dataset_file, results_dir
from rank1.dashboard import token_texts, write_dashboard
from rank1.data import load_reasoning_records, read_jsonl
from rank1.generate import Budget, HFBackend, Sampling, budget_forced_greedy, think_prompt
from rank1.interventions.attribution import agreement, answer_target, attribute, check_problem, target_value
from rank1.interventions.config import (
    PROBLEM_SOURCES,
    AttributionConfig,
    GeometryConfig,
    ProbeConfig,
    RolloutConfig,
    StageOptions,
    SteeringConfig,
)
from rank1.interventions.dashboard import build_payloads
from rank1.interventions.geometry import geometry
from rank1.interventions.plots import (
    plot_agreement,
    plot_counterfactual,
    plot_geometry,
    plot_probes,
    plot_site_grid,
    plot_steering,
)
from rank1.interventions.probes import PROBE, feature_sets, out_of_fold_scores, permutation_test, verdict
from rank1.interventions.rollouts import (
    compare,
    mixed_problems,
    paired_differences,
    power_text,
    rollout_ids,
    sample_rollouts,
    trace_means,
)
from rank1.interventions.steering import (
    Steer,
    behaviour,
    onset_table,
    residual_norms,
    site_moments,
    steering,
    teacher_forced_kl,
)
from rank1.lora import adapter_vectors, rslora_scale
from rank1.models import load_tokenizer, num_layers, resolve_model_source
from rank1.plots import save_figure
from rank1.runs import Run, check_same_identity
from rank1.serving import FixedLogprobs, VLLMBackend, VLLMEngine, check_logprob_parity
from rank1.stats import grouped_auc
from rank1.store import check_writable

log = logging.getLogger(__name__)
steering_log = logging.getLogger("4.0_steering")
attribution_log = logging.getLogger("4.1_attribution")
rollouts_log = logging.getLogger("4.2_counterfactual_rollouts")
probes_log = logging.getLogger("4.3_correctness_probes")
geometry_log = logging.getLogger("4.4_weight_geometry")

# Config fields a saved result must share with the config asked for now to be reused.
STEERING_SETTINGS = ("problems", "n_problems", "offset", "layers", "n_layers", "scalar_projections",
                     "vector_projections", "scalar_mode", "scalar_magnitudes", "vector_magnitudes", "think_tokens",
                     "answer_tokens", "random_control", "random_seed")
STEERING_REPORT = (*STEERING_SETTINGS, "kl_threshold", "n_resamples")  # the onsets depend on these two as well
ATTRIBUTION_SETTINGS = ("problems", "dataset", "n_problems", "offset", "target", "freeze", "n_check", "seed")
ROLLOUT_SETTINGS = ("problems", "n_problems", "offset", "n_samples", "temperature", "seed", "think_tokens",
                    "answer_tokens", "last_tokens", "mlp_baseline", "require_complete", "backend")
PROBE_SETTINGS = ("n_splits", "inner_splits", "n_resamples", "rollouts", "cs", "n_permutations")
GEOMETRY_SETTINGS = ("absolute",)
REDO = "pass --overwrite to recompute it, or --out for a new folder"


# ---------------------------------------------------------------- shared by the five scripts


def output_folder(cfg: StageOptions, stage: str, run: Run) -> Path:
    folder = Path(cfg.out) if cfg.out else results_dir(cfg.profile, stage, run.name)
    check_writable(folder)
    return folder


def expected(run: Run, config: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """What a saved result must share with this run to be reused (:func:`rank1.artifacts.reuse_finished`):
    the weights it was made from and the values of the config ``keys``."""
    ident = run.identity()
    return {"identity.base_model": ident["base_model"], "identity.weights_sha256": ident["weights_sha256"],
            **{f"config.{k}": config[k] for k in keys}}


def start(cfg: StageOptions, stage: str, result: str, keys: tuple[str, ...]) -> tuple[Run, Path, dict, dict | None]:
    """What every stage-4 run begins with: the run, its output folder, the public config, and the finished
    result ``result`` in that folder to reuse (None: compute it)."""
    run = cfg.resolve_run()
    folder = output_folder(cfg, stage, run)
    config = public_config(cfg)
    return run, folder, config, reuse_finished(folder / result, expected(run, config, keys), cfg.overwrite, REDO)


def partial_stamp(run: Run, config: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """What the partial folder of an interrupted run records (:func:`rank1.artifacts.resume_partial`)."""
    return {k: config[k] for k in keys} | run.identity()


def save_metadata(folder: Path, cfg: Any, run: Run) -> None:
    write_run_metadata(folder, cfg, {"identity": run.identity()})


def heldout_problems(profile: str, n: int, offset: int = 0, source: str = "heldout") -> Benchmark:
    """Problems ``offset .. offset+n`` of ``source`` (never trained on) with its grader: ``heldout``, the
    profile's generated split, or a shipped benchmark (``math500``, ``aime24``) for a profile whose dataset has
    no held-out split (s1K-1.1)."""
    if n < 1 or offset < 0:
        raise ValueError(f"need n >= 1 problems and offset >= 0, got n={n}, offset={offset}")
    if source not in PROBLEM_SOURCES:
        raise ValueError(f"--problems {source!r} is not a problem source; use one of {list(PROBLEM_SOURCES)}")
    bench = load_benchmark(BenchmarkSpec(source), profile)
    items = bench.items[offset:offset + n]
    if len(items) < n:
        raise ValueError(f"asked for problems {offset}..{offset + n - 1} of {source}, but {bench.source} has "
                         f"{len(bench.items)}; lower the count or the offset")
    return Benchmark(bench.name, bench.source, items, bench.grade)


# ---------------------------------------------------------------- 4.0 steering


def run_steering(cfg: SteeringConfig) -> Path:
    """4.0: sweep every steering setting (or reuse the saved sweep), log each adapter's KL onset, plot."""
    run, folder, config, report = start(cfg, K.STEERING_STAGE, K.STEERING_JSON, STEERING_REPORT)
    if report is None:
        report = _sweep(cfg, run, folder, config)
    for row in report["onsets"]:
        control = (f"; random direction of B's norm: m={onset_text(row.get('random_kl_onset_ci'))}"
                   if "random_kl_onset" in row else "")
        steering_log.info("%-16s %-6s KL onset m=%s%s; authors' recipe corresponds to m=%s", row["adapter"],
                          row["mode"], onset_text(row.get("kl_onset_ci")) if row.get("kl_onset_ci") else
                          row["kl_onset"], control, "-" if row["paper_m"] is None else f"{row['paper_m']:.3g}")
    for path in plot_steering(report, folder / K.STEERING_STEM):
        steering_log.info("wrote %s", path)
    return folder


def onset_text(ci: dict | None) -> str:
    """An onset with its CI, ``10 [3, >100]`` (``>top`` where beyond the sweep), or ``-``."""
    if not ci:
        return "-"
    top = "beyond the sweep"

    def one(x):
        return top if x is None else f"{x:g}"

    return f"{one(ci['value'])} [{one(ci['lo'])}, {one(ci['hi'])}]"


def check_layers(cfg: SteeringConfig, n_layers: int) -> None:
    """``--layers`` are layers of the model (``n_layers`` decoder layers)."""
    bad = [layer for layer in cfg.layers if layer >= n_layers]
    if bad:
        raise ValueError(f"--layers {','.join(map(str, cfg.layers))}: layer {', '.join(map(str, bad))} is out of "
                         f"range (the model has {n_layers} layers: 0..{n_layers - 1})")


def steering_plan(cfg: SteeringConfig, sites) -> list[Steer]:
    """Every (adapter, mode, magnitude) setting of the sweep: the scalar settings, then the vector ones,
    on ``--layers`` (or ``--n_layers`` evenly spaced layers); with ``--random_control`` each one is followed
    by its random-direction twin."""
    n = max(s.layer for s in sites) + 1
    layers = cfg.layers or sorted({round((i + 0.5) * n / cfg.n_layers - 0.5) for i in range(cfg.n_layers)})
    index = {(s.layer, s.proj): i for i, s in enumerate(sites)}
    out = []
    for kind, projs, ms in (
            (cfg.scalar_mode, cfg.scalar_projections, cfg.scalar_magnitudes),
            ("vector", cfg.vector_projections, cfg.vector_magnitudes)):
        for layer in layers:
            for p in projs:
                if (layer, p) not in index:
                    adapted = sorted({s.layer for s in sites if s.proj == p})
                    raise ValueError(f"--layers {layer}: the run has no {p} adapter on layer {layer} (its {p} "
                                     f"adapters are on layers {', '.join(map(str, adapted)) or 'none'})")
                directions = ("lora", "random") if cfg.random_control else ("lora",)
                out += [Steer(index[(layer, p)], kind, m, d) for m in ms for d in directions]
    return out


def _sweep(cfg: SteeringConfig, run: Run, folder: Path, config: dict) -> dict:
    check_layers(cfg, num_layers(run.model_id))  # before anything is read or loaded
    topk = Path(cfg.topk) if cfg.topk else results_dir(cfg.profile, "lora_topk", run.name)
    topk_sites, _, std_S, ident = site_moments(topk)
    check_same_identity(run.identity(), ident, f"top-k artifact {topk}")
    bench = heldout_problems(cfg.profile, cfg.n_problems, cfg.offset, cfg.problems)
    loaded = run.load(cfg.precision)
    sites, tok, model = loaded.sites, loaded.tokenizer, loaded.model
    if [(s["layer"], s["name"]) for s in topk_sites] != [(s.layer, s.proj) for s in sites]:
        raise ValueError(f"{topk} lists other adapters than the run has; recompute it with 2.1")
    settings = steering_plan(cfg, sites)
    partial = folder / K.STEERING_PARTIAL_DIR
    resume_partial(partial, partial_stamp(run, config, STEERING_SETTINGS), cfg.overwrite)
    budget = Budget(cfg.think_tokens, cfg.answer_tokens)
    prompts = [think_prompt(tok, it.question) for it in bench.items]
    golds = [it.gold for it in bench.items]
    layers = decoder_layers(model)

    def generate(ctx, desc):
        with ctx:
            return budget_forced_greedy(model, tok, prompts, budget, cfg.batch_size, desc, loaded.autocast)

    base = generate(contextlib.nullcontext(), "unsteered")
    prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    seqs = [p + tok(g.thinking + g.answer, add_special_tokens=False)["input_ids"] for p, g in zip(prompt_ids, base,
                                                                                               strict=True)]
    starts = [len(p) - 1 for p in prompt_ids]
    norm_L, mlp_norm_L = residual_norms(model, seqs)
    std_t = std_S.to(loaded.device)
    records, examples = [], []
    for st in tqdm(settings, desc="steering", unit="setting"):
        site = sites[st.site]
        tag = "" if st.direction == "lora" else f"_{st.direction}"
        key = partial / f"{site.layer:03d}_{site.proj}_{st.mode}_{st.m:g}{tag}.json"
        if key.is_file():
            rec = read_json(key)
        else:
            def ctx(start_B, st=st):
                return steering(sites, st, std_t, norm_L, layers, start_B, cfg.random_seed)
            gens = generate(ctx(None), f"L{site.layer} {site.proj} {st.mode} {st.m:g}{tag}")
            kl = teacher_forced_kl(model, ctx, seqs, starts, cfg.batch_size)
            rec = {"layer": site.layer, "proj": site.proj, "mode": st.mode, "m": st.m, "direction": st.direction,
                   "kl": sum(kl) / len(kl), "kl_per_problem": kl, **behaviour(gens, golds, bench.grade, tok),
                   "examples": [{"id": it.id, **g.to_dict()} for it, g in zip(bench.items, gens, strict=True)]
                   [:cfg.n_examples]}
            write_json(key, rec)
        examples += [{"layer": rec["layer"], "proj": rec["proj"], "mode": rec["mode"], "m": rec["m"],
                      "direction": rec["direction"], **e} for e in rec.pop("examples")]
        records.append(rec)
    unsteered = {"kl": 0.0, **behaviour(base, golds, bench.grade, tok)}
    scale = rslora_scale(run.rank or 1)
    onsets = onset_table(records, sites, std_S, norm_L, mlp_norm_L, scale, cfg.kl_threshold, cfg.n_resamples,
                         cfg.random_seed if cfg.random_control else None)
    report = {"identity": run.identity(), "config": config, "unsteered": unsteered, "settings": records,
              "onsets": onsets, "residual_norm_by_layer": norm_L.tolist(),
              "mlp_output_norm_by_layer": mlp_norm_L.tolist(), "rslora_scale": scale,
              "random_seed": cfg.random_seed if cfg.random_control else None,
              "problems": [it.id for it in bench.items]}
    save_metadata(folder, cfg, run)
    write_text(folder / K.STEERING_GENERATIONS, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples))
    write_json(folder / K.STEERING_JSON, report)
    shutil.rmtree(partial, ignore_errors=True)
    return report


# ---------------------------------------------------------------- 4.1 attribution


def run_attribution(cfg: AttributionConfig) -> Path:
    """4.1: attribute and check every problem (or reuse the saved report), log the agreement, plot, and
    write the dashboard."""
    run, folder, config, report = start(cfg, K.ATTRIBUTION_STAGE, K.ATTRIBUTION_JSON, ATTRIBUTION_SETTINGS)
    tok = None
    if report is None:
        report, tok = _attribution_report(cfg, run, folder, config)
    name = "linearised" if report["config"]["freeze"] else "plain gradient"
    for kind, row in report["agreement"].items():
        attribution_log.info("zeroing %-14s n=%-4d r(%s)=%s r(plain gradient)=%s, sign agreement %s / %s", kind,
                             row["n"], name, *(f"{row[k]:.3f}" if row[k] is not None else "-" for k in
                                               ("pearson_predicted", "pearson_predicted_exact",
                                                "sign_agreement_predicted", "sign_agreement_predicted_exact")))
    order = sorted(range(len(report["sites"])), key=lambda s: -report["mean_abs_by_adapter"][s])[:10]
    attribution_log.info("adapters by mean |attr|: %s", ", ".join(
        f"L{report['sites'][s]['layer']}.{report['sites'][s]['proj']} {report['mean_abs_by_adapter'][s]:.3g}"
        for s in order))
    for path in plot_site_grid(report["sites"], report["mean_abs_by_adapter"], "mean |grad x act| per position",
                               folder / K.ATTRIBUTION_STEM):
        attribution_log.info("wrote %s", path)
    plot_agreement(report["agreement"], [r["checks"] for r in report["problems"]], folder / K.ATTRIBUTION_CHECK_STEM)
    if tok is None:
        tok = load_tokenizer(run.model_id)
    index, pages = build_payloads(report, load_file(str(folder / K.ATTRIBUTION_TENSORS)),
                                  lambda ids: token_texts(tok.decode, ids), cfg.n_rows,
                                  f"Adapter attribution: {run.name}")
    write_dashboard(folder / K.ATTRIBUTION_HTML_DIR, index["title"], "attribution.js", index, pages)
    attribution_log.info("dashboard: %s", folder / K.ATTRIBUTION_HTML_DIR / K.DASHBOARD_INDEX)
    return folder


def problem_records(cfg: AttributionConfig) -> list[dict]:
    """Problems with their gold traces: the generated held-out split (its integer answer is the target), or the
    profile's dataset (``--problems dataset``: s1K-1.1 has no held-out split; the target is the first token of the
    record's attempt, which follows ``Answer:`` in training)."""
    span = slice(cfg.offset, cfg.offset + cfg.n_problems)
    if cfg.problems == "dataset":
        source = dataset_file(cfg.dataset, cfg.profile)
        records = load_reasoning_records(source)[span]
        if len(records) < cfg.n_problems:
            raise ValueError(f"asked for records {span.start}..{span.stop - 1} of {source}, which has fewer; "
                             f"lower --n_problems or --offset")
        return [{"id": str(span.start + i), "question": r["question"], "gold": r["deepseek_attempt"].strip(),
                 "trace": r["deepseek_thinking_trajectory"]} for i, r in enumerate(records)]
    if cfg.problems != "heldout":
        raise ValueError(f"--problems {cfg.problems!r}: attribution needs gold traces; use heldout or dataset")
    bench = heldout_problems(cfg.profile, cfg.n_problems, cfg.offset)
    records = read_jsonl(data_dir(cfg.profile) / K.EVAL_JSONL)[span]
    return [{"id": it.id, "question": it.question, "gold": it.gold, "trace": r["deepseek_thinking_trajectory"]}
            for it, r in zip(bench.items, records, strict=True)]


def _attribution_report(cfg: AttributionConfig, run: Run, folder: Path, config: dict) -> tuple[dict, Any]:
    """(the report, the tokenizer of the loaded model), the per-problem tensors written beside it."""
    problems = problem_records(cfg)
    loaded = run.load(cfg.precision)
    partial = folder / K.ATTRIBUTION_PARTIAL_DIR
    resume_partial(partial, partial_stamp(run, config, ATTRIBUTION_SETTINGS), cfg.overwrite)
    records = attribute_all(cfg, loaded, problems, partial)
    tensors = {}
    for i in range(len(records)):
        for name, t in load_file(str(partial / f"problem_{i:04d}.safetensors")).items():
            tensors[f"{name}_{i}"] = t
    mean_abs = torch.stack([tensors[f"attr_ST_{i}"].abs().mean(1) for i in range(len(records))]).mean(0)
    sites = [{"layer": s.layer, "proj": s.proj} for s in loaded.sites]
    report = {"identity": run.identity(), "config": config, "sites": sites,
              "mean_abs_by_adapter": mean_abs.tolist(), "agreement": agreement([r["checks"] for r in records]),
              "problems": records}
    save_metadata(folder, cfg, run)
    write_with(folder / K.ATTRIBUTION_TENSORS, lambda p: save_file(tensors, str(p)))
    write_json(folder / K.ATTRIBUTION_JSON, report)
    shutil.rmtree(partial, ignore_errors=True)
    return report, loaded.tokenizer


def attribute_all(cfg: AttributionConfig, loaded, problems: list[dict], partial: Path) -> list[dict]:
    """Attribute and check each problem, saving each one under ``partial`` so a killed run resumes."""
    sites, tok = loaded.sites, loaded.tokenizer
    out = []
    for i, prob in enumerate(tqdm(problems, desc="attribution", unit="problem")):
        done = partial / f"problem_{i:04d}.json"
        if done.is_file():
            out.append(read_json(done))
            continue
        ids_T, pos, token = answer_target(tok, prob["question"], prob["trace"], prob["gold"])

        def target(logits_TV, pos=pos, token=token):
            return target_value(logits_TV[pos], token, cfg.target)

        res = attribute(loaded.model, sites, ids_T, target, cfg.freeze, loaded.autocast)
        exact = attribute(loaded.model, sites, ids_T, target, False, loaded.autocast) if cfg.freeze else res
        checks = check_problem(loaded.model, sites, ids_T, target, res, exact, cfg.n_check, cfg.seed + i,
                               loaded.autocast)
        per_site = res.attr_ST.sum(1)
        top = torch.argsort(per_site.abs(), descending=True)[:cfg.top].tolist()
        rec = {"id": prob["id"], "question": prob["question"], "gold": prob["gold"],
               "target_token": tok.decode([token]), "target_value": res.target, "n_tokens": len(ids_T),
               "top_adapters": [{"layer": sites[s].layer, "proj": sites[s].proj, "attr": float(per_site[s])}
                                for s in top],
               "checks": checks}
        tensors = {"attr_ST": res.attr_ST.contiguous(), "acts_ST": res.acts_ST.contiguous(), "ids_T": ids_T}
        write_with(partial / f"problem_{i:04d}.safetensors", lambda p, t=tensors: save_file(t, str(p)))
        write_json(done, rec)
        out.append(rec)
    return out


# ---------------------------------------------------------------- 4.2 counterfactual rollouts


def run_counterfactual_rollouts(cfg: RolloutConfig) -> Path:
    """4.2: sample, grade and read the rollouts, test correct against incorrect per feature (or reuse
    the saved tests), log and plot."""
    run, folder, config, report = start(cfg, K.ROLLOUTS_STAGE, K.ROLLOUTS_JSON, ROLLOUT_SETTINGS)
    if report is None:
        report = _rollouts_report(cfg, run, folder, config)
    rollouts_log.info("%d rollouts, accuracy %.3f; %d of %d problems mixed", report["n_rollouts"],
                      report["accuracy"], len(report["mixed_problems"]), cfg.n_problems)
    for name, res in report["tests"].items():
        best = res["features"][0] if res.get("features") else None
        smallest = f"; smallest p {best['p']:.3g} ({best['feature']})" if best else ""
        rollouts_log.info("%-10s %d mixed problems, %d features with q < %.2f%s", name, res["n_problems"],
                          len(res["significant"]), cfg.alpha, smallest)
        if "min_p_possible" in res:
            (rollouts_log.warning if res["underpowered"] else rollouts_log.info)("%-10s %s", name, power_text(res))
    for path in plot_counterfactual(report, folder / K.ROLLOUTS_STEM):
        rollouts_log.info("wrote %s", path)
    return folder


def mlp_spec(cfg: RolloutConfig, run: Run, n_adapters_per_layer: int) -> tuple[dict, list | None]:
    """(neurons per layer and seed, 2.4's site list) of stage 2.4's sample; without 2.4, as many neurons
    per layer as the run has adapters per layer, seed 0."""
    manifest = results_dir(cfg.profile, "mlp_activations", run.name) / K.STORE_MANIFEST
    if not manifest.is_file():
        return {"neurons_per_layer": n_adapters_per_layer, "seed": 0}, None
    m = read_json(manifest)
    per_layer = sum(1 for s in m["sites"] if s["layer"] == m["sites"][0]["layer"])
    return {"neurons_per_layer": per_layer, "seed": m["config"].get("neuron_seed", 0)}, m["sites"]


def vllm_backend(cfg: RolloutConfig, run: Run, bench: Benchmark) -> tuple[VLLMBackend, Any, dict]:
    """vLLM serving the adapter as a LoRA request, checked first against the PEFT model's next-token distributions
    (computed and freed before vLLM takes the GPUs), as the evaluation stage does; returns the backend, the tokenizer
    and the parity numbers."""
    thresholds = cfg.parity_thresholds()
    loaded = run.load(cfg.precision, device_map="auto")
    prompts = [think_prompt(loaded.tokenizer, it.question) for it in bench.items[:cfg.parity_prompts]]
    reference = FixedLogprobs(HFBackend(loaded.model, loaded.tokenizer).first_token_logprobs(prompts, thresholds.top_k))
    tokenizer = loaded.tokenizer
    del loaded
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    budget = Budget(cfg.think_tokens, cfg.answer_tokens)
    engine = VLLMEngine(resolve_model_source(run.model_id), tokenizer, cfg.engine_sizing(budget, [run.weights_dir]))
    backend = engine.backend(str(run.weights_dir))
    parity = check_logprob_parity(reference, backend, prompts, thresholds, what="vllm rollouts")
    return backend, tokenizer, parity


def _sample(cfg: RolloutConfig, run: Run, bench: Benchmark, partial: Path) -> tuple[list[dict], Any, dict | None]:
    """(the graded rollouts, the PEFT model loaded for reading them, vLLM's parity numbers or None), sampled with
    ``cfg.backend``; vLLM's engine is closed before the PEFT model loads."""
    budget, sampling = Budget(cfg.think_tokens, cfg.answer_tokens), Sampling(cfg.temperature, cfg.seed)
    if cfg.backend == "vllm":
        backend, tokenizer, parity = vllm_backend(cfg, run, bench)
        records = sample_rollouts(backend.generate, tokenizer, bench, cfg.n_samples, budget, sampling, partial)
        backend.engine.close()
        del backend
        loaded = run.load(cfg.precision)
        return records, loaded, parity
    loaded = run.load(cfg.precision)
    backend = HFBackend(loaded.model, loaded.tokenizer, cfg.batch_size, loaded.autocast)
    records = sample_rollouts(backend.generate, loaded.tokenizer, bench, cfg.n_samples, budget, sampling, partial)
    return records, loaded, None


def _rollouts_report(cfg: RolloutConfig, run: Run, folder: Path, config: dict) -> dict:
    bench = heldout_problems(cfg.profile, cfg.n_problems, cfg.offset, cfg.problems)
    partial = folder / K.ROLLOUTS_PARTIAL_DIR
    resume_partial(partial, partial_stamp(run, config, ROLLOUT_SETTINGS), cfg.overwrite)
    records, loaded, parity = _sample(cfg, run, bench, partial)
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
        for key, t in trace_means(capture, seqs, cfg.last_tokens, cfg.read_batch or cfg.batch_size).items():
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
              "mixed_problems": mixed, "sites": {k: names[k] for k in kinds}, "tests": tests, "parity": parity}
    save_metadata(folder, cfg, run)
    write_text(folder / K.ROLLOUTS_JSONL, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                  for r in records))
    write_with(folder / K.ROLLOUTS_ACTS, lambda p: save_file(tensors, str(p), metadata={
        "sites": json.dumps(names)}))
    write_json(folder / K.ROLLOUTS_JSON, report)
    shutil.rmtree(partial, ignore_errors=True)
    return report


# ---------------------------------------------------------------- 4.3 correctness probes


def run_correctness_probes(cfg: ProbeConfig) -> Path:
    """4.3: probe 4.2's rollouts for correctness against the baselines (or reuse the saved report), log
    the AUCs and the verdict, plot."""
    run, folder, config, report = start(cfg, K.PROBES_STAGE, K.PROBES_JSON, PROBE_SETTINGS)
    if report is None:
        report = _probe_report(cfg, run, folder, config)
    for name, e in report["auc"].items():
        ci = "" if e["lo"] is None else f" [{e['lo']:.3f}, {e['hi']:.3f}]"
        probes_log.info("%-28s AUC %s", name, "undefined" if e["value"] is None else f"{e['value']:.3f}{ci}")
    perm = report.get("permutation")
    if perm and perm.get("p") is not None:
        probes_log.info("%s: permutation p %.3f over %d permutations; null AUC median %.3f, 95%% band [%.3f, %.3f]",
                        PROBE, perm["p"], perm["n_defined"], perm["null_median"], perm["null_lo"], perm["null_hi"])
    probes_log.info("%s", report["verdict"])
    for path in plot_probes(report, folder / K.PROBES_STEM) if report["auc"] else ():
        probes_log.info("wrote %s", path)
    return folder


def _probe_report(cfg: ProbeConfig, run: Run, folder: Path, config: dict) -> dict:
    src = Path(cfg.rollouts) if cfg.rollouts else results_dir(cfg.profile, K.ROLLOUTS_STAGE, run.name)
    if not (src / K.ROLLOUTS_JSON).is_file():
        raise FileNotFoundError(f"{src} holds no finished rollouts ({K.ROLLOUTS_JSON} missing): run "
                                f"4_lora_interventions/4.2_counterfactual_rollouts.py first, or pass --rollouts")
    check_same_identity(run.identity(), read_json(src / K.ROLLOUTS_JSON)["identity"], f"rollouts in {src}")
    t = load_file(str(src / K.ROLLOUTS_ACTS))
    y, groups = t["correct_R"].numpy().astype(int), t["problem_R"].numpy()
    auc, vs, chosen, perm = {}, {}, {}, None
    if len(set(y.tolist())) < 2:
        why = (f"all {len(y)} rollouts in {src} are {'correct' if y[0] else 'incorrect'}: nothing to predict; "
               f"rerun 4.2 with more problems or samples")
        if cfg.one_class == "error":
            raise ValueError(why)
        probes_log.warning("%s (recorded, --one_class record)", why)
    else:
        scores = {"majority class": np.full(len(y), float(y.mean() >= 0.5))}
        sets = feature_sets(t)
        for name, X in tqdm(sets.items(), desc="probes", unit="feature set"):
            scores[name], folds, chosen[name] = out_of_fold_scores(X, y, groups, cfg.n_splits,
                                                                   cfg.cs, cfg.inner_splits)
        auc = {n: grouped_auc(y, s, groups, cfg.n_resamples, strata_N=folds).to_dict() for n, s in scores.items()}
        vs = {n: grouped_auc(y, scores[PROBE], groups, cfg.n_resamples, baseline_N=s, strata_N=folds).to_dict()
              for n, s in scores.items() if n in ("thinking length", "MLP neurons (trace + last)")}
        if cfg.n_permutations and auc[PROBE]["value"] is not None:
            perm = permutation_test(sets[PROBE], y, groups, auc[PROBE]["value"], cfg.n_permutations, 0,
                                    cfg.n_splits, cfg.cs, cfg.inner_splits)
    report = {"identity": run.identity(), "config": config, "n_rollouts": len(y), "n_problems": len(set(groups)),
              "base_rate": float(y.mean()), "auc": auc, "probe_minus_baseline": vs, "chosen_C": chosen,
              "auc_pairs": "within outer folds (each fold's model has its own offset)", "permutation": perm,
              "verdict": verdict(auc, vs, perm) if auc else f"undefined: {why}"}
    save_metadata(folder, cfg, run)
    write_json(folder / K.PROBES_JSON, report)
    return report


# ---------------------------------------------------------------- 4.4 weight geometry


def run_weight_geometry(cfg: GeometryConfig) -> Path:
    """4.4: the geometry of the saved rank-1 factors (or the saved one), logged and plotted."""
    run, folder, config, geo = start(cfg, K.GEOMETRY_STAGE, K.GEOMETRY_JSON, GEOMETRY_SETTINGS)
    if geo is None:
        geo = {"identity": run.identity(), "config": config, **geometry(adapter_vectors(run.weights_dir), cfg.absolute)}
        save_metadata(folder, cfg, run)
        write_json(folder / K.GEOMETRY_JSON, geo)
    for name, m in {**geo["across_layers"], **geo["cross_projection"]}.items():
        geometry_log.info("%-28s mean |cos| within layer %.3f, across layers %s (random directions %.3f)", name,
                          m["mean_abs_diagonal"],
                          "-" if m["mean_abs_offdiag"] is None else f"{m['mean_abs_offdiag']:.3f}",
                          m["random_abs_cos"])
    for name, fig in plot_geometry(geo, f"rank-1 factors of {run.name}"):
        for path in save_figure(fig, folder / f"{K.GEOMETRY_STEM}_{name}"):
            geometry_log.info("wrote %s", path)
    return folder
