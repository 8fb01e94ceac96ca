"""Perplexity of continuations: batched and masked, checked against the model's own loss on single sequences."""

from __future__ import annotations

import math

import pytest
import torch

from steerlab.evaluation.perplexity import ContinuationLoss, continuation_losses, corpus_perplexity
from tiny_model import chat_ids, tiny_lm

PROMPTS = ["the movie", "i love it very", "we", "a story was not really"]
CONTINUATIONS = ["was good and lovely", "bad", "hate the boring film so very much", "awful"]


def reference_nll(lm, prompt: str, continuation: str) -> tuple[float, int]:
    """One unpadded sequence (the prompt through the chat template), prompt tokens labelled -100: HF's mean loss times the token count."""
    prefix = chat_ids(lm, prompt)
    suffix = lm.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prefix + suffix])
    labels = ids.clone()
    labels[0, : len(prefix)] = -100
    with torch.no_grad():
        loss = lm.model(input_ids=ids, labels=labels).loss
    return float(loss) * len(suffix), len(suffix)


def test_batched_losses_match_single_sequence_references():
    lm = tiny_lm()
    losses = continuation_losses(lm, PROMPTS, CONTINUATIONS, batch_size=3)
    for loss, prompt, cont in zip(losses, PROMPTS, CONTINUATIONS, strict=False):
        nll, n = reference_nll(lm, prompt, cont)
        assert loss.tokens == n
        assert loss.nll == pytest.approx(nll, rel=1e-4)
        assert loss.perplexity == pytest.approx(math.exp(nll / n), rel=1e-4)


def test_corpus_perplexity_pools_tokens():
    losses = [ContinuationLoss(2.0, 1), ContinuationLoss(6.0, 3), ContinuationLoss(0.0, 0)]
    assert corpus_perplexity(losses) == pytest.approx(math.exp(8.0 / 4))
    assert math.isnan(corpus_perplexity([ContinuationLoss(0.0, 0)]))


def test_an_empty_continuation_has_no_perplexity():
    lm = tiny_lm()
    losses = continuation_losses(lm, ["the movie", "we"], ["", "love it"])
    assert losses[0] == ContinuationLoss(0.0, 0) and math.isnan(losses[0].perplexity)
    assert losses[1].nll == pytest.approx(reference_nll(lm, "we", "love it")[0], rel=1e-4)


def test_refuses_mismatched_lists():
    with pytest.raises(ValueError, match=r"^2 prompts but 1 continuations; give one continuation per prompt$"):
        continuation_losses(tiny_lm(), ["a", "b"], ["c"])
