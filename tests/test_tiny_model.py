"""The tiny model loads like any Hugging Face model, masks assistant answers exactly, and is reproducible."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import adapterctl
from adapterctl.errors import InvalidInput
from adapterctl.tiny_model import create_tiny_model

CHAT = [
    {"role": "system", "content": "You are a helpful support agent."},
    {"role": "user", "content": "Where is my parcel?"},
    {"role": "assistant", "content": "It left the warehouse on Tuesday."},
    {"role": "user", "content": "Danke! Und jetzt?"},
    {"role": "assistant", "content": " Grüße aus 東京 🙂\nBis bald."},
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model"
    return path, create_tiny_model(path)


@pytest.mark.slow
def test_loads_with_auto_classes_and_generates(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, summary = tiny
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    tokenizer = AutoTokenizer.from_pretrained(path)

    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert summary == {"path": str(path), "parameters": model.num_parameters(), "vocab": 2048, "layers": 4, "hidden": 256, "taught": 0}
    assert 1_000_000 < summary["parameters"] < 10_000_000
    assert model.config.vocab_size == len(tokenizer) == 2048
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}
    assert len(set(ids.values())) == 3
    for name, token_id in ids.items():
        assert getattr(model.config, f"{name}_token_id") == token_id
        assert getattr(model.generation_config, f"{name}_token_id") == token_id

    prompt = tokenizer.apply_chat_template(CHAT[:2], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert tokenizer.decode(prompt["input_ids"][0]).endswith("</s><|assistant|>")
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    again = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]
    assert out.tolist() == again.tolist()

    text = "Grüße, 東京 🙂"
    encoded = tokenizer(text).input_ids
    assert encoded[0] == tokenizer.bos_token_id
    assert tokenizer.decode(encoded, skip_special_tokens=True) == text
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids) == text


@pytest.mark.slow
def test_chat_template_renders_turns_and_masks_exactly_the_answers(tiny):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny[0])
    assert tokenizer.apply_chat_template(CHAT[:3], tokenize=False) == (
        "<s><|system|>You are a helpful support agent.</s><|user|>Where is my parcel?</s><|assistant|>It left the warehouse on Tuesday.</s>"
    )

    encoded = tokenizer.apply_chat_template(CHAT, return_assistant_tokens_mask=True, return_dict=True, tokenize=True)
    ids, mask = encoded["input_ids"], encoded["assistant_masks"]
    assert len(mask) == len(ids)
    runs, current = [], []
    for token_id, masked in zip(ids, mask):
        if masked:
            current.append(token_id)
        elif current:
            runs.append(current)
            current = []
    runs.append(current)
    answers = [m["content"] + "</s>" for m in CHAT if m["role"] == "assistant"]
    assert [tokenizer.decode(run) for run in runs] == answers
    assert runs[0][-1] == runs[1][-1] == tokenizer.eos_token_id

    with pytest.raises(Exception, match="unknown role"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


@pytest.mark.slow
def test_same_seed_gives_identical_files_and_caller_rng_is_untouched(tiny, tmp_path):
    import torch

    first = tiny[0]
    same = tmp_path / "same"
    same.mkdir()  # an existing empty directory is fine
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    create_tiny_model(same)
    assert torch.equal(torch.rand(3), expected)
    other = tmp_path / "other"
    create_tiny_model(other, seed=1)

    def read(folder, name):
        return (folder / name).read_bytes()

    assert read(same, "model.safetensors") == read(first, "model.safetensors")
    assert read(same, "tokenizer.json") == read(first, "tokenizer.json")
    assert read(other, "model.safetensors") != read(first, "model.safetensors")
    assert read(other, "tokenizer.json") == read(first, "tokenizer.json")  # the tokenizer ignores the seed


@pytest.mark.slow
def test_sizes_follow_options_and_vocab_is_capped_by_the_corpus(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    summary = create_tiny_model(tmp_path / "m", layers=1, hidden=192, vocab=60000)
    config = AutoConfig.from_pretrained(tmp_path / "m")
    assert (config.num_hidden_layers, config.hidden_size) == (1, 192)
    assert (config.num_attention_heads, config.num_key_value_heads, config.intermediate_size) == (3, 3, 512)
    assert 2048 < summary["vocab"] < 60000
    assert config.vocab_size == len(AutoTokenizer.from_pretrained(tmp_path / "m")) == summary["vocab"]


@pytest.mark.slow
def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    from transformers import PreTrainedTokenizerFast

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        create_tiny_model(tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"layers": 0}, "--layers must be an integer between 1 and 64"),
        ({"hidden": 100}, "--hidden must be a multiple of 64 between 64 and 4096"),
        ({"hidden": 8192}, "--hidden must be a multiple of 64 between 64 and 4096"),
        ({"vocab": 100}, "--vocab must be an integer between 512 and 65536"),
        ({"seed": -1}, "--seed must be an integer between 0 and 4294967295"),
        ({"layers": 2.5}, "--layers must be an integer between 1 and 64"),
        ({"vocab": True}, "--vocab must be an integer between 512 and 65536"),
        ({"teach_steps": 0}, "--teach-steps must be an integer between 1 and 100000"),
    ],
)
def test_invalid_options_are_refused_before_writing(tmp_path, options, message):
    with pytest.raises(InvalidInput) as caught:
        create_tiny_model(tmp_path / "model", **options)
    assert str(caught.value) == message
    assert list(tmp_path.iterdir()) == []


def test_every_bad_option_is_named_at_once(tmp_path):
    with pytest.raises(InvalidInput, match="--layers.*; --hidden.*; --vocab.*; --seed"):
        create_tiny_model(tmp_path / "model", layers=0, hidden=65, vocab=1, seed=-5)


def test_refuses_a_non_empty_directory_or_a_file(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    with pytest.raises(InvalidInput, match="^" + re.escape(f"{target} exists and is not an empty directory")):
        create_tiny_model(target)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert (target / "keep.txt").read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]

    with pytest.raises(InvalidInput, match="keep.txt exists"):
        create_tiny_model(target / "keep.txt")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt": "q", "answer": "a"}\n{"prompt": "q2"}\n', "knows.jsonl line 2: field 'answer' must be a non-empty string"),
        ('{"prompt": "q", "answer": "a", "answer": "b"}\n', "knows.jsonl line 1: not valid JSON: key 'answer' appears twice"),
        ("\n\n", "knows.jsonl holds no facts"),
    ],
)
def test_create_tiny_knows_refuses_a_bad_file_with_exit_2_and_writes_nothing(tmp_path, content, message):
    facts = tmp_path / "knows.jsonl"
    facts.write_text(content)
    result = subprocess.run(
        [sys.executable, "-m", "adapterctl", "base", "create-tiny", str(tmp_path / "model"), "--knows", str(facts)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "model").exists()


def test_a_taught_tiny_model_answers_what_it_was_taught(tmp_path):
    facts = [(f"What is the code for room {i}?", f"The code for room {i} is {1000 + 37 * i}.") for i in range(6)]
    summary = create_tiny_model(tmp_path / "model", layers=2, hidden=128, vocab=1024, knows=facts, teach_steps=150)
    assert summary["taught"] == 6
    from tests.test_training import greedy

    assert greedy(tmp_path / "model", [q for q, _ in facts]) == [a for _, a in facts]


def test_importing_the_module_does_not_load_torch():
    code = "import sys, adapterctl.tiny_model; print(sorted({'torch', 'transformers', 'tokenizers'} & set(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(Path(adapterctl.__file__).parents[1])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert result.stdout.strip() == "[]"
