"""Apply steers: forward hooks that apply an operator (add, ...) with a direction to chosen layers' outputs.

Token positions are absolute (counted over real tokens of the attention mask), so "prompt" and
"generated" select the same tokens with or without a KV cache and with left padding. Each batch row
may carry its own multiplier; a row with multiplier 0, and a position not selected, keep their hidden
state bit for bit (nothing is multiplied by zero, so a NaN in one steer cannot reach another row).
Hooks live in a handle that always removes them, and act only in the thread (context) that attached
them: two threads sharing one model never see each other's steering.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

import torch

from .models import LoadedModel
from .operators import OPERATORS, Operator, add, get_operator
from .vector import SteeringVector

POSITIONS = ("all", "prompt", "generated")
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
# Handles attached in the current thread or task; a hook registered by any other does nothing here.
_ACTIVE: ContextVar[frozenset[int]] = ContextVar("steerlab_active_steering", default=frozenset())


class SteeringError(ValueError):
    """Steering was asked for in a way that cannot work; the message says how to fix it."""


@dataclass
class SteeringSpec:
    """One vector to apply: its multiplier (a float, or one per batch row), layers, and token positions.

    `layers` is a list of layers (multiplier 1 each) or {layer: multiplier}; None takes the vector's
    recommended layer if a sweep stored one, else every layer the vector has. `multiplier` None takes the
    recommended multiplier, else 1. Positions: "all"; "prompt" (prompt tokens only); "generated" (every
    position that predicts a new token: the last prompt token and all generated tokens). `operator` names
    a function of steerlab.operators (default "add").
    """

    vector: SteeringVector
    multiplier: float | Sequence[float] | None = None
    layers: Sequence[int] | Mapping[int, float] | None = None
    positions: str = "all"
    operator: str = "add"

    def layer_weights(self) -> dict[int, float]:
        if self.layers is None:
            rec = self.vector.meta.recommended.get("layer")
            return {int(rec): 1.0} if rec is not None and int(rec) in self.vector.directions else dict.fromkeys(self.vector.layers, 1.0)
        if isinstance(self.layers, Mapping):
            return {int(k): float(v) for k, v in self.layers.items()}
        return dict.fromkeys((int(layer) for layer in self.layers), 1.0)

    def row_multipliers(self) -> torch.Tensor:
        mult = self.multiplier
        if mult is None:
            mult = self.vector.meta.recommended.get("multiplier", 1.0)
        values = torch.as_tensor([mult] if isinstance(mult, (int, float)) else list(mult), dtype=torch.float64)
        if values.ndim != 1 or values.numel() == 0:
            raise SteeringError("multiplier must be a number or a non-empty list of numbers (one per batch row)")
        if not (torch.isfinite(values).all() and bool((values.abs() <= FLOAT32_MAX).all())):
            raise SteeringError(f"multiplier must be a finite number within float32's range (|m| <= {FLOAT32_MAX:.4g}), "
                                f"got {mult}")
        return values.float()


class Steer(Protocol):
    """Anything generation applies inside the model with per-row scales: vector steering (kind "vector"),
    LM-Steer ("lm_steer"). A prompt steer (kind "prompt") rewrites the prompt text instead; see generation."""

    kind: str

    def attach(self, lm: LoadedModel, *, row_scale: torch.Tensor | None = None,
               prompt_lengths: torch.Tensor | None = None, task: str | None = None) -> "Handle": ...


class Handle(Protocol):
    def remove(self) -> None: ...
    def __enter__(self) -> "Handle": ...
    def __exit__(self, *exc) -> None: ...


class _Term:
    """One (spec, layer) contribution, precomputed on the model's device and dtype."""

    def __init__(self, direction: torch.Tensor, rows: torch.Tensor, positions: str, operator: Operator):
        self.direction = direction  # [hidden]
        self.rows = rows  # [R] per-row coefficient (layer weight * multiplier * row scale)
        self.positions = positions
        self.operator = operator
        # The common case (one non-zero multiplier, all positions, addition) is one precomputed addition per forward.
        uniform = bool((rows == rows[0]).all()) and bool(rows[0] != 0)
        self.constant = rows[0] * direction if uniform and positions == "all" and operator is add else None


def enter_scope(owner: object) -> None:
    """Make `owner`'s hooks act in this thread (or asyncio task) only; other threads' forwards pass through."""
    _ACTIVE.set(_ACTIVE.get() | {id(owner)})


def leave_scope(owner: object) -> None:
    _ACTIVE.set(_ACTIVE.get() - {id(owner)})


def in_scope(owner: object) -> bool:
    """Whether the running forward belongs to the thread (or task) that attached `owner`."""
    return id(owner) in _ACTIVE.get()


class SteeringHandle:
    """Active steering on a model. Use as a context manager or call `remove()`; both are idempotent."""

    def __init__(self, lm: LoadedModel, terms: dict[int, list[_Term]], prompt_lengths: torch.Tensor | None):
        self.lm = lm
        self.prompt_lengths = prompt_lengths
        self._terms = terms
        self._positions: torch.Tensor | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        enter_scope(self)
        needs_positions = any(t.positions != "all" for group in terms.values() for t in group)
        try:
            if needs_positions:
                self._handles.append(lm.model.register_forward_pre_hook(self._track_positions, with_kwargs=True))
            for layer, group in terms.items():
                self._handles.append(lm.layers[layer].register_forward_hook(self._layer_hook(group)))
        except Exception:
            self.remove()
            raise

    def __enter__(self) -> "SteeringHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        leave_scope(self)

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def reset(self, prompt_lengths: torch.Tensor | None = None) -> None:
        """Start a new generation: forget (or set) the prompt lengths "prompt"/"generated" are measured from."""
        self.prompt_lengths = prompt_lengths

    def _track_positions(self, module, args, kwargs) -> None:
        if not in_scope(self):
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        batch, cur = (ids.shape if ids is not None else embeds.shape[:2])
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.ndim == 2:
            positions = mask.long().cumsum(-1)[:, -cur:] - 1
            real = mask[:, -cur:].long().sum(-1) if self.prompt_lengths is None else None
        else:
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
            positions = (torch.arange(cur, device=(ids if ids is not None else embeds).device) + past).expand(batch, cur)
            real = torch.full((batch,), cur) if self.prompt_lengths is None else None
        if self.prompt_lengths is None:
            # Outside steerlab's generate, the first forward seen is taken as the prompt.
            self.prompt_lengths = real.cpu()
        self._positions = positions

    def _layer_hook(self, group: list[_Term]):
        def hook(module, args, output):
            if not in_scope(self):
                return None
            hidden = output[0] if isinstance(output, tuple) else output
            steered = hidden
            for term in group:
                steered = self._apply(term, steered)
            if isinstance(output, tuple):
                return (steered,) + tuple(output[1:])
            return steered

        return hook

    def _apply(self, term: _Term, hidden: torch.Tensor) -> torch.Tensor:
        if term.constant is not None:
            return hidden + term.constant
        batch = hidden.shape[0]
        rows = fit_rows(term.rows, batch, "multipliers").to(hidden.device)
        coef = rows.to(hidden.dtype)[:, None, None]
        selected = (rows != 0)[:, None].expand(batch, hidden.shape[1])  # [rows, tokens]
        if term.positions != "all":
            if self._positions is None or self.prompt_lengths is None:
                raise SteeringError("positions 'prompt'/'generated' need the model's top-level forward; call the model itself")
            lengths = fit_rows(self.prompt_lengths.to(hidden.device), batch, "prompt lengths")[:, None]
            positions = self._positions.to(hidden.device)
            selected = selected & ((positions < lengths) if term.positions == "prompt" else (positions >= lengths - 1))
        if not bool(selected.any()):
            return hidden
        return torch.where(selected.unsqueeze(-1), term.operator(hidden, term.direction, coef), hidden)


def fit_rows(values: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    """Match per-row values to the batch; a batch that repeats each row (n samples per prompt) repeats them."""
    if values.shape[0] == batch:
        return values
    if values.shape[0] == 1:
        return values.expand(batch)
    if batch % values.shape[0] == 0:
        return values.repeat_interleave(batch // values.shape[0])
    raise SteeringError(f"{values.shape[0]} per-row {what} for a batch of {batch} rows; give one per row")


class VectorSteering:
    """A set of vectors to apply together; `attach` validates them against the model and hooks it."""

    def __init__(self, specs: SteeringSpec | Sequence[SteeringSpec]):
        self.specs = [specs] if isinstance(specs, SteeringSpec) else list(specs)
        for spec in self.specs:
            if spec.positions not in POSITIONS:
                raise SteeringError(f"positions must be one of {', '.join(POSITIONS)}; got '{spec.positions}'")
            if spec.operator not in OPERATORS:
                raise SteeringError(f"operator must be one of {', '.join(OPERATORS)}; got '{spec.operator}'")

    kind = "vector"

    def attach(self, lm: LoadedModel, *, row_scale: torch.Tensor | None = None,
               prompt_lengths: torch.Tensor | None = None, task: str | None = None) -> SteeringHandle:
        dtype, device = next(lm.model.parameters()).dtype, lm.device
        terms: dict[int, list[_Term]] = {}
        for spec in self.specs:
            weights = spec.layer_weights()
            spec.vector.check_compatible(lm, list(weights), task=task)
            rows = spec.row_multipliers()
            if row_scale is not None:
                rows = combine_rows(rows, torch.as_tensor(row_scale, dtype=torch.float32))
            for layer, weight in weights.items():
                direction = spec.vector.directions[layer].to(device=device, dtype=dtype)
                terms.setdefault(layer, []).append(_Term(direction, (rows * weight).to(device), spec.positions,
                                                         get_operator(spec.operator)))
        return SteeringHandle(lm, terms, prompt_lengths)


def combine_rows(rows: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    if rows.shape[0] == 1 or rows.shape[0] == scale.shape[0]:
        return rows * scale
    if scale.shape[0] % rows.shape[0] == 0:  # e.g. [steered rows, original rows] from one multiplier list
        return rows.repeat(scale.shape[0] // rows.shape[0]) * scale
    raise SteeringError(f"{rows.shape[0]} per-row multipliers for a batch of {scale.shape[0]} rows; give one per row")


def steer(lm: LoadedModel, vector: SteeringVector | SteeringSpec | Sequence[SteeringSpec], *,
          multiplier: float | Sequence[float] | None = None,
          layers: Sequence[int] | Mapping[int, float] | None = None, positions: str = "all",
          task: str | None = None, prompt_lengths: torch.Tensor | None = None) -> SteeringHandle:
    """Start steering `lm` now; returns a handle that is also a context manager and always cleans up.

    >>> with steer(lm, vector, multiplier=4.0, layers=[15]):
    ...     model_output = lm.model.generate(...)
    """
    if isinstance(vector, SteeringVector):
        steering = VectorSteering(SteeringSpec(vector, multiplier, layers, positions))
    else:
        if multiplier is not None or layers is not None or positions != "all":
            raise SteeringError("give multiplier, layers and positions inside each SteeringSpec, not beside them")
        steering = VectorSteering(vector)
    return steering.attach(lm, prompt_lengths=prompt_lengths, task=task)
