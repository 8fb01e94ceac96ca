"""The server takes an operator, role/window/segment positions and a length budget per steering item, and serves
what the library generates."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from conftest import tiny_model
from steerlab.generation import GenerationConfig, generate
from steerlab.server.app import create_app
from steerlab.server.registry import VectorRegistry
from steerlab.steering import LengthBudget, SteeringSpec
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
        {"operator": "add", "multiplier": 0.1, "layers": [2], "positions": "until:%k%"},
        {"operator": "add", "multiplier": 60.0, "reasoning_budget": 3, "budget_ramp": 2},
    ],
)
def test_each_operator_and_role_position_serves_what_the_library_generates(served, steer):
    lm, vector, client = served
    reply = _chat(client, **steer)
    assert reply.status_code == 200, reply.text
    budget = LengthBudget(steer["reasoning_budget"], steer["budget_ramp"]) if "reasoning_budget" in steer else None
    positions = steer.get("positions", "all")
    layers = steer.get("layers", [1])
    spec = SteeringSpec(vector, steer.get("multiplier", 1.0), layers, positions, steer.get("operator"), budget=budget)
    plain = generate(lm, ["hello there"], None, config=GenerationConfig(max_new_tokens=10))[0].steered
    expected = generate(lm, ["hello there"], spec, config=GenerationConfig(max_new_tokens=10))[0].steered
    assert reply.json()["choices"][0]["message"]["content"] == expected
    assert reply.json()["steering"][0]["operator"] == steer.get("operator", "rotate")  # the file's default
    if budget is not None:  # one character per token: the budget's first 3 tokens are not steered, later ones are
        assert expected[:3] == plain[:3] and expected != plain
        assert reply.json()["steering"][0]["reasoning_budget"] == 3
    if positions.startswith("until:"):  # steered as "generated" until the marker is written, then left alone
        everywhere = SteeringSpec(vector, 0.1, layers, "generated", "add")
        steered = generate(lm, ["hello there"], everywhere, config=GenerationConfig(max_new_tokens=10))[0].steered
        assert expected[:3] == steered[:3] == "%k%" and expected != steered


def test_a_budget_on_an_operator_without_strength_is_refused_alone(served):
    _, _, client = served
    reply = _chat(client, reasoning_budget=5)  # the file's default operator is rotate
    assert reply.status_code == 400
    assert reply.json()["error"]["message"] == (
        "steering[0]: a length budget scales an added vector; the rotate operator has no strength to ramp (use "
        "operator add, or drop the budget)"
    )
    reply = _chat(client, operator="add", budget_ramp=4)
    assert reply.status_code == 400 and "budget_ramp shapes a reasoning_budget" in reply.json()["error"]["message"]


def test_bad_operator_or_positions_get_a_400(served):
    _, _, client = served
    for steer in ({"operator": "scale"}, {"positions": "middle"}, {"positions": "between:<think>"}):
        reply = _chat(client, **steer)
        assert reply.status_code == 400, steer
