"""Property-based tests of every file reader: on generated files, well-formed or not, a reader either
returns a valid object or raises the library's own error; never anything else (no TypeError, KeyError,
UnicodeDecodeError, RecursionError, ...). Each property runs briefly in the fast set and on 1,000
generated cases in the fuzz set."""

from __future__ import annotations

import io
import json
import math
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from gguf import GGUFWriter
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as safetensors_bytes

from steerlab import SteerlabError
from steerlab.conditional import Condition
from steerlab.config import ConfigError, load_config
from steerlab.data import DatasetError, load_pairs
from steerlab.evaluation.tasks import TaskError, load_task_file
from steerlab.interop.gguf import import_control_vector
from steerlab.methods.lm_steer import LMSteer, LMSteerConfig
from steerlab.methods.prompt import PromptSteering
from steerlab.steers import load_steer
from steerlab.vector import SteeringVector, VectorFileError, VectorMeta

FAST = settings(
    max_examples=40,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW = settings(FAST, max_examples=1000)


def fast_and_slow(strategy, examples=()):
    """Two tests of one property: a short run for the fast set, 1,000 cases for the fuzz set; each runs the
    explicit `examples` (inputs once seen to escape as a non-library error) before the generated ones."""

    def with_examples(test):
        for case in examples:
            test = example(case)(test)
        return test

    def make(check):
        return (
            FAST(with_examples(given(strategy)(check))),
            pytest.mark.fuzz(SLOW(with_examples(given(strategy)(check)))),
        )

    return make


def in_temp_file(name: str, data: bytes, read):
    """`read` a file holding `data`; a refusal must be the library's error, one line starting with the file's path
    (or with the `--set` option at fault, for configs)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        try:
            return read(path)
        except SteerlabError as exc:
            assert str(exc).startswith((str(path), "--set ")) and "\n" not in str(exc), str(exc)  # noqa: PT017 - the refusal's shape, then re-raised
            raise


# ---- shared building blocks -----------------------------------------------------------------------
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
DIGITS = st.sampled_from(
    ["0", "1", "2", "3", "015", "15", "\u0661", "\u0661\u0665", "\uff11", "-1", "", "1e1", "99999999999", " 1"]
)


def encoded(text: str, how: str) -> bytes:
    if how == "utf-8-bom":
        return b"\xef\xbb\xbf" + text.encode()
    return text.encode(how, errors="replace") if how != "utf-8" else text.encode("utf-8", errors="surrogatepass")


ENCODINGS = st.sampled_from(["utf-8", "utf-8", "utf-8-bom", "utf-16", "latin-1"])


def mutate(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    """Flip some bytes and maybe truncate: the kind of damage a disk or a download does."""
    out = bytearray(data)
    for position, value in flips:
        if out:
            out[position % len(out)] = value
    return bytes(out[:cut] if cut is not None else out)


DAMAGE = st.tuples(
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=3), st.none() | st.integers(0, 4000)
)


# ---- safetensors vectors --------------------------------------------------------------------------
META_FIELDS = {
    "model_name": st.text(max_size=8),
    "hidden_size": st.sampled_from([4, 0, -1, True, "4", None, 4.0]),
    "num_layers": st.sampled_from([4, 1, 0, "4", None, 2**40]),
    "method": st.sampled_from(["caa", "lm_steer", 3]),
    "recommended": st.fixed_dictionaries(
        {},
        optional={
            "layer": SCALARS,
            "multiplier": SCALARS,
            "verdict": SCALARS,
            "up": st.fixed_dictionaries(
                {}, optional={"layer": SCALARS, "multiplier": SCALARS, "interval": JSON_VALUES, "effect": SCALARS}
            )
            | JSON_VALUES,
            "calibration": st.fixed_dictionaries({}, optional={"up": SCALARS, "down": SCALARS, "layers": JSON_VALUES})
            | JSON_VALUES,
        },
    )
    | JSON_VALUES,
    "condition": st.fixed_dictionaries({}, optional={"layer": SCALARS, "threshold": SCALARS, "comparison": SCALARS})
    | JSON_VALUES,
    "kind": st.sampled_from(["vector", "condition", "lm_steer", 3]),
    "config": JSON_VALUES,
    "fit_stats": JSON_VALUES,
    "residual_norms": st.dictionaries(DIGITS, SCALARS, max_size=3) | JSON_VALUES,
    "params": JSON_VALUES,
    "dataset": JSON_VALUES,
    "task": SCALARS,
    "format_version": SCALARS,
    "created": SCALARS,
    "diagnostics": JSON_VALUES,
}
TENSORS = st.dictionaries(
    st.builds(lambda prefix, n: prefix + n, st.sampled_from(["layer.", "layer.", "direction.", "layer", ""]), DIGITS),
    st.tuples(
        st.sampled_from([(4,), (4,), (3,), (2, 2), ()]),
        st.sampled_from([torch.float32, torch.float16, torch.int64]),
        st.sampled_from([0.0, 1.0, -2.5, math.nan, math.inf, 1e30]),
    ),
    max_size=4,
)


@st.composite
def vector_files(draw) -> bytes:
    meta = {"model_name": "m", "hidden_size": 4, "num_layers": 4, "method": "caa"}
    for key in draw(st.lists(st.sampled_from(sorted(META_FIELDS)), max_size=4, unique=True)):
        meta[key] = draw(META_FIELDS[key])
    for key in draw(st.lists(st.sampled_from(["model_name", "hidden_size", "num_layers", "method"]), max_size=1)):
        del meta[key]
    header = (
        json.dumps(meta)
        if draw(st.booleans())
        else draw(
            st.sampled_from(
                [json.dumps(meta)[:-1] + ', "method": "x"}', "\ufeff" + json.dumps(meta), "[" * 3000, "null", "{"]
            )
        )
    )
    tensors = {name: torch.full(shape, value).to(dtype) for name, (shape, dtype, value) in draw(TENSORS).items()}
    data = safetensors_bytes(tensors, metadata={"steerlab": header})
    return mutate(data, *draw(DAMAGE)) if draw(st.integers(0, 3)) == 0 else data


def check_vector(data: bytes) -> None:
    """Vectors and conditions (the kinds of this strategy's files) through load_steer, which reads the kind."""
    try:
        vector = in_temp_file("v.safetensors", data, load_steer)
    except VectorFileError:
        return
    if isinstance(vector, Condition):
        assert bool(torch.isfinite(vector.direction).all()) and 0 <= vector.layer < vector.meta.num_layers
        vector = vector.as_vector()
    assert isinstance(vector, SteeringVector)
    assert all(bool(torch.isfinite(d).all()) for d in vector.directions.values())
    assert all(0 <= layer < vector.meta.num_layers for layer in vector.layers)
    json.dumps(vector.describe(), allow_nan=False)


BASE_META = {"model_name": "m", "hidden_size": 4, "num_layers": 4, "method": "caa"}
FLOAT8 = torch.ones(4).to(torch.float8_e4m3fn)  # isfinite is not implemented for float8: once a NotImplementedError
VECTOR_EXAMPLES = [
    safetensors_bytes({"layer.1": FLOAT8}, metadata={"steerlab": json.dumps(BASE_META)}),
    safetensors_bytes(  # a condition without its layer: once a KeyError 'layer'
        {"layer.1": torch.ones(4)},
        metadata={"steerlab": json.dumps({**BASE_META, "kind": "condition", "condition": {"threshold": 0.1}})},
    ),
    safetensors_bytes(  # the older layout: a condition stored as a vector, no recommended layer
        {"layer.1": torch.ones(4)},
        metadata={"steerlab": json.dumps({**BASE_META, "method": "condition", "params": {"threshold": 0.1}})},
    ),
    ('{"steerlab": ' + "[" * 5000 + "]" * 5000 + "}").encode(),  # a JSON steer nested deeply: once a RecursionError
]
test_vector_reader_fast, test_vector_reader_slow = fast_and_slow(vector_files(), VECTOR_EXAMPLES)(check_vector)


# ---- pair files -----------------------------------------------------------------------------------
PAIR_KEYS = ["prompt", "positive", "negative", "question", "answer_matching_behavior", "answer_not_matching_behavior"]
RECORDS = st.dictionaries(
    st.sampled_from(PAIR_KEYS) | st.text(max_size=5),
    st.text(max_size=10) | st.lists(st.text(max_size=5), max_size=2) | SCALARS,
    max_size=5,
)


@st.composite
def pair_files(draw) -> bytes:
    lines = draw(
        st.lists(
            st.one_of(RECORDS.map(json.dumps), JSON_VALUES.map(json.dumps), st.text(max_size=30), st.just("[" * 2000)),
            max_size=5,
        )
    )
    text = "[" + ", ".join(lines) + "]" if draw(st.booleans()) and draw(st.booleans()) else "\n".join(lines)
    data = encoded(text, draw(ENCODINGS))
    return mutate(data, *draw(DAMAGE)) if draw(st.integers(0, 4)) == 0 else data


def check_pairs(data: bytes) -> None:
    try:
        dataset = in_temp_file("pairs.jsonl", data, load_pairs)
    except DatasetError:
        return
    assert len(dataset) > 0
    assert all(isinstance(p.positive, str) and isinstance(p.prompt, str) for p in dataset.pairs)


PAIR_EXAMPLES = [
    json.dumps({"positive": "good", "negative": "bad"}).encode("utf-16"),
    json.dumps({"positive": "caf\u00e9", "negative": "bad"}, ensure_ascii=False).encode("latin-1"),
]
test_pair_reader_fast, test_pair_reader_slow = fast_and_slow(pair_files(), PAIR_EXAMPLES)(check_pairs)


# ---- prompt-steer JSON ----------------------------------------------------------------------------
PROMPT_KEYS = ["instruction", "placement", "task", "method", "created", "steerlab_version", "format_version"]


@st.composite
def prompt_files(draw) -> bytes:
    meta = {"method": "prompt", "instruction": "Be kind."}
    meta.update(
        draw(
            st.dictionaries(
                st.sampled_from(PROMPT_KEYS) | st.text(max_size=4),
                st.sampled_from(["prompt", "system", "prefix", "", " "]) | JSON_VALUES,
                max_size=4,
            )
        )
    )
    body = draw(st.sampled_from([{"steerlab": meta}, meta, [meta], {"steerlab": [meta]}]))
    text = (
        json.dumps(body)
        if draw(st.integers(0, 4))
        else draw(
            st.sampled_from(
                [
                    json.dumps(body)[:-1] + ', "steerlab": 1}',
                    "[" * 5000 + "]" * 5000,
                    json.dumps(body)[: len(json.dumps(body)) // 2],
                ]
            )
        )
    )
    data = encoded(text, draw(ENCODINGS))
    return mutate(data, *draw(DAMAGE)) if draw(st.integers(0, 5)) == 0 else data


def check_prompt(data: bytes) -> None:
    try:
        steer = in_temp_file("p.json", data, PromptSteering.load)
    except VectorFileError:
        return
    assert isinstance(steer.instruction, str) and steer.instruction.strip() and steer.placement in ("system", "prefix")


test_prompt_reader_fast, test_prompt_reader_slow = fast_and_slow(prompt_files())(check_prompt)


# ---- YAML configs and --set -----------------------------------------------------------------------
CONFIG_KEYS = list(asdict(LMSteerConfig()))
YAML_SNIPPETS = st.sampled_from(
    [
        "1e-4",
        "1E5",
        ".inf",
        "-.nan",
        "0x1F",
        "0o17",
        "1_000",
        "1:30",
        "2024-13-45",
        "2024-01-01",
        "~",
        "yes",
        "no",
        "on",
        "[1, 2",
        "{a: 1}",
        "!!binary AAA=",
        "!!python/name:os.system",
        "&a [1]",
        "*a",
        "'x",
        '"\\x"',
        "1e999",
        "- 1",
        ">\n x",
        "!!float abc",
        "!!int 1.5",
        "!!timestamp x",
        "<<: *a",
        "? [a]\n: b",
    ]
)


@st.composite
def config_inputs(draw) -> tuple[bytes | None, list[str]]:
    values = draw(st.dictionaries(st.sampled_from(CONFIG_KEYS) | st.text(max_size=5), JSON_VALUES, max_size=4))
    text = (
        yaml.safe_dump(values)
        if draw(st.booleans())
        else "\n".join(
            f"{draw(st.sampled_from(CONFIG_KEYS))}: {draw(YAML_SNIPPETS)}" for _ in range(draw(st.integers(0, 4)))
        )
    )
    if draw(st.integers(0, 5)) == 0:
        text = draw(st.sampled_from(["[" * 300, "a: " + "{b: " * 300, "- " * 300, draw(st.text(max_size=40))]))
    data = None if draw(st.integers(0, 4)) == 0 else encoded(text, draw(ENCODINGS))
    if data is not None and draw(st.integers(0, 5)) == 0:
        data = mutate(data, *draw(DAMAGE))
    sets = draw(
        st.lists(
            st.builds(
                lambda k, v: f"{k}={v}",
                st.sampled_from(CONFIG_KEYS) | st.text(max_size=4),
                YAML_SNIPPETS | st.text(max_size=8),
            ),
            max_size=3,
        )
    )
    return data, sets


def check_config(inputs: tuple[bytes | None, list[str]]) -> None:
    data, sets = inputs
    try:
        if data is None:
            config = load_config(LMSteerConfig, None, sets)
        else:
            config = in_temp_file("c.yaml", data, lambda path: load_config(LMSteerConfig, path, sets))
    except ConfigError as exc:
        assert "\n" not in str(exc)  # noqa: PT017 (an input may or may not be refused; a refusal is one line)
        return
    assert all(math.isfinite(v) for v in (config.lr, config.epsilon, config.init_var))


test_config_reader_fast, test_config_reader_slow = fast_and_slow(config_inputs())(check_config)


# ---- GGUF control vectors ------------------------------------------------------------------------
@st.composite
def gguf_files(draw) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "v.gguf"
        writer = GGUFWriter(path, draw(st.sampled_from(["controlvector", "controlvector", "llama", ""])))
        writer.add_string("controlvector.model_hint", draw(st.text(max_size=8)))
        if draw(st.booleans()):
            meta = {"model_name": "m", "hidden_size": 4, "num_layers": 4, "method": "caa"}
            meta.update(draw(st.dictionaries(st.sampled_from(sorted(META_FIELDS)), JSON_VALUES, max_size=2)))
            writer.add_string("steerlab.meta", json.dumps(meta) if draw(st.booleans()) else draw(st.text(max_size=20)))
        names = draw(
            st.lists(
                st.builds(lambda p, n: p + n, st.sampled_from(["direction.", "direction.", "layer."]), DIGITS),
                max_size=3,
                unique=True,
            )
        )
        for name in names:
            shape = draw(st.sampled_from([(4,), (4,), (3,), (2, 2)]))
            value = draw(st.sampled_from([0.0, 1.0, -3.0, math.nan, math.inf]))
            dtype = draw(st.sampled_from(["float32", "float32", "float16"]))
            writer.add_tensor(name, np.full(shape, value, dtype=dtype))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        data = path.read_bytes()
    if draw(st.integers(0, 3)) == 0:
        data = mutate(data, *draw(DAMAGE))
    return data


def check_gguf(data: bytes) -> None:
    try:
        vector = in_temp_file("v.gguf", data, import_control_vector)
    except VectorFileError:
        return
    assert all(bool(torch.isfinite(d).all()) for d in vector.directions.values()) and 0 not in vector.directions


test_gguf_reader_fast, test_gguf_reader_slow = fast_and_slow(gguf_files())(check_gguf)


# ---- LM-Steer files -------------------------------------------------------------------------------
@st.composite
def lm_steer_files(draw) -> bytes:
    meta = {
        "model_name": "m",
        "hidden_size": 4,
        "num_layers": 4,
        "method": "lm_steer",
        "kind": "lm_steer",
        "params": {"epsilon": draw(SCALARS | st.just(1e-3))},
    }
    for key in draw(st.lists(st.sampled_from([*sorted(META_FIELDS), "kind"]), max_size=2, unique=True)):
        meta[key] = draw(META_FIELDS.get(key, SCALARS))
    tensors = {}
    for name in draw(st.lists(st.sampled_from(["projector1", "projector2", "projector3"]), max_size=3, unique=True)):
        shape = draw(st.sampled_from([(1, 4, 2), (1, 4, 2), (2, 4, 1), (1, 3, 2), (4, 2), (1, 4, 0)]))
        value = draw(st.sampled_from([0.5, -1.0, math.nan, math.inf]))
        tensors[name] = torch.full(shape, value).to(draw(st.sampled_from([torch.float32, torch.float16, torch.int32])))
    data = safetensors_bytes(tensors, metadata={"steerlab": json.dumps(meta)})
    return mutate(data, *draw(DAMAGE)) if draw(st.integers(0, 3)) == 0 else data


def check_lm_steer(data: bytes) -> None:
    try:
        steer = in_temp_file("s.safetensors", data, LMSteer.load)
    except VectorFileError:
        return
    assert math.isfinite(steer.epsilon) and steer.rank >= 1 and bool(torch.isfinite(steer.projector1).all())


LM_STEER_META = {**BASE_META, "method": "lm_steer", "kind": "lm_steer", "config": {"epsilon": 1e-3}}
LM_STEER_EXAMPLES = [
    safetensors_bytes(
        {"projector1": torch.ones(1, 4, 2).to(torch.float8_e4m3fn), "projector2": torch.ones(1, 4, 2)},
        metadata={"steerlab": json.dumps(LM_STEER_META)},
    )
]
test_lm_steer_reader_fast, test_lm_steer_reader_slow = fast_and_slow(lm_steer_files(), LM_STEER_EXAMPLES)(
    check_lm_steer
)


# ---- task files (and the files they name) ---------------------------------------------------------
TASK_FILES = ["train.jsonl", "test.json", "prompts.txt", "prompts.jsonl", "missing.json", "", " ", "../x", "a\x00b"]
AB_ITEM = {"question": "Q? (A) yes (B) no", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"}


@st.composite
def task_folders(draw) -> dict[str, bytes]:
    fields = {
        "name": "t",
        "kind": draw(st.sampled_from(["ab", "generation", "chat"])),
        "train": "train.jsonl",
        "test": draw(st.sampled_from(["test.json", "prompts.txt", "prompts.jsonl"])),
    }
    if fields["kind"] == "generation":
        fields["metric"] = draw(st.sampled_from(["sentiment", "toxicity", "nope"]))
    changes = draw(
        st.dictionaries(
            st.sampled_from(
                ["name", "kind", "train", "test", "val", "metric", "direction", "chat", "description", "extra"]
            ),
            st.sampled_from(TASK_FILES) | SCALARS | JSON_VALUES,
            max_size=3,
        )
    )
    fields.update(changes)
    as_json = draw(st.booleans())
    text = json.dumps(fields) if as_json else yaml.safe_dump(fields)
    files = {"task.json" if as_json else "task.yaml": encoded(text, draw(ENCODINGS))}
    files["train.jsonl"] = draw(pair_files()) if draw(st.booleans()) else (json.dumps(AB_ITEM) + "\n").encode()
    files["test.json"] = draw(pair_files()) if draw(st.booleans()) else json.dumps([AB_ITEM] * 2).encode()
    files["prompts.txt"] = encoded(draw(st.text(max_size=30)), draw(ENCODINGS))
    files["prompts.jsonl"] = encoded(
        "\n".join(json.dumps({"prompt": draw(JSON_VALUES)}) for _ in range(2)), draw(ENCODINGS)
    )
    return files


def check_task(files: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for name, data in files.items():
            (root / name).write_bytes(data)
        try:
            task = load_task_file(root / next(n for n in files if n.startswith("task.")))
            task.train(root)
            for split in ("test", "val"):
                assert task.items(root, split)
        except (TaskError, ConfigError, DatasetError):
            return


TASK = {"name": "t", "kind": "ab", "train": "train.jsonl", "test": "test.json"}
AB_FILES = {"train.jsonl": (json.dumps(AB_ITEM) + "\n").encode(), "test.json": json.dumps([AB_ITEM] * 2).encode()}
TASK_EXAMPLES = [
    {"task.json": json.dumps({**TASK, "train": "x" * 300 + ".jsonl"}).encode(), **AB_FILES},  # once OSError
    {"task.json": json.dumps({k: v for k, v in TASK.items() if k != "name"}).encode(), **AB_FILES},  # TypeError
    {"task.yaml": yaml.safe_dump({k: v for k, v in TASK.items() if k != "test"}).encode(), **AB_FILES},
]
test_task_reader_fast, test_task_reader_slow = fast_and_slow(task_folders(), TASK_EXAMPLES)(check_task)


# ---- SAE files (sae-lens folders, Gemma Scope parameter files) ---------------------------------------
SAE_SHAPES = {
    "W_enc": [(4, 6), (4, 6), (6, 4), (4,)],
    "W_dec": [(6, 4), (6, 4), (4, 6)],
    "b_enc": [(6,), (4,)],
    "b_dec": [(4,), (6,)],
    "threshold": [(6,), (5,)],
    "extra": [(2,)],
}
CFG_VALUES = {
    "architecture": st.sampled_from(["standard", "jumprelu", "topk", "gated", 3]),
    "k": st.sampled_from([2, 0, 7, -1, True, 2.5, None]),
    "d_in": st.sampled_from([4, 6, "4"]),
    "hook_name": st.sampled_from(
        [
            "blocks.2.hook_resid_post",
            "blocks.0.hook_resid_pre",
            "blocks.2.hook_mlp_out",
            "blocks.\u0661.hook_resid_post",
            5,
        ]
    ),
    "normalize_activations": st.sampled_from(["none", "expected_average_only_in", None]),
    "apply_b_dec_to_input": st.sampled_from([True, False, "yes"]),
}


@st.composite
def sae_tensors(draw) -> bytes:
    tensors = {}
    for name in draw(st.lists(st.sampled_from(sorted(SAE_SHAPES)), min_size=3, max_size=6, unique=True)):
        value = draw(st.sampled_from([0.5, -1.0, math.nan, math.inf]))
        dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.int32]))
        tensors[name] = torch.full(draw(st.sampled_from(SAE_SHAPES[name])), value).to(dtype)
    return safetensors_bytes(tensors)


@st.composite
def sae_folders(draw) -> dict[str, bytes]:
    cfg = {"metadata": {}} if draw(st.booleans()) else {}
    for key in draw(st.lists(st.sampled_from(sorted(CFG_VALUES)), max_size=6, unique=True)):
        (cfg["metadata"] if "metadata" in cfg and key == "hook_name" else cfg)[key] = draw(CFG_VALUES[key])
    cfg_bytes = json.dumps(cfg).encode() if draw(st.integers(0, 5)) else draw(st.binary(max_size=40))
    return {"cfg.json": cfg_bytes, "sae_weights.safetensors": draw(sae_tensors())}


def check_sae_folder(files: dict[str, bytes]) -> None:
    from steerlab.sae.formats import SAEFileError, read_sae

    with tempfile.TemporaryDirectory() as folder:
        for name, data in files.items():
            (Path(folder) / name).write_bytes(data)
        try:
            sae = read_sae(folder)
        except SAEFileError as exc:
            assert str(exc).startswith(folder) and "\n" not in str(exc), str(exc)  # noqa: PT017
            return
    assert sae.d_model == 4 and sae.d_sae == 6 and bool(torch.isfinite(sae.W_enc).all())


test_sae_folder_reader_fast, test_sae_folder_reader_slow = fast_and_slow(sae_folders())(check_sae_folder)


@st.composite
def gemma_scope_files(draw) -> tuple[str, bytes]:
    if draw(st.booleans()):
        return "params.safetensors", mutate(draw(sae_tensors()), *draw(DAMAGE)) if draw(
            st.integers(0, 3)
        ) == 0 else draw(sae_tensors())
    arrays = {}
    for name in draw(st.lists(st.sampled_from(sorted(SAE_SHAPES)), min_size=3, max_size=6, unique=True)):
        dtype = draw(st.sampled_from(["float32", "float64", "int8", "float16"]))
        value = draw(st.sampled_from([0.5, np.nan])) if dtype != "int8" else 1
        arrays[name] = np.full(draw(st.sampled_from(SAE_SHAPES[name])), value, dtype=dtype)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    data = buffer.getvalue()
    return "params.npz", mutate(data, *draw(DAMAGE)) if draw(st.integers(0, 3)) == 0 else data


def check_gemma_scope(file: tuple[str, bytes]) -> None:
    from steerlab.sae.formats import SAEFileError, read_sae

    name, data = file
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "layer_3" / name
        path.parent.mkdir()
        path.write_bytes(data)
        try:
            sae = read_sae(path)
        except SAEFileError as exc:
            assert str(exc).startswith(str(path)) and "\n" not in str(exc), str(exc)  # noqa: PT017
            return
    assert (sae.layer, sae.d_model, sae.d_sae, sae.activation) == (3, 4, 6, "jumprelu")


test_gemma_scope_reader_fast, test_gemma_scope_reader_slow = fast_and_slow(gemma_scope_files())(check_gemma_scope)


def test_the_vector_strategy_reaches_valid_files_too():
    """The generated vector files are not all refused: some load (else the property would say little)."""
    meta = VectorMeta("m", 4, 4, "caa").to_json()
    data = safetensors_bytes({"layer.1": torch.ones(4)}, metadata={"steerlab": json.dumps(meta)})
    assert in_temp_file("v.safetensors", data, SteeringVector.load).layers == [1]
