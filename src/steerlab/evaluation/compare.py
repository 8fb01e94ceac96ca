"""Compare steering methods on one task and budget: same train pairs, prompts, tokens and strength, one table.

Every method is fitted on the same train pairs; vector methods are applied at the same norm-relative
strengths (the added vector's norm as a fraction of the layer's mean residual norm on neutral text, as
`steerlab sweep` defines it), or each at its own calibrated strength (the same KL budget and fluency bound
for every vector, evaluation.calibrate), prompt steering with one instruction toward the task's goal. All
of them and the unsteered original generate in the same batches. Each fit's cost is kept: its seconds and
the process's peak resident memory while it ran (model included; Linux only).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import yaml

from ..data import ContrastiveDataset
from ..errors import UsageError
from ..models import LoadedModel
from ..steering import SpecSteering, SteeringSpec
from ..strength import multiplier_for, with_neutral_norms
from ..vector import SteeringVector
from .calibrate import CalibrationConfig, calibrate
from .metric_registry import get_metric
from .progress import Progress, stage_ticker
from .report import Arm, EvalRun, prompt_arm

INSTRUCTION_METHODS = ("prompt", "vector_prompt")


@dataclass
class Fitted:
    """One row of the comparison: a method's steer at one setting, and how long fitting the method took."""

    label: str
    arm: Arm
    setting: str
    seconds: float
    params: dict[str, Any]
    peak_mib: float | None = None


def reset_peak_memory() -> None:
    """Start a new peak-RSS window (Linux: write 5 to /proc/self/clear_refs); elsewhere nothing to reset."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_mib() -> float | None:
    """The process's peak resident memory (VmHWM) since the last reset, in MiB; None where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def fit_methods(
    lm: LoadedModel,
    methods: Sequence[str],
    data: ContrastiveDataset,
    prompts: Sequence[str],
    *,
    task: str,
    instruction: str,
    layer: int,
    strengths: Sequence[float],
    use_chat_template: bool,
    overrides: dict[str, list[str]] | None = None,
    calibration: CalibrationConfig | None = None,
    direction: float = 1.0,
    report: Callable[[str], None] = lambda _: None,
    progress: Progress | None = None,
) -> list[Fitted]:
    """Fit each method on `data` once and make its arms: a vector at `layer` and each strength, a prompt as given.

    `overrides` maps a method name to its "key=value" config overrides (e.g. LM-Steer's steps). With
    `calibration`, each vector is instead applied at its own calibrated strength toward `direction` (the
    task's): the largest within the KL budget and fluency bound, so every vector costs the model the same.
    """
    if calibration is not None and list(calibration.layers or []) != [layer]:
        raise UsageError(f"calibration must be at the compared layer: give CalibrationConfig(layers=[{layer}])")
    from ..config import build_config
    from ..methods import get_method
    from ..methods.prompt import PromptSteering

    overrides = overrides or {}
    fitted = []
    for name in methods:
        method = get_method(name)
        fields = getattr(method.config_cls, "__dataclass_fields__", {})
        raw: dict[str, Any] = {}
        if "instruction" in fields:
            raw["instruction"] = instruction
        if "layers" in fields:
            raw["layers"] = [layer]
        for item in overrides.get(name, []):
            key, _, value = item.partition("=")
            raw[key.strip()] = yaml.safe_load(value)
        config = build_config(method.config_cls, raw, f"compare {name}")
        report(f"fitting {name} on {len(data)} pairs ...")
        reset_peak_memory()
        start = time.perf_counter()
        # Every fit reports progress (LM-Steer trains for minutes; its bar shows steps and the time left).
        steer = method.fit(
            lm,
            data,
            config,
            task=task,
            progress=stage_ticker(
                progress, f"fitting {name} ({method.progress_unit}s)", method.progress_total(len(data), config)
            ),
        )
        seconds, peak = time.perf_counter() - start, peak_memory_mib()
        params = asdict(config)
        if isinstance(steer, PromptSteering):
            arm = prompt_arm(lm, steer, prompts, use_chat_template=use_chat_template, label=name)
            setting = f'instruction "{steer.instruction}" ({steer.placement})'
            fitted.append(Fitted(name, arm, setting, seconds, params, peak))
        elif isinstance(steer, SteeringVector):
            # Residual norms measured on the same neutral text for every vector, as `steerlab sweep` measures them.
            steer = with_neutral_norms(lm, steer)
            applied = SpecSteering(SteeringSpec(steer, 1.0, [layer]))
            chosen: list[float | None] = list(strengths)
            if calibration is not None:
                record, _ = calibrate(lm, steer, calibration)
                chosen = [record.strength("up" if direction > 0 else "down")]
            for strength in chosen:
                label = name if len(chosen) == 1 else f"{name}@{strength:g}"
                if strength is None:
                    report(f"{name}: no strength within the KL budget and fluency bound; shown unsteered")
                    setting = f"layer {layer}, no calibrated strength (unsteered)"
                    fitted.append(Fitted(label, Arm(label, applied, 0.0), setting, seconds, dict(params), peak))
                    continue
                multiplier = multiplier_for(steer, layer, strength)
                kind = "calibrated strength" if calibration is not None else "strength"
                setting = f"layer {layer}, {kind} {strength:g} (multiplier {multiplier:.2f})"
                fitted.append(
                    Fitted(
                        label,
                        Arm(label, applied, multiplier),
                        setting,
                        seconds,
                        dict(
                            params,
                            layer=layer,
                            strength=strength,
                            multiplier=multiplier,
                            vector_norm=float(steer.directions[layer].norm()),
                            residual_norm=float(steer.meta.residual_norms[str(layer)]),
                        ),
                        peak,
                    )
                )
        elif hasattr(steer, "attach"):
            setting = "; ".join(["multiplier 1", *overrides.get(name, [])])
            fitted.append(Fitted(name, Arm(name, steer, 1.0), setting, seconds, params, peak))
        else:
            raise TypeError(f"method {name} returned {type(steer).__name__}, which compare cannot apply")
    return fitted


def compare_markdown(settings: dict[str, Any], scores: dict[str, Any], fitted: Sequence[Fitted], run: EvalRun) -> str:
    """The comparison table, one row per method beside the original, and a sentence on whether prompting is enough."""
    task = settings["task"]
    metric = get_metric(task["metric"])
    want = "up" if task["direction"] > 0 else "down"
    lines = [
        f"# steerlab compare: {task['name']} on {settings['model']['name']}",
        "",
        f"- {len(run.prompts)} prompts ({task['split']} split), {settings['generation']['max_new_tokens']} new tokens, "
        f"{'sampled' if settings['generation']['do_sample'] else 'greedy'}; every method and the original in the same batches",
        f"- every method fitted on the same {settings['train']['pairs']} train pairs ({settings['train']['name']}); "
        f"vectors at layer {settings['layer']}, strength = added norm / the layer's residual norm"
        + (
            f", each at its calibrated strength (KL budget {settings['calibration']['kl_budget']} nats per token, "
            f"fluency bound {settings['calibration']['fluency_bound']})"
            if settings.get("calibration")
            else ""
        ),
        f"- behaviour: {task['metric_note']} (the task wants it {want}); effect = change x task direction "
        f"(higher is better: {metric.sign_words(task['direction'])}) with its paired bootstrap 95% interval; fluency: "
        "n-gram entropy (bits), distinct-2, repetition, perplexity under the unsteered model; cost: fit seconds and "
        "the peak resident memory while fitting (model included)",
        "",
        "| method | setting | behaviour | effect [95% interval] | entropy | distinct-2 | repetition | perplexity "
        "| fit s | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    o = scores["original"]
    lines.append(
        f"| original | unsteered | {o['behaviour']:+.3f} | | {o['fluency_entropy']:.2f} | {o['distinct_2']:.2f} | "
        f"{o['repetition']:.2f} | {_num(o['perplexity'], '{:.1f}')} | | |"
    )
    for fit, cond in zip(fitted, scores["conditions"], strict=False):
        c = cond["scores"]
        low, high = cond["interval"]
        lines.append(
            f"| {fit.label} | {fit.setting} | {c['behaviour']:+.3f} | {cond['effect']:+.3f} [{low:+.3f}, {high:+.3f}] "
            f"({metric.change_words(cond['delta'])}) | "
            f"{c['fluency_entropy']:.2f} | {c['distinct_2']:.2f} | {c['repetition']:.2f} | "
            f"{_num(c['perplexity'], '{:.1f}')} | {fit.seconds:.0f} | {_num(fit.peak_mib, '{:.0f}')} |"
        )
    verdict = prompting_verdict(scores["conditions"])
    if verdict:
        lines += ["", verdict]
    return "\n".join(lines)


def prompting_verdict(conditions: Sequence[dict[str, Any]]) -> str:
    """Whether prompt steering's effect matches the best other setting's: when it does, prompting is enough.

    Effect only: read it beside the fluency columns, since a strong setting may also break the text.
    """
    by_label = {c["label"]: c for c in conditions}
    others = [c for c in conditions if c["label"] != "prompt"]
    if "prompt" not in by_label or not others:
        return ""
    best = max(others, key=lambda c: c["effect"])
    prompt = by_label["prompt"]["effect"]
    if best["effect"] <= 0:
        return (
            f"No steer moved the behaviour the wanted way (best: {best['label']}, effect {best['effect']:+.3f}); "
            f"prompting's effect is {prompt:+.3f}."
        )
    if prompt <= 0:
        return (
            f"Prompting did not move the behaviour the wanted way (effect {prompt:+.3f}); the best steer, "
            f"{best['label']}, reached {best['effect']:+.3f} (check its fluency columns)."
        )
    share = prompt / best["effect"]
    if share >= 0.8:
        return (
            f"Prompting is enough here: it reaches {share:.0%} of the best steer's effect "
            f"({best['label']}, {best['effect']:+.3f})."
        )
    return (
        f"Prompting reaches {share:.0%} of the best steer's effect ({best['label']}, {best['effect']:+.3f}; "
        "check its fluency columns): steering adds something prompting does not."
    )


def _num(value: float | None, fmt: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)
