"""Held-out evaluation: assistant-token loss and exact-match accuracy of greedy generations."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rank1.data import IGNORE_INDEX, PadCollator, TokenizedDataset, prompt_text
from rank1.metrics import exact_match, extract_answer

log = logging.getLogger(__name__)


def autocast(bf16: bool):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device, dtype=torch.bfloat16, enabled=bf16)


@torch.inference_mode()
def heldout_loss(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, records: list[dict],
                 block_size: int, batch_size: int = 8, bf16: bool = False) -> float:
    """Mean cross-entropy per assistant token (the training objective) over ``records``."""
    ds = TokenizedDataset(tokenizer, records, block_size)
    collate = PadCollator(tokenizer.pad_token_id)
    total, count = 0.0, 0
    for i in tqdm(range(0, len(ds), batch_size), desc="held-out loss", leave=False):
        items = [ds[j] for j in range(i, min(i + batch_size, len(ds)))]
        batch = {k: v.to(model.device) for k, v in collate(items).items()}
        with autocast(bf16):
            logits_BTV = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels_BT = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(logits_BTV[:, :-1].float().flatten(0, 1),
                                                labels_BT.flatten(), ignore_index=IGNORE_INDEX,
                                                reduction="sum")
        total += nll.item()
        count += int((labels_BT != IGNORE_INDEX).sum())
    return total / count


@torch.inference_mode()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, questions: list[str],
             max_new_tokens: int, batch_size: int = 16, bf16: bool = False) -> list[str]:
    """Greedy completions of chat-formatted prompts, batched with left padding."""
    tokenizer.padding_side = "left"
    stop = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    if tokenizer.eos_token_id is not None:
        stop.append(tokenizer.eos_token_id)
    out = []
    for i in tqdm(range(0, len(questions), batch_size), desc="generate", leave=False):
        prompts = [prompt_text(tokenizer, q) for q in questions[i:i + batch_size]]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with autocast(bf16):
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=stop, pad_token_id=tokenizer.pad_token_id)
        for row in ids[:, enc["input_ids"].shape[1]:].tolist():
            cut = next((j for j, t in enumerate(row) if t in stop), len(row))
            out.append(tokenizer.decode(row[:cut], skip_special_tokens=False))
    tokenizer.padding_side = "right"
    return out


def score(records: list[dict], completions: list[str]) -> dict[str, Any]:
    """Exact-match accuracy overall and per task family, plus the first few samples."""
    by_family: dict[str, list[bool]] = defaultdict(list)
    hits = []
    for rec, comp in zip(records, completions, strict=True):
        ok = exact_match(comp, rec.get("answer", rec.get("solution", "")))
        hits.append(ok)
        by_family[rec.get("family", "all")].append(ok)
    return {
        "exact_match": sum(hits) / len(hits),
        "n": len(hits),
        "by_family": {f: sum(v) / len(v) for f, v in sorted(by_family.items())},
        "samples": [{"question": r["question"], "gold": r.get("answer", r.get("solution")),
                     "predicted": extract_answer(c), "completion": c}
                    for r, c in list(zip(records, completions, strict=True))[:8]],
    }


def evaluate_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, records: list[dict],
                   block_size: int, max_new_tokens: int, batch_size: int, bf16: bool) -> dict[str, Any]:
    model.eval()
    loss = heldout_loss(model, tokenizer, records, block_size, batch_size, bf16)
    completions = generate(model, tokenizer, [r["question"] for r in records], max_new_tokens,
                           batch_size, bf16)
    return {"loss": loss, **score(records, completions)}
