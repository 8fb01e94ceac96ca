"""`steerlab generate`: steered output beside the unsteered original, for any steer file."""

from __future__ import annotations

import json
import sys

from ..operators import OPERATORS
from .common import (
    LAYERS_HELP,
    CLIError,
    add_model_args,
    check_vector_layers,
    command,
    load_cli_model,
    one_line,
    parse_layers,
    progress_bar,
    read_prompts,
)


def register(sub, vsub) -> None:
    p = command(
        sub,
        "generate",
        "Generate with steering, optionally beside the unsteered original.",
        "steerlab generate --vector sentiment.safetensors --multiplier 4 --prompt 'Tell me about your day.' --orig",
    )
    p.add_argument(
        "--vector",
        action="append",
        default=[],
        help="steer file: a vector (repeatable), or one LM-Steer or prompt steer",
    )
    p.add_argument(
        "--multiplier",
        action="append",
        type=float,
        default=[],
        help="raw multiplier per --vector (default: what the vector steers at when nothing is given: its "
        "calibrated strength, else its recommended multiplier, else strength 0.2, else multiplier 1)",
    )
    p.add_argument(
        "--strength",
        action="append",
        type=float,
        default=[],
        help="norm-relative strength per --vector instead of --multiplier: the fraction of each steered "
        "layer's mean residual norm to add (e.g. 0.1)",
    )
    p.add_argument(
        "--layers",
        help=f"layers to steer: {LAYERS_HELP} (default: the vector's calibrated or recommended "
        "layer, else all its layers)",
    )
    p.add_argument(
        "--positions",
        default="all",
        help="token positions to steer: all, prompt, generated, a chat role (system, user, assistant), "
        "between:OPEN:CLOSE (e.g. between:<think>:</think>) or until:MARKER (the reasoning before an answer "
        "marker, e.g. 'until:The answer is')",
    )
    p.add_argument(
        "--reasoning-budget",
        type=int,
        metavar="N",
        help="steer nothing for the first N generated tokens, then ramp the vector up over --budget-ramp "
        "tokens: a length budget (with a 'shorter' vector, only answers that run long are steered)",
    )
    p.add_argument(
        "--budget-ramp", type=int, metavar="R", help="tokens over which the budget's steering rises to full (32)"
    )
    p.add_argument(
        "--operator",
        choices=list(OPERATORS),
        help="how a vector acts: add, ablate (remove its component), clamp (set the component to the "
        "multiplier), rotate (turn by the multiplier in degrees) (default: the file's, else add)",
    )
    p.add_argument(
        "--ablate-direction",
        action="store_true",
        help="remove the vector's direction (its recommended layer) from the residual stream at every "
        "layer (Arditi et al.; what `vector orthogonalize` bakes into weights)",
    )
    p.add_argument(
        "--condition",
        help="condition file from `steerlab vector condition`: steer only the prompts it "
        "selects (CAST), each prompt deciding for itself",
    )
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
    from ..conditional import Condition, ConditionalSteering
    from ..generation import GenerationConfig, generate
    from ..methods.lm_steer import LMSteer
    from ..steering import LengthBudget, SpecSteering, SteeringSpec, default_steering
    from ..steers import load_steer
    from ..vector import SteeringVector

    if args.multiplier and args.strength:
        raise CLIError("give --multiplier (raw) or --strength (norm-relative), not both")
    for flag, values in (("--multiplier", args.multiplier), ("--strength", args.strength)):
        if values and len(values) != len(args.vector):
            raise CLIError(f"{len(values)} {flag} for {len(args.vector)} --vector; give one per vector")
    if args.budget_ramp is not None and args.reasoning_budget is None:
        raise CLIError("--budget-ramp shapes a --reasoning-budget; give --reasoning-budget N too")
    budget = None
    if args.reasoning_budget is not None:
        budget = LengthBudget(args.reasoning_budget, *([args.budget_ramp] if args.budget_ramp is not None else []))
    prompts = read_prompts(args)
    steers = [load_steer(path) for path in args.vector]
    if budget is not None and not all(isinstance(s, SteeringVector) for s in steers):
        raise CLIError("--reasoning-budget ramps added vectors; every --vector must be a vector file")
    layers = parse_layers(args.layers)
    if args.ablate_direction:
        steering = _ablation(args, steers, layers)
    elif len(vectors := [s for s in steers if isinstance(s, SteeringVector)]) == len(steers):
        check_vector_layers(vectors, layers)
        specs = [
            SteeringSpec(
                v,
                args.multiplier[i] if args.multiplier else None,
                layers,
                args.positions,
                args.operator,
                strength=args.strength[i] if args.strength else None,
                budget=budget,
            )
            for i, v in enumerate(vectors)
        ]
        for path, spec in zip(args.vector, specs, strict=False):
            line = strength_line(path, spec)
            if not (args.multiplier or args.strength):
                line += f" (nothing given: {default_steering(spec.vector, layers, args.operator).source})"
            print(line, file=sys.stderr if args.json else sys.stdout)
        steering = SpecSteering(specs) if specs else None  # checks positions and operator before the model loads
        if args.condition:
            if steering is None:
                raise CLIError("--condition needs a --vector to apply where the condition holds")
            steering = ConditionalSteering(steering, Condition.load(args.condition))
    else:
        kind = steers[0].kind if len(steers) == 1 else next(s.kind for s in steers if not isinstance(s, SteeringVector))
        if kind == "condition":
            raise CLIError("a condition file decides where a vector applies: give it as --condition beside a --vector")
        if len(steers) != 1:
            raise CLIError(f"a steer of kind '{kind}' is applied on its own; give it as the only --vector")
        if args.strength:
            raise CLIError(f"a steer of kind '{kind}' has no residual-norm strength; use --multiplier")
        if kind == "sae_clamp" and args.multiplier:
            raise CLIError(
                "an SAE clamp sets its feature to its stored value; drop --multiplier (steerlab sae clamp --value)"
            )
        if kind == "prompt" and (args.multiplier or layers is not None):
            raise CLIError("a prompt steer has no multiplier or layers; drop --multiplier and --layers")
        if layers is not None:
            raise CLIError(f"a steer of kind '{kind}' has no layers to choose; drop --layers")
        if args.operator:
            raise CLIError(f"--operator applies to vectors; a steer of kind '{kind}' has none: drop --operator")
        if args.positions != "all":
            raise CLIError(f"a steer of kind '{kind}' acts on every position; drop --positions")
        if args.condition:
            raise CLIError(f"--condition gates vectors; a steer of kind '{kind}' cannot be gated: drop --condition")
        only = steers[0]
        steering = (
            only.with_multiplier(args.multiplier[0] if args.multiplier else 1.0) if isinstance(only, LMSteer) else only
        )
    try:
        config = GenerationConfig(
            max_new_tokens=args.max_new_tokens,
            do_sample=args.sample,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
        )
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    lm = load_cli_model(args)
    with progress_bar(len(prompts), "generating") as bar:
        results = generate(
            lm,
            prompts,
            steering,
            generate_orig_output=args.orig,
            config=config,
            batch_size=args.batch_size,
            task=args.task,
            progress=bar.update,
        )
    if args.json:
        for r in results:
            print(json.dumps({"prompt": r.prompt, "steered": r.steered, "original": r.original}))
    else:
        print_side_by_side(results, steered_label="steered" if steering else "output")
    return 0


def _ablation(args, steers, layers):
    from ..ablation import DirectionalAblation
    from ..vector import SteeringVector

    if len(steers) != 1 or not isinstance(steers[0], SteeringVector):
        raise CLIError("--ablate-direction takes exactly one vector file")
    if (
        args.multiplier
        or args.strength
        or args.operator
        or args.condition
        or args.positions != "all"
        or args.reasoning_budget is not None
    ):
        raise CLIError(
            "--ablate-direction acts at every layer and position; drop --multiplier, --strength, "
            "--operator, --condition, --positions and --reasoning-budget"
        )
    if layers is not None and len(layers) != 1:
        raise CLIError("--ablate-direction removes one direction: give --layers with the one layer to take it from")
    try:
        return DirectionalAblation(steers[0], None if layers is None else next(iter(layers)))
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def strength_line(name: str, spec) -> str:
    """Both units for one vector: each steered layer's raw multiplier and its norm-relative strength."""
    from ..steering import SteeringError
    from ..strength import StrengthError, strength_of

    parts = []
    calibration = spec.vector.meta.recommended.calibration
    try:
        for layer, mult in spec.layer_multipliers().items():
            try:
                strength = strength_of(spec.vector, layer, mult)
                parts.append(f"layer {layer}: multiplier {mult:+.4g} = strength {strength:+.4g}")
                direction = "up" if strength > 0 else "down"
                limit = calibration.strength(direction) if calibration else None
                # The strength comes back from a float32 multiplier: the calibrated one itself may read 1e-7 above.
                if limit is not None and abs(strength) > abs(limit) * (1 + 1e-5):
                    where = (
                        ""
                        if layer in calibration.layers.get(direction, [])
                        else f" at layers {calibration.layers.get(direction)}"
                    )
                    parts[-1] += f" (beyond the calibrated {limit:+g}{where}: expect degraded text)"
                elif limit is None and abs(strength) > 0.5:
                    parts[-1] += " (over half the layer's residual norm: expect degraded text)"
            except StrengthError:
                parts.append(f"layer {layer}: multiplier {mult:+.4g} (no residual norm stored: strength unknown)")
    except SteeringError as exc:
        raise CLIError(str(exc)) from None
    return f"{name}: " + "; ".join(parts)


def print_side_by_side(results, steered_label: str = "steered") -> None:
    for i, r in enumerate(results, 1):
        print(f"\n[{i}] {r.prompt}")
        if r.original is not None:
            print(f"  original | {one_line(r.original)}")
        print(f"  {steered_label:>8} | {one_line(r.steered)}")
