"""End-to-end on the embedded SmolLM2 model and the whole main job on the test profile (minutes): select with
`pytest -m slow`."""

import os
import shutil
import subprocess
import sys

import pytest

from rank1 import constants as K
from rank1.artifacts import read_json
from rank1.config import REPO_ROOT, results_dir, run_dir
from rank1.lora import verify_adapter


@pytest.mark.slow
def test_tiny_pipeline_short(isolated_root):
    for extra in ([], ["--full", "--full_max_steps", "2"]):
        subprocess.run(["bash", "0_train_lora.sh", "--profile", "tiny", "--max_steps", "6", "--save_steps", "3",
                        *extra], cwd=REPO_ROOT, check=True, env={"PYTHON": sys.executable, **os.environ})
    folder = run_dir("tiny-r1-all")
    assert verify_adapter(folder / K.ADAPTER_DIR, list(range(30)), rank=1) == 210
    subprocess.run([sys.executable, "s1_peft/eval_benchmarks.py", "--profile", "tiny", "--limit", "4",
                    "--think_tokens", "24", "--answer_tokens", "4"], cwd=REPO_ROOT, check=True)
    summary = read_json(results_dir("tiny", "eval", "tiny-r1-all") / K.RECOVERY_JSON)
    assert summary["benchmarks"] == ["heldout", "math500"] and len(summary["variants"]) == 5
    assert summary["accuracy"]["lora"]["heldout"]["n"] == 4
    assert list(isolated_root.glob("logs/train-tiny-*.log"))


@pytest.mark.slow
def test_tiny_stage2_short(isolated_root):
    from rank1.config import results_dir
    from rank1.store import Store
    from rank1.topk import TopKResult

    subprocess.run(["bash", "0_train_lora.sh", "--profile", "tiny", "--max_steps", "2"], cwd=REPO_ROOT, check=True)
    stage = "2_lora_activation_interp"
    for script, extra in (("2.0_extract_lora_activations.py", ["--max_tokens", "1500"]),
                          ("2.1_precompute_lora_topk.py", ["--k", "10"]),
                          ("2.3_lora_activation_dashboard.py", []),
                          ("2.4_extract_mlp_activations.py", ["--max_tokens", "1500"]),
                          ("2.5_precompute_mlp_topk.py", ["--k", "10"]),
                          ("2.2_run_lora_autointerp.py", []), ("2.7_run_mlp_autointerp.py", []),
                          ("2.3_analyze_lora_interpretability.py", ["--n_resamples", "500"]),
                          ("2.8_compare_lora_mlp.py", ["--n_resamples", "500"])):
        subprocess.run([sys.executable, f"{stage}/{script}", "--profile", "tiny", *extra], cwd=REPO_ROOT, check=True)
    lora = Store.open(results_dir("tiny", "lora_activations", "tiny-r1-all"))
    mlp = Store.open(results_dir("tiny", "mlp_activations", "tiny-r1-all"))
    assert len(lora.sites) == len(mlp.sites) == 210 and lora.n_tokens == mlp.n_tokens >= 1500
    for kind in ("lora", "mlp"):
        res = TopKResult.load(results_dir("tiny", f"{kind}_topk", "tiny-r1-all"))
        assert len(res.features) == 420 and res.tensors["top_index_FK"].shape == (420, 10)
    assert (results_dir("tiny", "lora_dashboard", "tiny-r1-all") / "data" / "layer_029.js").is_file()
    for kind in ("lora", "mlp"):
        lines = (results_dir("tiny", f"{kind}_autointerp", "tiny-r1-all") / K.AUTOINTERP_RESULTS).read_text()
        assert len(lines.splitlines()) == 420
    comp = read_json(results_dir("tiny", K.COMPARE_STAGE, "tiny-r1-all") / K.COMPARE_JSON)
    assert comp["classes"]["lora"]["n"] > 0 and comp["chi_square"]["dof"] >= 1
    assert (results_dir("tiny", K.COMPARE_STAGE, "tiny-r1-all") / f"{K.FIGURE2_STEM}.pdf").is_file()


@pytest.mark.slow
def test_tiny_stage3_short_with_a_killed_sae_training(isolated_root):
    import json
    import signal
    import time

    import torch
    from safetensors.torch import load_file

    from rank1.sae.features import load_features

    subprocess.run(["bash", "0_train_lora.sh", "--profile", "tiny", "--max_steps", "2"], cwd=REPO_ROOT, check=True)
    subprocess.run([sys.executable, "2_lora_activation_interp/2.0_extract_lora_activations.py", "--profile", "tiny",
                    "--max_tokens", "3000"], cwd=REPO_ROOT, check=True)
    stage = "3_lora_sae"
    train = [sys.executable, f"{stage}/3.0_train_sae.py", "--profile", "tiny", "--epochs", "20", "--batch_size", "64",
             "--checkpoint_every", "20", "--loss_gap_tokens", "256"]
    folder = results_dir("tiny", K.SAE_STAGE, "tiny-r1-all")
    proc = subprocess.Popen(train, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and not list(folder.glob(f"{K.CHECKPOINTS_DIR}/*/{K.CHECKPOINT_DONE}")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (folder / K.CONFIG_JSON).exists()
    subprocess.run(train, cwd=REPO_ROOT, check=True)
    subprocess.run([*train, "--out", str(isolated_root / "uninterrupted")], cwd=REPO_ROOT, check=True)
    a, b = (load_file(str(f / "sae_weights.safetensors")) for f in (folder, isolated_root / "uninterrupted"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    for script in ("3.1_collect_sae_features.py", "3.2_generate_sae_dashboard.py"):
        subprocess.run([sys.executable, f"{stage}/{script}", "--profile", "tiny"], cwd=REPO_ROOT, check=True)
    res, _ = load_features(results_dir("tiny", K.SAE_FEATURES_STAGE, "tiny-r1-all"))
    interp = results_dir("tiny", K.SAE_AUTOINTERP_STAGE, "tiny-r1-all")
    for script in ("3.3.0_autointerp.py", "3.3.1_categorize.py"):
        subprocess.run([sys.executable, f"{stage}/3.3_autointerp/{script}", "--profile", "tiny"], cwd=REPO_ROOT,
                       check=True)
    assert len((interp / K.AUTOINTERP_RESULTS).read_text().splitlines()) == len(res.features)
    assert json.loads((interp / K.CATEGORIES_JSON).read_text())["features"]
    for script in ("3.3.2_compute_activation_densities.py", "3.3.3_create_donut_fig.py"):
        subprocess.run([sys.executable, f"{stage}/3.3_autointerp/{script}", "--profile", "tiny"], cwd=REPO_ROOT,
                       check=True)
    assert (interp / f"{K.FIGURE3_STEM}.png").is_file()
    assert (results_dir("tiny", K.SAE_DASHBOARD_STAGE, "tiny-r1-all") / "data" / "feat_0000.js").is_file()


@pytest.mark.slow
def test_whole_pipeline_on_the_test_profile_then_the_report(isolated_root):
    """run_all.sh on the 2-layer random Qwen2, every stage; the report lists every artifact and misses none."""
    from rank1.pipeline import stages
    from rank1.report import NA, ReportConfig, build_report

    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("GPQA_PATH", None)
    subprocess.run(["bash", "run_all.sh", "--profile", "test"], cwd=REPO_ROOT, check=True, env=env)
    times = (isolated_root / "logs" / "run_all-test-times.tsv").read_text()
    assert all(f"\t{st.name}\t" in times for st in stages())
    assert (isolated_root / "reports" / "test" / "REPORT.md").is_file()
    rep = build_report(ReportConfig(profile="test"))
    assert rep.run == "test-r1-all" and len(rep.folders) >= 20
    assert rep.artifacts() and all(p.is_file() for p in rep.artifacts())
    assert not [c for c in rep.claims if c.ours.startswith("missing")]
    assert all(c.verdict != NA for c in rep.claims if c.section.startswith("largest-KL"))
    # LoRA vs. MLP is rated by the lexicon explainer here: n/a with its numbers; the random control is decided
    mono = {c.item: c for c in rep.claims if c.section.startswith("LoRA directions")}
    assert mono["monosemantic share, LoRA vs. MLP"].verdict == NA and "lexicon" in mono[
        "monosemantic share, LoRA vs. MLP"].ours
    assert mono["monosemantic sites, LoRA vs. random directions (control)"].verdict != NA
    assert {f.stage for f in rep.folders} >= {"eval", "ablations", "lora_vs_mlp", "sae", "steering", "probes"}
    assert all(t.latest is not None for t in rep.times)
    # 6.0: the feature pages, their Neuronpedia export in the documented schema, and the model cards
    from rank1.dashboard import read_data_file
    from rank1.data import read_jsonl
    from rank1.report.neuronpedia import validate_export
    from rank1.topk import TopKResult

    pages = results_dir("test", "feature_pages", "test-r1-all")
    assert (pages / K.DASHBOARD_INDEX).is_file()
    # the pages folder records the run it was built from, as every stage folder does
    ident = next(f.identity for f in rep.folders if f.stage == "ablations")
    assert next(f.identity for f in rep.folders if f.stage == "feature_pages") == ident is not None
    page = read_data_file(pages, "a_L001_down_proj")  # a page's numbers are the artifacts' numbers
    abl = read_json(results_dir("test", K.ABLATION_STAGE, "test-r1-all") / K.ABLATION_JSON)["adapter"]
    kl = abl["kl"]["mean"][abl["projections"].index("down_proj")][abl["layers"].index(1)]
    assert page["does"]["ablation"]["kl"] == float(f"{kl:.4g}")
    topk = TopKResult.load(results_dir("test", "lora_topk", "test-r1-all"))
    feat = next(f for f in topk.features if f["name"] == "L1_down_proj_negative")
    assert page["polarities"]["negative"]["n_active"] == feat["n_active"]
    records = read_jsonl(results_dir("test", "lora_autointerp", "test-r1-all") / K.AUTOINTERP_RESULTS)
    rec = next(r for r in records if r["name"] == "L1_down_proj_negative")
    assert page["polarities"]["negative"]["explained"].get("explanation") == (
        rec["explanation"] if rec["status"] == "ok" else None)
    assert page["writes"]["lens"]["positive"]["promotes"]  # a residual writer has its logit lens
    for kind in ("adapter", "latent"):
        export = pages / "neuronpedia" / kind
        assert list(export.glob("*/*/features/batch-0.jsonl.gz")), kind
        assert validate_export(export) == [], kind
    assert "library_name: \"peft\"" in (run_dir("test-r1-all") / K.ADAPTER_DIR / "README.md").read_text()
    assert (results_dir("test", K.SAE_STAGE, "test-r1-all") / "README.md").is_file()


@pytest.mark.slow
def test_whole_pipeline_on_a_profile_given_by_a_relative_path(isolated_root, tmp_path):
    """run_all.sh --profile custom.toml, a copy of the test profile given relative to another working directory:
    every stage reads that file (none looks it up by its name), and runs, logs and the report are called custom."""
    from rank1.pipeline import stages

    shutil.copy(REPO_ROOT / "configs" / "profiles" / "test.toml", tmp_path / "custom.toml")
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("GPQA_PATH", None)
    subprocess.run(["bash", str(REPO_ROOT / "run_all.sh"), "--profile", "custom.toml"], cwd=tmp_path, check=True,
                   env=env)
    times = (isolated_root / "logs" / "run_all-custom-times.tsv").read_text()
    assert all(f"\t{st.name}\t" in times for st in stages())
    assert (isolated_root / "reports" / "custom" / "REPORT.md").is_file()
    assert list((isolated_root / "logs").glob("train-custom-*.log"))
    assert (run_dir("custom-r1-all") / K.ADAPTER_DIR).is_dir()
    assert not (isolated_root / "results" / "test").exists() and not (isolated_root / "data" / "test").exists()
