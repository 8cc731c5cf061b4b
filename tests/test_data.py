import json

import pytest
import torch

from rank1.data import (
    IGNORE_INDEX,
    PadCollator,
    TokenizedDataset,
    assistant_text,
    load_reasoning_records,
    read_jsonl,
    tokenize_record,
)

REC = {"question": "What is 23 + 48?", "deepseek_thinking_trajectory": "3 + 8 = 11, carry 1.\n2 + 4 + 1 = 7.",
       "deepseek_attempt": "71"}


def test_assistant_text_prepends_answer_once():
    assert assistant_text(" t ", "71") == "<|im_start|>think\nt\n<|im_start|>answer\nAnswer: 71"
    assert assistant_text("t", "Answer: 71").count("Answer:") == 1
    # s1's rule: no prefix where "Answer:" is anywhere in the attempt (a write-up's "Final Answer:", stage 5's
    # marker line), so the first token of the answer phase is the attempt's own
    writeup = "We add 3 and 4.\n\n**Final Answer:** \\boxed{7}"
    assert assistant_text("t", writeup).endswith("<|im_start|>answer\n" + writeup)
    assert assistant_text("t", "Product: 56. Answer: 56").endswith("<|im_start|>answer\nProduct: 56. Answer: 56")
    assert assistant_text("t", "**Final Answer**\n\\boxed{7}").endswith("answer\nAnswer: **Final Answer**\n\\boxed{7}")


@pytest.mark.parametrize("tok_fixture", ["smol_tok", "tiny_tok"])
def test_loss_mask_boundary_on_real_tokenization(tok_fixture, request):
    tok = request.getfixturevalue(tok_fixture)
    item = tokenize_record(tok, REC)
    ids, labels = item["input_ids"], item["labels"]
    first = next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)
    # everything before the boundary is masked, everything after is trained on
    assert all(lab == IGNORE_INDEX for lab in labels[:first])
    assert labels[first:] == ids[first:]
    # the masked part ends with "<|im_start|>assistant\n"; the trained part is the s1 turn + end of turn
    assert tok.decode(ids[:first]).endswith("<|im_start|>assistant\n")
    assert tok.convert_ids_to_tokens(ids[first]) == "<|im_start|>"
    assert tok.decode(ids[first:]) == assistant_text(REC["deepseek_thinking_trajectory"], "71") + "<|im_end|>\n"


def test_truncation_and_no_assistant_tokens(tiny_tok):
    full = len(tokenize_record(tiny_tok, REC)["input_ids"])
    ds = TokenizedDataset(tiny_tok, [REC, REC], block_size=full - 5)
    assert ds.truncated == 2 and len(ds[0]["input_ids"]) == full - 5
    with pytest.raises(ValueError, match="no assistant tokens"):
        TokenizedDataset(tiny_tok, [REC], block_size=10)


def test_collator_masks_padding_even_when_pad_is_eos():
    eos = 7
    batch = PadCollator(pad_token_id=eos)([{"input_ids": [1, 2, eos], "labels": [-100, 2, eos]},
                                           {"input_ids": [1], "labels": [-100]}])
    assert batch["labels"].tolist() == [[-100, 2, eos], [-100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["input_ids"].dtype == torch.long


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_reasoning_records(str(tmp_path / "nope.jsonl"))


def test_malformed_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(REC) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        read_jsonl(path)


def test_record_without_required_fields(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "q", "deepseek_attempt": "1"}) + "\n")
    with pytest.raises(ValueError, match="deepseek_thinking_trajectory"):
        load_reasoning_records(str(path))


def test_parquet_file_and_downloaded_folder(tmp_path):
    import datasets
    path = tmp_path / "s1K-1.1" / "data" / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    datasets.Dataset.from_list([REC, {**REC, "question": "q2"}]).to_parquet(str(path))
    assert [r["question"] for r in load_reasoning_records(str(path))] == [REC["question"], "q2"]
    assert [r["question"] for r in load_reasoning_records(str(tmp_path / "s1K-1.1"))] == [REC["question"], "q2"]


def test_hub_dataset_offline_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(OSError, match="could not load dataset 'simplescaling/s1K-1.1'.*--dataset PATH"):
        load_reasoning_records("simplescaling/s1K-1.1")
