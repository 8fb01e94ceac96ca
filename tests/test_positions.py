"""Role and window positions: exactly the tokens the chat template gives each role, with or without a KV cache."""

from __future__ import annotations

import pytest
import torch

from steerlab.batching import pad
from steerlab.generation import GenerationConfig, generate_tokens
from steerlab.positions import prompt_roles, window_flags
from steerlab.steering import SpecSteering, SteeringError, SteeringSpec
from steerlab.vector import SteeringVector, VectorMeta
from tiny_model import tiny_model

CONVERSATIONS = [
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "name a colour"}],
    [{"role": "user", "content": "hi"}],
    [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3+3?"},
    ],
]


def _encode(tok, messages):
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text, tok(text, add_special_tokens=False, return_offsets_mapping=True)


def expected_roles(tok, messages) -> list[str | None]:
    """Each token's role, found by searching the rendered text for the message contents in order (no markers)."""
    text, enc = _encode(tok, messages)
    spans, start = [], 0
    if messages[0]["role"] != "system" and text.startswith("<|im_start|>system\n"):
        # A ChatML template's default system text (SmolLM2's) is the system turn it gives the prompt.
        begin = len("<|im_start|>system\n")
        spans.append((begin, text.index("<|im_end|>"), "system"))
        start = spans[0][1]
    for m in messages:
        at = text.index(m["content"], start)
        spans.append((at, at + len(m["content"]), m["role"]))
        start = at + len(m["content"])
    return [
        next((role for a, b, role in spans if a <= lo and hi <= b and hi > lo), None)
        for lo, hi in enc["offset_mapping"]
    ]


def _vector(lm):
    g = torch.Generator().manual_seed(1)
    return SteeringVector({1: torch.randn(lm.hidden_size, generator=g) * 3}, VectorMeta.for_model(lm, "test"))


def block_change(lm, rows, spec: SteeringSpec, prompt_lengths: list[int] | None = None) -> torch.Tensor:
    """[rows, width, hidden]: block 1's output steered by `spec` minus unsteered, teacher-forced on left-padded
    `rows` (the first `prompt_lengths` tokens of each are its prompt; default: all of it)."""
    ids, mask = pad(rows, lm.tokenizer.pad_token_id, left=True)
    lengths = None if prompt_lengths is None else torch.tensor(prompt_lengths)
    outs = []
    for steer in (None, SpecSteering(spec)):
        seen: dict = {}
        handle = steer.attach(lm, prompt_lengths=lengths) if steer else None
        hook = lm.layers[1].register_forward_hook(
            lambda m, a, o, seen=seen: seen.update(h=o[0] if isinstance(o, tuple) else o)
        )
        try:
            with torch.no_grad():
                lm.model(input_ids=ids, attention_mask=mask)
        finally:
            hook.remove()
            if handle:
                handle.remove()
        outs.append(seen["h"])
    return outs[1] - outs[0]


def steered_positions(lm, rows, positions) -> torch.Tensor:
    """[rows, width] True where block 1's output changed under steering at `positions` (left-padded batch)."""
    return block_change(lm, rows, SteeringSpec(_vector(lm), 1.0, [1], positions=positions)).ne(0).any(-1)


def test_prompt_roles_match_the_contents_the_template_renders():
    lm = tiny_model("llama")
    for messages in CONVERSATIONS:
        _, enc = _encode(lm.tokenizer, messages)
        assert prompt_roles(lm.tokenizer, enc["input_ids"]) == expected_roles(lm.tokenizer, messages)


@pytest.mark.parametrize("role", ["system", "user", "assistant"])
def test_role_positions_steer_exactly_the_role_tokens_in_a_left_padded_batch(role):
    lm = tiny_model("llama")
    rows = [_encode(lm.tokenizer, m)[1]["input_ids"] for m in CONVERSATIONS]
    changed = steered_positions(lm, rows, role)
    width = max(len(r) for r in rows)
    for i, messages in enumerate(CONVERSATIONS):
        want = [label == role for label in expected_roles(lm.tokenizer, messages)]
        if role == "assistant":
            want[-1] = True  # the last prompt token starts the answer
        assert changed[i].tolist() == [False] * (width - len(rows[i])) + want


def test_windows_between_markers_in_prompt_and_generated_text_with_and_without_cache():
    assert window_flags([1, 7, 2, 3, 8, 4, 7, 5], [7], [8]) == [False, False, True, True, False, False, False, True]
    lm = tiny_model("llama")
    tok = lm.tokenizer
    rows = [_encode(tok, [{"role": "user", "content": m}])[1]["input_ids"] for m in ("say [a b] c", "x [open", "plain")]
    changed = steered_positions(lm, rows, "between:[:]")
    width = max(len(r) for r in rows)
    bracket = tok.convert_tokens_to_ids("[")
    inside = [rows[0].index(bracket) + 1 + k for k in range(3)]  # "a b"
    assert [c for c in range(len(rows[0])) if changed[0, width - len(rows[0]) + c]] == inside
    assert changed[1, width - len(rows[1]) + rows[1].index(bracket) + 1 :].all()  # open to the end
    assert not changed[2].any()
    config = GenerationConfig(max_new_tokens=10)
    steer = SpecSteering(SteeringSpec(_vector(lm), 1.0, [1], positions="between:[:]"))
    cached = generate_tokens(lm, rows, steer, config=config)
    lm.model.generation_config.use_cache = False
    assert torch.equal(generate_tokens(lm, rows, steer, config=config), cached)
    lm.model.generation_config.use_cache = True
    for i, row in enumerate(rows):
        assert torch.equal(generate_tokens(lm, [row], steer, config=config)[0], cached[i])


@pytest.mark.parametrize("role", ["user", "assistant"])
def test_role_steering_generates_the_same_with_and_without_cache_and_alone(role):
    lm = tiny_model("llama")
    rows = [_encode(lm.tokenizer, m)[1]["input_ids"] for m in CONVERSATIONS]
    steer = SpecSteering(SteeringSpec(_vector(lm), 1.0, [1], positions=role))
    config = GenerationConfig(max_new_tokens=8)
    cached = generate_tokens(lm, rows, steer, config=config)
    assert not torch.equal(cached, generate_tokens(lm, rows, None, config=config))
    lm.model.generation_config.use_cache = False
    assert torch.equal(generate_tokens(lm, rows, steer, config=config), cached)
    lm.model.generation_config.use_cache = True
    for i, row in enumerate(rows):
        assert torch.equal(generate_tokens(lm, [row], steer, config=config)[0], cached[i])


def test_bad_positions_and_untemplated_prompts_are_refused():
    lm = tiny_model("llama")
    with pytest.raises(SteeringError, match="between:OPEN:CLOSE"):
        SpecSteering(SteeringSpec(_vector(lm), positions="between:<think>"))
    with pytest.raises(SteeringError, match="chat template"):
        steered_positions(lm, [lm.tokenizer("no template here")["input_ids"]], "user")


@pytest.mark.real_model
def test_smollm2_real_template_roles(smollm2):
    tok = smollm2.tokenizer
    for messages in CONVERSATIONS:
        _, enc = _encode(tok, messages)
        roles = prompt_roles(tok, enc["input_ids"])
        assert roles == expected_roles(tok, messages)
        assert {r for r in roles if r} >= {m["role"] for m in messages}
    rows = [_encode(tok, m)[1]["input_ids"] for m in CONVERSATIONS[:2]]
    changed = steered_positions(smollm2, rows, "user")
    width = max(len(r) for r in rows)
    for i, messages in enumerate(CONVERSATIONS[:2]):
        want = [label == "user" for label in expected_roles(tok, messages)]
        assert changed[i].tolist() == [False] * (width - len(rows[i])) + want
