"""Hostile and careless text files (pair files, prompt steers, YAML configs): every problem is the library's
own error, one line, naming the file and line; a UTF-8 BOM is fine, other encodings are named; duplicate
keys and non-finite numbers are refused; a YAML number is a number in any notation."""

from __future__ import annotations

import json

import pytest

from steerlab.config import ConfigError, load_config
from steerlab.data import DatasetError, load_pairs
from steerlab.methods.lm_steer import LMSteerConfig
from steerlab.methods.pca import PCAConfig
from steerlab.methods.prompt import PromptSteering
from steerlab.vector import VectorFileError

PAIR = {"prompt": "p", "positive": "good", "negative": "bad"}


def test_pair_files_with_a_bom_load_and_other_encodings_are_named(tmp_path):
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(PAIR).encode() + b"\n")
    assert load_pairs(bom).pairs[0].positive == "good"
    for name, data, where in [
        ("utf16.jsonl", json.dumps(PAIR).encode("utf-16"), "1: not UTF-8 (byte 0xff at offset 0)"),
        (
            "latin1.jsonl",
            (json.dumps(PAIR) + "\n" + json.dumps({**PAIR, "positive": "caf\u00e9"}, ensure_ascii=False)).encode(
                "latin-1"
            ),
            "2: not UTF-8 (byte 0xe9",
        ),
    ]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(DatasetError) as caught:
            load_pairs(path)
        assert str(caught.value).startswith(f"{path}:{where}"), caught.value


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-32", "utf-32-le", "cp1252"])
def test_pair_files_in_other_encodings_are_refused_naming_the_file(tmp_path, encoding):
    """Without a BOM, UTF-16-LE and UTF-32-LE text is NUL bytes between ASCII ones: valid UTF-8, yet not a pair file."""
    path = tmp_path / "pairs.jsonl"
    path.write_bytes((json.dumps({**PAIR, "negative": "bad caf\u00e9"}, ensure_ascii=False) + "\n").encode(encoding))
    with pytest.raises(DatasetError) as caught:
        load_pairs(path)
    assert str(caught.value).startswith(f"{path}:") and "\n" not in str(caught.value), caught.value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"prompt": "p", "positive": "a", "positive": "b", "negative": "c"}', "line 1: duplicate key 'positive'"),
        ('{"prompt": 3, "positive": "a", "negative": "c"}', "line 1: field 'prompt' must be a string"),
        ('{"prompt": "p", "positive": null, "negative": "c"}', "line 1: field 'positive' must be a non-empty string"),
        ('{"prompt": "p", "positive": "a", "negative": "c", "weight": NaN}', "line 1: NaN is not allowed"),
        ("[" * 3000 + "]" * 3000, "nested too deeply"),
        (
            '{"prompt": "p", "positive": "a", "negative": "c"}\n' + "[" * 3000 + "]" * 3000,
            "line 2: JSON nested too deeply",
        ),
        ('{"a": 1}', "line 1: missing field 'positive'"),
        ("[1, 2]", "line 1: expected a JSON object, got int"),
    ],
)
def test_bad_pair_files_name_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(text)
    with pytest.raises(DatasetError) as caught:
        load_pairs(path)
    assert str(caught.value).startswith(f"{path}"), caught.value
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"method": "prompt", "instruction": 5}, "field 'steerlab.instruction': expected a string, got 5"),
        (
            {"method": "prompt", "instruction": "x", "placement": None},
            "field 'steerlab.placement': expected a string, got null",
        ),
        ({"method": "prompt", "instruction": "x", "task": ["a"]}, "field 'steerlab.task': expected a string"),
        (
            {"method": "prompt", "instruction": "x", "format_version": True},
            "field 'steerlab.format_version': expected an integer",
        ),
        (
            {"method": "prompt", "instruction": "x", "format_version": "1"},
            "field 'steerlab.format_version': expected an integer",
        ),
    ],
)
def test_prompt_files_with_fields_of_the_wrong_type_are_refused(tmp_path, meta, message):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"steerlab": meta}))
    with pytest.raises(VectorFileError) as caught:
        PromptSteering.load(path)
    assert str(caught.value) == f"{path}: {message}" or str(caught.value).startswith(f"{path}: {message}")


def test_prompt_files_refuse_deep_nesting_and_duplicates_and_accept_a_bom(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(
        '{"steerlab": {"method": "prompt", "instruction": "x", "extra": ' + "[" * 100_000 + "]" * 100_000 + "}}"
    )
    with pytest.raises(VectorFileError, match="nested too deeply"):
        PromptSteering.load(path)
    path.write_text('{"steerlab": {"method": "prompt", "instruction": "x", "instruction": "y"}}')
    with pytest.raises(VectorFileError, match="duplicate key 'instruction'"):
        PromptSteering.load(path)
    path.write_bytes(
        b"\xef\xbb\xbf" + json.dumps({"steerlab": {"method": "prompt", "instruction": "Be kind."}}).encode()
    )
    assert PromptSteering.load(path).instruction == "Be kind."


def test_a_yaml_number_in_any_notation_is_a_number(tmp_path):
    assert load_config(LMSteerConfig, None, ["lr=1e-4"]).lr == 1e-4
    assert load_config(LMSteerConfig, None, ["lr=2E-3", "epsilon=1e-3"]).epsilon == 1e-3
    assert load_config(LMSteerConfig, None, ["lr=3E-5", "epsilon=.5e-3"]).epsilon == 5e-4
    path = tmp_path / "c.yaml"
    path.write_text("lr: 5e-5\nepsilon: .1e-2\ninit_var: 1.0e-2\n")
    config = load_config(LMSteerConfig, path)
    assert (config.lr, config.epsilon, config.init_var) == (5e-5, 1e-3, 1e-2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr: 1e-4\nlr: 2e-4\n", ":2:1: not valid YAML (duplicate key 'lr')"),
        (
            "lr: [1, 2\n",
            ":2:1: not valid YAML (while parsing a flow sequence: expected ',' or ']', but got '<stream end>')",
        ),
        ("lr: .inf\n", ":1: key 'lr': expected a finite number, got inf"),
        ("lr: 1e999\n", ":1: key 'lr': expected a finite number, got inf"),
        ("rank: true\n", ":1: key 'rank': expected an integer, got True"),
        ("\n\nrnak: 4\n", ":3: unknown key 'rnak' for LMSteerConfig"),
        ("lr: " + "[" * 80 + "]" * 80 + "\n", ":1: nested too deeply (the limit is 64 levels)"),
        ("lr: " + "[" * 5000 + "]" * 5000 + "\n", ":1: nested too deeply (the limit is 64 levels)"),
        ("lr: !!python/object/apply:os.system ['true']\n", ":1:5: not valid YAML (could not determine a constructor"),
        ("lr: 2024-13-45\n", ": month must be in 1..12"),
        (
            "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
            "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
            "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n",
            ": the document expands to more than 100000 values",
        ),
    ],
)
def test_bad_yaml_configs_give_one_line_naming_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(LMSteerConfig, path)
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith(f"{path}{message}"), caught.value


def test_yaml_configs_accept_a_bom_and_name_other_encodings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xef\xbb\xbfmode: pca_diff\n")
    assert load_config(PCAConfig, path).mode == "pca_diff"
    path.write_bytes("mode: pca_diff\n# caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"c\.yaml:2: not UTF-8 \(byte 0xe9"):
        load_config(PCAConfig, path)
    with pytest.raises(ConfigError, match=r"^--set lr=\[1: not valid YAML \(while parsing a flow sequence"):
        load_config(LMSteerConfig, None, ["lr=[1"])
