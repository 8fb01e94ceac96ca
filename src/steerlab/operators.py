"""Steering operators: plain functions (hidden, direction, coefficient) -> hidden.

`hidden` is a block's output [rows, tokens, d], `direction` one layer's vector [d] in the same dtype, and
`coefficient` a [rows, 1, 1] tensor (or a number) of per-row strengths. steering.py decides which rows
and positions an operator touches; everything else keeps its hidden state bit for bit. A new operator is
a new function and one entry in OPERATORS. What the coefficient means is the operator's own: a strength
for `add`, a target projection for `clamp`, an angle in degrees for `rotate`; `ablate` ignores it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .errors import UsageError

Operator = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def add(hidden: torch.Tensor, direction: torch.Tensor, coefficient: torch.Tensor) -> torch.Tensor:
    """Activation addition (CAA, ActAdd): hidden + coefficient * direction."""
    return hidden + coefficient * direction


def unit(direction: torch.Tensor) -> torch.Tensor:
    """The direction scaled to length 1 (computed in at least float32, returned in its dtype)."""
    d = direction.float() if direction.dtype in (torch.float16, torch.bfloat16) else direction
    norm = d.norm()
    if not bool(norm > 0):
        raise UsageError("a zero direction has no component to ablate, clamp or rotate")
    return (d / norm).to(direction.dtype)


def project(hidden: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Each token's scalar component along the unit direction: [rows, tokens, 1]."""
    return component(hidden, unit(direction))


def component(hidden: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Each token's scalar component along the unit vector `u` (one, or one per token): [..., 1]."""
    return (hidden * u).sum(-1, keepdim=True)


def ablate(hidden: torch.Tensor, direction: torch.Tensor, coefficient: torch.Tensor) -> torch.Tensor:
    """Directional ablation (Arditi et al. 2024): remove the component along the direction; coefficient unused."""
    return ablate_unit(hidden, unit(direction), coefficient)


def clamp(hidden: torch.Tensor, direction: torch.Tensor, coefficient: torch.Tensor) -> torch.Tensor:
    """Set the component along the unit direction to `coefficient` (0 is ablation); the rest is unchanged."""
    return clamp_unit(hidden, unit(direction), coefficient)


def rotate(hidden: torch.Tensor, direction: torch.Tensor, coefficient: torch.Tensor) -> torch.Tensor:
    """Angular steering: rotate by `coefficient` degrees in the plane of the direction and the activation.

    Norm-preserving; 0 degrees is the identity and 180 flips the component along the direction (a turn
    by 180 degrees in that plane maps the activation to its negative). Positive angles turn the activation
    towards the direction. A token parallel to the direction has no plane and is left as it is.
    """
    return rotate_unit(hidden, unit(direction), coefficient)


# The same operators given the unit direction, which may also be one per token ([tokens, d] beside hidden
# [tokens, d]): the vLLM workers gather each token's direction from a table and share this arithmetic.


def ablate_unit(hidden: torch.Tensor, u: torch.Tensor, coefficient: torch.Tensor) -> torch.Tensor:
    return hidden - component(hidden, u) * u


def clamp_unit(hidden: torch.Tensor, u: torch.Tensor, coefficient: torch.Tensor) -> torch.Tensor:
    return hidden + (coefficient - component(hidden, u)) * u


def rotate_unit(hidden: torch.Tensor, u: torch.Tensor, coefficient: torch.Tensor) -> torch.Tensor:
    work = hidden.float() if hidden.dtype in (torch.float16, torch.bfloat16) else hidden
    u = u.to(work.dtype)
    along = component(work, u)
    ortho = work - along * u
    ortho_norm = ortho.norm(dim=-1, keepdim=True)
    v = ortho / ortho_norm.clamp(min=torch.finfo(work.dtype).tiny)
    theta = torch.as_tensor(coefficient, dtype=work.dtype, device=work.device) * (math.pi / 180)
    cos, sin = torch.cos(theta), torch.sin(theta)
    # In the plane (u, v) the activation sits at angle phi from u: (along, ortho_norm) = |h| (cos phi, sin phi).
    # Turning towards u makes it phi - theta.
    new_along = cos * along + sin * ortho_norm
    new_ortho = cos * ortho_norm - sin * along
    rotated = work + (new_along - along) * u + (new_ortho - ortho_norm) * v
    degenerate = ortho_norm == 0
    return torch.where(degenerate, work, rotated).to(hidden.dtype)


OPERATORS: dict[str, Operator] = {"add": add, "ablate": ablate, "clamp": clamp, "rotate": rotate}
# Each operator applied with a unit direction (`add` takes the direction as it is).
UNIT_OPERATORS: dict[str, Operator] = {"add": add, "ablate": ablate_unit, "clamp": clamp_unit, "rotate": rotate_unit}


def get_operator(name: str) -> Operator:
    """The operator called `name`, or an error listing the known ones."""
    try:
        return OPERATORS[name]
    except KeyError:
        raise UsageError(f"unknown operator '{name}'; available: {', '.join(OPERATORS)}") from None
