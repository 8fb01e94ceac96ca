"""The vectors and conditions a server offers: read from a folder at start-up, checked against the served model once.

A request names vectors (and CAST conditions, files of kind "condition") by file stem; resolving it yields
the exact layers and multiplier each row will get, or an ApiError that says which item is wrong and why. The
folder is read by steerlab.steers.read_steer_folder, the reader the vLLM plugin uses too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..ablation import ablation_direction
from ..conditional import Condition
from ..models import LoadedModel
from ..steering import LengthBudget, SteeringError, SteeringSpec, default_steering
from ..steers import STEER_SUFFIXES, read_steer_folder
from ..vector import SteeringVector, content_hash, describe_model, same_model
from .errors import ApiError
from .schemas import SteeringItem

log = logging.getLogger(__name__)
SERVED_KINDS = ("vector", "condition")


@dataclass(frozen=True)
class ResolvedSteering:
    """One request item made concrete: the vector, {layer: weight}, multiplier and positions; the condition
    gating it (CAST), or `ablate_direction` with the one layer whose direction leaves every layer."""

    name: str
    vector: SteeringVector
    layers: tuple[tuple[int, float], ...]
    multiplier: float
    positions: str
    operator: str = "add"
    strength: float | None = None  # the norm-relative strength asked for; its multipliers are in the layer weights
    condition_name: str | None = None
    condition: Condition | None = None
    ablate_direction: bool = False
    budget: LengthBudget | None = None

    def describe(self) -> dict[str, Any]:
        layers = [layer for layer, _ in self.layers]
        if self.ablate_direction:
            return {"vector": self.name, "ablate_direction": True, "layers": layers}
        out = {
            "vector": self.name,
            "multiplier": self.multiplier,
            "layers": layers,
            "positions": self.positions,
            "operator": self.operator,
        }
        if self.strength is not None:
            out.update(strength=self.strength, multipliers={str(k): round(w, 4) for k, w in self.layers})
        if self.budget is not None:
            out.update(reasoning_budget=self.budget.tokens, budget_ramp=self.budget.ramp)
        if self.condition is not None:
            c = self.condition
            out["condition"] = {
                "name": self.condition_name,
                "layer": c.layer,
                "comparison": c.comparison,
                "threshold": c.threshold,
            }
        return out


@dataclass
class RegisteredVector:
    name: str
    path: Path
    vector: SteeringVector  # a condition's direction as a one-layer vector (kind "condition") for checks and listing
    problem: str | None  # why it cannot steer the served model; None when it can
    condition: Condition | None = None  # a condition file (kind "condition")

    @property
    def is_condition(self) -> bool:
        return self.condition is not None

    def describe(self) -> dict[str, Any]:
        info = self.vector.describe()
        out = {
            "id": self.name,
            "object": "steering_condition" if self.is_condition else "steering_vector",
            "file": self.path.name,
            "sha256": content_hash(self.vector),
            "usable": self.problem is None,
            "problem": self.problem,
            **info,
        }
        if self.condition is not None:
            c = self.condition
            out["condition"] = {
                "layer": c.layer,
                "comparison": c.comparison,
                "threshold": c.threshold,
                "f1": c.fit.get("f1"),
            }
        else:  # what an item naming only this vector steers at (steering.default_steering), for the playground
            default = default_steering(self.vector)
            out["default"] = {
                "layers": list(default.layers),
                "multiplier": default.multiplier,
                "strength": default.strength,
                "source": default.source,
            }
        return out


class VectorRegistry:
    """Named vectors for one served model; read-only after start-up, so request threads share it freely."""

    def __init__(self, lm: LoadedModel, steers: dict[str, tuple[Path, SteeringVector | Condition]]):
        self.lm = lm
        self.entries = {name: _entry(lm, name, path, steer) for name, (path, steer) in sorted(steers.items())}

    @classmethod
    def from_dir(cls, lm: LoadedModel, folder: str | Path | None) -> VectorRegistry:
        """Load every steerlab vector and condition file in `folder` (not recursive); the file stem is its name.

        A file that cannot be read, or holds another kind of steer, is skipped with a warning that names it and
        says why: one bad file must not keep the server (and every good vector) from starting.
        """
        if folder is None:
            return cls(lm, {})
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"--vectors {folder}: no such folder; give a folder of .safetensors vectors")
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix not in STEER_SUFFIXES:
                log.warning(
                    "skipping %s: the server reads steerlab .safetensors vectors and conditions only", path.name
                )
        steers: dict[str, tuple[Path, SteeringVector | Condition]] = {}
        for found in read_steer_folder(folder, kinds=SERVED_KINDS):
            if found.problem is not None:
                log.warning("skipping %s: %s", found.path.name, found.problem)
            elif found.steer is None:
                log.warning(
                    "skipping %s: a steer of kind '%s'; the server applies vectors and conditions",
                    found.path.name,
                    found.kind,
                )
            elif isinstance(found.steer, (SteeringVector, Condition)):
                steers[found.name] = (found.path, found.steer)
        registry = cls(lm, steers)
        for entry in registry.entries.values():
            if entry.problem:
                log.warning(
                    "%s %s is listed but cannot be used: %s",
                    "condition" if entry.is_condition else "vector",
                    entry.name,
                    entry.problem,
                )
        return registry

    def describe(self) -> list[dict[str, Any]]:
        return [entry.describe() for entry in self.entries.values()]

    def resolve(self, items: Sequence[SteeringItem]) -> list[ResolvedSteering]:
        """Check each requested item against the registry and the model; layers and multiplier made explicit."""
        return [self._resolve_one(i, item) for i, item in enumerate(items)]

    def _resolve_one(self, index: int, item: SteeringItem) -> ResolvedSteering:
        where = f"steering[{index}]"
        entry = self._usable(item.vector, f"{where}.vector", condition=False)
        n_layers = self.lm.num_layers
        for layer in item.layers or []:
            if not 0 <= layer < n_layers:
                raise ApiError(
                    400,
                    f"{where}.layers: layer {layer} is out of range; {self.lm.name} has layers 0..{n_layers - 1}",
                    param=f"{where}.layers",
                    code="layer_out_of_range",
                )
            if layer not in entry.vector.directions:
                raise ApiError(
                    400,
                    f"{where}.layers: vector '{item.vector}' has no direction for layer {layer}; "
                    f"it has layers {entry.vector.layers}",
                    param=f"{where}.layers",
                    code="layer_not_in_vector",
                )
        if item.ablate_direction:
            try:
                _, layer = ablation_direction(entry.vector, item.layers[0] if item.layers else None)
            except ValueError as exc:
                raise ApiError(400, f"{where}.layers: {exc}", param=f"{where}.layers", code="ablation_layer") from None
            return ResolvedSteering(
                item.vector, entry.vector, ((layer, 1.0),), 1.0, "all", "ablate", ablate_direction=True
            )
        condition = None
        if item.condition is not None:
            condition = self._usable(item.condition, f"{where}.condition", condition=True).condition
        # The library's one rule (steering.default_steering) decides what an omitted multiplier/strength/layers means.
        try:
            budget = None
            if item.reasoning_budget is not None:
                ramp = [item.budget_ramp] if item.budget_ramp is not None else []
                budget = LengthBudget(item.reasoning_budget, *ramp)
            spec = SteeringSpec(
                entry.vector,
                item.multiplier,
                item.layers,
                item.positions,
                item.operator,
                strength=item.strength,
                budget=budget,
            )
        except SteeringError as exc:
            raise ApiError(400, f"{where}: {exc}", param=where, code="invalid_steering") from None
        if (strength := spec.strength) is not None:  # asked for, or the vector's default: each layer's multiplier
            assert isinstance(strength, (int, float))  # one item steers its rows alike
            try:
                per_layer = spec.layer_multipliers()
            except SteeringError as exc:
                raise ApiError(
                    400, f"{where}.strength: {exc}", param=f"{where}.strength", code="strength_unavailable"
                ) from None
            return ResolvedSteering(
                item.vector,
                entry.vector,
                tuple(per_layer.items()),
                1.0,
                item.positions,
                spec.operator_name(),
                float(strength),
                condition_name=item.condition,
                condition=condition,
                budget=budget,
            )
        multiplier = float(spec.row_multipliers()[0])
        return ResolvedSteering(
            item.vector,
            entry.vector,
            tuple(spec.layer_weights().items()),
            multiplier,
            item.positions,
            spec.operator_name(),
            condition_name=item.condition,
            condition=condition,
            budget=budget,
        )

    def _usable(self, name: str, param: str, *, condition: bool) -> RegisteredVector:
        """The entry `name` for a vector field (condition=False) or a condition field, or the 400 that says why not."""
        what = "condition" if condition else "vector"
        entry = self.entries.get(name)
        if entry is None:
            known = ", ".join(n for n, e in self.entries.items() if e.is_condition == condition)
            known = known or f"none (start the server with --vectors DIR holding {what} files)"
            raise ApiError(
                400,
                f"{param}: unknown {what} '{name}'; registered {what}s: {known}",
                param=param,
                code=f"{what}_not_found",
            )
        if entry.is_condition != condition:
            hint = (
                "it is a condition (kind 'condition'): give it as condition, beside the vector to apply"
                if entry.is_condition
                else "it is a vector; a condition file comes from `steerlab vector condition`"
            )
            raise ApiError(400, f"{param}: '{name}' is not a {what}: {hint}", param=param, code=f"not_a_{what}")
        if entry.problem:
            use = "be used with" if condition else "steer"
            raise ApiError(
                400,
                f"{param}: {what} '{name}' cannot {use} this model: {entry.problem}",
                param=param,
                code=f"{what}_incompatible",
            )
        return entry


def _entry(lm: LoadedModel, name: str, path: Path, steer: SteeringVector | Condition) -> RegisteredVector:
    """A registry entry; a problem with it (another model, non-finite values) is kept, not raised."""
    if isinstance(steer, Condition):
        vector = steer.as_vector()
        return RegisteredVector(name, path, vector, incompatibility(lm, vector), steer)
    return RegisteredVector(name, path, steer, incompatibility(lm, steer))


def incompatibility(lm: LoadedModel, vector: SteeringVector) -> str | None:
    """Why `vector` must not steer `lm` (another model, even one of the same shape), or None."""
    m = vector.meta
    for layer, direction in sorted(vector.directions.items()):
        if not bool(torch.isfinite(direction).all()):
            return f"its direction for layer {layer} has non-finite values (NaN or Inf)"
    if m.hidden_size != lm.hidden_size or max(vector.layers) >= lm.num_layers:
        return (
            f"built for {m.model_name} (hidden size {m.hidden_size}, {m.num_layers} layers); this server runs "
            f"{lm.name} (hidden size {lm.hidden_size}, {lm.num_layers} layers)"
        )
    if not same_model(m, lm):
        weights = ": same shape, different weights" if m.model_fingerprint else ""
        return f"built for {describe_model(m)}; this server runs {describe_model(lm)}{weights}"
    return None
