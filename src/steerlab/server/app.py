"""The HTTP API: OpenAI-style chat/completions with per-request steering, vector listing, health, playground.

Every route but the playground's own static files needs the bearer token when one is set. Requests are
validated completely here (fields, vectors, layers, lengths) before any work reaches the batcher.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from ..version import __version__
from ..generation import encode_prompts
from ..models import LoadedModel
from . import metrics
from .batcher import Batcher, Delta, Job, JobFailed, RowDone, RowPlan, Sampling
from .errors import ApiError, install_handlers
from .registry import VectorRegistry
from .schemas import ChatCompletionRequest, CompletionRequest, GenerationFields, ScoreRequest

STATIC = Path(__file__).parent / "static"
_ids = itertools.count()


def create_app(lm: LoadedModel, registry: VectorRegistry, *, token: str | None = None, max_batch: int = 16,
               batch_window_ms: float = 10.0, max_tokens_limit: int = 512, batcher: Batcher | None = None) -> FastAPI:
    """Build the app; the batcher thread starts with the app and drains in-flight work on shutdown.

    `batcher` replaces the HF batcher with another engine's (the vLLM plugin's VLLMBatcher), same interface.
    """
    batcher = batcher or Batcher(lm, max_batch=max_batch, window_ms=batch_window_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await asyncio.to_thread(batcher.close)

    # Swagger/ReDoc pages load their scripts from a CDN; the server works offline, so only the JSON schema.
    app = FastAPI(title="steerlab", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher = batcher
    install_handlers(app)
    app.add_middleware(BearerAuth, token=token)
    service = _Service(lm, registry, batcher, max_tokens_limit)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": lm.name, "vectors": len(registry.entries),
                "queued_rows": batcher.queued_rows, "running_rows": batcher.running_rows, "batches": batcher.batches}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": lm.name, "object": "model", "owned_by": "steerlab",
                                            "num_layers": lm.num_layers, "hidden_size": lm.hidden_size,
                                            "chat_template": bool(lm.use_chat_template)}]}

    @app.get("/v1/vectors")
    async def vectors() -> dict[str, Any]:
        return {"object": "list", "data": registry.describe()}

    @app.get("/v1/metrics")
    async def metric_list() -> dict[str, Any]:
        return {"object": "list", "data": metrics.describe()}

    @app.post("/v1/score")
    async def score(body: ScoreRequest) -> dict[str, Any]:
        metric = metrics.METRICS.get(body.metric)
        if metric is None:
            raise ApiError(400, f"metric: unknown metric '{body.metric}'; available: {', '.join(metrics.METRICS)}",
                           param="metric", code="metric_not_found")
        return {"metric": body.metric, "scores": [metric.score(t) for t in body.texts]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest):
        return await service.complete(body, service.chat_ids(body), chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        return await service.complete(body, encode_prompts(lm, [body.prompt], use_chat_template=False)[0], chat=False)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app


class BearerAuth:
    """ASGI middleware: with a token set, every request but the playground's static files must carry
    `Authorization: Bearer <token>`; checked before the body is read, in constant time."""

    def __init__(self, app, token: str | None):
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or self.expected is None or _public(scope["path"]):
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not given:
            error = ApiError(401, "missing bearer token: send the header 'Authorization: Bearer <token>'",
                             code="missing_token")
        elif not hmac.compare_digest(given, self.expected):
            error = ApiError(401, "invalid bearer token", code="invalid_token")
        else:
            return await self.app(scope, receive, send)
        await error.response()(scope, receive, send)


def _public(path: str) -> bool:
    """The page and its assets: the same bytes as in the installed package, no model access."""
    return path == "/" or path.startswith("/static/")


class _Service:
    """Turns a validated request into batcher rows and the rows' events into OpenAI-shaped responses."""

    def __init__(self, lm: LoadedModel, registry: VectorRegistry, batcher: Batcher, max_tokens_limit: int):
        self.lm, self.registry, self.batcher, self.max_tokens_limit = lm, registry, batcher, max_tokens_limit
        self.context = getattr(lm.model.config, "max_position_embeddings", None)

    def chat_ids(self, body: ChatCompletionRequest) -> list[int]:
        if not self.lm.use_chat_template:
            raise ApiError(400, f"{self.lm.name} has no chat template; use POST /v1/completions with a plain prompt",
                           param="messages", code="no_chat_template")
        messages = [m.model_dump() for m in body.messages]
        text = self.lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.lm.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _check(self, body: GenerationFields, prompt_ids: list[int]) -> None:
        if body.model is not None and body.model != self.lm.name:
            raise ApiError(404, f"model: '{body.model}' is not served here; this server runs '{self.lm.name}' "
                                "(see GET /v1/models), or leave model out", param="model", code="model_not_found")
        if not prompt_ids:
            raise ApiError(400, "prompt: the prompt encodes to no tokens; give some text", param="prompt",
                           code="empty_prompt")
        if body.max_tokens > self.max_tokens_limit:
            raise ApiError(400, f"max_tokens: {body.max_tokens} is above this server's limit of "
                                f"{self.max_tokens_limit} (set by serve --max-tokens)", param="max_tokens",
                           code="max_tokens_too_large")
        if self.context and len(prompt_ids) + body.max_tokens > self.context:
            raise ApiError(400, f"max_tokens: prompt ({len(prompt_ids)} tokens) plus max_tokens ({body.max_tokens}) "
                                f"exceeds the model's context of {self.context} tokens", param="max_tokens",
                           code="context_length_exceeded")

    async def complete(self, body: GenerationFields, prompt_ids: list[int], *, chat: bool):
        self._check(body, prompt_ids)
        steering = tuple(self.registry.resolve(body.steering))
        sampling = Sampling.of(body.temperature, body.top_p)
        # Choice i samples with seed + i, and its original with the same seed, as the library's generate does.
        seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
        seeds = [seed + i if sampling.do_sample else None for i in range(body.n)]
        ids = tuple(prompt_ids)
        rows = [RowPlan(ids, body.max_tokens, steering, s) for s in seeds]
        if body.include_original:
            rows += [RowPlan(ids, body.max_tokens, (), s) for s in seeds]
        job = Job(rows, sampling, asyncio.get_running_loop())
        self.batcher.submit(job)
        shape = _Shape(body, chat, self.lm.name, len(prompt_ids), [s.describe() for s in steering])
        if body.stream:
            return StreamingResponse(_sse(job, shape), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
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


async def _sse(job: Job, shape: "_Shape") -> AsyncIterator[str]:
    """Server-sent events: one chunk per token delta, a finish chunk per row, then [DONE]."""
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
                yield _event(shape.chunk(event.row, event.text, None))
            elif isinstance(event, RowDone):
                finished[event.row] = event
                yield _event(shape.chunk(event.row, None, event.finish_reason))
        if shape.include_usage and len(finished) == len(job.rows):
            yield _event({**shape.head(chunk=True), "choices": [], "usage": shape.usage(finished)})
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()  # a client that went away stops its rows at the next step


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class _Shape:
    """The OpenAI response layout of one request: rows 0..n-1 are the choices, n..2n-1 their originals."""

    def __init__(self, body: GenerationFields, chat: bool, model: str, prompt_tokens: int, steering: list[dict]):
        self.chat, self.model, self.prompt_tokens, self.steering = chat, model, prompt_tokens, steering
        self.n, self.include_original = body.n, body.include_original
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(6)}{next(_ids)}"
        self.created = int(time.time())

    def head(self, *, chunk: bool = False) -> dict[str, Any]:
        kind = ("chat.completion" if self.chat else "text_completion") + (".chunk" if chunk and self.chat else "")
        head = {"id": self.id, "object": kind, "created": self.created, "model": self.model}
        return head if chunk else {**head, "steering": self.steering}

    def _content(self, text: str) -> dict[str, Any]:
        return {"message": {"role": "assistant", "content": text}} if self.chat else {"text": text}

    def full(self, done: dict[int, RowDone]) -> dict[str, Any]:
        choices = []
        for i in range(self.n):
            choice = {"index": i, **self._content(done[i].text), "finish_reason": done[i].finish_reason,
                      "logprobs": None}
            if self.include_original:
                orig = done[self.n + i]
                choice["original"] = {**self._content(orig.text), "finish_reason": orig.finish_reason}
            choices.append(choice)
        return {**self.head(), "choices": choices, "usage": self.usage(done)}

    def chunk(self, row: int, delta: str | dict | None, finish_reason: str | None) -> dict[str, Any]:
        index = row % self.n
        if self.chat:
            body = {"delta": delta if isinstance(delta, dict) else ({"content": delta} if delta else {})}
        else:
            body = {"text": delta or ""}
        choice = {"index": index, **body, "finish_reason": finish_reason, "logprobs": None}
        if self.include_original:
            choice["original"] = row >= self.n
        return {**self.head(chunk=True), "choices": [choice]}

    def usage(self, done: dict[int, RowDone]) -> dict[str, int]:
        completion = sum(done[i].completion_tokens for i in range(self.n))
        usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                 "total_tokens": self.prompt_tokens + completion}
        if self.include_original:
            usage["original_completion_tokens"] = sum(done[self.n + i].completion_tokens for i in range(self.n))
        return usage
