"""`steerlab vector export-gguf | import-gguf | merge`: move vectors to llama.cpp and combine them."""

from __future__ import annotations

from pathlib import Path


def register(sub, vsub) -> None:
    p = vsub.add_parser("export-gguf", help="write a vector as a llama.cpp GGUF control vector",
                        description="Write a vector as a llama.cpp control vector (direction.N = steerlab layer N; "
                                    "llama.cpp cannot steer layer 0).",
                        epilog="example:\n  steerlab vector export-gguf sentiment.safetensors sentiment.gguf")
    p.add_argument("file")
    p.add_argument("out")
    p.add_argument("--model-hint", help="architecture name for llama.cpp (default: the vector's model type)")
    p.add_argument("--skip-layer-0", action="store_true", help="drop layer 0, which llama.cpp cannot steer")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_export)

    p = vsub.add_parser("import-gguf", help="read a llama.cpp / repeng GGUF control vector",
                        epilog="example:\n  steerlab vector import-gguf happy.gguf happy.safetensors --model-name SmolLM2-135M-Instruct")
    p.add_argument("file")
    p.add_argument("out")
    p.add_argument("--model-name", help="the model the control vector was made for")
    p.add_argument("--num-layers", type=int, help="the model's layer count (a GGUF control vector does not store it)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_import)

    p = vsub.add_parser("merge", help="combine vectors of one model: weighted sum or TIES",
                        epilog="example:\n  steerlab vector merge a.safetensors b.safetensors --weights 1,0.5 --out ab.safetensors")
    p.add_argument("files", nargs="+")
    p.add_argument("--how", choices=["linear", "ties"], default="linear")
    p.add_argument("--weights", help="comma-separated, one per file (default 1 each)")
    p.add_argument("--density", type=float, default=0.2, help="TIES: fraction of values kept per layer")
    p.add_argument("--layers", help="keep only these layers, e.g. 12,15 (needed when the vectors' layers differ)")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_merge)


def cmd_export(args) -> int:
    from .llamacpp import export_control_vector
    from .vector import SteeringVector

    out = export_control_vector(SteeringVector.load(args.file), args.out, model_hint=args.model_hint,
                                skip_layer_0=args.skip_layer_0, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def cmd_import(args) -> int:
    from .llamacpp import import_control_vector

    vector = import_control_vector(args.file, model_name=args.model_name, num_layers=args.num_layers)
    vector.save(Path(args.out), overwrite=args.overwrite)
    print(f"imported layers {vector.layers} -> {args.out}")
    return 0


def cmd_merge(args) -> int:
    from .cli import CLIError, parse_layers
    from .merging import merge_linear, merge_ties
    from .vector import SteeringVector

    vectors = [SteeringVector.load(f) for f in args.files]
    try:
        weights = [float(w) for w in args.weights.split(",")] if args.weights else [1.0] * len(vectors)
    except ValueError:
        raise CLIError(f"--weights {args.weights}: expected numbers like 1,0.5") from None
    layers = parse_layers(args.layers)
    if isinstance(layers, dict):
        raise CLIError("--layers for merge takes layer numbers only, e.g. 12,15")
    if args.how == "linear":
        merged = merge_linear(vectors, weights, layers=layers)
    else:
        merged = merge_ties(vectors, weights, density=args.density, layers=layers)
    merged.save(Path(args.out), overwrite=args.overwrite)
    print(f"merged {len(vectors)} vectors ({args.how}) -> {args.out}")
    return 0
