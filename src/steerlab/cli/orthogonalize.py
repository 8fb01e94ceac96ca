"""`steerlab vector orthogonalize`: bake directional ablation of one direction into a model's weights."""

from __future__ import annotations

from .common import CLIError, add_model_args, add_out_args, check_out_free, command, load_cli_model


def register(sub, vsub) -> None:
    p = command(
        vsub,
        "orthogonalize",
        "Save a model whose weights never write a vector's direction (ablation baked in).",
        "steerlab vector orthogonalize --vector refusal.safetensors --out qwen-ortho/",
        "Fold directional ablation of one direction at every layer into the weights (embeddings and each "
        "attention and MLP output projection) and save a save_pretrained folder; its outputs equal "
        "`steerlab generate --ablate-direction`.",
    )
    p.add_argument("--vector", required=True, help="vector file holding the direction")
    p.add_argument(
        "--layer", type=int, help="which layer's direction (default: the vector's recommended, else its only one)"
    )
    add_out_args(p, "output folder (save_pretrained)")
    add_model_args(p)
    p.set_defaults(func=cmd_orthogonalize)


def cmd_orthogonalize(args) -> int:
    from ..ablation import ablation_direction, export_orthogonalized
    from ..vector import SteeringVector

    out = check_out_free(args.out, args.overwrite)
    vector = SteeringVector.load(args.vector)
    try:
        _, layer = ablation_direction(vector, args.layer)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    lm = load_cli_model(args)
    export_orthogonalized(lm, vector, out, layer, overwrite=args.overwrite)  # swaps the folder in whole
    print(f"orthogonalised against layer {layer}'s direction -> {out}")
    return 0
