"""`steerlab sae train | info | features | clamp`: SAEs on the residual stream: train one, inspect one, find
features from pairs (and save one as a vector), and make a clamp steer."""

from __future__ import annotations

import json
import sys

from .common import (
    CLIError,
    StageBars,
    add_model_args,
    add_out_args,
    add_pair_args,
    check_at_least,
    check_out_free,
    command,
    load_cli_model,
    pairs_from_args,
)


def register(sub, vsub) -> None:
    group = sub.add_parser("sae", help="sparse autoencoders: train, inspect, find features, clamp")
    ssub = group.add_subparsers(dest="sae_command", metavar="ACTION")
    group.set_defaults(func=lambda args: group.print_help() or 2)

    p = command(
        ssub,
        "train",
        "Train a TopK SAE on one layer's residual stream and save it as a sae-lens folder.",
        "steerlab sae train --texts dexperts-sentiment --layer 15 --out smollm2-l15-sae --threads 1",
    )
    p.add_argument(
        "--texts", required=True, help='a .txt (one text per line) or .jsonl ({"text"}) file, or dexperts-sentiment'
    )
    p.add_argument("--data-dir", help="the shared data folder for a named --texts set (default: ../shared/data)")
    p.add_argument("--layer", type=int, required=True, help="the layer whose output the SAE reads")
    p.add_argument("--width", type=int, help="features (default: 8 x the hidden size)")
    p.add_argument("--k", type=int, default=32, help="active features per token (the L0)")
    p.add_argument("--max-tokens", type=int, default=200_000, help="tokens to record and train on")
    p.add_argument("--epochs", type=int, default=4, help="passes over the recorded tokens")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and order")
    add_out_args(p, "output folder (sae-lens layout: cfg.json, sae_weights.safetensors; steerlab.json: the report)")
    add_model_args(p)
    p.set_defaults(func=cmd_train)

    p = command(ssub, "info", "Show an SAE's layout, layer, sizes and model.", "steerlab sae info smollm2-l15-sae")
    p.add_argument("path", help="a sae-lens folder, or a Gemma Scope params.npz / params.safetensors")
    p.add_argument("--layer", type=int, help="the layer of a Gemma Scope file whose path names none")
    p.set_defaults(func=cmd_info)

    p = command(
        ssub,
        "features",
        "Rank an SAE's features by how differently they fire on the two sides of pairs; show snippets; save one.",
        "steerlab sae features --sae smollm2-l15-sae --data pairs.jsonl --texts dexperts-sentiment "
        "--save-feature best --out feature.safetensors",
    )
    p.add_argument("--sae", required=True, help="a sae-lens folder, or a Gemma Scope params.npz / params.safetensors")
    p.add_argument("--layer", type=int, help="the layer of a Gemma Scope file whose path names none")
    add_pair_args(p)
    p.add_argument("--texts", help="texts to show each top feature's top activating snippets from (file or named set)")
    p.add_argument("--text-limit", type=int, default=500, help="read at most this many of --texts")
    p.add_argument("--top", type=int, default=10, help="features to show")
    p.add_argument("--snippets", type=int, default=3, help="snippets per feature")
    p.add_argument("--save-feature", help="save this feature (a number, or 'best') as a steering vector to --out")
    p.add_argument("--task", default="", help="what the saved vector is for (e.g. sentiment)")
    add_out_args(p, "the saved feature's vector file (.safetensors)", required=False)
    p.add_argument("--json", action="store_true", help="print JSON")
    add_model_args(p)
    p.set_defaults(func=cmd_features)

    p = command(
        ssub,
        "clamp",
        "Make a steer (kind sae_clamp) that sets one feature's activation to a value; apply it with generate.",
        "steerlab sae clamp --sae smollm2-l15-sae --feature 1234 --value 8 --out clamp.safetensors",
    )
    p.add_argument("--sae", required=True, help="a sae-lens folder, or a Gemma Scope params.npz / params.safetensors")
    p.add_argument("--layer", type=int, help="the layer of a Gemma Scope file whose path names none")
    p.add_argument("--feature", type=int, required=True, help="the feature to clamp")
    p.add_argument("--value", type=float, required=True, help="the activation to set it to (0 switches it off)")
    add_out_args(p, "the clamp steer file (.safetensors), for `steerlab generate --vector`")
    add_model_args(p)
    p.set_defaults(func=cmd_clamp)


def cmd_train(args) -> int:
    from ..sae.formats import write_saelens
    from ..sae.texts import load_texts
    from ..sae.train import TrainConfig, train_sae

    out = check_out_free(args.out, args.overwrite)
    config = TrainConfig(
        layer=args.layer, width=args.width, k=args.k, max_tokens=args.max_tokens, epochs=args.epochs, seed=args.seed
    )
    config.check()
    texts = load_texts(args.texts, args.data_dir)
    lm = load_cli_model(args)
    with StageBars() as bars:
        sae, report = train_sae(lm, texts, config, progress=bars)
    notes = {"report": report.to_json(), "config": config.__dict__, "texts": args.texts}
    write_saelens(sae, out, overwrite=args.overwrite, notes=notes)
    print(json.dumps(report.to_json(), indent=1))
    print(f"saved -> {out}")
    return 0


def _read(args):
    from ..sae.formats import read_sae

    return read_sae(args.sae if hasattr(args, "sae") else args.path, args.layer)


def cmd_info(args) -> int:
    sae = _read(args)
    info = {
        "layer": sae.layer,
        "d_model": sae.d_model,
        "d_sae": sae.d_sae,
        "activation": sae.activation,
        "k": sae.k,
        "model": sae.model_name or "(not stated)",
        "fingerprint": sae.model_fingerprint or "(not stated)",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
    }
    print(json.dumps(info, indent=1))
    return 0


def cmd_features(args) -> int:
    from ..sae.feature_vector import feature_vector
    from ..sae.features import pair_feature_means, rank_features, top_snippets
    from ..sae.texts import load_texts

    check_at_least(args.top, 1, "--top")
    check_at_least(args.snippets, 1, "--snippets")
    if bool(args.save_feature) != bool(args.out):
        raise CLIError("--save-feature and --out go together: which feature to save, and where")
    if args.save_feature and not (args.save_feature == "best" or args.save_feature.isdigit()):
        raise CLIError(f"--save-feature {args.save_feature}: expected a feature number or 'best'")
    out = check_out_free(args.out, args.overwrite)
    pairs = pairs_from_args(args)
    sae = _read(args)
    texts = load_texts(args.texts, args.data_dir)[: args.text_limit] if args.texts else None
    lm = load_cli_model(args)
    sae.check_model(lm)
    positive, negative = pair_feature_means(lm, sae, list(pairs.pairs))
    ranked = rank_features(positive, negative)
    shown = ranked[: args.top]
    snippets = top_snippets(lm, sae, [s.feature for s in shown], texts, per_feature=args.snippets) if texts else {}
    if args.json:
        rows = [{**s.to_json(), "snippets": [x.snippet for x in snippets.get(s.feature, [])]} for s in shown]
        print(json.dumps(rows, indent=1))
    else:
        for s in shown:
            side = "positive" if s.sign > 0 else "negative"
            print(
                f"feature {s.feature:>6}: AUROC {s.auroc:.3f} (fires on the {side} side), mean "
                f"{s.mean_positive:.3f} vs {s.mean_negative:.3f}"
            )
            for x in snippets.get(s.feature, []):
                print(f"    {x.activation:8.3f}  {x.snippet!r}")
    if out is not None:
        chosen = (
            ranked[0]
            if args.save_feature == "best"
            else next((s for s in ranked if s.feature == int(args.save_feature)), None)
        )
        if chosen is None:
            raise CLIError(f"--save-feature {args.save_feature}: that feature fires on neither side of the pairs")
        vector = feature_vector(
            lm, sae, chosen.feature, sign=chosen.sign, source=str(args.sae), stats=chosen.to_json(), task=args.task
        )
        vector.save(out, overwrite=args.overwrite)
        print(f"saved feature {chosen.feature} (sign {chosen.sign:+d}) at layer {sae.layer} -> {out}", file=sys.stderr)
    return 0


def cmd_clamp(args) -> int:
    from ..sae.clamp import FeatureClamp

    out = check_out_free(args.out, args.overwrite)
    sae = _read(args)
    clamp = FeatureClamp(sae, args.feature, args.value)
    lm = load_cli_model(args)
    sae.check_model(lm)
    clamp.save(out, lm, source=str(args.sae), overwrite=args.overwrite)
    print(f"feature {args.feature} clamped to {args.value:g} at layer {sae.layer} -> {out}")
    return 0
