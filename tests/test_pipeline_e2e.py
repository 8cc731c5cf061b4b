"""End-to-end on the embedded SmolLM2 model (minutes): select with `pytest -m slow`."""

import subprocess
import sys

import pytest

from rank1 import constants as K
from rank1.artifacts import read_json
from rank1.config import REPO_ROOT, run_dir
from rank1.lora import verify_adapter


@pytest.mark.slow
def test_tiny_pipeline_short(isolated_root):
    subprocess.run(["bash", "0_train_lora.sh", "--profile", "tiny", "--max_steps", "6", "--save_steps", "3"],
                   cwd=REPO_ROOT, check=True)
    folder = run_dir("tiny-r1-all")
    assert verify_adapter(folder / K.ADAPTER_DIR, list(range(30)), rank=1) == 210
    subprocess.run([sys.executable, "s1_peft/eval_heldout.py", "--profile", "tiny", "--n", "8",
                    "--max_new_tokens", "24"], cwd=REPO_ROOT, check=True)
    report = read_json(folder / K.EVAL_JSON)
    assert report["n"] == 8 and report["trained"]["loss"] < report["base"]["loss"]
    assert list(isolated_root.glob("logs/train-tiny-*.log"))
