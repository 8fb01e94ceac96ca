"""The HTTP API on the real SmolLM2: steered output differs from the original and equals the library's
`generate` for the same settings and seed; streaming reassembles to the same text; every refusal is checked
word for word."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from server_helpers import write_real_vectors
from steerlab.generation import GenerationConfig, generate
from steerlab.server.app import create_app
from steerlab.server.registry import VectorRegistry
from steerlab.steering import SteeringSpec
from steerlab.vector import content_hash

pytestmark = pytest.mark.real_model

PROMPT = "Tell me about your weekend."
TOKENS = 20


@pytest.fixture(scope="module")
def served(smollm2, tmp_path_factory):
    folder = tmp_path_factory.mktemp("vectors")
    vectors = write_real_vectors(smollm2, folder)
    app = create_app(smollm2, VectorRegistry.from_dir(smollm2, folder), max_tokens_limit=64)
    with TestClient(app) as client:
        yield client, vectors


def chat(client, **fields):
    body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": TOKENS, "temperature": 0, **fields}
    return client.post("/v1/chat/completions", json=body)


def test_vectors_are_listed_with_metadata_and_why_some_cannot_be_used(served, smollm2):
    client, vectors = served
    listing = client.get("/v1/vectors").json()["data"]
    by_id = {v["id"]: v for v in listing}
    assert list(by_id) == ["gloomy", "other-weights", "qwen", "sentiment"]
    s = by_id["sentiment"]
    assert (s["usable"], s["problem"], s["layers"], s["method"], s["task"]) == (True, None, [9, 10], "caa", "sentiment")
    assert s["recommended"] == {"layer": 9, "multiplier": 2.5}
    assert s["sha256"] == content_hash(vectors["sentiment"])
    assert s["dataset"]["pairs"] == 8
    assert by_id["other-weights"]["problem"] == (
        f"built for SmolLM2-tuned (hidden size 576, fingerprint 0123456789abcdef); this server runs "
        f"SmolLM2-135M-Instruct (hidden size 576, fingerprint {smollm2.fingerprint}): same shape, different weights"
    )
    assert by_id["qwen"]["problem"] == (
        "built for Qwen2.5-0.5B (hidden size 896, 24 layers); this server runs "
        "SmolLM2-135M-Instruct (hidden size 576, 30 layers)"
    )


def test_steered_chat_differs_from_original_and_equals_library_generate(served, smollm2):
    client, vectors = served
    reply = chat(client, steering=[{"vector": "sentiment", "multiplier": 6, "layers": [9]}], include_original=True)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    choice, other = body["choices"]
    assert [(c["index"], c["original"]) for c in body["choices"]] == [(0, False), (1, True)]
    steered, original = choice["message"]["content"], other["message"]["content"]
    ref = generate(
        smollm2,
        [PROMPT],
        SteeringSpec(vectors["sentiment"], 6.0, [9]),
        generate_orig_output=True,
        config=GenerationConfig(max_new_tokens=TOKENS),
    )[0]
    assert steered != original
    assert (steered, original) == (ref.steered, ref.original)
    assert body["steering"] == [
        {"vector": "sentiment", "multiplier": 6.0, "layers": [9], "positions": "all", "operator": "add"}
    ]
    assert choice["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 2 * TOKENS
    assert body["usage"]["original_completion_tokens"] == TOKENS


def test_omitted_layers_and_multiplier_take_the_vectors_recommendation(served, smollm2):
    client, vectors = served
    body = chat(client, steering=[{"vector": "gloomy"}]).json()
    assert body["steering"] == [
        {"vector": "gloomy", "multiplier": 2.5, "layers": [9], "positions": "all", "operator": "add"}
    ]
    ref = generate(smollm2, [PROMPT], SteeringSpec(vectors["gloomy"]), config=GenerationConfig(max_new_tokens=TOKENS))
    assert body["choices"][0]["message"]["content"] == ref[0].steered


def test_seeded_sampling_with_n_choices_equals_library_generate(served, smollm2):
    client, vectors = served
    body = chat(
        client,
        steering=[{"vector": "sentiment", "multiplier": 4, "layers": [9, 10], "positions": "generated"}],
        temperature=0.8,
        top_p=0.9,
        seed=11,
        n=2,
        include_original=True,
    ).json()
    spec = SteeringSpec(vectors["sentiment"], 4.0, [9, 10], positions="generated")
    config = GenerationConfig(max_new_tokens=TOKENS, do_sample=True, temperature=0.8, top_p=0.9, seed=11)
    # The library gives prompt i the seed 11 + i; the server gives choice i the same.
    ref = generate(smollm2, [PROMPT, PROMPT], spec, generate_orig_output=True, config=config)
    texts = [c["message"]["content"] for c in body["choices"]]
    got = list(zip(texts[:2], texts[2:], strict=False))
    assert got == [(r.steered, r.original) for r in ref]
    assert got[0][0] != got[1][0]
    again = chat(
        client,
        steering=[{"vector": "sentiment", "multiplier": 4, "layers": [9, 10], "positions": "generated"}],
        temperature=0.8,
        top_p=0.9,
        seed=11,
        n=2,
    ).json()
    assert [c["message"]["content"] for c in again["choices"]] == [g[0] for g in got]


def test_completions_use_the_raw_prompt_like_generate_without_chat_template(served, smollm2):
    client, vectors = served
    prompt = "My favourite season is"
    body = client.post(
        "/v1/completions",
        json={
            "prompt": prompt,
            "max_tokens": 12,
            "temperature": 0,
            "steering": [{"vector": "gloomy", "multiplier": 5}],
            "include_original": True,
        },
    ).json()
    ref = generate(
        smollm2,
        [prompt],
        SteeringSpec(vectors["gloomy"], 5.0),
        generate_orig_output=True,
        use_chat_template=False,
        config=GenerationConfig(max_new_tokens=12),
    )[0]
    assert [c["text"] for c in body["choices"]] == [ref.steered, ref.original]
    assert body["object"] == "text_completion"


def test_streamed_chunks_reassemble_to_the_full_response(served):
    client, _ = served
    fields = {"steering": [{"vector": "sentiment", "multiplier": 6}], "include_original": True}
    full = chat(client, **fields).json()["choices"]
    texts, finish, events = {0: "", 1: ""}, {}, []
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": TOKENS,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
            **fields,
        },
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    for chunk in chunks[:-1]:
        assert chunk["object"] == "chat.completion.chunk"
        choice = chunk["choices"][0]
        assert choice["original"] == (choice["index"] == 1)
        texts[choice["index"]] += choice["delta"].get("content", "")
        if choice["finish_reason"]:
            finish[choice["index"]] = choice["finish_reason"]
    assert texts == {0: full[0]["message"]["content"], 1: full[1]["message"]["content"]}
    assert finish == {0: "length", 1: "length"}
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")) > 10  # token by token
    assert chunks[-1]["usage"]["completion_tokens"] == 2 * TOKENS


REFUSALS = [
    (
        {"steering": [{"vector": "cheerful", "multiplier": 2}]},
        "steering[0].vector",
        "steering[0].vector: unknown vector 'cheerful'; registered vectors: gloomy, other-weights, qwen, sentiment",
    ),
    (
        {"steering": [{"vector": "qwen", "multiplier": 2}]},
        "steering[0].vector",
        "steering[0].vector: vector 'qwen' cannot steer this model: built for Qwen2.5-0.5B (hidden size 896, "
        "24 layers); this server runs SmolLM2-135M-Instruct (hidden size 576, 30 layers)",
    ),
    (
        {"steering": [{"vector": "sentiment", "multiplier": 2}, {"vector": "other-weights", "multiplier": 2}]},
        "steering[1].vector",
        "steering[1].vector: vector 'other-weights' cannot steer this model: built for "
        "SmolLM2-tuned (hidden size 576, fingerprint 0123456789abcdef); this server runs SmolLM2-135M-Instruct",
    ),
    (
        {"steering": [{"vector": "sentiment", "multiplier": 2, "layers": [9, 30]}]},
        "steering[0].layers",
        "steering[0].layers: layer 30 is out of range; SmolLM2-135M-Instruct has layers 0..29",
    ),
    (
        {"steering": [{"vector": "sentiment", "multiplier": 2, "layers": [-1]}]},
        "steering[0].layers",
        "steering[0].layers: layer -1 is out of range; SmolLM2-135M-Instruct has layers 0..29",
    ),
    (
        {"steering": [{"vector": "sentiment", "multiplier": 2, "layers": [12]}]},
        "steering[0].layers",
        "steering[0].layers: vector 'sentiment' has no direction for layer 12; it has layers [9, 10]",
    ),
    (
        {"steering": [{"vector": "sentiment", "multiplier": 2, "positions": "middle"}]},
        "steering[0].positions",
        "steering[0].positions: positions must be one of all, prompt, generated, system, user, assistant, "
        "between:OPEN:CLOSE or until:MARKER; got 'middle'",
    ),
    (
        {"steering": [{"vector": "sentiment", "multiplier": 2, "operator": "scale"}]},
        "steering[0].operator",
        "steering[0].operator: Input should be 'add', 'ablate', 'clamp' or 'rotate'",
    ),
    ({"max_tokens": 65}, "max_tokens", "max_tokens: 65 is above this server's limit of 64 (set by serve --max-tokens)"),
    (
        {"model": "gpt-4o"},
        "model",
        "model: 'gpt-4o' is not served here; this server runs 'SmolLM2-135M-Instruct' "
        "(see GET /v1/models), or leave model out",
    ),
    ({"temperature": 3}, "temperature", "temperature: Input should be less than or equal to 2"),
    ({"logit_bias": {"1": 5}}, "logit_bias", "logit_bias: unknown field; see the API docs for the accepted fields"),
]


@pytest.mark.parametrize(("fields", "param", "message"), REFUSALS, ids=[r[1] + str(i) for i, r in enumerate(REFUSALS)])
def test_bad_requests_get_a_400_that_says_which_field_and_why(served, fields, param, message):
    client, _ = served
    reply = chat(client, **fields)
    expected_status = 404 if param == "model" else 400
    assert reply.status_code == expected_status
    error = reply.json()["error"]
    assert error["param"] == param
    assert error["message"].startswith(message), error["message"]


@pytest.mark.parametrize(
    ("literal", "shown"), [("NaN", "nan"), ("Infinity", "inf"), ("-Infinity", "-inf"), ("1e999", "inf")]
)
def test_non_finite_multipliers_are_refused(served, literal, shown):
    client, _ = served
    raw = (
        '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, '
        f'"steering": [{{"vector": "sentiment", "multiplier": {literal}}}]}}'
    )
    reply = client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert reply.status_code == 400
    assert reply.json()["error"] == {
        "message": f"steering[0].multiplier: multiplier must be a finite number, got {shown}",
        "type": "invalid_request_error",
        "param": "steering[0].multiplier",
        "code": "value_error",
    }


def test_health_models_and_unknown_paths(served):
    client, _ = served
    health = client.get("/health").json()
    assert (health["status"], health["model"], health["vectors"]) == ("ok", "SmolLM2-135M-Instruct", 4)
    assert client.get("/v1/models").json()["data"][0]["num_layers"] == 30
    missing = client.get("/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["message"] == "GET /v1/nothing: Not Found"
