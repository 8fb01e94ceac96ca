"""One request never harms another on a tiny random model: a request is validated completely before it joins a
batch (text, positions against the endpoint), and a batch that still fails is split so that only the request
whose rows raised fails; its neighbours get exactly what they get alone, and never its error."""

from __future__ import annotations

import asyncio
import itertools
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from conftest import tiny_model
from server_helpers import serve_in_thread
from steerlab.conditional import Condition
from steerlab.generation import encode_prompts
from steerlab.positions import marker_ids
from steerlab.server.app import create_app
from steerlab.server.batcher import Batcher, Job, JobFailed, RowDone, RowPlan, Sampling, batch_steering
from steerlab.server.registry import ResolvedSteering, VectorRegistry
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
        raw = client.post(
            "/v1/completions", content=b'{"prompt": "ab\xff"}', headers={"content-type": "application/json"}
        )
        assert (raw.status_code, raw.json()["error"]["message"]) == (
            400,
            "body: not valid UTF-8 (byte 0xff at offset 14); send JSON as UTF-8",
        )
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
                "chat template to find roles in; use /v1/chat/completions, or positions all, prompt, generated, "
                "between:OPEN:CLOSE or until:MARKER",
                "type": "invalid_request_error",
                "param": "steering[0].positions",
                "code": "positions_unavailable",
            }
        assert app_batches(client) == 0  # refused before the batcher saw it


def test_window_markers_are_tokenised_at_validation(tiny, monkeypatch):
    lm, registry = tiny
    real = marker_ids

    def no_tokens(tokenizer, marker):
        if marker == "<gone>":
            raise ValueError(f"the marker {marker!r} encodes to no tokens")
        return real(tokenizer, marker)

    monkeypatch.setattr("steerlab.server.app.marker_ids", no_tokens)
    with TestClient(create_app(lm, registry)) as client:
        reply = client.post(
            "/v1/completions", json=completion(steering=[{"vector": "up", "positions": "between:<a>:<gone>"}])
        )
        assert reply.status_code == 400
        assert reply.json()["error"] == {
            "message": "steering[0].positions: the marker '<gone>' encodes to no tokens",
            "type": "invalid_request_error",
            "param": "steering[0].positions",
            "code": "invalid_marker",
        }
        assert app_batches(client) == 0
        ok = client.post(
            "/v1/completions", json=completion(steering=[{"vector": "up", "positions": "between:<a>:</a>"}])
        )
        assert ok.status_code == 200


def app_batches(client: TestClient) -> int:
    return client.get("/health").json()["batches"]


# --- A batch that fails at generation time fails only the request whose rows raised.


def _plain_rows(lm, prompt: str, max_tokens: int = 6) -> list[RowPlan]:
    return [RowPlan(tuple(encode_prompts(lm, [prompt], use_chat_template=False)[0]), max_tokens, ())]


def _run_jobs(batcher: Batcher, rows: list[list[RowPlan]]) -> list[list[object]]:
    """Submit one job per entry of `rows` at once (they share the batch window); each job's events, in order."""

    async def main() -> list[list[object]]:
        loop = asyncio.get_running_loop()
        jobs = [Job(r, Sampling.of(0.0, 1.0), loop) for r in rows]
        for job in jobs:
            batcher.submit(job)
        out: list[list[object]] = []
        for job in jobs:
            events: list[object] = []
            while sum(isinstance(e, RowDone) for e in events) < len(job.rows):
                event = await asyncio.wait_for(job.events.get(), 60)
                events.append(event)
                if isinstance(event, JobFailed):
                    break
            out.append(events)
        return out

    batcher.start()
    try:
        return asyncio.run(main())
    finally:
        batcher.close(60)


def _texts(events: list[object]) -> list[str]:
    return [e.text for e in events if isinstance(e, RowDone)]


@pytest.mark.parametrize(
    ("positions", "error"),
    [
        ("user", "SteeringError: the prompt does not follow the model's chat template"),
        (f"between:{LONE}:b", "TypeError"),
    ],
)
def test_a_request_failing_in_its_batch_fails_alone(tiny, positions, error):
    """What the issue found: a chat role on a plain prompt, or a surrogate window, reaching the batcher (the app
    now refuses both, but the batcher must not trust that)."""
    lm, registry = tiny
    up = registry.entries["up"].vector
    bad = RowPlan(
        tuple(encode_prompts(lm, ["poisoned prompt"], use_chat_template=False)[0]),
        6,
        (ResolvedSteering("up", up, ((1, 1.0),), 4.0, positions),),
    )
    plain = [_plain_rows(lm, f"plain prompt {i}", 4 + i) for i in range(4)]
    alone = [_texts(_run_jobs(Batcher(lm), [rows])[0]) for rows in plain]
    batcher = Batcher(lm, window_ms=500)
    together = _run_jobs(batcher, [plain[0], plain[1], [bad], plain[2], plain[3]])
    failed = together.pop(2)
    assert len(failed) == 1 and isinstance(failed[0], JobFailed)
    assert failed[0].message.startswith(f"generation failed: {error}")
    assert [_texts(events) for events in together] == alone
    assert not any(isinstance(e, JobFailed) for events in together for e in events)
    assert batcher.batches > 1  # the first batch held all five, then it was split


def _poisoned(marker: float, at_step: int):
    """A batch_steering that raises in the model's forward at `at_step` when a row of the batch steers with
    multiplier `marker`: a generation-time failure caused by one request's rows, after others have streamed."""
    real = batch_steering

    def steering(plans):
        steer = real(plans)
        if not any(item.multiplier == marker for plan in plans for item in plan.steering):
            return steer

        class Poisoned:
            def attach(self, lm, **kwargs):
                inner = steer.attach(lm, **kwargs)
                calls = itertools.count()

                def explode(module, args):
                    if next(calls) == at_step:
                        raise RuntimeError("client A's secret steering exploded")

                hook = lm.model.register_forward_pre_hook(explode)

                class Handle:
                    def remove(self) -> None:
                        hook.remove()
                        inner.remove()

                return Handle()

        return Poisoned()

    return steering


def test_neighbours_of_a_failing_request_get_what_they_get_alone(tiny, monkeypatch, caplog):
    lm, registry = tiny
    monkeypatch.setattr("steerlab.server.batcher.batch_steering", _poisoned(7.0, at_step=3))
    bad = chat("please fail", steering=[{"vector": "up", "multiplier": 7.0}])
    good = [
        completion("plain text", max_tokens=8),
        chat("steered", steering=[{"vector": "up", "multiplier": 2.0}], max_tokens=8),
        chat("with logprobs", logprobs=True, top_logprobs=2, include_original=True),
        completion("another one", max_tokens=5, stop=["x"]),
    ]
    paths = ["/v1/completions", "/v1/chat/completions", "/v1/chat/completions", "/v1/completions"]
    app = create_app(lm, registry, batch_window_ms=500)
    with serve_in_thread(app) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        alone = [client.post(path, json=body).json() for path, body in zip(paths, good, strict=True)]
        streamed_alone = [_stream(client, path, body) for path, body in zip(paths, good, strict=True)]
        batches_before = app.state.batcher.batches
        calls = [("/v1/chat/completions", bad, False)] + [(p, b, False) for p, b in zip(paths, good, strict=True)]
        calls += [("/v1/chat/completions", bad, True)] + [(p, b, True) for p, b in zip(paths, good, strict=True)]
        with ThreadPoolExecutor(len(calls)) as pool:
            replies = list(pool.map(lambda call: _call(url, *call), calls))
        batches = app.state.batcher.batches - batches_before
    failed, together, failed_stream, streamed = replies[0], replies[1:5], replies[5], replies[6:]
    assert failed == (500, "generation failed: RuntimeError: client A's secret steering exploded")
    assert failed_stream[-2:] == [
        {"error": "generation failed: RuntimeError: client A's secret steering exploded"},
        "[DONE]",
    ]
    assert [_choices(r) for r in together] == [_choices(r) for r in alone]
    assert [r["usage"] for r in together] == [r["usage"] for r in alone]
    assert streamed == streamed_alone  # each token once, in order, as when alone
    assert "secret" not in json.dumps(together) + json.dumps(streamed)
    assert batches > 2
    assert any("running it again in halves" in r.getMessage() for r in caplog.records)  # they shared a batch


def _choices(reply: dict) -> list:
    return [{k: v for k, v in c.items() if k != "index"} for c in reply["choices"]]


def _call(url: str, path: str, body: dict, stream: bool):
    with httpx.Client(base_url=url, timeout=60) as client:
        if stream:
            return _stream(client, path, body)
        reply = client.post(path, json=body)
        return reply.json() if reply.status_code == 200 else (reply.status_code, reply.json()["error"]["message"])


def _stream(client: httpx.Client, path: str, body: dict) -> list:
    """A streamed reply as its events, ids and timestamps left out; an error event as {"error": message}."""
    with client.stream("POST", path, json={**body, "stream": True}) as reply:
        events = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
    out: list = []
    for event in events:
        if event == "[DONE]":
            out.append(event)
            continue
        data = json.loads(event)
        if "error" in data:
            out.append({"error": data["error"]["message"]})
        else:
            out.append(data["choices"])
    return out


def test_a_chat_role_request_batched_with_plain_prompts_steers_only_its_own_rows(tiny, caplog):
    """Roles are located only in the rows that steer by role: a plain completion beside it is not a chat prompt."""
    lm, registry = tiny
    calls = [
        (
            "/v1/chat/completions",
            chat("steer my words", steering=[{"vector": "up", "multiplier": 3.0, "positions": "user"}]),
        ),
        *[("/v1/completions", completion(f"plain {i}")) for i in range(3)],
    ]
    app = create_app(lm, registry, batch_window_ms=500)
    with serve_in_thread(app) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        alone = [client.post(path, json=body).json() for path, body in calls]
        batches_before = app.state.batcher.batches
        with ThreadPoolExecutor(len(calls)) as pool:
            together = list(pool.map(lambda call: _call(url, *call, False), calls))
        assert app.state.batcher.batches - batches_before < len(calls)  # they shared forward passes
    assert [_choices(r) for r in together] == [_choices(r) for r in alone]
    assert not [r for r in caplog.records if r.name == "steerlab.server.batcher"]  # no batch failed
