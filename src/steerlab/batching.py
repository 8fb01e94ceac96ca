"""Batching mechanics shared by recording, scoring and strength: padding, token-budget batches, prefix-cached forwards.

Positions always come from the attention mask (`positions_from_mask`), so a left-padded row computes
exactly what it would alone. A prefix shared by several continuations (the two answers of a pair, or
the cells of a steering grid) runs once; its KV cache is repeated for the continuations.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .errors import UsageError
from .models import LoadedModel

TokenIds = list[int]
DEFAULT_BATCH_TOKENS = 4096


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Absolute token positions that ignore left padding: the count of real tokens before each one."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def pad(seqs: Sequence[TokenIds], pad_id: int, *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows padded to one width (left for generation and prefixes, right for continuations): ids, mask."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if not seq:
            continue
        cols = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, cols] = torch.tensor(seq, dtype=torch.long)
        mask[row, cols] = 1
    return ids, mask


def check_batch(batch_size: int, batch_tokens: int) -> None:
    """Refuse batch limits below one (a config's batch_size / batch_tokens)."""
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, got {batch_size}")
    if batch_tokens < 1:
        raise UsageError(f"batch_tokens must be at least 1, got {batch_tokens}")


def token_batches(
    lengths: Sequence[int],
    *,
    max_tokens: int = DEFAULT_BATCH_TOKENS,
    max_rows: int | None = None,
    max_padding: float = 0.15,
) -> list[list[int]]:
    """Row indices in order of length, cut into batches by a token budget (rows x longest row <= max_tokens).

    A budget, not a fixed row count, keeps short items in large batches and long ones in small: on a GPU a
    batch of 16 short pairs leaves most of the device idle. A batch is also cut where padding every row to
    its longest would make more than `max_padding` of its tokens padding, and at `max_rows` rows if given.
    A single row longer than the budget still gets a batch of its own.
    """
    if max_tokens < 1 or (max_rows is not None and max_rows < 1):
        raise UsageError("max_tokens and max_rows must be at least 1")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for i in order:
        longest = max(1, lengths[i])  # ascending order: the newest row is the longest
        rows = len(current) + 1
        full = (max_rows is not None and len(current) == max_rows) or rows * longest > max_tokens
        padded = tokens + longest < (1 - max_padding) * longest * rows
        if current and (full or padded):
            batches.append(current)
            current, tokens = [], 0
        current.append(i)
        tokens += longest
    if current:
        batches.append(current)
    return batches


def cache_kwarg(model: torch.nn.Module) -> str:
    """transformers 5.x renamed `past_key_values` to `cache`; the name this version's forward takes."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@dataclass
class PrefixCache:
    """KV cache of left-padded prefix rows and their mask: what continuations attend to."""

    cache: DynamicCache
    mask: torch.Tensor  # [rows, prefix width]

    def repeated(self, times: int, *, interleave: bool) -> PrefixCache:
        """A copy with every row repeated: interleaved (row i -> i*times..) or tiled (the whole block `times` over).

        Always a new cache: a forward on it appends to it, and the prefix may serve several continuations.
        """
        grow = (lambda t: t.repeat_interleave(times, dim=0)) if interleave else (lambda t: t.repeat(times, 1, 1, 1))
        cache = copy.copy(self.cache)
        cache.layers = []
        for layer in self.cache.layers:
            # Copy each layer object whole: sliding-window layers keep state beside their tensors.
            layer = copy.copy(layer)
            # (transformers types linear-attention layers in this union too; they have no keys and fail here loudly)
            if isinstance(layer.keys, torch.Tensor) and layer.keys.numel():  # type: ignore[union-attr]
                layer.keys, layer.values = grow(layer.keys), grow(layer.values)  # type: ignore[union-attr]
            cache.layers.append(layer)
        mask = self.mask.repeat_interleave(times, dim=0) if interleave else self.mask.repeat(times, 1)
        return PrefixCache(cache, mask)

    def continuation(self, lm: LoadedModel, suffixes: Sequence[TokenIds]) -> tuple[dict, torch.Tensor]:
        """Model inputs for right-padded continuations of these rows (one per row) and their mask.

        Positions continue from each row's real prefix length, so padding never shifts them.
        """
        if len(suffixes) != self.mask.shape[0]:
            raise UsageError(f"{len(suffixes)} continuations for {self.mask.shape[0]} cached rows")
        ids, mask = pad(suffixes, lm.tokenizer.pad_token_id, left=False)
        positions = self.mask.sum(1, keepdim=True) + torch.arange(ids.shape[1]).unsqueeze(0)
        device = lm.device
        inputs = {
            "input_ids": ids.to(device),
            "attention_mask": torch.cat([self.mask, mask], dim=1).to(device),
            "position_ids": positions.to(device),
            "use_cache": True,
            cache_kwarg(lm.model): self.cache,
        }
        return inputs, mask


def run_prefix(lm: LoadedModel, prefixes: Sequence[TokenIds], run=None, **kwargs) -> PrefixCache:
    """Run left-padded prefixes once with a fresh cache; `run` (default: the model) may stop the forward early."""
    ids, mask = pad(prefixes, lm.tokenizer.pad_token_id, left=True)
    cache = DynamicCache(config=lm.model.config)
    device = lm.device
    (run or lm.model)(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions_from_mask(mask).to(device),
        use_cache=True,
        **{cache_kwarg(lm.model): cache},
        **kwargs,
    )
    return PrefixCache(cache, mask)
