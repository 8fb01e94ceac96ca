"""Prompt steering: the original is the truly unsteered output, placements, files, configs, refusals."""

import json
import re
from importlib import resources

import pytest

from steerlab.config import ConfigError, build_config, load_config
from steerlab.data import pairs_from_texts
from steerlab.generation import GenerationConfig, generate
from steerlab.methods import METHODS, prompt
from steerlab.methods.prompt import PromptConfig, PromptSteering
from steerlab.vector import VectorFileError
from tiny_model import tiny_lm

PROMPTS = ["Tell me about rain.", "Hi", "What do you think about Mondays, honestly?", "Describe a cat."]
INSTRUCTION = "Always answer cheerfully."
CFG = GenerationConfig(max_new_tokens=10)


@pytest.fixture(scope="module")
def lm():
    return tiny_lm(num_layers=3, hidden=16, seed=1)


def texts(results, side):
    return [getattr(r, side) for r in results]


def test_original_is_plain_generate_and_steered_has_the_instruction_in_the_system_message(lm):
    steering = PromptSteering(INSTRUCTION, "system")
    results = generate(lm, PROMPTS, steering, config=CFG, batch_size=3, generate_orig_output=True)
    assert texts(results, "prompt") == PROMPTS
    # Token-exact (one character per token): the original rows carry no instruction anywhere.
    assert texts(results, "original") == texts(generate(lm, PROMPTS, config=CFG), "steered")
    assert texts(results, "steered") == texts(generate(lm, PROMPTS, config=CFG, system=INSTRUCTION), "steered")
    assert all(r.steered != r.original for r in results)


def test_prefix_placement_puts_the_instruction_before_the_user_text(lm):
    results = generate(lm, PROMPTS, PromptSteering(INSTRUCTION, "prefix"), config=CFG, generate_orig_output=True)
    prefixed = [f"{INSTRUCTION}\n\n{p}" for p in PROMPTS]
    assert texts(results, "steered") == texts(generate(lm, prefixed, config=CFG), "steered")
    assert texts(results, "original") == texts(generate(lm, PROMPTS, config=CFG), "steered")


def test_a_callers_system_message_stays_in_both_rows(lm):
    system = "You are terse."
    results = generate(
        lm, PROMPTS[:2], PromptSteering(INSTRUCTION), config=CFG, system=system, generate_orig_output=True
    )
    assert texts(results, "original") == texts(generate(lm, PROMPTS[:2], config=CFG, system=system), "steered")
    both = f"{system}\n\n{INSTRUCTION}"
    assert texts(results, "steered") == texts(generate(lm, PROMPTS[:2], config=CFG, system=both), "steered")


def test_without_a_chat_template_the_instruction_comes_first(lm):
    plain = tiny_lm(num_layers=3, hidden=16, seed=1, chat=False)
    steering = PromptSteering(INSTRUCTION, "system")
    assert steering.prompt_text(plain.tokenizer, "Hi", use_chat_template=False) == f"{INSTRUCTION}\n\nHi"
    results = generate(plain, PROMPTS[:2], steering, config=CFG, generate_orig_output=False)
    assert texts(results, "original") == [None, None]
    expected = generate(plain, [f"{INSTRUCTION}\n\n{p}" for p in PROMPTS[:2]], config=CFG)
    assert texts(results, "steered") == texts(expected, "steered")


def test_generate_takes_a_prompt_steer_like_any_steer(lm):
    """steerlab.generate dispatches on the steer's kind: a prompt steer's rows carry its instruction."""
    alone = generate(lm, PROMPTS[:2], PromptSteering(INSTRUCTION), config=CFG)
    beside = generate(lm, PROMPTS[:2], PromptSteering(INSTRUCTION), config=CFG, generate_orig_output=True)
    assert texts(alone, "original") == [None, None]
    assert texts(alone, "steered") == texts(beside, "steered")


def test_fit_builds_the_steer_from_the_config_and_ignores_data(lm):
    data = pairs_from_texts(["good"], ["bad"])
    steering = prompt.fit(lm, data, PromptConfig(INSTRUCTION, "prefix"), task="sentiment")
    assert (steering.instruction, steering.placement, steering.task, steering.method) == (
        INSTRUCTION,
        "prefix",
        "sentiment",
        "prompt",
    )
    assert prompt.fit(lm, None, PromptConfig(INSTRUCTION)).placement == "system"
    assert METHODS["prompt"].config_cls is PromptConfig and METHODS["prompt"].fit is prompt.fit


def test_fit_refuses_system_placement_when_the_template_has_no_system_role():
    lm = tiny_lm(num_layers=2, hidden=16, seed=1)
    lm.tokenizer.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    )
    with pytest.raises(ValueError, match="does not take a system message") as err:
        prompt.fit(lm, None, PromptConfig(INSTRUCTION, "system"))
    assert str(err.value) == (
        "tiny-llama-2x16's chat template does not take a system message "
        "(System role not supported); use placement: prefix"
    )
    assert prompt.fit(lm, None, PromptConfig(INSTRUCTION, "prefix")).placement == "prefix"


def test_config_errors():
    with pytest.raises(ConfigError) as err:
        build_config(PromptConfig, {"instruction": "Be kind.", "placment": "prefix"})
    assert str(err.value) == "config: unknown key 'placment' for PromptConfig; allowed keys: instruction, placement"
    with pytest.raises(ConfigError) as err:
        build_config(PromptConfig, {"instruction": "Be kind.", "placement": "suffix"})
    assert str(err.value) == "config: key 'placement': must be one of system, prefix; got 'suffix'"
    path = resources.files("steerlab") / "methods" / "configs" / "prompt.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(PromptConfig, path)
    assert str(err.value) == (
        f"{path}: instruction must be a non-empty text, e.g. instruction='Always answer cheerfully.'"
    )
    assert load_config(PromptConfig, path, ["instruction=Be kind."]) == PromptConfig("Be kind.", "system")


def test_save_load_apply_round_trip(lm, tmp_path):
    steering = PromptSteering(INSTRUCTION, "prefix", task="sentiment")
    path = steering.save(tmp_path / "cheerful.json")
    saved = json.loads(path.read_text())["steerlab"]
    assert {k: saved[k] for k in ("method", "instruction", "placement", "task", "format_version")} == {
        "method": "prompt",
        "instruction": INSTRUCTION,
        "placement": "prefix",
        "task": "sentiment",
        "format_version": 1,
    }
    loaded = PromptSteering.load(path)
    assert loaded == steering
    a = generate(lm, PROMPTS[:2], steering, config=CFG, generate_orig_output=True)
    b = generate(lm, PROMPTS[:2], loaded, config=CFG, generate_orig_output=True)
    assert a == b
    with pytest.raises(FileExistsError):
        loaded.save(path)
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind
    loaded.save(path, overwrite=True)


def test_load_refuses_other_files(tmp_path):
    missing = tmp_path / "none.json"
    with pytest.raises(VectorFileError, match=re.escape(f"{missing}: no such prompt file")):
        PromptSteering.load(missing)
    vector_like = tmp_path / "v.json"
    vector_like.write_text(json.dumps({"steerlab": {"method": "caa"}}))
    with pytest.raises(VectorFileError, match="not a steerlab prompt file"):
        PromptSteering.load(vector_like)
    binary = tmp_path / "v.safetensors"
    binary.write_bytes(b"\x80\x00\x00binary")
    with pytest.raises(VectorFileError, match=re.escape(f"{binary}:1: not UTF-8 (byte 0x80 at offset 0)")):
        PromptSteering.load(binary)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"steerlab": {"method": "prompt", "instruction": "x", "placement": "middle"}}))
    with pytest.raises(
        VectorFileError, match=re.escape(f"{bad}: placement must be one of system, prefix; got 'middle'")
    ):
        PromptSteering.load(bad)
