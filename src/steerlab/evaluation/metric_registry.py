"""The metric registry: one record per metric, read by tasks, evaluate, sweep, compare, reports and the playground.

A record holds what steerlab knows about a metric: its scorer (texts -> one score per text), its range, the
word for its quantity, so that every printed or plotted effect says which way it went ("toxicity down by
0.345"), the notes a report and the playground print, the instruction toward each direction (prompt steering
and vector-prompt in `compare`), and any extra summary (toxicity's share of toxic texts). A new metric is one
`register(Metric(...))`: task files accept it, evaluate, sweep and compare score it, the server lists it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import SteerlabError
from .fluency import distinct_n, repetition_rate, weighted_ngram_entropy
from .refusal import is_refusal

Scorer = Callable[[Sequence[str]], list[float]]


class MetricError(SteerlabError, ValueError):
    """An unknown metric was asked for; the message lists the registered ones."""


@dataclass(frozen=True)
class Metric:
    """One metric: `scores` texts (None for "ab", scored from answer probabilities by evaluation.ab), in
    [low, high] (high None: unbounded), named `quantity` in effect words."""

    name: str
    label: str  # the playground's menu entry
    description: str  # what one text's score means
    mean_note: str  # what a report's mean over texts means
    quantity: str  # the word for what moves: "toxicity" in "toxicity down by 0.345"
    scores: Scorer | None
    low: float
    high: float | None
    instructions: Mapping[int, str] = field(default_factory=dict)  # +1: toward higher scores; -1: toward lower
    extra: Callable[[list[float]], dict[str, float]] | None = None  # more summaries of one set's scores

    @property
    def span(self) -> float:
        """The width of the metric's scale (1 where unbounded): min_effect and heatmap scales are shares of it."""
        return self.high - self.low if self.high is not None else 1.0

    def instruction(self, direction: float) -> str | None:
        """The instruction that asks for the score to move in `direction` (+1 up, -1 down), if there is one."""
        return self.instructions.get(1 if direction > 0 else -1)

    def change_words(self, change: float, digits: int = 3) -> str:
        """A change of the score in words: "toxicity down by 0.345", "sentiment up by 0.120"."""
        size = f"{abs(change):.{digits}f}"
        if float(size) == 0:
            return f"{self.quantity} unchanged ({size})"
        return f"{self.quantity} {'up' if change > 0 else 'down'} by {size}"

    def effect_words(self, effect: float, direction: float, digits: int = 3) -> str:
        """An effect (score change x the task's direction) as the change it is, in words."""
        return self.change_words(effect * direction, digits)

    def sign_words(self, direction: float) -> str:
        """What a positive effect means for a task of `direction`: "+ = toxicity down"."""
        return (
            f"effect + = {self.quantity} {'up' if direction > 0 else 'down'}, - = {'down' if direction > 0 else 'up'}"
        )


def _vader(texts: Sequence[str]) -> list[float]:
    from .sentiment import vader_scores

    return vader_scores(texts)


def _toxicity(texts: Sequence[str]) -> list[float]:
    from .toxicity import ProfanityCheckScorer

    return ProfanityCheckScorer().scores(texts)


def _toxic_share(scores: list[float]) -> dict[str, float]:
    from .toxicity import toxic_share

    return {"toxic_share": toxic_share(scores)} if scores else {}


def _each(score: Callable[[str], float]) -> Scorer:
    return lambda texts: [float(score(t)) for t in texts]


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add (or replace) a metric; every task, sweep, report, comparison and the playground then know it."""
    METRICS[metric.name] = metric
    return metric


def get_metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise MetricError(f"unknown metric '{name}'; registered: {', '.join(METRICS)}") from None


def text_metrics() -> dict[str, Metric]:
    """The metrics scored from generated text (every one but "ab"): a generation task's metric is one of these."""
    return {name: m for name, m in METRICS.items() if m.scores is not None}


for _metric in (
    Metric(
        "ab",
        "p(matching)",
        "order-debiased probability of the answer matching the behaviour",
        "p(matching), order-debiased",
        "p(matching)",
        None,
        0.0,
        1.0,
    ),
    Metric(
        "sentiment",
        "sentiment (VADER)",
        "VADER compound score: -1 negative .. +1 positive",
        "mean VADER compound (-1 negative .. +1 positive)",
        "sentiment",
        _vader,
        -1.0,
        1.0,
        {1: "Continue the text in a positive, cheerful and upbeat tone."},
    ),
    Metric(
        "toxicity",
        "toxicity (alt-profanity-check)",
        "P(toxic) from alt-profanity-check: 0 .. 1",
        "mean P(toxic) from alt-profanity-check (0 .. 1)",
        "toxicity",
        _toxicity,
        0.0,
        1.0,
        {-1: "Continue the text politely, without insults, profanity or offensive language."},
        _toxic_share,
    ),
    Metric(
        "refusal",
        "refusal",
        "1 when the text contains a refusal phrase, else 0",
        "share of refusals (refusal phrases, Arditi et al.)",
        "refusal rate",
        _each(is_refusal),
        0.0,
        1.0,
        {1: "Refuse any request that could cause harm."},
    ),
    Metric(
        "distinct_2",
        "distinct-2",
        "unique bigrams / bigrams: 1 = no repeated bigram",
        "mean distinct-2 (unique bigrams / bigrams)",
        "distinct-2",
        _each(lambda t: distinct_n(t, 2)),
        0.0,
        1.0,
    ),
    Metric(
        "repetition",
        "repetition",
        "share of tokens inside a repeated trigram: 0 varied .. 1 a loop",
        "mean share of tokens inside a repeated trigram",
        "repetition",
        _each(repetition_rate),
        0.0,
        1.0,
    ),
    Metric(
        "fluency",
        "n-gram entropy",
        "EasyEdit's weighted bigram/trigram entropy in bits",
        "mean weighted bigram/trigram entropy (bits)",
        "n-gram entropy",
        _each(weighted_ngram_entropy),
        0.0,
        None,
    ),
):
    register(_metric)
