"""The server's `condition` (CAST) and `ablate_direction` per steering item serve what the library generates,
each row of a mixed batch equal to that row alone, and misuse gets a 400 that names the field."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from steerlab.ablation import DirectionalAblation
from steerlab.conditional import Condition, ConditionalSteering, last_token_scores
from steerlab.generation import GenerationConfig, encode_prompts, generate, generate_tokens
from steerlab.server.app import create_app
from steerlab.server.batcher import RowPlan, batch_steering
from steerlab.server.registry import VectorRegistry
from steerlab.server.schemas import SteeringItem
from steerlab.steering import SteeringSpec
from steerlab.vector import SteeringVector, VectorMeta
from tiny_model import tiny_lm

PROMPTS = ["tell me a story about cats", "zz", "what is 2+2?"]
CONFIG = GenerationConfig(max_new_tokens=10)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny model, a vector 'up' (layers 0 and 2), a vector 'away' to ablate, and a condition 'long' at layer 1
    whose threshold lies between the prompts' scores, so that they decide differently."""
    folder = tmp_path_factory.mktemp("vectors")
    lm = tiny_lm()
    gen = torch.Generator().manual_seed(5)
    up = SteeringVector(
        {k: torch.randn(lm.hidden_size, generator=gen) * 4 for k in (0, 2)}, VectorMeta.for_model(lm, "caa")
    )
    away = SteeringVector({1: torch.randn(lm.hidden_size, generator=gen) * 3}, VectorMeta.for_model(lm, "caa"))
    direction = torch.randn(lm.hidden_size, generator=gen)
    scores = last_token_scores(lm, encode_prompts(lm, PROMPTS), {1: direction})[1]
    low, high = scores.sort().values[:2].tolist()
    condition = Condition(direction, 1, (low + high) / 2, ">=")
    decided = condition.decide(scores)
    assert decided.any() and not decided.all()
    up.save(folder / "up.safetensors")
    away.save(folder / "away.safetensors")
    condition.save(folder / "long.safetensors", lm)
    registry = VectorRegistry.from_dir(lm, folder)
    with TestClient(create_app(lm, registry)) as client:
        yield lm, registry, client, decided


def _chat(client, prompt, steering):
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": CONFIG.max_new_tokens,
        "temperature": 0,
        "steering": steering,
    }
    return client.post("/v1/chat/completions", json=body)


def _text(reply) -> str:
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["message"]["content"]


def test_a_conditional_item_serves_the_library_cast_and_steers_only_the_prompts_it_selects(served):
    lm, registry, client, decided = served
    up, condition = registry.entries["up"].vector, registry.entries["long"].condition
    item = {"vector": "up", "multiplier": 2.0, "condition": "long"}
    for prompt, selected in zip(PROMPTS, decided.tolist(), strict=False):
        served_text = _text(_chat(client, prompt, [item]))
        cast = ConditionalSteering(SteeringSpec(up, 2.0), condition)
        assert served_text == generate(lm, [prompt], cast, config=CONFIG)[0].steered
        plain = generate(lm, [prompt], None, config=CONFIG)[0].steered
        always = generate(lm, [prompt], SteeringSpec(up, 2.0), config=CONFIG)[0].steered
        assert plain != always  # the behaviour changes this prompt's text, so the next line can fail
        assert served_text == (always if selected else plain)
    reply = _chat(client, PROMPTS[0], [item]).json()
    assert reply["steering"][0]["condition"] == {
        "name": "long",
        "layer": 1,
        "comparison": ">=",
        "threshold": condition.threshold,
    }


def test_ablate_direction_serves_the_library_ablation(served):
    lm, registry, client, _ = served
    served_text = _text(_chat(client, PROMPTS[0], [{"vector": "away", "ablate_direction": True}]))
    ablation = DirectionalAblation(registry.entries["away"].vector)
    assert served_text == generate(lm, [PROMPTS[0]], ablation, config=CONFIG)[0].steered
    assert served_text != generate(lm, [PROMPTS[0]], None, config=CONFIG)[0].steered


def test_each_row_of_a_mixed_batch_equals_that_row_alone(served):
    """Plain, CAST-gated, ablating and unsteered rows in one batch; cache and no cache give the same tokens."""
    lm, registry, _, _ = served
    requests = [
        [{"vector": "up", "multiplier": 1.5}],
        [{"vector": "up", "multiplier": 2.0, "condition": "long"}],
        [{"vector": "up", "multiplier": -1.0, "layers": [2]}, {"vector": "up", "multiplier": 3.0, "condition": "long"}],
        [{"vector": "away", "ablate_direction": True}, {"vector": "up", "multiplier": 1.0, "layers": [0]}],
        [],
    ]
    ids = encode_prompts(lm, PROMPTS)
    plans = [
        RowPlan(tuple(ids[i % len(ids)]), 10, tuple(registry.resolve([SteeringItem(**x) for x in items])))
        for i, items in enumerate(requests)
    ]
    batch = generate_tokens(lm, [p.prompt_ids for p in plans], batch_steering(plans), config=CONFIG)
    lm.model.generation_config.use_cache = False
    try:
        uncached = generate_tokens(lm, [p.prompt_ids for p in plans], batch_steering(plans), config=CONFIG)
    finally:
        lm.model.generation_config.use_cache = True
    assert torch.equal(batch, uncached)
    for i, plan in enumerate(plans):
        alone = generate_tokens(lm, [plan.prompt_ids], batch_steering([plan]), config=CONFIG)[0]
        width = min(alone.shape[0], batch.shape[1])
        assert torch.equal(batch[i, :width], alone[:width]), requests[i]
    assert len({tuple(row.tolist()) for row in batch}) > 3  # the rows' steering differs, and so does their text


def test_conditions_are_listed_as_conditions(served):
    _, _, client, _ = served
    listed = {v["id"]: v for v in client.get("/v1/vectors").json()["data"]}
    assert listed["long"]["object"] == "steering_condition"
    assert listed["long"]["condition"]["layer"] == 1 and listed["long"]["condition"]["comparison"] == ">="
    assert listed["up"]["object"] == "steering_vector" and "condition" not in listed["up"]


@pytest.mark.parametrize(
    ("item", "param", "message"),
    [
        (
            {"vector": "long"},
            "steering[0].vector",
            "steering[0].vector: 'long' is not a vector: it is a condition (kind 'condition'): give it as condition, "
            "beside the vector to apply",
        ),
        (
            {"vector": "up", "condition": "away"},
            "steering[0].condition",
            "steering[0].condition: 'away' is not a condition: it is a vector; a condition file comes from "
            "`steerlab vector condition`",
        ),
        (
            {"vector": "up", "condition": "short"},
            "steering[0].condition",
            "steering[0].condition: unknown condition 'short'; registered conditions: long",
        ),
        (
            {"vector": "up", "ablate_direction": True},
            "steering[0].layers",
            "steering[0].layers: the vector has several layers and no recommended one; say which layer's direction to "
            "ablate",
        ),
    ],
)
def test_misused_names_get_a_400_naming_the_field(served, item, param, message):
    _, _, client, _ = served
    reply = _chat(client, PROMPTS[0], [item])
    assert reply.status_code == 400
    assert (reply.json()["error"]["param"], reply.json()["error"]["message"]) == (param, message)


@pytest.mark.parametrize(
    "extra",
    [{"multiplier": 2.0}, {"operator": "add"}, {"positions": "prompt"}, {"condition": "long"}, {"layers": [0, 2]}],
)
def test_ablate_direction_refuses_what_cannot_apply_to_it(served, extra):
    _, _, client, _ = served
    reply = _chat(client, PROMPTS[0], [{"vector": "up", "ablate_direction": True, **extra}])
    assert reply.status_code == 400
    assert "ablate_direction" in reply.json()["error"]["message"]
