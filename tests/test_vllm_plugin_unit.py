"""The vLLM plugin's parts that need no vLLM: request resolution, cache salts, the worker's per-step plan."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

from steerlab.interop.vllm.library import SteerLibrary
from steerlab.interop.vllm.request import SteeringRequestError, Term, cache_salt, decode, encode, resolve
from steerlab.interop.vllm.worker import Row, WorkerSteering, find_layers
from steerlab.vector import SteeringVector, VectorMeta, content_hash

HIDDEN = 8


def _vector(seed: int, layers=(1, 2)) -> SteeringVector:
    gen = torch.Generator().manual_seed(seed)
    meta = VectorMeta(model_name="tiny", hidden_size=HIDDEN, num_layers=4, method="caa")
    return SteeringVector({layer: torch.randn(HIDDEN, generator=gen) for layer in layers}, meta)


@pytest.fixture
def library(tmp_path):
    _vector(0).save(tmp_path / "happy.safetensors")
    _vector(1).save(tmp_path / "formal.safetensors")
    (tmp_path / "cheerful.json").write_text(json.dumps({"steerlab": {"method": "prompt", "instruction": "Be glad."}}))
    return SteerLibrary(tmp_path)


def test_resolve_by_name_and_hash_with_float32_coefficients(library):
    terms = resolve([{"vector": "happy", "multiplier": 0.1, "layers": {"1": 0.3}, "positions": "prompt"}],
                    library, hidden_size=HIDDEN, num_layers=4)
    expected = float(torch.tensor([0.1], dtype=torch.float32) * 0.3)  # steering.py's rows * weight
    assert terms == [Term(content_hash(_vector(0)), ((1, expected),), "prompt")]
    by_hash = resolve(json.dumps({"vector": content_hash(_vector(0)), "layers": [2]}), library,
                      hidden_size=HIDDEN, num_layers=4)
    assert by_hash[0].layers == ((2, 1.0),) and by_hash[0].positions == "all"
    assert decode(encode(terms)) == terms


@pytest.mark.parametrize("item,words", [
    ({"vector": "sad"}, "not in .* available: cheerful, formal, happy"),
    ({"vector": "happy", "strength": 2}, "unknown field.*strength"),
    ({"vector": "happy", "layers": [3]}, "no direction for layer 3"),
    ({"vector": "happy", "layers": [9]}, "out of range"),
    ({"vector": "happy", "positions": "middle"}, "positions"),
    ({"vector": "happy", "positions": "user"}, "chat roles and between:OPEN:CLOSE windows need the HF engine"),
    ({"vector": "happy", "positions": "between:<think>:</think>"}, "need the HF engine"),
    ({"vector": "happy", "multiplier": float("nan")}, "finite"),
    ({"vector": "cheerful"}, "prompt steer"),
])
def test_bad_items_are_refused_naming_the_field(library, item, words):
    with pytest.raises(SteeringRequestError, match=words):
        resolve(item, library, hidden_size=HIDDEN, num_layers=4)


def test_other_hidden_size_is_refused(library):
    with pytest.raises(SteeringRequestError, match="hidden size 8"):
        resolve({"vector": "happy"}, library, hidden_size=16, num_layers=4)


def test_cache_salt_differs_whenever_steering_differs(library):
    def salt(item, user=None):
        return cache_salt(encode(resolve(item, library, hidden_size=HIDDEN, num_layers=4)), user)

    base = {"vector": "happy", "multiplier": 2.0, "layers": [1]}
    variants = [base, {**base, "multiplier": 3.0}, {**base, "layers": [2]}, {**base, "positions": "generated"},
                {**base, "vector": "formal"}]
    salts = {salt(v) for v in variants}
    assert len(salts) == len(variants)
    assert salt(base) == salt(dict(base))  # deterministic across processes: no object ids, no randomness
    assert salt(base, "tenant-a") != salt(base, "tenant-b") and "tenant-a" in salt(base, "tenant-a")


class Block(nn.Module):
    """A vLLM-style decoder block: returns (hidden, residual), the residual added by the next block."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, hidden, residual):
        residual = hidden if residual is None else hidden + residual
        return self.proj(residual), residual


def test_plan_adds_to_the_stream_only_on_steered_tokens():
    torch.manual_seed(0)
    blocks = nn.ModuleList([Block() for _ in range(3)])
    direction = torch.randn(HIDDEN)
    steering = WorkerSteering(find_layers(nn.Sequential(blocks), 3), lambda sha, layer: direction, torch.float32,
                              torch.device("cpu"))
    hidden, residual = torch.randn(7, HIDDEN), torch.randn(7, HIDDEN)
    # Request A: tokens 0-3 (positions 5-8, prompt of 7 tokens), "generated" at layer 1; request B unsteered.
    positions = torch.tensor([5, 6, 7, 8, 0, 1, 2])
    steering.begin([Row(0, 4, 7, (Term("a", ((1, 2.5),), "generated"),))], positions)
    out_h, out_r = blocks[1](hidden, residual)
    steering.end()
    plain_h, plain_r = Block.forward(blocks[1], hidden, residual)
    stream, plain_stream = out_h + out_r, plain_h + plain_r
    steered = torch.tensor([1, 2, 3])  # positions 6, 7, 8 are >= prompt length - 1
    assert torch.equal(stream[steered], plain_stream[steered] + torch.tensor(2.5) * direction)
    untouched = torch.tensor([0, 4, 5, 6])
    assert torch.equal(out_h[untouched], plain_h[untouched]) and torch.equal(out_r[untouched], plain_r[untouched])
    assert steering.build([Row(0, 4, 7, (Term("a", ((1, 2.5),), "generated"),))], positions)[1].rows.tolist() == [1, 2, 3]
    assert steering.build([], positions) == {}
    steering.remove()


def test_items_apply_in_request_order_and_layers_are_found_by_structure():
    blocks = nn.ModuleList([Block() for _ in range(4)])
    pp_stage = nn.ModuleList([nn.Identity(), nn.Identity(), Block(), Block()])  # a later pipeline stage
    assert list(find_layers(nn.Sequential(pp_stage), 4)) == [2, 3]
    dirs = {"a": torch.randn(HIDDEN), "b": torch.randn(HIDDEN)}
    steering = WorkerSteering(find_layers(nn.Sequential(blocks), 4), lambda sha, layer: dirs[sha], torch.float32,
                              torch.device("cpu"))
    terms = (Term("a", ((2, 1.5),), "all"), Term("b", ((2, -0.5),), "prompt"))
    plan = steering.build([Row(0, 3, 2, terms)], torch.tensor([0, 1, 2]))[2]
    hidden = torch.randn(3, HIDDEN)
    out = plan.apply(hidden)
    expected = hidden + 1.5 * dirs["a"]
    expected[:2] = expected[:2] + -0.5 * dirs["b"]
    assert torch.equal(out, expected)


def test_generate_engine_vllm_without_vllm_says_what_to_install(tiny_llama, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if vLLM were not installed
    import steerlab
    from steerlab.interop.vllm.engine import EngineUnavailable

    with pytest.raises(EngineUnavailable, match=r"pip install 'steerlab\[vllm\]'"):
        steerlab.generate(tiny_llama, ["hi"], engine="vllm")


def test_serve_engine_vllm_without_vllm_says_what_to_install(monkeypatch, capsys):
    import importlib.util

    from steerlab.cli import main

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else find_spec(name, *a))
    assert main(["serve", "--engine", "vllm"]) == 1
    assert "pip install 'steerlab[vllm]'" in capsys.readouterr().err


def test_the_library_engine_refuses_what_only_the_hf_engine_applies():
    from steerlab.conditional import Condition, ConditionalSteering
    from steerlab.interop.vllm.engine import _specs
    from steerlab.steering import SteeringError, SteeringSpec

    spec = SteeringSpec(_vector(0), 1.0)
    assert _specs([spec, [spec]]) == [spec, spec]
    cast = ConditionalSteering(spec, Condition(torch.ones(HIDDEN), 1, 0.0))
    with pytest.raises(SteeringError, match="a steer of kind 'conditional' needs engine='hf'"):
        _specs([spec, cast])
    with pytest.raises(SteeringError, match="positions 'user' \\(a chat role or a window\\) needs engine='hf'"):
        _specs(SteeringSpec(_vector(0), 1.0, positions="user"))
