"""Decoder blocks are found by structure on every architecture; loading errors say how to fix them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from steerlab.models import ModelLoadError, find_decoder_layers, load_model
from tiny_model import ARCHS, tiny_model

# Where each family keeps its blocks, written out here as the independent reference.
EXPECTED_PATHS = {
    "llama": "model.layers",
    "qwen2": "model.layers",
    "gemma2": "model.layers",
    "gemma3": "model.layers",
    "gpt2": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
}


@pytest.mark.parametrize("arch", ARCHS)
def test_finds_decoder_blocks_by_structure(arch):
    lm = tiny_model(arch)
    path, layers = find_decoder_layers(lm.model)
    assert path == EXPECTED_PATHS[arch]
    assert layers is lm.model.get_submodule(EXPECTED_PATHS[arch])
    assert lm.num_layers == 4 and lm.hidden_size == 32


def test_renamed_model_is_still_found():
    """A wrapper with unusual attribute names: the name never matters, the structure does."""
    inner = tiny_model("llama").model

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = inner
            self.heads = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])  # a decoy list

    path, layers = find_decoder_layers(Wrapper())
    assert path == "backbone.model.layers" and len(layers) == 4


def test_non_transformer_is_refused():
    with pytest.raises(ModelLoadError, match="could not find the decoder blocks of Linear"):
        find_decoder_layers(nn.Linear(3, 3))


def test_bad_sources_are_explained(tmp_path):
    with pytest.raises(ModelLoadError, match=r"not a model folder or a \.gguf file"):
        load_model(tmp_path / "nothing-here")
    with pytest.raises(ModelLoadError, match=r"no config\.json; a Hugging Face model folder needs one"):
        load_model(tmp_path)


def test_loads_a_saved_folder(tmp_path):
    lm = tiny_model("qwen2")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.fingerprint == lm.fingerprint and loaded.name == tmp_path.name
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, lm.model(ids).logits)


@pytest.mark.real_model
def test_default_model_is_smollm2(smollm2):
    assert smollm2.name == "SmolLM2-135M-Instruct"
    assert (smollm2.num_layers, smollm2.hidden_size, smollm2.layers_path) == (30, 576, "model.layers")
    assert smollm2.use_chat_template and smollm2.default_layer() == 15
