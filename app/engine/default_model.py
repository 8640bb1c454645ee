"""Embedded default model: a tiny Llama-architecture causal LM built offline from the repo.

Contract
--------
* ``build_default_model(out_dir, *, train_steps=DEFAULT_TRAIN_STEPS) -> Path`` always builds:
  it trains a byte-level BPE tokenizer on ``app/engine/corpus/*.txt``, initialises a small
  ``LlamaForCausalLM`` from a fixed seed, trains it briefly on the same corpus and writes
  ``config.json``, ``model.safetensors`` (float32), ``tokenizer.json``,
  ``tokenizer_config.json`` (with a ChatML ``chat_template``), ``special_tokens_map.json``,
  ``generation_config.json`` and ``BUILD_INFO.json`` into ``out_dir``.
* ``ensure_default_model(out_dir=DEFAULT_MODEL_DIR, *, train_steps=DEFAULT_TRAIN_STEPS) -> Path``
  returns ``out_dir``, building only when it is absent or its ``BUILD_INFO.json`` records a
  different input hash (see ``input_hash``: corpus bytes, builder version, hyper-parameters).
* Builds run under an exclusive ``fcntl`` lock next to ``out_dir`` and land atomically: the
  model is written to a temporary sibling directory and moved into place with ``os.replace``,
  so a half-built model is never visible under ``out_dir``.
* Output is deterministic for the same inputs on the same machine and library versions
  (fixed seeds, deterministic torch algorithms, a fixed thread count). Staleness never relies
  on that: it compares input hashes only.
* Importing this module has no side effects; torch, transformers and tokenizers are imported
  lazily so the up-to-date check stays cheap.

CLI: ``python -m app.engine.default_model [--out DIR] [--force] [--train-steps N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

# Bump whenever the build procedure changes in a way that should invalidate existing builds.
BUILDER_VERSION = "1"

REPO_ROOT = Path(__file__).resolve().parents[2]
CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
DEFAULT_MODEL_DIR = REPO_ROOT / ".models" / "tiny-llama"

# About 0.15-0.18 s per step on an idle 2-core CPU, so the whole build takes about a minute.
# Changing it changes input_hash, so existing builds are rebuilt.
DEFAULT_TRAIN_STEPS = 300

BOS_TOKEN = "<|begin_of_text|>"
END_OF_TEXT_TOKEN = "<|end_of_text|>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
EOS_TOKEN = IM_END_TOKEN  # chat turns end here; plain text ends at END_OF_TEXT_TOKEN
PAD_TOKEN = END_OF_TEXT_TOKEN
# Order fixes the ids: 0..3, before any learned merge.
SPECIAL_TOKENS = (BOS_TOKEN, END_OF_TEXT_TOKEN, IM_START_TOKEN, IM_END_TOKEN)

# ChatML. Content may be a string or a list of OpenAI-style parts (only text parts render).
# Tools render as Qwen 2.5 / Hermes do: their JSON in the system turn, calls as
# <tool_call>{"name": ..., "arguments": ...}</tool_call> in the assistant's turn (arguments
# that are not an object render as a JSON string), results in <tool_response> in the tool's
# turn. Without tools or calls it renders what it always did, which is what the model was
# trained on: the template is in input_hash, but the weights come out the same.
CHAT_TEMPLATE = (
    "{%- macro render_content(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- elif content is not none -%}"
    "{%- for part in content -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    "{{ bos_token }}"
    "{%- set system_first = messages and messages[0]['role'] == 'system' -%}"
    "{%- if tools -%}"
    "{{ '<|im_start|>system\\n' }}"
    "{%- if system_first -%}{{ render_content(messages[0]['content']) + '\\n\\n' }}{%- endif -%}"
    "{{ '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools -%}{{ '\\n' + (tool | tojson) }}{%- endfor -%}"
    "{{ '\\n</tools>\\n\\nFor each function call, return a json object with function name "
    "and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n\' }}'
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if not (tools and loop.first and system_first) -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'tool' -%}"
    "{{ '<tool_response>\\n' + render_content(message['content']) + '\\n</tool_response>' }}"
    "{%- else -%}{{ render_content(message['content']) }}{%- endif -%}"
    "{%- for call in message.get('tool_calls') or [] -%}"
    "{%- if message['content'] or not loop.first -%}{{ '\\n' }}{%- endif -%}"
    "{{ '<tool_call>\\n{\"name\": ' + (call['function']['name'] | tojson) + ', \"arguments\": '"
    " + (call['function']['arguments'] | tojson) + '}\\n</tool_call>' }}"
    "{%- endfor -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

TOKENIZER_SETTINGS: dict[str, Any] = {"vocab_size": 4096, "min_frequency": 2}
MODEL_SETTINGS: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 64,  # vLLM's CPU attention kernels reject small head sizes such as 16
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "initializer_range": 0.02,
}
TRAIN_SETTINGS: dict[str, Any] = {
    "seed": 1234,
    "threads": 2,
    "block_size": 128,
    "batch_size": 16,
    "learning_rate": 3e-3,
    "min_lr_ratio": 0.1,
    "warmup_fraction": 0.05,
    "weight_decay": 0.01,
    "grad_clip": 1.0,
    "eval_blocks": 16,
    "doc_chars": 1500,  # prose is cut into documents of about this size at paragraph breaks
    "chat_every": 4,  # every fourth suitable paragraph also appears as a ChatML exchange
    "chat_system_every": 4,  # rarely: it teaches little and its words leak into prose
}

# Fixed user prompts for the synthetic chat examples; the reply is always corpus prose.
CHAT_PROMPTS = (
    "Tell me a story.",
    "Tell me a fable.",
    "Write a paragraph.",
    "Hello!",
    "What happened next?",
    "Say something wise.",
)
CHAT_SYSTEM_PROMPT = "You are a helpful assistant."

MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)
BUILD_INFO_FILE = "BUILD_INFO.json"


# --------------------------------------------------------------------------- inputs / hash


def corpus_files(corpus_dir: Path = CORPUS_DIR) -> list[Path]:
    """The corpus text files, sorted by name so every consumer sees one fixed order."""
    return sorted(corpus_dir.glob("*.txt"))


def read_corpus(corpus_dir: Path = CORPUS_DIR) -> list[str]:
    """Each corpus file's text, newlines normalised so checkouts with CRLF build the same."""
    texts = [path.read_text(encoding="utf-8") for path in corpus_files(corpus_dir)]
    return [text.replace("\r\n", "\n").strip() for text in texts]


def input_hash(train_steps: int = DEFAULT_TRAIN_STEPS, corpus_dir: Path = CORPUS_DIR) -> str:
    """sha256 over everything that determines the build: the staleness key in BUILD_INFO."""
    recipe = {
        "builder_version": BUILDER_VERSION,
        "train_steps": train_steps,
        "tokenizer": TOKENIZER_SETTINGS,
        "model": MODEL_SETTINGS,
        "train": TRAIN_SETTINGS,
        "special_tokens": SPECIAL_TOKENS,
        "chat_template": CHAT_TEMPLATE,
        "chat_prompts": CHAT_PROMPTS,
        "chat_system_prompt": CHAT_SYSTEM_PROMPT,
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
    for path in corpus_files(corpus_dir):
        digest.update(path.name.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: Sequence[str]) -> Tokenizer:
    """Byte-level BPE trained on ``texts``; special tokens get ids 0..3 in SPECIAL_TOKENS order."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    # No prefix space: encode/decode must round-trip text byte for byte.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_SETTINGS["vocab_size"],
        min_frequency=TOKENIZER_SETTINGS["min_frequency"],
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    # Like Llama 3: plain ``encode`` prepends BOS; the chat template emits it itself.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    return tokenizer


def special_token_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """Map of special token text to id, read back from the trained tokenizer."""
    found = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    ids = {token: token_id for token, token_id in found.items() if token_id is not None}
    if len(ids) != len(SPECIAL_TOKENS):
        raise RuntimeError(f"tokenizer lacks special tokens {set(SPECIAL_TOKENS) - set(ids)}")
    return ids


def _tokenizer_config(ids: dict[str, int]) -> dict[str, Any]:
    added = {
        str(token_id): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for token, token_id in ids.items()
    }
    return {
        "added_tokens_decoder": added,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": MODEL_SETTINGS["max_position_embeddings"],
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    # sort_keys + fixed indent: identical inputs give identical bytes.
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_tokenizer_files(tokenizer: Tokenizer, out_dir: Path) -> None:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json for AutoTokenizer."""
    ids = special_token_ids(tokenizer)
    tokenizer.save(str(out_dir / "tokenizer.json"), pretty=True)
    _write_json(out_dir / "tokenizer_config.json", _tokenizer_config(ids))
    special_map = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}
    _write_json(out_dir / "special_tokens_map.json", special_map)


# --------------------------------------------------------------------------- training data


def chat_example(paragraph: str, index: int) -> str:
    """One ChatML exchange, rendered exactly as CHAT_TEMPLATE renders it."""
    with_system = index % TRAIN_SETTINGS["chat_system_every"] == 1
    system = f"{IM_START_TOKEN}system\n{CHAT_SYSTEM_PROMPT}{IM_END_TOKEN}\n" if with_system else ""
    user = f"{IM_START_TOKEN}user\n{CHAT_PROMPTS[index % len(CHAT_PROMPTS)]}{IM_END_TOKEN}\n"
    reply = f"{IM_START_TOKEN}assistant\n{paragraph}{IM_END_TOKEN}\n"
    return f"{BOS_TOKEN}{system}{user}{reply}"


def prose_chunks(text: str) -> list[str]:
    """``text`` cut at paragraph breaks into pieces of about TRAIN_SETTINGS["doc_chars"]."""
    chunks: list[str] = []
    for paragraph in (p.strip() for p in text.split("\n\n")):
        if chunks and len(chunks[-1]) + len(paragraph) < TRAIN_SETTINGS["doc_chars"]:
            chunks[-1] = f"{chunks[-1]}\n\n{paragraph}"
        elif paragraph:
            chunks.append(paragraph)
    return chunks


def training_documents(texts: Sequence[str]) -> list[str]:
    """Prose documents (BOS text END_OF_TEXT) plus ChatML exchanges built from paragraphs.

    Many short prose documents, rather than one per file, make BOS-then-prose common, so
    plain completions read as prose and learn to end with ``<|end_of_text|>``. The chat
    examples teach the template's shape and to end a reply with ``<|im_end|>``.
    """
    chunks = [chunk for text in texts for chunk in prose_chunks(text)]
    documents = [f"{BOS_TOKEN}{chunk}{END_OF_TEXT_TOKEN}" for chunk in chunks]
    paragraphs = [p.strip() for text in texts for p in text.split("\n\n")]
    suitable = [p for p in paragraphs if 80 <= len(p) <= 700]
    chosen = suitable[:: TRAIN_SETTINGS["chat_every"]]
    documents.extend(chat_example(p, index) for index, p in enumerate(chosen))
    return documents


def token_blocks(tokenizer: Tokenizer, documents: Sequence[str]) -> torch.Tensor:
    """All documents as one token stream cut into (n_blocks, block_size) int64 rows."""
    import torch

    stream: list[int] = []
    for document in documents:
        # Special tokens are spelled out in the text; don't let the post-processor add more.
        stream.extend(tokenizer.encode(document, add_special_tokens=False).ids)
    block = TRAIN_SETTINGS["block_size"]
    usable = len(stream) - len(stream) % block
    return torch.tensor(stream[:usable], dtype=torch.long).view(-1, block)


# --------------------------------------------------------------------------- model


def llama_config(vocab_size: int, ids: dict[str, int]) -> LlamaConfig:
    """The tiny LlamaConfig; vocab size comes from the trained tokenizer."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        bos_token_id=ids[BOS_TOKEN],
        eos_token_id=ids[EOS_TOKEN],
        pad_token_id=ids[PAD_TOKEN],
        architectures=["LlamaForCausalLM"],
        dtype="float32",
        **MODEL_SETTINGS,
    )


@contextlib.contextmanager
def _deterministic_torch() -> Iterator[None]:
    """Fixed seed, thread count and deterministic kernels; the caller's torch state is restored.

    The gateway may build in-process, so global torch settings must not leak out.
    """
    import torch

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TRAIN_SETTINGS["seed"])
        torch.set_num_threads(TRAIN_SETTINGS["threads"])
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
            torch.set_num_threads(threads)


def _learning_rate(step: int, total: int) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio of the peak."""
    peak = TRAIN_SETTINGS["learning_rate"]
    warmup = max(1, int(total * TRAIN_SETTINGS["warmup_fraction"]))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    floor = TRAIN_SETTINGS["min_lr_ratio"]
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def eval_loss(model: LlamaForCausalLM, blocks: torch.Tensor) -> float:
    """Mean causal-LM loss on a fixed, evenly spaced sample of blocks (training text)."""
    import torch

    count = min(TRAIN_SETTINGS["eval_blocks"], len(blocks))
    sample = blocks[torch.linspace(0, len(blocks) - 1, count).long()]
    model.eval()
    with torch.no_grad():
        loss = model(input_ids=sample, labels=sample).loss
    return float(loss)


def train_model(model: LlamaForCausalLM, blocks: torch.Tensor, steps: int) -> None:
    """AdamW on random batches of blocks; sampling uses its own seeded generator."""
    import torch

    settings = TRAIN_SETTINGS
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings["learning_rate"], weight_decay=settings["weight_decay"]
    )
    sampler = torch.Generator().manual_seed(settings["seed"])
    model.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, steps)
        rows = torch.randint(len(blocks), (settings["batch_size"],), generator=sampler)
        batch = blocks[rows]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings["grad_clip"])
        optimizer.step()


def _config_json(config: LlamaConfig) -> dict[str, Any]:
    payload = config.to_diff_dict()  # what save_pretrained writes: non-default keys only
    # Spelled the pre-transformers-5 way too, for readers that only know those keys.
    payload["torch_dtype"] = "float32"
    payload["rope_theta"] = MODEL_SETTINGS["rope_theta"]
    return payload


def write_model_files(model: LlamaForCausalLM, ids: dict[str, int], out_dir: Path) -> None:
    """config.json, model.safetensors (float32, contiguous) and generation_config.json."""
    from safetensors.torch import save_file

    _write_json(out_dir / "config.json", _config_json(model.config))
    state = {name: t.detach().float().contiguous() for name, t in model.state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    generation = {
        "bos_token_id": ids[BOS_TOKEN],
        # Either terminator ends generation: chat replies and plain-text completions.
        "eos_token_id": [ids[IM_END_TOKEN], ids[END_OF_TEXT_TOKEN]],
        "pad_token_id": ids[PAD_TOKEN],
    }
    _write_json(out_dir / "generation_config.json", generation)


# --------------------------------------------------------------------------- build


def _build_into(target: Path, train_steps: int) -> dict[str, Any]:
    """Run the whole build into an existing empty directory; returns the BUILD_INFO payload."""
    from transformers import LlamaForCausalLM

    texts = read_corpus()
    with _deterministic_torch():
        tokenizer = train_tokenizer(texts)
        ids = special_token_ids(tokenizer)
        blocks = token_blocks(tokenizer, training_documents(texts))
        model = LlamaForCausalLM(llama_config(tokenizer.get_vocab_size(), ids))
        loss_start = eval_loss(model, blocks)
        train_model(model, blocks, train_steps)
        loss_end = eval_loss(model, blocks)
    write_tokenizer_files(tokenizer, target)
    write_model_files(model, ids, target)
    return {
        "builder_version": BUILDER_VERSION,
        "input_hash": input_hash(train_steps),
        "train_steps": train_steps,
        "vocab_size": tokenizer.get_vocab_size(),
        "train_tokens": int(blocks.numel()),
        "loss_start": round(loss_start, 4),
        "loss_end": round(loss_end, 4),
        "corpus_files": [path.name for path in corpus_files()],
    }


def _make_readable(directory: Path) -> None:
    """mkdtemp makes 0700 dirs (and some writers 0600 files); the model is meant to be shared."""
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o644)


def _swap_into_place(built: Path, out_dir: Path) -> None:
    """Move ``built`` to ``out_dir``; an existing ``out_dir`` is moved aside, then deleted."""
    if not out_dir.exists():
        os.replace(built, out_dir)
        return
    # rename(2) may replace an empty directory, so the old tree goes into a fresh empty one.
    graveyard = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    os.replace(out_dir, graveyard)
    os.replace(built, out_dir)
    shutil.rmtree(graveyard, ignore_errors=True)


def _remove_leftovers(out_dir: Path) -> None:
    """Delete temp/old siblings from builds that crashed; only called while holding the lock."""
    for pattern in (f".{out_dir.name}.tmp-*", f".{out_dir.name}.old-*"):
        for leftover in out_dir.parent.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def _build_lock(out_dir: Path) -> Iterator[None]:
    """Exclusive flock on a sibling lock file; released when the process dies, too."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out_dir.parent / f".{out_dir.name}.lock"
    with lock_path.open("a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _build_locked(out_dir: Path, train_steps: int) -> Path:
    """Build into a temp sibling and swap it in; the caller holds the build lock."""
    _remove_leftovers(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        info = _build_into(staging, train_steps)
        # BUILD_INFO last: its presence marks a complete build.
        _write_json(staging / BUILD_INFO_FILE, info)
        _make_readable(staging)
        _swap_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def read_build_info(out_dir: Path) -> dict[str, Any] | None:
    """BUILD_INFO.json of a built model, or None when missing or unreadable."""
    try:
        info = json.loads((out_dir / BUILD_INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def is_up_to_date(out_dir: Path, train_steps: int = DEFAULT_TRAIN_STEPS) -> bool:
    """True when every model file exists and BUILD_INFO matches the current input hash."""
    info = read_build_info(out_dir)
    if info is None or info.get("input_hash") != input_hash(train_steps):
        return False
    return all((out_dir / name).is_file() for name in MODEL_FILES)


def build_default_model(out_dir: Path, *, train_steps: int = DEFAULT_TRAIN_STEPS) -> Path:
    """Build the default model into ``out_dir`` unconditionally (atomic, under the lock)."""
    out_dir = Path(out_dir).resolve()
    with _build_lock(out_dir):
        return _build_locked(out_dir, train_steps)


def ensure_default_model(
    out_dir: Path = DEFAULT_MODEL_DIR, *, train_steps: int = DEFAULT_TRAIN_STEPS
) -> Path:
    """Return ``out_dir``, building it first only if it is absent or stale."""
    out_dir = Path(out_dir).resolve()
    if is_up_to_date(out_dir, train_steps):
        return out_dir
    with _build_lock(out_dir):
        # Another process may have finished the build while we waited for the lock.
        if not is_up_to_date(out_dir, train_steps):
            _build_locked(out_dir, train_steps)
    return out_dir


# --------------------------------------------------------------------------- CLI


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m app.engine.default_model",
        description="Build the embedded tiny Llama model (offline, deterministic).",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR, help="output directory")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--train-steps", type=int, default=DEFAULT_TRAIN_STEPS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: build or verify the model, then say where it is and how long it took."""
    args = _parse_args(argv)
    out_dir = Path(args.out).resolve()
    started = time.perf_counter()
    if args.force or not is_up_to_date(out_dir, args.train_steps):
        build_default_model(out_dir, train_steps=args.train_steps)
        info = read_build_info(out_dir) or {}
        elapsed = time.perf_counter() - started
        print(f"built default model in {elapsed:.1f}s: {out_dir}")
        print(f"train steps {info.get('train_steps')}, vocab {info.get('vocab_size')}, ", end="")
        print(f"loss {info.get('loss_start')} -> {info.get('loss_end')}")
    else:
        elapsed = time.perf_counter() - started
        print(f"default model up to date (checked in {elapsed:.3f}s): {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
