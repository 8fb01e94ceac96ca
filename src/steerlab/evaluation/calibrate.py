"""Calibrate a vector's strength: per direction, the largest norm-relative strength the model tolerates.

Tolerates means two things, both measured on steerlab's neutral prompts (strength.neutral_texts):
- the mean per-token KL(steered || unsteered) of the next-token distributions over the prompts' own
  tokens (teacher-forced, first token left out as in the residual norms) stays within `kl_budget` nats;
- greedy continuations keep their fluency: weighted n-gram entropy and distinct-2 at least
  (1 - fluency_bound) of unsteered, repetition rate at most fluency_bound above it.

Strengths are tried on an ascending grid; a direction's strength is the last grid value before the first
that breaks the KL budget, lowered further until fluency holds. Each direction is measured at its own layers:
"up" at the vector's default layers (steering.default_layers), "down" at the sweep's "down" pick where the
sweep made one (a sweep's two picks can sit at different layers), else at the "up" layers. The result is
stored in the vector's metadata (`recommended.calibration`, a CalibrationRecord) and its "up" strength is
then what the vector steers at when nothing is given (steering.default_steering).

The default budget, 0.5 nats per token, was chosen from SmolLM2-135M measurements (docs/results.md,
"Calibrated strength"): the KL a plain one-sentence instruction before the same text causes is of that
order, so a steer within the budget changes the next-token distribution about as much as asking for the
behaviour in words, and the strengths that hold it are those where the sentiment sweep's effects are
already reliable while fluency still holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..batching import pad, positions_from_mask
from ..errors import UsageError
from ..generation import GenerationConfig, encode_prompts, generate_ids
from ..meta import CalibrationRecord
from ..models import LoadedModel
from ..steering import SpecSteering, Steer, SteeringSpec, default_layers
from ..strength import neutral_texts
from ..vector import SteeringVector
from .fluency import distinct_n, repetition_rate, weighted_ngram_entropy
from .progress import Progress, stage_ticker

KL_BUDGET = 0.5
GRID = (0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


@dataclass
class CalibrationConfig:
    """kl_budget: nats per token; fluency_bound: as in sweeps; strengths: the ascending grid tried per direction;
    prompts: neutral prompts for the KL; fluency_prompts and max_new_tokens: greedy continuations checked;
    layers: None = each direction at its own layers (see `direction_layers`); given = both directions there."""

    kl_budget: float = KL_BUDGET
    fluency_bound: float = 0.1
    strengths: list[float] = field(default_factory=lambda: list(GRID))
    prompts: int = 8
    fluency_prompts: int = 8
    max_new_tokens: int = 32
    layers: list[int] | None = None

    def __post_init__(self) -> None:
        if self.kl_budget <= 0:
            raise UsageError(f"kl_budget must be > 0 nats per token; got {self.kl_budget}")
        if not 0 <= self.fluency_bound < 1:
            raise UsageError(f"fluency_bound must be in [0, 1); got {self.fluency_bound}")
        if not self.strengths or any(s <= 0 for s in self.strengths) or sorted(self.strengths) != list(self.strengths):
            raise UsageError(f"strengths must be positive and ascending; got {self.strengths}")
        if self.prompts < 1 or self.fluency_prompts < 1 or self.max_new_tokens < 4:
            raise UsageError("prompts and fluency_prompts must be >= 1 and max_new_tokens >= 4")


Calibration = CalibrationRecord  # what calibrate returns is what the vector's metadata stores


def token_kl(
    lm: LoadedModel,
    vector: SteeringVector,
    layers: Sequence[int],
    strengths: Sequence[float],
    texts: Sequence[str],
    *,
    progress: Callable[[int], object] | None = None,
) -> list[float]:
    """Mean per-token KL(steered || unsteered) in nats over `texts`' tokens, for each signed strength."""
    steers = [SpecSteering(SteeringSpec(vector, layers=list(layers), strength=float(s))) for s in strengths]
    return steers_kl(lm, steers, texts, progress=progress)


def steers_kl(
    lm: LoadedModel, steers: Sequence[Steer], texts: Sequence[str], *, progress: Callable[[int], object] | None = None
) -> list[float]:
    """Mean per-token KL(steered || unsteered) in nats over `texts`' tokens (first left out), for each hook steer."""
    rows = [r for r in (lm.tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts) if len(r) > 1]
    ids, mask = pad(rows, lm.tokenizer.pad_token_id, left=True)
    positions = positions_from_mask(mask)
    keep = (mask * (positions > 0)).bool()
    inputs = {
        "input_ids": ids.to(lm.device),
        "attention_mask": mask.to(lm.device),
        "position_ids": positions.to(lm.device),
        "use_cache": False,
    }
    with torch.inference_mode():
        base = torch.log_softmax(lm.model(**inputs).logits.float(), -1)[keep.to(lm.device)]
        out = []
        for steer in steers:
            with steer.attach(lm):
                steered = torch.log_softmax(lm.model(**inputs).logits.float(), -1)[keep.to(lm.device)]
            out.append(float((steered.exp() * (steered - base)).sum(-1).mean()))
            if progress:
                progress(1)
    return out


def _fluency(texts: Sequence[str]) -> dict[str, float]:
    n = len(texts)
    return {
        "entropy": sum(map(weighted_ngram_entropy, texts)) / n,
        "distinct2": sum(distinct_n(t, 2) for t in texts) / n,
        "repetition": sum(map(repetition_rate, texts)) / n,
    }


def fluent(measures: dict[str, float], base: dict[str, float], bound: float) -> bool:
    """Entropy and distinct-2 keep (1 - bound) of unsteered; repetition rises by at most `bound`."""
    keep = 1 - bound
    return (
        measures["entropy"] >= keep * base["entropy"]
        and measures["distinct2"] >= keep * base["distinct2"]
        and measures["repetition"] <= base["repetition"] + bound
    )


def direction_layers(vector: SteeringVector, config: CalibrationConfig) -> dict[str, list[int]]:
    """The layers each direction is calibrated at: the config's for both, else "up" at the vector's default
    layers and "down" at the sweep's "down" pick (else the "up" layers)."""
    if config.layers:
        return {"up": list(config.layers), "down": list(config.layers)}
    up = list(default_layers(vector))
    down = vector.meta.recommended.down
    return {"up": up, "down": [down.layer] if down is not None and down.layer in vector.directions else up}


def calibrate(
    lm: LoadedModel,
    vector: SteeringVector,
    config: CalibrationConfig | None = None,
    *,
    progress: Progress | None = None,
) -> tuple[Calibration, SteeringVector]:
    """Find each direction's largest tolerated strength; return it and a copy of `vector` that stores it."""
    config = config or CalibrationConfig()
    layers = direction_layers(vector, config)
    for at in layers.values():
        SteeringSpec(vector, layers=at, strength=1.0).layer_multipliers()  # fails early without residual norms
        vector.check_compatible(lm, at)
    texts = neutral_texts()
    kl_texts, gen_prompts = texts[: config.prompts], texts[: config.fluency_prompts]
    n = len(config.strengths)
    tick = stage_ticker(progress, "KL per strength", 2 * n)
    kls = {
        name: token_kl(lm, vector, layers[name], [sign * s for s in config.strengths], kl_texts, progress=tick)
        for name, sign in (("up", 1.0), ("down", -1.0))
    }
    kl = {name: dict(zip(map(str, config.strengths), values, strict=False)) for name, values in kls.items()}
    ids = encode_prompts(lm, gen_prompts)
    gen_config = GenerationConfig(max_new_tokens=config.max_new_tokens)
    base = _fluency(generate_ids(lm, ids, None, config=gen_config))
    measures: dict[str, Any] = {"unsteered": base}
    chosen: dict[str, float | None] = {}
    tick = stage_ticker(progress, "fluency checks", 2)
    for name, sign in (("up", 1.0), ("down", -1.0)):
        values = kls[name]
        within = 0
        while within < n and values[within] <= config.kl_budget:
            within += 1
        chosen[name] = None
        for k in range(within - 1, -1, -1):
            s = config.strengths[k]
            spec = SteeringSpec(vector, layers=layers[name], strength=sign * s)
            got = _fluency(generate_ids(lm, ids, SpecSteering(spec), config=gen_config))
            measures[name] = dict(got, strength=sign * s)
            if fluent(got, base, config.fluency_bound):
                chosen[name] = sign * s
                break
        if tick:
            tick(1)
    note = "; ".join(
        f"{name}: no strength on the grid stays within the KL budget and the fluency bound"
        for name in ("up", "down")
        if chosen[name] is None
    )
    result = Calibration(
        chosen["up"],
        chosen["down"],
        layers,
        config.kl_budget,
        config.fluency_bound,
        {d: {k: round(v, 4) for k, v in m.items()} for d, m in kl.items()},
        {k: {m: round(v, 4) for m, v in d.items()} for k, d in measures.items()},
        len(kl_texts),
        note,
    )
    return result, SteeringVector(dict(vector.directions), vector.meta.with_recommended(calibration=result))
