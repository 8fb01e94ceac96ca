"""SteeringVector: one direction per layer plus the metadata that says what it was built for."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from .errors import SteerlabError, UsageError
from .files import write_file
from .meta import FORMAT_VERSION, VectorFileError, VectorMeta  # noqa: F401 (the metadata types live in steerlab.meta)
from .models import LayerError, check_layers
from .textio import finite_json

if TYPE_CHECKING:
    from .models import LoadedModel

METADATA_KEY = "steerlab"
KIND_NAMES = {
    "vector": "vector",
    "condition": "condition",
    "lm_steer": "LM-Steer",
    "prompt": "prompt steer",
    "sae_clamp": "SAE clamp",
}  # as messages name them


class IncompatibleVectorError(SteerlabError, ValueError):
    """A vector cannot be applied to this model: other hidden size or missing layers."""


class ModelMismatchWarning(UserWarning):
    """A vector built on another model of the same shape is being applied."""


class TaskMismatchWarning(UserWarning):
    """A vector built for one task is being applied for another."""


@dataclass
class SteeringVector:
    """Per-layer directions (layer index -> [hidden_size] tensor) and their metadata.

    Supports ``v1 + v2``, ``v1 - v2`` and ``3.0 * v`` for vectors of the same model.
    """

    directions: dict[int, torch.Tensor]
    meta: VectorMeta

    kind = "vector"

    def __post_init__(self) -> None:
        if not self.directions:
            raise UsageError("a steering vector needs at least one layer")
        clean = {}
        for layer, tensor in self.directions.items():
            tensor = torch.as_tensor(tensor).detach().float().cpu()
            if tensor.ndim != 1 or tensor.shape[0] != self.meta.hidden_size:
                raise UsageError(
                    f"layer {layer}: direction has shape {tuple(tensor.shape)}, expected ({self.meta.hidden_size},)"
                )
            clean[int(layer)] = tensor
        self.directions = dict(sorted(clean.items()))

    @property
    def layers(self) -> list[int]:
        return list(self.directions)

    def norms(self) -> dict[int, float]:
        """L2 norm per layer, computed in float64: a finite float32 vector's norm may exceed float32's range."""
        return {layer: float(t.double().norm()) for layer, t in self.directions.items()}

    # ---- arithmetic -------------------------------------------------------------------------------
    def _combine(self, other: SteeringVector, sign: float) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if not same_model(self.meta, other.meta):
            raise IncompatibleVectorError(
                f"cannot combine a vector for {describe_model(self.meta)} with one for {describe_model(other.meta)}"
            )
        out = {k: v.clone() for k, v in self.directions.items()}
        for layer, tensor in other.directions.items():
            out[layer] = out.get(layer, torch.zeros_like(tensor)) + sign * tensor
        op = "+" if sign > 0 else "-"
        meta = replace(
            self.meta,
            method="arithmetic",
            config={"expression": f"({self.meta.method}) {op} ({other.meta.method})"},
            fit_stats={},
            task=self.meta.task if self.meta.task == other.meta.task else "",
        )
        return SteeringVector(out, meta)

    def __add__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, 1.0)

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, -1.0)

    def __mul__(self, scalar: float) -> SteeringVector:
        if not isinstance(scalar, (int, float)):
            return NotImplemented
        return SteeringVector({k: v * float(scalar) for k, v in self.directions.items()}, replace(self.meta))

    __rmul__ = __mul__

    def __neg__(self) -> SteeringVector:
        return self * -1.0

    # ---- safety rails -----------------------------------------------------------------------------
    def check_compatible(self, lm: LoadedModel, layers: list[int] | None = None, task: str | None = None) -> None:
        """Refuse a model of another shape; warn for another model of this shape or another task."""
        m = self.meta
        check_hidden_size(m, lm, "vector")
        wanted = self.layers if layers is None else list(layers)
        try:
            check_layers(lm, wanted, f" (the vector was built for {m.model_name} with {m.num_layers} layers)")
        except LayerError as exc:
            raise IncompatibleVectorError(str(exc)) from None
        missing = [layer for layer in wanted if layer not in self.directions]
        if missing:
            raise IncompatibleVectorError(
                f"the vector has no direction for layer {missing[0]}; it has layers {self.layers}"
            )
        warn_if_other_model(m, lm, task, "vector")

    # ---- files ------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write safetensors (metadata in the header) atomically; refuse to replace a file unless asked."""
        tensors = {f"layer.{layer}": t for layer, t in self.directions.items()}
        return write_steer_file(path, tensors, self.meta, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SteeringVector:
        """Read a vector written by :meth:`save`; safetensors holds only tensors, so nothing is executed."""
        path = Path(path)
        meta, tensors = read_steer_file(path, "vector", "a steering vector")
        directions: dict[int, torch.Tensor] = {}
        names: dict[int, str] = {}
        for key, tensor in tensors.items():
            layer = layer_index(key, "layer.", path)
            if layer in names:
                raise VectorFileError(f"{path}: tensors '{names[layer]}' and '{key}' both name layer {layer}")
            if not 0 <= layer < meta.num_layers:
                raise VectorFileError(
                    f"{path}: tensor '{key}': layer {layer} is out of range for a {meta.num_layers}-layer model"
                )
            if tensor.ndim != 1 or tensor.shape[0] != meta.hidden_size or not tensor.is_floating_point():
                raise VectorFileError(
                    f"{path}: tensor '{key}' has shape {tuple(tensor.shape)} and dtype "
                    f"{str(tensor.dtype).removeprefix('torch.')}; expected floats of shape "
                    f"({meta.hidden_size},)"
                )
            names[layer], directions[layer] = key, tensor
        if not directions:
            raise VectorFileError(f"{path}: the file holds no layer.N tensors")
        return cls(directions, meta)

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary for `steerlab vector info`."""
        info = self.meta.to_json()
        info["layers"] = self.layers
        info["norms"] = {str(k): round(v, 4) for k, v in self.norms().items()}
        return info


def write_steer_file(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: VectorMeta, *, overwrite: bool = False
) -> Path:
    """Safetensors with the metadata as JSON in its header, written atomically (vectors and LM-Steers alike)."""
    path = Path(path)
    tensors = {k: t.contiguous() for k, t in tensors.items()}
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise VectorFileError(
                f"{path}: tensor '{key}' has non-finite values (NaN or Inf); not saved, as no "
                "reader would accept the file"
            )
    blob = safetensors_bytes(tensors, metadata={METADATA_KEY: json.dumps(finite_json(meta.to_json()), sort_keys=True)})
    write_file(path, blob, overwrite=overwrite)
    return path


def read_steer_meta(path: Path) -> VectorMeta:
    """The steerlab metadata of a safetensors steer file, without reading its tensors."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for corrupt input
        raise VectorFileError(f"{path}: not a safetensors file ({exc})") from None
    if METADATA_KEY not in header:
        raise VectorFileError(f"{path}: a safetensors file without steerlab metadata; was it written by steerlab?")
    return VectorMeta.from_json(header[METADATA_KEY], str(path))


def read_steer_file(path: Path, kind: str, what: str) -> tuple[VectorMeta, dict[str, torch.Tensor]]:
    """Metadata and tensors of a file written by write_steer_file, refused unless it holds a steer of `kind`
    (`what` names it in the message); safetensors never executes code."""
    if not path.is_file():
        raise VectorFileError(f"{path}: no such {KIND_NAMES.get(kind, kind)} file")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for corrupt input
        raise VectorFileError(f"{path}: not a safetensors file ({exc})") from None
    if METADATA_KEY not in header:
        raise VectorFileError(f"{path}: a safetensors file without steerlab metadata; was it written by steerlab?")
    meta = VectorMeta.from_json(header[METADATA_KEY], str(path))
    if meta.kind != kind:
        raise VectorFileError(
            f"{path}: a steer of kind '{meta.kind}', not {what}; read any steer file with steerlab.load_steer"
        )
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and tensor.dtype not in READ_DTYPES:
            raise VectorFileError(
                f"{path}: tensor '{key}' is {dtype_name(tensor.dtype)}; steerlab reads "
                f"{', '.join(dtype_name(d) for d in READ_DTYPES)} tensors (convert it to float32)"
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise VectorFileError(f"{path}: tensor '{key}' has non-finite values (NaN or Inf); refusing to load it")
    return meta, tensors


READ_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)  # float8 and others: no finite check


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def layer_index(key: str, prefix: str, path: Path | str) -> int:
    """N of a tensor named `prefix`N, in ASCII digits only ('layer.١٥' is not layer 15)."""
    index = key[len(prefix) :] if key.startswith(prefix) else ""
    if not (index.isascii() and index.isdigit()) or len(index) > 6:
        raise VectorFileError(f"{path}: unexpected tensor '{key}' (expected {prefix}N with N in 0-9 digits)")
    return int(index)


def check_hidden_size(m: VectorMeta, lm: LoadedModel, what: str) -> None:
    """Refuse a model of another hidden size (`what` names the artifact: "vector", "LM-Steer steer")."""
    if m.hidden_size != lm.hidden_size:
        raise IncompatibleVectorError(
            f"this {what} was built for {m.model_name} (hidden size {m.hidden_size}, {m.num_layers} layers) "
            f"and cannot be applied to {lm.name} (hidden size {lm.hidden_size}, {lm.num_layers} layers); "
            f"build a {what} on {lm.name} instead"
        )


def same_model(a: VectorMeta | LoadedModel, b: VectorMeta | LoadedModel) -> bool:
    """steerlab's one rule for "built on the same model": the same hidden size and, where both know their
    weights' fingerprint, the same fingerprint whatever the names; else the same name."""
    (name_a, print_a, size_a), (name_b, print_b, size_b) = _identity(a), _identity(b)
    if size_a != size_b:
        return False
    if print_a and print_b:
        return print_a == print_b
    return name_a == name_b


def describe_model(x: VectorMeta | LoadedModel) -> str:
    """A model as error messages name it: name, hidden size and, where known, the weights' fingerprint."""
    name, fingerprint, size = _identity(x)
    return f"{name} (hidden size {size}" + (f", fingerprint {fingerprint})" if fingerprint else ")")


def _identity(x: VectorMeta | LoadedModel) -> tuple[str, str, int]:
    if isinstance(x, VectorMeta):
        return x.model_name, x.model_fingerprint, x.hidden_size
    return x.name, x.fingerprint, x.hidden_size


def warn_if_other_model(m: VectorMeta, lm: LoadedModel, task: str | None, what: str) -> None:
    """Warn when applied to another model of the same shape, or for another task than it was built for."""
    if not same_model(m, lm):
        warnings.warn(
            f"this {what} was built for {m.model_name} but is applied to {lm.name} (same hidden size "
            f"{lm.hidden_size}); its effect there is untested",
            ModelMismatchWarning,
            stacklevel=4,
        )
    if task and m.task and task != m.task:
        warnings.warn(
            f"this {what} was built for task '{m.task}' but is applied for task '{task}'; "
            "steering vectors rarely transfer between tasks",
            TaskMismatchWarning,
            stacklevel=4,
        )


def content_hash(vector: SteeringVector) -> str:
    """sha256 of the directions (layer index, then float32 bytes, in layer order): names a vector's content, not its file."""
    digest = hashlib.sha256()
    for layer, tensor in vector.directions.items():
        digest.update(f"layer.{layer}:".encode())
        digest.update(tensor.float().contiguous().numpy().astype("<f4", copy=False).tobytes())
    return digest.hexdigest()
