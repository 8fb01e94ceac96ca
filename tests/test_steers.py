"""One Steer abstraction: every steer file declares its kind, load_steer dispatches on it, steerlab.fit fits any method."""

import json

import pytest
import torch
from safetensors.torch import save_file

import steerlab
from steerlab.data import pairs_from_texts
from steerlab.methods.caa import CAAConfig
from steerlab.methods.caa import fit as caa_fit
from steerlab.methods.lm_steer import LMSteer
from steerlab.methods.prompt import PromptSteering
from steerlab.steers import steer_kind
from steerlab.vector import SteeringVector, VectorFileError, VectorMeta

PAIRS = pairs_from_texts(["I love this", "What a great day"], ["I hate this", "What an awful day"], prompt="Say:")


def test_fit_verb_equals_the_method_module_and_checks_its_keywords(tiny_llama):
    lm = tiny_llama
    via_verb = steerlab.fit(lm, PAIRS, "caa", layers=[1, 2], task="sentiment")
    direct = caa_fit(lm, PAIRS, CAAConfig(layers=[1, 2]), task="sentiment")
    assert via_verb.layers == [1, 2] and via_verb.meta.task == "sentiment"
    for layer in (1, 2):
        assert torch.equal(via_verb.directions[layer], direct.directions[layer])
    with pytest.raises(
        ValueError,
        match="caa config: unknown key 'layer' for CAAConfig; allowed keys: layers, batch_size, batch_tokens",
    ):
        steerlab.fit(lm, PAIRS, "caa", layer=1)
    with pytest.raises(ValueError, match="unknown method 'magic'; available: caa, pca"):
        steerlab.fit(lm, PAIRS, "magic")
    prompt = steerlab.fit(lm, None, "prompt", instruction="Be kind.")
    assert isinstance(prompt, PromptSteering) and prompt.kind == "prompt"


def test_every_file_declares_its_kind_and_load_steer_dispatches(tiny_llama, tmp_path):
    lm = tiny_llama
    vector = steerlab.fit(lm, PAIRS, "caa", layers=[1])
    lm_steer = LMSteer(
        torch.zeros(1, 32, 2), torch.zeros(1, 32, 2), VectorMeta.for_model(lm, "lm_steer", config={"epsilon": 1e-3})
    )
    prompt = PromptSteering("Be kind.")
    paths = {
        "vector": vector.save(tmp_path / "v.safetensors"),
        "lm_steer": lm_steer.save(tmp_path / "l.safetensors"),
        "prompt": prompt.save(tmp_path / "p.json"),
    }
    types = {"vector": SteeringVector, "lm_steer": LMSteer, "prompt": PromptSteering}
    for kind, path in paths.items():
        assert steer_kind(path) == kind
        loaded = steerlab.load_steer(path)
        assert isinstance(loaded, types[kind]) and loaded.kind == kind
    header = json.loads(
        json.loads(paths["vector"].read_bytes()[8 : 8 + int.from_bytes(paths["vector"].read_bytes()[:8], "little")])[
            "__metadata__"
        ]["steerlab"]
    )
    assert header["kind"] == "vector"
    assert json.loads(paths["prompt"].read_text())["steerlab"]["kind"] == "prompt"


def test_files_written_before_kinds_are_read_by_their_method(tiny_llama, tmp_path):
    meta = VectorMeta.for_model(tiny_llama, "lm_steer").to_json()
    old = dict(
        {k: v for k, v in meta.items() if k not in ("kind", "config", "fit_stats")},
        params={"epsilon": 1e-3},
        recommended={"multiplier": 1.0},
        format_version=1,
    )  # the layout before kinds, config and fit_stats
    save_file(
        {"projector1": torch.zeros(1, 32, 2), "projector2": torch.zeros(1, 32, 2)},
        str(tmp_path / "old.safetensors"),
        metadata={"steerlab": json.dumps(old)},
    )
    assert isinstance(steerlab.load_steer(tmp_path / "old.safetensors"), LMSteer)
    (tmp_path / "old.json").write_text(json.dumps({"steerlab": {"method": "prompt", "instruction": "Be kind."}}))
    assert steerlab.load_steer(tmp_path / "old.json").instruction == "Be kind."


def test_unknown_kinds_and_foreign_files_are_refused_with_the_file_named(tiny_llama, tmp_path):
    meta = dict(VectorMeta.for_model(tiny_llama, "caa").to_json(), kind="hologram")
    save_file({"layer.1": torch.zeros(32)}, str(tmp_path / "h.safetensors"), metadata={"steerlab": json.dumps(meta)})
    with pytest.raises(
        VectorFileError,
        match=r"h.safetensors: unknown steer kind 'hologram'; steerlab reads vector, "
        r"condition, lm_steer, prompt",
    ):
        steerlab.load_steer(tmp_path / "h.safetensors")
    (tmp_path / "x.json").write_text('{"other": 1}')
    with pytest.raises(VectorFileError, match=r"x.json: a JSON file without steerlab metadata"):
        steerlab.load_steer(tmp_path / "x.json")
    with pytest.raises(VectorFileError, match=r"nope.safetensors: no such steer file"):
        steerlab.load_steer(tmp_path / "nope.safetensors")
