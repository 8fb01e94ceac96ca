"""Tiny random-initialised models (several architectures) with a character tokenizer and a chat template, for fast tests."""

from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from steerlab.models import LoadedModel

SPECIALS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character (so decoded text equal <=> tokens equal), plus specials."""
    chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
    vocab = {tok: i for i, tok in enumerate(SPECIALS + chars)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(SPECIALS)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_lm(
    num_layers: int = 4, hidden: int = 16, seed: int = 0, dtype: torch.dtype = torch.float32, chat: bool = True
) -> LoadedModel:
    """A Llama with `num_layers` blocks of width `hidden`, random weights from `seed` (std 0.5: varied, decisive greedy output)."""
    tok = char_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        initializer_range=0.5,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    return LoadedModel(model, tok, name=f"tiny-llama-{num_layers}x{hidden}", use_chat_template=chat)


@torch.inference_mode()
def reference_means(lm: LoadedModel, prefix: list[int], suffix: list[int], layers: list[int]) -> torch.Tensor:
    """Mean over the suffix tokens of each layer's output, from plain transformers (one unpadded sequence): [n_layers, hidden]."""
    ids = torch.tensor([prefix + suffix])
    hidden = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    # hidden_states[0] is the embeddings, [i + 1] block i's output (the last one has the final norm applied).
    assert all(layer < lm.num_layers - 1 for layer in layers), "the last hidden state is normalised; use earlier layers"
    return torch.stack([hidden[layer + 1][0, len(prefix) :].mean(0) for layer in layers]).double()


def chat_ids(lm: LoadedModel, user: str, system: str | None = None) -> list[int]:
    """Token ids of a prompt through the chat template, written out directly from the tokenizer."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    text = lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


ARCHS = ["llama", "qwen2", "gemma2", "gemma3", "gpt2", "gpt_neox"]


def tiny_config(arch: str, vocab_size: int):
    """A 4-block, width-32 config of each family, to show steerlab never depends on the family's names."""
    import transformers as tf

    common = {"vocab_size": vocab_size, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    sizes = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4}
    if arch == "llama":
        return tf.LlamaConfig(num_key_value_heads=2, **sizes, **common)
    if arch == "qwen2":
        return tf.Qwen2Config(num_key_value_heads=2, **sizes, **common)
    if arch == "gemma2":
        return tf.Gemma2Config(num_key_value_heads=2, head_dim=8, sliding_window=16, **sizes, **common)
    if arch == "gemma3":
        return tf.Gemma3TextConfig(num_key_value_heads=2, head_dim=8, sliding_window=16, **sizes, **common)
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=32, n_layer=4, n_head=4, n_positions=256, **common)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(max_position_embeddings=256, **sizes, **common)
    raise ValueError(arch)


def tiny_model(arch: str = "llama", seed: int = 0) -> LoadedModel:
    """A random model of one family, named tiny-<arch>."""
    tokenizer = char_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, len(tokenizer)), attn_implementation="eager").eval()
    return LoadedModel(model, tokenizer, name=f"tiny-{arch}")
