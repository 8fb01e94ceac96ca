"""steerlab on vLLM: a general plugin (entry point group `vllm.general_plugins`), not a fork.

With `pip install 'steerlab[vllm]'` every vLLM process loads `register()`. Requests then carry their own
steering in `SamplingParams.extra_args["steerlab"]` (OpenAI clients: `extra_body={"vllm_xargs":
{"steerlab": json.dumps({...})}}`), naming steers in the folder `$STEERLAB_VLLM_STEERS`. See
docs/architecture.md ("vLLM plugin") for how a step is steered and what happens under TP and PP.
"""

from __future__ import annotations

from .library import STEERS_ENV, SteerLibrary
from .request import KEY, SteeringRequestError

__all__ = ["KEY", "STEERS_ENV", "SteerLibrary", "SteeringRequestError", "register"]


def register() -> None:
    """vLLM's entry point: patch this process's front end and model runner (idempotent)."""
    from .plugin import install

    install()
