"""Steer files of every kind behind one reader: `load_steer` reads the kind a file declares and dispatches on it.

Kinds: "vector" (a SteeringVector: safetensors, one direction per layer), "condition" (a CAST Condition:
safetensors, one direction), "lm_steer" (an LMSteer: safetensors with P1/P2), "sae_clamp" (a FeatureClamp:
safetensors with an SAE and the clamped feature) and "prompt" (a PromptSteering: JSON). The safetensors header and the JSON object both carry the kind in their steerlab metadata; files
written before kinds were stored are read by their method.

`read_steer_folder` is the one reader of a folder of steer files (the server's registry and the vLLM plugin's
library both use it): every file by its stem, read by the kind it declares, a bad file reported, never raised.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from .conditional import Condition
from .methods.lm_steer import LMSteer
from .methods.prompt import METADATA_KEY as PROMPT_KEY
from .methods.prompt import PromptSteering
from .sae.clamp import FeatureClamp
from .textio import loads, read_text
from .vector import SteeringVector, VectorFileError, read_steer_meta

AnySteer = SteeringVector | Condition | LMSteer | PromptSteering | FeatureClamp
READERS: dict[str, Callable[[Path], AnySteer]] = {
    "vector": SteeringVector.load,
    "condition": Condition.load,
    "lm_steer": LMSteer.load,
    "prompt": PromptSteering.load,
    "sae_clamp": FeatureClamp.load,
}


def steer_kind(path: str | os.PathLike) -> str:
    """The kind a steer file declares, read from its metadata alone (no tensors are loaded)."""
    path = Path(path)
    if not path.is_file():
        raise VectorFileError(f"{path}: no such steer file")
    with open(path, "rb") as f:
        json_file = f.read(1) == b"{"  # a safetensors file starts with its 8-byte header length
    if not json_file:
        return read_steer_meta(path).kind
    raw = loads(read_text(path, VectorFileError), str(path), VectorFileError)  # strict: UTF-8, bounded depth
    meta = raw.get(PROMPT_KEY) if isinstance(raw, dict) else None
    if not isinstance(meta, dict):
        raise VectorFileError(f'{path}: a JSON file without steerlab metadata (expected {{"{PROMPT_KEY}": {{...}}}})')
    return str(meta.get("kind", meta.get("method", "")))


def load_steer(path: str | os.PathLike) -> AnySteer:
    """Read any steerlab steer file: a vector, an LM-Steer or a prompt steer, by the kind it declares."""
    kind = steer_kind(path)
    reader = READERS.get(kind)
    if reader is None:
        raise VectorFileError(f"{path}: unknown steer kind '{kind}'; steerlab reads {', '.join(READERS)}")
    return reader(Path(path))


STEER_SUFFIXES = (".safetensors", ".json")
Stamp = tuple[int, int]  # (size, mtime in ns): a file unchanged since it was read keeps its stamp


@dataclass(frozen=True)
class FolderEntry:
    """One steer file of a folder: its name (the file stem), its kind, and the steer read from it (None when
    its kind was not asked for, or when it cannot be read: then `problem` says why in one line)."""

    name: str
    path: Path
    kind: str | None
    steer: AnySteer | None
    problem: str | None = None


def read_steer_folder(
    folder: str | os.PathLike, *, kinds: Collection[str] | None = None, seen: dict[Path, Stamp] | None = None
) -> list[FolderEntry]:
    """Every steer file (.safetensors, .json) directly in `folder`, in name order, read by the kind it declares.

    Only kinds in `kinds` (None: all) are loaded; the others come back with their kind and no steer, so a
    caller can say why it leaves them out. A file that cannot be read comes back with its problem: one bad
    file must not keep the good ones from being served. With `seen` (path -> stamp), files unchanged since
    the stamp was taken are left out and `seen` is updated, so a folder can be re-read cheaply.
    """
    entries = []
    for path in sorted(Path(folder).iterdir()):
        if path.suffix not in STEER_SUFFIXES or not path.is_file():
            continue
        stat = path.stat()
        stamp = (stat.st_size, stat.st_mtime_ns)
        if seen is not None:
            if seen.get(path) == stamp:
                continue
            seen[path] = stamp
        try:
            kind = steer_kind(path)
            steer = load_steer(path) if kinds is None or kind in kinds else None
        except (OSError, ValueError) as exc:  # VectorFileError and every reader's own error are ValueErrors
            entries.append(FolderEntry(path.stem, path, None, None, str(exc)))
            continue
        entries.append(FolderEntry(path.stem, path, kind, steer))
    return entries
