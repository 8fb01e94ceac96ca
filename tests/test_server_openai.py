"""The real `openai` Python client against our own server on 127.0.0.1 (a tiny random model): every field
it sends is accepted and does what OpenAI documents, streamed and not, and steered and original
completions come back as separate choices with their own indexes."""

from __future__ import annotations

import math

import openai
import pytest
import torch

from conftest import tiny_model
from server_helpers import serve_in_thread
from steerlab.generation import RowPenalties
from steerlab.server.app import create_app
from steerlab.server.registry import VectorRegistry
from steerlab.vector import SteeringVector, VectorMeta

PROMPT = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    lm = tiny_model("llama")
    folder = tmp_path_factory.mktemp("vectors")
    gen = torch.Generator().manual_seed(1)
    directions = {layer: torch.randn(lm.hidden_size, generator=gen) * 4 for layer in (1, 2)}
    SteeringVector(directions, VectorMeta.for_model(lm, "caa")).save(folder / "up.safetensors")
    app = create_app(lm, VectorRegistry.from_dir(lm, folder), max_tokens_limit=64)
    with (
        serve_in_thread(app) as (url, _),
        openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60) as api,
    ):
        yield api, lm.name


def chat(client, **fields):
    api, model = client
    fields = {"max_tokens": 16, "temperature": 0, **fields}
    return api.chat.completions.create(model=model, messages=PROMPT, **fields)


def text_of(choice) -> str:
    return choice.message.content


def test_the_fields_openai_clients_send_are_accepted(client):
    reply = chat(
        client,
        stop=None,
        user="someone",
        seed=3,
        n=1,
        frequency_penalty=0,
        presence_penalty=0,
        logprobs=False,
        stream=False,
    )
    assert reply.object == "chat.completion" and len(reply.choices) == 1
    api, model = client
    newer = api.chat.completions.create(
        model=model,
        messages=[{"role": "developer", "content": "be brief"}, *PROMPT],
        max_completion_tokens=5,
        temperature=0,
    )
    assert newer.usage.completion_tokens <= 5
    assert newer.choices[0].finish_reason in ("length", "stop")


def test_stop_sequences_end_the_text_before_them(client):
    full = text_of(chat(client).choices[0])
    assert len(full) >= 6, full
    stop = full[3:5]
    cut = full.index(stop)
    stopped = chat(client, stop=[stop, "\x00never"]).choices[0]
    assert (text_of(stopped), stopped.finish_reason) == (full[:cut], "stop")
    api, model = client
    streamed = api.chat.completions.create(
        model=model, messages=PROMPT, max_tokens=16, temperature=0, stop=stop, stream=True
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full[:cut]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    completion = api.completions.create(model=model, prompt="abc", max_tokens=16, temperature=0)
    head = completion.choices[0].text
    assert len(head) >= 4, head
    again = api.completions.create(model=model, prompt="abc", max_tokens=16, temperature=0, stop=head[2:4])
    assert again.choices[0].text == head[: head.index(head[2:4])]


def test_frequency_and_presence_penalties_change_repetitive_text(client):
    plain = text_of(chat(client, max_tokens=32).choices[0])
    assert len(set(plain)) < len(plain), "the tiny model should repeat itself unpenalised"
    penalised = text_of(chat(client, max_tokens=32, frequency_penalty=2.0, presence_penalty=2.0).choices[0])
    assert penalised != plain
    assert len(set(penalised)) >= len(set(plain))


def test_penalties_subtract_per_row_over_generated_tokens_only():
    penalties = RowPenalties([1.0, 0.0], [0.5, 0.0])
    prompt = torch.tensor([[3, 3], [3, 3]])
    scores = torch.zeros(2, 6)
    assert torch.equal(penalties(prompt, scores), scores)  # the prompt does not count
    out = penalties(torch.tensor([[3, 3, 4, 4], [3, 3, 4, 4]]), scores)
    assert out[0].tolist() == [0, 0, 0, 0, -2.5, 0] and out[1].tolist() == [0] * 6


def test_logprobs_describe_the_chosen_tokens(client):
    choice = chat(client, logprobs=True, top_logprobs=3).choices[0]
    content = choice.logprobs.content
    specials = {"<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"}  # listed, but not part of the text
    assert "".join(t.token for t in content if t.token not in specials) == text_of(choice)  # a character a token
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token  # greedy picks the most likely
        assert math.isclose(entry.top_logprobs[0].logprob, entry.logprob, abs_tol=1e-6)
        assert entry.bytes == list(entry.token.encode())
    api, model = client
    streamed = list(
        api.chat.completions.create(
            model=model, messages=PROMPT, max_tokens=16, temperature=0, logprobs=True, top_logprobs=3, stream=True
        )
    )
    tokens = [t for c in streamed if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [(t.token, t.logprob) for t in tokens] == [(t.token, t.logprob) for t in content]
    legacy = api.completions.create(model=model, prompt="abc", max_tokens=8, temperature=0, logprobs=2)
    lp = legacy.choices[0].logprobs
    assert "".join(t for t in lp.tokens if t not in specials) == legacy.choices[0].text
    assert len(lp.token_logprobs) == len(lp.tokens) == len(lp.top_logprobs) == len(lp.text_offset)
    assert all(len(top) <= 2 for top in lp.top_logprobs)


def test_seed_and_n_give_repeatable_distinct_samples(client):
    first = chat(client, temperature=1.0, seed=5, n=3)
    again = chat(client, temperature=1.0, seed=5, n=3)
    texts = [text_of(c) for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [text_of(c) for c in again.choices]
    assert len(set(texts)) > 1


def test_include_original_gives_separate_choices_with_their_own_indexes(client):
    api, model = client
    extra = {"steering": [{"vector": "up", "multiplier": 3}], "include_original": True}
    reply = chat(client, n=2, temperature=1.0, seed=1, extra_body=extra)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    flags = [c.model_extra["original"] for c in reply.choices]
    assert flags == [False, False, True, True]
    plain = chat(client, n=2, temperature=1.0, seed=1)
    assert [text_of(c) for c in reply.choices[2:]] == [text_of(c) for c in plain.choices]
    assert [text_of(c) for c in reply.choices[:2]] != [text_of(c) for c in plain.choices]
    # Streamed: a standard client assembles each index on its own, so the texts never interleave.
    stream = api.chat.completions.create(
        model=model, messages=PROMPT, max_tokens=16, temperature=1.0, seed=1, n=2, stream=True, extra_body=extra
    )
    texts: dict[int, str] = {}
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    assert [texts[i] for i in range(4)] == [text_of(c) for c in reply.choices]


def test_errors_reach_the_client_as_openai_errors(client):
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, extra_body={"steering": [{"vector": "nope"}]})
    assert caught.value.code == "vector_not_found"
    assert caught.value.param == "steering[0].vector"
    with pytest.raises(openai.NotFoundError):
        client[0].chat.completions.create(model="gpt-4o", messages=PROMPT, max_tokens=4)
    assert chat(client, max_tokens=2).choices[0].finish_reason in ("stop", "length")
