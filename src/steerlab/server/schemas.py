"""Request bodies of the HTTP API: the OpenAI chat/completions fields plus `steering` and `include_original`.

Unknown fields are refused (a typo must not silently change what is generated), types are strict (`true`
is not a number and `"3"` is not an integer), and every number is range-checked here so the generation
worker only ever sees valid work.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import lone_surrogate

MAX_N = 8
MAX_STOP = 4


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def unencodable(value: Any, where: str = "") -> tuple[str, int] | None:
    """The first text in a request that is not valid Unicode, as (field, character index), or None.

    JSON can spell a lone surrogate (`"\\ud800"`), which Python keeps in a str but no tokenizer or UTF-8
    response can hold. Fields are named as error messages name them: `messages[0].content`, `stop[1]`.
    """
    if isinstance(value, str):
        if (at := lone_surrogate(value)) is not None:
            return where, at
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            if found := unencodable(getattr(value, name), f"{where}.{name}" if where else name):
                return found
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            if found := unencodable(item, f"{where}[{i}]"):
                return found
    return None


class SteeringItem(_Strict):
    """One vector to apply: registered name, raw multiplier or norm-relative strength, optional layers, token
    positions and operator.

    positions: all, prompt, generated, a chat role (system, user, assistant), between:OPEN:CLOSE or until:MARKER;
    reasoning_budget: steer nothing for that many generated tokens, then ramp up over budget_ramp (32) tokens;
    operator: add, ablate, clamp, rotate (default: the one the vector's file states).
    condition: a registered condition (CAST): the item applies only where this request's prompt meets it.
    ablate_direction: remove the vector's direction from the residual stream at every layer (Arditi et al.);
    `layers` then names the one layer whose direction to take (default: the vector's recommended one).
    """

    vector: str = Field(min_length=1)
    multiplier: float | None = None
    layers: list[int] | None = Field(default=None, min_length=1)
    positions: str = "all"
    operator: Literal["add", "ablate", "clamp", "rotate"] | None = None
    strength: float | None = None  # fraction of each steered layer's mean residual norm (steerlab.strength)
    condition: str | None = Field(default=None, min_length=1)
    ablate_direction: bool = False
    reasoning_budget: int | None = Field(default=None, ge=0)
    budget_ramp: int | None = Field(default=None, ge=1)

    @field_validator("positions")
    @classmethod
    def _positions(cls, value: str) -> str:
        from ..positions import check_positions

        return check_positions(value)

    @field_validator("multiplier", "strength")
    @classmethod
    def _finite(cls, value: float | None, info) -> float | None:
        from ..steering import check_float32

        return value if value is None else check_float32(value, info.field_name)

    @model_validator(mode="after")
    def _one_strength(self) -> SteeringItem:
        if self.multiplier is not None and self.strength is not None:
            raise ValueError("give multiplier (raw) or strength (norm-relative), not both")
        if self.budget_ramp is not None and self.reasoning_budget is None:
            raise ValueError("budget_ramp shapes a reasoning_budget; give reasoning_budget too")
        if self.ablate_direction:
            extra = [
                name
                for name, given in (
                    ("multiplier", self.multiplier is not None),
                    ("strength", self.strength is not None),
                    ("operator", self.operator is not None),
                    ("condition", self.condition is not None),
                    ("positions", self.positions != "all"),
                    ("reasoning_budget", self.reasoning_budget is not None),
                )
                if given
            ]
            if extra:
                raise ValueError(f"ablate_direction acts at every layer and position; drop {', '.join(extra)}")
            if self.layers is not None and len(self.layers) != 1:
                raise ValueError(
                    "ablate_direction removes one direction: give layers with the one layer to take "
                    f"it from, got {self.layers}"
                )
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
    """Fields shared by both endpoints. temperature 0 means greedy decoding.

    `max_completion_tokens` is the newer OpenAI name of `max_tokens`; either may be given (both only if
    equal). `user` is accepted and ignored, as it only labels the request for the caller's own records.
    """

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    user: str | None = Field(default=None, max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None
    steering: list[SteeringItem] = Field(default_factory=list)
    include_original: bool = False

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        if any(len(s) > 256 for s in stops):
            raise ValueError("stop sequences must be at most 256 characters")
        return value

    @model_validator(mode="after")
    def _one_budget(self) -> GenerationFields:
        if (
            self.max_tokens is not None
            and self.max_completion_tokens is not None
            and self.max_tokens != self.max_completion_tokens
        ):
            raise ValueError(
                f"max_tokens ({self.max_tokens}) and max_completion_tokens "
                f"({self.max_completion_tokens}) differ; give one of them"
            )
        return self

    @property
    def token_budget(self) -> int:
        """The most tokens each choice may generate (default 64)."""
        return self.max_completion_tokens or self.max_tokens or 64

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0

    @property
    def top_logprobs_wanted(self) -> int | None:
        """None without logprobs; else how many alternatives to list per token (0 = only the chosen one)."""
        return None


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str
    name: str | None = None


class ChatCompletionRequest(GenerationFields):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    @property
    def top_logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def prompt_chars(self) -> int:
        return sum(len(m.content) for m in self.messages)


class CompletionRequest(GenerationFields):
    prompt: str
    # The legacy completions API: an integer, how many alternatives to list per token (0..5).
    logprobs: int | None = Field(default=None, ge=0, le=5)

    @property
    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs

    @property
    def prompt_chars(self) -> int:
        return len(self.prompt)


class ScoreRequest(_Strict):
    """Texts to score with one of the server's metrics (the playground's chart)."""

    metric: str
    texts: list[str] = Field(min_length=1, max_length=64)
