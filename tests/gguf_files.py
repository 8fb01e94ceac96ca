"""GGUF files written by gguf's own writer for the GGUF tests: control vectors (or model-like files), optionally
with steerlab's metadata and with bytes damaged after writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter


def write_gguf(
    path: Path,
    tensors: dict[str, np.ndarray],
    *,
    arch: str = "controlvector",
    hint: str | None = "llama",
    meta: str | None = None,
    patch: tuple[bytes, bytes] | None = None,
) -> Path:
    writer = GGUFWriter(path, arch)
    if hint is not None:
        writer.add_string(f"{arch}.model_hint", hint)
    if meta is not None:
        writer.add_string("steerlab.meta", meta)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if patch is not None:  # GGUFWriter only writes valid UTF-8; damage the bytes afterwards
        data = path.read_bytes()
        assert data.count(patch[0]) == 1
        path.write_bytes(data.replace(*patch))
    return path
