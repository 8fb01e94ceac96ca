"""Batched recording of residual-stream activations (decoder block outputs) at chosen layers.

Only the needed layers are hooked and the forward pass stops after the deepest one (no later blocks,
no lm_head). Items that share a prompt (the two sides of a contrastive pair) run that prompt once and
reuse its KV cache for each side's answer tokens.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import DynamicCache

from .data import ContrastivePair, format_prompt
from .models import LoadedModel

TokenIds = list[int]


class _StopForward(Exception):
    """Raised by the hook on the deepest needed layer to skip the rest of the model."""


@dataclass
class PairActivations:
    """Mean activations over each side's answer tokens: positive/negative are [n_pairs, n_layers, hidden]."""

    layers: list[int]
    positive: torch.Tensor
    negative: torch.Tensor

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.layers.index(layer)
        return self.positive[:, i], self.negative[:, i]


def tokenize_pair(lm: LoadedModel, pair: ContrastivePair) -> tuple[TokenIds, TokenIds, TokenIds]:
    """(shared prompt ids, positive answer ids, negative answer ids) for one pair.

    The prompt goes through the chat template (when the model uses one) and the answers are
    tokenized on their own and appended, so both sides share the prompt's tokens exactly.
    """
    tok = lm.tokenizer
    if pair.prompt:
        text = format_prompt(tok, pair.prompt, use_chat_template=bool(lm.use_chat_template)) + pair.answer_prefix
        prefix = tok(text, add_special_tokens=not lm.use_chat_template)["input_ids"]
    else:
        prefix = with_start_token(tok, tok(pair.answer_prefix, add_special_tokens=True)["input_ids"])
    pos = tok(pair.positive, add_special_tokens=False)["input_ids"]
    neg = tok(pair.negative, add_special_tokens=False)["input_ids"]
    if not pos or not neg:
        raise ValueError(f"a pair's answer tokenizes to nothing: {pair.positive!r} / {pair.negative!r}")
    return list(prefix), list(pos), list(neg)


def with_start_token(tokenizer, prefix: TokenIds) -> TokenIds:
    """`prefix`, or the BOS (else EOS) token when it is empty, so a text never starts at position 0.

    The first position is the attention sink: its activation is ~10x larger than other tokens' (1360 vs
    110 at SmolLM2's layer 12) and would dominate a mean over the text's tokens.
    """
    if prefix:
        return list(prefix)
    return [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]


def record_pair_activations(
    lm: LoadedModel,
    pairs: Sequence[ContrastivePair],
    layers: Sequence[int],
    *,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> PairActivations:
    """Mean activation over each answer's tokens, for both sides of every pair, at `layers`."""
    items = []
    for pair in pairs:
        prefix, pos, neg = tokenize_pair(lm, pair)
        items.append((prefix, [pos, neg]))
    acts = record_activations(lm, items, layers, batch_size=batch_size, progress=progress)
    return PairActivations(sorted(set(layers)), acts[:, 0], acts[:, 1])


def record_activations(
    lm: LoadedModel,
    items: Sequence[tuple[TokenIds, Sequence[TokenIds]]],
    layers: Sequence[int],
    *,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """For items (prefix ids, [suffix ids, ...]) return mean activations over each suffix: [n, k, n_layers, hidden].

    Every item must have the same number k of suffixes. With k > 1 and a non-empty prefix, the prefix
    runs once and its KV cache serves all k suffixes; otherwise prefix and suffix run as one sequence.
    """
    layers = sorted(set(int(layer) for layer in layers))
    if not layers:
        raise ValueError("no layers to record")
    bad = [layer for layer in layers if not 0 <= layer < lm.num_layers]
    if bad:
        raise ValueError(f"layer {bad[0]} is out of range: {lm.name} has layers 0..{lm.num_layers - 1}")
    if not items:
        raise ValueError("nothing to record: no items")
    k = len(items[0][1])
    if any(len(suffixes) != k for _, suffixes in items):
        raise ValueError("every item needs the same number of suffixes")
    out = torch.empty(len(items), k, len(layers), lm.hidden_size)
    # Sorted, length-bounded batches keep padding small; results go back to their original rows.
    lengths = [len(prefix) + max(len(s) for s in suffixes) for prefix, suffixes in items]
    for idx in length_batches(lengths, batch_size):
        batch = [items[i] for i in idx]
        shared = k > 1 and all(prefix for prefix, _ in batch)
        acts = _shared_prefix_batch(lm, batch, layers) if shared else _joined_batch(lm, batch, layers)
        out[idx] = acts
        if progress:
            progress(len(idx))
    return out


def length_batches(lengths: Sequence[int], batch_size: int, max_padding: float = 0.15) -> list[list[int]]:
    """Indices in order of length, cut into batches of at most batch_size, cut early where padding every row to
    the longest would make more than `max_padding` of the batch's tokens padding.

    Padding tokens cost as much compute as real ones; sorting alone leaves a few pairs of mixed lengths
    (the common case: a vector from 10-50 pairs) a quarter padding.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for i in order:
        longest = lengths[i]  # ascending order: the newest row is the longest
        if current and (len(current) == batch_size or tokens + longest < (1 - max_padding) * longest * (len(current) + 1)):
            batches.append(current)
            current, tokens = [], 0
        current.append(i)
        tokens += longest
    if current:
        batches.append(current)
    return batches


def _cache_kwarg(model: torch.nn.Module) -> str:
    """transformers 5.x renamed `past_key_values` to `cache`; pass whichever this version takes."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class _Reader:
    """Forward hooks that average each hooked layer's output over a read mask, then stop the forward."""

    def __init__(self, lm: LoadedModel, layers: list[int]):
        self.lm, self.layers = lm, layers
        self.read_mask: torch.Tensor | None = None
        self.results: dict[int, torch.Tensor] = {}

    def __enter__(self) -> "_Reader":
        last = self.layers[-1]
        self.handles = []
        for layer in self.layers:
            self.handles.append(self.lm.layers[layer].register_forward_hook(self._hook(layer, stop=layer == last)))
        return self

    def _hook(self, layer: int, stop: bool):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            if self.read_mask is not None:
                mask = self.read_mask.to(hidden.dtype).unsqueeze(-1)
                self.results[layer] = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu()
            if stop:
                raise _StopForward

        return hook

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    def run(self, **kwargs) -> None:
        try:
            self.lm.model(**kwargs)
        except _StopForward:
            pass

    def stacked(self) -> torch.Tensor:
        return torch.stack([self.results[layer] for layer in self.layers], dim=1)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Absolute token positions that ignore left padding: the count of real tokens before each one."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _pad(seqs: Sequence[TokenIds], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if not seq:
            continue
        if left:
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        else:
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
    return ids, mask


@torch.inference_mode()
def _joined_batch(lm: LoadedModel, batch, layers: list[int]) -> torch.Tensor:
    """One left-padded pass over prefix+suffix for every (item, suffix); read the suffix tokens."""
    k = len(batch[0][1])
    seqs, suffix_lens = [], []
    for prefix, suffixes in batch:
        for suffix in suffixes:
            seqs.append(prefix + suffix)
            suffix_lens.append(len(suffix))
    ids, mask = _pad(seqs, lm.tokenizer.pad_token_id, left=True)
    read = torch.zeros_like(mask)
    for row, n in enumerate(suffix_lens):
        read[row, ids.shape[1] - n :] = 1
    device = lm.device
    with _Reader(lm, layers) as reader:
        reader.read_mask = read.to(device)
        reader.run(input_ids=ids.to(device), attention_mask=mask.to(device),
                   position_ids=positions_from_mask(mask).to(device), use_cache=False)
        acts = reader.stacked()
    return acts.view(len(batch), k, len(layers), -1)


@torch.inference_mode()
def _shared_prefix_batch(lm: LoadedModel, batch, layers: list[int]) -> torch.Tensor:
    """Run the prefixes once (left-padded, cached up to the deepest layer), then all suffixes on that cache."""
    k = len(batch[0][1])
    device = lm.device
    prefix_ids, prefix_mask = _pad([prefix for prefix, _ in batch], lm.tokenizer.pad_token_id, left=True)
    cache = DynamicCache(config=lm.model.config)
    kw = _cache_kwarg(lm.model)
    with _Reader(lm, layers) as reader:
        reader.run(input_ids=prefix_ids.to(device), attention_mask=prefix_mask.to(device),
                   position_ids=positions_from_mask(prefix_mask).to(device), use_cache=True, **{kw: cache})
        _repeat_rows(cache, k, layers[-1] + 1)
        suffixes = [suffix for _, group in batch for suffix in group]
        suffix_ids, suffix_mask = _pad(suffixes, lm.tokenizer.pad_token_id, left=False)
        full_mask = torch.cat([prefix_mask.repeat_interleave(k, dim=0), suffix_mask], dim=1)
        prefix_len = prefix_mask.sum(1).repeat_interleave(k).unsqueeze(1)
        positions = prefix_len + torch.arange(suffix_ids.shape[1]).unsqueeze(0)
        reader.read_mask = suffix_mask.to(device)
        reader.run(input_ids=suffix_ids.to(device), attention_mask=full_mask.to(device),
                   position_ids=positions.to(device), use_cache=True, **{kw: cache})
        acts = reader.stacked()
    return acts.view(len(batch), k, len(layers), -1)


def _repeat_rows(cache: DynamicCache, k: int, n_layers: int) -> None:
    """Repeat each cached row k times (row i -> rows i*k .. i*k+k-1) in the layers the prefix filled."""
    if k == 1:
        return
    for layer in cache.layers[:n_layers]:
        layer.keys = layer.keys.repeat_interleave(k, dim=0)
        layer.values = layer.values.repeat_interleave(k, dim=0)
