"""Helpers for the server tests: vectors written to a folder, and a real uvicorn server on loopback in a thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch
import uvicorn

from steerlab.data import demo_dataset_path, load_pairs
from steerlab.methods.caa import CAAConfig, fit
from steerlab.models import LoadedModel
from steerlab.vector import SteeringVector, VectorMeta

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def write_real_vectors(lm: LoadedModel, folder: Path) -> dict[str, SteeringVector]:
    """A small CAA sentiment vector (8 demo pairs, layers 9-10, recommended layer 9 at x2.5), its negation,
    one built for another model of the same shape, and one for a model of another shape."""
    data = load_pairs(demo_dataset_path()).subset(range(8))
    sentiment = fit(lm, data, CAAConfig(layers=[9, 10]), task="sentiment")
    sentiment.meta = sentiment.meta.with_recommended(layer=9, multiplier=2.5)
    vectors = {
        "sentiment": sentiment,
        "gloomy": -1.0 * sentiment,
        "other-weights": SteeringVector(
            sentiment.directions,
            replace(sentiment.meta, model_name="SmolLM2-tuned", model_fingerprint="0123456789abcdef"),
        ),
        "qwen": SteeringVector(
            {12: torch.ones(896)}, VectorMeta(model_name="Qwen2.5-0.5B", hidden_size=896, num_layers=24, method="caa")
        ),
    }
    for name, vector in vectors.items():
        vector.save(folder / f"{name}.safetensors")
    return vectors


@contextlib.contextmanager
def serve_in_thread(app) -> Iterator[tuple[str, uvicorn.Server]]:
    """Run `app` under uvicorn on an ephemeral loopback port; yields (base URL, server); stops it on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=None))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start within 30 s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()
