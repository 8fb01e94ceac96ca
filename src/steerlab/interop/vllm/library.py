"""The steers a vLLM deployment offers: steerlab files in one folder, each read once per process.

Requests name a steer by file stem or by its content hash (sha256 of the directions, as `steerlab vector
info` and the server's /v1/vectors show). The folder is read again only when a request names something
not seen yet, so files added while vLLM runs (as `steerlab.generate(engine="vllm")` does) are found.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ...errors import MissingFileError
from ...steers import FolderEntry, read_steer_folder
from ...vector import SteeringVector, content_hash
from .errors import SteerNotFound

log = logging.getLogger(__name__)

STEERS_ENV = "STEERLAB_VLLM_STEERS"


@dataclass(frozen=True)
class Entry:
    """One file of the folder: a steering vector, or why it cannot steer on vLLM."""

    name: str
    path: Path
    sha256: str | None
    vector: SteeringVector | None
    refusal: str | None  # set for LM-Steer and prompt steers, which are not residual-stream additions


class SteerLibrary:
    """Name / content hash -> steering vector, for one folder; safe to share between threads."""

    def __init__(self, folder: str | os.PathLike | None):
        self.folder = Path(folder) if folder else None
        self._by_name: dict[str, Entry] = {}
        self._by_hash: dict[str, Entry] = {}
        self._seen: dict[Path, tuple[int, int]] = {}
        self._lock = threading.Lock()
        if self.folder is not None and not self.folder.is_dir():
            raise MissingFileError(
                f"${STEERS_ENV}={self.folder}: no such folder; point it at a folder of "
                "steerlab steer files (.safetensors vectors)"
            )

    @classmethod
    def from_env(cls) -> SteerLibrary:
        return cls(os.environ.get(STEERS_ENV) or None)

    def lookup(self, key: str) -> Entry:
        """The entry for a file stem or content hash; raises SteerNotFound naming what is available."""
        entry = self._find(key)
        if entry is None:
            self.rescan()
            entry = self._find(key)
        if entry is None:
            if self.folder is None:
                raise SteerNotFound(
                    f"steer '{key}': no steer folder is configured; set ${STEERS_ENV} to a folder "
                    "of steerlab .safetensors vectors before starting vLLM"
                )
            names = ", ".join(sorted(self._by_name)) or "none"
            raise SteerNotFound(f"steer '{key}' is not in {self.folder} (by file stem or sha256); available: {names}")
        return entry

    def _find(self, key: str) -> Entry | None:
        with self._lock:
            return self._by_name.get(key) or self._by_hash.get(key)

    def rescan(self) -> None:
        """Read files that are new or changed since the last scan (steerlab.steers.read_steer_folder, the one folder
        reader the server uses too): vectors are loaded, every other kind is kept with why vLLM refuses it."""
        if self.folder is None:
            return
        with self._lock:
            seen = dict(self._seen)
        fresh = read_steer_folder(self.folder, kinds=("vector",), seen=seen)
        entries = [_entry(found) for found in fresh]
        with self._lock:
            self._seen.update(seen)
            for entry in entries:
                self._by_name[entry.name] = entry
                if entry.sha256:
                    self._by_hash[entry.sha256] = entry


def _entry(found: FolderEntry) -> Entry:
    name = found.name
    if found.problem is not None:
        log.warning("steerlab: skipping %s: %s", found.path, found.problem)
        return Entry(name, found.path, None, None, found.problem)
    if isinstance(found.steer, SteeringVector):
        return Entry(name, found.path, content_hash(found.steer), found.steer, None)
    return Entry(name, found.path, None, None, _refusal(found.kind, f"'{name}'"))


def _refusal(kind: str | None, name: str) -> str:
    """Why a steer of `kind` cannot run on vLLM."""
    if kind == "prompt":
        return (
            f"{name} is a prompt steer: it rewrites the prompt, not the model; put its instruction in the "
            "request's messages (steerlab.generate(engine='vllm') does this)"
        )
    if kind == "lm_steer":
        return lm_steer_refusal(name)
    if kind == "condition":
        return (
            f"{name} is a CAST condition: it gates another steer per prompt, which the vLLM plugin does not do; "
            "use engine='hf' or `steerlab serve` for conditions"
        )
    if kind == "sae_clamp":
        return (
            f"{name} is an SAE clamp: it re-encodes every token through its SAE, which the vLLM plugin does not do; "
            "use engine='hf', or steer with the feature's decoder direction (steerlab sae features --save-feature)"
        )
    return f"{name} is a steer of kind '{kind}', which the vLLM plugin cannot apply"


def lm_steer_refusal(name: str) -> str:
    """Why an LM-Steer (`name` as the message should call it) cannot run on vLLM."""
    return (
        f"{name} is an LM-Steer: it transforms the last hidden state before the LM head, and vLLM's "
        "logits processors see only the logits, so the plugin cannot apply it; use engine='hf' for LM-Steer"
    )
