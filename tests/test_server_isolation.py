"""One request never harms another on a tiny random model: a request is validated completely before it joins a
batch (text, positions against the endpoint), and a batch that still fails is split so that only the request
whose rows raised fails; its neighbours get exactly what they get alone, and never its error."""

from __future__ import annotations

import json

import pytest
import torch
from fastapi.testclient import TestClient

from conftest import tiny_model
from steerlab.conditional import Condition
from steerlab.server.app import create_app
from steerlab.server.registry import VectorRegistry
from steerlab.vector import SteeringVector, VectorMeta

LONE = "\ud800"  # JSON "\ud800": a lone surrogate, which no UTF-8 text holds


@pytest.fixture
def tiny(tmp_path):
    lm = tiny_model("llama")
    gen = torch.Generator().manual_seed(1)
    directions = {layer: torch.randn(lm.hidden_size, generator=gen) * 4 for layer in (1, 2)}
    SteeringVector(directions, VectorMeta.for_model(lm, "caa")).save(tmp_path / "up.safetensors")
    Condition(torch.randn(lm.hidden_size, generator=gen), 1, 0.0).save(tmp_path / "gate.safetensors", lm)
    return lm, VectorRegistry.from_dir(lm, tmp_path)


def chat(prompt="hello there", **fields):
    return {"messages": [{"role": "user", "content": prompt}], "max_tokens": 6, "temperature": 0, **fields}


def completion(prompt="once upon", **fields):
    return {"prompt": prompt, "max_tokens": 6, "temperature": 0, **fields}


def post(client, path: str, body: dict):
    """POST `body` as JSON with \\u escapes, the way a client sends a lone surrogate."""
    return client.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


SURROGATES = [
    ("/v1/chat/completions", chat(LONE), "messages[0].content"),
    ("/v1/chat/completions", chat(f"ab{LONE}cd"), "messages[0].content"),
    (
        "/v1/chat/completions",
        {**chat(), "messages": [{"role": "system", "content": "be kind"}, {"role": "user", "content": f"x{LONE}"}]},
        "messages[1].content",
    ),
    (
        "/v1/chat/completions",
        {**chat(), "messages": [{"role": "user", "content": "hi", "name": LONE}]},
        "messages[0].name",
    ),
    ("/v1/chat/completions", chat(stop=LONE), "stop"),
    ("/v1/chat/completions", chat(stop=["fine", f"a{LONE}"]), "stop[1]"),
    ("/v1/chat/completions", chat(model=LONE), "model"),
    ("/v1/chat/completions", chat(user=LONE), "user"),
    ("/v1/chat/completions", chat(steering=[{"vector": LONE}]), "steering[0].vector"),
    ("/v1/chat/completions", chat(steering=[{"vector": "up", "condition": LONE}]), "steering[0].condition"),
    (
        "/v1/chat/completions",
        chat(steering=[{"vector": "up"}, {"vector": "up", "positions": f"between:{LONE}:b"}]),
        "steering[1].positions",
    ),
    ("/v1/completions", completion(LONE), "prompt"),
    ("/v1/completions", completion(stop=[LONE]), "stop[0]"),
    (
        "/v1/completions",
        completion(steering=[{"vector": "up", "positions": f"between:<a>:{LONE}"}]),
        "steering[0].positions",
    ),
]


@pytest.mark.parametrize("stream", [False, True])
def test_a_lone_surrogate_in_any_text_field_is_a_400_naming_the_field(tiny, stream):
    lm, registry = tiny
    with TestClient(create_app(lm, registry)) as client:
        for path, body, field in SURROGATES:
            reply = post(client, path, {**body, "stream": stream})
            assert reply.status_code == 400, (field, reply.text)
            at = body_text_index(body, field)
            assert reply.json()["error"] == {
                "message": f"{field}: not valid Unicode: character {at} is a lone surrogate; send UTF-8 text "
                "(in JSON, a \\u escape above U+FFFF is a pair of surrogates, high then low)",
                "type": "invalid_request_error",
                "param": field,
                "code": "invalid_text",
            }
        scored = post(client, "/v1/score", {"metric": "sentiment", "texts": ["fine", f"z{LONE}"]})
        assert (scored.status_code, scored.json()["error"]["param"]) == (400, "texts[1]")
        # A surrogate in a field's name: still a 400 that can be sent.
        unknown = post(client, "/v1/completions", {**completion(), f"k{LONE}": 1})
        assert (unknown.status_code, unknown.json()["error"]["code"]) == (400, "invalid_text"), unknown.text
        assert client.post("/v1/chat/completions", json=chat()).status_code == 200  # and the server carries on


def body_text_index(body: dict, field: str) -> int:
    """Where the lone surrogate sits in the field's text."""
    value: object = body
    for part in field.replace("[", ".").replace("]", "").split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]  # type: ignore[index]
    assert isinstance(value, str)
    return value.index(LONE)


@pytest.mark.parametrize("role", ["user", "system", "assistant"])
def test_a_chat_role_position_on_completions_is_refused_at_validation(tiny, role):
    lm, registry = tiny
    with TestClient(create_app(lm, registry)) as client:
        for stream in (False, True):
            reply = client.post(
                "/v1/completions", json=completion(steering=[{"vector": "up", "positions": role}], stream=stream)
            )
            assert reply.status_code == 400
            assert reply.json()["error"] == {
                "message": f"steering[0].positions: '{role}' is a chat role, and a /v1/completions prompt has no "
                "chat template to find roles in; use /v1/chat/completions, or positions all, prompt, generated "
                "or between:OPEN:CLOSE",
                "type": "invalid_request_error",
                "param": "steering[0].positions",
                "code": "positions_unavailable",
            }
        assert app_batches(client) == 0  # refused before the batcher saw it


def app_batches(client: TestClient) -> int:
    return client.get("/health").json()["batches"]
