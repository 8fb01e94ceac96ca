"""Steering operators: plain functions (hidden, direction, coefficient) -> hidden.

`hidden` is a block's output [rows, tokens, d], `direction` one layer's vector [d] in the same dtype, and
`coefficient` a [rows, 1, 1] tensor (or a number) of per-row strengths. steering.py decides which rows
and positions an operator touches; everything else keeps its hidden state bit for bit. A new operator is
a new function and one entry in OPERATORS.
"""

from __future__ import annotations

from typing import Callable

import torch

Operator = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def add(hidden: torch.Tensor, direction: torch.Tensor, coefficient: torch.Tensor) -> torch.Tensor:
    """Activation addition (CAA, ActAdd): hidden + coefficient * direction."""
    return hidden + coefficient * direction


OPERATORS: dict[str, Operator] = {"add": add}


def get_operator(name: str) -> Operator:
    """The operator called `name`, or an error listing the known ones."""
    try:
        return OPERATORS[name]
    except KeyError:
        raise ValueError(f"unknown operator '{name}'; available: {', '.join(OPERATORS)}") from None
