"""Typed steer metadata, stored as JSON in a steer file's header (after peft's config beside fit statistics).

A `VectorMeta` says, in separate fields, what was asked (`config`: the method's config as a dict, which
`config.build_config(<Method>Config, meta.config)` rebuilds), what the fit found (`fit_stats`), and what is
recommended (`recommended`, a typed `Recommendation`: the default layer and multiplier, a sweep's pick per
direction with its evidence, and the calibration). A CAST condition is its own kind ("condition") with a typed
`ConditionRecord` (layer, threshold, comparison, fit report).

Every record reads itself with `from_json(raw, where)`, which checks each field's type and refuses anything
else with a `VectorFileError` naming the field, and writes itself with `to_json()` (unset fields left out).
Files in the older layout keep loading: `params` (config and statistics mixed) is split by key, a flat sweep
record becomes the "up" pick, a calibration's one list of layers serves both directions, and a vector of
method "condition" becomes a condition.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .errors import SteerlabError
from .textio import is_number, loads
from .version import __version__

if TYPE_CHECKING:
    from .models import LoadedModel

FORMAT_VERSION = 2  # 2: config / fit_stats / typed recommended / kind "condition"; 1: params, free recommended
FLOAT32_MAX = 3.4028234663852886e38
DIRECTIONS = ("up", "down")
# Keys of the old `params` that were fit statistics, not config (everything else there was config).
OLD_FIT_STAT_KEYS = (
    "explained_variance_ratio",
    "pairs_agreeing",
    "residual_norms_text",
    "examples",
    "loss_start",
    "loss_end",
)


class VectorFileError(SteerlabError, ValueError):
    """A vector file is missing, unreadable, or not a steerlab vector."""


# ---- field checks: one line naming the field ----------------------------------------------------------------


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    names: dict[type, str] = {str: "a string", list: "an array", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def _fail(where: str, expected: str, value: Any) -> VectorFileError:
    return VectorFileError(f"{where}': expected {expected}, got {json_type(value)}")


def _int(raw: dict, key: str, where: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(f"{where}.{key}", "an integer", value)
    return value


def _num(raw: dict, key: str, where: str, *, float32: bool = False) -> float | None:
    """A finite number (within float32 where the model would use it), or None when absent or null."""
    value = raw.get(key)
    if value is None:
        return None
    if not is_number(value) or (float32 and abs(value) > FLOAT32_MAX):
        raise _fail(f"{where}.{key}", "a finite number", value)
    return float(value)


def _str(raw: dict, key: str, where: str) -> str:
    value = raw.get(key, "")
    if not isinstance(value, str):
        raise _fail(f"{where}.{key}", "a string", value)
    return value


def _obj(raw: dict, key: str, where: str) -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(f"{where}.{key}", "an object", value)
    return value


def _layers(raw: Any, where: str) -> list[int]:
    if not isinstance(raw, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in raw):
        raise _fail(where, "a list of layer numbers", raw)
    return list(raw)


def _compact(record: Any) -> dict[str, Any]:
    """A record's fields without the unset ones (None, "", empty containers); nested records as their JSON."""
    out = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if value is None or value == "" or value == {} or value == ():
            continue
        out[f.name] = (
            value.to_json() if hasattr(value, "to_json") else list(value) if isinstance(value, tuple) else value
        )
    return out


# ---- records --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pick:
    """A sweep's recommended cell for one direction: where, how strong, and the evidence for it."""

    layer: int
    multiplier: float
    value: float  # the grid value: the multiplier ("raw" sweeps) or the norm-relative strength ("relative")
    mode: str = "raw"
    effect: float | None = None  # score change x the task's direction (evaluation.metric_registry words it)
    interval: tuple[float, float] | None = None  # its paired bootstrap 95% interval
    wrong_way: float | None = None  # share of items moved against the direction
    score: float | None = None
    fluency: float | None = None
    fluency_bound: float | None = None

    @property
    def strength(self) -> float | None:
        return self.value if self.mode == "relative" else None

    def to_json(self) -> dict[str, Any]:
        return _compact(self)

    @classmethod
    def from_json(cls, raw: Any, where: str) -> Pick:
        if not isinstance(raw, dict):
            raise _fail(where, "an object", raw)
        layer, multiplier = _int(raw, "layer", where), _num(raw, "multiplier", where, float32=True)
        if layer is None or multiplier is None:
            raise VectorFileError(f"{where}': a pick needs a layer and a multiplier")
        interval = raw.get("interval")
        if interval is not None and not (
            isinstance(interval, list) and len(interval) == 2 and all(is_number(x) for x in interval)
        ):
            raise _fail(f"{where}.interval", "two finite numbers", interval)
        mode = _str(raw, "mode", where) or "raw"
        value = _num(raw, "value", where)
        return cls(
            layer,
            multiplier,
            multiplier if value is None else value,
            mode,
            _num(raw, "effect", where),
            None if interval is None else (float(interval[0]), float(interval[1])),
            _num(raw, "wrong_way", where),
            _num(raw, "score", where),
            _num(raw, "fluency", where),
            _num(raw, "fluency_bound", where),
        )


@dataclass(frozen=True)
class CalibrationRecord:
    """Per direction the largest tolerated norm-relative strength (None: not even the smallest grid value), the
    layers it was measured at, and the measures (evaluation.calibrate)."""

    up: float | None
    down: float | None
    layers: dict[str, list[int]]  # "up"/"down" -> the layers that direction was measured at
    kl_budget: float
    fluency_bound: float
    kl: dict[str, dict[str, float]] = field(default_factory=dict)  # "up"/"down" -> {strength: mean KL per token}
    fluency: dict[str, dict[str, Any]] = field(default_factory=dict)  # "up"/"down"/"unsteered" -> measures
    prompts: int = 0
    note: str = ""

    def strength(self, direction: str) -> float | None:
        return self.up if direction == "up" else self.down

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, raw: Any, where: str) -> CalibrationRecord:
        if not isinstance(raw, dict):
            raise _fail(where, "an object", raw)
        layers = raw.get("layers", [])
        if isinstance(layers, list):  # older files: one list of layers for both directions
            layers = {d: _layers(layers, f"{where}.layers") for d in DIRECTIONS}
        elif isinstance(layers, dict):
            layers = {d: _layers(layers.get(d, []), f"{where}.layers.{d}") for d in DIRECTIONS}
        else:
            raise _fail(f"{where}.layers", "an object of layer lists", layers)
        up, down = _num(raw, "up", where), _num(raw, "down", where)
        if (up is not None and up <= 0) or (down is not None and down >= 0):
            raise VectorFileError(f"{where}': the 'up' strength must be positive and the 'down' one negative")
        prompts = _int(raw, "prompts", where)
        return cls(
            up,
            down,
            layers,
            _num(raw, "kl_budget", where) or 0.0,
            _num(raw, "fluency_bound", where) or 0.0,
            _obj(raw, "kl", where),
            _obj(raw, "fluency", where),
            prompts or 0,
            _str(raw, "note", where),
        )


@dataclass(frozen=True)
class Recommendation:
    """What a steer recommends: the default layer and raw multiplier (a sweep's "up" pick, the demo's tuned
    setting, LM-Steer's 1), the sweep's pick per direction with its verdict, and the calibration. Which of
    these a spec steers at when nothing is given is one rule: `steering.default_steering`."""

    layer: int | None = None
    multiplier: float | None = None
    up: Pick | None = None
    down: Pick | None = None
    verdict: str = ""  # the sweep's words, e.g. "up: no reliable effect"
    task: str = ""
    split: str = ""
    calibration: CalibrationRecord | None = None

    def pick(self, direction: str) -> Pick | None:
        return self.up if direction == "up" else self.down

    def to_json(self) -> dict[str, Any]:
        return _compact(self)

    @classmethod
    def from_json(cls, raw: Any, where: str, num_layers: int | None = None) -> Recommendation:
        if not isinstance(raw, dict):
            raise _fail(where, "an object", raw)
        raw = dict(raw)
        if "up" not in raw and "effect" in raw and "layer" in raw:  # older sweeps: the "up" cell's fields at top level
            raw["up"] = {
                k: raw[k]
                for k in (
                    "layer",
                    "multiplier",
                    "value",
                    "mode",
                    "effect",
                    "interval",
                    "wrong_way",
                    "score",
                    "fluency",
                    "fluency_bound",
                )
                if k in raw
            }
        layer, multiplier = _int(raw, "layer", where), _num(raw, "multiplier", where, float32=True)
        picks = {d: None if raw.get(d) is None else Pick.from_json(raw[d], f"{where}.{d}") for d in DIRECTIONS}
        for name, at in [("layer", layer)] + [(f"{d}.layer", p.layer) for d, p in picks.items() if p]:
            if at is not None and num_layers is not None and not 0 <= at < num_layers:
                raise VectorFileError(f"{where}.{name}': {at} is not a layer of a {num_layers}-layer model")
        calibration = raw.get("calibration")
        return cls(
            layer,
            multiplier,
            picks["up"],
            picks["down"],
            _str(raw, "verdict", where),
            _str(raw, "task", where),
            _str(raw, "split", where),
            None if calibration is None else CalibrationRecord.from_json(calibration, f"{where}.calibration"),
        )


@dataclass(frozen=True)
class ConditionRecord:
    """A CAST condition (kind "condition"): steer a row when cos(hidden at `layer`, direction) `comparison`
    `threshold`; `fit` is how it was chosen (steerlab.conditional.fit_condition's report)."""

    layer: int
    threshold: float
    comparison: str = ">="
    fit: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "threshold": self.threshold, "comparison": self.comparison, "fit": self.fit}

    @classmethod
    def from_json(cls, raw: Any, where: str) -> ConditionRecord:
        if not isinstance(raw, dict):
            raise _fail(where, "an object", raw)
        layer, threshold = _int(raw, "layer", where), _num(raw, "threshold", where)
        if layer is None or threshold is None:
            raise VectorFileError(f"{where}': a condition needs a layer and a threshold")
        comparison = _str(raw, "comparison", where) or ">="
        if comparison not in (">=", "<="):
            raise VectorFileError(f"{where}.comparison': expected '>=' or '<=', got {comparison!r}")
        return cls(layer, threshold, comparison, _obj(raw, "fit", where))


# ---- the metadata of a steer file -----------------------------------------------------------------------------


@dataclass
class VectorMeta:
    """What a steer was built from and for; stored as JSON in the safetensors header."""

    model_name: str
    hidden_size: int
    num_layers: int
    method: str
    model_fingerprint: str = ""
    model_type: str = ""
    kind: str = "vector"  # "vector", "condition" or "lm_steer" (steerlab.steers reads by kind)
    operator: str = "add"  # the operator applied when none is asked for (steerlab.operators); older files: add
    config: dict[str, Any] = field(default_factory=dict)  # what was asked: the method's config
    fit_stats: dict[str, Any] = field(default_factory=dict)  # what the fit found (explained variance, losses, ...)
    dataset: dict[str, Any] = field(default_factory=dict)
    task: str = ""
    residual_norms: dict[str, float] = field(default_factory=dict)
    recommended: Recommendation = field(default_factory=Recommendation)
    condition: ConditionRecord | None = None  # kind "condition" only
    diagnostics: dict[str, Any] = field(default_factory=dict)  # held-out checks of the pairs (steerlab vector diagnose)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    steerlab_version: str = __version__
    format_version: int = FORMAT_VERSION

    @classmethod
    def for_model(cls, lm: LoadedModel, method: str, **kwargs: Any) -> VectorMeta:
        return cls(
            model_name=lm.name,
            hidden_size=lm.hidden_size,
            num_layers=lm.num_layers,
            method=method,
            model_fingerprint=lm.fingerprint,
            model_type=str(getattr(lm.model.config, "model_type", "")),
            **kwargs,
        )

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["recommended"] = self.recommended.to_json()
        if self.condition is None:
            del out["condition"]
        else:
            out["condition"] = self.condition.to_json()
        return out

    def with_recommended(self, **changes: Any) -> VectorMeta:
        """A copy whose recommendation has `changes` (the record is frozen; the metadata is not shared)."""
        return replace(self, recommended=replace(self.recommended, **changes))

    @classmethod
    def from_json(cls, text: str, source: str) -> VectorMeta:
        """Parse and check the metadata: every known field must have its type and a sensible value."""
        raw = loads(text, f"{source}: steerlab metadata", VectorFileError)
        if not isinstance(raw, dict):
            raise VectorFileError(f"{source}: the steerlab metadata must be a JSON object")
        missing = [k for k in ("model_name", "hidden_size", "num_layers", "method") if k not in raw]
        if missing:
            raise VectorFileError(f"{source}: the metadata lacks {', '.join(missing)}")
        # Fields from a newer steerlab are kept readable rather than rejected.
        known = {k: v for k, v in raw.items() if k in META_TYPES or k == "params"}
        for key, value in known.items():
            _check_field(key, value, source)
        if known["hidden_size"] < 1 or known["num_layers"] < 1:
            raise VectorFileError(f"{source}: metadata hidden_size and num_layers must be at least 1")
        _upgrade(known)
        where = f"{source}: metadata field '"
        known["recommended"] = Recommendation.from_json(
            known.get("recommended", {}), where + "recommended", known["num_layers"]
        )
        if known.get("condition") is not None:
            known["condition"] = ConditionRecord.from_json(known["condition"], where + "condition")
        if known["kind"] == "condition" and known.get("condition") is None:
            raise VectorFileError(f"{source}: a condition file without its 'condition' record")
        return cls(**known)


META_TYPES: dict[str, type] = {
    "model_name": str,
    "hidden_size": int,
    "num_layers": int,
    "method": str,
    "model_fingerprint": str,
    "model_type": str,
    "config": dict,
    "fit_stats": dict,
    "dataset": dict,
    "task": str,
    "residual_norms": dict,
    "recommended": dict,
    "condition": dict,
    "diagnostics": dict,
    "created": str,
    "steerlab_version": str,
    "format_version": int,
    "kind": str,
    "operator": str,
}
_TYPE_NAMES = {str: "a string", int: "an integer", dict: "an object"}


def _check_field(key: str, value: Any, source: str) -> None:
    expected = META_TYPES.get(key, dict)  # "params": the older layout's config and statistics
    where = f"{source}: metadata field '{key}'"
    if key == "condition" and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, expected):
        raise VectorFileError(f"{where}: expected {_TYPE_NAMES[expected]}, got {json_type(value)}")
    if key == "residual_norms" and isinstance(value, dict):
        for layer, norm in value.items():
            if not (layer.isascii() and layer.isdigit()) or not is_number(norm) or norm < 0:
                raise VectorFileError(f"{where}: expected layer numbers mapped to norms >= 0, got {layer!r}: {norm!r}")


def _upgrade(known: dict[str, Any]) -> None:
    """Files of the older layout (format 1) in today's fields, in place."""
    if "kind" not in known:  # files from before kinds were stored: LM-Steers are told by their method
        known["kind"] = "lm_steer" if known.get("method") == "lm_steer" else "vector"
    params = known.pop("params", None)
    if params is not None:
        known.setdefault("config", {k: v for k, v in params.items() if k not in OLD_FIT_STAT_KEYS})
        known.setdefault("fit_stats", {k: v for k, v in params.items() if k in OLD_FIT_STAT_KEYS})
    if known.get("method") == "condition" and known["kind"] == "vector" and "condition" not in known:
        # a condition stored as a vector: threshold and comparison in params, layer in recommended, report in diagnostics
        config, recommended = known.pop("config", {}), known.pop("recommended", {})
        diagnostics = known.pop("diagnostics", {})
        layer = recommended.get("layer") if isinstance(recommended, dict) else None
        known["kind"] = "condition"
        known["condition"] = {
            "layer": layer,
            "threshold": config.get("threshold"),
            "comparison": config.get("comparison", ">="),
            "fit": diagnostics.get("condition_fit", {}),
        }
        known["fit_stats"] = {}
    known["format_version"] = FORMAT_VERSION
