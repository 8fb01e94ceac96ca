"""The `steerlab` command line: one module per command group, each a `register(sub, vector_sub)`.

This package imports the library and nothing imports it: every command is the library's verbs, parsed,
checked before the model loads, and printed. A library error (`SteerlabError`) prints as one line; anything
else is a bug and says so in one line; `--debug` shows the traceback of either.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ..errors import SteerlabError
from ..version import __version__
from . import condition, demo, evaluate, generate, interop, orthogonalize, sae, serve, sweep, vector
from .common import CLIError, one_line

GROUPS = (vector, orthogonalize, condition, interop, generate, evaluate, sweep, sae, serve, demo)

__all__ = ["CLIError", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SteerlabError as exc:  # a refusal: one clear line for users; the traceback with --debug
        if args.debug:
            raise
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except Exception as exc:  # anything else escaping the library is ours to fix
        if args.debug:
            raise
        print(f"error: {bug_line(exc)}", file=sys.stderr)
        return 1


def bug_line(exc: BaseException) -> str:
    """One line for an exception that is not the library's own: what it was, and that it is a bug."""
    text = one_line(str(exc))
    what = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return f"{what[:300]}; this is a bug, rerun with --debug"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steerlab", description="Steer language models with contrastive examples.")
    parser.add_argument("--version", action="version", version=f"steerlab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    vector_parser = sub.add_parser("vector", help="build, inspect, check, convert and merge steers")
    vsub = vector_parser.add_subparsers(dest="vector_command", metavar="ACTION")

    def vector_help(args: argparse.Namespace) -> int:
        vector_parser.print_help()
        return 2

    vector_parser.set_defaults(func=vector_help)
    for group in GROUPS:
        group.register(sub, vsub)
    return parser
