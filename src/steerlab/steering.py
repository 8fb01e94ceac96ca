"""Apply steers: forward hooks that apply an operator (add, ...) with a direction to chosen layers' outputs.

Token positions are absolute (counted over real tokens of the attention mask), so "prompt" and
"generated" select the same tokens with or without a KV cache and with left padding. Each batch row
may carry its own multiplier; a row with multiplier 0, and a position not selected, keep their hidden
state bit for bit (nothing is multiplied by zero, so a NaN in one steer cannot reach another row).
Hooks live in a handle that always removes them, and act only in the thread (context) that attached
them: two threads sharing one model never see each other's steering.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from .errors import SteerlabError
from .models import LoadedModel
from .operators import OPERATORS, Operator, add, get_operator
from .positions import (
    ROLES,
    check_positions,
    marker_end,
    marker_ids,
    parse_until,
    parse_window,
    prompt_roles,
    window_flags,
)
from .strength import StrengthError, multiplier_for
from .vector import SteeringVector

FLOAT32_MAX = float(torch.finfo(torch.float32).max)
# Handles attached in the current thread or task; a hook registered by any other does nothing here.
_ACTIVE: ContextVar[frozenset[int]] = ContextVar("steerlab_active_steering", default=frozenset())


class SteeringError(SteerlabError, ValueError):
    """Steering was asked for in a way that cannot work; the message says how to fix it."""


@dataclass
class SteeringSpec:
    """One vector to apply: its multiplier (a float, or one per batch row), layers, and token positions.

    `layers` is a list of layers (multiplier 1 each) or {layer: multiplier}; None takes the vector's default
    layers (`default_layers`). Give either `multiplier` (raw: the vector times m) or `strength` (norm-relative:
    at each layer the multiplier that adds s x that layer's mean residual norm, steerlab.strength.multiplier_for,
    exactly); both may be one number or one per batch row. With neither, `default_steering` decides (the one
    rule every path follows). Positions: "all"; "prompt" (prompt tokens only); "generated" (every position that predicts a
    new token: the last prompt token and all generated tokens); a chat role, "system", "user" or "assistant"
    (located through the model's chat template, see steerlab.positions); "between:OPEN:CLOSE", the tokens
    between two markers (e.g. "between:<think>:</think>"); "until:MARKER", the generated positions before the
    token that completes MARKER (the reasoning, not the answer after "The answer is"). `budget` (a LengthBudget,
    add only) steers nothing for the first `budget.tokens` generated tokens and then ramps up. `operator` names a function of steerlab.operators
    (add, ablate, clamp, rotate); None takes the operator the vector's file states (VectorMeta.operator, "add"
    for older files). The coefficient an operator gets is multiplier x layer weight (a strength for add, a
    target projection for clamp, degrees for rotate); 0 leaves a row off for every operator.
    """

    vector: SteeringVector
    multiplier: float | Sequence[float] | None = None
    layers: Sequence[int] | Mapping[int, float] | None = None
    positions: str = "all"
    operator: str | None = None
    strength: float | Sequence[float] | None = None
    budget: LengthBudget | None = None

    def __post_init__(self) -> None:
        if self.multiplier is not None and self.strength is not None:
            raise SteeringError("give multiplier (raw) or strength (norm-relative), not both")
        if self.budget is not None and self.operator_name() != "add":
            raise SteeringError(
                f"a length budget scales an added vector; the {self.operator_name()} operator has no strength to "
                "ramp (use operator add, or drop the budget)"
            )
        if self.budget is not None and self.positions == "prompt":
            raise SteeringError("a length budget counts generated tokens; positions 'prompt' never reach it")
        if self.multiplier is None and self.strength is None:
            default = default_steering(self.vector, self.layers, self.operator)
            self.multiplier, self.strength = default.multiplier, default.strength

    def operator_name(self) -> str:
        return self.operator if self.operator is not None else (self.vector.meta.operator or "add")

    def layer_weights(self) -> dict[int, float]:
        return layer_weights(self.vector, self.layers)

    def row_multipliers(self, layer: int | None = None) -> torch.Tensor:
        """Per-row raw multipliers; with a strength, those of `layer` (each layer converts with its own norm)."""
        if self.strength is not None:
            if layer is None:
                raise SteeringError("a norm-relative strength has one multiplier per layer; name the layer")
            strengths = _numbers(self.strength, "strength")
            try:
                mult: float | Sequence[float] = [multiplier_for(self.vector, layer, float(s)) for s in strengths]
            except StrengthError as exc:
                raise SteeringError(str(exc)) from None
        else:
            mult = self.multiplier if self.multiplier is not None else 1.0
        return _numbers(mult, "multiplier").float()

    def layer_multipliers(self) -> dict[int, float]:
        """{layer: the raw multiplier its first row gets there (layer weight included)}: what to print beside a strength."""
        return {layer: float(self.row_multipliers(layer)[0]) * weight for layer, weight in self.layer_weights().items()}

    def layer_coefficients(self) -> dict[int, float]:
        """{layer: the first row's coefficient there}, the float32 product the hooks compute (multiplier x layer
        weight, each layer converting a strength with its own norm): what an engine without these hooks adds."""
        return {layer: float(self.row_multipliers(layer)[0] * weight) for layer, weight in self.layer_weights().items()}


@dataclass(frozen=True)
class LengthBudget:
    """A reasoning budget: no steering for the first `tokens` generated tokens, then a coefficient that rises
    linearly to the spec's full value over `ramp` more, so only answers that run past the budget are steered
    (toward shorter with a "be brief" vector), and only as much as their length asks for."""

    tokens: int
    ramp: int = 32

    def __post_init__(self) -> None:
        for name, value, low in (("tokens", self.tokens, 0), ("ramp", self.ramp, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SteeringError(f"a length budget's {name} must be a whole number >= {low}; got {value!r}")

    def scale(self, generated: torch.Tensor) -> torch.Tensor:
        """The share of the coefficient at each position, from the number of tokens generated before it (the last
        prompt token has 0 before it; it predicts the first generated token)."""
        return ((generated - self.tokens + 1).float() / self.ramp).clamp(0.0, 1.0)


# ---- what a spec steers at when nothing is given: one rule, for every path ------------------------------------

DEFAULT_STRENGTH = 0.2  # when a vector recommends nothing: the demo's tuned strength on SmolLM2 (clear, readable)


@dataclass(frozen=True)
class DefaultSteering:
    """What `default_steering` decided: {layer: weight}, a multiplier or a strength (one of them), and why."""

    layers: dict[int, float]
    multiplier: float | None
    strength: float | None
    source: str

    def words(self) -> str:
        value = f"strength {self.strength:+g}" if self.strength is not None else f"multiplier {self.multiplier:+g}"
        return (
            f"{value} at layer{'s' if len(self.layers) > 1 else ''} {', '.join(map(str, self.layers))} ({self.source})"
        )


def default_layers(vector: SteeringVector) -> dict[int, float]:
    """The layers a vector steers when none are given: those its "up" strength was calibrated at, else its
    recommended layer, else every layer it has (weight 1 each)."""
    rec = vector.meta.recommended
    calibrated = rec.calibration.layers.get("up", []) if rec.calibration and rec.calibration.up is not None else []
    if calibrated and all(layer in vector.directions for layer in calibrated):
        return dict.fromkeys(calibrated, 1.0)
    if rec.layer is not None and rec.layer in vector.directions:
        return {rec.layer: 1.0}
    return dict.fromkeys(vector.layers, 1.0)


def layer_weights(vector: SteeringVector, layers: Sequence[int] | Mapping[int, float] | None) -> dict[int, float]:
    if layers is None:
        return default_layers(vector)
    if isinstance(layers, Mapping):
        return {int(k): float(v) for k, v in layers.items()}
    return dict.fromkeys((int(layer) for layer in layers), 1.0)


def default_steering(
    vector: SteeringVector, layers: Sequence[int] | Mapping[int, float] | None = None, operator: str | None = None
) -> DefaultSteering:
    """steerlab's one rule for what a vector steers at when no multiplier and no strength is given.

    In order: the calibrated "up" strength (`steerlab vector calibrate`, the latest word on what the model
    tolerates); else the recommended multiplier (a sweep's "up" pick, the demo's setting); else
    DEFAULT_STRENGTH where every steered layer has its residual norm; else multiplier 1. An operator other than
    "add" takes its coefficient in its own unit (degrees, a projection; ablate ignores it), so it gets 1.
    Layers: as given, else `default_layers`. SteeringSpec, evaluate, the server, the playground and the vLLM
    engine all come here.
    """
    weights = layer_weights(vector, layers)
    operator = operator if operator is not None else (vector.meta.operator or "add")
    rec = vector.meta.recommended
    if operator != "add":
        return DefaultSteering(weights, 1.0, None, f"the {operator} operator's coefficient 1")
    if rec.calibration is not None and rec.calibration.up is not None:
        return DefaultSteering(weights, None, rec.calibration.up, "the calibrated 'up' strength")
    if rec.multiplier is not None:
        source = "the sweep's 'up' pick" if rec.up is not None else "the recommended multiplier"
        return DefaultSteering(weights, rec.multiplier, None, source)
    if all(str(layer) in vector.meta.residual_norms for layer in weights):
        return DefaultSteering(weights, None, DEFAULT_STRENGTH, "steerlab's default strength")
    return DefaultSteering(weights, 1.0, None, "multiplier 1: no residual norms stored for a strength")


def check_float32(value: float, what: str) -> float:
    """`value` if the model can use it as a float32 coefficient: the one rule for the HF server's fields and the
    vLLM plugin's (a multiplier, strength or layer weight, and their products)."""
    if not math.isfinite(value):
        raise SteeringError(f"{what} must be a finite number, got {value}")
    if abs(value) > FLOAT32_MAX:
        raise SteeringError(f"{what} must be within float32's finite range (|m| <= 3.4e38), got {value}")
    return value


def _numbers(value: float | Sequence[float], what: str) -> torch.Tensor:
    values = torch.as_tensor([value] if isinstance(value, (int, float)) else list(value), dtype=torch.float64)
    if values.ndim != 1 or values.numel() == 0:
        raise SteeringError(f"{what} must be a number or a non-empty list of numbers (one per batch row)")
    if not (bool(torch.isfinite(values).all()) and bool((values.abs() <= FLOAT32_MAX).all())):
        raise SteeringError(
            f"{what} must be a finite number within float32's range (|m| <= {FLOAT32_MAX:.4g}), got {value}"
        )
    return values


class Steer(Protocol):
    """Anything generation applies inside the model with per-row scales: vector steering (kind "vector"),
    LM-Steer ("lm_steer"). A prompt steer (kind "prompt") rewrites the prompt text instead; see generation."""

    kind: str

    def attach(
        self,
        lm: LoadedModel,
        *,
        row_scale: torch.Tensor | None = None,
        prompt_lengths: torch.Tensor | None = None,
        task: str | None = None,
    ) -> Handle: ...


class Handle(Protocol):
    def remove(self) -> None: ...
    def __enter__(self) -> Handle: ...
    def __exit__(self, *exc) -> None: ...


class _Term:
    """One (spec, layer) contribution, precomputed on the model's device and dtype."""

    def __init__(
        self,
        direction: torch.Tensor,
        rows: torch.Tensor,
        positions: str,
        operator: Operator,
        budget: LengthBudget | None = None,
    ):
        self.direction = direction  # [hidden]
        self.rows = rows  # [R] per-row coefficient (layer weight * multiplier * row scale)
        self.positions = positions
        self.operator = operator
        self.budget = budget
        # The common case (one non-zero multiplier, all positions, addition) is one precomputed addition per forward.
        uniform = bool((rows == rows[0]).all()) and bool(rows[0] != 0)
        plain = positions == "all" and operator is add and budget is None
        self.constant = rows[0] * direction if uniform and plain else None


def enter_scope(owner: object) -> None:
    """Make `owner`'s hooks act in this thread (or asyncio task) only; other threads' forwards pass through."""
    _ACTIVE.set(_ACTIVE.get() | {id(owner)})


def leave_scope(owner: object) -> None:
    _ACTIVE.set(_ACTIVE.get() - {id(owner)})


def in_scope(owner: object) -> bool:
    """Whether the running forward belongs to the thread (or task) that attached `owner`."""
    return id(owner) in _ACTIVE.get()


@contextmanager
def unsteered():
    """Inside, no hook attached in this thread or task acts: a forward sees the model as it is (CAST's decision)."""
    token = _ACTIVE.set(frozenset())
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def absolute_positions(args: Any, kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """From a model forward's arguments (a forward pre-hook's), each token's position in its row, [rows, tokens]:
    from the attention mask (so a left-padded row counts from its first real token; padding is -1), else from
    the cache's length on; and the 2-D attention mask where the forward got one."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    embeds = kwargs.get("inputs_embeds")
    batch, cur = ids.shape if ids is not None else embeds.shape[:2]
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.ndim == 2:
        return mask.long().cumsum(-1)[:, -cur:] - 1, mask
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
    device = (ids if ids is not None else embeds).device
    return (torch.arange(cur, device=device) + past).expand(batch, cur), None


class HookHandle:
    """Hooks that act only in the thread (or task) that attached them; a context manager that always removes them.

    Subclasses fill `_handles` after `enter_scope(self)`; `remove()` is idempotent.
    """

    _handles: list

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        leave_scope(self)


class SteeringHandle(HookHandle):
    """Active steering on a model. Use as a context manager or call `remove()`; both are idempotent."""

    def __init__(self, lm: LoadedModel, terms: dict[int, list[_Term]], prompt_lengths: torch.Tensor | None):
        self.lm = lm
        self.prompt_lengths = prompt_lengths
        self._terms = terms
        self._positions: torch.Tensor | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        # Token ids by absolute position, per row, for role and window positions (kept across cached steps).
        self._history: list[list[int]] | None = None
        self._roles: dict[int, list[str | None]] = {}  # per row, found when a role term first steers the row
        self._templates: dict = {}
        self._markers: dict[str, tuple[list[int], list[int]]] = {}
        # Per (segment, row): the last position searched for the segment's closing marker, and where it ended.
        self._segments: dict[tuple[str, int], tuple[int, int | None]] = {}
        enter_scope(self)
        every = [t for group in terms.values() for t in group]
        needs_positions = any(t.positions != "all" or t.budget is not None for t in every)
        self._needs_tokens = any(t.positions in ROLES or t.positions.startswith(("between:", "until:")) for t in every)
        try:
            if needs_positions:
                self._handles.append(lm.model.register_forward_pre_hook(self._track_positions, with_kwargs=True))
            for layer, group in terms.items():
                self._handles.append(lm.layers[layer].register_forward_hook(self._layer_hook(group)))
        except Exception:
            self.remove()
            raise

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def scale_rows(self, factor: torch.Tensor) -> None:
        """Multiply every term's per-row coefficients by `factor` [rows] (conditional steering turns rows off)."""
        for group in self._terms.values():
            for term in group:
                term.rows = broadcast_rows(term.rows, factor.shape[0], "multipliers") * factor.to(term.rows)
                term.constant = None

    def reset(self, prompt_lengths: torch.Tensor | None = None) -> None:
        """Start a new generation: forget (or set) the prompt lengths "prompt"/"generated" are measured from."""
        self.prompt_lengths = prompt_lengths
        self._history = None
        self._roles = {}
        self._segments = {}

    def _track_positions(self, module, args, kwargs) -> None:
        if not in_scope(self):
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        positions, mask = absolute_positions(args, kwargs)
        batch, cur = positions.shape
        if self.prompt_lengths is None:
            # Outside steerlab's generate, the first forward seen is taken as the prompt.
            real = mask[:, -cur:].long().sum(-1) if mask is not None else torch.full((batch,), cur)
            self.prompt_lengths = real.cpu()
        self._positions = positions
        if self._needs_tokens:
            if ids is None:
                raise SteeringError("role and window positions read token ids; call the model with input_ids")
            self._record(ids, mask, positions)

    def _record(self, ids: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor) -> None:
        real = (
            mask[:, -ids.shape[1] :].bool()
            if mask is not None and mask.ndim == 2
            else torch.ones_like(ids, dtype=torch.bool)
        )
        if self._history is None or len(self._history) != ids.shape[0]:
            self._history = [[] for _ in range(ids.shape[0])]
        for row, (row_ids, row_pos, row_real) in enumerate(
            zip(ids.tolist(), positions.tolist(), real.tolist(), strict=False)
        ):
            history = self._history[row]
            for token, pos, keep in zip(row_ids, row_pos, row_real, strict=False):
                if keep:
                    del history[pos:]  # a forward without a cache sends the whole sequence again
                    history.append(token)

    def _token_mask(self, kind: str, batch: int, device, steered: list[bool]) -> torch.Tensor:
        """[rows, tokens] selection of the current forward's tokens for a role or a window, on `steered` rows.

        Roles are located only in the rows a role term steers: other rows' prompts (a plain completion batched
        beside a chat request) need not follow the chat template."""
        positions, history = self._positions, self._history
        assert positions is not None and history is not None and self.prompt_lengths is not None, "tracked first"
        lengths = broadcast_rows(self.prompt_lengths, batch, "prompt lengths").tolist()
        if kind in ROLES:
            for r in range(batch):
                if steered[r] and r not in self._roles:
                    try:
                        self._roles[r] = prompt_roles(self.lm.tokenizer, history[r][: lengths[r]], self._templates)
                    except ValueError as exc:
                        raise SteeringError(str(exc)) from None
        if kind.startswith("between:") and kind not in self._markers:
            window = parse_window(kind)
            assert window is not None  # positions were checked when the spec was made
            open_text, close_text = window
            self._markers[kind] = (marker_ids(self.lm.tokenizer, open_text), marker_ids(self.lm.tokenizer, close_text))
        out = torch.zeros(positions.shape, dtype=torch.bool)
        for r in range(batch):
            if not steered[r]:
                continue
            if kind in ROLES:
                labels = self._roles[r]
                for c, pos in enumerate(positions[r].tolist()):
                    if kind == "assistant" and pos >= lengths[r] - 1:
                        out[r, c] = True
                    elif 0 <= pos < len(labels):
                        out[r, c] = labels[pos] == kind
            elif (marker := parse_until(kind)) is not None:
                end = self._segment_end(kind, marker, r, lengths[r])
                for c, pos in enumerate(positions[r].tolist()):
                    out[r, c] = pos >= lengths[r] - 1 and (end is None or pos < end)
            else:
                flags = window_flags(history[r], *self._markers[kind])
                for c, pos in enumerate(positions[r].tolist()):
                    out[r, c] = 0 <= pos < len(flags) and flags[pos]
        return out.to(device)

    def _segment_end(self, kind: str, marker: str, row: int, prompt_length: int) -> int | None:
        """Where row's until-segment ends: the position of the generated token completing its marker, if any yet."""
        history = self._history
        assert history is not None
        scanned, end = self._segments.get((kind, row), (None, None))
        if end is None:
            end = marker_end(self.lm.tokenizer, history[row], prompt_length, marker, scanned)
            self._segments[(kind, row)] = (len(history[row]) - 1, end)
        return end

    def _layer_hook(self, group: list[_Term]):
        def hook(module, args, output):
            if not in_scope(self):
                return None
            hidden = output[0] if isinstance(output, tuple) else output
            steered = hidden
            for term in group:
                steered = self._apply(term, steered)
            if isinstance(output, tuple):
                return (steered, *output[1:])
            return steered

        return hook

    def _apply(self, term: _Term, hidden: torch.Tensor) -> torch.Tensor:
        if term.constant is not None:
            return hidden + term.constant
        batch = hidden.shape[0]
        rows = broadcast_rows(term.rows, batch, "multipliers").to(hidden.device)
        coef = rows.to(hidden.dtype)[:, None, None]
        selected = (rows != 0)[:, None].expand(batch, hidden.shape[1])  # [rows, tokens]
        if term.positions != "all" or term.budget is not None:
            if self._positions is None or self.prompt_lengths is None:
                raise SteeringError(
                    "positions other than 'all' and length budgets need the model's top-level forward; call the "
                    "model itself"
                )
            lengths = broadcast_rows(self.prompt_lengths.to(hidden.device), batch, "prompt lengths")[:, None]
            positions = self._positions.to(hidden.device)
            if term.positions in ("prompt", "generated"):
                selected = selected & (
                    (positions < lengths) if term.positions == "prompt" else (positions >= lengths - 1)
                )
            elif term.positions != "all":
                steered = (rows != 0).tolist()
                selected = selected & self._token_mask(term.positions, batch, hidden.device, steered)
            if term.budget is not None:
                share = term.budget.scale(positions - (lengths - 1))  # [rows, tokens]
                selected = selected & (share > 0)
                coef = coef * share.to(hidden.dtype)[..., None]
        if not bool(selected.any()):
            return hidden
        return torch.where(selected.unsqueeze(-1), term.operator(hidden, term.direction, coef), hidden)


def broadcast_rows(values: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    """Match per-row values to the batch; a batch that repeats each row (n samples per prompt) repeats them."""
    if values.shape[0] == batch:
        return values
    if values.shape[0] == 1:
        return values.expand(batch)
    if batch % values.shape[0] == 0:
        return values.repeat_interleave(batch // values.shape[0])
    raise SteeringError(f"{values.shape[0]} per-row {what} for a batch of {batch} rows; give one per row")


class SpecSteering:
    """A set of vectors to apply together; `attach` validates them against the model and hooks it."""

    def __init__(self, specs: SteeringSpec | Sequence[SteeringSpec]):
        self.specs = [specs] if isinstance(specs, SteeringSpec) else list(specs)
        for spec in self.specs:
            try:
                check_positions(spec.positions)
            except ValueError as exc:
                raise SteeringError(str(exc)) from None
            if spec.operator_name() not in OPERATORS:
                raise SteeringError(f"operator must be one of {', '.join(OPERATORS)}; got '{spec.operator_name()}'")

    kind = "vector"

    def attach(
        self,
        lm: LoadedModel,
        *,
        row_scale: torch.Tensor | None = None,
        prompt_lengths: torch.Tensor | None = None,
        task: str | None = None,
    ) -> SteeringHandle:
        dtype, device = next(lm.model.parameters()).dtype, lm.device
        terms: dict[int, list[_Term]] = {}
        for spec in self.specs:
            weights = spec.layer_weights()
            spec.vector.check_compatible(lm, list(weights), task=task)
            for layer, weight in weights.items():
                rows = spec.row_multipliers(layer)
                if row_scale is not None:
                    rows = scaled_rows(rows, torch.as_tensor(row_scale, dtype=torch.float32))
                direction = spec.vector.directions[layer].to(device=device, dtype=dtype)
                wide = (rows.double() * weight).abs().max().item()
                if not wide <= FLOAT32_MAX:
                    raise SteeringError(
                        f"multiplier x layer weight at layer {layer} overflows float32 "
                        f"({wide:.4g} > {FLOAT32_MAX:.4g}); give a smaller multiplier or weight"
                    )
                operator = get_operator(spec.operator_name())
                terms.setdefault(layer, []).append(
                    _Term(direction, (rows * weight).to(device), spec.positions, operator, spec.budget)
                )
        return SteeringHandle(lm, terms, prompt_lengths)


class CombinedSteering:
    """Several hook steers at once (vectors, conditional steers, directional ablations), attached in order.

    Each part gets the same row scales and prompt lengths; per-row choices stay inside each part (a row a
    part leaves off keeps its hidden states bit for bit there). Conditions decide on the unsteered model.
    """

    kind = "combined"

    def __init__(self, parts: Sequence[Steer]):
        self.parts = list(parts)
        if not self.parts:
            raise SteeringError("combined steering needs at least one steer")
        for part in self.parts:
            if not callable(getattr(part, "attach", None)):
                raise SteeringError(
                    f"a steer of kind '{getattr(part, 'kind', type(part).__name__)}' cannot be "
                    "combined with others (it is not applied by hooks); use it on its own"
                )

    def attach(
        self,
        lm: LoadedModel,
        *,
        row_scale: torch.Tensor | None = None,
        prompt_lengths: torch.Tensor | None = None,
        task: str | None = None,
    ) -> CombinedHandle:
        return CombinedHandle(self.parts, lm, row_scale, prompt_lengths, task)


class CombinedHandle(HookHandle):
    """The handles of a CombinedSteering's parts; removing it (or leaving its `with`) removes them all."""

    def __init__(self, parts: Sequence[Steer], lm: LoadedModel, row_scale, prompt_lengths, task):
        self._handles = []
        try:
            for part in parts:
                self._handles.append(part.attach(lm, row_scale=row_scale, prompt_lengths=prompt_lengths, task=task))
        except Exception:
            self.remove()
            raise

    @property
    def handles(self) -> list:
        """Each part's handle, in the parts' order."""
        return list(self._handles)


def scaled_rows(rows: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    if rows.shape[0] == 1 or rows.shape[0] == scale.shape[0]:
        return rows * scale
    if scale.shape[0] % rows.shape[0] == 0:  # e.g. [steered rows, original rows] from one multiplier list
        return rows.repeat(scale.shape[0] // rows.shape[0]) * scale
    raise SteeringError(f"{rows.shape[0]} per-row multipliers for a batch of {scale.shape[0]} rows; give one per row")


def steer(
    lm: LoadedModel,
    vector: SteeringVector | SteeringSpec | Sequence[SteeringSpec],
    *,
    multiplier: float | Sequence[float] | None = None,
    layers: Sequence[int] | Mapping[int, float] | None = None,
    positions: str = "all",
    operator: str | None = None,
    task: str | None = None,
    prompt_lengths: torch.Tensor | None = None,
    strength: float | Sequence[float] | None = None,
) -> SteeringHandle:
    """Start steering `lm` now; returns a handle that is also a context manager and always cleans up.

    >>> with steer(lm, vector, strength=0.2, layers=[15]):  # or multiplier=4.0 (raw)
    ...     model_output = lm.model.generate(...)
    """
    if isinstance(vector, SteeringVector):
        steering = SpecSteering(SteeringSpec(vector, multiplier, layers, positions, operator, strength=strength))
    else:
        if (
            multiplier is not None
            or strength is not None
            or layers is not None
            or positions != "all"
            or operator is not None
        ):
            raise SteeringError(
                "give multiplier or strength, layers, positions and operator inside each SteeringSpec, not beside them"
            )
        steering = SpecSteering(vector)
    return steering.attach(lm, prompt_lengths=prompt_lengths, task=task)
