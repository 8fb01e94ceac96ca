"""Steering inside a vLLM worker: forward hooks on the decoder blocks, fed a per-step plan of which tokens get what.

vLLM flattens a continuous batch into one row of tokens: request after request, each a chunk of its prompt
(prefill, maybe chunked) or its newest token (decode). Before each forward the plan is built from the
batch's layout: for every steered request, its token range, the absolute position of each token (the
positions vLLM feeds the model, so prompt/generated is exact across chunked prefill and decode) and its
resolved terms. Tokens of unsteered requests are not touched at all: no multiply-by-zero, no copy.

vLLM's decoder blocks (Llama, Qwen2, Mistral, ... ) return `(hidden, residual)` and leave the residual
addition to the next block's fused add+norm. The stream after block i is `hidden + residual`; a steered
token gets `operator(stream, direction, coefficient)` (steerlab.operators; `add` is `stream + coefficient *
direction`, the function steering.py applies) in `hidden` and 0 in `residual`, so the next block's `hidden + 0`
reproduces the Hugging Face path's value bit for bit. A block that returns one tensor is
steered on that tensor.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from ...operators import Operator, get_operator
from .request import Term


@dataclass(frozen=True)
class Row:
    """One request's slice of the flattened batch: tokens [start, end), its prompt length and its terms."""

    start: int
    end: int
    prompt_len: int
    terms: Sequence[Term]


@dataclass
class LayerPlan:
    """What one block adds in one step: the steered token indices and, in order, the terms applied to them."""

    rows: torch.Tensor  # [n] sorted token indices into the flattened batch
    # (indices into `rows`, None = all of them; operator; direction [hidden]; coefficient, 0-d), in order
    terms: list[tuple[torch.Tensor | None, Operator, torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def apply(self, output):
        hidden, residual, rest = _split(output)
        idx = self.rows.to(hidden.device)
        stream = hidden[idx] if residual is None else hidden[idx] + residual[idx]
        for local, operator, direction, coef in self.terms:
            if local is None:
                stream = operator(stream, direction, coef)
            else:
                local = local.to(hidden.device)
                stream[local] = operator(stream[local], direction, coef)
        hidden = hidden.clone()
        hidden[idx] = stream
        if residual is None:
            return hidden if rest is None else (hidden, *rest)
        residual = residual.clone()
        residual[idx] = 0
        return (hidden, residual, *rest)


def _split(output):
    """(hidden, residual or None, the other outputs or None) of a decoder block's output."""
    if isinstance(output, torch.Tensor):
        return output, None, None
    if (isinstance(output, tuple) and len(output) >= 2 and isinstance(output[1], torch.Tensor)
            and output[1].shape == output[0].shape):
        return output[0], output[1], tuple(output[2:])
    return output[0], None, tuple(output[1:])


def find_layers(model: nn.Module, num_layers: int) -> dict[int, nn.Module]:
    """{layer index: block} of the decoder blocks this process holds, found by structure, not by model name.

    The blocks are the ModuleList of `num_layers` entries holding the most parameters. Under pipeline
    parallelism a stage holds only its own blocks; the others are parameter-less placeholders and are left out.
    """
    best = None
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            n_params = sum(p.numel() for p in module.parameters())
            if n_params and (best is None or n_params > best[0]):
                best = (n_params, module)
    if best is None:
        raise RuntimeError(f"steerlab: found no list of {num_layers} decoder blocks in {type(model).__name__}; "
                           "the vLLM plugin steers decoder-only transformers")
    return {i: block for i, block in enumerate(best[1]) if any(True for _ in block.parameters())}


class WorkerSteering:
    """Hooks on one worker's decoder blocks plus the plan of the step being run."""

    def __init__(self, layers: dict[int, nn.Module], directions: Callable[[str, int], torch.Tensor],
                 dtype: torch.dtype, device: torch.device):
        self.layers = layers
        self.dtype, self.device = dtype, device
        self._directions = directions  # (sha256, layer) -> [hidden] float32 direction
        self._cache: dict[tuple[str, int], torch.Tensor] = {}
        self._plan: dict[int, LayerPlan] = {}
        self._handles = [block.register_forward_hook(self._hook(i)) for i, block in layers.items()]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, index: int):
        def hook(module, args, output):
            plan = self._plan.get(index)
            return None if plan is None else plan.apply(output)

        return hook

    def direction(self, sha256: str, layer: int) -> torch.Tensor:
        """A steer's direction at `layer` on this worker's device, in the model's dtype (converted once)."""
        key = (sha256, layer)
        direction = self._cache.get(key)
        if direction is None:
            if len(self._cache) > 4096:
                self._cache.clear()
            direction = self._cache[key] = self._directions(sha256, layer).to(device=self.device, dtype=self.dtype)
        return direction

    def begin(self, rows: Sequence[Row], positions: torch.Tensor) -> None:
        """Plan the coming forward: `positions` are the absolute positions of the flattened batch's tokens."""
        self._plan = self.build(rows, positions)

    def end(self) -> None:
        self._plan = {}

    def build(self, rows: Sequence[Row], positions: torch.Tensor) -> dict[int, LayerPlan]:
        # layer -> (item order k, sha, coef, operator) -> token indices; a token takes its request's items in order.
        groups: dict[int, dict[tuple[int, str, float, str], list[torch.Tensor]]] = defaultdict(lambda: defaultdict(list))
        for row in rows:
            pos = positions[row.start:row.end]
            for k, term in enumerate(row.terms):
                if term.positions == "all":
                    sel = torch.arange(row.start, row.end)
                elif term.positions == "prompt":
                    sel = row.start + torch.nonzero(pos < row.prompt_len).flatten()
                else:  # "generated": every position that predicts a new token
                    sel = row.start + torch.nonzero(pos >= row.prompt_len - 1).flatten()
                if sel.numel() == 0:
                    continue
                for layer, coef in term.layers:
                    if layer in self.layers:
                        groups[layer][(k, term.sha256, coef, term.operator)].append(sel)
        plan = {}
        for layer, by_term in groups.items():
            parts = {key: torch.cat(sels) for key, sels in by_term.items()}
            union = torch.unique(torch.cat(list(parts.values())))
            layer_plan = LayerPlan(union)
            for key in sorted(parts, key=lambda key: key[0]):
                _, sha, coef, operator = key
                idx = parts[key]
                local = None if idx.numel() == union.numel() else torch.searchsorted(union, idx)
                # The coefficient in the model's dtype, as steering.py casts its per-row coefficients.
                coef_t = torch.tensor(coef, dtype=self.dtype, device=self.device)
                layer_plan.terms.append((local, get_operator(operator), self.direction(sha, layer), coef_t))
            plan[layer] = layer_plan
        return plan
