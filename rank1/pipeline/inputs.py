"""Every input a real run reads, checked before any stage runs: models and datasets (local, in the Hugging Face
cache, or downloadable from here), the GPQA CSV, the LLM endpoint, DeepSpeed and vLLM where the profile needs them,
and stages whose memory estimate exceeds one GPU. Problems stop the job; what the check cannot be sure of is a note."""

from __future__ import annotations

import functools
import importlib.util
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

from huggingface_hub import constants as hf_constants

from rank1.benchmarks import BENCHMARKS_DIR, BenchmarkSpec
from rank1.config import Profile
from rank1.constants import ENV_LLM_BASE_URL, ENV_LLM_MODEL
from rank1.pipeline.estimates import (
    DS_CONFIG,
    ENV_DS_CONFIG,
    GIB,
    LLM_2,
    LLM_3,
    MODEL_KEYS,
    fill_size,
    has_model_files,
    human_bytes,
    in_hub_cache,
    is_hub_id,
    looks_local,
    plan_values,
    stage_values,
    zero3_shards,
)
from rank1.pipeline.stages import ENV_GPQA, stages
from rank1.training.config import EvalConfig

PROBE_TIMEOUT_S = 3.0  # an endpoint that does not answer within this is flagged
HUB_URL = "https://huggingface.co"  # or HF_ENDPOINT








def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _offline(env: Mapping[str, str]) -> bool:
    return any(env.get(k, "").lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _unreachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when ``url`` answers HTTP within ``timeout`` seconds (any status), else why not."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except (urllib.error.URLError, OSError, ValueError) as e:
        return f"no answer within {timeout:g} s: {getattr(e, 'reason', e)}"
    return None




def _inputs(profile: Profile) -> list[tuple[str, str, str]]:
    """(where, key, value) of every model and dataset the stages read: the profile's and any table's own, with
    {size} filled in."""
    found = [(key, key, profile.common(key), {}) for key in ("model", "dataset") if profile.common(key)]
    for name, table in profile.values.items():
        if isinstance(table, dict):
            found += [(f"[{name}] {k}", k, table[k], table) for k in ("model", "dataset", "corpus")
                      if isinstance(table.get(k), str) and table[k] and table[k] != profile.common(k)]
    filled = [(where, key, fill_size(value, profile, table)) for where, key, value, table in found]
    return [f for i, f in enumerate(filled) if (f[1], f[2]) not in {(k, v) for _, k, v in filled[:i]}]


def _hub_input(where: str, key: str, repo_id: str, env: Mapping[str, str],
               probe: Callable[[str], str | None]) -> tuple[list[str], list[str]]:
    repo_type = "model" if key == "model" else "dataset"
    if in_hub_cache(repo_id, repo_type):
        return [], []
    fetch = (f"`hf download {'--repo-type dataset ' if repo_type == 'dataset' else ''}{repo_id} --local-dir DIR` "
             f"where there is internet and set {key} = \"DIR\"")
    cache = hf_constants.HF_HUB_CACHE
    if _offline(env):
        return [f"{where} {repo_id!r} is a hub id that is not in the Hugging Face cache ({cache}) and "
                f"HF_HUB_OFFLINE is set: {fetch}"], []
    hub = env.get("HF_ENDPOINT") or HUB_URL
    why = probe(hub)
    if why:
        return [], [f"{where} {repo_id!r} is not downloaded (not in {cache}) and {hub} does not answer here ({why}): a "
                    f"real run here stops at the first stage that reads it; {fetch}"]
    return [], [f"{where} {repo_id!r} is not downloaded yet: the first stage that reads it downloads it into {cache} "
                f"(offline nodes: {fetch})"]


def _model_and_data_problems(profile: Profile, env: Mapping[str, str],
                             probe: Callable[[str], str | None]) -> tuple[list[str], list[str]]:
    problems, notes = [], []
    model, dataset = profile.common("model"), profile.common("dataset")
    if not model:
        problems.append("model is unset: set `model` (a hub id or a local folder) at the top of the profile")
    elif "{size}" in model and not profile.section("train").get("model_size"):
        problems.append(f"model {model!r} has a {{size}} placeholder but [train] model_size is unset")
    if not dataset:
        problems.append("dataset is unset: set `dataset` (a hub id, a .jsonl/.parquet file or 'synthetic')")
    for where, key, value in _inputs(profile):
        if looks_local(value):
            path = Path(os.path.expanduser(value))
            if not path.exists():
                problems.append(f"{where} {value!r}: no such file or folder")
            elif key == "model" and path.is_dir() and not has_model_files(path):
                problems.append(f"{where} {value!r} has no config.json or misses weight files: download the model "
                                f"into it again (`hf download REPO --local-dir {value}`)")
        elif is_hub_id(value) and "{size}" not in value:
            p, n = _hub_input(where, key, value, env, probe)
            problems += p
            notes += n
    sae = profile.section("sae_lora").get("sae")
    if sae and looks_local(sae) and not Path(os.path.expanduser(sae)).exists():
        problems.append(f"[sae_lora] sae {sae!r}: no such folder")
    return problems, notes


def _benchmark_problems(profile: Profile, env: Mapping[str, str]) -> list[str]:
    try:
        specs = BenchmarkSpec.parse(stage_values(profile, EvalConfig, "eval")["benchmarks"])
    except ValueError as e:
        return [f"[eval] benchmarks: {e}"]
    problems = []
    shipped = {"math500": BENCHMARKS_DIR / "math500" / "test.jsonl",
               "aime24": BENCHMARKS_DIR / "aime24" / "aime24_nofigures.jsonl"}
    for spec in specs:
        if spec.name in shipped and not shipped[spec.name].is_file():
            problems.append(f"benchmark {spec.name}: {shipped[spec.name]} is missing")
        if spec.name == "gpqa":
            path = env.get(ENV_GPQA) or profile.section("eval").get("gpqa_path")
            if not path:
                problems.append(f"benchmark gpqa is listed in [eval] benchmarks but {ENV_GPQA} is unset: export "
                                f"{ENV_GPQA}=/path/to/gpqa_diamond.csv (never shipped), or drop gpqa from the list")
            elif not Path(path).is_file():
                problems.append(f"GPQA CSV {path}: no such file ({ENV_GPQA} or [eval] gpqa_path)")
    return problems


def _llm_problems(profile: Profile, env: Mapping[str, str],
                  probe: Callable[[str], str | None]) -> tuple[list[str], list[str]]:
    problems, notes = [], []
    endpoints: dict[str, list[str]] = {}  # url -> the stages that need it
    for sections, devices in ((("autointerp",), LLM_2), (("autointerp", "sae_autointerp"), LLM_3)):
        values: dict = {}
        for s in sections:
            values.update(profile.section(s))
        if "llm" not in {values.get(k) for k in ("explainer", "scorer", "categoriser")}:
            continue
        where = "[" + "] + [".join(sections) + "]"
        url = values.get("llm_base_url") or env.get(ENV_LLM_BASE_URL)
        if not url:
            problems.append(f"{where} uses an LLM but llm_base_url is unset (and {ENV_LLM_BASE_URL} too)")
        else:
            endpoints.setdefault(url, []).extend(st.name for st in stages() if st.devices is devices)
        if not (values.get("llm_model") or env.get(ENV_LLM_MODEL)):
            problems.append(f"{where} uses an LLM but llm_model is unset (and {ENV_LLM_MODEL} too)")
        auth = values.get("llm_auth_env")
        if auth and not env.get(auth):
            notes.append(f"{where}: {auth} is unset (fine for an endpoint that needs no key)")
    behaviour = profile.section("sae_lora")
    url = behaviour.get("llm_base_url") or env.get(ENV_LLM_BASE_URL)
    if behaviour.get("data_source") == "llm" and url:
        endpoints.setdefault(url, []).append("5.0_make_behavior_dataset (--data_source llm)")
    for url, names in endpoints.items():
        why = probe(url.rstrip("/") + "/models")
        if why:
            notes.append(f"LLM endpoint {url} does not answer here ({why}): stages {', '.join(dict.fromkeys(names))} "
                         f"fail without it; start the server before them (e.g. `vllm serve MODEL --port PORT`) or set "
                         f"llm_base_url to one that answers")
    return problems, notes


def _engine_problems(profile: Profile, env: Mapping[str, str]) -> list[str]:
    """DeepSpeed and its config where training runs ZeRO-3; vLLM where a table asks for it."""
    problems = []
    gpus = plan_values(profile).get("gpus", 0)
    if zero3_shards(plan_values(profile), env) > 1:
        if not _installed("deepspeed"):
            problems.append(f"DeepSpeed is not installed, and training on [plan] gpus = {gpus} GPUs runs DeepSpeed "
                            f"ZeRO-3: pip install deepspeed on the training machine (or ENGINE=ddp, where every GPU "
                            f"holds the whole model and its optimizer)")
        ds = env.get(ENV_DS_CONFIG) or str(DS_CONFIG)
        if not Path(ds).is_file():
            problems.append(f"DeepSpeed config {ds} ({ENV_DS_CONFIG}): no such file")
    for name, table in profile.values.items():
        if isinstance(table, dict) and table.get("backend") == "vllm" and not _installed("vllm"):
            problems.append(f"[{name}] backend = \"vllm\" but vllm is not installed: bash setup.sh --gpu on the GPU "
                            f"machine (it needs a CUDA torch), or set backend = \"hf\"")
    return problems


def _memory_notes(profile: Profile) -> list[str]:
    """Stages whose memory estimate exceeds one GPU ([plan] gpu_memory_gib) on a GPU plan."""
    plan = plan_values(profile)
    gib = plan.get("gpu_memory_gib")
    if not gib or plan.get("gpus", 0) <= 0:
        return []
    notes = []
    for st in stages():
        parts = st.memory(profile) if st.memory else []
        total = sum(p.size or 0 for p in parts)
        if total > gib * GIB:
            terms = " + ".join(f"{p.what.split(' (')[0]} {human_bytes(p.size)}" for p in parts)
            notes.append(f"stage {st.name} needs about {human_bytes(total)} per GPU ({terms}), more than [plan] "
                         f"gpu_memory_gib = {gib}: lower its batch or token budget, or plan larger GPUs")
    return notes


def check_profile(profile: Profile, env: Mapping[str, str] = os.environ) -> tuple[list[str], list[str]]:
    """(problems, notes): problems are inputs a stage needs that are unset or missing (the job does not start);
    notes are facts worth knowing, among them inputs a real run here would miss that the check cannot be sure of
    (an endpoint or the hub not answering: probed with a short timeout) and stages over one GPU's memory."""
    probe = functools.cache(_unreachable)  # each endpoint asked once
    problems, notes = _model_and_data_problems(profile, env, probe)
    problems += _benchmark_problems(profile, env)
    llm_problems, llm_notes = _llm_problems(profile, env, probe)
    problems += llm_problems + _engine_problems(profile, env)
    notes += llm_notes + _memory_notes(profile)
    missing = [k for k in MODEL_KEYS if k not in plan_values(profile)]
    if missing:
        notes.append(f"[plan] lacks {missing}: some disk and memory estimates are unknown")
    return list(dict.fromkeys(problems)), list(dict.fromkeys(notes))


