"""The `steerlab` command line: build and inspect vectors, generate steered beside original, run the demo."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

from . import __version__

EXAMPLES = {
    "build": "steerlab vector build --data pairs.jsonl --layers 15 --out sentiment.safetensors\n"
             "  steerlab vector build --positive 'I love it' --negative 'I hate it' --out love.safetensors",
    "info": "steerlab vector info sentiment.safetensors",
    "generate": "steerlab generate --vector sentiment.safetensors --multiplier 4 --prompt 'Tell me about your day.' --orig",
    "demo": "steerlab demo",
}

# Subcommands that live beside their subsystem; each module offers register(subparsers).
PLUGINS = ("steerlab.server.cli", "steerlab.evaluation.sweep_cli", "steerlab.evaluation.cli", "steerlab.interop_cli")


class CLIError(Exception):
    """A user-facing error; printed as one line."""


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
    except Exception as exc:  # one clear line for users; the traceback with --debug
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steerlab", description="Steer language models with contrastive examples.")
    parser.add_argument("--version", action="version", version=f"steerlab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    vector = sub.add_parser("vector", help="build, inspect and convert steering vectors")
    vsub = vector.add_subparsers(dest="vector_command", metavar="ACTION")
    _add_build(vsub)
    _add_info(vsub)
    vector.set_defaults(func=lambda a: vector.print_help() or 2, vector_subparsers=vsub)

    _add_generate(sub)
    _add_demo(sub)
    for name in PLUGINS:
        importlib.import_module(name).register(sub, vsub)
    return parser


def _example_parser(sub, name: str, key: str, help_text: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_text, description=help_text, epilog=f"example:\n  {EXAMPLES[key]}",
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="HF model folder or .gguf file (default: bundled SmolLM2-135M-Instruct)")
    p.add_argument("--no-chat", action="store_true", help="do not wrap prompts in the model's chat template")
    p.add_argument("--threads", type=int, help="torch CPU threads")


def add_pair_args(p) -> None:
    """--data FILE or inline --positive/--negative texts (with --prompt), as read by pairs_from_args."""
    src = p.add_argument_group("data (one of)")
    src.add_argument("--data", help="pairs file: CAA generate_dataset.json, persona .jsonl, or JSONL {prompt, positive, negative}")
    src.add_argument("--positive", action="append", help="a positive text (repeatable; pairs with --negative)")
    src.add_argument("--negative", action="append", help="a negative text (repeatable)")
    p.add_argument("--prompt", default="", help="prompt shared by inline --positive/--negative texts")


def pairs_from_args(args, *, required: bool = True):
    """The pairs add_pair_args asked for; None when none were given and they are not required."""
    from .data import load_pairs, pairs_from_texts

    if args.data and (args.positive or args.negative):
        raise CLIError("give either --data FILE or --positive/--negative texts, not both")
    if args.data:
        return load_pairs(args.data)
    if args.positive or args.negative:
        return pairs_from_texts(args.positive or [], args.negative or [], prompt=args.prompt)
    if required:
        raise CLIError("no data: give --data FILE or --positive TEXT --negative TEXT")
    return None


def _add_build(vsub) -> None:
    p = _example_parser(vsub, "build", "build", "Build a steering vector from contrastive pairs and save it.")
    p.add_argument("--method", default="caa", help="steering method (default caa)")
    add_pair_args(p)
    p.add_argument("--layers", help="layers, e.g. 15 or 12,15,18 (default: the model's middle layer)")
    p.add_argument("--config", help="YAML config for the method")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--task", default="", help="what the vector is for (e.g. sentiment); checked when applied")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_model_args(p)
    p.set_defaults(func=cmd_build)


def _add_info(vsub) -> None:
    p = _example_parser(vsub, "info", "info", "Show a vector file's metadata, layers and norms.")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)


def _add_generate(sub) -> None:
    p = _example_parser(sub, "generate", "generate", "Generate with steering, optionally beside the unsteered original.")
    p.add_argument("--vector", action="append", default=[], help="steer file: a vector (repeatable), or one LM-Steer or prompt steer")
    p.add_argument("--multiplier", action="append", type=float, default=[],
                   help="multiplier per --vector (default: the vector's recommended one, else 1)")
    p.add_argument("--layers", help="layers to steer: 15, 12,15 or 12:0.5,15:1 (default: the vector's)")
    p.add_argument("--positions", default="all", choices=["all", "prompt", "generated"])
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts-file", help="one prompt per line")
    p.add_argument("--orig", action="store_true", help="also show the unsteered original")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--task", help="the task you steer for; warns if the vector was built for another")
    p.add_argument("--json", action="store_true", help="print JSON lines")
    add_model_args(p)
    p.set_defaults(func=cmd_generate)


def _add_demo(sub) -> None:
    p = _example_parser(sub, "demo", "demo", "Build a sentiment CAA vector on the default model and show steered beside original.")
    p.add_argument("--data", help="pairs file (default: the shipped sentiment pairs)")
    p.add_argument("--prompts-file", help="prompts to generate for (default: the shipped demo prompts)")
    p.add_argument("--layer", type=int, help="layer (default: a middle layer)")
    p.add_argument("--multiplier", type=float, default=None, help="strength (default: the demo's tuned value)")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--out-dir", default="steerlab-out", help="where the vector file is written")
    add_model_args(p)
    p.set_defaults(func=cmd_demo)


# ---- helpers ---------------------------------------------------------------------------------------

def parse_layers(text: str | None) -> list[int] | dict[int, float] | None:
    """'15' -> [15]; '12,15' -> [12, 15]; '12:0.5,15:1' -> {12: 0.5, 15: 1.0}."""
    if not text:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        if any(":" in p for p in parts):
            return {int(k): float(v) for k, v in (p.split(":", 1) for p in parts)}
        return [int(p) for p in parts]
    except ValueError:
        raise CLIError(f"--layers {text}: expected layer numbers like 15 or 12,15 or 12:0.5,15:1") from None


def load_cli_model(args):
    import torch

    from .models import load_model

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    print(f"loading {args.model or 'SmolLM2-135M-Instruct (bundled)'} ...", file=sys.stderr)
    return load_model(args.model, use_chat_template=False if args.no_chat else None)


def progress_bar(total: int, desc: str, unit: str = "item"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)


def fit_progress_bar(method, data, config, desc: str):
    """A bar whose total is what this method's fit reports (pairs, examples or optimiser steps)."""
    return progress_bar(method.progress_total(len(data), config), desc, method.progress_unit)


def read_prompts(args) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise CLIError(f"--prompts-file {path}: no such file")
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise CLIError("no prompts: give --prompt TEXT (repeatable) or --prompts-file FILE")
    return prompts


# ---- commands --------------------------------------------------------------------------------------

def cmd_build(args) -> int:
    from .config import load_config
    from .data import ContrastiveDataset
    from .methods import get_method

    method = get_method(args.method)
    data = pairs_from_args(args, required=method.needs_data)
    if data is None:
        data = ContrastiveDataset([], "no examples", "")
    overrides = list(args.set)
    layers = parse_layers(args.layers)
    if layers is not None:
        overrides.append(f"layers={json.dumps(list(layers))}")
    config = load_config(method.config_cls, args.config, overrides)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise CLIError(f"{out} already exists; choose another --out or pass --overwrite")
    lm = load_cli_model(args)
    start = time.perf_counter()
    with fit_progress_bar(method, data, config, f"{args.method} on {data.name}") as bar:
        steer = method.fit(lm, data, config, task=args.task, progress=bar.update)
    steer.save(out, overwrite=args.overwrite)
    source = f" from {len(data)} pairs" if len(data) else ""
    print(f"built {args.method}{source} in {time.perf_counter() - start:.1f}s -> {out}")
    return 0


def load_steer_file(path: str):
    """A steering vector, an LM-Steer (told apart by the method in the file's metadata) or a prompt steer (JSON)."""
    from .methods.lm_steer_artifact import LMSteer
    from .methods.prompt import PromptSteering
    from .vector import SteeringVector, VectorFileError

    try:
        return SteeringVector.load(path)
    except VectorFileError as exc:
        if "an LM-Steer file" in str(exc):
            return LMSteer.load(path)
        if Path(path).is_file():
            with open(path, "rb") as f:
                if f.read(1) == b"{":  # JSON; a safetensors file starts with its 8-byte header length
                    return PromptSteering.load(path)
        raise


def cmd_info(args) -> int:
    info = load_steer_file(args.file).describe()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value)
        print(f"{key:<{width}}  {value}")
    return 0


def cmd_generate(args) -> int:
    from .generation import GenerationConfig, generate
    from .methods.prompt import PromptSteering, generate_with_prompt
    from .steering import SteeringSpec
    from .vector import SteeringVector

    if args.multiplier and len(args.multiplier) != len(args.vector):
        raise CLIError(f"{len(args.multiplier)} --multiplier for {len(args.vector)} --vector; give one per vector")
    prompts = read_prompts(args)
    steers = [load_steer_file(path) for path in args.vector]
    layers = parse_layers(args.layers)
    prompt_steer = next((s for s in steers if isinstance(s, PromptSteering)), None)
    if any(not isinstance(s, SteeringVector) for s in steers):
        kind = "a prompt steer" if prompt_steer else "an LM-Steer file"
        if len(steers) != 1:
            raise CLIError(f"{kind} is applied on its own; give it as the only --vector")
        if prompt_steer and (args.multiplier or layers is not None):
            raise CLIError("a prompt steer has no multiplier or layers; drop --multiplier and --layers")
        steering = prompt_steer or steers[0].with_value(args.multiplier[0] if args.multiplier else 1.0)
    else:
        steering = [SteeringSpec(v, args.multiplier[i] if args.multiplier else None, layers, args.positions)
                 for i, v in enumerate(steers)]
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                              temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    lm = load_cli_model(args)
    with progress_bar(len(prompts), "generating") as bar:
        if prompt_steer:
            results = generate_with_prompt(lm, prompts, prompt_steer, generate_orig_output=args.orig, config=config,
                                           batch_size=args.batch_size, progress=bar.update)
        else:
            results = generate(lm, prompts, steering or None, generate_orig_output=args.orig, config=config,
                               batch_size=args.batch_size, task=args.task, progress=bar.update)
    if args.json:
        for r in results:
            print(json.dumps({"prompt": r.prompt, "steered": r.steered, "original": r.original}))
    else:
        print_side_by_side(results, steered_label="steered" if steering else "output")
    return 0


def print_side_by_side(results, steered_label: str = "steered") -> None:
    for i, r in enumerate(results, 1):
        print(f"\n[{i}] {r.prompt}")
        if r.original is not None:
            print(f"  original | {_one_line(r.original)}")
        print(f"  {steered_label:>8} | {_one_line(r.steered)}")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)
