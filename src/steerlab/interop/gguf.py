"""Read and write llama.cpp's GGUF control-vector files, so a steerlab vector runs in llama.cpp and back.

The format: ``general.architecture = "controlvector"``, a ``controlvector.model_hint`` string, a
``controlvector.layer_count`` (the number of direction tensors: uint32 from repeng and from us, int32
from llama.cpp's cvector-generator; llama.cpp's loader ignores it) and one 1-D float32 tensor
``direction.N`` per layer. A ``steerlab.meta`` JSON string is added, which the other readers ignore.

What N means: llama.cpp's loader (``common_control_vector_load_one``) stores ``direction.N`` at row
N-1 of its buffer, ``llama_adapter_cvec::apply`` copies row N-1 into ``tensors[N]``, and every model
graph calls ``build_cvec(cur, il)`` on the output of decoder block ``il`` (0-based loop over blocks).
So ``direction.N`` is added to the output of block N: N is exactly steerlab's 0-based block index,
with no offset. repeng agrees: its keys index ``model.layers`` and its export writes
``direction.{key}``. The loader rejects ``direction.0`` (the output of block 0 cannot be steered),
so :func:`export_control_vector` refuses layer 0 unless told to leave it out.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from ..errors import OutputExistsError, UsageError
from ..files import write_file
from ..textio import finite_json
from ..vector import SteeringVector, VectorFileError, VectorMeta, layer_index

ARCH = "controlvector"
HINT_KEY = f"{ARCH}.model_hint"
COUNT_KEY = f"{ARCH}.layer_count"
# Extra key with steerlab's metadata; llama.cpp and repeng read only the keys above and ignore it.
META_KEY = "steerlab.meta"
IMPORT_METHOD = "llamacpp-import"


def export_control_vector(
    vector: SteeringVector,
    path: str | os.PathLike,
    *,
    model_hint: str | None = None,
    skip_layer_0: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write `vector` as a llama.cpp control vector, atomically; refuse to replace a file unless asked."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; choose another path or pass overwrite=True (--overwrite)")
    hint = model_hint if model_hint is not None else vector.meta.model_type
    if not hint:
        raise UsageError(f"{path}: the vector has no model_type; pass model_hint (the architecture, e.g. 'llama')")
    directions = _exportable(vector, path, skip_layer_0)
    write_file(path, _gguf_bytes(directions, hint, vector.meta), overwrite=overwrite)
    return path


def _exportable(vector: SteeringVector, path: Path, skip_layer_0: bool) -> dict[int, torch.Tensor]:
    """The directions llama.cpp can apply: it rejects direction.0, so layer 0 is dropped or refused."""
    directions = dict(vector.directions)
    if 0 in directions:
        if not skip_layer_0:
            raise UsageError(
                f"{path}: llama.cpp cannot steer the output of block 0 (it rejects a direction.0 tensor); "
                "pass skip_layer_0=True to export the other layers"
            )
        del directions[0]
    if not directions:
        raise UsageError(f"{path}: no layer left to export (llama.cpp skips layer 0)")
    return directions


def _gguf_bytes(directions: dict[int, torch.Tensor], hint: str, meta: VectorMeta) -> bytes:
    """Serialise through GGUFWriter into a private temporary file; the caller places the bytes atomically."""
    with tempfile.TemporaryDirectory(prefix="steerlab-gguf-") as tmp:
        out = Path(tmp) / "vector.gguf"
        writer = GGUFWriter(out, ARCH)
        writer.add_string(HINT_KEY, hint)
        writer.add_uint32(COUNT_KEY, len(directions))
        writer.add_string(META_KEY, json.dumps(finite_json(meta.to_json()), sort_keys=True))
        for layer, tensor in directions.items():
            writer.add_tensor(f"direction.{layer}", tensor.numpy().astype(np.float32, copy=False))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return out.read_bytes()


def import_control_vector(
    path: str | os.PathLike, *, model_name: str | None = None, num_layers: int | None = None
) -> SteeringVector:
    """Read a llama.cpp control vector (from llama.cpp, repeng or steerlab) as a SteeringVector."""
    path = Path(path)
    reader = _open(path)
    arch = _string_field(reader, "general.architecture", path)
    if arch is None:
        raise VectorFileError(f"{path}: a GGUF file without general.architecture; not a control vector")
    if arch != ARCH:
        raise VectorFileError(f"{path}: general.architecture is '{arch}', not '{ARCH}'; not a control vector")
    directions = _directions(reader, path)
    return SteeringVector(directions, _imported_meta(reader, path, directions, model_name, num_layers))


def _open(path: Path) -> GGUFReader:
    if not path.is_file():
        raise VectorFileError(f"{path}: no such control-vector file")
    try:
        return GGUFReader(path)
    except Exception as exc:  # noqa: BLE001 - the reader raises ValueError, struct and numpy errors on non-GGUF input
        raise VectorFileError(f"{path}: not a GGUF file ({exc})") from None


def _string_field(reader: GGUFReader, key: str, path: Path | None = None) -> str | None:
    field = reader.get_field(key)
    if field is None or not field.types or field.types[0] != GGUFValueType.STRING:
        return None
    try:
        return str(field.contents())
    except (UnicodeDecodeError, ValueError, IndexError) as exc:
        raise VectorFileError(f"{path}: GGUF key '{key}' is not a UTF-8 string ({type(exc).__name__})") from None


def _directions(reader: GGUFReader, path: Path) -> dict[int, torch.Tensor]:
    """Check every tensor is a 1-D float32 `direction.N` of one width, as llama.cpp's loader demands."""
    directions: dict[int, torch.Tensor] = {}
    for tensor in reader.tensors:
        layer = _layer_of(tensor.name, path)
        if tensor.tensor_type != GGMLQuantizationType.F32:
            raise VectorFileError(f"{path}: tensor '{tensor.name}' is {tensor.tensor_type.name}, expected F32")
        if len(tensor.shape) != 1:
            raise VectorFileError(
                f"{path}: tensor '{tensor.name}' has shape {tuple(int(d) for d in tensor.shape)}, "
                "expected one dimension"
            )
        if layer in directions:
            raise VectorFileError(f"{path}: two tensors for layer {layer}")
        try:
            data = torch.from_numpy(np.array(tensor.data, dtype=np.float32).reshape(-1))
        except (ValueError, TypeError, OSError) as exc:  # a tensor whose data the file does not hold
            raise VectorFileError(f"{path}: tensor '{tensor.name}' cannot be read ({exc})") from None
        if data.numel() == 0:
            raise VectorFileError(f"{path}: tensor '{tensor.name}' is empty")
        if not bool(torch.isfinite(data).all()):
            raise VectorFileError(f"{path}: tensor '{tensor.name}' has non-finite values (NaN or Inf); refusing it")
        directions[layer] = data
    if not directions:
        raise VectorFileError(f"{path}: a control-vector file without direction tensors")
    widths = {int(t.shape[0]) for t in directions.values()}
    if len(widths) > 1:
        raise VectorFileError(f"{path}: direction tensors differ in width ({sorted(widths)})")
    return directions


def _layer_of(name: str, path: Path) -> int:
    """N of direction.N, ASCII digits only; llama.cpp's loader rejects direction.0, and so do we."""
    layer = layer_index(name, "direction.", path)
    if layer == 0:
        raise VectorFileError(
            f"{path}: tensor '{name}': llama.cpp rejects direction.0 (the output of block 0 "
            "cannot be steered), so the file is not a valid control vector"
        )
    return layer


def _imported_meta(
    reader: GGUFReader, path: Path, directions: dict[int, torch.Tensor], model_name: str | None, num_layers: int | None
) -> VectorMeta:
    """Metadata from the file; where steerlab wrote it, keep the model identity and task it recorded."""
    hint = _string_field(reader, HINT_KEY, path) or ""
    saved = _saved_meta(reader, path)
    top = max(directions)
    layers = num_layers or (saved.num_layers if saved else top + 1)
    if top >= layers:
        raise VectorFileError(f"{path}: tensor 'direction.{top}' is past the {layers} layers the model has")
    if saved is not None and saved.hidden_size != int(next(iter(directions.values())).shape[0]):
        raise VectorFileError(
            f"{path}: the steerlab metadata says hidden size {saved.hidden_size}, the tensors "
            f"have {int(next(iter(directions.values())).shape[0])}"
        )
    config: dict[str, Any] = {"source": str(path), "model_hint": hint}
    if saved is not None:
        config.update(source_method=saved.method, source_config=saved.config)
    return VectorMeta(
        model_name=model_name or (saved.model_name if saved else "") or hint or "unknown",
        hidden_size=int(next(iter(directions.values())).shape[0]),
        # The file does not say how many blocks the model has: highest layer + 1 is a lower bound.
        num_layers=layers,
        method=IMPORT_METHOD,
        model_fingerprint=saved.model_fingerprint if saved else "",
        model_type=hint,
        config=config,
        fit_stats=saved.fit_stats if saved else {},
        dataset=saved.dataset if saved else {},
        task=saved.task if saved else "",
        residual_norms=saved.residual_norms if saved else {},
    )


def _saved_meta(reader: GGUFReader, path: Path) -> VectorMeta | None:
    text = _string_field(reader, META_KEY, path)
    return None if text is None else VectorMeta.from_json(text, str(path))
