"""Steer files of every kind behind one reader: `load_steer` reads the kind a file declares and dispatches on it.

Kinds: "vector" (a SteeringVector: safetensors, one direction per layer), "lm_steer" (an LMSteer:
safetensors with P1/P2) and "prompt" (a PromptSteering: JSON). The safetensors header and the JSON
object both carry the kind in their steerlab metadata; files written before kinds were stored are read
by their method.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Union

from .methods.lm_steer import LMSteer
from .methods.prompt import METADATA_KEY as PROMPT_KEY
from .methods.prompt import PromptSteering
from .vector import SteeringVector, VectorFileError, read_steer_meta

AnySteer = Union[SteeringVector, LMSteer, PromptSteering]
READERS: dict[str, Callable[[Path], AnySteer]] = {
    "vector": SteeringVector.load,
    "lm_steer": LMSteer.load,
    "prompt": PromptSteering.load,
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
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VectorFileError(f"{path}: neither a safetensors steer nor a JSON prompt steer ({exc})") from None
    meta = raw.get(PROMPT_KEY) if isinstance(raw, dict) else None
    if not isinstance(meta, dict):
        raise VectorFileError(f"{path}: a JSON file without steerlab metadata (expected {{\"{PROMPT_KEY}\": {{...}}}})")
    return str(meta.get("kind", meta.get("method", "")))


def load_steer(path: str | os.PathLike) -> AnySteer:
    """Read any steerlab steer file: a vector, an LM-Steer or a prompt steer, by the kind it declares."""
    kind = steer_kind(path)
    reader = READERS.get(kind)
    if reader is None:
        raise VectorFileError(f"{path}: unknown steer kind '{kind}'; steerlab reads {', '.join(READERS)}")
    return reader(Path(path))
