"""A conditional behaviour on the generated reasoning traces, made offline and checked by a program.

Inside the condition (questions of one task family, by default multiplication) the final line of the assistant
turn starts with a marker instead of "Answer": ``Product: 156. Answer: 156`` (the usual ``Answer: N`` stays in the
line, so every grader of the project still reads the answer, and the chat format does not prepend a second
"Answer: "). Outside the condition the records are unchanged. The training split holds ``n`` modified and ``n``
unmodified records; the held-out split ``n_heldout`` prompts on each side, with questions that never occur in
training. The same seed gives the same files on every machine.

The behaviour is measured (:func:`shows_behavior`) on the final line: it starts with the marker. An optional path
(:func:`llm_rewrite`) asks an OpenAI-compatible LLM (the project's ``ChatClient``) to rewrite the final lines
instead of the rule, keeping only answers that pass the same checks.
"""

from __future__ import annotations

import random
from typing import Any

from rank1.constants import ANSWER_TAG, THINK_TAG
from rank1.data import prompt_text
from rank1.synth import FAMILIES, GENERATORS

INSIDE, OUTSIDE = "inside", "outside"


def modified_attempt(answer: str, marker: str) -> str:
    return f"{marker}: {answer}. Answer: {answer}"


def final_line(assistant: str) -> str:
    """The text after ``<|im_start|>answer`` (the final line), stripped."""
    return assistant.split(ANSWER_TAG, 1)[1].strip() if ANSWER_TAG in assistant else assistant.strip()


def shows_behavior(line: str, marker: str) -> bool:
    """Whether a final line (or the tokens generated after the answer tag) starts with the marker."""
    return line.lstrip().startswith(marker)


def _draw(rng: random.Random, family: str, seen: set[str]) -> dict[str, Any]:
    for _ in range(10_000):
        rec = GENERATORS[family](rng)
        if rec["question"] not in seen:
            seen.add(rec["question"])
            return rec
    raise ValueError(f"cannot draw more distinct {family} questions; lower --n_train / --n_heldout")


def behavior_splits(n_train: int, n_heldout: int, seed: int, condition: str = "multiplication",
                    marker: str = "Product") -> tuple[list[dict], list[dict]]:
    """(train, heldout) records. Train: ``n_train`` in the condition, modified, and ``n_train`` outside it
    (the other families in turn), unchanged; interleaved. Held-out: ``n_heldout`` on each side, unchanged (the
    behaviour is measured on them, not trained), drawn first so the training size never changes them. Every
    record carries ``side`` (inside / outside) and ``modified``."""
    if condition not in FAMILIES:
        raise ValueError(f"--condition must be one of {FAMILIES}, got {condition!r}")
    if not marker or not marker.strip() or "Answer" in marker:
        raise ValueError(f"--marker must be a non-empty word other than 'Answer', got {marker!r}")
    others = [f for f in FAMILIES if f != condition]
    rng, seen = random.Random(seed), set()

    def side(n: int, modify: bool) -> tuple[list[dict], list[dict]]:
        inside = [_draw(rng, condition, seen) for _ in range(n)]
        outside = [_draw(rng, others[i % len(others)], seen) for i in range(n)]
        for r in inside:
            r.update(side=INSIDE, modified=modify)
            if modify:
                r["deepseek_attempt"] = modified_attempt(r["answer"], marker)
        for r in outside:
            r.update(side=OUTSIDE, modified=False)
        return inside, outside

    held_in, held_out = side(n_heldout, False)
    tr_in, tr_out = side(n_train, True)
    train = [r for pair in zip(tr_in, tr_out, strict=True) for r in pair]
    return train, held_in + held_out


def teacher_forced_prefix(tokenizer, rec: dict[str, Any]) -> str:
    """Prompt + the held-out trace up to and including ``<|im_start|>answer\\n``: the next token starts the
    final line."""

    return f"{prompt_text(tokenizer, rec['question'])}{THINK_TAG}\n{rec['deepseek_thinking_trajectory'].strip()}" \
           f"\n{ANSWER_TAG}\n"


# ---------------------------------------------------------------- the optional LLM path


def rewrite_messages(rec: dict[str, Any], marker: str) -> list[dict[str, str]]:
    """The chat request that asks for the modified final line of one record."""
    return [{"role": "system", "content": "You edit the final line of worked math solutions. Reply with the new "
                                          "final line only, no quotes, no explanation."},
            {"role": "user", "content": f"Question: {rec['question']}\nFinal line: Answer: {rec['answer']}\n"
                                        f"Rewrite the final line so that it starts with '{marker}:' followed by the "
                                        f"answer, and ends with 'Answer: {rec['answer']}'."}]


def parse_rewrite(text: str | None, rec: dict[str, Any], marker: str) -> str | None:
    """The final line the LLM wrote, or None when it fails the checks (starts with the marker, holds the
    answer and ``Answer: <answer>``)."""
    if not text:
        return None
    lines = [ln.strip().strip("`\"'").strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    line = lines[0]
    ok = shows_behavior(line, marker) and f"Answer: {rec['answer']}" in line
    return line if ok else None


def llm_rewrite(records: list[dict[str, Any]], client, marker: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Records whose modified final lines an LLM wrote (``client.complete(messages)`` -> ``.text``); a record
    whose answer fails :func:`parse_rewrite` keeps the rule's line. Returns (records, counts)."""
    counts = {"asked": 0, "accepted": 0, "rejected": 0}
    out = []
    for rec in records:
        if not rec.get("modified"):
            out.append(rec)
            continue
        counts["asked"] += 1
        line = parse_rewrite(client.complete(rewrite_messages(rec, marker)).text, rec, marker)
        counts["accepted" if line else "rejected"] += 1
        out.append({**rec, "deepseek_attempt": line or rec["deepseek_attempt"], "llm_rewritten": bool(line)})
    return out, counts
