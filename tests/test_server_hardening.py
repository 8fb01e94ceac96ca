"""The server under hostile and careless use, on a tiny random model: every failure is a JSON error on a
connection that stays open, slow work never stalls other requests, sizes are capped, types are strict,
a server without a token warns and answers only loopback Host names, and bad vectors are isolated."""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time

import httpx
import pytest
import safetensors.torch
import torch
from fastapi.testclient import TestClient

from conftest import tiny_model
from server_helpers import serve_in_thread
from steerlab.evaluation.metric_registry import METRICS, Metric
from steerlab.server.app import Limits, create_app
from steerlab.server.registry import VectorRegistry
from steerlab.vector import SteeringVector, VectorMeta


@pytest.fixture
def tiny(tmp_path):
    lm = tiny_model("llama")
    gen = torch.Generator().manual_seed(1)
    directions = {layer: torch.randn(lm.hidden_size, generator=gen) * 4 for layer in (1, 2)}
    SteeringVector(directions, VectorMeta.for_model(lm, "caa")).save(tmp_path / "up.safetensors")
    return lm, VectorRegistry.from_dir(lm, tmp_path)


def chat_body(prompt="hello there", **fields):
    return {"messages": [{"role": "user", "content": prompt}], "max_tokens": 8, "temperature": 0, **fields}


def request(
    conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None, headers: dict | None = None
) -> tuple[int, dict]:
    conn.request(method, path, body=body, headers={"content-type": "application/json", **(headers or {})})
    reply = conn.getresponse()
    return reply.status, json.loads(reply.read())


def test_every_failure_is_a_json_error_and_the_connection_stays_open(tiny, monkeypatch):
    lm, registry = tiny

    def broken():
        raise TypeError("unsupported operand type(s) for *: 'NoneType' and 'float'")

    monkeypatch.setattr(registry, "describe", broken)  # what a vector with metadata of the wrong type did
    with serve_in_thread(create_app(lm, registry)) as (url, _):
        conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=60)
        status, body = request(conn, "GET", "/v1/vectors")
        sock = conn.sock
        assert (status, body["error"]["type"], body["error"]["code"]) == (500, "server_error", "internal_error")
        assert "TypeError" in body["error"]["message"]
        checks = [
            ("POST", "/v1/chat/completions", b"{not json", 400),
            ("POST", "/v1/chat/completions", json.dumps(chat_body(max_tokens=True)).encode(), 400),
            ("GET", "/v1/nothing", None, 404),
            ("POST", "/v1/chat/completions", json.dumps(chat_body(model="gpt-4o")).encode(), 404),
            ("POST", "/v1/score", json.dumps({"metric": "sentiment", "texts": ["x" * 20_000]}).encode(), 413),
            ("GET", "/v1/vectors", None, 500),
            ("POST", "/v1/chat/completions", json.dumps(chat_body()).encode(), 200),
        ]
        for method, path, payload, expected in checks:
            status, body = request(conn, method, path, payload)
            assert status == expected, body
            assert expected == 200 or set(body["error"]) == {"message", "type", "param", "code"}
            assert conn.sock is sock, f"the server closed the connection after {method} {path}"
        conn.close()


def test_a_failed_stream_ends_with_an_error_event_and_done(tiny, monkeypatch):
    lm, registry = tiny
    app = create_app(lm, registry)

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("steerlab.server.batcher.generate_tokens", explode)
    with TestClient(app) as client:
        with client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as reply:
            events = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["error"]["message"] == "generation failed: RuntimeError: boom"
        assert client.get("/health").status_code == 200


def _health_latency_during(url: str, slow_call) -> float:
    """Seconds /health takes while `slow_call` runs in another thread."""
    worker = threading.Thread(target=slow_call)
    worker.start()
    time.sleep(0.3)
    started = time.monotonic()
    assert httpx.get(url + "/health", timeout=30).status_code == 200
    latency = time.monotonic() - started
    worker.join(60)
    return latency


def test_scoring_runs_off_the_event_loop(tiny, monkeypatch):
    lm, registry = tiny

    def slow(texts):
        time.sleep(1.0)
        return [0.0] * len(texts)

    monkeypatch.setitem(METRICS, "slow", Metric("slow", "slow", "", "", "slowness", slow, 0.0, 1.0))
    with serve_in_thread(create_app(lm, registry)) as (url, _):
        latency = _health_latency_during(
            url, lambda: httpx.post(url + "/v1/score", json={"metric": "slow", "texts": ["a", "b"]}, timeout=60)
        )
    assert latency < 0.5


def test_tokenising_runs_off_the_event_loop(tiny, monkeypatch):
    lm, registry = tiny
    original = lm.tokenizer.apply_chat_template

    def slow_template(*args, **kwargs):
        time.sleep(1.5)
        return original(*args, **kwargs)

    monkeypatch.setattr(lm.tokenizer, "apply_chat_template", slow_template)
    with serve_in_thread(create_app(lm, registry)) as (url, _):
        latency = _health_latency_during(
            url, lambda: httpx.post(url + "/v1/chat/completions", json=chat_body(), timeout=60)
        )
    assert latency < 0.5


def test_body_prompt_and_text_sizes_are_capped_with_413(tiny):
    lm, registry = tiny
    limits = Limits(max_body_bytes=4000, max_prompt_chars=500, max_text_chars=300)
    with TestClient(create_app(lm, registry, limits=limits)) as client:
        big = client.post("/v1/completions", json={"prompt": "x" * 5000, "max_tokens": 2})
        assert big.status_code == 413
        assert big.json()["error"] == {
            "message": "body: the request body is larger than this server's limit of 4000 bytes",
            "type": "invalid_request_error",
            "param": "body",
            "code": "request_too_large",
        }
        # A body without Content-Length (chunked) is counted as it arrives.
        chunked = client.post(
            "/v1/completions",
            content=iter([b'{"prompt": "', b"x" * 5000, b'"}']),
            headers={"content-type": "application/json"},
        )
        assert chunked.status_code == 413
        prompt = client.post("/v1/chat/completions", json=chat_body("y" * 501))
        assert (prompt.status_code, prompt.json()["error"]["code"]) == (413, "prompt_too_large")
        assert prompt.json()["error"]["message"] == (
            "messages: the prompt has 501 characters, above this server's limit of 500"
        )
        text = client.post("/v1/score", json={"metric": "sentiment", "texts": ["fine", "z" * 301]})
        assert (text.status_code, text.json()["error"]["param"]) == (413, "texts[1]")
        assert client.post("/v1/chat/completions", json=chat_body("y" * 500)).status_code == 200


def test_the_default_limits_refuse_a_ten_megabyte_prompt(tiny):
    lm, registry = tiny
    with TestClient(create_app(lm, registry)) as client:
        reply = client.post("/v1/completions", json={"prompt": "x" * 10_000_000, "max_tokens": 2})
        assert (reply.status_code, reply.json()["error"]["code"]) == (413, "request_too_large")


def test_without_a_token_the_server_warns_at_start(tiny, caplog):
    lm, registry = tiny
    with caplog.at_level(logging.WARNING, logger="steerlab.server"), TestClient(create_app(lm, registry)):
        pass
    assert any("serving without a token" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with (
        caplog.at_level(logging.WARNING, logger="steerlab.server"),
        TestClient(create_app(lm, registry, token="s3cret")),
    ):
        pass
    assert not any("without a token" in r.getMessage() for r in caplog.records)


def test_on_loopback_without_a_token_only_loopback_host_names_are_served(tiny):
    lm, registry = tiny
    with serve_in_thread(create_app(lm, registry)) as (url, _):
        port = url.rsplit(":", 1)[1]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
            assert httpx.get(url + "/health", headers={"host": host}).status_code == 200, host
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}", ""):
            reply = httpx.get(url + "/v1/vectors", headers={"host": host})
            assert reply.status_code == 403, host
            assert reply.json()["error"]["code"] == "host_not_allowed"
    # With a token the Host check is off: the token is what protects the API.
    with serve_in_thread(create_app(lm, registry, token="s3cret")) as (url, _):
        reply = httpx.get(url + "/health", headers={"host": "steer.internal", "authorization": "Bearer s3cret"})
        assert reply.status_code == 200


STRICT = [
    ({"max_tokens": True}, "max_tokens", "Input should be a valid integer"),
    ({"max_tokens": "3"}, "max_tokens", "Input should be a valid integer"),
    ({"max_tokens": 3.0}, "max_tokens", "Input should be a valid integer"),
    ({"n": "2"}, "n", "Input should be a valid integer"),
    ({"temperature": "0.5"}, "temperature", "Input should be a valid number"),
    ({"temperature": False}, "temperature", "Input should be a valid number"),
    ({"stream": "true"}, "stream", "Input should be a valid boolean"),
    ({"stream": 1}, "stream", "Input should be a valid boolean"),
    ({"seed": "7"}, "seed", "Input should be a valid integer"),
    ({"steering": [{"vector": "up", "multiplier": "2"}]}, "steering[0].multiplier", "Input should be a valid number"),
    ({"steering": [{"vector": "up", "layers": [1.0]}]}, "steering[0].layers[0]", "Input should be a valid integer"),
    (
        {"steering": [{"vector": "up", "multiplier": 1e39}]},
        "steering[0].multiplier",
        "multiplier must be within float32's finite range (|m| <= 3.4e38), got 1e+39",
    ),
    (
        {"max_tokens": 4, "max_completion_tokens": 5},
        "body",
        "max_tokens (4) and max_completion_tokens (5) differ; give one of them",
    ),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4 stop sequences, got 5"),
    ({"stop": [""]}, "stop", "stop sequences must not be empty"),
    ({"frequency_penalty": 2.5}, "frequency_penalty", "Input should be less than or equal to 2"),
    ({"top_logprobs": 2}, "body", "top_logprobs needs logprobs: true"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "Input should be less than or equal to 20"),
]


@pytest.mark.parametrize(("fields", "param", "message"), STRICT, ids=[f"{r[1]}-{i}" for i, r in enumerate(STRICT)])
def test_types_are_strict_and_values_checked(tiny, fields, param, message):
    lm, registry = tiny
    with TestClient(create_app(lm, registry)) as client:
        reply = client.post("/v1/chat/completions", json=chat_body(**fields))
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error")
    assert error["message"] == f"{param}: {message}"


def test_a_vector_with_a_nan_is_listed_as_unusable_and_refused(tiny, tmp_path):
    lm, _ = tiny
    good = SteeringVector({1: torch.ones(lm.hidden_size)}, VectorMeta.for_model(lm, "caa"))
    bad = SteeringVector(
        {1: torch.ones(lm.hidden_size), 2: torch.ones(lm.hidden_size)}, VectorMeta.for_model(lm, "caa")
    )
    bad.directions[2][3] = float("nan")
    registry = VectorRegistry(
        lm, {"good": (tmp_path / "good.safetensors", good), "bad": (tmp_path / "bad.safetensors", bad)}
    )
    with TestClient(create_app(lm, registry)) as client:
        listing = {v["id"]: v for v in client.get("/v1/vectors").json()["data"]}
        assert (listing["bad"]["usable"], listing["bad"]["problem"]) == (
            False,
            "its direction for layer 2 has non-finite values (NaN or Inf)",
        )
        reply = client.post("/v1/chat/completions", json=chat_body(steering=[{"vector": "bad"}]))
        assert (reply.status_code, reply.json()["error"]["code"]) == (400, "vector_incompatible")


def test_a_plain_request_beside_a_nan_vector_request_comes_back_intact(tiny, tmp_path):
    """The NaN vector is forced past the registry's check (as if a reader let it through): the plain
    request batched beside it must still get exactly its own text."""
    lm, _ = tiny
    nan = SteeringVector({1: torch.full((lm.hidden_size,), float("nan"))}, VectorMeta.for_model(lm, "caa"))
    registry = VectorRegistry(lm, {"nan": (tmp_path / "nan.safetensors", nan)})
    registry.entries["nan"].problem = None
    # Two rows fill a batch at once; the long window makes sure the second request joins the first's.
    app = create_app(lm, registry, max_batch=2, batch_window_ms=3000)
    with serve_in_thread(app) as (url, _):
        alone = httpx.post(url + "/v1/chat/completions", json=chat_body(), timeout=60).json()
        time.sleep(0.2)  # the batch counter moves just after the reply goes out
        batches = app.state.batcher.batches
        replies = {}

        def send(name, body):
            replies[name] = httpx.post(url + "/v1/chat/completions", json=body, timeout=60).json()

        threads = [
            threading.Thread(target=send, args=("nan", chat_body(steering=[{"vector": "nan"}]))),
            threading.Thread(target=send, args=("plain", chat_body())),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        time.sleep(0.2)
        assert app.state.batcher.batches == batches + 1  # they shared one batch
    assert replies["plain"]["choices"][0]["message"]["content"] == alone["choices"][0]["message"]["content"]


def test_one_unreadable_vector_file_does_not_stop_the_server(tiny, tmp_path, caplog):
    lm, _ = tiny
    folder = tmp_path / "vectors"
    good = SteeringVector({1: torch.ones(lm.hidden_size)}, VectorMeta.for_model(lm, "caa"))
    good.save(folder / "good.safetensors")
    (folder / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    meta = dict(VectorMeta.for_model(lm, "caa").to_json(), recommended={"multiplier": "x"})
    safetensors.torch.save_file(
        {"layer.1": torch.ones(lm.hidden_size)},
        str(folder / "wrong-type.safetensors"),
        metadata={"steerlab": json.dumps(meta)},
    )
    with caplog.at_level(logging.WARNING, logger="steerlab.server"):
        registry = VectorRegistry.from_dir(lm, folder)
    assert list(registry.entries) == ["good"]
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("skipping broken.safetensors: ") for m in messages)
    assert (
        f"skipping wrong-type.safetensors: {folder / 'wrong-type.safetensors'}: metadata field "
        "'recommended.multiplier': expected a finite number, got a string" in messages
    )
    with TestClient(create_app(lm, registry)) as client:
        assert [v["id"] for v in client.get("/v1/vectors").json()["data"]] == ["good"]
