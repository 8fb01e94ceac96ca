"""Dynamic batching over one model: requests arriving within a short window share forward passes.

Each request becomes rows (its n choices, plus the unsteered originals when asked). Rows of different
requests carry different vectors and multipliers through per-row steering: every distinct
(vector, layers, positions, operator) gets one SteeringSpec whose multiplier is 0 on rows that do not use
it, so those rows keep their hidden states bit for bit; conditional items decide per row from that row's
prompt, and directional ablation applies to the rows that ask for it. Sampled rows draw from their own seeded generator. A row's tokens
therefore never depend on what else is in its batch; frequency/presence penalties, stop sequences and
log-probabilities are per row too. Tokens stream back to the request's event loop after every decoding step.

A request is checked completely before it gets here (server.app), but a batch that fails anyway is run again in
halves down to single requests: only the request whose own rows raise fails, with its own error, and the others
resume where they were, with the tokens they would have had alone.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria

from ..ablation import DirectionalAblation
from ..conditional import ConditionalSteering
from ..generation import GenerationConfig, RowPenalties, StepLogprobs, generate_tokens
from ..models import LoadedModel
from ..steering import CombinedSteering, SpecSteering, Steer, SteeringSpec
from .errors import ApiError
from .registry import ResolvedSteering

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowPlan:
    """One sequence to generate: prompt tokens, its own token budget, its steering (empty = original), seed,
    stop sequences, penalties, and how many alternatives to report per token (None = no logprobs)."""

    prompt_ids: tuple[int, ...]
    max_tokens: int
    steering: tuple[ResolvedSteering, ...]
    seed: int | None = None
    stop: tuple[str, ...] = ()
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logprobs: int | None = None


@dataclass(frozen=True)
class Sampling:
    """Rows batch together only when they decode alike (HF applies one temperature/top-p per call)."""

    do_sample: bool
    temperature: float
    top_p: float

    @classmethod
    def of(cls, temperature: float, top_p: float) -> Sampling:
        return cls(True, temperature, top_p) if temperature > 0 else cls(False, 0.0, 1.0)


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its text, log-probability, and the most likely alternatives at that step."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Delta:
    row: int
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class RowDone:
    row: int
    finish_reason: str  # "stop" (end-of-sequence token or a stop sequence) or "length" (max_tokens reached)
    text: str
    completion_tokens: int
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class JobFailed:
    message: str


Event = Delta | RowDone | JobFailed


@dataclass(eq=False)
class Job:
    """One request's rows and the asyncio queue their events flow back on.

    `sent` (per row: the text and the number of logprobs already sent) and `finished` (rows whose RowDone went
    out) belong to the worker thread: a job run again after its batch failed resumes from them, so its
    client sees each token once.
    """

    rows: list[RowPlan]
    sampling: Sampling
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    arrived: float = field(default_factory=time.monotonic)
    sent: dict[int, tuple[str, int]] = field(default_factory=dict)
    finished: set[int] = field(default_factory=set)

    def emit(self, event: Event) -> None:
        """Thread-safe: called from the worker thread."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class JobQueue:
    """The queue both engines' batchers share: jobs in, one worker thread running the subclass's `_work`, a drain
    on close."""

    batches: int  # batches run (HF) or engine steps run (vLLM)

    def __init__(self, thread_name: str):
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._work, name=thread_name, daemon=True)

    def _work(self) -> None:
        raise NotImplementedError

    @property
    def running_rows(self) -> int:
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._closing:
                raise ApiError(503, "the server is shutting down; retry on a running instance", code="shutting_down")
            self._pending.append(job)
            self._cond.notify()

    def close(self, timeout: float | None = None) -> None:
        """Stop taking jobs, finish every queued and running one, then stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def queued_rows(self) -> int:
        with self._cond:
            return sum(len(job.rows) for job in self._pending)

    def check_steering(self, steering: tuple[ResolvedSteering, ...]) -> None:
        """Raise an ApiError for steering this engine cannot apply (the HF batcher applies every kind)."""


class Batcher(JobQueue):
    """A worker thread that owns the model and runs compatible queued jobs together."""

    def __init__(self, lm: LoadedModel, *, max_batch: int = 16, window_ms: float = 10.0):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        super().__init__("steerlab-batcher")
        self.lm = lm
        self.max_batch = max_batch
        self.window = window_ms / 1000.0
        self._running_rows = 0
        self.batches = 0
        eos = lm.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self._eos = set(eos) | ({lm.tokenizer.eos_token_id} if lm.tokenizer.eos_token_id is not None else set())

    @property
    def running_rows(self) -> int:
        return self._running_rows

    def _work(self) -> None:
        while True:
            jobs = self._take()
            if not jobs:
                return
            self._running_rows = sum(len(j.rows) for j in jobs)
            try:
                self._run_isolated(jobs)
            finally:
                self._running_rows = 0

    def _run_isolated(self, jobs: list[Job]) -> None:
        """Run `jobs` as one batch; if it fails, run each half again, down to single jobs, so only a request
        whose own rows raise fails, with its own error; the others get what they get alone (a row's tokens do
        not depend on its batch), resuming after what they had already sent."""
        jobs = [job for job in jobs if not job.cancelled.is_set() and len(job.finished) < len(job.rows)]
        if not jobs:
            return
        try:
            self._run(jobs)
        except Exception as exc:  # the worker keeps serving
            if len(jobs) == 1:
                log.exception("a request failed in generation")
                jobs[0].emit(JobFailed(f"generation failed: {type(exc).__name__}: {exc}"))
                return
            log.warning(
                "a batch of %d requests failed (%s); running it again in halves to isolate the failing request",
                len(jobs),
                type(exc).__name__,
            )
            half = len(jobs) // 2
            self._run_isolated(jobs[:half])
            self._run_isolated(jobs[half:])
        finally:
            self.batches += 1

    def _take(self) -> list[Job]:
        """Wait for work, then up to the batch window for compatible jobs; [] once closed and drained."""
        with self._cond:
            while True:
                while not self._pending and not self._closing:
                    self._cond.wait()
                for job in [j for j in self._pending if j.cancelled.is_set()]:
                    self._pending.remove(job)
                if not self._pending:
                    if self._closing:
                        return []
                    continue
                first = self._pending[0]
                deadline = first.arrived + self.window
                while not self._closing:
                    ready = sum(len(j.rows) for j in self._pending if j.sampling == first.sampling)
                    left = deadline - time.monotonic()
                    if ready >= self.max_batch or left <= 0:
                        break
                    self._cond.wait(left)
                taken: list[Job] = []
                rows = 0
                for job in list(self._pending):
                    if job.sampling != first.sampling or (taken and rows + len(job.rows) > self.max_batch):
                        continue
                    taken.append(job)
                    rows += len(job.rows)
                    self._pending.remove(job)
                return taken

    def _run(self, jobs: list[Job]) -> None:
        plans = [(job, i, plan) for job in jobs for i, plan in enumerate(job.rows) if i not in job.finished]
        sampling = jobs[0].sampling
        steer = batch_steering([plan for _, _, plan in plans])
        config = GenerationConfig(
            max_new_tokens=max(plan.max_tokens for _, _, plan in plans),
            do_sample=sampling.do_sample,
            temperature=sampling.temperature or 1.0,
            top_p=sampling.top_p,
        )
        seeds = [plan.seed for _, _, plan in plans] if sampling.do_sample else None
        streams = [_RowStream(job, i, plan, self.lm.tokenizer) for job, i, plan in plans]
        processors: list = []
        if any(plan.frequency_penalty or plan.presence_penalty for _, _, plan in plans):
            processors.append(
                RowPenalties([p.frequency_penalty for _, _, p in plans], [p.presence_penalty for _, _, p in plans])
            )
        recorder = StepLogprobs() if any(plan.logprobs is not None for _, _, plan in plans) else None
        if recorder is not None:
            processors.append(recorder)
        generate_tokens(
            self.lm,
            [plan.prompt_ids for _, _, plan in plans],
            steer,
            config=config,
            row_seeds=seeds,  # type: ignore[arg-type]  # a sampled row always has a seed (app.py)
            stopping_criteria=[_Stepper(streams, self._eos, recorder)],
            logits_processors=processors,
        )
        for stream in streams:
            stream.finish("length")  # rows still open ran to the batch's token budget, which is theirs


def batch_steering(plans: list[RowPlan]) -> Steer | None:
    """The batch's steering: one spec per distinct (vector, layers, positions, operator, budget, repeat) with a per-row
    multiplier list (0 = off); those gated by a condition in one ConditionalSteering per condition; one
    DirectionalAblation per ablated (vector, layer) with a per-row on/off list.

    Parts are applied in a fixed order (unconditional specs, then each condition's, then ablations; sorted
    within each), so a row's operations happen in the same order whatever else shares its batch: its
    floating-point sums then match the row served alone bit for bit.
    """
    per_row: list[dict[tuple, float]] = []
    items: dict[tuple, ResolvedSteering] = {}
    for plan in plans:
        mults: dict[tuple, float] = {}
        seen: dict[tuple, int] = {}
        for item in plan.steering:
            base = (
                item.ablate_direction,
                item.condition_name or "",
                item.name,
                item.layers,
                item.positions,
                item.operator,
                (item.budget.tokens, item.budget.ramp) if item.budget else (),
            )
            key = (*base, seen.get(base, 0))
            seen[base] = seen.get(base, 0) + 1
            mults[key] = item.multiplier
            items[key] = item
        per_row.append(mults)
    if not items:
        return None
    parts: list[Steer] = []
    groups: dict[tuple[bool, str], list[tuple]] = {}
    for key in sorted(items):
        groups.setdefault(key[:2], []).append(key)
    for (ablation, condition), keys in groups.items():
        if ablation:
            parts += [
                DirectionalAblation(items[key].vector, items[key].layers[0][0], rows=[key in row for row in per_row])
                for key in keys
            ]
            continue
        specs = SpecSteering(
            [
                SteeringSpec(
                    items[key].vector,
                    multiplier=[row.get(key, 0.0) for row in per_row],
                    layers=dict(items[key].layers),
                    positions=items[key].positions,
                    operator=items[key].operator,
                    budget=items[key].budget,
                )
                for key in keys
            ]
        )
        gate = items[keys[0]].condition
        assert not condition or gate is not None  # the registry resolves a condition's name to the condition
        parts.append(ConditionalSteering(specs, gate) if condition and gate is not None else specs)
    return parts[0] if len(parts) == 1 else CombinedSteering(parts)


class _RowStream:
    """One row's tokens as they arrive: text deltas out, a single RowDone at the end.

    Text that could be the start of a stop sequence is held back until it is clear either way, so a stop
    sequence never reaches the client, streamed or not.
    """

    def __init__(self, job: Job, row: int, plan: RowPlan, tokenizer):
        self.job, self.row, self.tokenizer = job, row, tokenizer
        self.max_tokens, self.stops, self.top = plan.max_tokens, plan.stop, plan.logprobs
        self.tokens: list[int] = []
        self.logprobs: list[TokenLogprob] = []
        # What went out already: nothing, or what an earlier run of this row sent before its batch failed.
        self.sent, self.logprobs_sent = job.sent.get(row, ("", 0))
        self.done = False

    def push(self, token: int, eos: set[int], step: torch.Tensor | None = None) -> None:
        if self.done:
            return
        if self.job.cancelled.is_set():
            self.done = True  # nobody is listening; stop spending steps on this row
            return
        if token in eos:
            self.finish("stop")
            return
        self.tokens.append(token)
        if self.top is not None and step is not None:
            self.logprobs.append(self._logprob(token, step))
        text = self._text()
        cut = _first_stop(text, self.stops)
        if cut is not None:
            self.finish("stop", text[:cut])
            return
        safe = len(text) - _held_back(text, self.stops)
        # Hold back a split multi-byte character until its last byte arrives.
        if not text.endswith("\ufffd") and text.startswith(self.sent) and safe > len(self.sent):
            self._emit(text[len(self.sent) : safe], text[:safe])
        if len(self.tokens) >= self.max_tokens:
            self.finish("length")

    def finish(self, reason: str, text: str | None = None) -> None:
        if self.done:
            return
        self.done = True
        text = self._text() if text is None else text
        if text.startswith(self.sent) and (len(text) > len(self.sent) or len(self.logprobs) > self.logprobs_sent):
            self._emit(text[len(self.sent) :], text)
        self.job.finished.add(self.row)
        self.job.emit(RowDone(self.row, reason, text, len(self.tokens), tuple(self.logprobs)))

    def _emit(self, text: str, sent: str) -> None:
        """Send `text` (what follows the text sent so far, which is now `sent`) with the logprobs not sent yet."""
        fresh = tuple(self.logprobs[self.logprobs_sent :])
        self.sent, self.logprobs_sent = sent, max(self.logprobs_sent, len(self.logprobs))
        self.job.sent[self.row] = (self.sent, self.logprobs_sent)
        self.job.emit(Delta(self.row, text, fresh))

    def _logprob(self, token: int, step: torch.Tensor) -> TokenLogprob:
        top: tuple[tuple[str, float], ...] = ()
        if self.top:
            values, ids = step.topk(self.top)
            top = tuple((self._piece(i), float(v)) for v, i in zip(values.tolist(), ids.tolist(), strict=False))
        return TokenLogprob(self._piece(token), float(step[token]), top)

    def _piece(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False)

    def _text(self) -> str:
        return self.tokenizer.decode(self.tokens, skip_special_tokens=True)


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the earliest stop sequence in `text` begins, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that a stop sequence could still complete."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-size:]):
                longest = size
                break
    return longest


class _Stepper(StoppingCriteria):
    """Called by generate after every step: feeds each row its new token and ends rows that are done."""

    def __init__(self, streams: list[_RowStream], eos: set[int], recorder: StepLogprobs | None = None):
        self.streams = streams
        self.eos = eos
        self.recorder = recorder

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.Tensor:
        step = self.recorder.last if self.recorder is not None else None
        for i, (stream, token) in enumerate(zip(self.streams, input_ids[:, -1].tolist(), strict=False)):
            stream.push(token, self.eos, step[i] if step is not None else None)
        return torch.tensor([s.done for s in self.streams], dtype=torch.bool, device=input_ids.device)
