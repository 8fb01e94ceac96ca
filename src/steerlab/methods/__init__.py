"""Steering methods: each module has a typed config and fit(lm, data, config, task=) -> a steer.

The registry maps the name used on the command line (`--method NAME`) to the method's config class
and fit function; a new method is one module and one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import build_config
from ..data import ContrastiveDataset, load_pairs
from ..errors import UsageError
from ..models import LoadedModel
from . import bipo, caa, lm_steer, pca, prompt, vector_prompt


@dataclass(frozen=True)
class Method:
    name: str
    config_cls: type[Any]  # a config dataclass
    fit: Callable[..., Any]
    summary: str
    # What fit's `progress` counts, so a progress bar's total matches it: pairs unless the method says otherwise.
    progress_unit: str = "pair"
    progress_total: Callable[[int, Any], int] = lambda pairs, config: pairs
    needs_data: bool = True
    kind: str = "vector"  # the kind of steer fit returns (steerlab.steers)


METHODS: dict[str, Method] = {
    "caa": Method("caa", caa.CAAConfig, caa.fit, "mean difference of residual activations (recommended default)"),
    "pca": Method(
        "pca", pca.PCAConfig, pca.fit, "first principal component of contrastive activations (RepE / repeng)"
    ),
    "prompt": Method(
        "prompt",
        prompt.PromptConfig,
        prompt.fit,
        "an instruction added to every prompt (no vector)",
        "pair",
        lambda pairs, config: 0,
        needs_data=False,
        kind="prompt",
    ),
    "vector_prompt": Method(
        "vector_prompt",
        vector_prompt.VectorPromptConfig,
        vector_prompt.fit,
        "an instruction distilled into a vector: its mean shift of the residual stream",
        "example",
        lambda pairs, config: 2 * pairs,
    ),
    "bipo": Method(
        "bipo",
        bipo.BiPOConfig,
        bipo.fit,
        "a vector trained by a bidirectional preference objective (BiPO): +v prefers the positive answer, -v the negative",
        "pair",
        lambda pairs, config: config.epochs * (pairs - bipo.held_out_count(pairs, config.val_fraction)),
    ),
    "lm_steer": Method(
        "lm_steer",
        lm_steer.LMSteerConfig,
        lm_steer.fit,
        "trained low-rank map of the output embeddings (LM-Steer)",
        "step",
        lambda pairs, config: config.steps,
        kind="lm_steer",
    ),
}


def get_method(name: str) -> Method:
    """Look up a method by its command-line name, with the list of known ones in the error."""
    try:
        return METHODS[name]
    except KeyError:
        raise UsageError(f"unknown method '{name}'; available: {', '.join(METHODS)}") from None


def fit(
    lm: LoadedModel,
    data: ContrastiveDataset | str | Path | None = None,
    method: str = "caa",
    *,
    task: str = "",
    config: Any = None,
    progress: Callable[[int], object] | None = None,
    **values: Any,
) -> Any:
    """Fit a steer with any registered method: `steerlab.fit(lm, pairs, "caa", layers=[15])`.

    `data` is a dataset or a pairs file; the method's config is `config` (an instance) or built from the
    keyword arguments, checked like a YAML config (an unknown key is an error naming the allowed ones).
    """
    spec = get_method(method)
    if config is not None and values:
        raise TypeError("give the method's settings as a config object or as keyword arguments, not both")
    if config is None:
        config = build_config(spec.config_cls, values, f"{method} config")
    if isinstance(data, (str, Path)):
        data = load_pairs(data)
    if data is None:
        if spec.needs_data:
            raise UsageError(f"method {method} needs contrastive pairs: give a dataset or a pairs file")
        data = ContrastiveDataset([], "no examples", "")
    return spec.fit(lm, data, config, task=task, progress=progress)
