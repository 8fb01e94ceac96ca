"""Reasoning-length tasks: maths word problems, answered at some length, scored for the answer and the tokens spent.

A steer for how long a model reasons is only worth its tokens if the answers stay right, so every arm is scored
on both: accuracy (the final number, read by evaluation.answers and compared exactly) and generated tokens
(mean, median and the share that ran into the token limit), with fluency beside them (distinct-2, repetition: a
looping chain of thought is the usual failure). Effects on tokens and accuracy carry paired bootstrap 95%
intervals against the unsteered model on the same problems. Every arm is asked with the same instruction; the
prompt baselines ask instead for step-by-step thinking or a direct answer, scored the same way.

Contrast pairs come from worked solutions (GSM8K's, with its `<<48/2=24>>` calculator notes removed): the same
question answered with the worked steps (positive: longer) and with the final answer alone (negative).
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..data import ContrastiveDataset, ContrastivePair, pairs_dataset
from ..errors import SteerlabError
from ..files import write_text_files
from ..generation import GenerationConfig, encode_prompts
from ..models import LoadedModel
from ..steering import LengthBudget, SpecSteering, SteeringSpec
from ..textio import loads, read_text
from ..vector import SteeringVector
from .answers import final_number
from .fluency import distinct_n, repetition_rate
from .progress import Progress, stage_ticker
from .report import Arm, EvalRun, generate_arms
from .stats import Interval, paired_interval

INSTRUCTION = "Solve the problem step by step, then give the final answer as a number."
BASELINES = {
    "prompt: think step by step": "Think step by step and explain every step in detail, then give the final answer "
    "as a number.",
    "prompt: answer directly": "Give only the final answer as a number.",
}
_CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")
_FINAL_LINE = re.compile(r"\n?####\s*(.+?)\s*$")


class ReasoningError(SteerlabError, ValueError):
    """A maths file or a reasoning evaluation cannot be used as given; the message names the problem and the fix."""


@dataclass(frozen=True)
class MathItem:
    """One problem: its question, the exact answer, and a worked solution where the set has one."""

    question: str
    answer: Decimal
    solution: str = ""


def read_math_items(path: str | Path) -> list[MathItem]:
    """Problems from a JSONL file of {"question": ..., "answer": ...} records (GSM8K's layout): the answer is a
    number or a worked solution ending in one ("... #### 72"); each must give a number."""
    path = Path(path)
    items = []
    for lineno, line in enumerate(read_text(path, ReasoningError).split("\n"), start=1):
        if not line.strip():
            continue
        record = loads(line, str(path), ReasoningError, line=lineno)
        question = record.get("question") if isinstance(record, dict) else None
        answer = record.get("answer") if isinstance(record, dict) else None
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        if not isinstance(question, str) or not question.strip() or not isinstance(answer, str):
            raise ReasoningError(
                f'{path}: line {lineno}: needs "question" (a non-empty string) and "answer" (a number, or a '
                'worked solution ending in one, e.g. "... #### 72")'
            )
        number = final_number(answer)
        if number is None:
            raise ReasoningError(f"{path}: line {lineno}: the answer {answer[-60:]!r} gives no number")
        items.append(MathItem(question.strip(), number, answer if answer.strip() != str(number) else ""))
    if not items:
        raise ReasoningError(f"{path}: no problems in the file")
    return items


def split_of(index: int) -> str:
    """Which split a problem of a single file belongs to: every 10th is test, every 10th from the 6th val, the rest
    fit (the contrast pairs); fixed by position, so a result names its problems."""
    return "test" if index % 10 == 0 else "val" if index % 10 == 5 else "fit"


def worked_solution(item: MathItem) -> str:
    """The worked solution as a model would write it: calculator notes removed, the last line in words."""
    if not item.solution:
        raise ReasoningError(f"the problem {item.question[:60]!r} has no worked solution to contrast with")
    steps = _CALCULATOR_NOTE.sub("", item.solution)
    return _FINAL_LINE.sub(lambda _: f"\nThe answer is {_number(item.answer)}.", steps).strip()


def short_answer(item: MathItem) -> str:
    return f"The answer is {_number(item.answer)}."


def math_prompt(item: MathItem, instruction: str = INSTRUCTION) -> str:
    return f"{item.question}\n{instruction}"


def length_pairs(items: Sequence[MathItem], name: str) -> ContrastiveDataset:
    """Contrast pairs for reasoning length: each question answered with its worked steps (positive, longer) and
    with the final answer alone (negative, shorter), both after the same instruction."""
    pairs = [ContrastivePair(math_prompt(item), worked_solution(item), short_answer(item)) for item in items]
    return pairs_dataset(pairs, name)


@dataclass
class ArmResult:
    """One arm's per-problem results and summary; `effects` holds the tokens and accuracy change against
    unsteered, with 95% intervals (absent for the unsteered arm itself)."""

    label: str
    correct: list[bool]
    tokens: list[int]
    texts: list[str]
    max_new_tokens: int
    effects: dict[str, Interval] = field(default_factory=dict)
    budget: int | None = None  # a length budget to report against: the share of answers within it

    def summary(self) -> dict[str, float]:
        out = {
            "accuracy": _share(self.correct),
            "tokens_mean": statistics.fmean(self.tokens),
            "tokens_median": float(statistics.median(self.tokens)),
            "limit_share": _share([n >= self.max_new_tokens for n in self.tokens]),
            "distinct_2": statistics.fmean(distinct_n(t, 2) for t in self.texts),
            "repetition": statistics.fmean(repetition_rate(t) for t in self.texts),
        }
        if self.budget is not None:
            out["within_budget"] = _share([n <= self.budget for n in self.tokens])
        return out

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, **{k: round(v, 4) for k, v in self.summary().items()}}
        for name, iv in self.effects.items():
            out[f"{name}_change"] = [round(iv.mean, 4), round(iv.low, 4), round(iv.high, 4)]
        return out


def score_arm(
    label: str,
    items: Sequence[MathItem],
    texts: Sequence[str],
    lengths: Sequence[int],
    max_new_tokens: int,
    budget: int | None = None,
) -> ArmResult:
    correct = [final_number(t) == item.answer for t, item in zip(texts, items, strict=True)]
    return ArmResult(label, correct, list(lengths), list(texts), max_new_tokens, budget=budget)


def evaluate_reasoning(
    lm: LoadedModel,
    items: Sequence[MathItem],
    arms: Sequence[Arm],
    *,
    config: GenerationConfig,
    baselines: bool = True,
    budget: int | None = None,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> list[ArmResult]:
    """Unsteered, each arm (steers at their row scales) and, with `baselines`, the two prompt baselines, all on
    the same problems in shared batches; each scored for accuracy, tokens and fluency, with paired intervals,
    and with a `budget` (tokens) the share of answers within it, so a budget's cost and success read together."""
    if not items:
        raise ReasoningError("no problems to evaluate")
    prompts = [math_prompt(item) for item in items]
    every = list(arms)
    if baselines:
        for label, instruction in BASELINES.items():
            ids = encode_prompts(lm, [math_prompt(item, instruction) for item in items])
            every.append(Arm(label, prompt_ids=ids))
    tick = stage_ticker(progress, "problems", len(items))
    run: EvalRun = generate_arms(lm, prompts, every, config=config, batch_size=batch_size, progress=tick)
    base = score_arm("unsteered", items, run.original, run.original_lengths, config.max_new_tokens, budget)
    results = [base]
    for cond in run.conditions:
        arm = score_arm(cond.label, items, cond.texts, cond.lengths, config.max_new_tokens, budget)
        arm.effects = {
            "tokens": paired_interval([float(n) for n in arm.tokens], [float(n) for n in base.tokens]),
            "accuracy": paired_interval([float(c) for c in arm.correct], [float(c) for c in base.correct]),
        }
        results.append(arm)
    return results


def reasoning_table(results: Sequence[ArmResult]) -> str:
    """A Markdown table of every arm: accuracy and tokens with their changes against unsteered, the share within
    the budget where one is reported, and fluency."""
    budget = results[0].budget if results else None
    within = f" within {budget} tokens |" if budget is not None else ""
    lines = [
        "| arm | accuracy | change [95% interval] | tokens mean / median | change [95% interval] | hit the limit |"
        f"{within} distinct-2 | repetition |",
        "|---|---|---|---|---|---|" + ("---|" if budget is not None else "") + "---|---|",
    ]
    for arm in results:
        s = arm.summary()
        acc, tok = arm.effects.get("accuracy"), arm.effects.get("tokens")
        share = f" {s['within_budget']:.0%} |" if budget is not None else ""
        lines.append(
            f"| {arm.label} | {s['accuracy']:.2f} | {_interval(acc, '+.2f')} | {s['tokens_mean']:.0f} / "
            f"{s['tokens_median']:.0f} | {_interval(tok, '+.0f')} | {s['limit_share']:.0%} |{share} "
            f"{s['distinct_2']:.3f} | {s['repetition']:.3f} |"
        )
    return "\n".join(lines)


def _interval(iv: Interval | None, fmt: str) -> str:
    return "" if iv is None else f"{iv.mean:{fmt}} [{iv.low:{fmt}}, {iv.high:{fmt}}]"


def _share(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


def _number(value: Decimal) -> str:
    """A number as a person writes it: 72, 0.5, -3 (no exponent, no trailing zeros)."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def strength_arms(
    vector: SteeringVector,
    values: Sequence[float],
    *,
    raw: bool = False,
    layers: Sequence[int] | dict[int, float] | None = None,
    positions: str = "all",
    budget: LengthBudget | None = None,
) -> list[Arm]:
    """One arm per strength (or raw multiplier) of a vector, each with the same layers, positions and budget."""
    if not values:
        raise ReasoningError("no strengths to evaluate; give at least one, e.g. -0.1,0.1")
    arms = []
    for value in values:
        spec = SteeringSpec(
            vector,
            multiplier=value if raw else None,
            strength=None if raw else value,
            layers=layers,
            positions=positions,
            budget=budget,
        )
        label = f"{'x' if raw else 'strength '}{value:+g}" + (f", budget {budget.tokens}" if budget else "")
        arms.append(Arm(label, SpecSteering(spec), 1.0))
    return arms


@dataclass
class ReasoningReport:
    """A reasoning evaluation: its settings and every arm's results; saved as a report folder."""

    settings: dict[str, Any]
    results: list[ArmResult]
    items: list[MathItem]

    def markdown(self) -> str:
        s = self.settings
        return (
            f"# {s['task']}: {s['items']} problems ({s['split']}), {s['max_new_tokens']} tokens at most\n\n"
            f"{reasoning_table(self.results)}\n"
        )

    def to_json(self) -> dict[str, Any]:
        return {"settings": self.settings, "arms": [arm.to_json() for arm in self.results]}

    def samples(self) -> list[dict[str, Any]]:
        return [
            {
                "question": item.question,
                "answer": _number(item.answer),
                **{arm.label: {"text": arm.texts[i], "correct": arm.correct[i], "tokens": arm.tokens[i]}
                   for arm in self.results},
            }
            for i, item in enumerate(self.items)
        ]  # fmt: skip

    def save(self, folder: str | Path, *, overwrite: bool = False) -> Path:
        """report.json, summary.md and samples.jsonl, written as one folder (files.write_text_files)."""
        return write_text_files(
            folder,
            {
                "report.json": json.dumps(self.to_json(), indent=2) + "\n",
                "summary.md": self.markdown(),
                "samples.jsonl": "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in self.samples()),
            },
            overwrite=overwrite,
        )
