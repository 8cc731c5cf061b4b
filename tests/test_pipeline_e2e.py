"""End-to-end on the embedded SmolLM2 model (minutes): select with `pytest -m slow`."""

import os
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
