"""Shared fixtures: a char-level tokenizer built in code and tiny random models of six families (no downloads)."""

import os
import string

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tv_utils.models import from_config

SPECIALS = ["<pad>", "<bos>", "<eos>"]


def char_tokenizer(add_bos: bool = True):
    """One token per character, and one for a space followed by a character (" b"), like real tokenizers."""
    chars = [c for c in string.printable if c not in " \t\r\x0b\x0c"]
    vocab = {t: i for i, t in enumerate(SPECIALS + [" "] + chars + [" " + c for c in chars])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(" ?[^ ]| "), "isolated")
    if add_bos:
        from tokenizers.processors import TemplateProcessing

        tok.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   padding_side="left")


def tiny_config(family: str, vocab: int):
    from transformers import (Gemma3TextConfig, GPT2Config, GPTJConfig, GPTNeoXConfig, LlamaConfig, Qwen2Config)

    common = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if family == "llama":
        return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                           num_key_value_heads=2, **common)
    if family == "qwen2":
        return Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                           num_key_value_heads=2, **common)
    if family == "gemma3":
        return Gemma3TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                                num_key_value_heads=1, head_dim=8, sliding_window=6,
                                layer_types=["sliding_attention", "full_attention"] * 2, **common)
    if family == "gpt2":
        return GPT2Config(n_embd=32, n_layer=4, n_head=4, n_positions=128, **common)
    if family == "gptj":
        return GPTJConfig(n_embd=32, n_layer=4, n_head=4, rotary_dim=4, n_positions=128, **common)
    if family == "gpt_neox":
        return GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                             max_position_embeddings=128, **common)
    raise KeyError(family)


FAMILIES = ["llama", "qwen2", "gemma3", "gpt2", "gptj", "gpt_neox"]


@pytest.fixture(scope="session")
def tokenizer():
    return char_tokenizer()


DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(scope="session", params=[(f, d) for d in DTYPES for f in FAMILIES],
                ids=[f"{f}-{str(d)[6:]}" for d in DTYPES for f in FAMILIES])
def tiny(request, tokenizer):
    """A tiny random model of each family, in float32 and in bfloat16 (CPU)."""
    family, dtype = request.param
    torch.set_num_threads(2)
    return from_config(tiny_config(family, len(tokenizer)), tokenizer, name=f"tiny-{family}", dtype=dtype)


@pytest.fixture(scope="session", params=FAMILIES)
def tiny_float32(request, tokenizer):
    """A tiny random model of each family in float32 only (for exact comparisons between two code paths)."""
    return from_config(tiny_config(request.param, len(tokenizer)), tokenizer, name=f"tiny-{request.param}")


@pytest.fixture(scope="session")
def tiny_llama(tokenizer):
    return from_config(tiny_config("llama", len(tokenizer)), tokenizer, name="tiny-llama")


@pytest.fixture(scope="session")
def tiny_llama_folder(tmp_path_factory, tiny_llama):
    """The tiny random Llama with the character tokenizer, saved as a local model folder (`--model PATH`)."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama.hf.save_pretrained(folder)
    tiny_llama.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def new_tiny_llama(tokenizer):
    """A tiny Llama of this test's own, to break or change without touching the shared one."""
    return from_config(tiny_config("llama", len(tokenizer)), tokenizer, name="tiny-llama")


@pytest.fixture(scope="session")
def gemma():
    """The embedded default model (converted once into the user cache)."""
    from tv_utils.models import load_model

    return load_model()
