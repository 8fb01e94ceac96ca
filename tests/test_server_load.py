"""Isolation under load on loopback: 200 requests from 16 concurrent clients, mixed vectors and multipliers
(0 included), each checked against the same request served alone. Figures go to test-artifacts/server_load.json
(docs/benchmarks.md quotes them)."""

from __future__ import annotations

import json
import platform
import queue
import random
import statistics
import threading
import time

import httpx
import pytest
import torch

from server_helpers import ARTIFACTS, serve_in_thread, write_real_vectors
from steerlab.server.app import create_app
from steerlab.server.registry import VectorRegistry

pytestmark = pytest.mark.real_model

REQUESTS, CLIENTS, DISTINCT = 200, 16, 40
PROMPTS = [
    "Tell me about your weekend.",
    "Describe the town where you live.",
    "What do you think about rainy days?",
    "Tell me about your morning routine.",
    "Describe a meal you had recently.",
    "How was your week at work?",
    "Tell me about the last trip you took.",
    "What do you think about Mondays?",
]
STEERING = [
    [],
    [{"vector": "sentiment", "multiplier": 0}],
    [{"vector": "sentiment", "multiplier": 4}],
    [{"vector": "sentiment", "multiplier": 6, "layers": [9]}],
    [{"vector": "gloomy", "multiplier": 6}],
    [{"vector": "gloomy", "multiplier": 3, "layers": [9, 10]}],
    [{"vector": "sentiment", "multiplier": 3}, {"vector": "gloomy", "multiplier": 0}],
    [
        {"vector": "sentiment", "multiplier": 2, "positions": "generated"},
        {"vector": "gloomy", "multiplier": 2, "layers": [10]},
    ],
    [{"vector": "gloomy", "multiplier": -4, "positions": "prompt"}],
    [{"vector": "sentiment", "multiplier": 0, "layers": [9, 10]}],
]


def request_pool() -> list[tuple[str, dict]]:
    """40 distinct requests: chat and completions, greedy and seeded sampling, n up to 2, some with originals."""
    pool = []
    for i in range(DISTINCT):
        body = {"max_tokens": (8, 12, 16)[i % 3], "temperature": 0, "steering": STEERING[i % len(STEERING)]}
        if i % 4 == 1:
            body["include_original"] = True
        if i % 10 == 7:
            body.update(temperature=0.7, seed=i, n=2)
        prompt = PROMPTS[(3 * i) % len(PROMPTS)]
        if i % 5 == 3:
            pool.append(("/v1/completions", {"prompt": prompt, **body}))
        else:
            pool.append(("/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}], **body}))
    return pool


def outputs(reply: dict) -> list:
    """What must match exactly: each choice's text, finish reason and original."""
    return [(c.get("text", c.get("message")), c["finish_reason"], c.get("original")) for c in reply["choices"]]


def test_two_hundred_concurrent_requests_match_each_served_alone(smollm2, tmp_path):
    write_real_vectors(smollm2, tmp_path)
    app = create_app(smollm2, VectorRegistry.from_dir(smollm2, tmp_path), max_batch=16, batch_window_ms=10)
    pool = request_pool()
    schedule = [i % DISTINCT for i in range(REQUESTS)]
    random.Random(0).shuffle(schedule)
    with serve_in_thread(app) as (url, _):
        with httpx.Client(base_url=url, timeout=300) as client:
            alone = []
            for path, body in pool:
                reply = client.post(path, json=body)
                assert reply.status_code == 200, reply.text
                alone.append(outputs(reply.json()))
        batches_before = app.state.batcher.batches
        results: list[tuple[int, float, object]] = []
        todo: queue.Queue[int] = queue.Queue()
        for index in schedule:
            todo.put(index)

        def client_loop() -> None:
            with httpx.Client(base_url=url, timeout=300) as client:
                while True:
                    try:
                        index = todo.get_nowait()
                    except queue.Empty:
                        return
                    start = time.perf_counter()
                    try:
                        path, body = pool[index]
                        reply = client.post(path, json=body)
                        got = outputs(reply.json()) if reply.status_code == 200 else f"HTTP {reply.status_code}"
                    except Exception as exc:  # noqa: BLE001 - counted as an error below
                        got = f"{type(exc).__name__}: {exc}"
                    results.append((index, time.perf_counter() - start, got))

        started = time.perf_counter()
        threads = [threading.Thread(target=client_loop) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        batches = app.state.batcher.batches - batches_before

    errors = [got for _, _, got in results if isinstance(got, str)]
    mismatches = [index for index, _, got in results if not isinstance(got, str) and got != alone[index]]
    latencies = sorted(lat for _, lat, _ in results)
    rows = sum(pool[i][1].get("n", 1) * (2 if pool[i][1].get("include_original") else 1) for i in schedule)
    figures = {
        "requests": len(results),
        "clients": CLIENTS,
        "distinct_requests": DISTINCT,
        "errors": len(errors),
        "mismatches": len(mismatches),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(results) / wall, 2),
        "latency_p50_s": round(statistics.median(latencies), 2),
        "latency_p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 2),
        "batches": batches,
        "mean_rows_per_batch": round(rows / max(batches, 1), 2),
        "max_batch": 16,
        "batch_window_ms": 10,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "server_load.json").write_text(json.dumps(figures, indent=2) + "\n")
    print("\nserver load test:", json.dumps(figures))
    assert len(results) == REQUESTS
    assert errors == []
    assert mismatches == []
    assert batches < REQUESTS / 4  # requests really shared forward passes
