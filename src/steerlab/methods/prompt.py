"""Prompt steering: an instruction added to every prompt (as the system message or before the user's text).

A prompt changes the input tokens, so it cannot be a hook on the model: a PromptSteering is a steer of
kind "prompt", and `steerlab.generate` builds the steered rows (instruction added) and the original rows
(the prompt exactly as given, no instruction anywhere) and generates both in one batched call. The
original is therefore the truly unsteered output, not the instruction-prefixed baseline some toolkits
compare against.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from ..data import format_prompt
from ..errors import UsageError
from ..files import write_file
from ..models import LoadedModel
from ..textio import loads, read_text
from ..vector import VectorFileError
from ..version import __version__

PLACEMENTS = ("system", "prefix")
METADATA_KEY = "steerlab"
FORMAT_VERSION = 1
SEPARATOR = "\n\n"


@dataclass
class PromptConfig:
    """Settings for prompt steering; every default is what an empty config gives.

    instruction: the text that steers (required; no default, e.g. "Always answer cheerfully.").
    placement: "system" (default) makes it the system message, after any system text the caller
    gives, and replaces a chat template's default system message; "prefix" puts it before the
    user's text, separated by a blank line. Without a chat template both put it before the prompt.
    """

    instruction: str = ""
    placement: Literal["system", "prefix"] = "system"

    def __post_init__(self) -> None:
        check_instruction(self.instruction, self.placement)


def check_instruction(instruction: str, placement: str) -> None:
    """Refuse an empty instruction or an unknown placement, saying what to give instead."""
    if not isinstance(instruction, str) or not instruction.strip():
        raise UsageError("instruction must be a non-empty text, e.g. instruction='Always answer cheerfully.'")
    if placement not in PLACEMENTS:
        raise UsageError(f"placement must be one of {', '.join(PLACEMENTS)}; got {placement!r}")


@dataclass
class PromptSteering:
    """An instruction and where it goes, with the metadata a saved steer carries (method "prompt")."""

    instruction: str
    placement: str = "system"
    task: str = ""
    method: str = "prompt"
    kind: str = "prompt"
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    steerlab_version: str = __version__
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        check_instruction(self.instruction, self.placement)
        if self.method != "prompt" or self.kind != "prompt":
            raise UsageError(f"a PromptSteering has method and kind 'prompt', not {self.method!r} / {self.kind!r}")

    def prompt_text(self, tokenizer: Any, user_text: str, *, use_chat_template: bool, system: str | None = None) -> str:
        """The steered text the model sees before its answer (format_prompt with the instruction added)."""
        if self.placement == "system":
            system = f"{system}{SEPARATOR}{self.instruction}" if system else self.instruction
        else:
            user_text = f"{self.instruction}{SEPARATOR}{user_text}"
        return format_prompt(tokenizer, user_text, use_chat_template=use_chat_template, system=system)

    def describe(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the steer as JSON ({"steerlab": {...}}) atomically; refuse to replace a file unless asked."""
        path = Path(path)
        blob = json.dumps({METADATA_KEY: asdict(self)}, indent=2, sort_keys=True) + "\n"
        write_file(path, blob.encode("utf-8"), overwrite=overwrite)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> PromptSteering:
        """Read a prompt steer written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise VectorFileError(f"{path}: no such prompt file")
        raw = loads(read_text(path, VectorFileError), str(path), VectorFileError)
        meta = raw.get(METADATA_KEY) if isinstance(raw, dict) else None
        if not isinstance(meta, dict) or meta.get("method") != "prompt":
            raise VectorFileError(
                f'{path}: not a steerlab prompt file (expected {{"{METADATA_KEY}": {{"method": "prompt", ...}}}})'
            )
        if "instruction" not in meta:
            raise VectorFileError(f"{path}: the prompt file lacks 'instruction'")
        known = {f.name: f for f in fields(cls)}
        for key, value in meta.items():
            expected = int if key == "format_version" else str
            if key in known and (isinstance(value, bool) or not isinstance(value, expected)):
                kind = "an integer" if expected is int else "a string"
                raise VectorFileError(
                    f"{path}: field '{METADATA_KEY}.{key}': expected {kind}, got {json.dumps(value)[:60]}"
                )
        try:
            return cls(**{k: v for k, v in meta.items() if k in known})
        except ValueError as exc:
            raise VectorFileError(f"{path}: {exc}") from None


def fit(
    lm: LoadedModel,
    data: object = None,
    config: PromptConfig | None = None,
    *,
    task: str = "",
    progress: Callable[[int], object] | None = None,
) -> PromptSteering:
    """Make the prompt steer from the config; `data` is unused (a prompt needs no examples).

    Checks that the model's chat template takes a system message when placement is "system".
    """
    if config is None:
        raise UsageError("prompt steering needs a config with an instruction, e.g. PromptConfig(instruction='...')")
    if config.placement == "system" and lm.use_chat_template:
        try:
            format_prompt(lm.tokenizer, "hello", use_chat_template=True, system=config.instruction)
        except Exception as exc:  # noqa: BLE001 - templates reject a system role in their own ways
            raise UsageError(
                f"{lm.name}'s chat template does not take a system message ({exc}); use placement: prefix"
            ) from None
    return PromptSteering(config.instruction, config.placement, task=task)
