"""Shared fixtures: tiny random-initialised models of several architectures with a character tokenizer."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from steerlab.models import LoadedModel

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"]


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character plus chat specials: a real fast tokenizer that needs no download."""
    chars = sorted(set(string.printable))
    vocab = {tok: i for i, tok in enumerate(SPECIALS + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>",
                                   unk_token="<unk>", additional_special_tokens=["<|im_start|>"])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(arch: str, vocab_size: int):
    import transformers as tf

    common = dict(vocab_size=vocab_size, pad_token_id=0, eos_token_id=2, bos_token_id=1)
    if arch == "llama":
        return tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                              num_key_value_heads=2, **common)
    if arch == "qwen2":
        return tf.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                              num_key_value_heads=2, **common)
    if arch == "gemma2":
        return tf.Gemma2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=8, sliding_window=16, **common)
    if arch == "gemma3":
        return tf.Gemma3TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                                   num_key_value_heads=2, head_dim=8, sliding_window=16, **common)
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=32, n_layer=4, n_head=4, n_positions=256, **common)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                                max_position_embeddings=256, **common)
    raise ValueError(arch)


ARCHS = ["llama", "qwen2", "gemma2", "gemma3", "gpt2", "gpt_neox"]


def tiny_model(arch: str = "llama", seed: int = 0) -> LoadedModel:
    from transformers import AutoModelForCausalLM

    tokenizer = char_tokenizer()
    torch.manual_seed(seed)
    config = tiny_config(arch, len(tokenizer))
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    return LoadedModel(model, tokenizer, name=f"tiny-{arch}")


@pytest.fixture
def tiny_llama() -> LoadedModel:
    return tiny_model("llama")


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    """The real default model (installed by the Makefile); loaded once per test session."""
    from steerlab.models import load_model

    torch.set_num_threads(2)
    return load_model()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(f"{SHARED_DATA}: the shared data folder must sit beside the repository")
    return SHARED_DATA
