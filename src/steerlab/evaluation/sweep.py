"""Layer x strength sweeps: every layer's CAA vector from one activation pass, the whole grid scored in batched
passes with per-row multipliers, and a recommended (layer, multiplier) stored in the vector's metadata.

The grid runs over raw multipliers (CAA's -1/+1) or norm-relative strengths (steerlab.strength). A/B tasks
score each cell by the order-debiased p(matching) (evaluation.ab) and use the two answers' probability mass
as their fluency: a steered model that stops answering "A" or "B" is broken. Generation tasks score greedy
continuations with the task's metric and use weighted n-gram entropy (evaluation.fluency) as fluency. The
recommendation is the positive-side cell with the largest effect (the score change in the task's wanted
direction) whose fluency keeps at least (1 - fluency_bound) of the unsteered model's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..activations import record_pair_activations
from ..generation import GenerationConfig, encode_prompts, generate_ids
from ..methods.caa import vector_from_activations
from ..data import ContrastiveDataset
from ..models import LayerError, LoadedModel, check_layers
from ..steering import SteeringSpec, VectorSteering
from ..strength import multiplier_for, with_neutral_norms
from .tasks import SPLITS, Task
from ..vector import SteeringVector, write_atomic
from .ab import POSITIONS, UNSTEERED, Cell, score_ab
from .fluency import weighted_ngram_entropy
from .progress import stage_ticker
from .sweep_plots import heatmap_png

OUTPUT_FILES = ("vector.safetensors", "sweep.json", "effect.png", "fluency.png")


class SweepError(ValueError):
    """A sweep was asked for in a way that cannot work; the message says how to fix it."""


@dataclass
class SweepConfig:
    """layers: empty = every layer; give multipliers (raw) or strengths (norm-relative), not both (default strengths
    -0.25, -0.1, 0.1, 0.25); fluency_bound: largest allowed fractional fluency loss vs unsteered; split: val or
    test; limit: items/prompts per cell; train_limit: training pairs; max_new_tokens: generation tasks only;
    swap and positions: A/B scoring (see evaluation.ab); batch_rows: rows per forward pass."""

    layers: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    strengths: list[float] = field(default_factory=list)
    fluency_bound: float = 0.1
    split: str = "val"
    limit: int | None = None
    train_limit: int | None = None
    max_new_tokens: int = 32
    swap: bool = True
    positions: str = "answer"
    batch_rows: int = 64

    def __post_init__(self) -> None:
        if self.multipliers and self.strengths:
            raise ValueError("give multipliers (raw) or strengths (norm-relative), not both")
        if not self.multipliers and not self.strengths:
            self.strengths = [-0.25, -0.1, 0.1, 0.25]
        if not 0 <= self.fluency_bound < 1:
            raise ValueError(f"fluency_bound must be in [0, 1); got {self.fluency_bound}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}; got '{self.split}'")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {', '.join(POSITIONS)}; got '{self.positions}'")

    @property
    def mode(self) -> str:
        return "raw" if self.multipliers else "relative"

    @property
    def values(self) -> list[float]:
        return list(self.multipliers or self.strengths)


@dataclass
class SweepResult:
    """The grid (rows = layers, columns = grid values) and what the sweep recommends."""

    task: str
    kind: str
    split: str
    mode: str
    layers: list[int]
    values: list[float]
    multipliers: list[list[float]]
    score: list[list[float]]
    fluency: list[list[float]]
    effect: list[list[float]]
    base_score: float
    base_fluency: float
    score_name: str
    fluency_name: str
    fluency_bound: float
    items: int
    train_pairs: int
    recommended: dict[str, Any] | None
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_sweep_vector(lm: LoadedModel, data: ContrastiveDataset, layers: Sequence[int], *, task: str,
                       progress: Callable[[int], None] | None = None) -> SteeringVector:
    """A CAA vector at every given layer from one activation pass, with neutral-text residual norms."""
    acts = record_pair_activations(lm, data.pairs, layers, progress=progress)
    vector = vector_from_activations(lm, acts, data, task=task, params={"layers": list(layers), "batch_size": 16})
    return with_neutral_norms(lm, vector)


def sweep(lm: LoadedModel, task: Task, config: SweepConfig | None = None, *, data_dir: str | Path | None = None,
          vector: SteeringVector | None = None,
          progress: Callable[[str, int, int], None] | None = None) -> tuple[SweepResult, SteeringVector]:
    """Score the grid for the task's CAA vector (built at every swept layer unless `vector` is given) and return
    the result and the vector, whose metadata then holds the recommendation and the neutral-text residual norms."""
    config = config or SweepConfig()
    try:
        layers = check_layers(lm, config.layers or range(lm.num_layers))
    except LayerError as exc:
        raise SweepError(str(exc)) from None
    items = task.eval_items(config.split, data_dir, config.limit)
    if not items:
        raise SweepError(f"task '{task.name}' has no {config.split} items to score")
    if vector is None:
        data = task.train_data(data_dir, config.train_limit)
        vector = build_sweep_vector(lm, data, layers, task=task.name, progress=stage_ticker(progress, "activations", len(data)))
    missing = [layer for layer in layers if layer not in vector.directions or str(layer) not in vector.meta.residual_norms]
    if missing:
        raise SweepError(f"the given vector lacks layer {missing[0]} or its residual norm; build it with build_sweep_vector")

    values = config.values
    mults = [[v if config.mode == "raw" else multiplier_for(vector, layer, v) for v in values] for layer in layers]
    cells = [UNSTEERED] + [Cell(layer, m) for layer, row in zip(layers, mults) for m in row]
    if task.kind == "ab":
        scores, fluency, details = _score_ab(lm, task, items, vector, cells, config, progress)
        score_name, fluency_name = "p(matching), order-debiased", "p(A) + p(B)"
    else:
        scores, fluency, details = _score_generation(lm, task, items, vector, cells, config, progress)
        score_name, fluency_name = f"mean {task.metric}", "weighted n-gram entropy (bits)"
    score_grid, fluency_grid = _rows(scores[1:], len(values)), _rows(fluency[1:], len(values))
    effect = [[task.direction * (s - scores[0]) for s in row] for row in score_grid]
    result = SweepResult(task.name, task.kind, config.split if task.has_val else "test", config.mode, layers, values,
                         [[round(m, 4) for m in row] for row in mults], score_grid, fluency_grid, effect,
                         scores[0], fluency[0], score_name, fluency_name, config.fluency_bound, len(items),
                         int(vector.meta.dataset.get("pairs", 0)),
                         None, details=details)
    recommend(result)
    if result.recommended:
        vector.meta.recommended = dict(result.recommended)
    return result, vector


def _rows(flat: list[float], width: int) -> list[list[float]]:
    return [flat[i : i + width] for i in range(0, len(flat), width)]


def _score_ab(lm, task, items, vector, cells, config, progress):
    grid = score_ab(lm, items, vector, cells, swap=config.swap, positions=config.positions,
                    batch_rows=config.batch_rows, task=task.name,
                    progress=stage_ticker(progress, "A/B grid", len(cells) * len(items) * (2 if config.swap else 1)))
    summaries = [grid.summary(c) for c in range(len(cells))]
    details = {"unsteered": summaries[0], "cells": summaries[1:]}
    return [s["p_matching"] for s in summaries], [s["answer_mass"] for s in summaries], details


def metric_scores(metric: str, texts: Sequence[str]) -> list[float]:
    """Per-text scores of a generation metric: VADER compound, P(toxic), or 1/0 for a refusal."""
    if metric == "sentiment":
        from .sentiment import vader_scores

        return vader_scores(texts)
    if metric == "toxicity":
        from .toxicity import ProfanityCheckScorer

        return ProfanityCheckScorer().scores(texts)
    if metric == "refusal":
        from .refusal import is_refusal

        return [1.0 if is_refusal(t) else 0.0 for t in texts]
    raise SweepError(f"unknown metric '{metric}'")


def generate_grid(lm: LoadedModel, prompts: Sequence[str], vector: SteeringVector, cells: Sequence[Cell], *,
                  chat: bool, max_new_tokens: int, batch_rows: int = 64, task: str | None = None,
                  progress: Callable[[int], None] | None = None) -> list[list[str]]:
    """Greedy continuations of every prompt under every cell, many cells per generate call; [cells][prompts]."""
    ids = encode_prompts(lm, prompts, use_chat_template=chat)
    rows = [(c, p) for p in range(len(prompts)) for c in range(len(cells))]  # prompt-major: similar lengths per batch
    texts = [[""] * len(prompts) for _ in cells]
    config = GenerationConfig(max_new_tokens=max_new_tokens)
    for start in range(0, len(rows), batch_rows):
        chunk = rows[start : start + batch_rows]
        specs = []
        for layer in sorted({cells[c].layer for c, _ in chunk if cells[c].layer is not None}):
            mults = [cells[c].multiplier if cells[c].layer == layer else 0.0 for c, _ in chunk]
            specs.append(SteeringSpec(vector, mults, [layer], "all"))
        out = generate_ids(lm, [ids[p] for _, p in chunk], VectorSteering(specs), config=config, task=task)
        for (c, p), text in zip(chunk, out):
            texts[c][p] = text
        if progress:
            progress(len(chunk))
    return texts


def _score_generation(lm, task, prompts, vector, cells, config, progress):
    texts = generate_grid(lm, prompts, vector, cells, chat=task.chat, max_new_tokens=config.max_new_tokens,
                          batch_rows=config.batch_rows, task=task.name,
                          progress=stage_ticker(progress, "generating", len(cells) * len(prompts)))
    scores = [sum(metric_scores(task.metric, t)) / len(t) for t in texts]
    fluency = [sum(weighted_ngram_entropy(x) for x in t) / len(t) for t in texts]
    details = {"examples": [{"cell": asdict(c), "prompt": prompts[0], "text": t[0]} for c, t in zip(cells, texts)]}
    return scores, fluency, details


def recommend(result: SweepResult) -> None:
    """Pick the positive-side cell with the largest positive effect whose fluency is within the bound."""
    floor = (1 - result.fluency_bound) * result.base_fluency
    result.recommended, result.note = None, ""
    best = None
    for i, layer in enumerate(result.layers):
        for j, value in enumerate(result.values):
            if value <= 0 or result.fluency[i][j] < floor:
                continue
            if best is None or result.effect[i][j] > result.effect[best[0]][best[1]]:
                best = (i, j)
    if best is None or result.effect[best[0]][best[1]] <= 0:
        result.note = (f"no positive-side cell raised the score while keeping fluency >= {floor:.4g} "
                       f"({1 - result.fluency_bound:.0%} of unsteered); nothing recommended")
        return
    i, j = best
    result.recommended = {
        "layer": result.layers[i], "multiplier": result.multipliers[i][j], "mode": result.mode,
        "value": result.values[j], "task": result.task, "split": result.split,
        "effect": round(result.effect[i][j], 4), "score": round(result.score[i][j], 4),
        "fluency": round(result.fluency[i][j], 4), "fluency_bound": result.fluency_bound,
    }


def save_sweep(out_dir: str | Path, result: SweepResult, vector: SteeringVector, *, overwrite: bool = False) -> Path:
    """Write vector.safetensors, sweep.json and the effect and fluency heatmaps into `out_dir`."""
    out = Path(out_dir)
    clash = [name for name in OUTPUT_FILES if (out / name).exists()]
    if clash and not overwrite:
        raise FileExistsError(f"{out / clash[0]} already exists; choose another output folder or pass overwrite=True (--overwrite)")
    rec = result.recommended
    mark = (result.layers.index(rec["layer"]), result.values.index(rec["value"])) if rec else None
    label = "raw multiplier" if result.mode == "raw" else "norm-relative strength"
    where = f"{result.task} on {vector.meta.model_name} ({result.split}, {result.items} items)"
    vector.save(out / OUTPUT_FILES[0], overwrite=overwrite)
    write_atomic(out / OUTPUT_FILES[1], json.dumps(result.to_dict(), indent=1).encode(), overwrite=overwrite)
    write_atomic(out / OUTPUT_FILES[2], heatmap_png(result.effect, result.layers, result.values, mark=mark,
                 title=f"effect: change in {result.score_name}\n{where}", value_label=label,
                 colour_label="effect (wanted direction > 0)", centre=0.0), overwrite=overwrite)
    write_atomic(out / OUTPUT_FILES[3], heatmap_png(result.fluency, result.layers, result.values, mark=mark,
                 title=f"fluency: {result.fluency_name} (unsteered {result.base_fluency:.3g})\n{where}",
                 value_label=label, colour_label=result.fluency_name), overwrite=overwrite)
    return out

