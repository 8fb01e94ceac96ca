"""The vLLM side of the plugin: what `register()` hooks into, in each of vLLM's processes.

- Front end (`InputProcessor.process_inputs`): a request's `extra_args["steerlab"]` is checked against the
  steer folder and the model (a bad request is refused with HTTP 400 / a ValueError, before it is
  scheduled), resolved into explicit terms (`extra_args["steerlab_resolved"]`), and given a cache salt
  derived from them, so prefix caching shares KV blocks only between requests steered alike.
- Workers (`GPUModelRunner._model_forward`, which vLLM's CPU runner inherits): on the first forward, hooks
  go on the decoder blocks the worker holds; before every forward the step's plan is built from the batch
  layout (`input_batch.req_ids`, `query_start_loc`, the positions fed to the model).

These are vLLM internals, checked to exist when the plugin loads (vLLM 0.32). Steering needs eager
execution (`enforce_eager=True`, `vllm serve --enforce-eager`): compiled graphs and CUDA graphs would
bypass the hooks, so steered requests are refused otherwise.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch

from .library import SteerLibrary
from .request import KEY, RESOLVED, SteeringRequestError, cache_salt, decode, encode, resolve
from .worker import Row, WorkerSteering, find_layers

log = logging.getLogger("steerlab.vllm")
_PATCHED = False


def install() -> None:
    """Wrap vLLM's front end and model runner once per process (vLLM may call plugins more than once)."""
    global _PATCHED
    if _PATCHED:
        return
    from vllm.v1.engine.input_processor import InputProcessor
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    for cls, name in ((InputProcessor, "process_inputs"), (GPUModelRunner, "_model_forward")):
        if not callable(getattr(cls, name, None)):
            raise RuntimeError(f"steerlab's vLLM plugin needs {cls.__name__}.{name}, which this vLLM lacks; "
                               "install a vLLM the plugin supports: pip install 'steerlab[vllm]'")
    InputProcessor.process_inputs = _front_end(InputProcessor.process_inputs)
    GPUModelRunner._model_forward = _runner(GPUModelRunner._model_forward)
    _PATCHED = True


# ---- front end ----------------------------------------------------------------------------------------

def _front_end(original):
    @functools.wraps(original)
    def process_inputs(self, request_id, prompt, params, *args, **kwargs):
        extra = getattr(params, "extra_args", None)
        if not extra or KEY not in extra:
            if extra and RESOLVED in extra:
                raise _validation_error(f"{RESOLVED} is set by steerlab's plugin; send '{KEY}' instead")
            return original(self, request_id, prompt, params, *args, **kwargs)
        resolved = _resolve(self, extra[KEY])
        request = original(self, request_id, prompt, params, *args, **kwargs)
        # process_inputs works on its own clone of the params, so the caller's object is left as given.
        request.sampling_params.extra_args = {**request.sampling_params.extra_args, RESOLVED: resolved}
        if resolved != "[]":
            request.cache_salt = cache_salt(resolved, request.cache_salt)
        return request

    return process_inputs


def _resolve(processor, raw: Any) -> str:
    state = getattr(processor, "_steerlab", None)
    if state is None:
        config = processor.vllm_config
        text = config.model_config.hf_text_config
        try:
            library = SteerLibrary.from_env()
        except FileNotFoundError as exc:
            raise _validation_error(str(exc)) from None
        state = processor._steerlab = {
            "library": library,
            "hidden_size": int(text.hidden_size),
            "num_layers": int(text.num_hidden_layers),
            "eager": bool(config.model_config.enforce_eager),
        }
    if not state["eager"]:
        raise _validation_error("steering needs eager execution, which this vLLM was not started with: pass "
                                "enforce_eager=True (vllm serve --enforce-eager); compiled graphs bypass the hooks")
    try:
        terms = resolve(raw, state["library"], hidden_size=state["hidden_size"], num_layers=state["num_layers"])
    except SteeringRequestError as exc:
        raise _validation_error(str(exc)) from None
    return encode(terms)


def _validation_error(message: str) -> Exception:
    from vllm.exceptions import VLLMValidationError

    return VLLMValidationError(message, parameter=KEY)


# ---- workers ------------------------------------------------------------------------------------------

def _runner(original):
    @functools.wraps(original)
    def _model_forward(self, *args, **kwargs):
        steering = _worker_steering(self)
        rows = _rows(self, steering)
        if not rows:
            return original(self, *args, **kwargs)
        positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
        positions = positions[0] if positions.ndim == 2 else positions  # M-RoPE: text positions are row 0
        steering.hooks.begin(rows, positions[: rows[-1].end].cpu())
        try:
            return original(self, *args, **kwargs)
        finally:
            steering.hooks.end()

    return _model_forward


class _RunnerState:
    """Per model runner: the hooks, the steer library, and each live request's decoded terms."""

    def __init__(self, runner):
        config = runner.vllm_config.model_config
        self.library = SteerLibrary.from_env()
        layers = find_layers(runner.get_model(), int(config.hf_text_config.num_hidden_layers))
        self.hooks = WorkerSteering(layers, self._direction, config.dtype, runner.device)
        self.terms: dict[str, tuple] = {}

    def _direction(self, sha256: str, layer: int) -> torch.Tensor:
        entry = self.library.lookup(sha256)
        if entry.vector is None:  # the front end refused these; only a file replaced meanwhile gets here
            raise RuntimeError(f"steerlab: steer {sha256} is no longer a vector in {self.library.folder}")
        return entry.vector.directions[layer]


def _worker_steering(runner) -> _RunnerState:
    state = getattr(runner, "_steerlab", None)
    if state is None:
        state = runner._steerlab = _RunnerState(runner)
    return state


def _rows(runner, state: _RunnerState) -> list[Row]:
    """The steered requests of the coming forward, in the flattened batch's order."""
    batch = runner.input_batch
    n = batch.num_reqs
    if n == 0:
        return []
    starts = runner.query_start_loc.np[: n + 1]
    rows = []
    for i, req_id in enumerate(batch.req_ids[:n]):
        terms = state.terms.get(req_id)
        if terms is None:
            request = runner.requests.get(req_id)
            extra = getattr(getattr(request, "sampling_params", None), "extra_args", None) or {}
            terms = tuple(decode(extra[RESOLVED])) if RESOLVED in extra else ()
            if len(state.terms) > 2 * len(runner.requests) + 64:
                state.terms = {k: v for k, v in state.terms.items() if k in runner.requests}
            state.terms[req_id] = terms
        if terms:
            request = runner.requests[req_id]
            rows.append(Row(int(starts[i]), int(starts[i + 1]), int(request.num_prompt_tokens), terms))
    return rows
