"""Never silently unsteered, never poisoned: what the plugin refuses on a real engine, and that a refused
request changes nothing for the requests after it."""

from __future__ import annotations

import os

import pytest
from vllm.exceptions import VLLMValidationError

from steerlab.generation import GenerationConfig, encode_prompts
from steerlab.steering import SteeringSpec

pytestmark = [pytest.mark.real_model, pytest.mark.vllm]

CONFIG = GenerationConfig(max_new_tokens=16)
PROMPTS = ["Tell me about your weekend.", "What do you think of rainy days?"]


def _tokens(engine, rows, items):
    return [list(o.outputs[0].token_ids) for o in engine.run(rows, items, config=CONFIG)]


@pytest.fixture(scope="module")
def setting(lm, engine, vectors):
    rows = encode_prompts(lm, PROMPTS)
    steered = engine.items(SteeringSpec(vectors["sentiment"], 4.0, [15]), 1)[0]
    before = (_tokens(engine, rows, [None, None]), _tokens(engine, rows, [steered, steered]))
    assert before[0] != before[1]
    return rows, steered, before


def test_the_plugin_checks_this_vllm_and_pins_the_v1_runner(engine):
    from steerlab.interop.vllm import compat

    names = compat.check()
    assert names["v1_runner"].cls.__module__ == "vllm.v1.worker.gpu_model_runner"
    # Set by the plugin at load (the variable was unset), so vLLM's config chose V1 everywhere.
    assert os.environ[compat.V2_ENV] == "0"
    assert engine.llm.llm_engine.vllm_config.use_v2_model_runner is False


@pytest.mark.parametrize(
    ("item", "words"),
    [
        (
            {"vector": "SHA", "multiplier": 1, "layers": {"9": float("nan")}},
            r"layers\['9'\] must be a finite number, got nan",
        ),
        (
            {"vector": "SHA", "multiplier": 1, "layers": {"9": float("inf")}},
            r"layers\['9'\] must be a finite number, got inf",
        ),
        (
            {"vector": "SHA", "multiplier": 1, "layers": {"9": 1e39}},
            r"layers\['9'\] must be within float32's finite range",
        ),
        (
            {"vector": "SHA", "multiplier": 1e30, "layers": {"10": 1e30}},
            r"multiplier x weight at layer 10 .* finite number",
        ),
        ({"vector": "SHA", "multiplier": 1e39}, r"multiplier must be within float32's finite range"),
    ],
)
def test_a_poisoned_request_is_refused_and_the_next_requests_are_unchanged(engine, vectors, setting, item, words):
    rows, steered, (plain, steered_tokens) = setting
    item = {**item, "vector": steered[0]["vector"]}
    with pytest.raises(VLLMValidationError, match=words):
        engine.run(rows[:1], [[item]], config=CONFIG)
    assert _tokens(engine, rows, [None, None]) == plain
    assert _tokens(engine, rows, [steered, None]) == [steered_tokens[0], plain[1]]


def test_where_vllm_would_run_model_runner_v2_steered_requests_are_refused(engine, setting, monkeypatch):
    """As on a CUDA install (Triton present, the switch unset): vLLM's config picks Model Runner V2, which the
    plugin does not steer; a steered request is refused naming the runner and the fix, unsteered ones are served."""
    import vllm.config.vllm as vllm_config_module

    from steerlab.interop.vllm import compat

    rows, steered, (plain, _) = setting
    monkeypatch.delenv(compat.V2_ENV)
    monkeypatch.setattr(vllm_config_module, "HAS_TRITON", True)
    assert engine.llm.llm_engine.vllm_config.use_v2_model_runner is True
    processor = engine.llm.llm_engine.input_processor
    monkeypatch.delattr(processor, "_steerlab")  # the front end reads the config again (restored afterwards)
    with pytest.raises(
        VLLMValidationError,
        match=r"this vLLM runs Model Runner V2 .* Start vLLM with "
        r"VLLM_USE_V2_MODEL_RUNNER=0",
    ):
        engine.run(rows[:1], [steered], config=CONFIG)
    assert _tokens(engine, rows, [None, None]) == plain
