"""The main job's stage list: the dry-run plan, disk and memory estimates, profile checks, and the runner's
failure message."""

import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from huggingface_hub import constants as hf_constants

from rank1 import pipeline
from rank1.config import REPO_ROOT, load_profile
from rank1.pipeline import Stage, check_profile, command, estimates, inputs, main, stages
from rank1.pipeline.estimates import planned_tokens, store_bytes

REAL_PROBE = inputs._unreachable
GIB = 1 << 30
# Qwen2.5-32B (the paper profile's [plan]): 64 layers x (2 x 5120^2 (q, o) + 2 x 5120 x 1024 (k, v; 8 kv heads x
# head_dim 128) + 3 x 5120 x 27648 (gate, up, down)) = 64 x 487,587,840 = 31,205,621,760, plus untied embedding and
# LM head 2 x 152064 x 5120 = 1,557,135,360: 32,762,757,120 parameters
P32 = 32_762_757_120
# its rank-1 adapter: per layer q (5120 + 5120) + k, v 2 x (5120 + 1024) + o (5120 + 5120) + gate, up
# 2 x (5120 + 27648) + down (27648 + 5120) = 131,072; x 64 layers
LORA32 = 131_072 * 64
KV_TOKEN32 = 2 * 64 * 8 * 128 * 2  # K and V x layers x kv heads x head_dim x bf16 = 262,144 B (256 KiB) per token
FORWARD_WIDTH32 = 3 * 27648 + 4 * 5120  # the widest layer's values per token in a forward pass: 103,424


def profile_file(tmp_path, text, name="mine.toml"):
    path = tmp_path / name
    path.write_text(text)
    return load_profile(str(path))


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """No test here reaches the network or this machine's Hugging Face cache: every endpoint is unreachable
    unless a test says otherwise, and the cache is an empty folder."""
    asked = []

    def unreachable(url, timeout=inputs.PROBE_TIMEOUT_S):
        asked.append(url)
        return "no answer (tests)"

    monkeypatch.setattr(inputs, "_unreachable", unreachable)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "ENGINE", "DS_CONFIG", "GPQA_PATH",
                "OPENAI_BASE_URL", "RANK1_LLM_MODEL"):
        monkeypatch.delenv(key, raising=False)
    return asked


def reachable(monkeypatch):
    monkeypatch.setattr(inputs, "_unreachable", lambda url, timeout=0: None)


def installed(monkeypatch, *present):
    monkeypatch.setattr(inputs, "_installed", lambda module: module in present)


def cached_model(tmp_path, repo_id, files=("config.json", "model.safetensors")):
    """A snapshot of ``repo_id`` in the (test) Hugging Face cache, laid out as huggingface_hub writes it."""
    repo = tmp_path / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    for name in files:
        (snapshot / name).write_text("{}")
    return snapshot


def test_dry_run_prints_every_stage_and_runs_nothing(isolated_root, capsys):
    assert main(["--profile", "tiny", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for i, st in enumerate(stages(), 1):
        assert f"{i:2d}. {st.name}\n" in out
    assert out.count("    command: ") == out.count("    devices: ") == len(stages())
    assert "6_report/6.1_write_report.py --profile tiny" in out and "every required id and path is set" in out
    assert not (isolated_root / "logs").exists() and not (isolated_root / "results").exists()
    assert [s.name for s in stages()[-2:]] == ["6.0_feature_pages", "6.1_write_report"]
    assert len({s.name for s in stages()}) == len(stages())


def test_store_estimate_is_tokens_times_sites_times_bytes_plus_ids(tmp_path):
    prof = profile_file(tmp_path, 'model = "random-qwen2"\ndataset = "synthetic"\n[plan]\nlayers = 3\n'
                                  '[extract]\nmax_tokens = 1000\ndtype = "float32"\n')
    [part] = estimates._store_estimate(prof, mlp=False)
    assert part.size == 1000 * (3 * 7) * 4 + 1000 * 12 == store_bytes(1000, 21, "float32") + 1000 * estimates.ID_BYTES
    assert "1000 tokens x (3 layers x 7 sites x 4 B float32 + 12 B of ids)" in part.what
    prof = profile_file(tmp_path, 'model = "random-qwen2"\ndataset = "synthetic"\n[plan]\nlayers = 2\n'
                                  'corpus_tokens = 10000\n[extract]\nmax_docs = 10\nblock_size = 50\n'
                                  'neurons_per_layer = 5\ndtype = "bfloat16"\n', "b.toml")
    assert estimates._store_estimate(prof, mlp=True)[0].size == (10 * 50) * (2 * 5 * 2 + 12)
    assert planned_tokens({"max_tokens": 0, "max_docs": 0}, {"corpus_tokens": 77}) == 77
    assert planned_tokens({}, {}) is None


def test_paper_profile_sizes():
    paper = load_profile("paper")
    [part] = estimates._store_estimate(paper, mlp=False)
    assert part.size == 10_000_000 * (448 * 2 + 12)  # s1K-1.1's 10M tokens x (64 layers x 7 sites x bf16 + ids)
    assert estimates._sae_estimate(paper)[0].what.startswith("SAE weights (448 -> 3584 latents")
    assert estimates.model_params(pipeline.plan_values(paper)) == P32
    assert estimates.adapter_params(pipeline.plan_values(paper)) == LORA32
    store, sae = estimates._resid_store_estimate(paper)
    assert store.size == 4_000_000 * (5120 * 4 + 12)  # [sae_lora] store_tokens x (d_model x float32 + ids)
    assert sae.size == 4 * (2 * 5120 * 81920 + 81920 + 5120)  # expansion 16: W_enc, W_dec and biases in fp32


def test_unset_ids_are_named_and_fail_the_dry_run(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("GPQA_PATH", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    path = tmp_path / "cluster.toml"
    path.write_text('model = ""\ndataset = "/nowhere/s1K-1.1.parquet"\n[eval]\nbenchmarks = "aime24,gpqa"\n'
                    '[autointerp]\nexplainer = "llm"\nllm_model = "m"\n[plan]\nlayers = 4\n')
    problems, _ = check_profile(load_profile(str(path)))
    assert any(p.startswith("model is unset") for p in problems)
    assert any("'/nowhere/s1K-1.1.parquet': no such file" in p for p in problems)
    assert any("GPQA_PATH is unset" in p for p in problems)
    assert any("llm_base_url is unset" in p for p in problems)
    assert main(["--profile", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "problem(s) with profile cluster" in err and "model is unset" in err
    monkeypatch.setenv("GPQA_PATH", str(path))  # any existing file will do for the check
    assert not any("GPQA" in p for p in check_profile(load_profile(str(path)))[0])


def test_paper_profile_needs_only_gpqa_where_deepspeed_and_vllm_are_installed(monkeypatch):
    installed(monkeypatch, "deepspeed", "vllm")
    reachable(monkeypatch)
    problems, notes = check_profile(load_profile("paper"))
    assert len(problems) == 1 and "GPQA_PATH" in problems[0]
    assert any(n.startswith("model 'Qwen/Qwen2.5-32B-Instruct' is not downloaded yet") for n in notes)
    assert any(n.startswith("dataset 'simplescaling/s1K-1.1' is not downloaded yet") for n in notes)
    installed(monkeypatch)
    problems, _ = check_profile(load_profile("paper"))
    assert any(p.startswith("DeepSpeed is not installed, and training on [plan] gpus = 8") for p in problems)
    assert any(p.startswith('[rollouts] backend = "vllm" but vllm is not installed') for p in problems)
    assert any(p.startswith('[eval] backend = "vllm" but vllm is not installed') for p in problems)
    assert len(problems) == 4


def test_gpqa_path_reaches_the_evaluation():
    ev = next(s for s in stages() if s.name == "eval_benchmarks")
    assert command(ev, "paper", "py", env={})[-2:] == ["--profile", "paper"]
    assert command(ev, "paper", "py", env={"GPQA_PATH": "/g.csv"})[-2:] == ["--gpqa_path", "/g.csv"]


def test_a_failing_stage_names_itself_and_its_rerun_command(isolated_root, capsys):
    stage_list = [Stage("ok", ("{py}", "-c", "pass"), "CPU"),
              Stage("broken", ("{py}", "-c", "import sys; sys.exit(3)", "--profile", "{profile}"), "CPU"),
              Stage("never", ("{py}", "-c", "raise SystemExit(9)"), "CPU")]
    assert pipeline.run_stages("test", sys.executable, stage_list=stage_list) == 1
    err = capsys.readouterr().err
    assert "error: stage 'broken' failed (exit 3); rerun it with: " in err and "--profile test" in err
    lines = (isolated_root / "logs" / "run_all-test-times.tsv").read_text().splitlines()
    assert len(lines) == 1 and lines[0].split("\t")[1:] == ["ok", lines[0].split("\t")[2]]


def test_a_profile_given_by_a_relative_path_reaches_every_stage_as_its_absolute_path(isolated_root, tmp_path,
                                                                                      monkeypatch, capsys):
    shutil.copy(REPO_ROOT / "configs" / "profiles" / "test.toml", tmp_path / "my.toml")
    monkeypatch.chdir(tmp_path)
    show = Stage("show", ("{py}", "-c", "pass", "--profile", "{profile}"), "CPU")
    assert pipeline.run_stages("my.toml", sys.executable, stage_list=[show]) == 0
    assert f"=== show: {sys.executable} -c pass --profile {tmp_path / 'my.toml'}\n" in capsys.readouterr().out
    assert (isolated_root / "logs" / "run_all-my-times.tsv").is_file()
    assert main(["--profile", "my.toml", "--dry-run"]) == 0
    assert f"6_report/6.1_write_report.py --profile {tmp_path / 'my.toml'}\n" in capsys.readouterr().out
    shipped = load_profile(str(REPO_ROOT / "configs" / "profiles" / "test.toml"))
    assert load_profile("test").spec == shipped.spec == "test"  # a shipped profile keeps its short name


def test_the_training_log_of_a_path_profile_is_named_by_the_profile(tmp_path):
    """0_train_lora.sh names its log train-<profile name>-<time>.log, also for --profile /abs/path/my.toml."""
    env = {k: v for k, v in os.environ.items() if k != "RANK1_PROFILE"}
    proc = subprocess.run(["bash", str(REPO_ROOT / "0_train_lora.sh"), "--profile", str(tmp_path / "my.toml")],
                          capture_output=True, text=True, timeout=60,
                          env={**env, "RANK1_PRINT_ONLY": "1", "RANK1_ROOT": str(tmp_path / "root"), "PYTHON": "python",
                               "CUDA_VISIBLE_DEVICES": "", "NNODES": "1"})
    assert proc.returncode == 0, proc.stderr
    log = Path(re.search(r" log=(\S+)$", proc.stdout.splitlines()[0]).group(1))
    assert log.parent == tmp_path / "root" / "logs" and re.fullmatch(r"train-my-[0-9-]+\.log", log.name)
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize("name", ["tiny", "test", "paper"])
def test_every_profile_has_a_plan(name):
    assert pipeline.plan_values(load_profile(name))["layers"] > 0


def test_the_stage_table_of_run_all_sh_is_the_stage_list(tmp_path):
    from rank1.config import REPO_ROOT

    text = (REPO_ROOT / "run_all.sh").read_text()
    assert all(f"\n{st.name} " in text for st in stages())
    table = tmp_path / "run_all.sh"
    table.write_text(": <<'STAGES'\n# comment\nfirst | py | model | store | a/b.py --kind mlp\n"
                     "second | bash | artifacts | - | c.sh\nSTAGES\n")
    first, second = pipeline.read_stage_table(table)
    assert first.argv == ("{py}", "{repo}/a/b.py", "--profile", "{profile}", "--kind", "mlp")
    assert first.devices == estimates.MODEL and first.disk is not None
    assert second.argv[:2] == ("bash", "{repo}/c.sh") and second.devices == estimates.ARTIFACTS and second.disk is None
    table.write_text(": <<'STAGES'\nfirst | python | model | - | a.py\nSTAGES\n")
    with pytest.raises(ValueError, match=r"run_all.sh:2: expected 'name \| py\|bash \| devices \| disk \| script"):
        pipeline.read_stage_table(table)
    table.write_text(": <<'STAGES'\nfirst | py | gpu | - | a.py\nSTAGES\n")
    with pytest.raises(ValueError, match=r"run_all.sh:2: unknown devices 'gpu' for stage 'first'; known: "):
        pipeline.read_stage_table(table)


def test_reading_the_pipeline_module_reads_no_stage_table():
    import subprocess

    code = ("import pathlib; real = pathlib.Path.read_text\n"
            "def spy(self, *a, **k):\n"
            "    assert self.name != 'run_all.sh', 'read at import'\n"
            "    return real(self, *a, **k)\n"
            "pathlib.Path.read_text = spy\nimport rank1.pipeline, rank1.report\n")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- estimates against hand arithmetic (the paper profile: Qwen2.5-32B, [plan] gpus = 8, prompt_tokens = 512) ----

def test_kv_cache_of_the_paper_evaluation_by_hand():
    paper = load_profile("paper")
    # batch 16 x (512 prompt + 8192 think + 512 answer = 9216 tokens) x 256 KiB = 36 GiB
    assert estimates.kv_cache_bytes(pipeline.plan_values(paper), 9216, 16, 2) == 16 * 9216 * KV_TOKEN32 == 36 * GIB
    # --backend hf at [eval] batch_size 8 (what fits one 80 GiB GPU): 8 x 9216 x 256 KiB = 18 GiB
    weights, kv = estimates._generation_memory(pipeline.plan_values(paper), "bf16", 8, 8192, 512)
    assert weights.size == P32 * 2 and kv.size == 18 * GIB  # bf16 weights: 61.0 GiB; 79.0 GiB in all
    assert "8 sequences x 9216 tokens" in kv.what


def test_full_finetune_checkpoints_by_hand(monkeypatch):
    monkeypatch.setattr(estimates, "in_hub_cache", lambda repo_id, repo_type: False)
    paper = load_profile("paper")
    final, checkpoints = estimates._training_disk(paper, full=True)
    assert final.size == P32 * 2 and final.kept  # the model ZeRO-3 gathers in bf16: 61.0 GiB
    # a ZeRO-3 checkpoint: bf16 weights 2 B + fp32 master 4 B + Adam's two fp32 moments 8 B = 14 B per parameter,
    # 458,678,599,680 B = 427.2 GiB; save_steps 50 over about 313 steps, save_total_limit 2: 3 on disk at once
    assert estimates.checkpoint_bytes(P32, zero3=True, bf16=True) == P32 * 14
    assert checkpoints.size == 3 * P32 * 14 and not checkpoints.kept
    assert "3 checkpoints, 427.2 GiB each" in checkpoints.what
    download, adapter, lora_checkpoints = estimates._training_disk(paper, full=False)
    assert download.size == P32 * 2 and adapter.size == LORA32 * 2 and lora_checkpoints.size == 3 * LORA32 * 14
    # without ZeRO-3 the parameters are fp32: 4 B weights + 8 B moments per checkpoint, and a 4 B final model
    monkeypatch.setenv("ENGINE", "ddp")
    final, checkpoints = estimates._training_disk(paper, full=True)
    assert final.size == P32 * 4 and checkpoints.size == 3 * P32 * 12


def test_checkpoints_at_once_follow_the_trainers_limit(tmp_path):
    from rank1.training.config import TrainConfig
    from rank1.training.trainer import training_arguments

    args = training_arguments(TrainConfig(model="random-qwen2", save_steps=5), tmp_path / "run", bf16=False)
    assert args.save_total_limit == estimates.CHECKPOINTS_KEPT == 2
    assert estimates.checkpoints_at_peak(0, -1) == 0  # never saves
    assert estimates.checkpoints_at_peak(50, -1) == 3  # steps unknown: the limit, plus the one being written
    assert estimates.checkpoints_at_peak(20, 56) == 2  # saves at steps 20 and 40 only
    prof = profile_file(tmp_path, 'model = "random-qwen2"\ndataset = "synthetic"\n[plan]\nlayers = 2\nhidden = 64\n'
                                  'intermediate = 128\nheads = 4\nkv_heads = 2\nvocab = 256\n[train]\nmax_steps = 30\n'
                                  'save_steps = 10\nkeep_checkpoints = true\nprecision = "fp32"\n')
    n = 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128) + 2 * 256 * 64  # 106,496 parameters
    _, kept, transient = estimates._training_disk(prof, full=True)
    assert kept.size == 2 * n * 12 and kept.kept and transient.size == n * 12 and not transient.kept


def test_training_memory_per_gpu_by_hand(monkeypatch):
    paper = load_profile("paper")
    state, saved, logits = estimates._train_memory(paper, full=True)
    # ZeRO-3 over 8 GPUs: 16 B per parameter (bf16 weight 2 + bf16 gradient 2 + fp32 master 4 + Adam 8) / 8
    assert state.size == 16 * P32 // 8 == 65_525_514_240
    # gradient checkpointing keeps each layer's input: 1 x 20000 tokens x 64 layers x 5120 x 2 B
    assert saved.size == 20000 * 64 * 5120 * 2 == 13_107_200_000
    # the loss reads 20000 x 152064 logits: bf16 output 2 + float32 copy 4 + float32 log-softmax 4 = 10 B each
    assert logits.size == 20000 * 152064 * 10 == 30_412_800_000
    lora_state, *_ = estimates._train_memory(paper, full=False)
    assert lora_state.size == (2 * P32 + 16 * LORA32) // 8  # frozen bf16 weights + the adapter's 16 B, sharded
    monkeypatch.setenv("ENGINE", "ddp")  # every GPU holds everything
    assert estimates._train_memory(paper, full=True)[0].size == 16 * P32


def test_extraction_and_intervention_memory_by_hand(tmp_path):
    paper = load_profile("paper")
    weights, forward, sites = estimates._extract_memory(paper, mlp=False)
    assert weights.size == P32 * 2  # each of the 8 workers holds the bf16 model
    assert forward.size == 32768 * FORWARD_WIDTH32 * 2  # batch_tokens 32768 through the widest layer, bf16
    assert sites.size == 32768 * 448 * 4  # the captured adapter scalars in float32
    # steering's teacher-forced KL: 2 x 12 sequences x (512 + 1024 + 32 = 1568) tokens, every position's logits
    _, kl = estimates._steering_memory(paper)
    assert kl.size == 24 * 1568 * (FORWARD_WIDTH32 + 152064) * 2 and kl.what.startswith("teacher-forced KL")
    # rollouts: vLLM takes 0.9 x 80 GiB to sample; reading the paper profile's read_batch = 2 whole rollouts of
    # 512 + 8192 + 64 = 8768 tokens through the PEFT model holds less, so sampling is the peak ...
    sampling = estimates._rollouts_memory(paper)
    assert sampling[0].what.startswith("sampling") and sampling[0].size == int(0.9 * 80 * GIB)
    # ... while reading all 64 at once (read_batch 0: the generation batch) would hold more
    _, read = estimates._rollouts_memory(profile_file(tmp_path, 'extends = "paper"\n[rollouts]\nread_batch = 0\n'))
    assert read.size == 64 * 8768 * FORWARD_WIDTH32 * 2 and read.what.startswith("reading activations")
    assert estimates._generation_memory(pipeline.plan_values(paper), "auto", 64, 8192, 64, "vllm")[0].size == \
        int(0.9 * 80 * GIB)


def test_dry_run_of_the_paper_profile_prints_memory_and_the_disk_peak(monkeypatch, capsys, tmp_path):
    installed(monkeypatch, "deepspeed", "vllm")
    reachable(monkeypatch)
    gpqa = tmp_path / "gpqa_diamond.csv"
    gpqa.write_text("Question\n")
    monkeypatch.setenv("GPQA_PATH", str(gpqa))
    assert main(["--profile", "paper", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "memory is per GPU" in out
    # eval_benchmarks through vLLM on 8 GPUs: 0.9 x 80 GiB per GPU, 61.0 / 8 GiB of it weights
    assert "    memory:  72.0 GiB  vLLM on 8 GPUs (tensor parallel 8), per GPU 0.9 x 80 GiB: 7.6 GiB of weights" in out
    assert "    disk:    1.3 TiB  3 checkpoints, 427.2 GiB each" in out
    assert "at most 1.4 TiB at once (while 0.1 train full runs)" in out  # downloads and models + 3 checkpoints
    assert "note: stage eval_benchmarks needs" not in out
    assert "note: stage 0.1 train full needs about 101.6 GiB per GPU" in out


def test_memory_over_one_gpu_is_a_note_only_on_a_gpu_plan(tmp_path):
    roomy = profile_file(tmp_path, 'extends = "paper"\n[plan]\ngpu_memory_gib = 200\n')
    assert inputs._memory_notes(roomy) == []
    small = profile_file(tmp_path, 'extends = "paper"\n[plan]\ngpu_memory_gib = 40\n', "small.toml")
    flagged = {n.split(" needs")[0] for n in inputs._memory_notes(small)}
    # the evaluation through vLLM takes a share of each of the 8 GPUs, whatever their size; extraction does not fit
    assert "stage eval_benchmarks" not in flagged and "stage 2.0_extract_lora_activations" in flagged
    cpu = profile_file(tmp_path, 'extends = "paper"\n[plan]\ngpus = 0\n', "cpu.toml")
    assert inputs._memory_notes(cpu) == [] and estimates.memory_device(cpu) == "host RAM"


# ---- inputs a real run would miss ----------------------------------------------------------------------------

PLAN_DIMS = "[plan]\nlayers = 2\nhidden = 64\nintermediate = 128\nheads = 4\nkv_heads = 2\nvocab = 256\n"
HUB_PROFILE = f'model = "org/m"\ndataset = "synthetic"\n{PLAN_DIMS}'


def test_a_hub_model_missing_from_the_cache_is_a_problem_offline(tmp_path):
    prof = profile_file(tmp_path, HUB_PROFILE)
    problems, _ = check_profile(prof, env={"HF_HUB_OFFLINE": "1"})
    [problem] = problems
    assert problem.startswith("model 'org/m' is a hub id that is not in the Hugging Face cache")
    assert "`hf download org/m --local-dir DIR`" in problem and 'set model = "DIR"' in problem
    cached_model(tmp_path, "org/m")
    assert check_profile(prof, env={"HF_HUB_OFFLINE": "1"}) == ([], [])


def test_a_cached_model_with_a_missing_weight_shard_is_not_downloaded(tmp_path):
    snapshot = cached_model(tmp_path, "org/m", files=("config.json",))
    (snapshot / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (snapshot / "model-00001-of-00002.safetensors").write_text("")
    prof = profile_file(tmp_path, HUB_PROFILE)
    assert len(check_profile(prof, env={"HF_HUB_OFFLINE": "1"})[0]) == 1
    (snapshot / "model-00002-of-00002.safetensors").write_text("")
    assert check_profile(prof, env={"HF_HUB_OFFLINE": "1"})[0] == []


def test_a_hub_model_online_is_a_note_that_says_whether_the_hub_answers(tmp_path, monkeypatch, no_network):
    prof = profile_file(tmp_path, HUB_PROFILE)
    problems, notes = check_profile(prof, env={})
    assert problems == [] and no_network == [inputs.HUB_URL]
    assert notes[0].startswith("model 'org/m' is not downloaded (not in ") and "does not answer here" in notes[0]
    assert "stops at the first stage that reads it" in notes[0]
    reachable(monkeypatch)
    assert check_profile(prof, env={})[1][0].startswith("model 'org/m' is not downloaded yet: the first stage")


def test_hub_datasets_and_table_models_are_checked_too(tmp_path):
    prof = profile_file(tmp_path, 'model = "org/m"\ndataset = "org/data"\n[sae_lora]\nmodel = "org/other-{size}"\n'
                                  f'model_size = "7B"\n{PLAN_DIMS}')
    cached_model(tmp_path, "org/m")
    problems, _ = check_profile(prof, env={"HF_HUB_OFFLINE": "1"})
    assert len(problems) == 2
    assert "dataset 'org/data' is a hub id" in problems[0] and "hf download --repo-type dataset org/data" in problems[0]
    assert problems[1].startswith("[sae_lora] model 'org/other-7B' is a hub id")


def test_a_local_model_folder_without_weights_is_a_problem(tmp_path):
    folder = tmp_path / "Qwen2.5-32B-Instruct"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    prof = profile_file(tmp_path, f'model = "{folder}"\ndataset = "synthetic"\n{PLAN_DIMS}')
    [problem] = check_profile(prof, env={})[0]
    assert problem.startswith(f"model '{folder}' has no config.json or misses weight files")
    (folder / "model.safetensors").write_text("")
    assert check_profile(prof, env={})[0] == []


LLM_PROFILE = ('model = "random-qwen2"\ndataset = "synthetic"\n[autointerp]\nexplainer = "llm"\n'
               f'llm_base_url = "http://127.0.0.1:9/v1"\nllm_model = "m"\n{PLAN_DIMS}')


def test_an_llm_endpoint_that_does_not_answer_is_flagged_without_failing(tmp_path, monkeypatch, capsys, no_network):
    path = tmp_path / "llm.toml"
    path.write_text(LLM_PROFILE)
    problems, notes = check_profile(load_profile(str(path)), env={})
    assert problems == [] and no_network == ["http://127.0.0.1:9/v1/models"]  # asked once for both tables
    [note] = notes
    assert note.startswith("LLM endpoint http://127.0.0.1:9/v1 does not answer here (no answer (tests)): stages "
                           "2.2_run_lora_autointerp, 2.7_run_mlp_autointerp, 2.6_run_random_autointerp, "
                           "3.3.0_autointerp, 3.3.1_categorize fail")
    assert main(["--profile", str(path), "--dry-run"]) == 0
    assert "note: LLM endpoint http://127.0.0.1:9/v1 does not answer here" in capsys.readouterr().out
    reachable(monkeypatch)
    assert check_profile(load_profile(str(path)), env={}) == ([], [])


def test_the_probe_tells_an_answering_endpoint_from_a_closed_port():
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # answers 501 to all
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert REAL_PROBE(f"http://127.0.0.1:{server.server_port}/v1/models", timeout=5) is None
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    why = REAL_PROBE(f"http://127.0.0.1:{port}/v1/models", timeout=5)
    assert why is not None and why.startswith("no answer within 5 s")


def test_zero3_without_deepspeed_is_a_problem(tmp_path, monkeypatch):
    installed(monkeypatch)
    prof = profile_file(tmp_path, f'model = "random-qwen2"\ndataset = "synthetic"\n{PLAN_DIMS}gpus = 4\n')
    [problem] = check_profile(prof, env={})[0]
    assert problem.startswith("DeepSpeed is not installed, and training on [plan] gpus = 4 GPUs runs DeepSpeed ZeRO-3")
    assert check_profile(prof, env={"ENGINE": "ddp"})[0] == []  # torch DDP needs no DeepSpeed
    installed(monkeypatch, "deepspeed")
    assert check_profile(prof, env={})[0] == []
    [problem] = check_profile(prof, env={"DS_CONFIG": str(tmp_path / "nowhere.json")})[0]
    assert problem == f"DeepSpeed config {tmp_path / 'nowhere.json'} (DS_CONFIG): no such file"
    one = profile_file(tmp_path, f'model = "random-qwen2"\ndataset = "synthetic"\n{PLAN_DIMS}gpus = 1\n', "one.toml")
    installed(monkeypatch)
    assert check_profile(one, env={})[0] == []


def test_a_vllm_backend_without_vllm_is_a_problem(tmp_path, monkeypatch):
    installed(monkeypatch)
    prof = profile_file(tmp_path, 'model = "random-qwen2"\ndataset = "synthetic"\n[eval]\nbackend = "vllm"\n'
                                  f'[rollouts]\nbackend = "vllm"\n{PLAN_DIMS}')
    problems = check_profile(prof, env={})[0]
    assert [p.split(" but")[0] for p in problems] == ['[eval] backend = "vllm"', '[rollouts] backend = "vllm"']
    assert all("bash setup.sh --gpu" in p and 'set backend = "hf"' in p for p in problems)
    installed(monkeypatch, "vllm")
    assert check_profile(prof, env={})[0] == []


def test_the_profiles_gpqa_path_counts_and_must_exist(tmp_path):
    csv = tmp_path / "gpqa.csv"
    prof = profile_file(tmp_path, f'model = "random-qwen2"\ndataset = "synthetic"\n[eval]\nbenchmarks = "gpqa"\n'
                                  f'gpqa_path = "{csv}"\n{PLAN_DIMS}')
    assert check_profile(prof, env={})[0] == [f"GPQA CSV {csv}: no such file (GPQA_PATH or [eval] gpqa_path)"]
    csv.write_text("Question\n")
    assert check_profile(prof, env={})[0] == []


def test_vllm_generation_plan_of_the_paper_profile_by_hand():
    """[eval] on vLLM: 8 GPUs, tensor parallel 8, 0.9 x 80 GiB each: an eighth of the bf16 weights, the rest a paged
    KV cache holding 1 of the 8 kv heads of every position: 2 x 64 layers x 1 x 128 x 2 B = 32 KiB per token."""
    paper = load_profile("paper")
    (part,) = estimates._eval_memory(paper)
    own = int(0.9 * 80 * GIB)
    weights = P32 * 2 // 8
    context = 512 + 8192 + 16 + 512  # prompt_tokens + think + the forced answer tag + answer
    assert KV_TOKEN32 // 8 == 32 * 1024
    fits = (own - weights) // (32 * 1024 * context)
    assert part.size == own and fits == 228
    assert part.what.startswith("vLLM on 8 GPUs (tensor parallel 8), per GPU 0.9 x 80 GiB: 7.6 GiB of weights and "
                                "64.4 GiB of paged KV cache at 32 KiB per token (1 of 8 kv heads): 228 sequences of "
                                "9232 tokens decode at once")
    assert estimates.DEVICES["eval"](paper).startswith("8 GPUs through vLLM (tensor parallel 8)")
    # 4 GPUs of a model with 2 kv heads: each GPU holds ceil(2 / 4) = 1 of them (vLLM replicates); batch 64 waits
    plan = {**pipeline.plan_values(paper), "kv_heads": 2}
    small = estimates.vllm_plan(plan, 2, 64, 100, 10, 0.5, 4, 50)
    per_token = 2 * 64 * 1 * 128 * 2
    n = (int(0.5 * 80 * GIB) - estimates.model_params(plan) * 2 // 4) // (per_token * (50 + 100 + 16 + 10))
    assert f"{n} sequences of 176 tokens" in small.what and "(1 of 2 kv heads)" in small.what
    assert small.size == int(0.5 * 80 * GIB)
    # one GPU, 0.5 x 80 GiB < the 61 GiB of weights: no sequence fits, and the size is the GPU it would need
    alone = estimates.vllm_plan(pipeline.plan_values(paper), 2, 8, 8192, 512, 0.5, 1, 512)
    assert "0 sequences" in alone.what and alone.size > 80 * GIB
    assert alone.size == int((P32 * 2 + KV_TOKEN32 * context) / 0.5) + 1
