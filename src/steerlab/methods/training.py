"""What trained methods (LM-Steer, BiPO) share: frozen base weights, the LM head's inputs, logits from them.

Training never needs the model's full [rows, tokens, vocab] logits: the forward stops at the LM head, whose
input (the final hidden state) is captured, and only the positions whose loss counts go through the head.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..models import LoadedModel


@contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """Turn off gradients for every base parameter for the duration, then restore each one's flag."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class _StopForward(Exception):
    """Raised by the hook on the LM head: training needs the head's input, not the model's logits."""


def head_inputs(lm: LoadedModel, **inputs: torch.Tensor | bool) -> torch.Tensor:
    """The LM head's input [rows, tokens, hidden] for one forward of the model; the head itself never runs."""
    captured: list[torch.Tensor] = []

    def grab(module: torch.nn.Module, args: tuple) -> None:
        captured.append(args[0])
        raise _StopForward

    handle = lm.model.get_output_embeddings().register_forward_pre_hook(grab)
    try:
        lm.model(**inputs)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured[0]


def head_logits(lm: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    """Float32 logits of final hidden states [..., hidden], with the model's logit soft-cap (Gemma) applied."""
    config = lm.model.config.get_text_config() if hasattr(lm.model.config, "get_text_config") else lm.model.config
    softcap = getattr(config, "final_logit_softcapping", None)
    logits = lm.model.get_output_embeddings()(hidden).float()
    return softcap * torch.tanh(logits / softcap) if softcap else logits
