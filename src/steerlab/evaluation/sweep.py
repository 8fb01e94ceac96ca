"""Layer x strength sweeps: every layer's CAA vector from one activation pass, the whole grid scored in batched
passes with per-row multipliers, and a recommended (layer, multiplier) stored in the vector's metadata.

The grid runs over raw multipliers (CAA's -1/+1) or norm-relative strengths (steerlab.strength). A/B tasks
score each cell by the order-debiased p(matching) (evaluation.ab) and use the two answers' probability mass
as their fluency: a steered model that stops answering "A" or "B" is broken. Generation tasks score greedy
continuations with the task's metric and use weighted n-gram entropy (evaluation.fluency) as fluency. The
recommendation is the positive-side cell with the largest effect (the score change in the task's wanted
direction) whose fluency keeps at least (1 - fluency_bound) of the unsteered model's.

Each cell's effect carries a paired bootstrap 95% interval (evaluation.stats: the same items steered and
unsteered) and the share of items it moved the wrong way. A layer and strength are recommended per direction:
"up" (positive values, the task's wanted direction) and "down" (negative values, the opposite), each the
fluent cell with the largest lower interval bound in its direction, and only where that interval excludes
zero and the effect is at least `min_effect` (default 2% of the metric's range: 0.02 of p(matching), 0.04 of
VADER compound; a +0.004 shift can be consistent across items and still be worth nothing). An A/B cell
whose A-share moved more than twice its p(matching) (evaluation.ab.ab_movement) steers the letter, not the
behaviour, and is never recommended. A direction with no such cell is "no reliable effect" (naming the
letter-moving cell left out, if any), and without a reliable "up" cell the vector gets no default multiplier. Generation tasks count a cell fluent only when n-gram entropy and distinct-2 keep
(1 - fluency_bound) of unsteered and the repetition rate rises by at most fluency_bound.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from ..activations import record_pair_activations
from ..data import ContrastiveDataset
from ..errors import SteerlabError
from ..files import write_folder
from ..generation import GenerationConfig, encode_prompts, generate_ids
from ..meta import Pick, Recommendation
from ..methods.caa import CAAConfig, vector_from_activations
from ..models import LayerError, LoadedModel, check_layers
from ..steering import SpecSteering, SteeringSpec
from ..strength import multiplier_for, with_neutral_norms
from ..vector import SteeringVector
from .ab import POSITIONS, UNSTEERED, Cell, ab_movement, at_chance, check_ab_items, first_answer, score_ab
from .fluency import distinct_n, repetition_rate, weighted_ngram_entropy
from .metric_registry import Metric, get_metric
from .progress import stage_ticker
from .stats import paired_interval
from .sweep_plots import heatmap_png
from .tasks import SPLITS, Task

OUTPUT_FILES = ("vector.safetensors", "sweep.json", "effect.png", "fluency.png")
NO_EFFECT = "no reliable effect"
DIRECTIONS = (("up", 1.0), ("down", -1.0))
MIN_EFFECT_SHARE = 0.02  # of the metric's span (metric_registry): the smallest effect worth recommending
R = TypeVar("R")  # a grid cell: a score, an interval, a flag


class SweepError(SteerlabError, ValueError):
    """A sweep was asked for in a way that cannot work; the message says how to fix it."""


@dataclass
class SweepConfig:
    """layers: empty = every layer; give multipliers (raw) or strengths (norm-relative), not both (default strengths
    -0.25, -0.1, 0.1, 0.25); fluency_bound: largest allowed fractional fluency loss vs unsteered; split: val or
    test; limit: items/prompts per cell; train_limit: training pairs; max_new_tokens: generation tasks only;
    swap and positions: A/B scoring (see evaluation.ab); batch_rows: rows per forward pass; min_effect: the
    smallest |effect| worth recommending (None: 2% of the metric's range)."""

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
    min_effect: float | None = None

    def __post_init__(self) -> None:
        if self.multipliers and self.strengths:
            raise SweepError("give multipliers (raw) or strengths (norm-relative), not both")
        if not self.multipliers and not self.strengths:
            self.strengths = [-0.25, -0.1, 0.1, 0.25]
        if not 0 <= self.fluency_bound < 1:
            raise SweepError(f"fluency_bound must be in [0, 1); got {self.fluency_bound}")
        if self.split not in SPLITS:
            raise SweepError(f"split must be one of {', '.join(SPLITS)}; got '{self.split}'")
        if self.positions not in POSITIONS:
            raise SweepError(f"positions must be one of {', '.join(POSITIONS)}; got '{self.positions}'")

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
    recommended: Recommendation | None
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    interval: list[list[list[float]]] = field(default_factory=list)  # per cell [low, high] of its effect (95%)
    wrong_way: list[list[float]] = field(default_factory=list)  # share of items moved against the cell's direction
    fluent: list[list[bool]] = field(default_factory=list)
    directions: dict[str, Pick | None] = field(default_factory=dict)  # "up"/"down": the picked cell or None
    direction: float = 1.0  # the task's: effect = score change x direction
    metric: str = "ab"  # the task's metric (evaluation.metric_registry)
    verdict: str = ""
    min_effect: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["recommended"] = None if self.recommended is None else self.recommended.to_json()
        out["directions"] = {k: None if p is None else p.to_json() for k, p in self.directions.items()}
        return out

    def metric_record(self) -> Metric:
        return get_metric(self.metric)

    def effect_words(self, effect: float) -> str:
        """An effect in words: which way the score moved and by how much ("toxicity down by 0.345")."""
        return self.metric_record().effect_words(effect, self.direction)


def build_sweep_vector(
    lm: LoadedModel,
    data: ContrastiveDataset,
    layers: Sequence[int],
    *,
    task: str,
    progress: Callable[[int], object] | None = None,
) -> SteeringVector:
    """A CAA vector at every given layer from one activation pass, with neutral-text residual norms."""
    acts = record_pair_activations(lm, data.pairs, layers, progress=progress)
    vector = vector_from_activations(lm, acts, data, task=task, config=CAAConfig(layers=list(layers)))
    return with_neutral_norms(lm, vector)


def sweep(
    lm: LoadedModel,
    task: Task,
    config: SweepConfig | None = None,
    *,
    data_dir: str | Path | None = None,
    vector: SteeringVector | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[SweepResult, SteeringVector]:
    """Score the grid for the task's CAA vector (built at every swept layer unless `vector` is given) and return
    the result and the vector, whose metadata then holds the recommendation and the neutral-text residual norms."""
    config = config or SweepConfig()
    check_sweepable(task)
    try:
        layers = check_layers(lm, config.layers or range(lm.num_layers))
    except LayerError as exc:
        raise SweepError(str(exc)) from None
    items = task.eval_items(config.split, data_dir, config.limit)
    if not items:
        raise SweepError(f"task '{task.name}' has no {config.split} items to score")
    if task.kind == "ab":
        check_ab_items(items, config.swap, f"task '{task.name}' ({config.split})")
    if vector is None:
        data = task.train_data(data_dir, config.train_limit)
        vector = build_sweep_vector(
            lm, data, layers, task=task.name, progress=stage_ticker(progress, "activations", len(data))
        )
    missing = [
        layer for layer in layers if layer not in vector.directions or str(layer) not in vector.meta.residual_norms
    ]
    if missing:
        raise SweepError(
            f"the given vector lacks layer {missing[0]} or its residual norm; build it with build_sweep_vector"
        )

    values = config.values
    mults = [[v if config.mode == "raw" else multiplier_for(vector, layer, v) for v in values] for layer in layers]
    cells = [UNSTEERED] + [Cell(layer, m) for layer, row in zip(layers, mults, strict=False) for m in row]
    if task.kind == "ab":
        per_item, fluency, ok, groups, details = _score_ab(lm, task, items, vector, cells, config, progress)
        score_name, fluency_name = "p(matching), order-debiased", "p(A) + p(B)"
    else:
        per_item, fluency, ok, groups, details = _score_generation(lm, task, items, vector, cells, config, progress)
        score_name, fluency_name = f"mean {task.metric}", "weighted n-gram entropy (bits)"
    intervals = [
        paired_interval(row, per_item[0], groups=groups, seed=c).signed(task.direction)
        for c, row in enumerate(per_item[1:], 1)
    ]
    scores = details.pop("scores")
    width = len(values)
    score_grid, fluency_grid = _rows(scores[1:], width), _rows(fluency[1:], width)
    effect = [[task.direction * (s - scores[0]) for s in row] for row in score_grid]
    interval = _rows([[round(iv.low, 4), round(iv.high, 4)] for iv in intervals], width)
    wrong = _rows([iv.fell if values[k % width] > 0 else iv.rose for k, iv in enumerate(intervals)], width)
    result = SweepResult(
        task.name,
        task.kind,
        config.split if task.has_val else "test",
        config.mode,
        layers,
        values,
        [[round(m, 4) for m in row] for row in mults],
        score_grid,
        fluency_grid,
        effect,
        scores[0],
        fluency[0],
        score_name,
        fluency_name,
        config.fluency_bound,
        len(items),
        int(vector.meta.dataset.get("pairs", 0)),
        None,
        details=details,
        interval=interval,
        wrong_way=[[round(w, 4) for w in r] for r in wrong],
        fluent=_rows(ok[1:], width),
        min_effect=config.min_effect
        if config.min_effect is not None
        else MIN_EFFECT_SHARE * get_metric(task.metric).span,
        direction=task.direction,
        metric=task.metric,
    )
    recommend(result)
    vector.meta = replace(vector.meta, recommended=stored_recommendation(result, vector.meta.recommended))
    return result, vector


def check_sweepable(task: Task) -> None:
    """Refuse, before any model work, a task the grid cannot score (reasoning tasks: accuracy and tokens)."""
    if task.kind == "reasoning":
        raise SweepError(
            f"task '{task.name}' is a reasoning task, scored by accuracy and tokens per answer, which the sweep's "
            f"grid does not score; compare strengths with `steerlab eval --task {task.name} --vector F "
            "--strengths=-0.1,0.1`"
        )


def stored_recommendation(result: SweepResult, before: Recommendation) -> Recommendation:
    """What a sweep stores in its vector: its recommendation (or its verdict), and the vector's calibration
    where it was measured at the layers the sweep now picks (a calibration is per layer; else calibrate again)."""
    rec = result.recommended or Recommendation(verdict=NO_EFFECT, task=result.task, split=result.split)
    cal = before.calibration
    picked = {d: [p.layer] for d, p in result.directions.items() if p is not None}
    if cal is not None and all(cal.layers.get(d) == layers for d, layers in picked.items()):
        rec = replace(rec, calibration=cal)
    return rec


def _rows(flat: list[R], width: int) -> list[list[R]]:
    return [flat[i : i + width] for i in range(0, len(flat), width)]


def _score_ab(lm, task, items, vector, cells, config, progress):
    """Per-item debiased p(matching) per cell, answer mass as fluency, and the letter-share shift beside it."""
    grid = score_ab(
        lm,
        items,
        vector,
        cells,
        swap=config.swap,
        positions=config.positions,
        batch_rows=config.batch_rows,
        task=task.name,
        progress=stage_ticker(progress, "A/B grid", len(cells) * len(items) * (2 if config.swap else 1)),
    )
    summaries = [grid.summary(c) for c in range(len(cells))]
    base = summaries[0]
    floor = (1 - config.fluency_bound) * base["answer_mass"]
    width = len(cells[1:]) // max(1, len({c.layer for c in cells[1:]}))
    shift = [round(s["first_answer_share"] - base["first_answer_share"], 4) for s in summaries[1:]]
    details = {
        "unsteered": base,
        "cells": summaries[1:],
        "scores": [s["p_matching"] for s in summaries],
        "letter_shift": _rows(shift, width),
        "at_chance": at_chance(base, len(items)),
    }
    groups = [p.positive == first_answer(p) for p in items] if grid.orders == 1 else None
    per_item = [grid.item_scores(c).tolist() for c in range(len(cells))]
    mass = [s["answer_mass"] for s in summaries]
    return per_item, mass, [m >= floor for m in mass], groups, details


def metric_scores(metric: str, texts: Sequence[str]) -> list[float]:
    """Per-text scores of a generation metric (evaluation.metric_registry)."""
    scorer = get_metric(metric).scores
    if scorer is None:
        raise SweepError(f"metric '{metric}' is not scored from text")
    return scorer(texts)


def generate_grid(
    lm: LoadedModel,
    prompts: Sequence[str],
    vector: SteeringVector,
    cells: Sequence[Cell],
    *,
    chat: bool,
    max_new_tokens: int,
    batch_rows: int = 64,
    task: str | None = None,
    progress: Callable[[int], object] | None = None,
) -> list[list[str]]:
    """Greedy continuations of every prompt under every cell, many cells per generate call; [cells][prompts]."""
    ids = encode_prompts(lm, prompts, use_chat_template=chat)
    rows = [(c, p) for p in range(len(prompts)) for c in range(len(cells))]  # prompt-major: similar lengths per batch
    texts = [[""] * len(prompts) for _ in cells]
    config = GenerationConfig(max_new_tokens=max_new_tokens)
    for start in range(0, len(rows), batch_rows):
        chunk = rows[start : start + batch_rows]
        specs = []
        for layer in sorted({layer for c, _ in chunk if (layer := cells[c].layer) is not None}):
            mults = [cells[c].multiplier if cells[c].layer == layer else 0.0 for c, _ in chunk]
            specs.append(SteeringSpec(vector, mults, [layer], "all"))
        out = generate_ids(lm, [ids[p] for _, p in chunk], SpecSteering(specs), config=config, task=task)
        for (c, p), text in zip(chunk, out, strict=False):
            texts[c][p] = text
        if progress:
            progress(len(chunk))
    return texts


def _score_generation(lm, task, prompts, vector, cells, config, progress):
    """Per-text metric scores per cell; a cell is fluent when entropy, distinct-2 and repetition hold (see module)."""
    texts = generate_grid(
        lm,
        prompts,
        vector,
        cells,
        chat=task.chat,
        max_new_tokens=config.max_new_tokens,
        batch_rows=config.batch_rows,
        task=task.name,
        progress=stage_ticker(progress, "generating", len(cells) * len(prompts)),
    )
    per_item = [metric_scores(task.metric, t) for t in texts]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    entropy = [mean([weighted_ngram_entropy(x) for x in t]) for t in texts]
    distinct2 = [mean([distinct_n(x, 2) for x in t]) for t in texts]
    repetition = [mean([repetition_rate(x) for x in t]) for t in texts]
    keep = 1 - config.fluency_bound
    ok = [
        e >= keep * entropy[0] and d >= keep * distinct2[0] and r <= repetition[0] + config.fluency_bound
        for e, d, r in zip(entropy, distinct2, repetition, strict=False)
    ]
    width = len(cells[1:]) // max(1, len({c.layer for c in cells[1:]}))
    details = {
        "examples": [
            {"cell": asdict(c), "prompt": prompts[0], "text": t[0]} for c, t in zip(cells, texts, strict=False)
        ],
        "scores": [mean(x) for x in per_item],
        "distinct2": {"unsteered": round(distinct2[0], 4), "cells": _rows([round(d, 4) for d in distinct2[1:]], width)},
        "repetition": {
            "unsteered": round(repetition[0], 4),
            "cells": _rows([round(r, 4) for r in repetition[1:]], width),
        },
    }
    return per_item, entropy, ok, None, details


def recommend(result: SweepResult) -> None:
    """Per direction, the fluent cell of that sign whose effect interval lies furthest from zero on the wanted side.

    "up" takes positive values and needs an interval above zero; "down" takes negative values and needs one
    below zero. `result.recommended` holds the "up" cell as the vector's default (layer, multiplier) and both
    picks, or None when neither direction has one; a direction without a cell is "no reliable effect" in
    `result.verdict`.
    """
    floor = (1 - result.fluency_bound) * result.base_fluency
    fluent = result.fluent or [[f >= floor for f in row] for row in result.fluency]
    result.directions, result.recommended, result.note = {}, None, ""
    words = []
    for name, sign in DIRECTIONS:
        best, best_low, letter_best, letter_low = None, 0.0, None, 0.0
        for i in range(len(result.layers)):
            for j, value in enumerate(result.values):
                if sign * value <= 0 or not fluent[i][j] or not result.interval:
                    continue
                low, high = result.interval[i][j]
                wanted_low = low if sign > 0 else -high
                if sign * result.effect[i][j] < result.min_effect or wanted_low <= 0:
                    continue
                if moves_letter(result, i, j):
                    if wanted_low > letter_low:
                        letter_best, letter_low = (i, j), wanted_low
                elif wanted_low > best_low:
                    best, best_low = (i, j), wanted_low
        pick = result.directions[name] = _pick(result, *best) if best else None
        words.append(f"{name}: " + (_pick_words(result, pick) if pick else _no_effect_words(result, letter_best)))
    up, down = result.directions["up"], result.directions["down"]
    result.verdict = "; ".join(words)
    if up or down:
        result.recommended = Recommendation(
            up.layer if up else None,
            up.multiplier if up else None,
            up,
            down,
            "" if up else f"up: {NO_EFFECT}",
            result.task,
            result.split,
        )
    if not up:
        result.note = (
            f"{NO_EFFECT} steering up: no fluent positive-side cell has a 95% interval above zero and "
            f"an effect of at least {result.min_effect:g}; no default multiplier stored"
        )


def letter_shift(result: SweepResult, i: int, j: int) -> float | None:
    """The A-share change of an A/B cell against unsteered (None for generation sweeps)."""
    shifts = result.details.get("letter_shift")
    return shifts[i][j] if shifts else None


def moves_letter(result: SweepResult, i: int, j: int) -> bool:
    """An A/B cell whose A-share moved more than its behaviour: never a recommendation (it steers the letter)."""
    shift = letter_shift(result, i, j)
    return shift is not None and ab_movement(result.effect[i][j], shift, min_effect=result.min_effect) == "letter"


def _pick_words(result: SweepResult, cell: Pick) -> str:
    assert cell.interval is not None
    return (
        f"layer {cell.layer}, {_value_words(result, cell)}, {result.effect_words(cell.effect or 0.0)} "
        f"(effect {cell.effect:+.3f} [{cell.interval[0]:+.3f}, {cell.interval[1]:+.3f}])"
    )


def _no_effect_words(result: SweepResult, letter_cell: tuple[int, int] | None) -> str:
    """ "no reliable effect", naming the cell that was left out because it moved the letter, if one was."""
    if letter_cell is None:
        return NO_EFFECT
    i, j = letter_cell
    cell = _pick(result, i, j)
    return (
        f"{NO_EFFECT} (layer {cell.layer}, {_value_words(result, cell)} moves the letter rather than the "
        f"behaviour: A-share {letter_shift(result, i, j):+.3f} vs p(matching) {cell.effect:+.3f})"
    )


def _value_words(result: SweepResult, cell: Pick) -> str:
    if result.mode == "raw":
        return f"multiplier {cell.multiplier:g}"
    return f"strength {cell.value:g} (multiplier {cell.multiplier:g})"


def _pick(result: SweepResult, i: int, j: int) -> Pick:
    low, high = result.interval[i][j]
    return Pick(
        result.layers[i],
        result.multipliers[i][j],
        result.values[j],
        result.mode,
        round(result.effect[i][j], 4),
        (low, high),
        result.wrong_way[i][j] if result.wrong_way else None,
        round(result.score[i][j], 4),
        round(result.fluency[i][j], 4),
        result.fluency_bound,
    )


def save_sweep(out_dir: str | Path, result: SweepResult, vector: SteeringVector, *, overwrite: bool = False) -> Path:
    """Write vector.safetensors, sweep.json and the effect and fluency heatmaps as one folder, swapped in
    atomically (`files.write_folder`): a kill leaves the old sweep or the new one, never a mix. The folder is the
    sweep's own: an existing one is replaced as a whole, and only with `overwrite`."""
    out = Path(out_dir)
    mark = [(result.layers.index(c.layer), result.values.index(c.value)) for c in result.directions.values() if c]
    label = "raw multiplier" if result.mode == "raw" else "norm-relative strength (x layer's residual norm)"
    where = f"{result.task} on {vector.meta.model_name} ({result.split}, {result.items} items)"
    reliable = [[lo > 0 or hi < 0 for lo, hi in row] for row in result.interval] or None

    def fill(tmp: Path) -> None:
        vector.save(tmp / OUTPUT_FILES[0])
        (tmp / OUTPUT_FILES[1]).write_bytes(json.dumps(result.to_dict(), indent=1).encode())
        effect = heatmap_png(
            result.effect,
            result.layers,
            result.values,
            mark=mark,
            title=f"effect: change in {result.score_name} x task direction ({result.direction:+g})\n{where}",
            value_label=label,
            colour_label=result.metric_record().sign_words(result.direction),
            centre=0.0,
            span=0.1 * result.metric_record().span,
            passing=result.fluent or None,
            reliable=reliable,
        )
        (tmp / OUTPUT_FILES[2]).write_bytes(effect)
        fluency = heatmap_png(
            result.fluency,
            result.layers,
            result.values,
            mark=mark,
            title=f"fluency: {result.fluency_name} (unsteered {result.base_fluency:.3g})\n{where}",
            value_label=label,
            colour_label=result.fluency_name,
            passing=result.fluent or None,
        )
        (tmp / OUTPUT_FILES[3]).write_bytes(fluency)

    return write_folder(out, fill, overwrite=overwrite)
