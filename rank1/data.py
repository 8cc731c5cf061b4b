"""Reasoning data in the s1 format: loading, chat formatting, tokenization with the loss mask.

A record has the s1K-1.1 fields ``question``, ``deepseek_thinking_trajectory`` and
``deepseek_attempt`` (``solution`` optional). The assistant turn is
``<|im_start|>think\\n{trace}\\n<|im_start|>answer\\nAnswer: {attempt}``, rendered with the model's
own chat template; the loss covers everything after ``<|im_start|>assistant\\n``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from rank1.batching import pad_items
from rank1.constants import ANSWER_PREFIX, ANSWER_TAG, IGNORE_INDEX, THINK_TAG

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("question", "deepseek_thinking_trajectory", "deepseek_attempt")
S1K_HUB_ID = "simplescaling/s1K-1.1"


# ---------------------------------------------------------------- loading


def iter_jsonl(path: str | os.PathLike, what: str = "data file") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of each non-blank line of a JSONL file; a malformed line raises a
    ValueError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg}); "
                                 f"each line must be one JSON object") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            yield lineno, rec


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSONL file (see :func:`iter_jsonl`)."""
    return [rec for _, rec in iter_jsonl(path)]


def validate_records(records: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    if not records:
        raise ValueError(f"{source}: no records")
    for i, rec in enumerate(records):
        missing = [k for k in REQUIRED_FIELDS if not isinstance(rec.get(k), str) or not rec[k]]
        if missing:
            raise ValueError(f"{source}: record {i} lacks non-empty string field(s) {missing}; "
                             f"s1-format records need {list(REQUIRED_FIELDS)}")
    return records


def load_reasoning_records(source: str) -> list[dict[str, Any]]:
    """Load s1-format records from a ``.jsonl``/``.json``/``.parquet`` file, a dataset folder
    downloaded from the hub, or a hub dataset id."""
    path = Path(source)
    if path.suffix not in (".jsonl", ".json", ".parquet") and not path.exists():
        try:
            return validate_records(_hf_records(source), source)
        except Exception as e:  # datasets raises several types when offline
            raise OSError(
                f"could not load dataset {source!r} from the hub ({e.__class__.__name__}). "
                f"On a machine with internet run `hf download --repo-type dataset {source} "
                f"--local-dir DIR` and set dataset = \"DIR\" in the profile "
                f"(or pass --dataset PATH).") from None
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist; check `dataset` in your "
                                f"profile or --dataset")
    if path.suffix == ".jsonl":
        records = read_jsonl(path)
    elif path.suffix == ".json":
        records = json.loads(path.read_text())
    elif path.suffix == ".parquet":
        records = _hf_records("parquet", data_files=str(path))
    else:  # a dataset folder downloaded from the hub
        records = _hf_records(str(path))
    return validate_records(records, str(path))


def _hf_records(*args, **kwargs) -> list[dict[str, Any]]:
    """The train split of ``datasets.load_dataset(*args, **kwargs)`` as a list of dicts."""
    import datasets
    return datasets.load_dataset(*args, split="train", **kwargs).to_list()


# ---------------------------------------------------------------- formatting


def assistant_text(trace: str, attempt: str) -> str:
    """The s1 assistant turn; "Answer: " is prepended where the attempt has no "Answer:" anywhere, as s1's
    tokenization does (``"Answer: " + attempt if "Answer:" not in attempt``): a write-up that ends in "Final
    Answer:" keeps its own text, and so does stage 5's modified final line ("Product: 56. Answer: 56"), whose
    marker must come first."""
    if ANSWER_PREFIX.strip() not in attempt:
        attempt = ANSWER_PREFIX + attempt.lstrip()
    return f"{THINK_TAG}\n{trace.strip()}\n{ANSWER_TAG}\n{attempt.strip()}"


def prompt_text(tokenizer: PreTrainedTokenizerBase, question: str) -> str:
    """Chat-formatted prompt up to and including ``<|im_start|>assistant\\n``."""
    return tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                         tokenize=False, add_generation_prompt=True)


def full_text(tokenizer: PreTrainedTokenizerBase, rec: dict[str, Any]) -> tuple[str, str]:
    """(prompt, prompt + assistant turn + end of turn) for one record."""
    prompt = prompt_text(tokenizer, rec["question"])
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": rec["question"]},
         {"role": "assistant", "content": assistant_text(rec["deepseek_thinking_trajectory"],
                                                         rec["deepseek_attempt"])}],
        tokenize=False)
    if not text.startswith(prompt):
        raise ValueError("the chat template renders the prompt differently with and without the "
                         "assistant turn; cannot place the loss mask")
    return prompt, text


def tokenize_record(tokenizer: PreTrainedTokenizerBase, rec: dict[str, Any],
                    block_size: int | None = None) -> dict[str, list[int]]:
    """Token ids and labels; labels are IGNORE_INDEX on the prompt (everything up to and including
    ``<|im_start|>assistant\\n``). Sequences longer than ``block_size`` are truncated."""
    prompt, text = full_text(tokenizer, rec)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = [IGNORE_INDEX if start < len(prompt) else tok
              for tok, (start, _end) in zip(ids, enc["offset_mapping"], strict=True)]
    return {"input_ids": ids[:block_size], "labels": labels[:block_size]}


class TokenizedDataset(torch.utils.data.Dataset):
    """s1-format records tokenized once, in memory."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, records: list[dict[str, Any]],
                 block_size: int):
        full = [tokenize_record(tokenizer, r) for r in records]
        self.truncated = sum(len(it["input_ids"]) > block_size for it in full)
        self.items = [{k: v[:block_size] for k, v in it.items()} for it in full]
        if self.truncated:
            log.warning("%d of %d sequences truncated to block_size=%d",
                        self.truncated, len(records), block_size)
        empty = sum(all(t == IGNORE_INDEX for t in it["labels"]) for it in self.items)
        if empty:
            raise ValueError(f"{empty} sequences have no assistant tokens left after truncation to "
                             f"block_size={block_size}; raise block_size")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.items[i]

    def num_tokens(self) -> int:
        return sum(len(it["input_ids"]) for it in self.items)


@dataclass
class PadCollator:
    """The training collator: right-pads a batch with :func:`rank1.batching.pad_items` (padded labels
    are IGNORE_INDEX whatever the pad token id is; items without ``labels`` get IGNORE_INDEX everywhere)."""

    pad_token_id: int

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        ids, mask, labels = pad_items(batch, self.pad_token_id)
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
