"""The HTTP API: OpenAI-style chat/completions with per-request steering, vector listing, health, playground.

Every route but the playground's own static files needs the bearer token when one is set. Requests are
validated completely here (size, text, fields, vectors, layers, lengths, positions against the endpoint and
the prompt) before any work reaches the batcher, so one request's mistake never reaches another's batch;
tokenising and scoring run in worker threads so the event loop never stalls, and every failure, even an
unexpected one, is answered in the OpenAI error shape on a connection that stays usable.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from ..generation import encode_prompts
from ..models import LoadedModel
from ..positions import ROLES, TemplateError, marker_ids, parse_window, prompt_roles
from ..version import __version__
from . import playground_metrics
from .batcher import Batcher, Delta, Job, JobFailed, JobQueue, RowDone, RowPlan, Sampling, TokenLogprob
from .errors import ApiError, install_handlers, invalid_text
from .guards import BearerAuth, BodyLimit, CatchAll, LoopbackHosts
from .registry import ResolvedSteering, VectorRegistry
from .schemas import ChatCompletionRequest, CompletionRequest, GenerationFields, ScoreRequest, unencodable

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
_ids = itertools.count()


@dataclass(frozen=True)
class Limits:
    """Sizes a request may not exceed (413 beyond them): raw body bytes, prompt characters (all messages
    together), characters per scored text. Scoring is quadratic in text length, hence the smaller cap."""

    max_body_bytes: int = 1 << 20
    max_prompt_chars: int = 100_000
    max_text_chars: int = 10_000

    def __post_init__(self) -> None:
        if min(self.max_body_bytes, self.max_prompt_chars, self.max_text_chars) < 1:
            raise ValueError("size limits must be at least 1")


def create_app(
    lm: LoadedModel,
    registry: VectorRegistry,
    *,
    token: str | None = None,
    max_batch: int = 16,
    batch_window_ms: float = 10.0,
    max_tokens_limit: int = 512,
    batcher: JobQueue | None = None,
    limits: Limits = Limits(),
) -> FastAPI:
    """Build the app; the batcher thread starts with the app and drains in-flight work on shutdown.

    `batcher` replaces the HF batcher with another engine's (the vLLM plugin's VLLMBatcher), same interface.
    Without a token the app warns at start-up, and when it is bound to a loopback address it answers only
    requests whose Host header names a loopback host (a web page elsewhere cannot reach it by DNS rebinding).
    """
    batcher = batcher or Batcher(lm, max_batch=max_batch, window_ms=batch_window_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if token is None:
            log.warning(
                "serving without a token: any process or user that can reach this port can use the API "
                "(set STEERLAB_TOKEN or --token); on loopback, only Host headers naming localhost are served"
            )
        batcher.start()
        yield
        await asyncio.to_thread(batcher.close)

    # Swagger/ReDoc pages load their scripts from a CDN; the server works offline, so only the JSON schema.
    app = FastAPI(title="steerlab", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher = batcher
    app.state.limits = limits
    install_handlers(app)
    # Outermost first: catch-all, Host check, token check (before the body is read), body size.
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(BearerAuth, token=token)
    app.add_middleware(LoopbackHosts, enabled=token is None)
    app.add_middleware(CatchAll)
    service = _Service(lm, registry, batcher, max_tokens_limit, limits)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": lm.name,
            "vectors": len(registry.entries),
            "queued_rows": batcher.queued_rows,
            "running_rows": batcher.running_rows,
            "batches": batcher.batches,
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": lm.name,
                    "object": "model",
                    "owned_by": "steerlab",
                    "num_layers": lm.num_layers,
                    "hidden_size": lm.hidden_size,
                    "chat_template": bool(lm.use_chat_template),
                }
            ],
        }

    @app.get("/v1/vectors")
    async def vectors() -> dict[str, Any]:
        return {"object": "list", "data": registry.describe()}

    @app.get("/v1/metrics")
    async def metric_list() -> dict[str, Any]:
        return {"object": "list", "data": playground_metrics.describe()}

    @app.post("/v1/score")
    async def score(body: ScoreRequest) -> dict[str, Any]:
        check_text(body)
        metric = playground_metrics.get(body.metric)
        if metric is None or metric.scores is None:
            raise ApiError(
                400,
                f"metric: unknown metric '{body.metric}'; available: {', '.join(playground_metrics.names())}",
                param="metric",
                code="metric_not_found",
            )
        for i, text in enumerate(body.texts):
            if len(text) > limits.max_text_chars:
                raise ApiError(
                    413,
                    f"texts[{i}]: {len(text)} characters is above this server's limit of "
                    f"{limits.max_text_chars} per text",
                    param=f"texts[{i}]",
                    code="text_too_large",
                )
        scores = await asyncio.to_thread(metric.scores, body.texts)
        return {"metric": body.metric, "scores": scores}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest):
        check_text(body)
        service.check_size(body)
        return await service.complete(body, *await asyncio.to_thread(service.prepare, body), chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        check_text(body)
        service.check_size(body)
        return await service.complete(body, *await asyncio.to_thread(service.prepare, body), chat=False)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app


def check_text(body: ChatCompletionRequest | CompletionRequest | ScoreRequest) -> None:
    """Refuse text that is not valid Unicode (a lone surrogate) in any field, naming the field."""
    if found := unencodable(body):
        raise invalid_text(*found)


class _Service:
    """Turns a validated request into batcher rows and the rows' events into OpenAI-shaped responses."""

    def __init__(
        self, lm: LoadedModel, registry: VectorRegistry, batcher: JobQueue, max_tokens_limit: int, limits: Limits
    ):
        self.lm, self.registry, self.batcher, self.max_tokens_limit = lm, registry, batcher, max_tokens_limit
        self.limits = limits
        self.context = getattr(lm.model.config, "max_position_embeddings", None)
        self._tokenizing = threading.Lock()  # one encode at a time: a fast tokenizer is not safe to share
        self._templates: dict = {}  # the chat template's role segments (steerlab.positions), read once

    def check_size(self, body: ChatCompletionRequest | CompletionRequest) -> None:
        if body.prompt_chars > self.limits.max_prompt_chars:
            where = "messages" if isinstance(body, ChatCompletionRequest) else "prompt"
            raise ApiError(
                413,
                f"{where}: the prompt has {body.prompt_chars} characters, above this server's limit "
                f"of {self.limits.max_prompt_chars}",
                param=where,
                code="prompt_too_large",
            )

    def prepare(
        self, body: ChatCompletionRequest | CompletionRequest
    ) -> tuple[list[int], tuple[ResolvedSteering, ...]]:
        """Everything a request is checked against before it joins a batch, in a worker thread: the prompt's
        tokens, the fields, the steering resolved against the registry, the engine and the prompt."""
        if isinstance(body, ChatCompletionRequest):
            prompt_ids, chat = self.chat_ids(body), True
        else:
            prompt_ids, chat = self.completion_ids(body), False
        self._check(body, prompt_ids)
        steering = tuple(self.registry.resolve(body.steering))
        self.batcher.check_steering(steering)
        self._check_positions(steering, prompt_ids, chat=chat)
        return prompt_ids, steering

    def _check_positions(self, steering: tuple[ResolvedSteering, ...], prompt_ids: list[int], *, chat: bool) -> None:
        """Role and window positions are found in token ids while generating; make sure here that they will be,
        so a request that cannot be steered is refused alone instead of failing the batch it would join."""
        for i, item in enumerate(steering):
            where = f"steering[{i}].positions"
            if item.positions in ROLES:
                if not chat:
                    raise ApiError(
                        400,
                        f"{where}: '{item.positions}' is a chat role, and a /v1/completions prompt has no chat "
                        "template to find roles in; use /v1/chat/completions, or positions all, prompt, "
                        "generated, between:OPEN:CLOSE or until:MARKER",
                        param=where,
                        code="positions_unavailable",
                    )
                try:
                    with self._tokenizing:
                        prompt_roles(self.lm.tokenizer, prompt_ids, self._templates)
                except TemplateError as exc:
                    raise ApiError(
                        400,
                        f"{where}: '{item.positions}' cannot be located in these messages: {exc}",
                        param=where,
                        code="positions_unavailable",
                    ) from None
            elif (window := parse_window(item.positions)) is not None:
                for marker in window:
                    try:
                        with self._tokenizing:
                            marker_ids(self.lm.tokenizer, marker)
                    except (ValueError, TypeError) as exc:
                        raise ApiError(400, f"{where}: {exc}", param=where, code="invalid_marker") from None

    def chat_ids(self, body: ChatCompletionRequest) -> list[int]:
        if not self.lm.use_chat_template:
            raise ApiError(
                400,
                f"{self.lm.name} has no chat template; use POST /v1/completions with a plain prompt",
                param="messages",
                code="no_chat_template",
            )
        # "developer" is the newer OpenAI name of the system role.
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.content} for m in body.messages
        ]
        with self._tokenizing:
            text = self.lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return self.lm.tokenizer(text, add_special_tokens=False)["input_ids"]

    def completion_ids(self, body: CompletionRequest) -> list[int]:
        with self._tokenizing:
            return encode_prompts(self.lm, [body.prompt], use_chat_template=False)[0]

    def _check(self, body: GenerationFields, prompt_ids: list[int]) -> None:
        if body.model is not None and body.model != self.lm.name:
            raise ApiError(
                404,
                f"model: '{body.model}' is not served here; this server runs '{self.lm.name}' "
                "(see GET /v1/models), or leave model out",
                param="model",
                code="model_not_found",
            )
        if not prompt_ids:
            raise ApiError(
                400, "prompt: the prompt encodes to no tokens; give some text", param="prompt", code="empty_prompt"
            )
        budget = body.token_budget
        field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        if budget > self.max_tokens_limit:
            raise ApiError(
                400,
                f"{field}: {budget} is above this server's limit of "
                f"{self.max_tokens_limit} (set by serve --max-tokens)",
                param=field,
                code="max_tokens_too_large",
            )
        if self.context and len(prompt_ids) + budget > self.context:
            raise ApiError(
                400,
                f"{field}: prompt ({len(prompt_ids)} tokens) plus {field} ({budget}) "
                f"exceeds the model's context of {self.context} tokens",
                param=field,
                code="context_length_exceeded",
            )

    async def complete(
        self, body: GenerationFields, prompt_ids: list[int], steering: tuple[ResolvedSteering, ...], *, chat: bool
    ):
        sampling = Sampling.of(body.temperature, body.top_p)
        # Choice i samples with seed + i, and its original with the same seed, as the library's generate does.
        seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
        seeds = [seed + i if sampling.do_sample else None for i in range(body.n)]
        ids = tuple(prompt_ids)

        def row(steer: tuple[ResolvedSteering, ...], seed: int | None) -> RowPlan:
            return RowPlan(
                ids,
                body.token_budget,
                steer,
                seed,
                stop=body.stop_sequences,
                frequency_penalty=body.frequency_penalty,
                presence_penalty=body.presence_penalty,
                logprobs=body.top_logprobs_wanted,
            )

        rows = [row(steering, s) for s in seeds]
        if body.include_original:
            rows += [row((), s) for s in seeds]
        job = Job(rows, sampling, asyncio.get_running_loop())
        self.batcher.submit(job)
        shape = _Shape(body, chat, self.lm.name, len(prompt_ids), [s.describe() for s in steering])
        if body.stream:
            return StreamingResponse(
                _sse(job, shape),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            done = await _collect(job)
        finally:
            job.cancelled.set()
        return shape.full(done)


async def _collect(job: Job) -> dict[int, RowDone]:
    done: dict[int, RowDone] = {}
    while len(done) < len(job.rows):
        event = await job.events.get()
        if isinstance(event, JobFailed):
            raise ApiError(500, event.message, code="generation_failed")
        if isinstance(event, RowDone):
            done[event.row] = event
    return done


async def _sse(job: Job, shape: _Shape) -> AsyncIterator[str]:
    """Server-sent events: one chunk per token delta, a finish chunk per choice, then [DONE].

    A failure after the stream has begun cannot change the status code; it is sent as an error event,
    followed by [DONE], so the response still ends cleanly and the connection stays usable.
    """
    try:
        if shape.chat:
            for row in range(len(job.rows)):
                yield _event(shape.chunk(row, {"role": "assistant", "content": ""}, None))
        finished: dict[int, RowDone] = {}
        while len(finished) < len(job.rows):
            event = await job.events.get()
            if isinstance(event, JobFailed):
                yield _event(ApiError(500, event.message, code="generation_failed").body())
                break
            if isinstance(event, Delta):
                yield _event(shape.chunk(event.row, event.text, None, event.logprobs))
            elif isinstance(event, RowDone):
                finished[event.row] = event
                yield _event(shape.chunk(event.row, None, event.finish_reason))
        if shape.include_usage and len(finished) == len(job.rows):
            yield _event({**shape.head(chunk=True), "choices": [], "usage": shape.usage(finished)})
        yield "data: [DONE]\n\n"
    except Exception as exc:
        log.exception("streaming response failed")
        yield _event(ApiError(500, f"internal error: {type(exc).__name__}", code="internal_error").body())
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()  # a client that went away stops its rows at the next step


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class _Shape:
    """The OpenAI response layout of one request: choices 0..n-1 are steered; with include_original,
    choices n..2n-1 are their unsteered originals, each marked `"original": true`."""

    def __init__(self, body: GenerationFields, chat: bool, model: str, prompt_tokens: int, steering: list[dict]):
        self.chat, self.model, self.prompt_tokens, self.steering = chat, model, prompt_tokens, steering
        self.n, self.include_original = body.n, body.include_original
        self.rows = self.n * (2 if self.include_original else 1)
        self.with_logprobs = body.top_logprobs_wanted is not None
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(6)}{next(_ids)}"
        self.created = int(time.time())

    def head(self, *, chunk: bool = False) -> dict[str, Any]:
        kind = ("chat.completion" if self.chat else "text_completion") + (".chunk" if chunk and self.chat else "")
        head = {"id": self.id, "object": kind, "created": self.created, "model": self.model}
        return head if chunk else {**head, "steering": self.steering}

    def _content(self, text: str) -> dict[str, Any]:
        return {"message": {"role": "assistant", "content": text}} if self.chat else {"text": text}

    def _choice(
        self, row: int, body: dict[str, Any], finish_reason: str | None, logprobs: tuple[TokenLogprob, ...] | None
    ) -> dict[str, Any]:
        choice = {
            "index": row,
            **body,
            "finish_reason": finish_reason,
            "logprobs": self._logprobs(logprobs) if self.with_logprobs and logprobs is not None else None,
        }
        if self.include_original:
            choice["original"] = row >= self.n
        return choice

    def full(self, done: dict[int, RowDone]) -> dict[str, Any]:
        choices = [
            self._choice(row, self._content(done[row].text), done[row].finish_reason, done[row].logprobs)
            for row in range(self.rows)
        ]
        return {**self.head(), "choices": choices, "usage": self.usage(done)}

    def chunk(
        self,
        row: int,
        delta: str | dict | None,
        finish_reason: str | None,
        logprobs: tuple[TokenLogprob, ...] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any]
        if self.chat:
            body = {"delta": delta if isinstance(delta, dict) else ({"content": delta} if delta else {})}
        else:
            body = {"text": delta or ""}
        return {**self.head(chunk=True), "choices": [self._choice(row, body, finish_reason, logprobs)]}

    def _logprobs(self, tokens: tuple[TokenLogprob, ...]) -> dict[str, Any]:
        """Chat: {"content": [{token, logprob, bytes, top_logprobs}]}; completions: the legacy four lists."""
        if self.chat:
            entry = lambda text, lp: {"token": text, "logprob": lp, "bytes": list(text.encode())}  # noqa: E731
            return {
                "content": [
                    {**entry(t.token, t.logprob), "top_logprobs": [entry(a, b) for a, b in t.top]} for t in tokens
                ]
            }
        offsets, at = [], 0
        for t in tokens:
            offsets.append(at)
            at += len(t.token)
        return {
            "tokens": [t.token for t in tokens],
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [dict(t.top) for t in tokens],
            "text_offset": offsets,
        }

    def usage(self, done: dict[int, RowDone]) -> dict[str, int]:
        completion = sum(done[row].completion_tokens for row in range(self.rows))
        usage = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }
        if self.include_original:
            usage["original_completion_tokens"] = sum(done[self.n + i].completion_tokens for i in range(self.n))
        return usage
