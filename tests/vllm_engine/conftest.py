"""One compiled vLLM engine for the whole run (vLLM's default mode; it takes 70-120 s to start), and the Hugging
Face reference beside it. Eager mode is covered by the stock server test and the TP test, which start their own.

The engine prefills at most 64 tokens per step, so the long prompts below are chunk-prefilled, and keeps
prefix caching on, so the cache-salt tests see a cache that would otherwise be shared.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
# vLLM's worker on one core: the HF reference runs beside it, and on a busy machine a two-core OpenMP team bound
# to both cores spends most of its time waiting on itself (a benchmark ran about 10x slower that way).
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0")

MAX_BATCHED = 64


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """vLLM's worker processes use the cores too; two torch threads here only fight them for the same cores."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def lm():
    from steerlab.models import load_model

    return load_model()


@pytest.fixture(scope="session")
def engine(lm, tmp_path_factory):
    from steerlab.interop.vllm.engine import VLLMEngine

    eng = VLLMEngine(
        lm,
        steers_dir=tmp_path_factory.mktemp("steers"),
        max_num_batched_tokens=MAX_BATCHED,
        max_model_len=1024,
        max_num_seqs=16,
        enable_prefix_caching=True,
    )
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def vectors(lm):
    """A sentiment CAA (the shipped pairs) and a formality CAA (pairs written here), at layers 5-20."""
    from steerlab.data import load_pairs, pairs_from_texts
    from steerlab.methods.caa import CAAConfig, fit

    torch.set_num_threads(1)
    sentiment = fit(lm, load_pairs(_resource("sentiment_pairs.jsonl")), CAAConfig(layers=[5, 10, 15, 20]))
    formal = pairs_from_texts(
        [
            "Dear Sir, I am writing to inform you of the meeting.",
            "Kindly find the report attached herewith.",
            "We respectfully request your presence at the ceremony.",
        ],
        ["hey dude, meeting's on lol", "yo here's the report thing", "u gotta come to the party!!"],
    )
    return {"sentiment": sentiment, "formal": fit(lm, formal, CAAConfig(layers=[5, 10, 15, 20]))}


def _resource(name: str):
    from importlib.resources import files

    return str(files("steerlab") / "resources" / name)
