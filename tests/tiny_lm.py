"""A tiny randomly initialised Llama with a word-level tokenizer, built in memory for fast tests."""

from __future__ import annotations

import torch

from steerlab.models import LoadedModel

WORDS = ("<pad> <s> </s> <unk> the a movie film story was is it i you we love hate good bad great awful "
         "fine boring lovely terrible day night happy sad very not and but so really quite").split()


def tiny_lm(seed: int = 0, layers: int = 4, hidden: int = 32) -> LoadedModel:
    """A 4-layer Llama (hidden 32) over WORDS; no chat template, BOS <s>, EOS/pad </s>."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="</s>",
                                        bos_token="<s>", eos_token="</s>")
    config = LlamaConfig(vocab_size=len(WORDS), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return LoadedModel(model, tokenizer, name=f"tiny-llama-{seed}", use_chat_template=False)
