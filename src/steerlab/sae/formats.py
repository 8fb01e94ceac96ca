"""SAE files as people publish them: sae-lens folders and Gemma Scope parameter files, read strictly, written
atomically.

- sae-lens (PyPI `sae-lens`): a folder with `cfg.json` (d_in, d_sae, architecture standard/jumprelu/topk,
  k, hook_name and model_name at the top level or, in 6.x, under "metadata") and `sae_weights.safetensors`
  (W_enc, W_dec, b_enc, b_dec, threshold for JumpReLU). Hook `blocks.L.hook_resid_post` is steerlab's layer L,
  `blocks.L.hook_resid_pre` layer L-1 (L=0 is the embeddings, which steerlab does not steer); attention,
  MLP and other hooks are refused by name, as are normalised activations and other architectures.
- Gemma Scope (residual-stream SAEs): `params.npz` (Gemma Scope) or `params.safetensors` (Gemma Scope 2) with
  exactly W_enc [d_model, d_sae], W_dec [d_sae, d_model], b_enc, b_dec, threshold: JumpReLU, resid_post. The
  file names no model or layer: the layer comes from the path (`layer_12/...` or `layer_12_width_16k_...`) or
  is given; the model is not checked beyond its hidden size.

Every problem is an `SAEFileError`, one line starting with the path.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from ..errors import SteerlabError, UsageError
from ..files import write_file, write_folder
from ..textio import loads, read_text
from .model import SAE

CFG, WEIGHTS, NOTES = "cfg.json", "sae_weights.safetensors", "steerlab.json"
GEMMA_SCOPE_FILES = ("params.npz", "params.safetensors")
ARCHITECTURES = {"standard": "relu", "relu": "relu", "jumprelu": "jumprelu", "topk": "topk"}
PARAMETERS = ("W_enc", "W_dec", "b_enc", "b_dec")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
FINGERPRINT_KEY = "steerlab_model_fingerprint"  # ours, beside sae-lens's own keys


class SAEFileError(SteerlabError, ValueError):
    """An SAE file or folder is missing, unreadable, inconsistent, or in a layout steerlab does not read."""


def read_sae(path: str | os.PathLike, layer: int | None = None) -> SAE:
    """An SAE from a sae-lens folder or a Gemma Scope parameter file (or the folder holding one).

    `layer` gives a Gemma Scope file's layer when its path does not say it; a sae-lens folder's hook decides.
    """
    path = Path(path)
    if path.is_dir() and (path / CFG).exists():
        if layer is not None:
            raise SAEFileError(f"{path}: a sae-lens folder names its layer in cfg.json (hook_name); give no layer")
        return _read_saelens(path)
    if path.is_dir():
        found = [path / name for name in GEMMA_SCOPE_FILES if (path / name).exists()]
        if found:
            path = found[0]
    if path.is_file() and path.name in GEMMA_SCOPE_FILES:
        return _read_gemma_scope(path, layer)
    if not path.exists():
        raise SAEFileError(f"{path}: no such SAE file or folder")
    raise SAEFileError(
        f"{path}: not an SAE layout steerlab reads; expected a sae-lens folder ({CFG} + {WEIGHTS}) or a Gemma "
        f"Scope {' / '.join(GEMMA_SCOPE_FILES)}"
    )


# ---- sae-lens -------------------------------------------------------------------------------------------------


def hook_layer(hook: str, where: str) -> int:
    """steerlab's layer (output of block i) of a sae-lens hook name; anything but the residual stream is refused."""
    match = re.fullmatch(r"blocks\.([0-9]{1,6})\.hook_resid_(post|pre)", hook)
    if match is None:
        raise SAEFileError(
            f"{where}: hook '{hook}' is not a residual-stream hook (blocks.L.hook_resid_post or "
            "blocks.L.hook_resid_pre); steerlab steers the residual stream only"
        )
    block, kind = int(match.group(1)), match.group(2)
    if kind == "post":
        return block
    if block == 0:
        raise SAEFileError(
            f"{where}: hook '{hook}' reads the embeddings (before block 0), which steerlab does not steer"
        )
    return block - 1


def _read_saelens(folder: Path) -> SAE:
    cfg_path = folder / CFG
    cfg = loads(read_text(cfg_path, SAEFileError), str(cfg_path), SAEFileError)
    if not isinstance(cfg, dict):
        raise SAEFileError(f"{cfg_path}: expected a JSON object")
    nested = cfg.get("metadata")
    meta: dict[str, Any] = nested if isinstance(nested, dict) else {}

    def field(name: str, kind: type, default: Any = None) -> Any:
        value = cfg.get(name, meta.get(name, default))
        if value is default:
            return value
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise SAEFileError(f"{cfg_path}: '{name}' should be {kind.__name__}, got {json.dumps(value)[:40]}")
        return value

    architecture = field("architecture", str, "standard")
    if architecture not in ARCHITECTURES:
        raise SAEFileError(
            f"{cfg_path}: architecture '{architecture}' is not one steerlab reads ({', '.join(ARCHITECTURES)})"
        )
    normalize = field("normalize_activations", str, "none")
    if normalize != "none":
        raise SAEFileError(
            f"{cfg_path}: normalize_activations '{normalize}' is not supported; steerlab reads SAEs on raw activations"
        )
    reshape = field("reshape_activations", str, "none")
    if reshape != "none":
        raise SAEFileError(
            f"{cfg_path}: reshape_activations '{reshape}' is not supported; steerlab reads the residual stream as is"
        )
    hook = field("hook_name", str)
    if hook is None:
        raise SAEFileError(f"{cfg_path}: no hook_name; steerlab needs to know which layer the SAE reads")
    kwargs = field("activation_fn_kwargs", dict, {})
    k = field("k", int, kwargs.get("k"))
    tensors = _read_safetensors(folder / WEIGHTS)
    sae = _build(
        folder / WEIGHTS,
        tensors,
        layer=hook_layer(hook, str(cfg_path)),
        activation=ARCHITECTURES[architecture],
        k=k if architecture == "topk" else None,
        model_name=field("model_name", str, ""),
        model_fingerprint=field(FINGERPRINT_KEY, str, ""),
        apply_b_dec_to_input=field("apply_b_dec_to_input", bool, False),
    )
    for name, size in (("d_in", sae.d_model), ("d_sae", sae.d_sae)):
        stated = field(name, int)
        if stated is not None and stated != size:
            raise SAEFileError(f"{cfg_path}: {name} is {stated} but the weights have {size}")
    return sae


def saelens_config(sae: SAE) -> dict[str, Any]:
    architecture = {"relu": "standard", "jumprelu": "jumprelu", "topk": "topk"}[sae.activation]
    cfg: dict[str, Any] = {
        "architecture": architecture,
        "d_in": sae.d_model,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": "none",
        "metadata": {"model_name": sae.model_name, "hook_name": f"blocks.{sae.layer}.hook_resid_post"},
        FINGERPRINT_KEY: sae.model_fingerprint,
    }
    if sae.k is not None:
        cfg["k"] = sae.k
    return cfg


def write_saelens(
    sae: SAE, folder: str | os.PathLike, *, overwrite: bool = False, notes: dict[str, Any] | None = None
) -> Path:
    """A sae-lens folder (cfg.json + sae_weights.safetensors), written whole or not at all; `notes` (e.g. a
    training report) go to steerlab.json beside them, which sae-lens ignores."""
    blob = safetensors_bytes({k: v.contiguous() for k, v in sae.tensors().items()})
    cfg = json.dumps(saelens_config(sae), indent=1, sort_keys=True) + "\n"

    def fill(tmp: Path) -> None:
        (tmp / CFG).write_text(cfg, encoding="utf-8")
        (tmp / WEIGHTS).write_bytes(blob)
        if notes is not None:
            (tmp / NOTES).write_text(json.dumps(notes, indent=1, sort_keys=True) + "\n", encoding="utf-8")

    return write_folder(folder, fill, overwrite=overwrite)


# ---- Gemma Scope ---------------------------------------------------------------------------------------------


def path_layer(path: Path) -> int | None:
    """The layer a Gemma Scope path names (`layer_12/...`, `layer_12_width_16k_l0_big/...`), nearest folder first."""
    for part in reversed(path.parent.parts):
        match = re.fullmatch(r"layer_([0-9]{1,6})(_.*)?", part)
        if match:
            return int(match.group(1))
    return None


def _read_gemma_scope(path: Path, layer: int | None) -> SAE:
    if layer is None:
        layer = path_layer(path)
    if layer is None:
        raise SAEFileError(f"{path}: the path names no layer (layer_N/...); give the layer the SAE reads")
    tensors = _read_npz(path) if path.suffix == ".npz" else _read_safetensors(path)
    if "threshold" not in tensors:
        raise SAEFileError(f"{path}: no 'threshold'; Gemma Scope SAEs are JumpReLU")
    return _build(path, tensors, layer=layer, activation="jumprelu")


def write_gemma_scope(sae: SAE, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """params.npz (Gemma Scope) or params.safetensors (Gemma Scope 2), by the name; JumpReLU SAEs only.
    Put it under a `layer_N` folder for readers to find the layer."""
    path = Path(path)
    if path.name not in GEMMA_SCOPE_FILES:
        raise SAEFileError(f"{path}: a Gemma Scope file is named {' or '.join(GEMMA_SCOPE_FILES)}")
    if sae.activation != "jumprelu" or sae.apply_b_dec_to_input:
        raise SAEFileError(
            f"{path}: the Gemma Scope layout holds JumpReLU SAEs on raw activations; this one is "
            f"{sae.activation}; write it as a sae-lens folder"
        )
    tensors = {k: v.detach().float().contiguous() for k, v in sae.tensors().items()}
    if path.suffix == ".safetensors":
        return write_file(path, safetensors_bytes(tensors), overwrite=overwrite)
    buffer = io.BytesIO()
    arrays: dict[str, Any] = {k: v.numpy() for k, v in tensors.items()}
    np.savez(buffer, **arrays)
    return write_file(path, buffer.getvalue(), overwrite=overwrite)


# ---- tensors -------------------------------------------------------------------------------------------------


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise SAEFileError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for corrupt input
        raise SAEFileError(f"{path}: not a safetensors file ({exc})") from None


def _read_npz(path: Path) -> dict[str, torch.Tensor]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise SAEFileError(f"{path}: not a readable .npz file ({exc})") from None
    out = {}
    for key, array in arrays.items():
        if array.dtype.kind != "f":
            raise SAEFileError(f"{path}: '{key}' is {array.dtype}; expected floats")
        out[key] = torch.from_numpy(array)
    return out


def _build(path: Path, tensors: dict[str, torch.Tensor], **fields: Any) -> SAE:
    """Check names, dtypes, finiteness and shapes, then make the SAE (parameters as float32)."""
    allowed = set(PARAMETERS) | ({"threshold"} if fields["activation"] == "jumprelu" else set())
    for key in sorted(set(tensors) - allowed):
        raise SAEFileError(f"{path}: unexpected tensor '{key}' (expected {', '.join(sorted(allowed))})")
    for key in sorted(allowed - set(tensors)):
        raise SAEFileError(f"{path}: missing tensor '{key}'")
    for key, tensor in tensors.items():
        if tensor.dtype not in FLOAT_DTYPES:
            raise SAEFileError(
                f"{path}: tensor '{key}' is {str(tensor.dtype).removeprefix('torch.')}; expected float32, "
                "float16, bfloat16 or float64"
            )
        if not bool(torch.isfinite(tensor).all()):
            raise SAEFileError(f"{path}: tensor '{key}' has non-finite values (NaN or Inf)")
    params = {k: v.float() for k, v in tensors.items()}
    try:
        return SAE(
            params["W_enc"],
            params["b_enc"],
            params["W_dec"],
            params["b_dec"],
            threshold=params.get("threshold"),
            **fields,
        )
    except UsageError as exc:
        raise SAEFileError(f"{path}: {str(exc).removeprefix('SAE: ')}") from None
