"""`steerlab vector export-gguf | import-gguf | merge`: move vectors to and from llama.cpp, and combine them."""

from __future__ import annotations

from .common import CLIError, add_out_args, check_out_free, command, parse_layers, parse_numbers


def register(sub, vsub) -> None:
    p = command(
        vsub,
        "export-gguf",
        "write a vector as a llama.cpp GGUF control vector",
        "steerlab vector export-gguf sentiment.safetensors --out sentiment.gguf",
        "Write a vector as a llama.cpp control vector (direction.N = steerlab layer N; llama.cpp cannot "
        "steer layer 0).",
    )
    p.add_argument("file")
    add_out_args(p, "output .gguf file")
    p.add_argument("--model-hint", help="architecture name for llama.cpp (default: the vector's model type)")
    p.add_argument("--skip-layer-0", action="store_true", help="drop layer 0, which llama.cpp cannot steer")
    p.set_defaults(func=cmd_export)

    p = command(
        vsub,
        "import-gguf",
        "read a llama.cpp / repeng GGUF control vector",
        "steerlab vector import-gguf happy.gguf --out happy.safetensors --model-name SmolLM2-135M-Instruct",
    )
    p.add_argument("file")
    add_out_args(p, "output .safetensors vector")
    p.add_argument("--model-name", help="the model the control vector was made for")
    p.add_argument("--num-layers", type=int, help="the model's layer count (a GGUF control vector does not store it)")
    p.set_defaults(func=cmd_import)

    p = command(
        vsub,
        "merge",
        "combine vectors of one model: weighted sum or TIES",
        "steerlab vector merge a.safetensors b.safetensors --weights 1,0.5 --out ab.safetensors",
    )
    p.add_argument("files", nargs="+")
    p.add_argument("--how", choices=["linear", "ties"], default="linear", help="how to combine")
    p.add_argument("--weights", help="comma-separated, one per file (default: 1 each)")
    p.add_argument("--density", type=float, default=0.2, help="TIES: fraction of values kept per layer")
    p.add_argument("--layers", help="keep only these layers, e.g. 12,15 (needed when the vectors' layers differ)")
    add_out_args(p, "output .safetensors vector")
    p.set_defaults(func=cmd_merge)


def cmd_export(args) -> int:
    from ..interop.gguf import export_control_vector
    from ..vector import SteeringVector

    check_out_free(args.out, args.overwrite)
    out = export_control_vector(
        SteeringVector.load(args.file),
        args.out,
        model_hint=args.model_hint,
        skip_layer_0=args.skip_layer_0,
        overwrite=args.overwrite,
    )
    print(f"wrote {out}")
    return 0


def cmd_import(args) -> int:
    from ..interop.gguf import import_control_vector

    out = check_out_free(args.out, args.overwrite)
    vector = import_control_vector(args.file, model_name=args.model_name, num_layers=args.num_layers)
    vector.save(out, overwrite=args.overwrite)
    print(f"imported layers {vector.layers} -> {out}")
    return 0


def cmd_merge(args) -> int:
    from ..merging import merge_linear, merge_ties
    from ..vector import SteeringVector

    out = check_out_free(args.out, args.overwrite)
    vectors = [SteeringVector.load(f) for f in args.files]
    weights = parse_numbers(args.weights, "--weights") or [1.0] * len(vectors)
    if len(weights) != len(vectors):
        raise CLIError(f"{len(weights)} --weights for {len(vectors)} files; give one per file")
    layers = parse_layers(args.layers, weights=False)
    if args.how == "linear":
        merged = merge_linear(vectors, weights, layers=layers)
    else:
        merged = merge_ties(vectors, weights, density=args.density, layers=layers)
    merged.save(out, overwrite=args.overwrite)
    print(f"merged {len(vectors)} vectors ({args.how}) -> {out}")
    return 0
