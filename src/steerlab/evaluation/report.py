"""Evaluation runs and their report folders: steered beside original in one batch, scored for effect and fluency.

A run generates every prompt unsteered and at each multiplier in the same batched calls (the original
rows ride with row scale 0), then scores each set of texts with the task's metric, n-gram fluency
measures, and perplexity under the unsteered model. A report folder holds report.json (every number
and its settings), summary.md (a table and a few samples) and samples.jsonl (every prompt side by side).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import OutputExistsError, UsageError
from ..files import write_text_files
from ..generation import GenerationConfig, encode_prompts, end_token_ids, generate_tokens
from ..models import LoadedModel
from ..steering import Steer
from ..version import __version__
from .fluency import distinct_n, repetition_rate, weighted_ngram_entropy
from .metric_registry import get_metric
from .perplexity import continuation_losses, corpus_perplexity
from .stats import paired_interval

if TYPE_CHECKING:
    from ..methods.prompt import PromptSteering

SAMPLES_IN_SUMMARY = 5


@dataclass
class Condition:
    """One steered setting of a run: its label, multiplier (None for prompt steering) and generated texts."""

    label: str
    multiplier: float | None
    texts: list[str]
    lengths: list[int] = field(default_factory=list)  # generated tokens per text, its end-of-text token not counted


@dataclass
class EvalRun:
    """The prompts, their unsteered originals, and each steered condition's texts, in prompt order."""

    prompts: list[str]
    original: list[str]
    conditions: list[Condition]
    seconds: float = 0.0
    original_lengths: list[int] = field(default_factory=list)


@dataclass
class Arm:
    """One steered setting to generate: a steer applied at `multiplier` (its row scale), or other prompt tokens.

    Prompt steering is an arm with `prompt_ids` (the prompts with the instruction) and no steer.
    """

    label: str
    steer: Steer | None = None
    multiplier: float | None = None
    prompt_ids: list[list[int]] | None = None


class _RowSteers:
    """Several steers on one batch, each with its own per-row scale (0 on the rows of other arms)."""

    kind = "combined"

    def __init__(self, parts: list[tuple[Steer, torch.Tensor]]):
        self.parts = parts

    def attach(
        self,
        lm: LoadedModel,
        *,
        row_scale: torch.Tensor | None = None,
        prompt_lengths: torch.Tensor | None = None,
        task: str | None = None,
    ) -> _Handles:
        handles = _Handles()
        try:
            for steer, scale in self.parts:
                handles.items.append(steer.attach(lm, row_scale=scale, prompt_lengths=prompt_lengths, task=task))
        except BaseException:
            handles.remove()
            raise
        return handles


class _Handles:
    def __init__(self) -> None:
        self.items: list[Any] = []

    def remove(self) -> None:
        for handle in self.items:
            handle.remove()
        self.items = []

    def __enter__(self) -> _Handles:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def generate_arms(
    lm: LoadedModel,
    prompts: Sequence[str],
    arms: Sequence[Arm],
    *,
    config: GenerationConfig,
    batch_size: int = 16,
    use_chat_template: bool | None = None,
    task: str | None = None,
    progress: Callable[[int], object] | None = None,
) -> EvalRun:
    """Generate every prompt unsteered and under every arm, all rows of a prompt chunk in one batched call.

    The original rows carry scale 0 for every steer, so they are the unsteered model in the same forward
    passes. Each steer is attached once per call with its own per-row scale, so vectors, LM-Steer and
    prompt steering can share a batch. `batch_size` counts rows per call.
    """
    if not arms:
        raise UsageError("nothing to evaluate: no steered settings")
    started = datetime.now(timezone.utc)
    plain = encode_prompts(lm, prompts, use_chat_template=use_chat_template)
    sources = [plain] + [arm.prompt_ids if arm.prompt_ids is not None else plain for arm in arms]
    if any(len(ids) != len(prompts) for ids in sources):
        raise UsageError("an arm's prompt_ids must have one row per prompt")
    k = len(sources)
    per_call = max(1, batch_size // k)
    steers: list[Steer] = []
    for arm in arms:
        if arm.steer is not None and all(arm.steer is not s for s in steers):
            steers.append(arm.steer)
    end_ids = end_token_ids(lm)
    texts: list[list[str]] = [[] for _ in range(k)]
    lengths: list[list[int]] = [[] for _ in range(k)]
    for start in range(0, len(prompts), per_call):
        n = min(per_call, len(prompts) - start)
        rows = [ids for src in sources for ids in src[start : start + n]]
        parts = []
        for steer in steers:
            scale = [0.0] * n + [
                float(arm.multiplier if arm.multiplier is not None else 1.0) if arm.steer is steer else 0.0
                for arm in arms
                for _ in range(n)
            ]
            parts.append((steer, torch.tensor(scale)))
        # Every row of one prompt samples with the same seed, so its texts differ only by steering.
        seeds = [config.seed + start + i for i in range(n)] * k if config.seed is not None else None
        row_steers = _RowSteers(parts) if parts else None
        new = generate_tokens(lm, rows, row_steers, config=config, task=task, row_seeds=seeds)
        out = lm.tokenizer.batch_decode(new, skip_special_tokens=True)
        counts = generated_lengths(new, end_ids)
        for j in range(k):
            texts[j].extend(out[j * n : (j + 1) * n])
            lengths[j].extend(counts[j * n : (j + 1) * n])
        if progress:
            progress(n)
    seconds = (datetime.now(timezone.utc) - started).total_seconds()
    conditions = [Condition(arm.label, arm.multiplier, texts[j + 1], lengths[j + 1]) for j, arm in enumerate(arms)]
    return EvalRun(list(prompts), texts[0], conditions, seconds, lengths[0])


def generated_lengths(new: torch.Tensor, end_ids: Sequence[int]) -> list[int]:
    """Tokens each row generated before it ended (an end-of-text token, or the padding after one); a row that
    never ended generated them all (it hit the limit)."""
    ended = torch.isin(new, torch.tensor(list(end_ids), dtype=new.dtype))
    first = torch.where(ended.any(1), ended.int().argmax(1), torch.full((new.shape[0],), new.shape[1]))
    return first.tolist()


def multiplier_arms(steer: Steer, multipliers: Sequence[float]) -> list[Arm]:
    """One arm per multiplier of a single steer, labelled x4, x-2, ..."""
    if not multipliers:
        raise UsageError("no multipliers to evaluate; give at least one, e.g. 4")
    return [Arm(f"x{m:g}", steer, float(m)) for m in multipliers]


def prompt_arm(
    lm: LoadedModel,
    steering: PromptSteering,
    prompts: Sequence[str],
    *,
    use_chat_template: bool | None = None,
    label: str = "prompt",
) -> Arm:
    """Prompt steering as an arm: the prompts with the instruction, encoded as generation encodes prompts."""
    chat = bool(lm.use_chat_template if use_chat_template is None else use_chat_template)
    texts = [steering.prompt_text(lm.tokenizer, p, use_chat_template=chat) for p in prompts]
    return Arm(label, prompt_ids=[lm.tokenizer(t, add_special_tokens=not chat)["input_ids"] for t in texts])


def score_texts(
    lm: LoadedModel,
    prompts: Sequence[str],
    texts: Sequence[str],
    metric: str,
    *,
    use_chat_template: bool | None = None,
    batch_size: int = 16,
    scores: Sequence[float] | None = None,
) -> dict[str, float]:
    """Behaviour (the metric's mean and its extra summaries), fluency and diversity of one set of continuations,
    and their perplexity under the unsteered model. `scores`: the texts' metric scores where already computed."""
    record = get_metric(metric)
    if scores is None:
        scores = item_scores(texts, metric)
    out = {
        "behaviour": _mean(scores),
        "fluency_entropy": _mean([weighted_ngram_entropy(t) for t in texts]),
        "distinct_2": _mean([distinct_n(t, 2) for t in texts]),
        "repetition": _mean([repetition_rate(t) for t in texts]),
        "perplexity": corpus_perplexity(
            continuation_losses(lm, prompts, texts, batch_size=batch_size, use_chat_template=use_chat_template)
        ),
        "empty_share": _mean([0.0 if t.strip() else 1.0 for t in texts]),
    }
    if record.extra is not None:
        out.update(record.extra(list(scores)))
    return out


def score_run(
    lm: LoadedModel,
    run: EvalRun,
    metric: str,
    direction: float = 1.0,
    *,
    use_chat_template: bool | None = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Scores of the original and every condition; `effect` is the behaviour change times the task's direction,
    `interval` its paired bootstrap 95% interval over the prompts (stats.paired_interval)."""
    base = item_scores(run.original, metric)
    original = score_texts(
        lm, run.prompts, run.original, metric, use_chat_template=use_chat_template, batch_size=batch_size, scores=base
    )
    conditions = []
    for cond in run.conditions:
        items = item_scores(cond.texts, metric)
        scores = score_texts(
            lm,
            run.prompts,
            cond.texts,
            metric,
            use_chat_template=use_chat_template,
            batch_size=batch_size,
            scores=items,
        )
        delta = scores["behaviour"] - original["behaviour"]
        interval = paired_interval(items, base).signed(direction)
        conditions.append(
            {
                "label": cond.label,
                "multiplier": cond.multiplier,
                "scores": scores,
                "delta": delta,
                "effect": delta * direction,
                "interval": [interval.low, interval.high],
            }
        )
    return {"original": original, "conditions": conditions}


def item_scores(texts: Sequence[str], metric: str) -> list[float]:
    """The metric's score of each text (a metric not scored from text is refused)."""
    record = get_metric(metric)
    if record.scores is None:
        raise UsageError(f"metric '{metric}' is not scored from text")
    return list(record.scores(texts))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


# ---- report folder -----------------------------------------------------------------------------------


@dataclass
class Report:
    """Everything a report folder holds: settings, scores, and the texts."""

    settings: dict[str, Any]
    scores: dict[str, Any]
    run: EvalRun
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def to_json(self) -> dict[str, Any]:
        return {
            "steerlab_version": __version__,
            "created": self.created,
            "settings": self.settings,
            "seconds": round(self.run.seconds, 2),
            **_finite(self.scores),
        }

    def samples(self) -> list[dict[str, Any]]:
        return [
            {
                "prompt": p,
                "original": self.run.original[i],
                "steered": {c.label: c.texts[i] for c in self.run.conditions},
            }
            for i, p in enumerate(self.run.prompts)
        ]


def _finite(value: Any) -> Any:
    """NaN is not JSON; write it as null (e.g. perplexity when every continuation is empty)."""
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 6)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


SCORE_COLUMNS = (
    ("behaviour", "{:+.3f}"),
    ("fluency_entropy", "{:.2f}"),
    ("distinct_2", "{:.2f}"),
    ("repetition", "{:.2f}"),
    ("perplexity", "{:.1f}"),
)


def summary_markdown(report: Report) -> str:
    """A readable summary: what ran, a table of every condition beside the original, and a few samples."""
    s = report.settings
    lines = [
        f"# steerlab eval: {s['task']['name']} on {s['model']['name']}",
        "",
        f"- steer: {s['steer']['description']}",
        f"- prompts: {len(report.run.prompts)} ({s['task'].get('split', 'test')} split), "
        f"{s['generation']['max_new_tokens']} new tokens, "
        f"{'sampled' if s['generation']['do_sample'] else 'greedy'}; original and steered rows in the same batches",
        f"- behaviour: {get_metric(s['task']['metric']).mean_note}; the task wants it to "
        f"{'rise' if s['task']['direction'] > 0 else 'fall'} with positive multipliers",
        "- fluency: weighted bigram/trigram entropy (bits, higher = more varied), distinct-2, repetition "
        "(share of tokens in repeated trigrams), perplexity of the continuations under the unsteered model",
        "",
        "| setting | " + " | ".join(name for name, _ in SCORE_COLUMNS) + " | change |",
        "|---|" + "---|" * (len(SCORE_COLUMNS) + 1),
    ]
    lines.append(_row("original", report.scores["original"], ""))
    metric = get_metric(s["task"]["metric"])
    for cond in report.scores["conditions"]:
        lines.append(_row(cond["label"], cond["scores"], metric.change_words(cond["delta"])))
    lines += [
        "",
        f"## Samples (first {min(SAMPLES_IN_SUMMARY, len(report.run.prompts))} of {len(report.run.prompts)}; "
        "all in samples.jsonl)",
        "",
    ]
    for sample in report.samples()[:SAMPLES_IN_SUMMARY]:
        lines.append(f"**Prompt:** {_inline(sample['prompt'])}")
        lines.append("")
        lines.append(f"- original: {_inline(sample['original'])}")
        for label, text in sample["steered"].items():
            lines.append(f"- {label}: {_inline(text)}")
        lines.append("")
    return "\n".join(lines)


def _row(label: str, scores: dict[str, float], change: str) -> str:
    cells = ["n/a" if math.isnan(scores[name]) else fmt.format(scores[name]) for name, fmt in SCORE_COLUMNS]
    return f"| {label} | " + " | ".join(cells) + f" | {change} |"


def _inline(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|") or "(empty)"


def write_report(folder: str | os.PathLike, report: Report, *, overwrite: bool = False) -> Path:
    """Write report.json, summary.md and samples.jsonl as one folder, swapped in atomically (`files.write_folder`)."""
    files = {
        "report.json": json.dumps(report.to_json(), indent=2) + "\n",
        "summary.md": summary_markdown(report) + "\n",
        "samples.jsonl": "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in report.samples()),
    }
    check_free(Path(folder), overwrite)
    return write_text_files(folder, files, overwrite=overwrite)


def check_free(folder: Path, overwrite: bool) -> None:
    """Refuse an existing report folder unless asked to replace it; call before spending time on generation."""
    if folder.exists() and not overwrite:
        raise OutputExistsError(f"{folder} already exists; choose another --out or pass --overwrite")
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"{folder} exists and is not a folder; choose another --out")
