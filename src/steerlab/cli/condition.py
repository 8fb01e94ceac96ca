"""`steerlab vector condition`: fit a CAST condition, which prompts a steer should apply to."""

from __future__ import annotations

from .common import CLIError, add_model_args, add_out_args, check_out_free, command, load_cli_model, prompt_lines


def register(sub, vsub) -> None:
    p = command(
        vsub,
        "condition",
        "Fit a CAST condition: which prompts a steer should apply to.",
        "steerlab vector condition --vector refusal.safetensors --steer-prompts harmful.txt "
        "--keep-prompts harmless.txt --out harmful.condition.safetensors",
        "Grid over layer, threshold and comparison of the cosine between each prompt's last-token "
        "activation and the vector's direction at that layer; keeps the best F1 at telling the prompts to "
        "steer from those to keep, and prints the grid's best F1 per layer.",
    )
    p.add_argument("--vector", required=True, help="vector whose per-layer directions are the candidate conditions")
    p.add_argument("--steer-prompts", required=True, help="file, one prompt per line, that the steer should apply to")
    p.add_argument("--keep-prompts", required=True, help="file, one prompt per line, to leave unsteered")
    add_out_args(p, "condition file (.safetensors), for `steerlab generate --condition`")
    add_model_args(p)
    p.set_defaults(func=cmd_condition)


def _prompts(option: str, path: str) -> list[str]:
    lines = prompt_lines(option, path)
    if not lines:
        raise CLIError(f"{option} {path}: no prompts")
    return lines


def cmd_condition(args) -> int:
    from ..conditional import fit_condition
    from ..generation import encode_prompts
    from ..vector import SteeringVector

    out = check_out_free(args.out, args.overwrite)
    steer, keep = _prompts("--steer-prompts", args.steer_prompts), _prompts("--keep-prompts", args.keep_prompts)
    vector = SteeringVector.load(args.vector)
    lm = load_cli_model(args)
    condition = fit_condition(lm, vector, encode_prompts(lm, steer), encode_prompts(lm, keep))
    condition.save(out, lm, overwrite=args.overwrite)
    for layer, row in condition.fit["per_layer"].items():
        print(f"layer {layer:>3}: best F1 {row['f1']:.3f} (cos {row['comparison']} {row['threshold']:.4f})")
    print(
        f"chosen: layer {condition.layer}, cos {condition.comparison} {condition.threshold:.4f}, "
        f"F1 {condition.fit['f1']:.3f}, accuracy {condition.fit['accuracy']:.3f} -> {out}"
    )
    return 0
