"""`steerlab generate`: steered output beside the unsteered original, for any steer file."""

from __future__ import annotations

import json

from .common import (CLIError, LAYERS_HELP, add_model_args, check_vector_layers, command, load_cli_model,
                     one_line, parse_layers, progress_bar, read_prompts)


def register(sub, vsub) -> None:
    p = command(sub, "generate", "Generate with steering, optionally beside the unsteered original.",
                "steerlab generate --vector sentiment.safetensors --multiplier 4 --prompt 'Tell me about your day.' --orig")
    p.add_argument("--vector", action="append", default=[],
                   help="steer file: a vector (repeatable), or one LM-Steer or prompt steer")
    p.add_argument("--multiplier", action="append", type=float, default=[],
                   help="multiplier per --vector (default: the vector's recommended one, else 1)")
    p.add_argument("--layers", help=f"layers to steer: {LAYERS_HELP} (default: the vector's recommended, else all its layers)")
    p.add_argument("--positions", default="all", choices=["all", "prompt", "generated"], help="token positions to steer")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts-file", help="one prompt per line")
    p.add_argument("--orig", action="store_true", help="also show the unsteered original")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate per prompt")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
    p.add_argument("--seed", type=int, help="sampling seed (prompt i uses seed + i)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generation call")
    p.add_argument("--task", help="the task you steer for; warns if the vector was built for another")
    p.add_argument("--json", action="store_true", help="print JSON lines")
    add_model_args(p)
    p.set_defaults(func=cmd_generate)


def cmd_generate(args) -> int:
    from ..generation import GenerationConfig, generate
    from ..steering import SteeringSpec
    from ..steers import load_steer
    from ..vector import SteeringVector

    if args.multiplier and len(args.multiplier) != len(args.vector):
        raise CLIError(f"{len(args.multiplier)} --multiplier for {len(args.vector)} --vector; give one per vector")
    prompts = read_prompts(args)
    steers = [load_steer(path) for path in args.vector]
    layers = parse_layers(args.layers)
    if all(isinstance(s, SteeringVector) for s in steers):
        check_vector_layers(steers, layers)
        steering = [SteeringSpec(v, args.multiplier[i] if args.multiplier else None, layers, args.positions)
                    for i, v in enumerate(steers)] or None
    else:
        kind = steers[0].kind if len(steers) == 1 else next(s.kind for s in steers if not isinstance(s, SteeringVector))
        if len(steers) != 1:
            raise CLIError(f"a steer of kind '{kind}' is applied on its own; give it as the only --vector")
        if kind == "prompt" and (args.multiplier or layers is not None):
            raise CLIError("a prompt steer has no multiplier or layers; drop --multiplier and --layers")
        if layers is not None:
            raise CLIError(f"a steer of kind '{kind}' has no layers to choose; drop --layers")
        steering = steers[0] if kind == "prompt" else steers[0].with_multiplier(args.multiplier[0] if args.multiplier else 1.0)
    try:
        config = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                                  temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    lm = load_cli_model(args)
    with progress_bar(len(prompts), "generating") as bar:
        results = generate(lm, prompts, steering, generate_orig_output=args.orig, config=config,
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
            print(f"  original | {one_line(r.original)}")
        print(f"  {steered_label:>8} | {one_line(r.steered)}")
