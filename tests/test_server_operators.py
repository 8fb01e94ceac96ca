"""The server takes an operator and role/window positions per steering item, and serves what the library generates."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from conftest import tiny_model
from steerlab.generation import GenerationConfig, generate
from steerlab.server.app import create_app
from steerlab.server.registry import VectorRegistry
from steerlab.steering import SteeringSpec
from steerlab.vector import SteeringVector, VectorMeta


@pytest.fixture
def served(tmp_path):
    lm = tiny_model("llama")
    gen = torch.Generator().manual_seed(1)
    directions = {layer: torch.randn(lm.hidden_size, generator=gen) * 4 for layer in (1, 2)}
    SteeringVector(directions, VectorMeta.for_model(lm, "caa", operator="rotate")).save(tmp_path / "up.safetensors")
    registry = VectorRegistry.from_dir(lm, tmp_path)
    with TestClient(create_app(lm, registry)) as client:
        yield lm, registry.entries["up"].vector, client


def _chat(client, **steer):
    body = {
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 10,
        "temperature": 0,
        "steering": [{"vector": "up", "layers": [1], **steer}],
    }
    return client.post("/v1/chat/completions", json=body)


@pytest.mark.parametrize(
    "steer",
    [
        {"operator": "ablate"},
        {"operator": "clamp", "multiplier": 5.0},
        {"multiplier": 120.0},
        {"operator": "add", "multiplier": 6.0, "positions": "user"},
    ],
)
def test_each_operator_and_role_position_serves_what_the_library_generates(served, steer):
    lm, vector, client = served
    reply = _chat(client, **steer)
    assert reply.status_code == 200, reply.text
    spec = SteeringSpec(vector, steer.get("multiplier", 1.0), [1], steer.get("positions", "all"), steer.get("operator"))
    expected = generate(lm, ["hello there"], spec, config=GenerationConfig(max_new_tokens=10))[0].steered
    assert reply.json()["choices"][0]["message"]["content"] == expected
    assert reply.json()["steering"][0]["operator"] == steer.get("operator", "rotate")  # the file's default


def test_bad_operator_or_positions_get_a_400(served):
    _, _, client = served
    for steer in ({"operator": "scale"}, {"positions": "middle"}, {"positions": "between:<think>"}):
        reply = _chat(client, **steer)
        assert reply.status_code == 400, steer
