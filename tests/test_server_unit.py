"""Server behaviour on a tiny random model: token auth, batching isolation, graceful shutdown, CLI wiring."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from conftest import tiny_model
from server_helpers import serve_in_thread
from steerlab.server.app import create_app
from steerlab.server.batcher import RowPlan, batch_steering
from steerlab.server.registry import ResolvedSteering, VectorRegistry
from steerlab.vector import SteeringVector, VectorMeta


@pytest.fixture
def tiny(tmp_path):
    lm = tiny_model("llama")
    gen = torch.Generator().manual_seed(1)
    for name in ("up", "down"):
        directions = {layer: torch.randn(lm.hidden_size, generator=gen) * 4 for layer in (1, 2)}
        SteeringVector(directions, VectorMeta.for_model(lm, "caa")).save(tmp_path / f"{name}.safetensors")
    return lm, VectorRegistry.from_dir(lm, tmp_path)


def body(prompt="hello there", **fields):
    return {"messages": [{"role": "user", "content": prompt}], "max_tokens": 12, "temperature": 0, **fields}


def test_requests_without_the_token_are_refused(tiny):
    lm, registry = tiny
    with TestClient(create_app(lm, registry, token="s3cret")) as client:
        for method, path in [("GET", "/health"), ("GET", "/v1/vectors"), ("POST", "/v1/chat/completions")]:
            reply = client.request(method, path, json=body() if method == "POST" else None)
            assert reply.status_code == 401
            assert reply.headers["www-authenticate"] == "Bearer"
            assert reply.json()["error"]["message"] == (
                "missing bearer token: send the header 'Authorization: Bearer <token>'"
            )
        wrong = client.get("/v1/vectors", headers={"Authorization": "Bearer guess"})
        assert (wrong.status_code, wrong.json()["error"]["message"]) == (401, "invalid bearer token")
        # Refused before the body is read: a malformed body without the token is still a 401.
        assert client.post("/v1/completions", content=b"{not json").status_code == 401
        ok = client.post("/v1/chat/completions", json=body(), headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] in ("stop", "length")
        # The page and its assets are the package's own files and load without the token.
        assert client.get("/").status_code == 200 and "steerlab playground" in client.get("/").text
        assert client.get("/static/app.js").status_code == 200


def test_batch_steering_gives_each_row_its_own_multiplier_and_zero_elsewhere(tiny):
    _lm, registry = tiny
    up = registry.entries["up"].vector
    a = ResolvedSteering("up", up, ((1, 1.0),), 3.0, "all")
    b = ResolvedSteering("up", up, ((1, 1.0), (2, 1.0)), -2.0, "all")
    plans = [RowPlan((5,), 4, (a,)), RowPlan((5,), 4, ()), RowPlan((5,), 4, (b, a))]
    specs = batch_steering(plans).specs
    assert [(sorted(s.layer_weights()), list(s.multiplier)) for s in specs] == [
        ([1], [3.0, 0.0, 3.0]),
        ([1, 2], [0.0, 0.0, -2.0]),
    ]
    assert batch_steering([RowPlan((5,), 4, ())]) is None


def test_concurrent_mixed_requests_match_each_request_served_alone(tiny):
    lm, registry = tiny
    requests = []
    for i in range(12):
        steering = [] if i % 4 == 0 else [{"vector": "up" if i % 2 else "down", "multiplier": float(i % 5) - 2}]
        if i % 3 == 0:
            steering.append({"vector": "up", "multiplier": 1.5, "layers": [2], "positions": "generated"})
        fields = {"steering": steering, "include_original": i % 2 == 0, "max_tokens": 6 + i % 7}
        if i % 5 == 0:
            fields.update(temperature=0.9, seed=i, n=2)
        requests.append(body(f"prompt number {i}", **fields))
    app = create_app(lm, registry, max_batch=16, batch_window_ms=200)
    with serve_in_thread(app) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        alone = [client.post("/v1/chat/completions", json=r).json() for r in requests]
        batches_before = app.state.batcher.batches
        with ThreadPoolExecutor(12) as pool:
            together = list(
                pool.map(lambda r: httpx.post(url + "/v1/chat/completions", json=r, timeout=60).json(), requests)
            )
        batches = app.state.batcher.batches - batches_before
    outputs = lambda reply: [(c["message"]["content"], c.get("original")) for c in reply["choices"]]  # noqa: E731
    assert [outputs(r) for r in together] == [outputs(r) for r in alone]
    assert batches < len(requests)  # they did share forward passes


def test_shutdown_finishes_the_request_in_flight(tiny):
    lm, registry = tiny
    app = create_app(lm, registry)
    result = {}
    with serve_in_thread(app) as (url, server):

        def call():
            result["reply"] = httpx.post(
                url + "/v1/completions", timeout=120, json={"prompt": "abc", "max_tokens": 400, "temperature": 0}
            )

        worker = threading.Thread(target=call)
        worker.start()
        deadline = time.monotonic() + 30
        while app.state.batcher.running_rows == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert app.state.batcher.running_rows == 1
        server.should_exit = True  # what uvicorn's SIGTERM/SIGINT handler does
        worker.join(120)
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health", timeout=5)
    reply = result["reply"]
    assert reply.status_code == 200
    assert reply.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert not app.state.batcher._thread.is_alive()


def test_serve_command_reads_the_token_from_the_environment(tiny, tmp_path, monkeypatch):
    import uvicorn

    import steerlab.cli as cli
    import steerlab.cli.serve as serve

    lm, _ = tiny
    captured = {}
    monkeypatch.setenv("STEERLAB_TOKEN", "from-env")
    monkeypatch.setattr(serve, "load_cli_model", lambda args: lm)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: captured.update(app=app, **kw))
    assert cli.main(["serve", "--vectors", str(tmp_path), "--port", "8123", "--max-batch", "4"]) == 0
    assert (captured["host"], captured["port"]) == ("127.0.0.1", 8123)
    with TestClient(captured["app"]) as client:
        assert client.get("/health").status_code == 401
        health = client.get("/health", headers={"Authorization": "Bearer from-env"}).json()
        assert (health["status"], health["vectors"]) == ("ok", 2)
    assert captured["app"].state.batcher.max_batch == 4


def test_serve_command_sets_the_size_limits(tiny, tmp_path, monkeypatch):
    import uvicorn

    import steerlab.cli as cli
    import steerlab.cli.serve as serve

    captured = {}
    monkeypatch.setattr(serve, "load_cli_model", lambda args: tiny[0])
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: captured.update(app=app))
    assert cli.main(["serve", "--vectors", str(tmp_path), "--max-prompt-chars", "5", "--token", "t"]) == 0
    with TestClient(captured["app"]) as client:
        reply = client.post(
            "/v1/completions",
            headers={"Authorization": "Bearer t"},
            json={"prompt": "a longer prompt", "max_tokens": 1},
        )
    assert reply.status_code == 413 and "5" in reply.json()["error"]["message"]
    assert cli.main(["serve", "--vectors", str(tmp_path), "--max-text-chars", "0"]) == 1


def test_serve_command_refuses_a_missing_vector_folder(tiny, tmp_path, monkeypatch, capsys):
    import steerlab.cli as cli
    import steerlab.cli.serve as serve

    monkeypatch.setattr(serve, "load_cli_model", lambda args: tiny[0])
    assert cli.main(["serve", "--vectors", str(tmp_path / "nope")]) == 1
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(f"--vectors {tmp_path / 'nope'}: no such folder; give a folder of .safetensors vectors")
    )
