"""Calibrate a vector's strength: per direction, the largest norm-relative strength the model tolerates.

Tolerates means two things, both measured on steerlab's neutral prompts (strength.neutral_texts):
- the mean per-token KL(steered || unsteered) of the next-token distributions over the prompts' own
  tokens (teacher-forced, first token left out as in the residual norms) stays within `kl_budget` nats;
- greedy continuations keep their fluency: weighted n-gram entropy and distinct-2 at least
  (1 - fluency_bound) of unsteered, repetition rate at most fluency_bound above it.

Strengths are tried on an ascending grid; a direction's strength is the last grid value before the first
that breaks the KL budget, lowered further until fluency holds. The result is stored in the vector's
metadata (recommended["calibration"]) and SteeringSpec uses its "up" strength when no multiplier, no
strength and no sweep recommendation is given.

The default budget, 0.5 nats per token, was chosen from SmolLM2-135M measurements (docs/results.md,
"Calibrated strength"): the KL a plain one-sentence instruction before the same text causes is of that
order, so a steer within the budget changes the next-token distribution about as much as asking for the
behaviour in words, and the strengths that hold it are those where the sentiment sweep's effects are
already reliable while fluency still holds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Sequence

import torch

from ..batching import pad, positions_from_mask
from ..generation import GenerationConfig, encode_prompts, generate_ids
from ..models import LoadedModel
from ..steering import SteeringSpec, VectorSteering
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
    layers: None = the layers the vector steers by default."""

    kl_budget: float = KL_BUDGET
    fluency_bound: float = 0.1
    strengths: list[float] = field(default_factory=lambda: list(GRID))
    prompts: int = 8
    fluency_prompts: int = 8
    max_new_tokens: int = 32
    layers: list[int] | None = None

    def __post_init__(self) -> None:
        if self.kl_budget <= 0:
            raise ValueError(f"kl_budget must be > 0 nats per token; got {self.kl_budget}")
        if not 0 <= self.fluency_bound < 1:
            raise ValueError(f"fluency_bound must be in [0, 1); got {self.fluency_bound}")
        if not self.strengths or any(s <= 0 for s in self.strengths) or sorted(self.strengths) != list(self.strengths):
            raise ValueError(f"strengths must be positive and ascending; got {self.strengths}")
        if self.prompts < 1 or self.fluency_prompts < 1 or self.max_new_tokens < 4:
            raise ValueError("prompts and fluency_prompts must be >= 1 and max_new_tokens >= 4")


@dataclass
class Calibration:
    """Per direction the calibrated strength (None: not even the smallest grid value is tolerated) and the measures."""

    up: float | None
    down: float | None
    layers: list[int]
    kl_budget: float
    fluency_bound: float
    kl: dict[str, dict[str, float]]  # "up"/"down" -> {strength: mean KL per token}
    fluency: dict[str, dict[str, Any]]  # "up"/"down"/"unsteered" -> the measures at the strength checked last
    prompts: int
    note: str = ""

    def to_meta(self) -> dict[str, Any]:
        return asdict(self)


def token_kl(lm: LoadedModel, vector: SteeringVector, layers: Sequence[int], strengths: Sequence[float],
             texts: Sequence[str], *, progress: Callable[[int], None] | None = None) -> list[float]:
    """Mean per-token KL(steered || unsteered) in nats over `texts`' tokens, for each signed strength."""
    rows = [r for r in (lm.tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts) if len(r) > 1]
    ids, mask = pad(rows, lm.tokenizer.pad_token_id, left=True)
    positions = positions_from_mask(mask)
    keep = (mask * (positions > 0)).bool()
    inputs = {"input_ids": ids.to(lm.device), "attention_mask": mask.to(lm.device),
              "position_ids": positions.to(lm.device), "use_cache": False}
    with torch.inference_mode():
        base = torch.log_softmax(lm.model(**inputs).logits.float(), -1)[keep.to(lm.device)]
        out = []
        for s in strengths:
            spec = SteeringSpec(vector, layers=list(layers), strength=float(s))
            with VectorSteering(spec).attach(lm):
                steered = torch.log_softmax(lm.model(**inputs).logits.float(), -1)[keep.to(lm.device)]
            out.append(float((steered.exp() * (steered - base)).sum(-1).mean()))
            if progress:
                progress(1)
    return out


def _fluency(texts: Sequence[str]) -> dict[str, float]:
    n = len(texts)
    return {"entropy": sum(map(weighted_ngram_entropy, texts)) / n,
            "distinct2": sum(distinct_n(t, 2) for t in texts) / n,
            "repetition": sum(map(repetition_rate, texts)) / n}


def fluent(measures: dict[str, float], base: dict[str, float], bound: float) -> bool:
    """Entropy and distinct-2 keep (1 - bound) of unsteered; repetition rises by at most `bound`."""
    keep = 1 - bound
    return (measures["entropy"] >= keep * base["entropy"] and measures["distinct2"] >= keep * base["distinct2"]
            and measures["repetition"] <= base["repetition"] + bound)


def calibrate(lm: LoadedModel, vector: SteeringVector, config: CalibrationConfig | None = None, *,
              progress: Progress | None = None) -> tuple[Calibration, SteeringVector]:
    """Find each direction's largest tolerated strength; return it and a copy of `vector` that stores it."""
    config = config or CalibrationConfig()
    layers = list(config.layers or SteeringSpec(vector, multiplier=1.0).layer_weights())
    SteeringSpec(vector, layers=layers, strength=1.0).layer_multipliers()  # fails early without residual norms
    vector.check_compatible(lm, layers)
    texts = neutral_texts()
    kl_texts, gen_prompts = texts[: config.prompts], texts[: config.fluency_prompts]
    signed = [s for s in config.strengths] + [-s for s in config.strengths]
    kls = token_kl(lm, vector, layers, signed, kl_texts, progress=stage_ticker(progress, "KL per strength", len(signed)))
    n = len(config.strengths)
    kl = {"up": dict(zip(map(str, config.strengths), kls[:n])), "down": dict(zip(map(str, config.strengths), kls[n:]))}
    ids = encode_prompts(lm, gen_prompts)
    gen_config = GenerationConfig(max_new_tokens=config.max_new_tokens)
    base = _fluency(generate_ids(lm, ids, None, config=gen_config))
    measures: dict[str, Any] = {"unsteered": base}
    chosen: dict[str, float | None] = {}
    tick = stage_ticker(progress, "fluency checks", 2)
    for name, sign, values in (("up", 1.0, kls[:n]), ("down", -1.0, kls[n:])):
        within = 0
        while within < n and values[within] <= config.kl_budget:
            within += 1
        chosen[name] = None
        for k in range(within - 1, -1, -1):
            s = config.strengths[k]
            spec = SteeringSpec(vector, layers=layers, strength=sign * s)
            got = _fluency(generate_ids(lm, ids, VectorSteering(spec), config=gen_config))
            measures[name] = dict(got, strength=sign * s)
            if fluent(got, base, config.fluency_bound):
                chosen[name] = sign * s
                break
        if tick:
            tick(1)
    note = "; ".join(f"{name}: no strength on the grid stays within the KL budget and the fluency bound"
                     for name in ("up", "down") if chosen[name] is None)
    result = Calibration(chosen["up"], chosen["down"], layers, config.kl_budget, config.fluency_bound,
                         {d: {k: round(v, 4) for k, v in m.items()} for d, m in kl.items()},
                         {k: {m: round(v, 4) for m, v in d.items()} for k, d in measures.items()}, len(kl_texts), note)
    meta = replace(vector.meta, recommended=dict(vector.meta.recommended, calibration=result.to_meta()))
    return result, SteeringVector(dict(vector.directions), meta)
