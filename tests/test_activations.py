"""Parity: CAA vectors equal an independent per-example reference built from output_hidden_states."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tiny_model import ARCHS, tiny_model
from steerlab.activations import record_activations, tokenize_pair
from steerlab.batching import token_batches
from steerlab.data import ContrastiveDataset, ContrastivePair, format_prompt, load_pairs
from steerlab.methods.caa import CAAConfig, fit

AB_PAIRS = [
    ContrastivePair("Is the sky green?\n(A) yes\n(B) no", "A", "B", "ab", "("),
    ContrastivePair("Pick one.\n(A) cats\n(B) dogs and more dogs", "B", "A", "ab", "("),
    ContrastivePair("Short?", "A", "B", "ab", "("),
    ContrastivePair("A longer question that needs plenty of left padding in its batch?", "A", "B", "ab", "("),
    ContrastivePair("Yes or no?", "Yes", "No", "ab", ""),
]
TEXT_PAIRS = [
    ContrastivePair("Describe the day.", "A lovely bright day.", "A grim wet day that drags on.", "text"),
    ContrastivePair("", "Great film!", "Dull film, sadly.", "text"),
    ContrastivePair("Food?", "Tasty.", "Bland and cold.", "text"),
    ContrastivePair("", "I adore this.", "I hate it.", "text"),
]


def reference_caa(lm, pairs, layers):
    """Per-example, full-model forward with output_hidden_states: the plain-transformers way."""
    tok = lm.tokenizer
    diffs = {layer: [] for layer in layers}
    for pair in pairs:
        means = []
        for answer in (pair.positive, pair.negative):
            if pair.prompt:
                prompt_ids = tok(format_prompt(tok, pair.prompt, use_chat_template=True) + pair.answer_prefix,
                                 add_special_tokens=False)["input_ids"]
            else:
                prompt_ids = tok(pair.answer_prefix, add_special_tokens=True)["input_ids"]
                # A stand-alone text starts after BOS (else EOS), so its own first token is not the attention sink.
                prompt_ids = prompt_ids or [tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]
            answer_ids = tok(answer, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                out = lm.model(torch.tensor([prompt_ids + answer_ids]), output_hidden_states=True)
            # hidden_states[0] is the embedding output; block i's output is hidden_states[i + 1].
            means.append({layer: out.hidden_states[layer + 1][0, len(prompt_ids):].mean(0) for layer in layers})
        for layer in layers:
            diffs[layer].append(means[0][layer] - means[1][layer])
    return {layer: torch.stack(d).mean(0) for layer, d in diffs.items()}


def assert_parity(vector, reference):
    for layer, ref in reference.items():
        got = vector.directions[layer]
        cos = F.cosine_similarity(got, ref, dim=0).item()
        rel = ((got - ref).norm() / ref.norm()).item()
        assert cos >= 0.9999 and rel < 1e-4, f"layer {layer}: cosine {cos:.6f}, relative error {rel:.2e}"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("pairs", [AB_PAIRS, TEXT_PAIRS], ids=["ab", "text"])
def test_caa_matches_reference(arch, pairs):
    lm = tiny_model(arch)
    # The last layer of GPT-2 and GPT-NeoX hidden_states is after the final norm, so compare inner layers.
    layers = [1, 2]
    data = ContrastiveDataset(pairs, "fixture", "0")
    vector = fit(lm, data, CAAConfig(layers=layers, batch_size=3))
    assert_parity(vector, reference_caa(lm, pairs, layers))


def test_shared_prefix_equals_joined_sequences(tiny_llama):
    """The KV-reuse path (k=2 suffixes) gives what one sequence per suffix gives."""
    items = [([5, 6, 7, 8, 9], [[10, 11], [12]]), ([13, 14], [[15], [16, 17, 18]])]
    assert token_batches([7, 5], max_rows=2) == [[1, 0]]  # one batch, so left-padded prefixes are exercised
    shared = record_activations(tiny_llama, items, [0, 3], batch_size=2)
    singles = torch.stack([
        record_activations(tiny_llama, [(p, [s]) for p, _ in [item] for s in item[1]], [0, 3])[:, 0]
        for item in items
    ])
    torch.testing.assert_close(shared, singles, rtol=1e-5, atol=1e-6)


def test_recording_stops_after_deepest_layer(tiny_llama):
    """Layers after the deepest one requested never run, and neither does the lm_head."""
    ran = []
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, layer in enumerate(tiny_llama.layers)]
    hooks.append(tiny_llama.model.lm_head.register_forward_hook(lambda m, a, o: ran.append("lm_head")))
    record_activations(tiny_llama, [([5, 6], [[7], [8]])], [1])
    for h in hooks:
        h.remove()
    assert ran == [0, 1, 0, 1]


def test_out_of_range_layer_is_refused(tiny_llama):
    with pytest.raises(ValueError, match=r"layer 9 is out of range: tiny-llama has layers 0\.\.3"):
        record_activations(tiny_llama, [([5], [[6], [7]])], [9])


@pytest.mark.slow
def test_caa_parity_on_smollm2(smollm2, shared_data):
    """The real model, a real A/B set (CAA sycophancy) and free-text pairs, with batching and left padding."""
    ab = load_pairs(shared_data / "caa" / "generate" / "sycophancy" / "generate_dataset.json").pairs[:12]
    for pairs in (ab, TEXT_PAIRS):
        vector = fit(smollm2, ContrastiveDataset(pairs, "p", "0"), CAAConfig(layers=[5, 15], batch_size=5))
        assert_parity(vector, reference_caa(smollm2, pairs, [5, 15]))


def test_stand_alone_texts_start_after_bos(tiny_llama):
    """An empty prompt gives the BOS token as context, so the text's first token is not the attention sink."""
    prefix, pos, neg = tokenize_pair(tiny_llama, ContrastivePair("", "Great film!", "Dull film."))
    assert prefix == [tiny_llama.tokenizer.bos_token_id]
    assert pos == tiny_llama.tokenizer("Great film!", add_special_tokens=False)["input_ids"]
