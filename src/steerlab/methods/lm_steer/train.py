"""LM-Steer training with bounded memory: frozen model run without gradients, loss computed in token chunks.

The steer only changes the final hidden state h right before the LM head, so the frozen transformer runs
once per text under no_grad (its final hidden states can be cached across steps), and the
[tokens, vocab] logits exist for `chunk_size` tokens at a time: each chunk's loss is backpropagated into
P1/P2 and freed before the next, which gives exactly the gradient of the full loss. Only the tokens whose
loss counts are ever put through the head; padding, prompt and chat-template tokens never are. Base
parameters are set to requires_grad=False during training (and restored), so they never get gradients.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ...activations import lead_text
from ...batching import pad
from ...data import ContrastiveDataset, DatasetError, format_prompt
from ...errors import SteerlabError
from ...models import LoadedModel
from ..training import frozen, head_inputs, head_logits
from .artifact import steered_hidden
from .config import LMSteerConfig

GIB = 1024**3
# Autograd, allocator and thread-pool workspace measured beside the parts below (about 80-120 MiB on CPU).
RUNTIME_OVERHEAD = 192 * 1024**2


class InsufficientMemoryError(SteerlabError, RuntimeError):
    """Training would not fit in the memory available; the message proposes settings that would."""


@dataclass
class LabelledTexts:
    """Stand-alone positive and negative texts (e.g. reviews), trained at +1 and -1; the sides may differ in size."""

    positive: Sequence[str]
    negative: Sequence[str]
    name: str = "texts"

    def describe(self) -> dict[str, Any]:
        digest = hashlib.sha256(json.dumps([list(self.positive), list(self.negative)]).encode()).hexdigest()
        return {"name": self.name, "sha256": digest, "positive": len(self.positive), "negative": len(self.negative)}


@dataclass
class TrainingSet:
    """One steer's training texts as (prompt, answer prefix, text, steer value) items."""

    name: str
    items: list[tuple[str, str, str, float]]
    description: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, data: ContrastiveDataset | LabelledTexts) -> TrainingSet:
        if isinstance(data, ContrastiveDataset):
            # a prompt-less pair's texts follow the lead every prompt-less pair gets (activations.lead_text)
            items = [
                item
                for p in data.pairs
                for item in ((p.prompt, lead_text(p), p.positive, 1.0), (p.prompt, lead_text(p), p.negative, -1.0))
            ]
            return cls(data.name, items, data.describe())
        if isinstance(data, LabelledTexts):
            if not data.positive or not data.negative:
                raise DatasetError(
                    f"{data.name}: LM-Steer needs both positive and negative texts "
                    f"(got {len(data.positive)} positive, {len(data.negative)} negative)"
                )
            items = [("", "", t, 1.0) for t in data.positive] + [("", "", t, -1.0) for t in data.negative]
            return cls(data.name, items, data.describe())
        raise TypeError(f"LM-Steer trains on a ContrastiveDataset or LabelledTexts, not {type(data).__name__}")

    def describe(self) -> dict[str, Any]:
        return self.description


@dataclass
class Example:
    """One training text as token ids; the tokens from index `start` on are predicted (and trained on)."""

    ids: list[int]
    start: int
    full_length: int  # before cutting at max_length (the memory planner tries shorter lengths)
    steer: int
    value: float


def encode_examples(
    lm: LoadedModel, sets: Sequence[TrainingSet], max_length: int, *, report: Callable[[str], None]
) -> list[Example]:
    """Tokenize every text after its context: the chat-templated prompt, or nothing (stand-alone texts).

    As in activation reading, the context and the text are tokenized separately and joined, so the
    trained tokens are exactly the text's tokens.
    """
    tok, chat = lm.tokenizer, bool(lm.use_chat_template)
    contexts: dict[tuple[str, str], list[int]] = {}
    examples, dropped, total = [], 0, 0
    for steer, training_set in enumerate(sets):
        for prompt, prefix, text, value in training_set.items:
            if (prompt, prefix) not in contexts:
                if prompt:
                    text_before = format_prompt(tok, prompt, use_chat_template=chat) + prefix
                    contexts[prompt, prefix] = tok(text_before, add_special_tokens=not chat)["input_ids"]
                else:
                    contexts[prompt, prefix] = tok(prefix, add_special_tokens=True)["input_ids"]
            context = list(contexts[prompt, prefix])
            completion = tok(text, add_special_tokens=False)["input_ids"]
            if not completion:
                raise DatasetError(f"{training_set.name}: a text tokenizes to nothing: {text!r}")
            full = context + list(completion)
            start = max(len(context), 1)  # the very first token of a text without context is not predicted
            total += 1
            if min(len(full), max_length) <= start:
                dropped += 1
                continue
            examples.append(Example(full[:max_length], start, len(full), steer, value))
    if not examples:
        raise DatasetError(
            f"no text has a token to train on within max_length={max_length}: the prompts fill it; raise max_length"
        )
    if dropped:
        report(f"{dropped} of {total} texts have no token to train on within max_length={max_length} and are skipped")
    for steer, training_set in enumerate(sets):
        signs = {e.value > 0 for e in examples if e.steer == steer}
        if signs != {True, False}:
            side = "positive" if True in signs else "negative"
            raise DatasetError(
                f"{training_set.name}: LM-Steer needs positive and negative texts for each steer; "
                f"after cutting at max_length={max_length} only {side} ones are left"
            )
    return examples


@torch.no_grad()
def final_hidden_states(lm: LoadedModel, examples: Sequence[Example]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per example: the frozen model's final hidden states at the positions that predict trained tokens
    ([n, hidden], the LM head's input) and those tokens ([n])."""
    # right padding: positions of real tokens start at 0
    input_ids, mask = pad([e.ids for e in examples], lm.tokenizer.pad_token_id, left=False)
    hidden = head_inputs(lm, input_ids=input_ids.to(lm.device), attention_mask=mask.to(lm.device), use_cache=False)
    return [
        (hidden[i, e.start - 1 : len(e.ids) - 1].clone(), torch.tensor(e.ids[e.start :], device=hidden.device))
        for i, e in enumerate(examples)
    ]


def chunked_loss(
    lm: LoadedModel,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    values: torch.Tensor,
    projector1: torch.Tensor,
    projector2: torch.Tensor,
    epsilon: float,
    chunk_size: int,
    *,
    backward: bool,
) -> float:
    """Mean cross-entropy of the steered logits over all tokens, `chunk_size` tokens at a time.

    hidden [n, d] (LM head inputs), targets [n], values [n, num_steers]. With `backward`, each chunk's
    share of the mean is backpropagated at once, so gradients accumulate into P1/P2 exactly as for the
    full loss while only one chunk's logits are alive.
    """
    n, total = targets.numel(), 0.0
    for start in range(0, n, chunk_size):
        end = min(start + chunk_size, n)
        steered = steered_hidden(hidden[start:end, None], projector1, projector2, values[start:end], epsilon)[:, 0]
        logits = head_logits(lm, steered)
        loss = F.cross_entropy(logits, targets[start:end], reduction="sum") / n
        if backward:
            loss.backward()
        total += float(loss.detach())
    return total


def _batches(n: int, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[list[int]]:
    """`steps` batches drawn from successive shuffles of the n examples."""
    pool: list[int] = []
    for _ in range(steps):
        while len(pool) < batch_size:
            pool += torch.randperm(n, generator=generator).tolist()
        yield pool[:batch_size]
        pool = pool[batch_size:]


def train(
    lm: LoadedModel,
    examples: Sequence[Example],
    config: LMSteerConfig,
    *,
    progress: Callable[[int], object] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Adam on P1, P2 (random start, scaled by init_var) for config.steps batches; returns them and loss stats."""
    generator = torch.Generator().manual_seed(config.seed)
    shape = (config.num_steers, lm.hidden_size, config.rank)
    device = lm.model.get_output_embeddings().weight.device
    p1 = (torch.randn(shape, generator=generator) * config.init_var).to(device).requires_grad_()
    p2 = (torch.randn(shape, generator=generator) * config.init_var).to(device).requires_grad_()
    optimizer = torch.optim.Adam([p1, p2], lr=config.lr)
    losses = []
    with frozen(lm.model):
        cache: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
        if config.cache_hidden_states:
            order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))  # similar lengths pad less
            cache = {}
            for s in range(0, len(order), config.batch_size):
                chunk = order[s : s + config.batch_size]
                cache.update(zip(chunk, final_hidden_states(lm, [examples[i] for i in chunk]), strict=False))
        for batch in _batches(len(examples), config.batch_size, config.steps, generator):
            parts = (
                [cache[i] for i in batch]
                if cache is not None
                else final_hidden_states(lm, [examples[i] for i in batch])
            )
            values = torch.zeros(sum(len(t) for _, t in parts), config.num_steers)
            offset = 0
            for i, (_, t) in zip(batch, parts, strict=False):
                values[offset : offset + len(t), examples[i].steer] = examples[i].value
                offset += len(t)
            optimizer.zero_grad(set_to_none=True)
            losses.append(
                chunked_loss(
                    lm,
                    torch.cat([h for h, _ in parts]),
                    torch.cat([t for _, t in parts]),
                    values.to(device),
                    p1,
                    p2,
                    config.epsilon,
                    config.chunk_size,
                    backward=True,
                )
            )
            optimizer.step()
            if progress:
                progress(1)
    window = max(1, min(10, len(losses) // 2))
    stats = {
        "examples": len(examples),
        "loss_start": round(sum(losses[:window]) / window, 4),
        "loss_end": round(sum(losses[-window:]) / window, 4),
    }
    return p1.detach().cpu(), p2.detach().cpu(), stats


# ---- memory planning ------------------------------------------------------------------------------
@dataclass
class MemoryEstimate:
    """Bytes training needs beyond the loaded model, by part, and what the device has free."""

    parts: dict[str, int]
    available: int | None
    source: str

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        return self.available is None or self.total <= self.available

    def summary(self) -> str:
        parts = ", ".join(f"{name} {_gib(b)}" for name, b in self.parts.items())
        have = f"{_gib(self.available)} available ({self.source})" if self.available is not None else f"({self.source})"
        return f"LM-Steer training needs about {_gib(self.total)} beyond the model ({parts}); {have}"


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def available_memory(device: torch.device, cap_gb: float | None) -> tuple[int | None, str]:
    """Free memory where training runs: free GPU memory, or MemAvailable from /proc/meminfo; capped by max_memory_gb."""
    free, source = None, "free memory unknown on this system; not checked"
    if device.type == "cuda":
        free, source = int(torch.cuda.mem_get_info(device)[0]), "free GPU memory"
    elif device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    free, source = int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
        except OSError:
            pass
    if cap_gb is not None and (free is None or cap_gb * GIB < free):
        free, source = int(cap_gb * GIB), "max_memory_gb"
    return free, source


def memory_parts(lm: LoadedModel, examples: Sequence[Example], config: LMSteerConfig) -> dict[str, int]:
    """Bytes each part of training needs at its peak (a deliberately generous estimate)."""
    cfg = lm.model.config.get_text_config() if hasattr(lm.model.config, "get_text_config") else lm.model.config
    d = lm.hidden_size
    inter = int(getattr(cfg, "intermediate_size", None) or 4 * d)
    heads = int(getattr(cfg, "num_attention_heads", None) or max(1, d // 64))
    vocab = int(lm.model.get_output_embeddings().weight.shape[0])
    el = next(lm.model.parameters()).element_size()
    k, r, b = config.num_steers, config.rank, config.batch_size
    length = min(config.max_length, max(e.full_length for e in examples))
    trained = sorted(max(0, min(e.full_length, config.max_length) - e.start) for e in examples)
    step_tokens = sum(trained[-b:])  # the most any batch can put through the head
    chunk = min(config.chunk_size, step_tokens)
    per_token = d * el + 8 + 4 * k  # hidden state, target id, steer values
    return {
        # one no-grad forward of a padded batch: residual stream, attention and MLP activations, scores
        "frozen forward": b * length * (6 * d + 3 * inter) * el + 2 * b * heads * length * length * 4,
        "hidden states": (sum(trained) if config.cache_hidden_states else 0) * per_token + step_tokens * per_token,
        # logits in the head's dtype, their float32 copy, log-softmax and its gradient; the low-rank products
        "logits chunk": chunk * vocab * (el + 12) + chunk * (2 * k * r + 3 * d) * 4,
        "steer and Adam": 4 * 2 * k * d * r * 4,  # P1, P2 with their gradients and two Adam moments
        "runtime": RUNTIME_OVERHEAD,
    }


def check_memory(
    lm: LoadedModel, examples: Sequence[Example], config: LMSteerConfig, report: Callable[[str], None]
) -> MemoryEstimate:
    """Report the estimate; if it does not fit, raise with the settings (changed one at a time) that would."""
    available, source = available_memory(lm.device, config.max_memory_gb)
    estimate = MemoryEstimate(memory_parts(lm, examples, config), available, source)
    report(estimate.summary())
    if estimate.fits:
        return estimate

    def fits(trial: LMSteerConfig) -> int | None:
        total = sum(memory_parts(lm, examples, trial).values())
        return total if available is None or total <= available else None

    proposals = []
    for name, floor in (("batch_size", 1), ("max_length", 16), ("chunk_size", 64), ("rank", 1)):
        value = getattr(config, name)
        while value > floor:
            value = max(floor, value // 2)
            total = fits(replace(config, **{name: value}))
            if total is not None:
                proposals.append(f"{name}={value} (about {_gib(total)})")
                break
    if config.cache_hidden_states:
        total = fits(replace(config, cache_hidden_states=False))
        if total is not None:
            proposals.append(f"cache_hidden_states=false (about {_gib(total)}; slower)")
    if not proposals:
        smallest = replace(
            config,
            batch_size=1,
            max_length=min(config.max_length, 64),
            chunk_size=64,
            rank=min(config.rank, 16),
            cache_hidden_states=False,
        )
        total = fits(smallest)
        proposals.append(
            f"batch_size=1 max_length={smallest.max_length} chunk_size=64 rank={smallest.rank} "
            f"cache_hidden_states=false together (about {_gib(total)})"
            if total is not None
            else "a machine with more memory: even batch_size=1 max_length=64 chunk_size=64 rank=16 does not fit"
        )
    raise InsufficientMemoryError(f"{estimate.summary()}, so it will not fit; try {' or '.join(proposals)}")
