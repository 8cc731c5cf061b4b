"""Stage 4.0: can the adapter directions steer reasoning, and from what magnitude on?

Two interventions from the first generated token on (see rank1/interventions/steering.py): (a) offset an adapter's
own scalar activation by m natural standard deviations (std over the stage-2 corpus, from 2.1's top-k
artifact), for any projection; (b) add m x (mean residual norm at its layer) x unit(B) after the layer,
for o_proj / down_proj. Each magnitude is swept per adapter on held-out problems; measured against the
unsteered model: next-token KL(P_unsteered || P_steered) teacher-forced on the unsteered generation,
marker rate ("Wait", "verify", "check" per 100 thinking tokens), accuracy, thinking length, repetition.
The onset is the smallest |m| whose mean KL exceeds --kl_threshold; beside it, the magnitude the
authors' recipe (50 x sqrt(mean MLP-output norm) x raw B) corresponds to in the same units.

Usage:
    python 4_lora_interventions/4.0_steering.py                          # tiny profile, newest run
    python 4_lora_interventions/4.0_steering.py --layers 4,15,25 --scalar_projections down_proj,up_proj

Writes into results/<profile>/steering/<run>/: steering.json, steering_generations.jsonl (a few per
setting), steering_curves.{pdf,png}. Resumes per setting.
"""

import contextlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from rank1 import constants as K
from rank1.artifacts import public_config, read_json, write_json, write_text
from rank1.capture import decoder_layers
from rank1.config import option, parse_config, results_dir
from rank1.generate import Budget, budget_forced_greedy, think_prompt
from rank1.interventions.plots import plot_steering
from rank1.interventions.common import StageOptions, finished, heldout_problems, output_folder, save_metadata
from rank1.logs import run_main
from rank1.lora import parse_projections, rslora_scale
from rank1.runs import check_same_identity
from rank1.interventions.steering import (
    RESIDUAL_WRITERS,
    Steer,
    behaviour,
    onset_table,
    residual_norms,
    site_moments,
    steering,
    teacher_forced_kl,
)

log = logging.getLogger("4.0_steering")
SETTINGS = ("n_problems", "offset", "layers", "n_layers", "scalar_projections", "vector_projections", "scalar_mode",
            "scalar_magnitudes", "vector_magnitudes", "think_tokens", "answer_tokens")


def floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--{flag} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError(f"--{flag} is empty")
    return values


@dataclass
class SteeringConfig(StageOptions):
    n_problems: int = option("held-out problems per setting", 8)
    offset: int = option("first held-out problem", 0)
    layers: str = option("layers to steer, comma-separated (empty: --n_layers evenly spaced)", "")
    n_layers: int = option("evenly spaced layers when --layers is empty", 3)
    scalar_projections: str = option("adapters whose scalar is steered (all, mlp, attn or a list)", "down_proj")
    vector_projections: str = option("adapters whose unit B is added (o_proj and/or down_proj; '' for none)",
                                     "down_proj")
    scalar_mode: str = option("offset (a + m std) or scale (m a)", "offset")
    scalar_magnitudes: str = option("m for the scalar, in natural std (offset) or as a factor (scale)",
                                    "-30,-3,1,3,10,30,100")
    vector_magnitudes: str = option("m for the vector, in units of the layer's mean residual norm",
                                    "0.03,0.1,0.3,1,3")
    think_tokens: int = option("thinking budget of each generation", 64)
    answer_tokens: int = option("answer budget", 8)
    batch_size: int = option("generation batch size", 8)
    kl_threshold: float = option("mean KL (nats) above which a setting counts as changing the output", 0.1)
    n_examples: int = option("generations saved per setting", 2)
    topk: str | None = option("top-k folder of 2.1 with the activation moments (default: results/<profile>/"
                              "lora_topk/<run>)")
    precision: str = option("auto | bf16 | fp32", "fp32")

    def __post_init__(self):
        if self.scalar_mode not in ("offset", "scale"):
            raise ValueError(f"--scalar_mode must be offset or scale, got {self.scalar_mode!r}")
        floats(self.scalar_magnitudes, "scalar_magnitudes")
        floats(self.vector_magnitudes, "vector_magnitudes")
        bad = [p for p in self.vector_projections.split(",") if p.strip() and p.strip() not in RESIDUAL_WRITERS]
        if bad:
            raise ValueError(f"--vector_projections {bad}: only {RESIDUAL_WRITERS} write to the residual stream")
        if min(self.n_problems, self.n_layers, self.think_tokens, self.batch_size) < 1:
            raise ValueError("--n_problems, --n_layers, --think_tokens and --batch_size must be >= 1")


def plan(cfg: SteeringConfig, sites) -> list[Steer]:
    n = max(s.layer for s in sites) + 1
    layers = ([int(t) for t in cfg.layers.split(",") if t.strip()] if cfg.layers.strip()
              else sorted({round((i + 0.5) * n / cfg.n_layers - 0.5) for i in range(cfg.n_layers)}))
    index = {(s.layer, s.proj): i for i, s in enumerate(sites)}
    out = []
    for kind, projs, ms in (
            (cfg.scalar_mode, parse_projections(cfg.scalar_projections), floats(cfg.scalar_magnitudes, "")),
            ("vector", parse_projections(cfg.vector_projections) if cfg.vector_projections.strip() else (),
             floats(cfg.vector_magnitudes, ""))):
        for layer in layers:
            for p in projs:
                if (layer, p) not in index:
                    raise ValueError(f"--layers {layer}: the run has no {p} adapter there")
                out += [Steer(index[(layer, p)], kind, m) for m in ms]
    return out


def main(cfg: SteeringConfig) -> None:
    run = cfg.resolve_run()
    folder = output_folder(cfg, K.STEERING_STAGE, run)
    config = public_config(cfg)
    report = finished(folder / K.STEERING_JSON, run, config, SETTINGS, cfg.overwrite)
    if report is None:
        report = sweep(cfg, run, folder, config)
    for row in report["onsets"]:
        log.info("%-16s %-6s KL onset m=%s; authors' recipe corresponds to m=%s", row["adapter"], row["mode"],
                 row["kl_onset"], "-" if row["paper_m"] is None else f"{row['paper_m']:.3g}")
    for path in plot_steering(report, folder / K.STEERING_STEM):
        log.info("wrote %s", path)


def sweep(cfg: SteeringConfig, run, folder: Path, config: dict) -> dict:
    topk = Path(cfg.topk) if cfg.topk else results_dir(cfg.profile, "lora_topk", run.name)
    topk_sites, _, std_S, ident = site_moments(topk)
    check_same_identity(run.identity(), ident, f"top-k artifact {topk}")
    bench = heldout_problems(cfg.profile, cfg.n_problems, cfg.offset)
    loaded = run.load(cfg.precision)
    sites, tok, model = loaded.sites, loaded.tokenizer, loaded.model
    if [(s["layer"], s["name"]) for s in topk_sites] != [(s.layer, s.proj) for s in sites]:
        raise ValueError(f"{topk} lists other adapters than the run has; recompute it with 2.1")
    settings = plan(cfg, sites)
    partial = folder / K.STEERING_PARTIAL_DIR
    if cfg.overwrite:
        shutil.rmtree(partial, ignore_errors=True)
    stamp = {k: config[k] for k in SETTINGS} | run.identity()
    if (partial / "settings.json").is_file() and read_json(partial / "settings.json") != stamp:
        raise ValueError(f"{partial} holds an interrupted sweep with other settings or weights; pass --overwrite")
    write_json(partial / "settings.json", stamp)
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
        key = partial / f"{site.layer:03d}_{site.proj}_{st.mode}_{st.m:g}.json"
        if key.is_file():
            rec = read_json(key)
        else:
            def ctx(start_B, st=st):
                return steering(sites, st, std_t, norm_L, layers, start_B)
            gens = generate(ctx(None), f"L{site.layer} {site.proj} {st.mode} {st.m:g}")
            kl = teacher_forced_kl(model, ctx, seqs, starts, cfg.batch_size)
            rec = {"layer": site.layer, "proj": site.proj, "mode": st.mode, "m": st.m,
                   "kl": sum(kl) / len(kl), **behaviour(gens, golds, bench.grade, tok),
                   "examples": [{"id": it.id, **g.to_dict()} for it, g in zip(bench.items, gens, strict=True)]
                   [:cfg.n_examples]}
            write_json(key, rec)
        examples += [{"layer": rec["layer"], "proj": rec["proj"], "mode": rec["mode"], "m": rec["m"], **e}
                     for e in rec.pop("examples")]
        records.append(rec)
    unsteered = {"kl": 0.0, **behaviour(base, golds, bench.grade, tok)}
    scale = rslora_scale(run.rank or 1)
    onsets = onset_table(records, sites, std_S, norm_L, mlp_norm_L, scale, cfg.kl_threshold)
    report = {"identity": run.identity(), "config": config, "unsteered": unsteered, "settings": records,
              "onsets": onsets, "residual_norm_by_layer": norm_L.tolist(),
              "mlp_output_norm_by_layer": mlp_norm_L.tolist(), "rslora_scale": scale,
              "problems": [it.id for it in bench.items]}
    save_metadata(folder, cfg, run)
    write_text(folder / K.STEERING_GENERATIONS, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples))
    write_json(folder / K.STEERING_JSON, report)
    shutil.rmtree(partial, ignore_errors=True)
    return report


if __name__ == "__main__":
    run_main(main, parse_config(SteeringConfig, "steering", __doc__))
