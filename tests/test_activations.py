"""Parity: CAA vectors equal an independent per-example reference built from output_hidden_states."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from steerlab.activations import record_activations, tokenize_pair
from steerlab.batching import token_batches
from steerlab.data import ContrastiveDataset, ContrastivePair, format_prompt, load_pairs
from steerlab.methods.caa import CAAConfig, fit
from tiny_model import ARCHS, reference_means, tiny_model

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
                prompt_ids = tok(
                    format_prompt(tok, pair.prompt, use_chat_template=True) + pair.answer_prefix,
                    add_special_tokens=False,
                )["input_ids"]
            else:
                # A stand-alone text follows a newline (after the tokenizer's start tokens), so its own first token is
                # not the attention sink.
                prompt_ids = tok("\n" + pair.answer_prefix, add_special_tokens=True)["input_ids"]
            answer_ids = tok(answer, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                out = lm.model(torch.tensor([prompt_ids + answer_ids]), output_hidden_states=True)
            # hidden_states[0] is the embedding output; block i's output is hidden_states[i + 1].
            means.append({layer: out.hidden_states[layer + 1][0, len(prompt_ids) :].mean(0) for layer in layers})
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
    singles = torch.stack(
        [record_activations(tiny_llama, [(p, [s]) for p, _ in [item] for s in item[1]], [0, 3])[:, 0] for item in items]
    )
    torch.testing.assert_close(shared, singles, rtol=1e-5, atol=1e-6)


def test_recording_stops_after_deepest_layer(tiny_llama):
    """Layers after the deepest one requested never run, and neither does the lm_head."""
    ran = []
    hooks = [
        layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, layer in enumerate(tiny_llama.layers)
    ]
    hooks.append(tiny_llama.model.lm_head.register_forward_hook(lambda m, a, o: ran.append("lm_head")))
    record_activations(tiny_llama, [([5, 6], [[7], [8]])], [1])
    for h in hooks:
        h.remove()
    assert ran == [0, 1, 0, 1]


def test_out_of_range_layer_is_refused(tiny_llama):
    with pytest.raises(ValueError, match=r"layer 9 is out of range: tiny-llama has layers 0\.\.3"):
        record_activations(tiny_llama, [([5], [[6], [7]])], [9])


@pytest.mark.real_model
def test_caa_parity_on_smollm2(smollm2, shared_data):
    """The real model, a real A/B set (CAA sycophancy) and free-text pairs, with batching and left padding."""
    ab = load_pairs(shared_data / "caa" / "generate" / "sycophancy" / "generate_dataset.json").pairs[:12]
    for pairs in (ab, TEXT_PAIRS):
        vector = fit(smollm2, ContrastiveDataset(pairs, "p", "0"), CAAConfig(layers=[5, 15], batch_size=5))
        assert_parity(vector, reference_caa(smollm2, pairs, [5, 15]))


def test_stand_alone_texts_follow_the_shared_lead(tiny_llama):
    """An empty prompt gives the shared lead (a newline, after the tokenizer's start tokens) as context, so the
    text's first token is not the attention sink; an answer prefix follows the lead."""
    prefix, pos, _neg = tokenize_pair(tiny_llama, ContrastivePair("", "Great film!", "Dull film."))
    assert prefix == tiny_llama.tokenizer("\n", add_special_tokens=True)["input_ids"] != []
    assert (
        tokenize_pair(tiny_llama, ContrastivePair("", "A", "B", answer_prefix="("))[0]
        == tiny_llama.tokenizer("\n(", add_special_tokens=True)["input_ids"]
    )
    assert pos == tiny_llama.tokenizer("Great film!", add_special_tokens=False)["input_ids"]


def test_ab_answers_are_read_at_the_tokens_the_models_own_tokenizer_writes(tiny_llama):
    """SmolLM2-like (one token per character): "A" after "("; Qwen-like ("(A" one token): "(A" against "(B"."""
    pair = ContrastivePair("Is the sky green?\n(A) yes\n(B) no", "A", "B", "ab", "(")
    tok = tiny_llama.tokenizer
    prefix, pos, neg = tokenize_pair(tiny_llama, pair)
    assert tok.convert_ids_to_tokens([prefix[-1], *pos, *neg]) == ["(", "A", "B"]
    vector = fit(tiny_llama, ContrastiveDataset([pair], "p", "0"), CAAConfig(layers=[1]))
    tok.add_tokens(["(A", "(B"])
    tiny_llama.model.resize_token_embeddings(len(tok))
    prefix_q, pos_q, neg_q = tokenize_pair(tiny_llama, pair)
    assert tok.convert_ids_to_tokens([*pos_q, *neg_q]) == ["(A", "(B"]
    assert tok.convert_ids_to_tokens(prefix_q[-2:]) == ["t", "\n"]  # the assistant turn's start, no lone "("
    merged = fit(tiny_llama, ContrastiveDataset([pair], "p", "0"), CAAConfig(layers=[1]))
    # The merged vector is the difference of the activations at "(A" and "(B" after the same context.
    with torch.inference_mode():
        hidden = [
            tiny_llama.model(input_ids=torch.tensor([prefix_q + side]), output_hidden_states=True).hidden_states[2][
                0, -1
            ]
            for side in (pos_q, neg_q)
        ]
    assert torch.allclose(merged.directions[1], hidden[0] - hidden[1], atol=1e-5)
    assert not torch.allclose(merged.directions[1], vector.directions[1], atol=1e-3)


def test_the_same_texts_give_the_same_vector_through_every_entry_point(tmp_path):
    """One lead rule for prompt-less text pairs: inline texts, a pairs file, a task's train data, the sweep's
    builder and `vector build --positive/--negative` all read the texts after the same lead, so they give the
    same vector, and it is the mean a plain forward pass gives after "\\n"."""
    from steerlab.cli import main
    from steerlab.data import load_pairs, pairs_from_texts
    from steerlab.evaluation.sweep import build_sweep_vector
    from steerlab.evaluation.tasks import load_task_file
    from steerlab.vector import SteeringVector

    lm = tiny_model("llama")
    positive, negative = ["I adore this.", "What a joy!"], ["I hate it.", "What a bore..."]
    (tmp_path / "pairs.jsonl").write_text(
        "".join(f'{{"positive": "{p}", "negative": "{n}"}}\n' for p, n in zip(positive, negative, strict=False))
    )
    (tmp_path / "prompts.txt").write_text("Hello\n")
    (tmp_path / "task.yaml").write_text(
        "name: t\nkind: generation\ntrain: pairs.jsonl\ntest: prompts.txt\nmetric: sentiment\n"
    )
    layers = [1, 2]
    vectors = {
        "inline": fit(lm, pairs_from_texts(positive, negative), CAAConfig(layers=layers)),
        "file": fit(lm, load_pairs(tmp_path / "pairs.jsonl"), CAAConfig(layers=layers)),
        "task": fit(lm, load_task_file(tmp_path / "task.yaml").train_data(), CAAConfig(layers=layers)),
        "sweep": build_sweep_vector(lm, pairs_from_texts(positive, negative), layers, task="t"),
    }
    lm.model.save_pretrained(tmp_path / "tiny")
    lm.tokenizer.save_pretrained(tmp_path / "tiny")
    args = [
        "vector",
        "build",
        "--model",
        str(tmp_path / "tiny"),
        "--layers",
        "1,2",
        "--out",
        str(tmp_path / "v.safetensors"),
    ]
    for p, n in zip(positive, negative, strict=False):
        args += ["--positive", p, "--negative", n]
    assert main(args) == 0
    vectors["cli"] = SteeringVector.load(tmp_path / "v.safetensors")
    reference = reference_caa(
        lm, [ContrastivePair("", p, n, "text") for p, n in zip(positive, negative, strict=False)], layers
    )
    for name, vector in vectors.items():
        for layer in layers:
            assert torch.allclose(vector.directions[layer], vectors["inline"].directions[layer], atol=1e-6), name
        assert_parity(vector, reference)
    # the lead matters: reading the texts right after BOS gives another vector
    tok = lm.tokenizer
    bos = [tok.bos_token_id]
    at_bos = torch.stack(
        [
            reference_means(lm, bos, tok(p, add_special_tokens=False)["input_ids"], layers)
            - reference_means(lm, bos, tok(n, add_special_tokens=False)["input_ids"], layers)
            for p, n in zip(positive, negative, strict=False)
        ]
    ).mean(0)
    ours = vectors["inline"].directions[1].double()
    assert ((at_bos[0] - ours).norm() / ours.norm()).item() > 1e-2
