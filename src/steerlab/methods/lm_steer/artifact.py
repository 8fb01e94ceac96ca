"""The LM-Steer artifact: P1, P2 and metadata, saved as safetensors, applied as a hook on the LM head.

The steer changes the final hidden state h (the LM head's input): h + epsilon * sum_k s_k * P1_k P2_k^T h,
so the logits become (h + epsilon * sum_k s_k P1_k P2_k^T h) E^T. s_k is the multiplier (the paper's steer
value), one per batch row (0 = off, giving exactly the unsteered logits).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from ...errors import UsageError
from ...models import LoadedModel
from ...steering import SteeringError, broadcast_rows, enter_scope, in_scope, leave_scope, scaled_rows
from ...textio import is_number
from ...vector import (
    VectorFileError,
    VectorMeta,
    check_hidden_size,
    read_steer_file,
    warn_if_other_model,
    write_steer_file,
)

METHOD = "lm_steer"
WHAT = "LM-Steer steer"
TENSORS = ("projector1", "projector2")


def steered_hidden(
    hidden: torch.Tensor, projector1: torch.Tensor, projector2: torch.Tensor, values: torch.Tensor, epsilon: float
) -> torch.Tensor:
    """h + epsilon * sum_k values[row, k] * P1_k P2_k^T h for hidden [rows, tokens, d] and values [rows, K].

    The change is computed in float32 and added in h's dtype; a row whose values are all 0 is returned
    exactly unchanged.
    """
    proj = torch.einsum("rtd,kdq->rtkq", hidden.float(), projector1) * values[:, None, :, None]
    delta = torch.einsum("rtkq,kdq->rtd", proj, projector2)
    return hidden + (epsilon * delta).to(hidden.dtype)


@dataclass
class LMSteer:
    """A trained LM-Steer: P1, P2 ([num_steers, hidden, rank]) and metadata (epsilon in meta.config).

    `multiplier` (the paper's steer value) is one number or one per batch row (0 = off); `steer_weights`
    scales each of the num_steers steers (None = all 1). Choose them with :meth:`with_multiplier`.
    """

    projector1: torch.Tensor
    projector2: torch.Tensor
    meta: VectorMeta
    multiplier: float | Sequence[float] = 1.0
    steer_weights: Sequence[float] | None = None

    kind = "lm_steer"

    def __post_init__(self) -> None:
        p1 = torch.as_tensor(self.projector1).detach().float().cpu()
        p2 = torch.as_tensor(self.projector2).detach().float().cpu()
        if p1.ndim != 3 or p1.shape != p2.shape or p1.shape[1] != self.meta.hidden_size:
            raise UsageError(
                f"projector1 {tuple(p1.shape)} and projector2 {tuple(p2.shape)} must both be "
                f"[num_steers, {self.meta.hidden_size}, rank]"
            )
        if not isinstance(self.meta.config.get("epsilon"), (int, float)):
            raise UsageError("an LM-Steer needs its epsilon in meta.config['epsilon']")
        self.projector1, self.projector2 = p1, p2
        if self.meta.kind != "lm_steer":
            self.meta = replace(self.meta, kind="lm_steer")

    @property
    def epsilon(self) -> float:
        return float(self.meta.config["epsilon"])

    @property
    def num_steers(self) -> int:
        return int(self.projector1.shape[0])

    @property
    def rank(self) -> int:
        return int(self.projector1.shape[2])

    def with_multiplier(
        self, multiplier: float | Sequence[float], steer_weights: Sequence[float] | None = None
    ) -> LMSteer:
        """The same steer at another multiplier (e.g. -1 for the negative side; a list gives one per row)."""
        return replace(
            self, multiplier=multiplier, steer_weights=self.steer_weights if steer_weights is None else steer_weights
        )

    def row_multipliers(self, row_scale: torch.Tensor | None = None) -> torch.Tensor:
        """Multipliers per row and steer, [rows, num_steers]: multiplier * row_scale * steer weight."""
        value = self.multiplier
        rows = torch.as_tensor([value] if isinstance(value, (int, float)) else list(value), dtype=torch.float32)
        weights = (
            torch.ones(self.num_steers)
            if self.steer_weights is None
            else torch.as_tensor(list(self.steer_weights), dtype=torch.float32)
        )
        if rows.ndim != 1 or rows.numel() == 0:
            raise SteeringError(
                "an LM-Steer multiplier must be a number or a non-empty list of numbers (one per batch row)"
            )
        if weights.shape != (self.num_steers,):
            raise SteeringError(
                f"steer_weights needs {self.num_steers} numbers (one per steer), got {list(weights.shape)}"
            )
        if not (torch.isfinite(rows).all() and torch.isfinite(weights).all()):
            raise SteeringError(
                f"LM-Steer multipliers must be finite, got multiplier={value}, steer_weights={self.steer_weights}"
            )
        if row_scale is not None:
            rows = scaled_rows(rows, torch.as_tensor(row_scale, dtype=torch.float32))
        return rows[:, None] * weights[None, :]

    def attach(
        self,
        lm: LoadedModel,
        *,
        row_scale: torch.Tensor | None = None,
        prompt_lengths: torch.Tensor | None = None,
        task: str | None = None,
    ) -> LMSteerHandle:
        """Hook the model's LM head; the steer acts at every position (as in the paper), so prompt_lengths is unused."""
        check_hidden_size(self.meta, lm, WHAT)
        warn_if_other_model(self.meta, lm, task, WHAT)
        head = lm.model.get_output_embeddings()
        if head is None:
            raise SteeringError(f"{type(lm.model).__name__} has no output embeddings (LM head) for LM-Steer to act on")
        device = head.weight.device  # the head may sit on another device than the first layers
        return LMSteerHandle(
            head,
            self.projector1.to(device),
            self.projector2.to(device),
            self.row_multipliers(row_scale).to(device),
            self.epsilon,
        )

    # ---- files ------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write safetensors (P1, P2; metadata as JSON in the header) atomically; never a pickle."""
        tensors = {"projector1": self.projector1, "projector2": self.projector2}
        return write_steer_file(path, tensors, self.meta, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LMSteer:
        """Read a steer written by :meth:`save` (multiplier 1; pick another with with_multiplier)."""
        path = Path(path)
        meta, tensors = read_steer_file(path, "lm_steer", "an LM-Steer file")
        if sorted(tensors) != sorted(TENSORS):
            found = ", ".join(sorted(tensors)) or "none"
            raise VectorFileError(f"{path}: expected tensors {', '.join(TENSORS)}, found {found}")
        for name in TENSORS:
            tensor = tensors[name]
            if not tensor.is_floating_point() or tensor.ndim != 3 or 0 in tensor.shape:
                raise VectorFileError(
                    f"{path}: tensor '{name}' must be floats of shape [num_steers, "
                    f"{meta.hidden_size}, rank], got {str(tensor.dtype).removeprefix('torch.')} "
                    f"{tuple(tensor.shape)}"
                )
        epsilon = meta.config.get("epsilon")
        if not is_number(epsilon) or not 0 < epsilon <= 1e6:
            raise VectorFileError(
                f"{path}: metadata field 'config.epsilon': expected a positive finite number, got {epsilon!r}"
            )
        try:
            return cls(tensors["projector1"], tensors["projector2"], meta)
        except ValueError as exc:
            raise VectorFileError(f"{path}: {exc}") from None

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary for `steerlab vector info`."""
        info = self.meta.to_json()
        info.update(num_steers=self.num_steers, rank=self.rank, epsilon=self.epsilon)
        return info


class LMSteerHandle:
    """An attached LM-Steer. Use as a context manager or call `remove()`; both are idempotent."""

    def __init__(
        self,
        head: torch.nn.Module,
        projector1: torch.Tensor,
        projector2: torch.Tensor,
        values: torch.Tensor,
        epsilon: float,
    ):
        self._p1, self._p2, self._values, self._epsilon = projector1, projector2, values, epsilon
        self._off = bool((values == 0).all())
        enter_scope(self)
        self._handle: RemovableHandle | None = head.register_forward_pre_hook(self._hook)

    def __enter__(self) -> LMSteerHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        leave_scope(self)

    @property
    def active(self) -> bool:
        return self._handle is not None

    def _hook(self, module: torch.nn.Module, args: tuple) -> tuple | None:
        if self._off or not in_scope(self):
            return None
        hidden = args[0]
        rows = broadcast_rows(torch.arange(self._values.shape[0]), hidden.shape[0], "LM-Steer multipliers")
        values = self._values[rows.to(self._values.device)]
        shape = hidden.shape
        flat = hidden.reshape(shape[0], -1, shape[-1])
        steered = steered_hidden(flat, self._p1, self._p2, values, self._epsilon)
        # Rows at multiplier 0 keep their hidden state exactly (nothing multiplied by zero is added).
        on = (values != 0).any(-1)[:, None, None]
        return (torch.where(on, steered, flat).reshape(shape), *args[1:])
