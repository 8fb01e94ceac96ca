"""The vLLM side of the plugin: what `register()` hooks into, in each of vLLM's processes.

- Load: the installed vLLM is checked against the supported range and every internal name the plugin uses
  (`compat.check`); vLLM is pinned to the model runner the plugin steers (V1) unless the user chose one.
- Front end (`InputProcessor.process_inputs`): a request's `extra_args["steerlab"]` is checked against the
  steer folder and the model (a bad request is refused with HTTP 400 / a ValueError, before it is
  scheduled), resolved into explicit terms (`extra_args["steerlab_resolved"]`), and given a cache salt
  derived from them, so prefix caching shares KV blocks only between requests steered alike. Steered
  requests are refused, naming the fix, where the workers could not steer them: Model Runner V2, or CUDA graphs.
- Workers (V1 `GPUModelRunner`, which vLLM's CPU runner inherits): before the model first runs (`_dummy_run`,
  the warm-up that compiles it), a hook calling steerlab's op goes on each decoder block; before every
  forward (`_model_forward`) the step's plan is written into the op's buffers from the batch layout, and
  after it every steered layer must have run its op. A V2 runner that meets a steered request raises.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch

from . import compat
from .errors import SteerNotFound
from .library import SteerLibrary
from .request import KEY, RESOLVED, SteeringRequestError, cache_salt, decode, encode, resolve
from .worker import Row, SteeringNotApplied, WorkerSteering, find_layers

log = logging.getLogger("steerlab.vllm")
_PATCHED = False


def install() -> None:
    """Check this vLLM and wrap its front end and model runners once per process (vLLM may call plugins again)."""
    global _PATCHED
    if _PATCHED:
        return
    names = compat.check()
    if compat.pin_v1_runner():
        log.info(
            "steerlab: %s=0 (the plugin steers vLLM's V1 model runner; set the variable yourself to choose)",
            compat.V2_ENV,
        )
    processor = names["input_processor"].cls
    processor.process_inputs = _front_end(processor.process_inputs)
    runner = names["v1_runner"].cls
    runner._model_forward = _runner(runner._model_forward)
    runner._dummy_run = _warmup(runner._dummy_run)
    if names["v2_runner"] is not None:
        v2 = names["v2_runner"].cls
        v2.add_requests = _unsteerable(v2.add_requests)
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
        text = compat.attr(config, compat.CONFIG_TEXT)
        try:
            library = SteerLibrary.from_env()
        except FileNotFoundError as exc:
            raise _validation_error(str(exc)) from None
        state = processor._steerlab = {
            "library": library,
            "hidden_size": int(text.hidden_size),
            "num_layers": int(text.num_hidden_layers),
            "refusal": unsteerable_reason(config),
        }
    if state["refusal"]:
        raise _validation_error(state["refusal"])
    try:
        terms = resolve(raw, state["library"], hidden_size=state["hidden_size"], num_layers=state["num_layers"])
    except SteeringRequestError as exc:
        raise _validation_error(str(exc)) from None
    return encode(terms)


def unsteerable_reason(config) -> str | None:
    """Why this vLLM's workers could not apply steering (so steered requests must be refused), or None."""
    if compat.runs_v2(config):
        return (
            "steering needs vLLM's V1 model runner; this vLLM runs Model Runner V2 "
            "(vllm.v1.worker.gpu.model_runner), which steerlab's plugin does not steer. Start vLLM with "
            f"{compat.V2_ENV}=0 (the plugin sets it when the variable is unset; features that force V2, such as "
            "HiSparse or watermarking, cannot be combined with steering). Unsteered requests are served as usual"
        )
    if compat.uses_cuda_graphs(config):
        return (
            "steering on vLLM is checked with torch.compile but not under CUDA graph replay, where the "
            "plan's host-side pruning would not run; start vLLM with CUDA graphs off: -cc.cudagraph_mode=NONE "
            "(compiled, faster) or --enforce-eager. Unsteered requests are served as usual"
        )
    return None


def _validation_error(message: str) -> Exception:
    return compat.resolve(compat.VALIDATION_ERROR).cls(message, parameter=KEY)


# ---- workers ------------------------------------------------------------------------------------------


def _runner(original):
    @functools.wraps(original)
    def _model_forward(self, *args, **kwargs):
        steering = _worker_steering(self)
        rows = _rows(self, steering)
        if not rows:
            return original(self, *args, **kwargs)
        positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
        assert positions is not None, "vLLM's model forward takes positions"
        positions = positions[0] if positions.ndim == 2 else positions  # M-RoPE: text positions are row 0
        steering.hooks.begin(rows, positions.cpu())
        try:
            output = original(self, *args, **kwargs)
        except BaseException:
            steering.hooks.abandon()
            raise
        steering.hooks.end()  # raises if a steered layer's op did not run: never unsteered text
        return output

    return _model_forward


def _warmup(original):
    """The hooks go on before the model first runs: vLLM compiles it in this warm-up, with the op inside."""

    @functools.wraps(original)
    def _dummy_run(self, *args, **kwargs):
        state = _worker_steering(self)
        output = original(self, *args, **kwargs)
        if not state.warm:
            state.hooks.check_warmup()
            state.warm = True
        return output

    return _dummy_run


def _unsteerable(original):
    """A runner the plugin does not steer: a steered request that reaches it anyway stops the step loudly."""

    @functools.wraps(original)
    def add_requests(self, scheduler_output, *args, **kwargs):
        for new in getattr(scheduler_output, compat.NEW_REQUESTS, None) or ():
            if _resolved(new) != "[]":
                raise SteeringNotApplied(
                    f"steerlab: request {new.req_id} is steered, but {type(self).__module__}."
                    f"{type(self).__name__} is a model runner the plugin does not steer; set "
                    f"{compat.V2_ENV}=0 so vLLM runs the V1 runner"
                )
        return original(self, scheduler_output, *args, **kwargs)

    return add_requests


class _RunnerState:
    """Per model runner: the hooks, the steer library, and each live request's decoded terms."""

    def __init__(self, runner):
        self.library = SteerLibrary.from_env()
        text = compat.attr(runner.vllm_config, compat.CONFIG_TEXT)
        num_layers = int(text.num_hidden_layers)
        layers = find_layers(runner.get_model(), num_layers)
        self.hooks = WorkerSteering(
            layers,
            self._direction,
            compat.attr(runner.vllm_config, compat.CONFIG_DTYPE),
            runner.device,
            hidden_size=int(text.hidden_size),
            num_layers=num_layers,
            max_tokens=int(compat.attr(runner, compat.RUNNER_MAX_TOKENS)),
        )
        self.terms: dict[str, tuple] = {}
        self.warm = False

    def _direction(self, sha256: str, layer: int) -> torch.Tensor:
        entry = self.library.lookup(sha256)
        if entry.vector is None:  # the front end refused these; only a file replaced meanwhile gets here
            raise SteerNotFound(f"steerlab: steer {sha256} is no longer a vector in {self.library.folder}")
        return entry.vector.directions[layer]


def _worker_steering(runner) -> _RunnerState:
    state = getattr(runner, "_steerlab", None)
    if state is None:
        state = runner._steerlab = _RunnerState(runner)
    return state


def _resolved(request) -> str:
    """The front end's resolved terms of a request (the worker's copy of it), "[]" for an unsteered one."""
    if getattr(request, "sampling_params", None) is None:  # pooling requests carry none
        return "[]"
    return (compat.attr(request, compat.REQUEST_PARAMS) or {}).get(RESOLVED, "[]")


def _rows(runner, state: _RunnerState) -> list[Row]:
    """The steered requests of the coming forward, in the flattened batch's order."""
    n = compat.attr(runner, compat.RUNNER_NUM_REQS)
    if n == 0:
        return []
    starts = compat.attr(runner, compat.RUNNER_QUERY_START)[: n + 1]
    requests = compat.attr(runner, compat.RUNNER_REQUESTS)
    rows = []
    for i, req_id in enumerate(compat.attr(runner, compat.RUNNER_REQ_IDS)[:n]):
        terms = state.terms.get(req_id)
        if terms is None:
            terms = tuple(decode(_resolved(requests.get(req_id))))
            if len(state.terms) > 2 * len(requests) + 64:
                state.terms = {k: v for k, v in state.terms.items() if k in requests}
            state.terms[req_id] = terms
        if terms:
            prompt_len = int(compat.attr(requests[req_id], compat.REQUEST_PROMPT_LEN))
            rows.append(Row(int(starts[i]), int(starts[i + 1]), prompt_len, terms))
    return rows
