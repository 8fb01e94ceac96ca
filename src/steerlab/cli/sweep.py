"""`steerlab sweep` and `steerlab tasks`: score a layer x strength grid for a task; list the built-in tasks."""

from __future__ import annotations

import time
from pathlib import Path

from .common import (CLIError, HelpFormatter, StageBars, add_model_args, check_at_least, load_cli_model, parse_layers,
                     parse_numbers)

EXAMPLES = (
    "steerlab sweep --task sentiment --layers 4,8,12,16,20 --strengths 0.1,0.2 --limit 20 --out sweeps/sentiment\n"
    "  steerlab sweep --task refusal --multipliers=-1,1 --out sweeps/refusal\n"
    "  steerlab sweep --task my_task.yaml --out sweeps/mine"
)


def register(sub, vector_sub=None) -> None:
    """Add the `sweep` and `tasks` subcommands."""
    p = sub.add_parser("sweep", help="score a layer x strength grid for a task and recommend a layer and multiplier",
                       description="Build the task's vector at every layer in one pass, score a layer x multiplier grid "
                       "in batched passes, write heatmaps and store the recommendation in the vector's metadata.",
                       epilog=f"examples:\n  {EXAMPLES}", formatter_class=HelpFormatter)
    p.add_argument("--task", required=True, help="a built-in task (see `steerlab tasks`) or a task file (.yaml/.json)")
    p.add_argument("--method", default="caa", help="steering method (sweeps build CAA vectors)")
    p.add_argument("--layers", default="all", help="layers: all, 4,8,12 or 0-29")
    grid = p.add_mutually_exclusive_group()
    grid.add_argument("--multipliers", help="raw multipliers, e.g. --multipliers=-1,1 (the CAA paper's; write = before a leading minus)")
    grid.add_argument("--strengths", help="norm-relative strengths (fraction of the layer's residual norm), e.g. --strengths="
                      "-0.25,-0.1,0.1,0.25 (default)")
    p.add_argument("--split", default="val", choices=["val", "test"], help="items to score (default val: held out of training)")
    p.add_argument("--limit", type=int, help="score only the first N items or prompts (default: all)")
    p.add_argument("--train-limit", type=int, help="build from only the first N training pairs (default: all)")
    p.add_argument("--fluency-bound", type=float, default=0.1,
                   help="recommend only cells keeping at least (1 - bound) of unsteered fluency (default 0.1)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="generation tasks: tokens per continuation")
    p.add_argument("--no-swap", action="store_true", help="A/B tasks: do not also score the choices swapped")
    p.add_argument("--positions", default="answer", choices=["answer", "all"],
                   help="A/B tasks: steer the answer tokens after the question (default) or all tokens")
    p.add_argument("--batch-rows", type=int, default=64, help="rows per forward pass")
    p.add_argument("--data-dir", help="the shared data folder (default: $STEERLAB_DATA or ../shared/data)")
    p.add_argument("--out", required=True, help="output folder for vector.safetensors, sweep.json, effect.png, fluency.png")
    p.add_argument("--overwrite", action="store_true", help="replace those files if they exist")
    add_model_args(p)
    p.set_defaults(func=cmd_sweep)

    t = sub.add_parser("tasks", help="list the built-in tasks", description="List built-in tasks and their data.",
                       formatter_class=HelpFormatter)
    t.add_argument("--data-dir", help="the shared data folder (default: $STEERLAB_DATA or ../shared/data)")
    t.set_defaults(func=cmd_tasks)


def cmd_sweep(args) -> int:
    from ..evaluation.sweep import OUTPUT_FILES, SweepConfig, save_sweep, sweep
    from ..evaluation.tasks import get_task

    if args.method != "caa":
        raise CLIError(f"--method {args.method}: sweeps build every layer's vector from one activation pass, "
                       "which only --method caa supports")
    check_at_least(args.limit, 1, "--limit")
    check_at_least(args.train_limit, 2, "--train-limit")
    task = get_task(args.task, args.data_dir)
    config = SweepConfig(layers=parse_layers(args.layers, weights=False) or [],
                         multipliers=parse_numbers(args.multipliers, "--multipliers") or [],
                         strengths=parse_numbers(args.strengths, "--strengths") or [], fluency_bound=args.fluency_bound,
                         split=args.split, limit=args.limit, train_limit=args.train_limit,
                         max_new_tokens=args.max_new_tokens, swap=not args.no_swap, positions=args.positions,
                         batch_rows=args.batch_rows)
    out = Path(args.out)
    clash = [name for name in OUTPUT_FILES if (out / name).exists()]
    if clash and not args.overwrite:
        raise CLIError(f"{out / clash[0]} already exists; choose another --out or pass --overwrite")
    lm = load_cli_model(args)
    start = time.perf_counter()
    with StageBars() as bars:
        result, vector = sweep(lm, task, config, data_dir=args.data_dir, progress=bars)
    save_sweep(out, result, vector, overwrite=args.overwrite)
    print_grid(result)
    print(f"swept {len(result.layers)} layers x {len(result.values)} {result.mode} values on {result.items} "
          f"{result.split} items in {time.perf_counter() - start:.0f}s -> {out}")
    return 0


def print_grid(result) -> None:
    head = "raw multiplier" if result.mode == "raw" else "strength"
    print(f"\n{result.task}: effect on {result.score_name} (unsteered {result.base_score:.3f}); "
          f"fluency = {result.fluency_name} (unsteered {result.base_fluency:.3f})")
    print(f"{'layer':>5}  " + "  ".join(f"{head[:8]} {v:>+6g}" for v in result.values))
    for layer, eff, flu in zip(result.layers, result.effect, result.fluency):
        print(f"{layer:>5}  " + "  ".join(f"{e:+.3f} ({f:.2f})" for e, f in zip(eff, flu)))
    rec = result.recommended
    if rec:
        print(f"recommended: layer {rec['layer']}, multiplier {rec['multiplier']:g} ({result.mode} {rec['value']:g}); "
              f"effect {rec['effect']:+.3f}, fluency {rec['fluency']:.3f} (stored in the vector's metadata)")
    else:
        print(result.note)


def cmd_tasks(args) -> int:
    from ..evaluation.tasks import builtin_tasks

    for name, task in builtin_tasks(args.data_dir).items():
        print(f"{name:<34} {task.kind:<10} {task.description}")
    print("\nyour own task: a .yaml/.json file with name, kind (ab or generation), train, test, and optionally "
          "val, metric (sentiment, toxicity, refusal), direction (1 or -1), chat, description")
    return 0
