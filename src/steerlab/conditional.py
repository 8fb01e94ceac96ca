"""Conditional steering (CAST, Lee et al. 2024): each row's own prompt decides whether a behaviour steer applies.

A condition is a direction, a layer, a threshold and a comparison. On a row's prompt pass, the cosine
similarity between the block output at the row's last prompt token and the direction is compared with
the threshold; rows that pass get the behaviour steer (with their own multipliers), rows that fail keep
every hidden state bit for bit. The decision is read in a separate pass over the prompt that stops at the
condition layer (so the behaviour may act on earlier layers too), made once per generation and kept for
every later step, with or without a KV cache. The decision pass runs with every steer of this thread out of
scope: a condition reads the model as it is, whatever else is steering. Nothing is shared between rows,
threads or handles.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .activations import record_activations
from .batching import positions_from_mask
from .errors import UsageError
from .meta import ConditionRecord, VectorFileError, VectorMeta
from .models import LoadedModel, check_layers
from .steering import SpecSteering, SteeringHandle, SteeringSpec, enter_scope, in_scope, leave_scope, unsteered
from .vector import SteeringVector, read_steer_file, write_steer_file

COMPARISONS = (">=", "<=")
CONDITION_METHOD = "condition"  # the method field of condition files (fit_condition)
TokenIds = list[int]


class _Stop(Exception):
    """Ends the decision pass after the condition layer."""


@dataclass
class Condition:
    """Steer a row when cos(hidden at `layer`, direction) `comparison` `threshold`; `fit` holds how it was chosen.

    Saved as a steer file of its own kind, "condition" (`save`, `load`; steerlab.meta.ConditionRecord)."""

    kind = "condition"

    direction: torch.Tensor
    layer: int
    threshold: float
    comparison: str = ">="
    fit: dict = field(default_factory=dict)
    meta: VectorMeta | None = field(default=None, compare=False, repr=False)  # the file's, once loaded

    def __post_init__(self) -> None:
        if self.comparison not in COMPARISONS:
            raise UsageError(f"comparison must be one of {', '.join(COMPARISONS)}; got '{self.comparison}'")

    def decide(self, scores: torch.Tensor) -> torch.Tensor:
        return scores >= self.threshold if self.comparison == ">=" else scores <= self.threshold

    def record(self) -> ConditionRecord:
        return ConditionRecord(self.layer, float(self.threshold), self.comparison, dict(self.fit))

    def file_meta(self, lm: LoadedModel | None = None) -> VectorMeta:
        """The metadata of a condition file (kind "condition"): for `lm`'s model, else the model of the file it came from."""
        if lm is not None:
            return VectorMeta.for_model(lm, CONDITION_METHOD, kind="condition", condition=self.record())
        if self.meta is None:
            raise UsageError("a condition's file names its model: give the model (lm) it was fitted on")
        return replace(self.meta, kind="condition", method=CONDITION_METHOD, condition=self.record())

    def as_vector(self, lm: LoadedModel | None = None) -> SteeringVector:
        """The direction as a one-layer vector with the condition file's metadata (for hashing, listing and model
        checks; it is not a behaviour to steer with)."""
        return SteeringVector({self.layer: self.direction.float().cpu()}, self.file_meta(lm))

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary for `steerlab vector info`: the file's metadata (its condition record included),
        the layer and the direction's norm."""
        return self.as_vector().describe()

    def save(self, path: str | os.PathLike, lm: LoadedModel | None = None, *, overwrite: bool = False) -> Path:
        """A condition file: safetensors with the direction as `layer.N` and a ConditionRecord in its metadata."""
        return write_steer_file(
            path, {f"layer.{self.layer}": self.direction.float().cpu()}, self.file_meta(lm), overwrite=overwrite
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Condition:
        """Read a condition file (also one of the older layout: a vector of method "condition")."""
        path = Path(path)
        meta, tensors = read_steer_file(path, "condition", "a condition")
        record = meta.condition
        if record is None:  # VectorMeta.from_json refuses this already; kept for type checkers
            raise VectorFileError(f"{path}: a condition file without its 'condition' record")
        key = f"layer.{record.layer}"
        if not 0 <= record.layer < meta.num_layers:
            raise VectorFileError(
                f"{path}: metadata field 'condition.layer': {record.layer} is not a layer of a "
                f"{meta.num_layers}-layer model"
            )
        if set(tensors) != {key}:
            raise VectorFileError(f"{path}: a condition file holds one tensor, '{key}'; it has {sorted(tensors)}")
        direction = tensors[key]
        if direction.ndim != 1 or direction.shape[0] != meta.hidden_size or not direction.is_floating_point():
            raise VectorFileError(
                f"{path}: tensor '{key}' has shape {tuple(direction.shape)}; expected floats of "
                f"shape ({meta.hidden_size},)"
            )
        return cls(direction.float(), record.layer, record.threshold, record.comparison, dict(record.fit), meta)


def cosine(hidden: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    hidden, direction = hidden.float(), direction.float().to(hidden.device)
    return (hidden @ direction) / (hidden.norm(dim=-1) * direction.norm()).clamp(min=1e-12)


def last_token_scores(
    lm: LoadedModel, prompts: Sequence[TokenIds], directions: dict[int, torch.Tensor]
) -> dict[int, torch.Tensor]:
    """cos(block output at the last prompt token, direction) per layer, for each prompt: {layer: [n]}."""
    layers = sorted(directions)
    acts = record_activations(lm, [(list(p[:-1]), [[p[-1]]]) for p in prompts], layers)[:, 0]
    return {layer: cosine(acts[:, i], directions[layer]) for i, layer in enumerate(layers)}


def f1(decided: torch.Tensor, truth: torch.Tensor) -> float:
    tp = float((decided & truth).sum())
    fp, fn = float((decided & ~truth).sum()), float((~decided & truth).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def fit_condition(
    lm: LoadedModel,
    directions: SteeringVector | dict[int, torch.Tensor],
    steer: Sequence[TokenIds],
    keep: Sequence[TokenIds],
    layers: Sequence[int] | None = None,
) -> Condition:
    """Grid over layer, threshold (midpoints of the observed scores) and comparison; the best F1 at telling the
    prompts to steer from the prompts to keep. The report (best F1 per layer) is in `Condition.fit`."""
    directions = dict(directions.directions if isinstance(directions, SteeringVector) else directions)
    layers = check_layers(lm, list(directions) if layers is None else layers)
    if not steer or not keep:
        raise UsageError("fitting a condition needs prompts to steer and prompts to keep")
    scores = last_token_scores(lm, list(steer) + list(keep), {layer: directions[layer] for layer in layers})
    truth = torch.tensor([True] * len(steer) + [False] * len(keep))
    best: tuple[float, Condition] | None = None
    per_layer: dict[int, tuple[float, float, str]] = {}
    for layer in layers:
        values = scores[layer].sort().values
        thresholds = torch.cat([values[:1] - 1e-6, (values[1:] + values[:-1]) / 2, values[-1:] + 1e-6])
        for comparison in COMPARISONS:
            for threshold in thresholds.tolist():
                cond = Condition(directions[layer], layer, threshold, comparison)
                score = f1(cond.decide(scores[layer]), truth)
                if score > per_layer.get(layer, (-1.0,))[0]:
                    per_layer[layer] = (score, threshold, comparison)
                if best is None or score > best[0]:
                    best = (score, cond)
    assert best is not None  # layers is not empty
    condition = best[1]
    decided = condition.decide(scores[condition.layer])
    condition.fit = {
        "f1": best[0],
        "accuracy": float((decided == truth).float().mean()),
        "n_steer": len(steer),
        "n_keep": len(keep),
        "per_layer": {str(k): {"f1": v[0], "threshold": v[1], "comparison": v[2]} for k, v in per_layer.items()},
    }
    return condition


class ConditionalSteering:
    """A behaviour steer that each row's prompt switches on or off through a Condition (kind "conditional")."""

    kind = "conditional"

    def __init__(self, behaviour: SpecSteering | SteeringSpec | Sequence[SteeringSpec], condition: Condition):
        self.behaviour = behaviour if isinstance(behaviour, SpecSteering) else SpecSteering(behaviour)
        self.condition = condition

    def attach(
        self,
        lm: LoadedModel,
        *,
        row_scale: torch.Tensor | None = None,
        prompt_lengths: torch.Tensor | None = None,
        task: str | None = None,
    ) -> ConditionalHandle:
        check_layers(lm, [self.condition.layer])
        return ConditionalHandle(lm, self.condition, self.behaviour, row_scale, prompt_lengths, task)


class ConditionalHandle:
    """The decision hook and the behaviour's hooks; `decisions` holds the last prompt's per-row choice."""

    def __init__(self, lm: LoadedModel, condition: Condition, behaviour: SpecSteering, row_scale, prompt_lengths, task):
        self.lm, self.condition = lm, condition
        self.decisions: torch.Tensor | None = None
        self.scores: torch.Tensor | None = None
        self._deciding = False
        self._pre = lm.model.register_forward_pre_hook(self._decide, with_kwargs=True)
        enter_scope(self)
        try:
            self.behaviour: SteeringHandle = behaviour.attach(
                lm, row_scale=row_scale, prompt_lengths=prompt_lengths, task=task
            )
        except Exception:
            self.remove()
            raise

    def _decide(self, module, args, kwargs) -> None:
        if self._deciding or self.decisions is not None or not in_scope(self):
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise UsageError("conditional steering reads the prompt's token ids; call the model with input_ids")
        mask = kwargs.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None or mask.ndim != 2 else mask
        captured = {}

        def read(block, block_args, output):
            captured["hidden"] = output[0] if isinstance(output, tuple) else output
            raise _Stop

        hook = self.lm.layers[self.condition.layer].register_forward_hook(read)
        self._deciding = True
        try:  # no steer (this behaviour or any other attached here) acts on the pass that decides
            with torch.no_grad(), unsteered():
                self.lm.model(
                    input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), use_cache=False
                )
        except _Stop:
            pass
        finally:
            hook.remove()
            self._deciding = False
        last = mask.shape[1] - 1 - mask.flip(-1).long().argmax(-1)  # each row's last real token
        hidden = captured["hidden"][torch.arange(ids.shape[0], device=ids.device), last.to(ids.device)]
        self.scores = cosine(hidden, self.condition.direction).cpu()
        self.decisions = self.condition.decide(self.scores)
        self.behaviour.scale_rows(self.decisions.float())

    def __enter__(self) -> ConditionalHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        self._pre.remove()
        if getattr(self, "behaviour", None) is not None:
            self.behaviour.remove()
        leave_scope(self)
