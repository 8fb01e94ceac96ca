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
    terms = resolve(
        [{"vector": "happy", "multiplier": 0.1, "layers": {"1": 0.3}, "positions": "prompt"}],
        library,
        hidden_size=HIDDEN,
        num_layers=4,
    )
    expected = float(torch.tensor([0.1], dtype=torch.float32) * 0.3)  # steering.py's rows * weight
    assert terms == [Term(content_hash(_vector(0)), ((1, expected),), "prompt")]
    by_hash = resolve(
        json.dumps({"vector": content_hash(_vector(0)), "layers": [2]}), library, hidden_size=HIDDEN, num_layers=4
    )
    assert by_hash[0].layers == ((2, 1.0),) and by_hash[0].positions == "all"
    assert decode(encode(terms)) == terms


@pytest.mark.parametrize(
    ("item", "words"),
    [
        ({"vector": "sad"}, "not in .* available: cheerful, formal, happy"),
        ({"vector": "happy", "colour": 2}, "unknown field.*colour"),
        ({"vector": "happy", "strength": 2, "multiplier": 1}, "multiplier .* or strength .*, not both"),
        ({"vector": "happy", "layers": [3]}, "no direction for layer 3"),
        ({"vector": "happy", "layers": [9]}, "out of range"),
        ({"vector": "happy", "positions": "middle"}, "positions"),
        ({"vector": "happy", "positions": "user"}, "chat roles, between:OPEN:CLOSE windows and until:MARKER segments"),
        ({"vector": "happy", "positions": "until:The answer is"}, "until:MARKER segments need the HF engine"),
        ({"vector": "happy", "positions": "between:<think>:</think>"}, "need the HF engine"),
        ({"vector": "happy", "multiplier": float("nan")}, "finite"),
        ({"vector": "cheerful"}, "prompt steer"),
    ],
)
def test_bad_items_are_refused_naming_the_field(library, item, words):
    with pytest.raises(SteeringRequestError, match=words):
        resolve(item, library, hidden_size=HIDDEN, num_layers=4)


DEEP = '{"vector": "happy", "layers": ' + "[" * 200 + "]" * 200 + "}"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"vector": "happy", "multiplier": 1, "layers": {"1": float("nan")}},
            "steerlab[0].layers['1'] must be a finite number, got nan",
        ),
        (
            {"vector": "happy", "multiplier": 1, "layers": {"1": float("inf")}},
            "steerlab[0].layers['1'] must be a finite number, got inf",
        ),
        (
            {"vector": "happy", "multiplier": 1, "layers": {"1": 1e39}},
            "steerlab[0].layers['1'] must be within float32's finite range (|m| <= 3.4e38), got 1e+39",
        ),
        (
            {"vector": "happy", "multiplier": 1e30, "layers": {"1": 1e30}},
            "steerlab[0]: multiplier x weight at layer 1 (1e+30 x 1e+30) must be a finite number, got inf",
        ),
        (
            {"vector": "happy", "multiplier": 1e39},
            "steerlab[0].multiplier must be within float32's finite range (|m| <= 3.4e38), got 1e+39",
        ),
        ({"vector": "happy", "multiplier": 10**400}, "steerlab[0].multiplier must be within float32's finite range"),
        ({"vector": "happy", "strength": float("-inf")}, "steerlab[0].strength must be a finite number, got -inf"),
        ({"vector": "happy", "multiplier": True}, "steerlab[0].multiplier: must be a number, got True"),
        ('{"vector": "happy", "layers": {"1": NaN}}', "steerlab: NaN is not allowed; numbers must be finite"),
        ('{"vector": "happy", "multiplier": 1e400}', "steerlab: the number 1e400 is too large for a float"),
        (DEEP, "steerlab: nested too deeply (the limit is 64 levels)"),
        (
            {"vector": "happy", "layers": {"x": 1}},
            "steerlab[0].layers: give a non-empty list of distinct layer numbers",
        ),
        ([{"vector": "happy"}] * 9, "steerlab: 9 items; a request takes at most 8"),
    ],
)
def test_every_coefficient_is_finite_in_float32_with_a_message_naming_the_field(library, raw, message):
    """The vLLM front end's rule is the HF server's: no NaN, no Inf, nothing beyond float32, products included."""
    with pytest.raises(SteeringRequestError) as err:
        resolve(raw, library, hidden_size=HIDDEN, num_layers=4)
    assert str(err.value).startswith(message)


def test_other_hidden_size_is_refused(library):
    with pytest.raises(SteeringRequestError, match="hidden size 8"):
        resolve({"vector": "happy"}, library, hidden_size=16, num_layers=4)


def test_cache_salt_differs_whenever_steering_differs(library):
    def salt(item, user=None):
        return cache_salt(encode(resolve(item, library, hidden_size=HIDDEN, num_layers=4)), user)

    base = {"vector": "happy", "multiplier": 2.0, "layers": [1]}
    variants = [
        base,
        {**base, "multiplier": 3.0},
        {**base, "layers": [2]},
        {**base, "positions": "generated"},
        {**base, "vector": "formal"},
    ]
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


def _worker(blocks, directions, **kwargs) -> WorkerSteering:
    return WorkerSteering(
        find_layers(nn.Sequential(blocks), len(blocks)),
        directions,
        torch.float32,
        torch.device("cpu"),
        hidden_size=HIDDEN,
        num_layers=len(blocks),
        **kwargs,
    )


def test_plan_adds_to_the_stream_only_on_steered_tokens():
    torch.manual_seed(0)
    blocks = nn.ModuleList([Block() for _ in range(3)])
    direction = torch.randn(HIDDEN)
    steering = _worker(blocks, lambda sha, layer: direction)
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
    assert torch.equal(out_r[steered], torch.zeros(3, HIDDEN))  # the stream moved into hidden, exactly
    untouched = torch.tensor([0, 4, 5, 6])
    assert torch.equal(out_h[untouched], plain_h[untouched]) and torch.equal(out_r[untouched], plain_r[untouched])
    steering.begin([], positions)
    assert steering.planned == {}
    steering.remove()


def test_items_apply_in_request_order_and_layers_are_found_by_structure():
    blocks = nn.ModuleList([Block() for _ in range(4)])
    pp_stage = nn.ModuleList([nn.Identity(), nn.Identity(), Block(), Block()])  # a later pipeline stage
    assert list(find_layers(nn.Sequential(pp_stage), 4)) == [2, 3]
    dirs = {"a": torch.randn(HIDDEN), "b": torch.randn(HIDDEN)}
    steering = _worker(blocks, lambda sha, layer: dirs[sha])
    terms = (Term("a", ((2, 1.5),), "all"), Term("b", ((2, -0.5),), "prompt"))
    steering.begin([Row(0, 3, 2, terms)], torch.tensor([0, 1, 2]))
    hidden = torch.randn(3, HIDDEN)
    expected = hidden + 1.5 * dirs["a"]
    expected[:2] = expected[:2] + -0.5 * dirs["b"]
    torch.ops.steerlab.steer_block_(hidden, None, steering.id, 2)
    assert torch.equal(hidden, expected)
    steering.end()
    steering.remove()


@pytest.mark.parametrize("operator", ["add", "ablate", "clamp", "rotate"])
def test_the_op_equals_the_hf_hooks_arithmetic_and_the_full_path_equals_the_pruned_one(operator):
    """The op on per-token gathered directions equals steering.py's operator on one direction, bit for bit; with
    pruning off (every slot and operator evaluated, what a captured graph would hold) the result is the same."""
    from steerlab.operators import get_operator

    torch.manual_seed(1)
    blocks = nn.ModuleList([Block() for _ in range(2)])
    dirs = {"a": torch.randn(HIDDEN), "b": torch.randn(HIDDEN)}
    rows = [
        Row(0, 3, 2, (Term("a", ((1, 2.0),), "all", operator), Term("b", ((1, 0.7),), "generated"))),
        Row(3, 5, 9, ()),
        Row(5, 6, 4, (Term("b", ((1, -3.0),), "all", "rotate"),)),
    ]
    positions = torch.tensor([0, 1, 2, 7, 8, 4])
    hidden, residual = torch.randn(6, HIDDEN), torch.randn(6, HIDDEN)
    stream = hidden + residual
    want = stream.clone()
    want[0:3] = get_operator(operator)(want[0:3], dirs["a"], torch.tensor(2.0))
    want[1:3] = want[1:3] + torch.tensor(0.7) * dirs["b"]
    want[5:6] = get_operator("rotate")(want[5:6], dirs["b"], torch.tensor(-3.0))
    for prune in (True, False):
        steering = _worker(blocks, lambda sha, layer: dirs[sha], prune=prune, key=7)
        h, r = hidden.clone(), residual.clone()
        steering.begin(rows, positions)
        torch.ops.steerlab.steer_block_(h, r, 7, 1)
        steering.end()
        assert torch.equal(h[[0, 1, 2, 5]], want[[0, 1, 2, 5]]) and torch.equal(r[[0, 1, 2, 5]], torch.zeros(4, HIDDEN))
        assert torch.equal(h[3:5], hidden[3:5]) and torch.equal(r[3:5], residual[3:5])  # unsteered: bit for bit
        steering.remove()


def test_a_planned_layer_whose_op_did_not_run_raises_instead_of_returning_unsteered_text():
    from steerlab.interop.vllm.worker import SteeringNotApplied

    torch.manual_seed(2)
    blocks = nn.ModuleList([Block() for _ in range(3)])
    steering = _worker(blocks, lambda sha, layer: torch.ones(HIDDEN))
    plan = [Row(0, 2, 2, (Term("a", ((0, 1.0), (2, 1.0)), "all"),))]

    def forward():
        hidden, residual = torch.randn(2, HIDDEN), None
        for block in blocks:
            hidden, residual = block(hidden, residual)

    steering.begin(plan, torch.tensor([0, 1]))
    forward()
    steering.end()  # every planned layer ran: no error
    steering.check_warmup()
    steering._handles.pop(2).remove()  # as if layer 2's forward bypassed the hook (a replayed graph, say)
    steering.begin(plan, torch.tensor([0, 1]))
    forward()
    with pytest.raises(SteeringNotApplied, match=r"steers layer\(s\) 2, but their steering op did not run"):
        steering.end()
    fresh = _worker(blocks, lambda sha, layer: torch.ones(HIDDEN), key=3)
    with pytest.raises(SteeringNotApplied, match=r"did not run the steering op of layer\(s\) 0, 1, 2"):
        fresh.check_warmup()  # no forward yet: nothing ran
    fresh.remove()
    steering.remove()


def test_compat_names_the_supported_range_and_pins_the_v1_runner():
    from steerlab.interop.vllm import compat

    compat.check_version("0.32.0")
    compat.check_version("0.32.3+cpu")
    for version in ("0.31.2", "0.33.0", "1.0.0"):
        with pytest.raises(compat.VLLMIncompatible, match=r"supports vLLM >=0.32.0,<0.33; this is vLLM " + version):
            compat.check_version(version)
    env: dict[str, str] = {}
    assert compat.pin_v1_runner(env) and env == {"VLLM_USE_V2_MODEL_RUNNER": "0"}
    chosen = {"VLLM_USE_V2_MODEL_RUNNER": "1"}
    assert not compat.pin_v1_runner(chosen) and chosen == {"VLLM_USE_V2_MODEL_RUNNER": "1"}  # the user's choice
    import types

    with pytest.raises(compat.VLLMIncompatible, match=r"reads SimpleNamespace.num_reqs \(for input_batch.num_reqs\)"):
        compat.attr(types.SimpleNamespace(input_batch=types.SimpleNamespace()), compat.RUNNER_NUM_REQS)


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
    from steerlab.steering import LengthBudget, SteeringError, SteeringSpec

    spec = SteeringSpec(_vector(0), 1.0)
    assert _specs([spec, [spec]]) == [spec, spec]
    cast = ConditionalSteering(spec, Condition(torch.ones(HIDDEN), 1, 0.0))
    with pytest.raises(SteeringError, match="a steer of kind 'conditional' needs engine='hf'"):
        _specs([spec, cast])
    with pytest.raises(SteeringError, match="positions 'user' \\(a chat role, a window or an until:MARKER segment\\)"):
        _specs(SteeringSpec(_vector(0), 1.0, positions="user"))
    with pytest.raises(SteeringError, match=r"^engine='vllm' has no length budget .* needs engine='hf'$"):
        _specs(SteeringSpec(_vector(0), 1.0, budget=LengthBudget(8)))
