"""Steered generation beside the unsteered original, in the same batched call."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, overload

import torch
from transformers import (
    GenerationMixin,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TopPLogitsWarper,
)

from .batching import pad
from .data import format_prompt
from .errors import UsageError
from .models import LoadedModel
from .steering import CombinedSteering, SpecSteering, Steer, SteeringSpec
from .vector import SteeringVector

# Engines other than HF behind `generate(engine=NAME)`: name -> factory(lm) returning an object with the same
# `.generate`. The vLLM bridge sits above this module (steerlab.interop.vllm), so steerlab/__init__ registers it.
ENGINES: dict[str, Callable[[LoadedModel], Any]] = {}


@dataclass
class GenerationResult:
    """One prompt's steered output and, when asked, its unsteered original."""

    prompt: str
    steered: str
    original: str | None = None


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise UsageError("max_new_tokens must be at least 1")
        if not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise UsageError("temperature must be > 0 and top_p in (0, 1]")


class RowSeededSampler(LogitsProcessor):
    """Sample each row from its own seeded generator (Gumbel-max), so a row's text never depends on its batch.

    HF's sampler draws one multinomial over the whole batch: the same prompt and seed give different
    text depending on which other rows ride along. Perturbing each row's tempered, top-p-filtered logits
    with Gumbel noise from that row's generator and taking the argmax is an exact sample per row.
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.temperature = temperature
        self.top_p = TopPLogitsWarper(top_p) if top_p < 1.0 else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float() / self.temperature
        if self.top_p is not None:
            scores = self.top_p(input_ids, scores)
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=g) for g in self._rows(scores.shape[0])])
        gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-20, max=1 - 1e-7)))
        return scores + gumbel.to(scores.device)

    def _rows(self, batch: int) -> list[torch.Generator]:
        if batch != len(self.generators):
            raise UsageError(f"{len(self.generators)} row seeds for a batch of {batch} rows")
        return self.generators


class RowPenalties(LogitsProcessor):
    """OpenAI's frequency and presence penalties, one pair per row, over the tokens generated so far.

    A token already generated c times loses `frequency * c + presence * (c > 0)` from its logit; the prompt
    does not count. Rows with both penalties 0 are left exactly as they were.
    """

    def __init__(self, frequency: Sequence[float], presence: Sequence[float]):
        self.frequency = torch.tensor([float(f) for f in frequency], dtype=torch.float32)[:, None]
        self.presence = torch.tensor([float(p) for p in presence], dtype=torch.float32)[:, None]
        self.start: int | None = None  # the padded prompt width, seen at the first step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if self.start is None:
            self.start = input_ids.shape[1]
        generated = input_ids[:, self.start :]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros(scores.shape, dtype=torch.float32, device=scores.device)
        counts.scatter_add_(1, generated.to(scores.device), torch.ones(generated.shape, device=scores.device))
        penalty = self.frequency.to(scores.device) * counts + self.presence.to(scores.device) * (counts > 0)
        return scores - penalty.to(scores.dtype)


class StepLogprobs(LogitsProcessor):
    """Keeps each step's log-probabilities (after penalties, before temperature and sampling) for the caller."""

    def __init__(self):
        self.last: torch.Tensor | None = None  # [rows, vocab] of the step just taken

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        self.last = torch.log_softmax(scores.float(), dim=-1).cpu()
        return scores


@overload
def as_steer(steering: Steer | SteeringVector | SteeringSpec | Sequence[SteeringSpec | Steer]) -> Steer: ...
@overload
def as_steer(steering: None) -> None: ...
def as_steer(steering: Steer | SteeringVector | SteeringSpec | Sequence[SteeringSpec | Steer] | None) -> Steer | None:
    """Accept a vector, a spec, a list of specs, or any steer with a `kind` (an LM-Steer, a prompt steer).

    A list that also holds steers (a ConditionalSteering, a DirectionalAblation, ...) becomes one
    CombinedSteering of its items in order, each vector or spec a SpecSteering of its own.
    """
    if steering is None:
        return None
    if isinstance(steering, SteeringVector):
        return SpecSteering(SteeringSpec(steering))
    if isinstance(steering, (list, tuple)) and not all(isinstance(s, SteeringSpec) for s in steering):
        return CombinedSteering([as_steer(s) for s in steering])
    if isinstance(steering, (SteeringSpec, list, tuple)):
        return SpecSteering(steering)
    assert not isinstance(steering, Sequence), "a list or tuple of specs and steers"
    return steering


def encode_prompts(
    lm: LoadedModel, prompts: Sequence[str], *, use_chat_template: bool | None = None, system: str | None = None
) -> list[list[int]]:
    """Token ids each prompt is generated from (through the chat template unless told not to)."""
    chat = lm.use_chat_template if use_chat_template is None else use_chat_template
    texts = [format_prompt(lm.tokenizer, p, use_chat_template=bool(chat), system=system) for p in prompts]
    return [lm.tokenizer(t, add_special_tokens=not chat)["input_ids"] for t in texts]


def generate(
    lm: LoadedModel,
    prompts: Sequence[str],
    steering: Steer | SteeringVector | SteeringSpec | Sequence[SteeringSpec | Steer] | None = None,
    *,
    generate_orig_output: bool = False,
    config: GenerationConfig | None = None,
    batch_size: int = 8,
    use_chat_template: bool | None = None,
    system: str | None = None,
    task: str | None = None,
    progress: Callable[[int], object] | None = None,
    engine: str | object = "hf",
) -> list[GenerationResult]:
    """Generate for every prompt with steering on, and (generate_orig_output) with it off, in one batch.

    The original rows ride in the same forward passes as the steered rows with a per-row multiplier of 0,
    so they are truly unsteered and cost no separate run. A prompt steer (kind "prompt") changes the prompt
    text instead: its rows carry the instruction and the original rows the prompt exactly as given.
    `engine="vllm"` (or a `steerlab.interop.vllm.engine.VLLMEngine`) generates the same rows on vLLM through
    steerlab's plugin; `batch_size` does not apply there (vLLM batches continuously).
    """
    if engine != "hf":
        runner = _engine(engine, lm)
        return runner.generate(
            lm,
            prompts,
            steering,
            generate_orig_output=generate_orig_output,
            config=config,
            use_chat_template=use_chat_template,
            system=system,
            task=task,
            progress=progress,
        )
    config = config or GenerationConfig()
    steer = as_steer(steering)
    if steer is not None and steer.kind == "prompt":
        return _generate_prompted(
            lm,
            prompts,
            steer,
            generate_orig_output=generate_orig_output,
            config=config,
            batch_size=batch_size,
            use_chat_template=use_chat_template,
            system=system,
            progress=progress,
        )
    ids = encode_prompts(lm, prompts, use_chat_template=use_chat_template, system=system)
    results: list[GenerationResult] = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        with_orig = generate_orig_output and steer is not None
        rows = chunk + chunk if with_orig else chunk
        scale = torch.tensor([1.0] * len(chunk) + ([0.0] * len(chunk) if with_orig else []))
        # Prompt i samples with seed + i, and its original with the same seed: they differ only by steering.
        seeds = [config.seed + start + i for i in range(len(chunk))] if config.seed is not None else None
        if seeds is not None and with_orig:
            seeds = seeds + seeds
        texts = generate_ids(lm, rows, steer, row_scale=scale, config=config, task=task, row_seeds=seeds)
        for i, prompt in enumerate(prompts[start : start + len(chunk)]):
            original = texts[len(chunk) + i] if with_orig else None
            if generate_orig_output and steer is None:
                original = texts[i]
            results.append(GenerationResult(prompt, texts[i], original))
        if progress:
            progress(len(chunk))
    return results


def _generate_prompted(
    lm: LoadedModel,
    prompts: Sequence[str],
    steer,
    *,
    generate_orig_output: bool,
    config: GenerationConfig,
    batch_size: int,
    use_chat_template: bool | None,
    system: str | None,
    progress: Callable[[int], object] | None,
) -> list[GenerationResult]:
    """Rows with the prompt steer's instruction and, when asked, the truly unprompted originals, in one batch."""
    chat = bool(lm.use_chat_template if use_chat_template is None else use_chat_template)
    texts = [steer.prompt_text(lm.tokenizer, p, use_chat_template=chat, system=system) for p in prompts]
    steered_ids = [lm.tokenizer(t, add_special_tokens=not chat)["input_ids"] for t in texts]
    original_ids = encode_prompts(lm, prompts, use_chat_template=chat, system=system) if generate_orig_output else []
    results: list[GenerationResult] = []
    for start in range(0, len(prompts), batch_size):
        chunk = steered_ids[start : start + batch_size]
        rows = chunk + original_ids[start : start + batch_size]
        out = generate_ids(lm, rows, None, config=config)
        for i, prompt in enumerate(prompts[start : start + len(chunk)]):
            results.append(GenerationResult(prompt, out[i], out[len(chunk) + i] if generate_orig_output else None))
        if progress:
            progress(len(chunk))
    return results


def _engine(engine: str | object, lm: LoadedModel):
    """Another engine behind `generate`: an object with `.generate`, or a name in ENGINES."""
    if not isinstance(engine, str):
        return engine
    factory = ENGINES.get(engine)
    if factory is None:
        raise UsageError(f"engine must be 'hf' or one of {', '.join(ENGINES) or 'none'}; got {engine!r}")
    return factory(lm)


def generate_ids(
    lm: LoadedModel,
    rows: Sequence[Sequence[int]],
    steer: Steer | None,
    *,
    row_scale: torch.Tensor | None = None,
    config: GenerationConfig,
    task: str | None = None,
    row_seeds: Sequence[int] | None = None,
) -> list[str]:
    """Left-pad token rows, generate with per-row steering scales, and decode only the new tokens.

    With sampling and `row_seeds`, each row samples from its own generator (see RowSeededSampler).
    """
    new = generate_tokens(lm, rows, steer, row_scale=row_scale, config=config, task=task, row_seeds=row_seeds)
    return lm.tokenizer.batch_decode(new, skip_special_tokens=True)


def end_token_ids(lm: LoadedModel) -> list[int]:
    """The ids that end a generated row: the model's end-of-text tokens (its generation config may list several,
    e.g. Qwen2.5's <|im_end|> and <|endoftext|>) and the padding generation puts after them."""
    config_eos = getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)
    ids = config_eos if isinstance(config_eos, list) else [config_eos]
    ids = [*ids, lm.tokenizer.eos_token_id, lm.tokenizer.pad_token_id]
    return sorted({int(i) for i in ids if i is not None})


def _generator(lm: LoadedModel) -> GenerationMixin:
    if not isinstance(lm.model, GenerationMixin):
        raise TypeError(f"{lm.name} ({type(lm.model).__name__}) cannot generate: load it as a causal LM")
    return lm.model


@torch.inference_mode()
def generate_tokens(
    lm: LoadedModel,
    rows: Sequence[Sequence[int]],
    steer: Steer | None,
    *,
    row_scale: torch.Tensor | None = None,
    config: GenerationConfig,
    task: str | None = None,
    row_seeds: Sequence[int] | None = None,
    stopping_criteria: Sequence[StoppingCriteria] = (),
    logits_processors: Sequence[LogitsProcessor] = (),
) -> torch.Tensor:
    """The new tokens [rows, steps] of `generate_ids` (pad after a row ends), before decoding.

    `stopping_criteria` see the ids after every step and may end rows early: the server streams each
    row's tokens and stops it at its own max_tokens this way. `logits_processors` (e.g. RowPenalties,
    StepLogprobs) run in order on each step's logits, before sampling.
    """
    tok = lm.tokenizer
    input_ids, mask = pad([list(r) for r in rows], tok.pad_token_id, left=True)
    width = input_ids.shape[1]
    kwargs = {
        "max_new_tokens": config.max_new_tokens,
        "do_sample": config.do_sample,
        "pad_token_id": tok.pad_token_id,
        "repetition_penalty": config.repetition_penalty,
    }
    if config.do_sample and row_seeds is None:
        kwargs.update(temperature=config.temperature, top_p=config.top_p, top_k=None)
        if config.seed is not None:
            torch.manual_seed(config.seed)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    processors = list(logits_processors)
    if config.do_sample and row_seeds is not None:
        processors.append(RowSeededSampler(row_seeds, config.temperature, config.top_p))
    if processors:
        kwargs["logits_processor"] = LogitsProcessorList(processors)
    if stopping_criteria:
        kwargs["stopping_criteria"] = StoppingCriteriaList(stopping_criteria)
    device = lm.device
    handle = steer.attach(lm, row_scale=row_scale, prompt_lengths=mask.sum(1), task=task) if steer else None
    try:
        out = _generator(lm).generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), **kwargs)
    finally:
        if handle is not None:
            handle.remove()
    return out[:, width:].cpu()
