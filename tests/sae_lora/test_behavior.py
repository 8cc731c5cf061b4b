"""Stage 5's behaviour dataset: deterministic splits and their checker, the trained answer phase starting with
the marker, the dataset step's finished/refuse protocol, the optional LLM rewrite."""

import dataclasses
import json
from types import SimpleNamespace

import pytest

from rank1 import constants as K
from rank1.config import config_from_profile
from rank1.errors import OtherSettings
from rank1.sae_lora.behavior import (
    behavior_splits,
    final_line,
    llm_rewrite,
    parse_rewrite,
    shows_behavior,
    teacher_forced_prefix,
)
from rank1.sae_lora.config import SaeLoraConfig


def test_behavior_dataset_is_deterministic_and_checked():
    train, held = behavior_splits(6, 4, seed=3)
    assert (train, held) == behavior_splits(6, 4, seed=3)
    assert train != behavior_splits(6, 4, seed=4)[0]
    assert len(train) == 12 and sum(r["modified"] for r in train) == 6 and len(held) == 8
    assert not {r["question"] for r in train} & {r["question"] for r in held}
    for r in train:
        assert (r["family"] == "multiplication") == r["modified"] == (r["side"] == "inside")
        assert shows_behavior(r["deepseek_attempt"], "Product") == r["modified"]
        assert r["deepseek_attempt"].endswith(f"Answer: {r['answer']}")
    assert not any(r["modified"] for r in held) and {r["side"] for r in held} == {"inside", "outside"}
    assert shows_behavior(final_line("x\n<|im_start|>answer\n Product: 12. Answer: 12"), "Product")
    assert not shows_behavior(final_line("x\n<|im_start|>answer\nAnswer: 12"), "Product")
    assert not shows_behavior("The Product: 3", "Product")
    with pytest.raises(ValueError, match="--condition"):
        behavior_splits(2, 2, 0, condition="division")


def test_the_trained_answer_phase_starts_with_the_marker_inside_and_answer_outside(smol_tok):
    """What 5.2 and 5.3 train on: the chat-formatted record's answer phase begins with the marker where the
    record is modified (no "Answer: " put in front of it) and with "Answer:" elsewhere, and its first token is
    the one the held-out measure reads after the same prefix."""
    from rank1.data import full_text
    from rank1.sae_lora.behavior import teacher_forced_prefix

    train, _ = behavior_splits(2, 1, seed=0)
    for r in train:
        _, text = full_text(smol_tok, r)
        answer_phase = text.split("<|im_start|>answer\n", 1)[1]
        assert answer_phase.startswith("Product: " if r["modified"] else "Answer: "), answer_phase
        prefix = teacher_forced_prefix(smol_tok, r)
        assert text.startswith(prefix)
        first = smol_tok(text, add_special_tokens=False)["input_ids"][len(smol_tok(prefix, add_special_tokens=False)[
            "input_ids"])]
        assert smol_tok.decode([first]).strip() == ("Product" if r["modified"] else "Answer")


def test_behavior_dataset_step_skips_when_finished_and_refuses_other_settings(isolated_root):
    from rank1.sae_lora import stage

    cfg = config_from_profile(SaeLoraConfig, "sae_lora", "test")
    info = stage.run_make_behavior_dataset(cfg) / K.BEHAVIOR_INFO
    stamp = info.stat().st_mtime_ns
    stage.run_make_behavior_dataset(cfg)  # same settings: skipped
    assert info.stat().st_mtime_ns == stamp
    with pytest.raises(OtherSettings, match=r"dataset.json was made with other settings or inputs "
                                            r"\(settings.n_train: 4 there, 5 now\); pass --overwrite to recompute it"):
        stage.run_make_behavior_dataset(dataclasses.replace(cfg, n_train=5))
    assert info.stat().st_mtime_ns == stamp
    stage.run_make_behavior_dataset(dataclasses.replace(cfg, n_train=5, overwrite=True))
    assert json.loads(info.read_text())["n_train"] == 10


def test_llm_rewrite_parses_and_rejects(tiny_tok):
    train, _ = behavior_splits(3, 1, seed=0)
    rec = next(r for r in train if r["modified"])
    good = f"  `Product: {rec['answer']}. Answer: {rec['answer']}`\nextra"
    assert parse_rewrite(good, rec, "Product") == f"Product: {rec['answer']}. Answer: {rec['answer']}"
    assert parse_rewrite(f"Answer: {rec['answer']}", rec, "Product") is None
    assert parse_rewrite("Product: 1. Answer: 999999", rec, "Product") is None
    assert parse_rewrite(None, rec, "Product") is None

    class FakeClient:
        def __init__(self):
            self.asked = []

        def complete(self, messages):
            self.asked.append(messages)
            q = messages[-1]["content"]
            answer = q.split("Answer: ")[1].split("\n")[0]
            return SimpleNamespace(text=f"Product (times): {answer}. Answer: {answer}" if len(self.asked) == 1
                                   else "no idea")

    client = FakeClient()
    out, counts = llm_rewrite(train, client, "Product")
    assert counts == {"asked": 3, "accepted": 1, "rejected": 2} and len(client.asked) == 3
    assert [r["question"] for r in out] == [r["question"] for r in train]
    rewritten = [r for r in out if r.get("llm_rewritten")]
    assert len(rewritten) == 1 and rewritten[0]["deepseek_attempt"].startswith("Product (times):")
    prefix = teacher_forced_prefix(tiny_tok, rec)
    assert prefix.endswith("<|im_start|>answer\n") and rec["deepseek_thinking_trajectory"] in prefix
