"""Tests for the embedded default-model builder (app/engine/default_model.py).

Builds use a handful of training steps so the whole file runs in well under a minute;
nothing here starts vLLM.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from app.engine import default_model as dm

SMALL_STEPS = 3


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _render(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    *,
    generation_prompt: bool = False,
) -> str:
    rendered = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )
    assert isinstance(rendered, str)
    return rendered


def _file_identity(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


@pytest.fixture(scope="module")
def built_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small build shared by the read-only tests below."""
    out_dir = tmp_path_factory.mktemp("built") / "tiny-llama"
    return dm.build_default_model(out_dir, train_steps=SMALL_STEPS)


@pytest.fixture(scope="module")
def tokenizer(built_model: Path) -> PreTrainedTokenizerBase:
    """The built tokenizer, loaded the way vLLM loads it."""
    return AutoTokenizer.from_pretrained(built_model)


def test_build_writes_every_model_file_and_no_leftovers(built_model: Path) -> None:
    """A build leaves all HF files plus BUILD_INFO, and no temp or lock dirs beside it."""
    for name in (*dm.MODEL_FILES, dm.BUILD_INFO_FILE):
        assert (built_model / name).is_file(), name
    siblings = {path.name for path in built_model.parent.iterdir()}
    assert siblings == {built_model.name, f".{built_model.name}.lock"}


def test_build_info_records_input_hash_and_losses(built_model: Path) -> None:
    """BUILD_INFO holds the current input hash, the step count and finite losses."""
    info = dm.read_build_info(built_model)
    assert info is not None
    assert info["input_hash"] == dm.input_hash(SMALL_STEPS)
    assert info["train_steps"] == SMALL_STEPS
    assert 0 < info["loss_end"] < info["loss_start"]


def test_weights_are_float32(built_model: Path) -> None:
    """Every tensor in model.safetensors is float32, including a separate lm_head."""
    with safe_open(str(built_model / "model.safetensors"), framework="pt") as weights:
        names = list(weights.keys())
        dtypes = {str(weights.get_tensor(name).dtype) for name in names}
    assert dtypes == {"torch.float32"}
    assert "lm_head.weight" in names and "model.embed_tokens.weight" in names


def test_tokenizer_is_fast_with_expected_special_tokens(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """AutoTokenizer gives a fast tokenizer with Llama-3/ChatML special tokens at ids 0..3."""
    assert tokenizer.is_fast
    assert tokenizer.bos_token == "<|begin_of_text|>"
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|end_of_text|>"
    ids = tokenizer.convert_tokens_to_ids(list(dm.SPECIAL_TOKENS))
    assert ids == [0, 1, 2, 3]
    assert len(tokenizer) == dm.TOKENIZER_SETTINGS["vocab_size"]


@pytest.mark.parametrize(
    "text",
    [
        "Once upon a time there was a Fox.",
        "  leading spaces,\ttabs\nand newlines\n\n",
        "Unicode: café, naïve, Straße, 日本語, Ελληνικά, emoji 🙂🚀",
        "",
    ],
)
def test_tokenizer_round_trips_text(tokenizer: PreTrainedTokenizerBase, text: str) -> None:
    """encode then decode (skipping specials) returns the input exactly; BOS is prepended."""
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_chat_template_renders_conversation_with_generation_prompt(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """A multi-turn chat renders as ChatML after BOS and ends with the assistant prompt."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Tell me a story."},
    ]
    rendered = _render(tokenizer, messages, generation_prompt=True)
    assert rendered == (
        "<|begin_of_text|>"
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\nTell me a story.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert _render(tokenizer, messages).endswith("Tell me a story.<|im_end|>\n")


def test_chat_template_accepts_openai_content_parts(tokenizer: PreTrainedTokenizerBase) -> None:
    """List-of-parts content renders its text parts in order, like a plain string."""
    parts = [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]
    rendered = _render(tokenizer, [{"role": "user", "content": parts}])
    assert rendered == "<|begin_of_text|><|im_start|>user\nHello, world<|im_end|>\n"


TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
TOOLS_SYSTEM = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}'
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
)


def test_chat_template_renders_tools_calls_and_results(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """Tools join the system turn, calls render as <tool_call> JSON after the assistant's
    text (arguments that are not an object as a JSON string), results as <tool_response>."""
    calls = [
        {"id": "a", "type": "function", "function": {"name": "get_time", "arguments": {"z": 1}}},
        {"id": "b", "type": "function", "function": {"name": "get_time", "arguments": "{bad"}},
    ]
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Time?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "a", "content": "noon"},
    ]
    rendered = tokenizer.apply_chat_template(
        messages, tools=[TOOL], tokenize=False, add_generation_prompt=True
    )
    assert rendered == (
        "<|begin_of_text|><|im_start|>system\nBe brief.\n\n"
        + TOOLS_SYSTEM
        + "<|im_start|>user\nTime?<|im_end|>\n"
        "<|im_start|>assistant\nChecking.\n"
        '<tool_call>\n{"name": "get_time", "arguments": {"z": 1}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": "{bad"}\n</tool_call><|im_end|>\n'
        "<|im_start|>tool\n<tool_response>\nnoon\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_chat_template_gives_tools_their_own_system_turn(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """Without a system message the tools get a system turn of their own; a call with no
    text before it starts the assistant's turn."""
    call = {"id": "a", "type": "function", "function": {"name": "get_time", "arguments": {}}}
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Time?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ]
    rendered = tokenizer.apply_chat_template(messages, tools=[TOOL], tokenize=False)
    assert rendered == (
        "<|begin_of_text|><|im_start|>system\n"
        + TOOLS_SYSTEM
        + "<|im_start|>user\nTime?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_time", "arguments": {}}\n'
        "</tool_call><|im_end|>\n"
    )


def test_chat_training_examples_match_the_template(tokenizer: PreTrainedTokenizerBase) -> None:
    """The synthetic chat examples the model trains on are exactly what the template renders."""
    for index in range(dm.TRAIN_SETTINGS["chat_system_every"]):
        example = dm.chat_example("A short reply.", index)
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": dm.CHAT_PROMPTS[index % len(dm.CHAT_PROMPTS)]},
            {"role": "assistant", "content": "A short reply."},
        ]
        if "<|im_start|>system" in example:
            messages.insert(0, {"role": "system", "content": dm.CHAT_SYSTEM_PROMPT})
        assert _render(tokenizer, messages) == example


def test_config_fields(built_model: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    """config.json describes the tiny Llama: head_dim 64, 2 layers, vocab = tokenizer's."""
    config = AutoConfig.from_pretrained(built_model)
    assert config.model_type == "llama"
    assert config.architectures == ["LlamaForCausalLM"]
    assert (config.hidden_size, config.intermediate_size) == (128, 512)
    assert (config.num_hidden_layers, config.head_dim) == (2, 64)
    assert (config.num_attention_heads, config.num_key_value_heads) == (2, 2)
    assert config.vocab_size == len(tokenizer)
    assert config.max_position_embeddings == 2048
    assert config.tie_word_embeddings is False
    assert config.rms_norm_eps == pytest.approx(1e-5)
    assert config.rope_parameters["rope_theta"] == pytest.approx(10000.0)
    assert str(config.dtype) == "torch.float32"
    assert config.bos_token_id == tokenizer.bos_token_id
    assert config.eos_token_id == tokenizer.eos_token_id


def test_generation_config_stops_on_both_terminators(
    built_model: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    """generation_config.json lists <|im_end|> and <|end_of_text|> as EOS ids."""
    generation = json.loads((built_model / "generation_config.json").read_text())
    expected = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|end_of_text|>"])
    assert generation["eos_token_id"] == expected
    assert generation["bos_token_id"] == tokenizer.bos_token_id


def test_build_is_deterministic(built_model: Path, tmp_path: Path) -> None:
    """Building again with the same inputs reproduces every file byte for byte."""
    again = dm.build_default_model(tmp_path / "again", train_steps=SMALL_STEPS)
    for name in (*dm.MODEL_FILES, dm.BUILD_INFO_FILE):
        assert _sha256(again / name) == _sha256(built_model / name), name


def test_ensure_does_not_rebuild_when_up_to_date(tmp_path: Path) -> None:
    """A second ensure_default_model call leaves the existing files untouched."""
    out_dir = dm.ensure_default_model(tmp_path / "model", train_steps=SMALL_STEPS)
    before = {name: _file_identity(out_dir / name) for name in dm.MODEL_FILES}
    assert dm.ensure_default_model(out_dir, train_steps=SMALL_STEPS) == out_dir
    assert {name: _file_identity(out_dir / name) for name in dm.MODEL_FILES} == before


def test_ensure_rebuilds_when_build_info_is_stale(tmp_path: Path) -> None:
    """A BUILD_INFO with a different input hash makes ensure_default_model rebuild."""
    out_dir = dm.build_default_model(tmp_path / "model", train_steps=SMALL_STEPS)
    info_path = out_dir / dm.BUILD_INFO_FILE
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "input_hash": "stale"}))
    before = _file_identity(out_dir / "model.safetensors")
    dm.ensure_default_model(out_dir, train_steps=SMALL_STEPS)
    assert _file_identity(out_dir / "model.safetensors") != before
    assert dm.read_build_info(out_dir) == info


def test_up_to_date_check_covers_steps_and_missing_files(built_model: Path, tmp_path: Path) -> None:
    """A different step count or a missing model file counts as stale."""
    assert dm.is_up_to_date(built_model, SMALL_STEPS)
    assert not dm.is_up_to_date(built_model, SMALL_STEPS + 1)
    assert not dm.is_up_to_date(tmp_path / "absent", SMALL_STEPS)


def test_input_hash_tracks_corpus_content(tmp_path: Path) -> None:
    """Editing any corpus file changes the input hash; an identical copy does not."""
    for path in dm.corpus_files():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    assert dm.input_hash(SMALL_STEPS, tmp_path) == dm.input_hash(SMALL_STEPS)
    first = dm.corpus_files(tmp_path)[0]
    first.write_text(first.read_text() + "\nOne more line.\n")
    assert dm.input_hash(SMALL_STEPS, tmp_path) != dm.input_hash(SMALL_STEPS)


def test_failed_build_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the build raises, neither out_dir nor a temp staging dir is left on disk."""

    def explode(target: Path, train_steps: int) -> dict[str, object]:
        (target / "config.json").write_text("{}")
        raise RuntimeError("boom")

    monkeypatch.setattr(dm, "_build_into", explode)
    with pytest.raises(RuntimeError, match="boom"):
        dm.build_default_model(tmp_path / "model", train_steps=SMALL_STEPS)
    assert [path.name for path in tmp_path.iterdir()] == [".model.lock"]


def test_corpus_is_within_size_budget() -> None:
    """The shipped corpus is 150-400 KB of UTF-8 text split into small files."""
    files = dm.corpus_files()
    sizes = [path.stat().st_size for path in files]
    assert 150_000 <= sum(sizes) <= 400_000
    assert max(sizes) <= 40_000
    for path in files:
        path.read_text(encoding="utf-8")


def test_build_leaves_callers_torch_settings_alone() -> None:
    """Seed, thread count and deterministic mode set for the build are restored afterwards."""
    threads = torch.get_num_threads()
    torch.manual_seed(7)
    expected = torch.rand(1)
    torch.manual_seed(7)
    with dm._deterministic_torch():
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.get_num_threads() == dm.TRAIN_SETTINGS["threads"]
        torch.rand(3)
    assert torch.rand(1) == expected
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()
