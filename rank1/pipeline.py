"""The main job: every stage in the paper's order, one list that both runs them and prints the plan.

``run_all.sh`` is a thin wrapper over :func:`main`. Each stage is a command that skips work whose artifacts
exist, so a killed job continues where it stopped; every finished stage appends its wall time to
``logs/run_all-<profile>-times.tsv``; a failing stage names itself and the command that reruns it.

``--dry-run`` prints, without running anything, each stage's command, the devices it expects and the disk
it will write, computed from the profile alone (its stage tables and its ``[plan]`` table of model
dimensions and corpus size, so no model is downloaded), and checks that the ids and paths the profile
needs are set. Problems end in a nonzero exit, before any stage runs.

The stage list is the table in ``run_all.sh`` (read by :func:`stages` when the job runs or plans, never at
import), so the main job shows its stages where a reader looks for them; each line names its devices and disk
by a key of :data:`DEVICES` and :data:`DISK`; a new stage is one line there, at its place in the order (the
report stays last).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from rank1.activations.config import ExtractConfig
from rank1.benchmarks import BENCHMARKS_DIR, BenchmarkSpec
from rank1.config import REPO_ROOT, Profile, load_profile, profile_defaults, project_root
from rank1.constants import ENV_LLM_BASE_URL, ENV_LLM_MODEL, ENV_PROFILE, PROJECTIONS
from rank1.sae.config import SaeConfig
from rank1.sae_lora.config import SaeLoraConfig

ENV_GPQA = "GPQA_PATH"  # the GPQA-Diamond CSV (never shipped); adds --gpqa_path to the evaluation
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "fp16": 2, "bf16": 2, "fp32": 4}
PLAN_KEYS = ("layers", "hidden", "intermediate", "heads", "kv_heads", "vocab", "corpus_tokens")

Estimate = list[tuple[str, int | None]]  # (what, bytes; None where the profile does not say)


@dataclass(frozen=True)
class Stage:
    name: str  # as logged in the times file and named on failure
    argv: tuple[str, ...]  # "{py}" the Python, "{repo}" the repository, "{profile}" the profile
    devices: str | Callable[[Profile], str]  # what it runs on
    disk: Callable[[Profile], Estimate] | None = None  # what it writes (None: small JSON and figures)


def times_path(profile_name: str) -> Path:
    return project_root() / "logs" / f"run_all-{profile_name}-times.tsv"


# ---- sizes from the profile ------------------------------------------------------------------------------

def plan_values(profile: Profile) -> dict[str, int]:
    """The profile's ``[plan]`` table: model dimensions and corpus size (for estimates only)."""
    plan = profile.section("plan")
    unknown = sorted(set(plan) - set(PLAN_KEYS))
    if unknown:
        raise ValueError(f"profile {profile.path}: [plan] has unknown keys {unknown}; known: {list(PLAN_KEYS)}")
    return {k: int(v) for k, v in plan.items()}


def stage_values(profile: Profile, cls: type, section: str | tuple[str, ...]) -> dict:
    """A stage config's resolved values (dataclass defaults < profile), without building the config."""
    values = {f.name: f.default for f in dataclasses.fields(cls)}
    values.update(profile_defaults(cls, profile, section))
    return values


def store_bytes(tokens: int, sites: int, dtype: str) -> int:
    """Activations of a store: tokens x sites x bytes per value (token ids, documents and positions add 12
    bytes per token)."""
    return tokens * sites * DTYPE_BYTES[dtype]


def planned_tokens(extract: Mapping, plan: Mapping) -> int | None:
    """Tokens an extraction reads: the smallest of max_tokens, max_docs x block_size and the corpus size
    (the ones that are set); None when none is."""
    bounds = [extract.get("max_tokens") or 0,
              (extract.get("max_docs") or 0) * (extract.get("block_size") or 0), plan.get("corpus_tokens") or 0]
    bounds = [b for b in bounds if b > 0]
    return min(bounds) if bounds else None


def _store_estimate(profile: Profile, mlp: bool) -> Estimate:
    plan = plan_values(profile)
    ex = stage_values(profile, ExtractConfig, "extract")
    tokens, layers = planned_tokens(ex, plan), plan.get("layers")
    per_layer = (ex["neurons_per_layer"] or len(PROJECTIONS)) if mlp else len(PROJECTIONS)
    what = f"{'MLP-neuron' if mlp else 'adapter'} store ({tokens} tokens x {layers} layers x {per_layer} sites " \
           f"x {DTYPE_BYTES[ex['dtype']]} B {ex['dtype']})"
    if tokens is None or layers is None:
        return [(what, None)]
    return [(what, store_bytes(tokens, layers * per_layer, ex["dtype"]))]


def adapter_params(plan: Mapping, rank: int = 1) -> int | None:
    """Parameters of a rank-r LoRA on the 7 projections of every layer: r x (in + out) per projection."""
    if not all(k in plan for k in ("layers", "hidden", "intermediate", "heads", "kv_heads")):
        return None
    h, i = plan["hidden"], plan["intermediate"]
    kv = h // plan["heads"] * plan["kv_heads"]
    per_layer = (h + h) + 2 * (h + kv) + (h + h) + 2 * (h + i) + (i + h)
    return rank * per_layer * plan["layers"]


def model_params(plan: Mapping) -> int | None:
    """Parameters of a Qwen2-style decoder (biases and norms left out; untied embeddings)."""
    if not all(k in plan for k in ("layers", "hidden", "intermediate", "heads", "kv_heads", "vocab")):
        return None
    h, i = plan["hidden"], plan["intermediate"]
    kv = h // plan["heads"] * plan["kv_heads"]
    return plan["layers"] * (2 * h * h + 2 * h * kv + 3 * h * i) + 2 * plan["vocab"] * h


def _train_estimate(profile: Profile) -> Estimate:
    rank = int(profile.section("train").get("rank", 1))
    n = adapter_params(plan_values(profile), rank)
    return [(f"adapter (rank {rank}, fp32)", None if n is None else 4 * n)]


def _full_estimate(profile: Profile) -> Estimate:
    n = model_params(plan_values(profile))
    bytes_ = 2 if profile.section("train").get("precision") == "bf16" else 4
    return [(f"full-finetune weights ({n} parameters x {bytes_} B)", None if n is None else n * bytes_),
            ("a checkpoint with optimizer state while training (about 3x the weights)",
             None if n is None else 3 * n * bytes_)]


def _sae_estimate(profile: Profile) -> Estimate:
    layers = plan_values(profile).get("layers")
    expansion = stage_values(profile, SaeConfig, "sae")["expansion"]
    if layers is None:
        return [("SAE weights", None)]
    d_in = layers * len(PROJECTIONS)
    d_sae = expansion * d_in
    return [(f"SAE weights ({d_in} -> {d_sae} latents, fp32)", 4 * (2 * d_in * d_sae + d_sae + d_in))]


def _resid_store_estimate(profile: Profile) -> Estimate:
    hidden = plan_values(profile).get("hidden")
    v = stage_values(profile, SaeLoraConfig, "sae_lora")
    what = f"residual store of stage 5 ({v['store_tokens']} tokens x {hidden} x 4 B float32)"
    if v["sae"]:
        return [("residual store: none (an existing SAE is loaded)", 0)]
    return [(what, None if hidden is None else store_bytes(v["store_tokens"], hidden, "float32"))]


# ---- devices --------------------------------------------------------------------------------------------

MODEL = "the model: one GPU where there is one (bf16), else CPU (fp32)"
ARTIFACTS = "CPU (reads saved artifacts)"


TRAIN = "all visible GPUs (NPROC; DeepSpeed ZeRO-3 with more than one), else one CPU process"


def _extract_devices(profile: Profile) -> str:
    n = stage_values(profile, ExtractConfig, "extract")["num_gpus"]
    return f"{n} GPU workers (num_gpus)" if n else MODEL


def _eval_devices(profile: Profile) -> str:
    backend = profile.section("eval").get("backend", "hf")
    return "GPUs through vLLM (--backend vllm)" if backend == "vllm" else MODEL + "; --backend vllm on GPUs"


def _llm_devices(section: tuple[str, ...]) -> Callable[[Profile], str]:
    def devices(profile: Profile) -> str:
        values = {}
        for s in section:
            values.update(profile.section(s))
        if "llm" not in {values.get(k) for k in ("explainer", "scorer", "categoriser")}:
            return "CPU (lexicon explainer, offline scorer)"
        url = values.get("llm_base_url") or os.environ.get(ENV_LLM_BASE_URL) or "(unset)"
        return f"an LLM endpoint: {url}, model {values.get('llm_model') or os.environ.get(ENV_LLM_MODEL)}"
    return devices


# ---- the stages, in the paper's order -------------------------------------------------------------------

LLM_2 = _llm_devices(("autointerp",))
LLM_3 = _llm_devices(("autointerp", "sae_autointerp"))

# What the dry run says of a stage, by the keys of run_all.sh's devices and disk columns.
DEVICES: dict[str, str | Callable[[Profile], str]] = {
    "train": TRAIN,
    "eval": _eval_devices,
    "extract": _extract_devices,
    "model": MODEL,
    "artifacts": ARTIFACTS,
    "weights": ARTIFACTS + " and the adapter weights",
    "llm2": LLM_2,
    "llm3": LLM_3,
    "sae": MODEL + "; the SAE on the same device",
    "behaviour": "CPU (or an LLM endpoint with --data_source llm)",
}
DISK: dict[str, Callable[[Profile], Estimate] | None] = {
    "-": None,
    "adapter": _train_estimate,
    "full": _full_estimate,
    "store": lambda p: _store_estimate(p, mlp=False),
    "mlp_store": lambda p: _store_estimate(p, mlp=True),
    "sae": _sae_estimate,
    "resid_store": _resid_store_estimate,
}
RUNNERS = {"py": "{py}", "bash": "bash"}
RUN_ALL = REPO_ROOT / "run_all.sh"


def read_stage_table(path: Path = RUN_ALL) -> list[Stage]:
    """The stages of ``run_all.sh``'s table (the lines between ``: <<'STAGES'`` and ``STAGES``), each line
    ``name | py|bash | devices | disk | script [args]``: the script runs from the repository with ``--profile``
    added; devices and disk are keys of :data:`DEVICES` and :data:`DISK`."""
    lines = path.read_text().splitlines()
    try:
        start = lines.index(": <<'STAGES'") + 1
        end = lines.index("STAGES", start)
    except ValueError:
        raise ValueError(f"{path}: no stage table (lines between \": <<'STAGES'\" and \"STAGES\")") from None
    stages = []
    for n, line in enumerate(lines[start:end], start + 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 5 or parts[1] not in RUNNERS or not parts[4]:
            raise ValueError(f"{path}:{n}: expected 'name | py|bash | devices | disk | script [args]', got {line!r}")
        name, runner, devices, disk, (script, *extra) = *parts[:4], shlex.split(parts[4])
        for what, key, known in (("devices", devices, DEVICES), ("disk", disk, DISK)):
            if key not in known:
                raise ValueError(f"{path}:{n}: unknown {what} {key!r} for stage {name!r}; known: {sorted(known)}")
        stages.append(Stage(name, (RUNNERS[runner], f"{{repo}}/{script}", "--profile", "{profile}", *extra),
                            DEVICES[devices], DISK[disk]))
    return stages


@functools.cache
def stages() -> tuple[Stage, ...]:
    """The main job's stages, in order (read once from ``run_all.sh``)."""
    return tuple(read_stage_table())


def command(stage: Stage, profile: str, python: str, repo: Path = REPO_ROOT,
            env: Mapping[str, str] = os.environ) -> list[str]:
    """The stage's command line (the evaluation gets ``--gpqa_path`` when ``GPQA_PATH`` is set)."""
    argv = [a.format(py=python, repo=repo, profile=profile) for a in stage.argv]
    if stage.name == "eval_benchmarks" and env.get(ENV_GPQA):
        argv += ["--gpqa_path", env[ENV_GPQA]]
    return argv


# ---- checks ---------------------------------------------------------------------------------------------

def _looks_local(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or value.endswith((".jsonl", ".parquet", ".json", ".csv"))


def _model_and_data_problems(profile: Profile) -> tuple[list[str], list[str]]:
    problems, notes = [], []
    model, dataset = profile.common("model"), profile.common("dataset")
    if not model:
        problems.append("model is unset: set `model` (a hub id or a local folder) at the top of the profile")
    elif "{size}" in model and not profile.section("train").get("model_size"):
        problems.append(f"model {model!r} has a {{size}} placeholder but [train] model_size is unset")
    if not dataset:
        problems.append("dataset is unset: set `dataset` (a hub id, a .jsonl/.parquet file or 'synthetic')")
    for key, value in (("model", model), ("dataset", dataset)):
        if value and _looks_local(value):
            path = Path(os.path.expanduser(value.replace("{size}", str(profile.section("train").get("model_size")))))
            if not path.exists():
                problems.append(f"{key} {value!r}: no such file or folder")
        elif value and value != "synthetic" and not str(value).startswith(("gguf:", "random-")):
            notes.append(f"{key} {value!r} is a hub id: the first stage downloads it (offline nodes: download "
                         f"once and set a local path)")
    return problems, notes


def _benchmark_problems(profile: Profile, env: Mapping[str, str]) -> list[str]:
    try:
        specs = BenchmarkSpec.parse(profile.section("eval").get("benchmarks", "heldout"))
    except ValueError as e:
        return [f"[eval] benchmarks: {e}"]
    problems = []
    shipped = {"math500": BENCHMARKS_DIR / "math500" / "test.jsonl",
               "aime24": BENCHMARKS_DIR / "aime24" / "aime24_nofigures.jsonl"}
    for spec in specs:
        if spec.name in shipped and not shipped[spec.name].is_file():
            problems.append(f"benchmark {spec.name}: {shipped[spec.name]} is missing")
        if spec.name == "gpqa":
            path = env.get(ENV_GPQA)
            if not path:
                problems.append(f"benchmark gpqa is listed in [eval] benchmarks but {ENV_GPQA} is unset: export "
                                f"{ENV_GPQA}=/path/to/gpqa_diamond.csv (never shipped), or drop gpqa from the list")
            elif not Path(path).is_file():
                problems.append(f"{ENV_GPQA}={path}: no such file")
    return problems


def _llm_problems(profile: Profile, env: Mapping[str, str]) -> tuple[list[str], list[str]]:
    problems, notes = [], []
    for sections in (("autointerp",), ("autointerp", "sae_autointerp")):
        values: dict = {}
        for s in sections:
            values.update(profile.section(s))
        if "llm" not in {values.get(k) for k in ("explainer", "scorer", "categoriser")}:
            continue
        where = "[" + "] + [".join(sections) + "]"
        if not (values.get("llm_base_url") or env.get(ENV_LLM_BASE_URL)):
            problems.append(f"{where} uses an LLM but llm_base_url is unset (and {ENV_LLM_BASE_URL} too)")
        if not (values.get("llm_model") or env.get(ENV_LLM_MODEL)):
            problems.append(f"{where} uses an LLM but llm_model is unset (and {ENV_LLM_MODEL} too)")
        auth = values.get("llm_auth_env")
        if auth and not env.get(auth):
            notes.append(f"{where}: {auth} is unset (fine for an endpoint that needs no key)")
    return problems, notes


def check_profile(profile: Profile, env: Mapping[str, str] = os.environ) -> tuple[list[str], list[str]]:
    """(problems, notes): problems are ids and paths a stage needs that are unset or missing; notes are
    facts worth knowing that do not stop the job."""
    problems, notes = _model_and_data_problems(profile)
    problems += _benchmark_problems(profile, env)
    llm_problems, llm_notes = _llm_problems(profile, env)
    problems += llm_problems
    notes += llm_notes
    missing = [k for k in ("layers", "hidden", "intermediate", "heads", "kv_heads", "vocab")
               if k not in plan_values(profile)]
    if missing:
        notes.append(f"[plan] lacks {missing}: some disk estimates are unknown")
    return list(dict.fromkeys(problems)), list(dict.fromkeys(notes))


# ---- plan and run ---------------------------------------------------------------------------------------

def human_bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""  # unreachable


def plan_text(profile: Profile, spec: str, python: str, env: Mapping[str, str] = os.environ) -> str:
    """The dry-run plan: every stage's command, devices and disk, then the total and the checks."""
    lines = [f"Plan of the main job on profile {profile.name} ({profile.path}), {len(stages())} stages; "
             f"outputs under {project_root()}", ""]
    total, unknown = 0, False
    for i, st in enumerate(stages(), 1):
        devices = st.devices(profile) if callable(st.devices) else st.devices
        lines += [f"{i:2d}. {st.name}", f"    command: {shlex.join(command(st, spec, python, env=env))}",
                  f"    devices: {devices}"]
        for what, size in (st.disk(profile) if st.disk else []):
            lines.append(f"    disk:    {human_bytes(size)}  {what}")
            total += size or 0
            unknown |= size is None
    lines += ["", f"disk in all (estimated): {human_bytes(total)}{' + unknown parts' if unknown else ''}",
              f"stage times go to {times_path(profile.name)}"]
    return "\n".join(lines)


def run_stages(spec: str, python: str, env: Mapping[str, str] = os.environ,
               stage_list: Sequence[Stage] | None = None) -> int:
    """Run every stage (of ``stage_list``, default :func:`stages`) in order; log each wall time; stop at the
    first failure, naming it."""
    profile = load_profile(spec)
    times = times_path(profile.name)
    times.parent.mkdir(parents=True, exist_ok=True)
    for st in stages() if stage_list is None else stage_list:
        argv = command(st, spec, python, env=env)
        print(f"=== {st.name}: {shlex.join(argv)}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call(argv, env={**env, "PYTHON": python})
        if rc != 0:
            print(f"error: stage '{st.name}' failed (exit {rc}); rerun it with: {shlex.join(argv)}  "
                  f"(or rerun run_all.sh: finished stages are skipped)", file=sys.stderr, flush=True)
            return 1
        line = f"{datetime.now().isoformat(timespec='seconds')}\t{st.name}\t{round(time.monotonic() - t0)}s"
        print(line, flush=True)
        with times.open("a") as f:
            f.write(line + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default=os.environ.get(ENV_PROFILE) or "tiny",
                        help=f"profile name or .toml path (env {ENV_PROFILE}, default tiny)")
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="print the plan and check the profile; run nothing")
    args = parser.parse_args(argv)
    python = os.environ.get("PYTHON") or sys.executable
    try:
        profile = load_profile(args.profile)
        problems, notes = check_profile(profile)
        if args.dry_run:
            print(plan_text(profile, args.profile, python))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for n in notes:
        print(f"note: {n}")
    if problems:
        print(f"\n{len(problems)} problem(s) with profile {profile.name}:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"\nprofile {profile.name}: every required id and path is set")
        return 0
    return run_stages(args.profile, python)


if __name__ == "__main__":
    sys.exit(main())
