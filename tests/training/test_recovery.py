"""Recovery over training seeds: the two-level bootstrap and what its CI covers, by hand; the tables reading
two seeds and the equal-budget full finetune from constructed generation files; the replicate runs the
evaluation finds (no training, no generation)."""

import json
import logging

import numpy as np
import pytest

from helpers import make_run
from rank1 import constants as K
from rank1.config import config_from_profile, run_dir, runs_dir
from rank1.stats import paired_recovery
from rank1.training.config import EvalConfig
from rank1.training.evaluate import generations_path, write_jsonl
from rank1.training.recovery import (
    ci_covers,
    markdown_tables,
    replicate_folders,
    seed_groups,
    summarize,
    two_level_recovery,
)
from rank1.training.stage import resolve_variants


def test_ci_covers_says_problems_only_for_one_seed_and_seeds_otherwise():
    assert ci_covers(1, 1) == "problems only (1 seed)"
    assert ci_covers(3, 3) == "seeds and problems (3 seeds)"
    assert ci_covers(2, 1) == "seeds and problems (2 seeds; full finetune 1)"


def test_two_level_bootstrap_by_hand():
    base, full = np.zeros(5), np.ones((1, 5))
    # seed a solves every problem, seed b none: problems do not vary within a seed, seeds do
    lora = np.stack([np.ones(5), np.zeros(5)])
    est = two_level_recovery(lora, base, full, n_resamples=4000)
    # point (mean over seeds 0.5 - 0) / (1 - 0); resampled seeds {a,a} 1, {a,b} 0.5, {b,b} 0 (1/4, 1/2, 1/4)
    assert est.value == pytest.approx(0.5) and (est.lo, est.hi) == (0.0, 1.0) and est.n == 5
    one = two_level_recovery(lora[:1], base, full, n_resamples=4000)  # seed a alone: problems only, no spread
    assert (one.value, one.lo, one.hi) == (1.0, 1.0, 1.0)
    # one seed of each: exactly the problem-paired bootstrap of before
    rng = np.random.default_rng(1)
    v, b, f = (rng.integers(0, 2, 12).astype(float) for _ in range(3))
    assert two_level_recovery(v[None], b, f[None], n_resamples=300) == paired_recovery(v, b, f, 300)
    # the full finetune's seeds are resampled too: full 1 or 0.5 by seed, lora 0.5
    est = two_level_recovery(np.full((1, 4), 0.5), np.zeros(4), np.stack([np.ones(4), np.full(4, 0.5)]),
                             n_resamples=4000)
    # full {1,1} -> 0.5, {1,.5} -> 2/3, {.5,.5} -> 1; point 0.5 / 0.75
    assert est.value == pytest.approx(2 / 3) and est.lo == pytest.approx(0.5) and est.hi == pytest.approx(1.0)
    with pytest.raises(ValueError, match="the same problems everywhere"):
        two_level_recovery(np.ones((2, 3)), np.zeros(4), np.ones((1, 4)))


def _grades(folder, grades, bench="aime24"):
    for v, g in grades.items():
        write_jsonl(generations_path(folder, v, bench), [
            {"id": str(i), "correct": bool(c), "answer": "", "think_budget_hit": False, "think_tokens": 3}
            for i, c in enumerate(g)])


def test_the_tables_read_two_seeds_and_the_equal_budget_full_finetune(tmp_path):
    _grades(tmp_path, {"base": [0, 0, 0, 0], "lora": [1, 1, 0, 0], "lora-seed1": [1, 1, 1, 1],
                       "full": [1, 1, 1, 1], "full-seed1": [1, 1, 1, 0], "mlp_ablated": [0, 0, 1, 0],
                       "full_equal": [1, 1, 0, 0]})
    variants = ["base", "lora", "full", "mlp_ablated", "lora-seed1", "full-seed1", "full_equal"]
    assert seed_groups(variants) == {"base": ["base"], "lora": ["lora", "lora-seed1"], "full": ["full", "full-seed1"],
                                     "mlp_ablated": ["mlp_ablated"], "full_equal": ["full_equal"]}
    s = summarize(tmp_path, variants, ["aime24"], n_resamples=500)
    lora = s["recovery"]["lora"]["aime24"]
    # lora (0.5 + 1) / 2 = 0.75, full (1 + 0.75) / 2 = 0.875, base 0
    assert lora["value"] == pytest.approx(0.75 / 0.875)
    assert lora["ci_covers"] == "seeds and problems (2 seeds)" and lora["n_seeds"] == lora["n_full_seeds"] == 2
    mlp = s["recovery"]["mlp_ablated"]["aime24"]
    assert mlp["value"] == pytest.approx(0.25 / 0.875) and mlp["ci_covers"] == "seeds and problems (1 seeds; " \
                                                                               "full finetune 2)"
    equal = s["recovery_equal_budget"]["lora"]["aime24"]  # against the equal-budget finetune's 0.5
    assert equal["value"] == pytest.approx(0.75 / 0.5) and equal["ci_covers"] == "seeds and problems (2 seeds; " \
                                                                                 "full finetune 1)"
    assert set(s["recovery"]) == {"lora", "mlp_ablated"}  # seeds and denominators are not rows
    md = markdown_tables(s, "t")
    assert "| recovery (ours) | CI over | recovery vs. the equal-budget full finetune |" in md
    # the equal-budget finetune, 2 of 4 solved, is not apart from the base: its recovery reads n/a, number kept
    assert f"| {100 * 0.75 / 0.875:.1f} [" in md and "| seeds and problems (2 seeds) | n/a (150.0 [" in md
    assert "- rank-1 LoRA: AIME'24 lora 50.0 [" in md and "lora-seed1 100.0 [" in md
    json.dumps(s)  # the summary is JSON as written
    one = summarize(tmp_path, ["base", "lora", "full"], ["aime24"], n_resamples=200)
    assert one["recovery"]["lora"]["aime24"]["ci_covers"] == "problems only (1 seed)"
    assert one["recovery_equal_budget"] is None and "equal-budget" not in markdown_tables(one, "t")


def test_recovery_reads_n_a_where_the_full_finetunes_gain_is_within_noise(tmp_path):
    # MATH500 on the embedded model: the full finetune solves 1 of 30, base and LoRA none. Accuracy CIs: base
    # [0, 0], full [0, 10%]: they overlap, so the denominator (full - base) may be 0
    _grades(tmp_path, {"base": [0] * 30, "lora": [0] * 30, "full": [1] + [0] * 29, "mlp_ablated": [1] + [0] * 29})
    s = summarize(tmp_path, ["base", "lora", "full", "mlp_ablated"], ["aime24"], n_resamples=500)
    assert s["accuracy"]["full"]["aime24"]["lo"] == 0.0 == s["accuracy"]["base"]["aime24"]["hi"]
    assert s["recovery"]["lora"]["aime24"]["value"] == 0.0  # computed and kept in the JSON
    md = markdown_tables(s, "t")
    assert "| n/a (0.0 [0.0, 0.0]) | problems only (1 seed) |" in md  # Table 1, the number still shown
    # Table 2: MLP-ablated solves the one problem full solves, a degenerate 100% [100, 100] that is not read
    assert "| LoRA, MLP adapters ablated | 3.3 [0.0, 13.3] | n/a (100.0 [100.0, 100.0]) |" in md
    assert md.count("n/a: the full finetune's accuracy CI overlaps the base's") == 1
    # a measurable gain (full 20 of 30 against none) is read as before, and the note is not printed
    _grades(tmp_path, {"full": [1] * 20 + [0] * 10, "lora": [1] * 10 + [0] * 20})
    md = markdown_tables(summarize(tmp_path, ["base", "lora", "full"], ["aime24"], n_resamples=500), "t")
    assert "| 50.0 [" in md and "n/a" not in md


def _full_run(path, finished=True):
    (path / (K.FULL_MODEL_DIR if finished else "checkpoint-1")).mkdir(parents=True)
    (path / K.CONFIG_JSON).write_text(json.dumps({"profile": "test", "model_id": "random-qwen2"}))


def test_the_evaluation_finds_the_replicates_one_folder_down(caplog):
    make_run("t")
    make_run("replicates/t-seed1")
    make_run("replicates/tt-seed1")  # another run's replicate
    _full_run(run_dir("f", full=True))
    for name, done in (("f-seed2", True), ("f-equal", True), ("f-equal-seed1", True), ("f-seed3", False)):
        _full_run(runs_dir(True) / "replicates" / name, done)
    assert list(replicate_folders("f", True)) == ["-seed2", "-seed3", "-equal", "-equal-seed1"]
    cfg = config_from_profile(EvalConfig, "eval", "test", run="t", full_run="f")
    with caplog.at_level(logging.WARNING):
        names = [v.name for v in resolve_variants(cfg)]
    assert names == ["base", "lora", "full", "mlp_ablated", "attn_ablated", "lora-seed1", "full-seed2",
                     "full_equal", "full_equal-seed1"]
    assert "f-seed3 left out of the recovery tables" in caplog.text  # unfinished: named, not silently dropped
    variants = {v.name: v for v in resolve_variants(cfg)}
    assert variants["lora-seed1"].mode == "adapter_on" and variants["lora-seed1"].run.name == "t-seed1"
    assert variants["full_equal"].mode == "model"
    # the newest run of the profile, which later stages read by default, is never a replicate
    from rank1.runs import latest_run
    assert latest_run("test").name == "t" and latest_run("test", full=True).name == "f"
