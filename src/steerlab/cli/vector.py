"""`steerlab vector build | info | diagnose | calibrate`: make a steer from pairs, show a steer file, check the pairs
first, find the strength the model tolerates."""

from __future__ import annotations

import dataclasses
import json
import sys
import time

from .common import (
    CLIError,
    add_model_args,
    add_out_args,
    add_pair_args,
    check_out_free,
    command,
    load_cli_model,
    pairs_from_args,
    parse_layers,
    progress_bar,
)


def register(sub, vsub) -> None:
    p = command(
        vsub,
        "build",
        "Build a steer from contrastive pairs (any method) and save it.",
        "steerlab vector build --data pairs.jsonl --layers 15 --out sentiment.safetensors\n"
        "  steerlab vector build --positive 'I love it' --negative 'I hate it' --out love.safetensors\n"
        "  steerlab vector build --method prompt --set 'instruction=Answer cheerfully.' --out cheerful.json",
    )
    p.add_argument("--method", default="caa", help="steering method: caa, pca, vector_prompt, prompt, lm_steer")
    add_pair_args(p)
    p.add_argument("--layers", help="layers to build at: 15, 12,15 or 4-8 (default: the model's middle layer)")
    p.add_argument("--config", help="YAML config for the method (documented examples in steerlab/methods/configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--task", default="", help="what the steer is for (e.g. sentiment); checked when applied")
    add_out_args(p, "output file (.safetensors; .json for --method prompt)")
    add_model_args(p)
    p.set_defaults(func=cmd_build)

    p = command(
        vsub,
        "info",
        "Show a steer file's kind, metadata, layers and norms.",
        "steerlab vector info sentiment.safetensors",
    )
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = command(
        vsub,
        "diagnose",
        "check whether pairs isolate a direction (held-out AUROC per layer)",
        "steerlab vector diagnose --data pairs.jsonl\n"
        "  steerlab vector diagnose --data pairs.jsonl --layers 8,12,15,18 --out sentiment.safetensors",
        "Check whether contrastive pairs isolate a direction: held-out AUROC, consistency and norm per "
        "layer, with a verdict and the layers worth trying.",
    )
    add_pair_args(p)
    p.add_argument("--layers", help="layers to check, e.g. 8,12,15 or 4-20 (default: all; one forward pass either way)")
    p.add_argument("--holdout", type=float, default=0.25, help="share of pairs held out")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/held-out split")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per forward pass")
    add_out_args(
        p,
        "also save a CAA vector from all pairs at the suggested layers, with the diagnosis in its metadata",
        required=False,
    )
    p.add_argument("--task", default="", help="what the --out vector is for (e.g. sentiment)")
    p.add_argument("--json", action="store_true", help="print the diagnosis as JSON")
    add_model_args(p)
    p.set_defaults(func=cmd_diagnose)

    p = command(
        vsub,
        "calibrate",
        "find the largest strength per direction within a KL budget and fluency bound",
        "steerlab vector calibrate sentiment.safetensors --out sentiment.safetensors --overwrite",
        "Per direction (+ and -), the largest norm-relative strength whose mean per-token KL(steered || "
        "unsteered) on steerlab's neutral prompts stays within --kl-budget and whose greedy continuations keep "
        "their fluency; stored in the vector's metadata and used as its default strength.",
    )
    p.add_argument("file", help="a vector (.safetensors) with residual norms (every steerlab fit stores them)")
    p.add_argument("--layers", help="layers to steer while calibrating (default: the vector's default layers)")
    p.add_argument("--kl-budget", type=float, default=0.5, help="nats per token of KL(steered || unsteered)")
    p.add_argument(
        "--fluency-bound",
        type=float,
        default=0.1,
        help="keep entropy and distinct-2 >= (1 - bound) of unsteered, repetition <= unsteered + bound",
    )
    p.add_argument("--prompts", type=int, default=8, help="neutral prompts for the KL (steerlab ships 8)")
    p.add_argument("--fluency-prompts", type=int, default=8, help="neutral prompts continued greedily per check")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens per fluency continuation")
    add_out_args(p, "where to write the calibrated vector (may be the input file with --overwrite)")
    add_model_args(p)
    p.set_defaults(func=cmd_calibrate)


def cmd_build(args) -> int:
    from ..config import build_config, read_config_values
    from ..methods import fit, get_method

    method = get_method(args.method)
    data = pairs_from_args(args, required=method.needs_data)
    values, source = read_config_values(args.config, args.set)
    layers = parse_layers(args.layers, weights=False)
    if layers is not None:
        if "layers" not in {f.name for f in dataclasses.fields(method.config_cls)}:
            raise CLIError(
                f"--layers does not apply to --method {args.method}: it has no layers to choose"
                + (" (it transforms the final hidden state)" if args.method == "lm_steer" else "")
                + "; drop --layers"
            )
        values["layers"] = layers
    config = build_config(method.config_cls, values, source)
    out = check_out_free(args.out, args.overwrite)
    lm = load_cli_model(args)
    start = time.perf_counter()
    n = len(data) if data is not None else 0
    with progress_bar(
        method.progress_total(n, config), f"{args.method} on {data.name if data else 'no data'}", method.progress_unit
    ) as bar:
        steer = fit(lm, data, args.method, task=args.task, config=config, progress=bar.update)
    steer.save(out, overwrite=args.overwrite)
    source = f" from {n} pairs" if n else ""
    print(f"built {args.method}{source} in {time.perf_counter() - start:.1f}s -> {out}")
    return 0


def cmd_info(args) -> int:
    from ..steers import load_steer
    from ..textio import finite_json

    steer = load_steer(args.file)
    info = {"kind": steer.kind, **steer.describe()}
    if args.json:
        print(json.dumps(finite_json(info), indent=2, allow_nan=False))  # strict JSON: no NaN or Infinity
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value)
        print(f"{key:<{width}}  {value}")
    return 0


def cmd_diagnose(args) -> int:
    from ..activations import PairActivations
    from ..evaluation.diagnose import check_sizes, diagnose, format_diagnosis
    from ..methods.caa import CAAConfig, vector_from_activations

    data = pairs_from_args(args)
    layers = parse_layers(args.layers, weights=False)
    check_sizes(len(data), args.holdout)
    out = check_out_free(args.out, args.overwrite)
    lm = load_cli_model(args)
    with progress_bar(len(data), f"recording {data.name}") as bar:
        diagnosis, acts = diagnose(
            lm, data, layers, holdout=args.holdout, seed=args.seed, batch_size=args.batch_size, progress=bar.update
        )
    print(json.dumps(diagnosis.to_dict(), indent=2) if args.json else format_diagnosis(diagnosis))
    if out is None:
        return 0
    if not diagnosis.suggested_layers:
        raise CLIError(f"no layer separates the pairs, so no vector was written to {out} (see the verdict above)")
    keep = [acts.layers.index(layer) for layer in diagnosis.suggested_layers]
    chosen = PairActivations(diagnosis.suggested_layers, acts.positive[:, keep], acts.negative[:, keep])
    vector = vector_from_activations(
        lm, chosen, data, task=args.task, config=CAAConfig(layers=chosen.layers, batch_size=args.batch_size)
    )
    vector.meta.diagnostics = diagnosis.to_dict()
    top = max(diagnosis.suggested_layers, key=lambda layer: diagnosis.layer(layer).consistency)
    vector.meta = vector.meta.with_recommended(layer=top)
    vector.save(out, overwrite=args.overwrite)
    print(
        f"\nCAA vector at layers {chosen.layers} (recommended layer {top}) with this diagnosis -> {out}",
        file=sys.stderr,
    )
    return 0


def cmd_calibrate(args) -> int:
    from ..evaluation.calibrate import CalibrationConfig, calibrate
    from ..steering import default_steering
    from ..strength import multiplier_for
    from ..vector import SteeringVector
    from .common import StageBars

    layers = parse_layers(args.layers, weights=False)
    try:
        config = CalibrationConfig(
            kl_budget=args.kl_budget,
            fluency_bound=args.fluency_bound,
            prompts=args.prompts,
            fluency_prompts=args.fluency_prompts,
            max_new_tokens=args.max_new_tokens,
            layers=layers,
        )
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    vector = SteeringVector.load(args.file)
    out = check_out_free(args.out, args.overwrite)
    lm = load_cli_model(args)
    start = time.perf_counter()
    with StageBars() as bars:
        result, calibrated = calibrate(lm, vector, config, progress=bars)
    calibrated.save(out, overwrite=args.overwrite)
    print(f"KL(steered || unsteered) per token, nats (budget {result.kl_budget:g}):")
    for name, sign in (("up", 1), ("down", -1)):
        print(
            f"  {name:>4} at layers {result.layers[name]}: "
            + "  ".join(f"{sign * float(s):+g}:{v:.3f}" for s, v in result.kl[name].items())
        )
    for name in ("up", "down"):
        value = result.strength(name)
        if value is None:
            print(f"{name}: no strength on the grid keeps the KL budget and fluency")
            continue
        mults = ", ".join(
            f"layer {layer} multiplier {multiplier_for(calibrated, layer, value):+.4g}" for layer in result.layers[name]
        )
        print(f"{name}: strength {value:+g} ({mults}); fluency {result.fluency[name]}")
    print(f"calibrated in {time.perf_counter() - start:.0f}s -> {out}")
    print(f"with no multiplier or strength it now steers at {default_steering(calibrated).words()}")
    return 0
