"""The metrics the playground can chart across multipliers: every text metric of evaluation.metric_registry."""

from __future__ import annotations

from typing import Any

from ..evaluation.metric_registry import Metric, text_metrics


def get(name: str) -> Metric | None:
    return text_metrics().get(name)


def names() -> list[str]:
    return list(text_metrics())


def describe() -> list[dict[str, Any]]:
    return [
        {"id": name, "label": m.label, "description": m.description, "min": m.low, "max": m.high}
        for name, m in text_metrics().items()
    ]
