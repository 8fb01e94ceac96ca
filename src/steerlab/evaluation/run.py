"""The library verbs `evaluate` and `compare`: steered beside original on a task's held-out prompts, scored.

Both return result objects (a Report; a Comparison) that the command line only prints and saves, so a
notebook or a benchmark gets the same numbers as `steerlab eval` / `steerlab compare` without a CLI.
Progress goes to `progress(stage, done, total)`, the same callback `sweep` takes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..config import build_config
from ..errors import SteerlabError
from ..files import write_text_files
from ..generation import GenerationConfig
from ..methods import METHODS, get_method
from ..methods.prompt import PromptSteering
from ..models import LoadedModel
from ..steering import DEFAULT_STRENGTH, SpecSteering, SteeringSpec, default_steering
from ..strength import with_neutral_norms
from ..vector import SteeringVector
from .calibrate import CalibrationConfig
from .compare import Fitted, compare_markdown, fit_methods
from .metric_registry import get_metric
from .progress import Progress, stage_ticker
from .report import Arm, Report, check_free, generate_arms, multiplier_arms, prompt_arm, score_run
from .tasks import Task, get_task


class EvaluationError(SteerlabError, ValueError):
    """An evaluation was asked for in a way that cannot run; the message says what to give instead."""


@dataclass
class Comparison:
    """`compare`'s result: the report (settings, scores, samples) and each method's fitted setting."""

    report: Report
    fitted: list[Fitted]

    def markdown(self) -> str:
        return compare_markdown(self.report.settings, self.report.scores, self.fitted, self.report.run)

    def save(self, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """report.json, summary.md (the table) and samples.jsonl, written atomically."""
        report = self.report
        check_free(Path(folder), overwrite)
        return write_text_files(
            folder,
            {
                "report.json": json.dumps(report.to_json(), indent=2) + "\n",
                "summary.md": self.markdown() + "\n",
                "samples.jsonl": "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in report.samples()),
            },
            overwrite=overwrite,
        )


def generation_task(task: str | Task, data_dir: str | Path | None = None) -> Task:
    """The task, checked to be a generation task (A/B tasks are scored by `sweep`)."""
    task = task if isinstance(task, Task) else get_task(task, data_dir)
    if task.kind == "reasoning":
        raise EvaluationError(
            f"task '{task.name}' is a reasoning task, scored by accuracy and tokens per answer: evaluate a vector "
            f"on it with steerlab.evaluation.reasoning (`steerlab eval --task {task.name} --vector F "
            "--strengths=-0.1,0.1`)"
        )
    if task.kind != "generation":
        raise EvaluationError(
            f"task '{task.name}' is an A/B task, scored by answer probabilities rather than generated "
            f"text; use `steerlab sweep --task {task.name}` for it"
        )
    return task


def evaluate(
    lm: LoadedModel,
    task: str | Task,
    steer: Any = None,
    *,
    method: str | None = None,
    config: dict[str, Any] | None = None,
    layers: Sequence[int] | dict[int, float] | None = None,
    multipliers: Sequence[float] | None = None,
    strengths: Sequence[float] | None = None,
    instruction: str | None = None,
    split: str = "test",
    limit: int | None = None,
    train_limit: int = 200,
    data_dir: str | Path | None = None,
    generation: GenerationConfig | None = None,
    batch_size: int = 16,
    source: str = "",
    progress: Progress | None = None,
    operator: str | None = None,
) -> Report:
    """Evaluate one steer on a task: a given steer (vector, LM-Steer, prompt steer) or `method` fitted on the
    task's train pairs; steered beside the original, scored for effect and fluency.

    Vectors run at `multipliers`, else at `strengths` (norm-relative, converted at each steered layer with
    residual norms on neutral text), else at what the vector steers at when nothing is given
    (steering.default_steering: calibrated strength, recommended multiplier, DEFAULT_STRENGTH, multiplier 1).
    `operator` (vectors only) overrides the operator the vector's file states (steerlab.operators).
    """
    if (steer is None) == (method is None):
        raise EvaluationError("give one steer: a steer object (or file) or a method name to fit")
    if multipliers and strengths:
        raise EvaluationError("give multipliers or strengths, not both")
    task = generation_task(task, data_dir)
    generation = _checked_generation(generation, limit, train_limit)
    prompts = task.eval_items(split, data_dir, limit)
    chat = bool(task.chat and lm.use_chat_template)
    info: dict[str, Any] = {}
    if method is not None:  # (exactly one of steer and method is given)
        steer, info = _fit(lm, task, method, dict(config or {}), layers, instruction, train_limit, data_dir, progress)
        source = source or f"fitted ({method})"
    if getattr(steer, "kind", None) == "condition":
        raise EvaluationError(
            "a condition decides where a vector applies and steers nothing itself; evaluate the vector it gates"
        )
    if operator is not None and not isinstance(steer, SteeringVector):
        raise EvaluationError(f"an operator applies to vectors; this steer is of kind '{steer.kind}'")
    if isinstance(steer, SteeringVector):
        spec, values = _vector_arms(lm, steer, layers, multipliers, strengths, info, operator)
        SpecSteering(spec)  # refuses an unknown operator before anything runs
        shown: Any = values
        if spec.strength is None:
            arms = multiplier_arms(SpecSteering(spec), values)
            unit = f"multipliers {', '.join(f'{m:g}' for m in values)}"
        else:  # strength 1 per layer, scaled per arm: each layer gets its own multiplier for strength s
            arms = [Arm(f"s{s:g}", SpecSteering(spec), float(s)) for s in values]
            per_layer = spec.layer_multipliers()
            unit = "; ".join(
                f"strength {s:g} = " + ", ".join(f"layer {k} x{m * s:.4g}" for k, m in per_layer.items())
                for s in values
            )
            shown = {f"{s:g}": {str(k): round(m * s, 4) for k, m in per_layer.items()} for s in values}
        info.update(
            method=steer.meta.method,
            source=source or "given vector",
            layers=spec.layer_weights(),
            operator=spec.operator_name(),
            multipliers=shown,
            task=steer.meta.task,
            dataset=steer.meta.dataset,
            config=steer.meta.config,
        )
        info["description"] = (
            f"{steer.meta.method} vector ({info['source']}, {spec.operator_name()}) at layers "
            f"{list(spec.layer_weights())}, {unit}"
        )
    elif isinstance(steer, PromptSteering):
        if multipliers or strengths:
            raise EvaluationError("prompt steering has no strength; drop multipliers/strengths")
        arms = [prompt_arm(lm, steer, prompts, use_chat_template=chat)]
        info["description"] = f'prompt steering: "{steer.instruction}" ({steer.placement})'
    else:
        values = list(multipliers or [1.0])
        arms = multiplier_arms(steer, values)
        info["description"] = f"{method or steer.kind} at scales {', '.join(f'{m:g}' for m in values)}"
    run = generate_arms(
        lm,
        prompts,
        arms,
        config=generation,
        batch_size=batch_size,
        use_chat_template=chat,
        task=task.name,
        progress=stage_ticker(progress, f"generating {len(arms)} steered + original per prompt", len(prompts)),
    )
    scores = score_run(lm, run, task.metric, task.direction, use_chat_template=chat, batch_size=batch_size)
    settings = {
        "command": "eval",
        "task": _task_settings(task, split, limit, len(prompts)),
        "model": _model_settings(lm),
        "steer": _jsonable(info),
        "generation": asdict(generation),
        "batch_size": batch_size,
    }
    return Report(settings, scores, run)


def compare(
    lm: LoadedModel,
    task: str | Task,
    *,
    methods: Sequence[str] | None = None,
    layer: int | None = None,
    strengths: Sequence[float] | None = None,
    calibration: CalibrationConfig | None = None,
    instruction: str | None = None,
    overrides: dict[str, list[str]] | None = None,
    split: str = "test",
    limit: int | None = 50,
    train_limit: int = 200,
    data_dir: str | Path | None = None,
    generation: GenerationConfig | None = None,
    batch_size: int = 16,
    progress: Progress | None = None,
    report: Callable[[str], None] = lambda _: None,
) -> Comparison:
    """Compare methods on one task and budget: same train pairs, prompts, tokens and strength, one table.

    `overrides` maps a method to its "key=value" config overrides (e.g. {"lm_steer": ["steps=200"]}).
    `calibration`: each vector at its own calibrated strength toward the task's goal (the same KL budget and
    fluency bound for all, evaluation.calibrate; measured at the compared layer) instead of `strengths`.
    """
    if calibration is not None and strengths:
        raise EvaluationError("give strengths or a calibration (each vector at its calibrated strength), not both")
    task = generation_task(task, data_dir)
    generation = _checked_generation(generation, limit, train_limit)
    methods = list(methods) if methods else list(METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise EvaluationError(f"unknown method '{unknown[0]}'; available: {', '.join(METHODS)}")
    strange = [name for name in (overrides or {}) if name not in methods]
    if strange:
        raise EvaluationError(f"overrides name '{strange[0]}', which is not compared ({', '.join(methods)})")
    instruction = instruction or get_metric(task.metric).instruction(task.direction)
    if instruction is None and any(m in ("prompt", "vector_prompt") for m in methods):
        raise EvaluationError(f"no default instruction for metric '{task.metric}' {_way(task)}; give an instruction")
    strengths = list(strengths or [DEFAULT_STRENGTH])
    prompts = task.eval_items(split, data_dir, limit)
    data = task.train_data(data_dir, train_limit)
    layer = lm.default_layer() if layer is None else layer
    chat = bool(task.chat and lm.use_chat_template)
    calibration = replace(calibration, layers=[layer]) if calibration is not None else None
    fitted = fit_methods(
        lm,
        methods,
        data,
        prompts,
        task=task.name,
        instruction=instruction or "",
        layer=layer,
        strengths=strengths,
        use_chat_template=chat,
        overrides=overrides,
        calibration=calibration,
        direction=task.direction,
        report=report,
        progress=progress,
    )
    run = generate_arms(
        lm,
        prompts,
        [f.arm for f in fitted],
        config=generation,
        batch_size=batch_size,
        use_chat_template=chat,
        task=task.name,
        progress=stage_ticker(progress, f"generating {len(fitted)} methods + original per prompt", len(prompts)),
    )
    scores = score_run(lm, run, task.metric, task.direction, use_chat_template=chat, batch_size=batch_size)
    settings = {
        "command": "compare",
        "task": _task_settings(task, split, limit, len(prompts)),
        "model": _model_settings(lm),
        "train": data.describe(),
        "layer": layer,
        "strengths": None if calibration else strengths,
        "calibration": (
            {"kl_budget": calibration.kl_budget, "fluency_bound": calibration.fluency_bound} if calibration else None
        ),
        "instruction": instruction,
        "methods": {
            f.label: {
                "setting": f.setting,
                "fit_seconds": round(f.seconds, 2),
                "peak_rss_mib": f.peak_mib,
                "params": f.params,
            }
            for f in fitted
        },
        "generation": asdict(generation),
        "batch_size": batch_size,
    }
    return Comparison(Report(_jsonable(settings), scores, run), fitted)


def _checked_generation(generation: GenerationConfig | None, limit: int | None, train_limit: int) -> GenerationConfig:
    if limit is not None and limit < 1:
        raise EvaluationError(f"limit must be at least 1, got {limit}")
    if train_limit < 2:
        raise EvaluationError(f"train limit must be at least 2, got {train_limit}")
    return generation or GenerationConfig(max_new_tokens=40)


def _fit(
    lm: LoadedModel,
    task: Task,
    method: str,
    values: dict[str, Any],
    layers,
    instruction: str | None,
    train_limit: int,
    data_dir,
    progress: Progress | None,
):
    """Fit `method` on the task's train pairs; the instruction defaults to one toward the task's goal."""
    spec = get_method(method)
    fields = getattr(spec.config_cls, "__dataclass_fields__", {})
    if "instruction" in fields and "instruction" not in values:
        values["instruction"] = instruction or get_metric(task.metric).instruction(task.direction)
        if not values["instruction"]:
            raise EvaluationError(
                f"method {method} needs an instruction (metric '{task.metric}' has none {_way(task)}); give one"
            )
    if layers is not None:
        if "layers" not in fields:
            raise EvaluationError(f"method {method} takes no layers; drop them")
        values["layers"] = list(layers)
    config = build_config(spec.config_cls, values, f"{method} config")
    data = task.train_data(data_dir, train_limit)
    total = spec.progress_total(len(data), config)
    start = time.perf_counter()
    steer = spec.fit(
        lm,
        data,
        config,
        task=task.name,
        progress=stage_ticker(progress, f"fitting {method} on {data.name} ({spec.progress_unit}s)", total),
    )
    info = {
        "method": method,
        "config": asdict(config),
        "train": data.describe(),
        "fit_seconds": round(time.perf_counter() - start, 2),
    }
    return steer, info


def _vector_arms(
    lm: LoadedModel,
    vector: SteeringVector,
    layers,
    multipliers,
    strengths,
    info: dict[str, Any],
    operator: str | None = None,
) -> tuple[SteeringSpec, list[float]]:
    """The spec and the per-arm values: multipliers as given (spec at multiplier 1); strengths as given; else what
    the vector steers at when nothing is given (steering.default_steering, the rule every path follows). Strength
    arms run with the spec at strength 1, so each steered layer converts with its own residual norm (measured on
    neutral text where the vector lacks it and strengths were given)."""
    if multipliers:
        return SteeringSpec(vector, 1.0, layers, operator=operator), list(multipliers)
    source = "given"
    if not strengths:
        default = default_steering(vector, layers, operator)
        info["default"] = default.words()
        if default.strength is None:
            return SteeringSpec(vector, 1.0, layers, operator=operator), [float(default.multiplier or 1.0)]
        strengths, source = [default.strength], default.source
    steered = SteeringSpec(vector, 1.0, layers).layer_weights()
    if any(str(layer) not in vector.meta.residual_norms for layer in steered):
        vector = with_neutral_norms(lm, vector)
    spec = SteeringSpec(vector, layers=layers, operator=operator, strength=1.0)
    info["strengths"] = {
        "values": list(strengths),
        "source": source,
        "residual_norms": {str(k): vector.meta.residual_norms[str(k)] for k in steered},
        "multipliers_at_strength_1": {str(k): round(m, 4) for k, m in spec.layer_multipliers().items()},
    }
    return spec, list(strengths)


def _task_settings(task: Task, split: str, limit: int | None, n_prompts: int) -> dict[str, Any]:
    return {
        "name": task.name,
        "description": task.description,
        "metric": task.metric,
        "metric_note": get_metric(task.metric).mean_note,
        "direction": task.direction,
        "split": split,
        "prompts": n_prompts,
        "limit": limit,
        "chat": bool(task.chat),
    }


def _way(task: Task) -> str:
    return f"toward {'higher' if task.direction > 0 else 'lower'} scores"


def _model_settings(lm: LoadedModel) -> dict[str, Any]:
    return {"name": lm.name, "fingerprint": lm.fingerprint, "layers": lm.num_layers, "hidden_size": lm.hidden_size}


def _jsonable(value: Any) -> Any:
    """Settings as JSON can hold them: int keys become strings."""
    return json.loads(json.dumps(value, default=str))
