"""The rehearsal of the paper profile: its overrides stay inside the allowed keys, its fixtures look like what a
cluster downloads, its own write-up attempts grade as intended through evaluation, and (slow) the whole
pipeline runs on it."""

import csv
import os
import subprocess
import sys
import tomllib

import pytest

from rank1 import rehearsal
from rank1.activations.config import ExtractConfig
from rank1.benchmarks import BenchmarkSpec, gpqa_items, load_benchmark
from rank1.config import PROFILES_DIR, REPO_ROOT, cache_dir, config_from_profile, load_profile
from rank1.generate import Budget, Generation
from rank1.interventions.config import AttributionConfig, SteeringConfig
from rank1.interventions.stage import heldout_problems, problem_records
from rank1.training.evaluate import Variant, grade_records, read_generations, regrade_file, write_jsonl

S1K_COLUMNS = {"solution", "question", "cot_type", "source_type", "metadata", "gemini_thinking_trajectory",
               "gemini_attempt", "deepseek_thinking_trajectory", "deepseek_attempt", "gemini_grade",
               "gemini_grade_reason", "deepseek_grade", "deepseek_grade_reason"}
GPQA_NEEDED = {"Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"}


def _raw(name: str) -> dict:
    with (PROFILES_DIR / f"{name}.toml").open("rb") as f:
        return tomllib.load(f)


# ---------------------------------------------------------------- the profile


def test_rehearsal_extends_paper_and_overrides_only_allowed_keys():
    raw = _raw("rehearsal")
    assert raw["extends"] == "paper"
    assert rehearsal.overridden_keys(raw) - rehearsal.ALLOWED_OVERRIDES == set()
    # the check itself: a changed learning rate or rank would be caught
    assert rehearsal.overridden_keys({"extends": "paper", "model": "m", "train": {"lr": 1.0, "rank": 2}}) == \
        {"model", "train.lr", "train.rank"}
    assert {"train.lr", "train.rank", "train.epochs", "sae.k"} - rehearsal.ALLOWED_OVERRIDES == \
        {"train.lr", "train.rank", "sae.k"}


def test_rehearsal_keeps_every_other_paper_value():
    paper, reh, raw = load_profile("paper").values, load_profile("rehearsal").values, _raw("rehearsal")
    for table, values in paper.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            if key not in raw.get(table, {}):
                assert reh[table][key] == value, f"[{table}] {key}"
    assert reh["train"]["lr"] == 1e-3 and reh["train"]["rank"] == 1 and reh["autointerp"]["explainer"] == "llm"


def test_extends_merges_tables_key_by_key_and_expands_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK1_ROOT", str(tmp_path / "root"))
    monkeypatch.delenv("RANK1_CACHE", raising=False)
    child = tmp_path / "child.toml"
    child.write_text('extends = "paper"\nmodel = "{cache}/m"\n[train]\nepochs = 1\n')
    values = load_profile(str(child)).values
    assert values["train"]["epochs"] == 1 and values["train"]["full_lr"] == 1e-5
    assert values["model"] == str((tmp_path / "root" / "cache").resolve() / "m")
    assert values["dataset"] == "simplescaling/s1K-1.1"
    grandchild = tmp_path / "grand.toml"
    grandchild.write_text('extends = "child.toml"\n[train]\nlr = 0.5\n')
    merged = load_profile(str(grandchild)).values["train"]
    assert (merged["lr"], merged["epochs"], merged["rank"]) == (0.5, 1, 1)


@pytest.mark.parametrize("text, message", [
    ('extends = "no_such_profile"\n', "names no file"),
    ('extends = "loop.toml"\n', "makes a cycle"),
    ("extends = 3\n", "must be a profile name"),
    ('extends = "paper"\nmodle = "x"\n', "unknown top-level keys"),
])
def test_extends_errors(tmp_path, text, message):
    path = tmp_path / "loop.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_profile(str(path))


def test_rehearsal_table_is_checked(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('extends = "paper"\n[rehearsal]\nfixtures = "x"\nserv = "y"\n')
    with pytest.raises(ValueError, match="unknown keys \\['serv'\\]"):
        rehearsal.RehearsalConfig.of(load_profile(str(path)))
    assert rehearsal.RehearsalConfig.of(load_profile("paper")) is None


# ---------------------------------------------------------------- the fixtures


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    return rehearsal.write_fixtures(tmp_path_factory.mktemp("rehearsal"), n_records=12, n_gpqa=6)


def test_fixture_model_loads_by_path_like_a_snapshot(fixtures):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = fixtures / rehearsal.MODEL_DIR
    config = AutoConfig.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert config.model_type == "qwen2" and config.vocab_size > len(tok) and not config.tie_word_embeddings
    assert str(config.dtype).endswith("bfloat16")
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.get_input_embeddings().weight.shape[0] == config.vocab_size
    prompt = tok.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\nYou are Qwen") and prompt.endswith("<|im_start|>assistant\n")
    assert model.generation_config.do_sample is True  # as Qwen2.5-Instruct ships: greedy must be asked for


def test_fixture_data_has_the_real_columns(fixtures):
    from rank1.data import load_reasoning_records

    records = load_reasoning_records(str(fixtures / rehearsal.DATASET_FILE))
    assert len(records) == 12 and set(records[0]) == S1K_COLUMNS
    assert all(len(r["deepseek_thinking_trajectory"]) > 2 * len(r["deepseek_attempt"]) for r in records)
    assert sum("\\boxed{" in r["deepseek_attempt"] for r in records) >= 8
    with (fixtures / rehearsal.GPQA_FILE).open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and GPQA_NEEDED <= set(rows[0]) and "\n" in rows[0]["Question"]


# ---------------------------------------------------------------- the write-ups through evaluation


def _evaluate(bench, answers, tmp_path) -> list[dict]:
    """grade_records on generations whose answer phase is ``answers``, written and regraded from disk."""
    gens = [Generation("thinking", a, 10, len(a), False, False) for a in answers]
    records = grade_records(bench, gens, Variant("lora", None, "adapter_on"), Budget(8192, 512), "sha")
    path = tmp_path / f"{bench.name}.jsonl"
    write_jsonl(path, records)
    assert [r["correct"] for r in regrade_file(path, bench)] == [r["correct"] for r in read_generations(path)]
    return records


def test_dataset_attempts_grade_correct_against_their_solutions(fixtures):
    from rank1.benchmarks import grade_integer, grade_letter, grade_math
    from rank1.data import load_reasoning_records

    for i, rec in enumerate(load_reasoning_records(str(fixtures / rehearsal.DATASET_FILE))):
        gold, attempt = rec["solution"], rec["deepseek_attempt"]
        grade = grade_letter if gold in "ABCD" else grade_integer if gold.lstrip("-").isdigit() else grade_math
        assert grade(attempt, gold) == (gold if grade is not grade_math else grade(attempt, gold)[0], True), i
        assert grade(attempt, "B" if gold in "ABCD" else "999999")[1] is False, i


def test_writeups_through_evaluation_get_the_intended_grades(fixtures, tmp_path):
    benches = [load_benchmark(BenchmarkSpec("aime24"), "test", limit=6),
               load_benchmark(BenchmarkSpec("math500"), "test", limit=6)]
    gpqa = gpqa_items(fixtures / rehearsal.GPQA_FILE)
    benches.append(load_benchmark(BenchmarkSpec("gpqa"), "test", gpqa_path=str(fixtures / rehearsal.GPQA_FILE)))
    assert {it.gold for it in gpqa} - set("ABCD") == set()
    steps = ["First, 3 quantities are given.", "Then 12 of them combine into 7 groups."]
    for bench in benches:
        right = [rehearsal.writeup(it.gold, steps, i) for i, it in enumerate(bench.items)]
        records = _evaluate(bench, right, tmp_path)
        assert all(r["correct"] for r in records), [(r["gold"], r["pred"]) for r in records if not r["correct"]]
        wrong_gold = [("B" if it.gold == "A" else "A") if bench.name == "gpqa" else "271828"
                      for it in bench.items]
        wrong = [rehearsal.writeup(g, steps, i) for i, g in enumerate(wrong_gold)]
        assert not any(r["correct"] for r in _evaluate(bench, wrong, tmp_path))


# ---------------------------------------------------------------- the paper profile's problem sources


def test_paper_stage4_sources_need_no_generated_split(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK1_ROOT", str(tmp_path))  # no data/<profile>/eval.jsonl anywhere
    steering = config_from_profile(SteeringConfig, "steering", "rehearsal")
    bench = heldout_problems("rehearsal", steering.n_problems, 0, steering.problems)
    assert steering.problems == "math500" and bench.name == "math500" and len(bench.items) == steering.n_problems
    with pytest.raises(ValueError, match="--problems must be one of"):
        config_from_profile(SteeringConfig, "steering", "rehearsal", problems="gpqa")
    with pytest.raises(FileNotFoundError, match="eval.jsonl does not exist"):
        heldout_problems("rehearsal", 2)
    ex = config_from_profile(ExtractConfig, "extract", "rehearsal")
    assert ex.corpus_source == load_profile("rehearsal").values["dataset"] == str(cache_dir() / "rehearsal" /
                                                                                   rehearsal.DATASET_FILE)
    assert config_from_profile(ExtractConfig, "extract", "test").corpus_source == "synthetic"


def test_attribution_reads_dataset_traces(fixtures):
    cfg = config_from_profile(AttributionConfig, "attribution", "rehearsal", n_problems=3, offset=1,
                              dataset=str(fixtures / rehearsal.DATASET_FILE))
    from rank1.data import load_reasoning_records

    recs = load_reasoning_records(str(fixtures / rehearsal.DATASET_FILE))[1:4]
    got = problem_records(cfg)
    assert [g["trace"] for g in got] == [r["deepseek_thinking_trajectory"] for r in recs]
    assert [g["gold"] for g in got] == [r["deepseek_attempt"].strip() for r in recs]
    with pytest.raises(ValueError, match="fewer"):
        problem_records(config_from_profile(AttributionConfig, "attribution", "rehearsal", n_problems=20,
                                            dataset=str(fixtures / rehearsal.DATASET_FILE)))


# ---------------------------------------------------------------- the whole rehearsal


@pytest.mark.slow
def test_rehearsal_runs_end_to_end(isolated_root):
    """`bash run_all.sh --profile rehearsal` on a fresh root: every stage runs, and the report lists every artifact,
    misses none, and reads every claim."""
    from rank1.pipeline import stages
    from rank1.report import ReportConfig, build_report

    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("GPQA_PATH", None)  # the profile names its own GPQA-shaped file
    proc = subprocess.run(["bash", str(REPO_ROOT / "run_all.sh"), "--profile", "rehearsal"], env=env,
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    times = (isolated_root / "logs" / "run_all-rehearsal-times.tsv").read_text()
    assert all(f"\t{st.name}\t" in times for st in stages())
    assert (isolated_root / "reports" / "rehearsal" / "REPORT.md").is_file()
    rep = build_report(ReportConfig(profile="rehearsal"))
    assert rep.artifacts() and all(p.is_file() for p in rep.artifacts())
    assert not [c for c in rep.claims if c.ours.startswith("missing")]
    assert {f.stage for f in rep.folders} >= {"eval", "ablations", "lora_vs_mlp", "sae", "steering", "probes"}
    assert (isolated_root / "logs" / "serve-rehearsal.log").read_text().count("POST /v1/chat/completions") > 10
