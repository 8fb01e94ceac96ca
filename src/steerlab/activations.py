"""Batched recording of residual-stream activations (decoder block outputs) at chosen layers.

Only the needed layers are hooked and the forward pass stops after the deepest one (no later blocks,
no lm_head). Items that share a prompt (the two sides of a contrastive pair) run that prompt once and
reuse its KV cache for each side's answer tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from .batching import DEFAULT_BATCH_TOKENS, TokenIds, pad, positions_from_mask, run_prefix, token_batches
from .data import ContrastivePair, DatasetError, format_prompt
from .errors import UsageError
from .models import LoadedModel, check_layers


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

    The prompt goes through the chat template (when the model uses one). Text answers are tokenized on
    their own and appended, so both sides share the prompt's tokens exactly. A/B answers are read at the
    tokens the model itself would write: each full text (prompt, answer prefix, answer) is tokenized and
    split where the two first differ, so a tokenizer that merges "(A" into one token (Qwen2.5) is read at
    "(A" against "(B", never at "A" after a lone "(" (a sequence it never produces), and one that does not
    (SmolLM2) at "A" after "(". The A/B scorer (evaluation.ab) reads the same tokens.
    """
    tok = lm.tokenizer
    if pair.kind == "ab" and pair.prompt:
        text = format_prompt(tok, pair.prompt, use_chat_template=bool(lm.use_chat_template)) + pair.answer_prefix
        special = not lm.use_chat_template
        return split_at_divergence(
            tok(text + pair.positive, add_special_tokens=special)["input_ids"],
            tok(text + pair.negative, add_special_tokens=special)["input_ids"],
        )
    if pair.prompt:
        text = format_prompt(tok, pair.prompt, use_chat_template=bool(lm.use_chat_template)) + pair.answer_prefix
        prefix = tok(text, add_special_tokens=not lm.use_chat_template)["input_ids"]
    else:
        prefix = text_lead_ids(tok, pair.answer_prefix)
    pos = tok(pair.positive, add_special_tokens=False)["input_ids"]
    neg = tok(pair.negative, add_special_tokens=False)["input_ids"]
    if not pos or not neg:
        raise DatasetError(f"a pair's answer tokenizes to nothing: {pair.positive!r} / {pair.negative!r}")
    return list(prefix), list(pos), list(neg)


def split_at_divergence(first: TokenIds, second: TokenIds) -> tuple[TokenIds, TokenIds, TokenIds]:
    """(shared tokens, rest of `first`, rest of `second`), split where two token sequences first differ."""
    k = 0
    while k < min(len(first), len(second)) and first[k] == second[k]:
        k += 1
    if k == 0 or k == min(len(first), len(second)):
        raise DatasetError("the two answers do not tokenize to different tokens after a shared context")
    return list(first[:k]), list(first[k:]), list(second[k:])


# The one rule for prompt-less text pairs (every entry point: pairs_from_texts, pair files, task data, the CLI's
# --positive/--negative): their texts follow this shared lead, after the tokenizer's own start tokens, so a
# text's first word is never the first token after BOS. Measured on SmolLM2 (200 ParaDetox pairs, layer 15):
# with it, PCA's first component and the CAA direction agree (cosine 0.99); without it they are orthogonal
# (-0.05) and PCA stops steering toxicity.
TEXT_LEAD = "\n"


def lead_text(pair: ContrastivePair) -> str:
    """The text both sides of `pair` share before their answers: TEXT_LEAD for a prompt-less pair, then the
    pair's answer prefix."""
    return pair.answer_prefix if pair.prompt else TEXT_LEAD + pair.answer_prefix


def text_lead_ids(tokenizer, answer_prefix: str = "") -> TokenIds:
    """The token ids before a prompt-less pair's (or a stand-alone text's) own tokens: TEXT_LEAD and the answer
    prefix, tokenized with the tokenizer's start tokens (never empty)."""
    return with_start_token(tokenizer, tokenizer(TEXT_LEAD + answer_prefix, add_special_tokens=True)["input_ids"])


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
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: Callable[[int], object] | None = None,
) -> PairActivations:
    """Mean activation over each answer's tokens, for both sides of every pair, at `layers`."""
    items = []
    for pair in pairs:
        prefix, pos, neg = tokenize_pair(lm, pair)
        items.append((prefix, [pos, neg]))
    acts = record_activations(lm, items, layers, batch_size=batch_size, batch_tokens=batch_tokens, progress=progress)
    return PairActivations(sorted(set(layers)), acts[:, 0], acts[:, 1])


def record_activations(
    lm: LoadedModel,
    items: Sequence[tuple[TokenIds, Sequence[TokenIds]]],
    layers: Sequence[int],
    *,
    batch_size: int = 16,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: Callable[[int], object] | None = None,
) -> torch.Tensor:
    """For items (prefix ids, [suffix ids, ...]) return mean activations over each suffix: [n, k, n_layers, hidden].

    Every item must have the same number k of suffixes. With k > 1 and a non-empty prefix, the prefix
    runs once and its KV cache serves all k suffixes; otherwise prefix and suffix run as one sequence.
    Batches hold at most `batch_size` items and `batch_tokens` tokens (rows x longest row).
    """
    layers = check_layers(lm, layers)
    if not items:
        raise UsageError("nothing to record: no items")
    k = len(items[0][1])
    if any(len(suffixes) != k for _, suffixes in items):
        raise UsageError("every item needs the same number of suffixes")
    out = torch.empty(len(items), k, len(layers), lm.hidden_size)
    # Sorted, length-bounded batches keep padding small; results go back to their original rows.
    lengths = [len(prefix) + max(len(s) for s in suffixes) for prefix, suffixes in items]
    for idx in token_batches(lengths, max_tokens=batch_tokens, max_rows=batch_size):
        batch = [items[i] for i in idx]
        shared = k > 1 and all(prefix for prefix, _ in batch)
        acts = _shared_prefix_batch(lm, batch, layers) if shared else _joined_batch(lm, batch, layers)
        out[idx] = acts
        if progress:
            progress(len(idx))
    return out


R = TypeVar("R", bound="BlockReader")


class BlockReader:
    """Forward hooks that hand chosen blocks' outputs to `read(layer, hidden)` and stop the forward after the
    deepest (no later blocks, no LM head). A context manager: the hooks are removed on exit, also on errors."""

    def __init__(self, lm: LoadedModel, layers: Sequence[int], read: Callable[[int, torch.Tensor], None]):
        self.lm, self.layers, self.read = lm, sorted(layers), read

    def __enter__(self: R) -> R:
        last = self.layers[-1]
        self.handles = []
        try:
            for layer in self.layers:
                self.handles.append(self.lm.layers[layer].register_forward_hook(self._hook(layer, stop=layer == last)))
        except Exception:
            self.__exit__()
            raise
        return self

    def _hook(self, layer: int, stop: bool):
        def hook(module, args, output):
            self.read(layer, output[0] if isinstance(output, tuple) else output)
            if stop:
                raise _StopForward

        return hook

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def run(self, **kwargs) -> None:
        """One forward of the model, stopped after the deepest read block."""
        with contextlib.suppress(_StopForward):
            self.lm.model(**kwargs)


class _Reader(BlockReader):
    """Averages each block's output over `read_mask` (the tokens to read), per row."""

    def __init__(self, lm: LoadedModel, layers: list[int]):
        super().__init__(lm, layers, self._mean)
        self.read_mask: torch.Tensor | None = None
        self.results: dict[int, torch.Tensor] = {}

    def _mean(self, layer: int, hidden: torch.Tensor) -> None:
        if self.read_mask is not None:
            mask = self.read_mask.to(hidden.dtype).unsqueeze(-1)
            self.results[layer] = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu()

    def stacked(self) -> torch.Tensor:
        return torch.stack([self.results[layer] for layer in self.layers], dim=1)


@torch.inference_mode()
def _joined_batch(lm: LoadedModel, batch, layers: list[int]) -> torch.Tensor:
    """One left-padded pass over prefix+suffix for every (item, suffix); read the suffix tokens."""
    k = len(batch[0][1])
    seqs, suffix_lens = [], []
    for prefix, suffixes in batch:
        for suffix in suffixes:
            seqs.append(prefix + suffix)
            suffix_lens.append(len(suffix))
    ids, mask = pad(seqs, lm.tokenizer.pad_token_id, left=True)
    read = torch.zeros_like(mask)
    for row, n in enumerate(suffix_lens):
        read[row, ids.shape[1] - n :] = 1
    device = lm.device
    with _Reader(lm, layers) as reader:
        reader.read_mask = read.to(device)
        reader.run(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions_from_mask(mask).to(device),
            use_cache=False,
        )
        acts = reader.stacked()
    return acts.view(len(batch), k, len(layers), -1)


@torch.inference_mode()
def _shared_prefix_batch(lm: LoadedModel, batch, layers: list[int]) -> torch.Tensor:
    """Run the prefixes once (left-padded, cached up to the deepest layer), then all suffixes on that cache."""
    k = len(batch[0][1])
    with _Reader(lm, layers) as reader:
        prefix = run_prefix(lm, [prefix for prefix, _ in batch], run=reader.run).repeated(k, interleave=True)
        inputs, suffix_mask = prefix.continuation(lm, [suffix for _, group in batch for suffix in group])
        reader.read_mask = suffix_mask.to(lm.device)
        reader.run(**inputs)
        acts = reader.stacked()
    return acts.view(len(batch), k, len(layers), -1)


@torch.inference_mode()
def token_activations(
    lm: LoadedModel,
    sequences: Sequence[TokenIds],
    layer: int,
    *,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: Callable[[int], object] | None = None,
) -> list[torch.Tensor]:
    """Every token's block output at `layer`, one [len(sequence), hidden] float32 tensor per sequence.

    Sequences run left-padded in token-budget batches and the forward stops at `layer` (SAE training and
    feature reading need each token, not a mean).
    """
    check_layers(lm, [layer])
    out: list[torch.Tensor] = [torch.empty(0)] * len(sequences)
    found: dict[int, torch.Tensor] = {}
    for idx in token_batches([len(s) for s in sequences], max_tokens=batch_tokens):
        ids, mask = pad([list(sequences[i]) for i in idx], lm.tokenizer.pad_token_id, left=True)
        with BlockReader(lm, [layer], lambda _layer, hidden: found.__setitem__(0, hidden)) as reader:
            reader.run(
                input_ids=ids.to(lm.device),
                attention_mask=mask.to(lm.device),
                position_ids=positions_from_mask(mask).to(lm.device),
                use_cache=False,
            )
        hidden = found.pop(0).float().cpu()
        for row, i in enumerate(idx):
            out[i] = hidden[row, ids.shape[1] - len(sequences[i]) :].clone()
        if progress:
            progress(len(idx))
    return out
