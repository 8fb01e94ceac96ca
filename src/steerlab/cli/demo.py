"""`steerlab demo`: build a sentiment CAA vector on the default model and show its effect both ways."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path

from ..data import demo_dataset_path, load_pairs
from ..evaluation.sentiment import vader_scores
from ..generation import GenerationConfig, generate
from ..methods.caa import CAAConfig, fit
from ..steering import SteeringSpec
from ..strength import multiplier_for, strength_of
from .common import add_model_args, command, load_cli_model, one_line, progress_bar

# Tuned on SmolLM2-135M-Instruct with the shipped pairs: strong enough to flip the tone, weak enough
# to stay readable. Other models get the middle layer and the same norm-relative strength.
DEMO_RELATIVE_STRENGTH = 0.2
DEMO_PROMPTS = "demo_prompts.txt"


def register(sub, vsub) -> None:
    p = command(
        sub,
        "demo",
        "Build a sentiment CAA vector on the default model and show steered beside original.",
        "steerlab demo",
    )
    p.add_argument("--data", help="pairs file (default: the shipped sentiment pairs)")
    p.add_argument("--prompts-file", help="prompts to generate for (default: the shipped demo prompts)")
    p.add_argument("--layer", type=int, help="layer (default: a middle layer)")
    unit = p.add_mutually_exclusive_group()
    unit.add_argument("--multiplier", type=float, default=None, help="raw multiplier (default: strength 0.2)")
    unit.add_argument(
        "--strength",
        type=float,
        default=None,
        help="norm-relative strength: fraction of the layer's mean residual norm (default 0.2)",
    )
    p.add_argument("--max-new-tokens", type=int, default=40, help="tokens to generate per prompt")
    p.add_argument("--out-dir", default="steerlab-out", help="where the vector file is written")
    add_model_args(p)
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:
    from importlib import resources

    started = time.perf_counter()
    data = load_pairs(args.data or demo_dataset_path())
    prompts_path = (
        Path(args.prompts_file)
        if args.prompts_file
        else Path(str(resources.files("steerlab") / "resources" / DEMO_PROMPTS))
    )
    prompts = [line.strip() for line in prompts_path.read_text().splitlines() if line.strip()]
    lm = load_cli_model(args)
    layer = args.layer if args.layer is not None else lm.default_layer()
    with progress_bar(len(data), f"CAA vector at layer {layer} from {data.name}") as bar:
        vector = fit(lm, data, CAAConfig(layers=[layer]), task="sentiment", progress=bar.update)
    multiplier = args.multiplier
    if multiplier is None:
        # The same fraction of the layer's residual norm means a similar strength on any model.
        strength = args.strength if args.strength is not None else DEMO_RELATIVE_STRENGTH
        multiplier = round(multiplier_for(vector, layer, strength), 2)
    strength = strength_of(vector, layer, multiplier)
    vector.meta = vector.meta.with_recommended(layer=layer, multiplier=multiplier)
    out = Path(args.out_dir) / f"sentiment-caa-{datetime.now():%Y%m%d-%H%M%S}.safetensors"
    vector.save(out)

    n = len(prompts)
    rows = prompts * 3
    spec = SteeringSpec(vector, [multiplier] * n + [-multiplier] * n + [0.0] * n, [layer])
    config = GenerationConfig(max_new_tokens=args.max_new_tokens)
    with progress_bar(len(rows), "generating (steered +, steered -, original in one batch)") as bar:
        results = generate(lm, rows, spec, config=config, batch_size=len(rows), task="sentiment", progress=bar.update)
    plus, minus, orig = results[:n], results[n : 2 * n], results[2 * n :]

    print(
        f"\nsteerlab demo: {lm.name}, CAA sentiment vector from {len(data)} pairs, layer {layer}, strength +/-{strength:.3g} "
        f"(multiplier +/-{multiplier})"
    )
    for i, prompt in enumerate(prompts):
        print(f"\n[{i + 1}] {prompt}")
        print(f"  original   | {one_line(orig[i].steered)}")
        print(f"  positive + | {one_line(plus[i].steered)}")
        print(f"  negative - | {one_line(minus[i].steered)}")
    _print_scores(orig, plus, minus)
    print(f"\nvector written to {out}")
    print(f"done in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return 0


def _print_scores(orig, plus, minus) -> None:
    """Mean VADER compound per column: the demo measures its effect instead of asking to be believed."""

    def mean(results) -> float:
        return sum(vader_scores([r.steered for r in results])) / len(results)

    print(
        f"\nmean VADER sentiment (-1..1): original {mean(orig):+.2f}, positive {mean(plus):+.2f}, negative {mean(minus):+.2f}"
    )
