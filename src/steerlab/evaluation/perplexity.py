"""Perplexity of generated continuations under the unsteered model, conditional on their prompts.

A steer that breaks the text makes its continuations unlikely under the model it steered; perplexity
measures that. It rewards repetition ("upon upon upon" scores well), so report it beside distinct-n or
n-gram entropy. Only the continuation's tokens are scored; the prompt (through the chat template, as
generation saw it) is context. Call it with no steering attached so the model is the unsteered one.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..batching import pad, positions_from_mask
from ..errors import UsageError
from ..generation import encode_prompts
from ..models import LoadedModel


@dataclass
class ContinuationLoss:
    """Summed negative log-likelihood (nats) of a continuation's tokens and how many tokens it has."""

    nll: float
    tokens: int

    @property
    def perplexity(self) -> float:
        """exp(mean NLL per token); NaN for an empty continuation, which has no tokens to score."""
        return math.exp(self.nll / self.tokens) if self.tokens else math.nan


def continuation_losses(
    lm: LoadedModel,
    prompts: Sequence[str],
    continuations: Sequence[str],
    *,
    batch_size: int = 8,
    use_chat_template: bool | None = None,
    system: str | None = None,
    progress: Callable[[int], object] | None = None,
) -> list[ContinuationLoss]:
    """NLL of each continuation given its prompt, batched; the prompt is encoded as generation encodes it."""
    if len(prompts) != len(continuations):
        raise UsageError(
            f"{len(prompts)} prompts but {len(continuations)} continuations; give one continuation per prompt"
        )
    prefixes = encode_prompts(lm, prompts, use_chat_template=use_chat_template, system=system)
    suffixes = [lm.tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
    return token_losses(lm, list(zip(prefixes, suffixes, strict=False)), batch_size=batch_size, progress=progress)


@torch.inference_mode()
def token_losses(
    lm: LoadedModel,
    items: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    batch_size: int = 8,
    progress: Callable[[int], object] | None = None,
) -> list[ContinuationLoss]:
    """NLL of each (prefix ids, continuation ids) item's continuation tokens; prefixes must be non-empty."""
    out: list[ContinuationLoss | None] = [None] * len(items)
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]) + len(items[i][1]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        for i, loss in zip(idx, _batch_losses(lm, [items[i] for i in idx]), strict=False):
            out[i] = loss
        if progress:
            progress(len(idx))
    return out  # type: ignore[return-value]


def _batch_losses(lm: LoadedModel, batch: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[ContinuationLoss]:
    if any(not prefix for prefix, _ in batch):
        raise UsageError(
            "a continuation needs a non-empty prompt to be scored against (its first token has no context)"
        )
    seqs = [list(prefix) + list(suffix) for prefix, suffix in batch]
    width = max(len(s) for s in seqs)
    span = max(len(suffix) for _, suffix in batch)
    if span == 0:
        return [ContinuationLoss(0.0, 0) for _ in batch]
    ids, mask = pad(seqs, lm.tokenizer.pad_token_id, left=True)
    scored = torch.zeros((len(seqs), span), dtype=torch.bool)
    for row, (_, suffix) in enumerate(batch):
        if suffix:
            scored[row, span - len(suffix) :] = True
    device = lm.device
    kwargs = {"logits_to_keep": span + 1} if "logits_to_keep" in inspect.signature(lm.model.forward).parameters else {}
    logits = lm.model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions_from_mask(mask).to(device),
        use_cache=False,
        **kwargs,
    ).logits
    logits = logits[:, -(span + 1) :]
    # Left padding puts every continuation at the end: logits at width-span-1 .. width-2 predict its tokens.
    logprobs = torch.log_softmax(logits[:, :span].float(), dim=-1).cpu()
    targets = ids[:, width - span :]
    picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    nll = -(picked * scored).sum(-1)
    return [ContinuationLoss(float(n), int(k)) for n, k in zip(nll, scored.sum(-1), strict=False)]


def corpus_perplexity(losses: Sequence[ContinuationLoss]) -> float:
    """exp(total NLL / total tokens) over all continuations: long ones weigh by their length; NaN if none has tokens."""
    tokens = sum(loss.tokens for loss in losses)
    return math.exp(sum(loss.nll for loss in losses) / tokens) if tokens else math.nan
