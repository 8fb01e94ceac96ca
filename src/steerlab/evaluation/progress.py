"""Progress for long evaluation steps: one callback, progress(stage, done, total), for sweep, evaluate and compare."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, int], None]


def stage_ticker(progress: Progress | None, stage: str, total: int) -> Callable[[int], object] | None:
    """A per-step counter (tick(n) after n more items) that reports progress(stage, done, total)."""
    if progress is None:
        return None
    done = [0]
    progress(stage, 0, total)

    def tick(n: int) -> None:
        done[0] += n
        progress(stage, done[0], total)

    return tick
