"""`steerlab sweep` and `steerlab tasks`: score a layer x strength grid for a task; list the built-in tasks."""

from __future__ import annotations

import sys
import time

from .common import (
    CLIError,
    HelpFormatter,
    StageBars,
    add_model_args,
    check_at_least,
    check_out_free,
    load_cli_model,
    parse_layers,
    parse_numbers,
)

EXAMPLES = (
    "steerlab sweep --task sentiment --layers 4,8,12,16,20 --strengths 0.1,0.2 --limit 20 --out sweeps/sentiment\n"
    "  steerlab sweep --task refusal --multipliers=-1,1 --out sweeps/refusal\n"
    "  steerlab sweep --task my_task.yaml --out sweeps/mine"
)


def register(sub, vector_sub=None) -> None:
    """Add the `sweep` and `tasks` subcommands."""
    p = sub.add_parser(
        "sweep",
        help="score a layer x strength grid for a task and recommend a layer and multiplier",
        description="Build the task's vector at every layer in one pass, score a layer x multiplier grid "
        "in batched passes, write heatmaps and store the recommendation in the vector's metadata.",
        epilog=f"examples:\n  {EXAMPLES}",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--task", required=True, help="a built-in task (see `steerlab tasks`) or a task file (.yaml/.json)")
    p.add_argument("--method", default="caa", help="steering method (sweeps build CAA vectors)")
    p.add_argument("--layers", default="all", help="layers: all, 4,8,12 or 0-29")
    grid = p.add_mutually_exclusive_group()
    grid.add_argument(
        "--multipliers",
        help="raw multipliers, e.g. --multipliers=-1,1 (the CAA paper's; write = before a leading minus)",
    )
    grid.add_argument(
        "--strengths",
        help="norm-relative strengths (fraction of the layer's residual norm), e.g. --strengths="
        "-0.25,-0.1,0.1,0.25 (default)",
    )
    p.add_argument(
        "--split", default="val", choices=["val", "test"], help="items to score (default val: held out of training)"
    )
    p.add_argument("--limit", type=int, help="score only the first N items or prompts (default: all)")
    p.add_argument("--train-limit", type=int, help="build from only the first N training pairs (default: all)")
    p.add_argument(
        "--fluency-bound",
        type=float,
        default=0.1,
        help="recommend only cells keeping at least (1 - bound) of unsteered fluency (default 0.1)",
    )
    p.add_argument(
        "--min-effect",
        type=float,
        help="smallest |effect| worth recommending (default: 2%% of the metric's range, 0.02 of p(matching))",
    )
    p.add_argument("--max-new-tokens", type=int, default=32, help="generation tasks: tokens per continuation")
    p.add_argument("--no-swap", action="store_true", help="A/B tasks: do not also score the choices swapped")
    p.add_argument(
        "--positions",
        default="answer",
        choices=["answer", "all"],
        help="A/B tasks: steer the answer tokens after the question (default) or all tokens",
    )
    p.add_argument("--batch-size", type=int, default=64, help="rows per forward pass (cells x items)")
    p.add_argument("--data-dir", help="the shared data folder (default: $STEERLAB_DATA or ../shared/data)")
    p.add_argument(
        "--out", required=True, help="output folder for vector.safetensors, sweep.json, effect.png, fluency.png"
    )
    p.add_argument("--overwrite", action="store_true", help="replace the folder (as a whole) if it exists")
    add_model_args(p)
    p.set_defaults(func=cmd_sweep)

    t = sub.add_parser(
        "tasks",
        help="list the built-in tasks",
        description="List built-in tasks and their data.",
        formatter_class=HelpFormatter,
    )
    t.add_argument("--data-dir", help="the shared data folder (default: $STEERLAB_DATA or ../shared/data)")
    t.set_defaults(func=cmd_tasks)


def cmd_sweep(args) -> int:
    from ..evaluation.sweep import SweepConfig, check_sweepable, save_sweep, sweep
    from ..evaluation.tasks import get_task

    if args.method != "caa":
        raise CLIError(
            f"--method {args.method}: sweeps build every layer's vector from one activation pass, "
            "which only --method caa supports"
        )
    check_at_least(args.limit, 1, "--limit")
    check_at_least(args.train_limit, 2, "--train-limit")
    task = get_task(args.task, args.data_dir)
    config = SweepConfig(
        layers=parse_layers(args.layers, weights=False) or [],
        multipliers=parse_numbers(args.multipliers, "--multipliers") or [],
        strengths=parse_numbers(args.strengths, "--strengths") or [],
        fluency_bound=args.fluency_bound,
        split=args.split,
        limit=args.limit,
        train_limit=args.train_limit,
        max_new_tokens=args.max_new_tokens,
        swap=not args.no_swap,
        positions=args.positions,
        batch_rows=args.batch_size,
        min_effect=args.min_effect,
    )
    check_sweepable(task)
    out = check_out_free(args.out, args.overwrite)  # the folder is the sweep's, replaced whole
    # Read the items before any model work, so a malformed file is named before minutes of loading and building.
    items = task.eval_items(config.split, args.data_dir, config.limit)
    if task.kind == "ab":
        from ..evaluation.ab import check_ab_items

        check_ab_items(items, config.swap, f"task '{task.name}' ({config.split})")
    lm = load_cli_model(args)
    layers = config.layers or list(range(lm.num_layers))
    cells = 1 + len(layers) * len(config.values)
    work = (
        f"{cells} cells x {len(items)} prompts = {cells * len(items)} continuations of {config.max_new_tokens} tokens"
        if task.kind == "generation"
        else f"{cells} cells x {len(items)} questions x {2 if config.swap else 1} orders (forward passes only)"
    )
    print(
        f"sweep: {len(layers)} layers x {len(config.values)} values: {work}; the bars show the time left "
        "(fewer --layers, --strengths or a --limit make it shorter)",
        file=sys.stderr,
    )
    start = time.perf_counter()
    with StageBars() as bars:
        result, vector = sweep(lm, task, config, data_dir=args.data_dir, progress=bars)
    save_sweep(out, result, vector, overwrite=args.overwrite)
    print_grid(result, vector)
    print(
        f"swept {len(result.layers)} layers x {len(result.values)} {result.mode} values on {result.items} "
        f"{result.split} items in {time.perf_counter() - start:.0f}s -> {out}"
    )
    return 0


def print_grid(result, vector=None) -> None:
    head = "raw multiplier" if result.mode == "raw" else "strength"
    print(
        f"\n{result.task}: effect = change in {result.score_name} (unsteered {result.base_score:.3f}) x the task's "
        f"direction ({result.direction:+g}), so {result.metric_record().sign_words(result.direction)}; "
        f"fluency = {result.fluency_name} (unsteered {result.base_fluency:.3f}); "
        "* = 95% interval excludes 0, ! = outside the fluency bound"
    )
    print(f"{'layer':>5}  " + "  ".join(f"{head[:8]} {v:>+6g}" for v in result.values))
    for i, (layer, eff, flu) in enumerate(zip(result.layers, result.effect, result.fluency, strict=False)):
        marks = [
            ("*" if lo > 0 or hi < 0 else " ") + (" " if ok else "!")
            for (lo, hi), ok in zip(result.interval[i], result.fluent[i], strict=False)
        ]
        print(f"{layer:>5}  " + "  ".join(f"{e:+.3f}{m}({f:.2f})" for e, m, f in zip(eff, marks, flu, strict=False)))
    if result.kind == "ab":
        print(_ab_words(result))
    for name, cell in result.directions.items():
        if cell:
            value = (
                f"multiplier {cell.multiplier:g}"
                if result.mode == "raw"
                else f"strength {cell.value:+g} = multiplier {cell.multiplier:+g}"
            )
            low, high = cell.interval or (float("nan"), float("nan"))
            print(
                f"steering {name}: layer {cell.layer}, {value}; {result.effect_words(cell.effect or 0.0)} "
                f"(effect {cell.effect:+.3f}, 95% interval {low:+.3f} to {high:+.3f}), fluency "
                f"{cell.fluency:.3f}, moved {cell.wrong_way or 0:.0%} of items the wrong way"
            )
        else:
            print(
                f"steering {name}: no reliable effect (no fluent cell's 95% interval excludes 0 with an effect of "
                f"at least {result.min_effect:g})"
            )
    if vector is not None:
        from ..steering import default_steering

        print(f"with no multiplier or strength, the vector now steers at {default_steering(vector).words()}")
    if not result.recommended or result.recommended.layer is None:
        print(result.note or "no default stored")


def _ab_words(result) -> str:
    """What each direction's cell moved (behaviour, letter or neither): the recommended cell where there is one,
    else the one with the largest effect; and whether the unsteered model is at chance."""
    from ..evaluation.ab import letter_words

    words = []
    if result.details.get("at_chance"):
        words.append("unsteered model is AT CHANCE on these items (accuracy and p(matching) near 0.5)")
    shift = result.details.get("letter_shift") or []
    for name, sign in (("up", 1), ("down", -1)):
        cells = [
            (sign * e, i, j)
            for i, row in enumerate(result.effect)
            for j, e in enumerate(row)
            if sign * result.values[j] > 0
        ]
        pick = result.directions.get(name)
        if pick is not None:
            cells = [c for c in cells if result.layers[c[1]] == pick.layer and result.values[c[2]] == pick.value]
        if cells and shift:
            _, i, j = max(cells)
            words.append(
                f"{name} (layer {result.layers[i]}, {result.values[j]:+g}): "
                + letter_words(result.effect[i][j], shift[i][j], min_effect=result.min_effect)
            )
    return "\n".join(words)


def cmd_tasks(args) -> int:
    from ..evaluation.tasks import builtin_tasks

    for name, task in builtin_tasks(args.data_dir).items():
        print(f"{name:<34} {task.kind:<10} {task.description}")
    print(
        "\nyour own task: a .yaml/.json file with name, kind (ab, generation or reasoning), train, test, and optionally "
        "val, metric (sentiment, toxicity, refusal), direction (1 or -1), chat, description"
    )
    return 0
