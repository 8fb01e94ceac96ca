"""Request bodies of the HTTP API: the OpenAI chat/completions fields plus `steering` and `include_original`.

Unknown fields are refused (a typo must not silently change what is generated), and every number is
range-checked here so the generation worker only ever sees valid work.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_N = 8


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SteeringItem(_Strict):
    """One vector to apply: registered name, raw multiplier or norm-relative strength, optional layers, token
    positions and operator.

    positions: all, prompt, generated, a chat role (system, user, assistant) or between:OPEN:CLOSE;
    operator: add, ablate, clamp, rotate (default: the one the vector's file states).
    """

    vector: str = Field(min_length=1)
    multiplier: float | None = None
    layers: list[int] | None = Field(default=None, min_length=1)
    positions: str = "all"
    operator: Literal["add", "ablate", "clamp", "rotate"] | None = None
    strength: float | None = None  # fraction of each steered layer's mean residual norm (steerlab.strength)

    @field_validator("positions")
    @classmethod
    def _positions(cls, value: str) -> str:
        from ..positions import parse_window
        from ..steering import POSITIONS

        if value not in POSITIONS and parse_window(value) is None:
            raise ValueError(f"positions must be one of {', '.join(POSITIONS)} or between:OPEN:CLOSE; got '{value}'")
        return value

    @field_validator("multiplier", "strength")
    @classmethod
    def _finite(cls, value: float | None, info) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{info.field_name} must be a finite number, got {value}")
        return value

    @model_validator(mode="after")
    def _one_strength(self) -> "SteeringItem":
        if self.multiplier is not None and self.strength is not None:
            raise ValueError("give multiplier (raw) or strength (norm-relative), not both")
        return self

    @field_validator("layers")
    @classmethod
    def _distinct(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"layers must not repeat, got {value}")
        return value


class StreamOptions(_Strict):
    include_usage: bool = False


class GenerationFields(_Strict):
    """Fields shared by both endpoints. temperature 0 means greedy decoding."""

    model: str | None = None
    max_tokens: int = Field(default=64, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    steering: list[SteeringItem] = Field(default_factory=list)
    include_original: bool = False

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(GenerationFields):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(GenerationFields):
    prompt: str


class ScoreRequest(_Strict):
    """Texts to score with one of the server's metrics (the playground's chart)."""

    metric: str
    texts: list[str] = Field(min_length=1, max_length=64)
