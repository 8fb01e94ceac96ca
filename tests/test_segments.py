"""Segment-scoped steering ("until:MARKER": the reasoning, not the answer) and the length budget's schedule."""

from __future__ import annotations

import pytest
import torch

from steerlab.generation import GenerationConfig, generate_tokens
from steerlab.positions import marker_end
from steerlab.steering import LengthBudget, SpecSteering, SteeringError, SteeringSpec
from steerlab.vector import SteeringVector, VectorMeta
from test_positions import block_change
from tiny_model import tiny_lm


def _vector(lm, scale: float = 3.0):
    g = torch.Generator().manual_seed(1)
    return SteeringVector({1: torch.randn(lm.hidden_size, generator=g) * scale}, VectorMeta.for_model(lm, "test"))


def test_until_steers_from_the_last_prompt_token_to_the_token_completing_the_marker():
    lm = tiny_lm()
    tok = lm.tokenizer
    prompts = ["Q: ANS?", "Q: 2+2", "Q: x"]  # the first prompt holds the marker itself: only generated text counts
    answers = ["so 3 ANS 7", "4 and ANS: 4", "no marker here"]
    rows = [tok(p + a, add_special_tokens=False)["input_ids"] for p, a in zip(prompts, answers, strict=True)]
    lengths = [len(p) for p in prompts]  # one token per character
    changed = block_change(lm, rows, SteeringSpec(_vector(lm), 1.0, [1], positions="until:ANS"), lengths).ne(0)
    width = changed.shape[1]
    for r, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        end = len(p) + a.index("ANS") + 2 if "ANS" in a else len(p + a)  # the "S" completes the marker
        expected = [len(p) - 1 <= pos < end for pos in range(len(p + a))]
        assert changed[r, width - len(p + a) :].any(-1).tolist() == expected, r
        assert not changed[r, : width - len(p + a)].any()  # padding untouched


def test_marker_end_finds_the_marker_however_it_is_split_and_resumes_exactly():
    tok = tiny_lm().tokenizer
    ids = tok("abc The answer is 12", add_special_tokens=False)["input_ids"]
    end = marker_end(tok, ids, 2, "answer is")
    assert end == len("abc The answer is") - 1
    assert marker_end(tok, ids, 2, "answer is", scanned=5) == end
    assert marker_end(tok, ids[:end], 2, "answer is") is None
    assert marker_end(tok, ids, end, "answer is") is None  # a marker that began before `start` does not count


def _first_new_text(text: str, start: int) -> int:
    """The first index from `start` whose character does not occur before it: a one-token marker seen once."""
    return next(i for i in range(start, len(text)) if text[i] not in text[:i] and not text[i].isspace())


def test_until_generates_the_same_with_and_without_cache_and_alone():
    lm = tiny_lm()
    tok = lm.tokenizer
    rows = [tok(p, add_special_tokens=False)["input_ids"] for p in ("Q: how far?", "Q: x", "Q: a much longer one")]
    config = GenerationConfig(max_new_tokens=14)
    everywhere = generate_tokens(
        lm, rows, SpecSteering(SteeringSpec(_vector(lm), 1.0, [1], "generated")), config=config
    )
    text = tok.decode(everywhere[0])
    at = _first_new_text(text, 3)  # row 0 writes this character first at step `at`: make it the marker
    spec = SteeringSpec(_vector(lm), 1.0, [1], positions=f"until:{text[at]}")
    cached = generate_tokens(lm, rows, SpecSteering(spec), config=config)
    assert torch.equal(cached[0, : at + 1], everywhere[0, : at + 1])  # the same steering up to the marker
    assert not torch.equal(cached[0], everywhere[0])  # and none after it
    lm.model.generation_config.use_cache = False
    try:
        assert torch.equal(generate_tokens(lm, rows, SpecSteering(spec), config=config), cached)
    finally:
        lm.model.generation_config.use_cache = True
    for i, row in enumerate(rows):
        assert torch.equal(generate_tokens(lm, [row], SpecSteering(spec), config=config)[0], cached[i])


def test_budget_schedule_is_zero_within_the_budget_then_ramps_to_the_full_strength():
    share = LengthBudget(tokens=3, ramp=4).scale(torch.arange(-2, 10))
    assert share.tolist() == [0, 0, 0, 0, 0, 0.25, 0.5, 0.75, 1, 1, 1, 1]
    assert LengthBudget(0, 1).scale(torch.arange(0, 3)).tolist() == [1, 1, 1]


def test_budget_adds_exactly_its_share_of_the_vector_at_each_generated_position():
    lm = tiny_lm()
    vector = _vector(lm)
    rows = [lm.tokenizer("Q: one" + "abcdefgh", add_special_tokens=False)["input_ids"]]
    spec = SteeringSpec(vector, 2.0, [1], budget=LengthBudget(tokens=2, ramp=3))
    change = block_change(lm, rows, spec, [6])[0]
    shares = [0.0] * 5 + [0, 0, 1 / 3, 2 / 3, 1, 1, 1, 1, 1]  # position 5 is the last prompt token (0 generated)
    expected = torch.tensor(shares)[:, None] * 2.0 * vector.directions[1]
    torch.testing.assert_close(change, expected, rtol=1e-5, atol=1e-5)


def test_budget_leaves_the_first_tokens_unsteered_and_is_exact_with_and_without_cache():
    lm = tiny_lm()
    rows = [lm.tokenizer(p, add_special_tokens=False)["input_ids"] for p in ("Q: far?", "Q: a longer prompt")]
    config = GenerationConfig(max_new_tokens=12)
    spec = SteeringSpec(_vector(lm, 6.0), 1.0, [1], budget=LengthBudget(tokens=5, ramp=2))
    plain = generate_tokens(lm, rows, None, config=config)
    cached = generate_tokens(lm, rows, SpecSteering(spec), config=config)
    assert torch.equal(cached[:, :5], plain[:, :5]) and not torch.equal(cached, plain)
    lm.model.generation_config.use_cache = False
    try:
        assert torch.equal(generate_tokens(lm, rows, SpecSteering(spec), config=config), cached)
    finally:
        lm.model.generation_config.use_cache = True


def test_bad_segments_and_budgets_are_refused_with_the_fix():
    lm = tiny_lm()
    vector = _vector(lm)
    with pytest.raises(SteeringError, match=r"^a segment is written until:MARKER \(e.g. until:The answer is\); got"):
        SpecSteering(SteeringSpec(vector, positions="until: "))
    with pytest.raises(SteeringError, match=r"^a length budget scales an added vector; the ablate operator has no"):
        SteeringSpec(vector, 1.0, operator="ablate", budget=LengthBudget(10))
    with pytest.raises(SteeringError, match=r"^a length budget counts generated tokens; positions 'prompt' never"):
        SteeringSpec(vector, 1.0, positions="prompt", budget=LengthBudget(10))
    with pytest.raises(SteeringError, match=r"^a length budget's ramp must be a whole number >= 1; got 0$"):
        LengthBudget(10, ramp=0)
    with pytest.raises(SteeringError, match=r"^a length budget's tokens must be a whole number >= 0; got 2.5$"):
        LengthBudget(2.5)  # type: ignore[arg-type]
