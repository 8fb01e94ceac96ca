"""Shared fixtures: a tiny random Llama, the real SmolLM2 (loaded once), and the shared data folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from steerlab.models import LoadedModel
from tiny_model import tiny_model

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def tiny_llama() -> LoadedModel:
    return tiny_model("llama")


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    """The real default model (installed by the Makefile); loaded once per test session."""
    from steerlab.models import load_model

    return load_model()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(f"{SHARED_DATA}: the shared data folder must sit beside the repository")
    return SHARED_DATA


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tiny models run fastest on one thread; the real model gets both cores."""
    torch.set_num_threads(2 if item.get_closest_marker("slow") else 1)


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A tiny random Llama saved as a Hugging Face folder, for command-line tests."""
    from tiny_model import tiny_model

    lm = tiny_model("llama")
    folder = tmp_path / "tiny"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


# tests/vllm_engine need vLLM, which lives in its own venv (.venv-vllm; `make test` runs them there). The folder
# is not called "vllm": pytest puts tests/ on sys.path, where tests/vllm would pass for the vllm package.
if importlib.util.find_spec("vllm") is None:
    collect_ignore = ["vllm_engine"]
