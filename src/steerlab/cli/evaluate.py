"""`steerlab eval` and `steerlab compare`: the library's evaluate/compare, printed and saved as report folders."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from datetime import datetime
from pathlib import Path

from ..operators import OPERATORS
from .common import (
    LAYERS_HELP,
    CLIError,
    StageBars,
    add_model_args,
    check_at_least,
    check_writable,
    command,
    load_cli_model,
    parse_layers,
    parse_numbers,
)


def register(sub, vsub) -> None:
    p = command(
        sub,
        "eval",
        "evaluate a steer on a task and write a report folder",
        "steerlab eval --task sentiment --vector sentiment.safetensors --multipliers=-4,4 --limit 50\n"
        "  steerlab eval --task toxicity --method caa --layers 15 --multipliers 6 --out reports/tox-caa",
        "Evaluate a steer on a task: steered beside original, scored for effect and fluency, written as a "
        "report folder (report.json, summary.md, samples.jsonl).",
    )
    steer = p.add_argument_group("steer (one of)")
    steer.add_argument("--vector", help="a steer file (vector, LM-Steer or prompt steer)")
    steer.add_argument(
        "--method", help="fit this method on the task's train pairs (e.g. caa, pca, vector_prompt, prompt)"
    )
    p.add_argument("--config", help="YAML config for --method")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a --method config key")
    p.add_argument(
        "--layers",
        help=f"layers to steer: {LAYERS_HELP} (default: the vector's recommended or all its "
        "layers; with --method: the model's middle layer)",
    )
    p.add_argument(
        "--operator",
        choices=list(OPERATORS),
        help="how a vector acts: add, ablate, clamp, rotate (default: the file's, else add)",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--multipliers",
        help="comma-separated multipliers; write negatives as --multipliers=-4,4 "
        "(default: what the vector steers at when nothing is given: its calibrated "
        "strength, else its recommended multiplier, else strength 0.2)",
    )
    size.add_argument(
        "--strengths",
        help="comma-separated norm-relative strengths (added norm / the first steered "
        "layer's residual norm on neutral text, as in `steerlab sweep`)",
    )
    p.add_argument(
        "--instruction", help="instruction for --method prompt / vector_prompt (default: one toward the task's goal)"
    )
    reasoning = p.add_argument_group("reasoning tasks (e.g. reasoning-length)")
    reasoning.add_argument(
        "--positions", default="all", help="where to steer, e.g. 'until:The answer is' (the reasoning, not the answer)"
    )
    reasoning.add_argument(
        "--reasoning-budget", type=int, metavar="N", help="steer nothing for the first N generated tokens, then ramp up"
    )
    reasoning.add_argument("--budget-ramp", type=int, metavar="R", help="tokens the budget's ramp takes (32)")
    _add_run_args(p, limit=None)
    p.set_defaults(func=cmd_eval)

    p = command(
        sub,
        "compare",
        "compare steering methods on one task and budget",
        "steerlab compare --task sentiment --limit 50 --out reports/sentiment-compare",
        "Compare steering methods on one task and budget (same pairs, prompts, tokens, strength): one table "
        "of effect and fluency, to see when prompting is enough.",
    )
    p.add_argument("--methods", help="comma-separated methods (default: every registered method)")
    p.add_argument("--layer", type=int, help="layer for vector methods (default: the model's middle layer)")
    p.add_argument(
        "--strengths",
        help="comma-separated strengths for vector methods: the added norm as a fraction "
        "of the layer's residual norm (default 0.2)",
    )
    p.add_argument(
        "--calibrated",
        action="store_true",
        help="apply each vector at its own calibrated strength toward the task's goal (the same KL budget and "
        "fluency bound for every method, as `steerlab vector calibrate`) instead of --strengths",
    )
    p.add_argument("--kl-budget", type=float, default=0.5, help="with --calibrated: nats per token of KL")
    p.add_argument("--fluency-bound", type=float, default=0.1, help="with --calibrated: as in `vector calibrate`")
    p.add_argument(
        "--instruction", help="instruction for prompt steering and vector-prompt (default: one toward the task's goal)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="override one method's config key, e.g. --set lm_steer.steps=200",
    )
    _add_run_args(p, limit=50)
    p.set_defaults(func=cmd_compare)


def _add_run_args(p: argparse.ArgumentParser, limit: int | None) -> None:
    p.add_argument(
        "--task", required=True, help="a built-in task (sentiment, toxicity, harmful-refusal) or a task file"
    )
    p.add_argument("--data-dir", help="the shared data folder (default: $STEERLAB_DATA or ../shared/data)")
    p.add_argument("--split", default="test", choices=["test", "val"], help="which held-out prompts to use")
    p.add_argument(
        "--limit",
        type=int,
        default=limit,
        help="first N prompts (default: all)" if limit is None else "first N prompts",
    )
    p.add_argument("--train-limit", type=int, default=200, help="first N train pairs for fitting a method")
    p.add_argument("--max-new-tokens", type=int, default=40, help="tokens to generate per prompt")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (prompt i uses seed + i in every setting)")
    p.add_argument(
        "--batch-size", type=int, default=16, help="rows per generation call (all settings of a prompt share one)"
    )
    p.add_argument("--out", help="report folder to create (default: steerlab-out/<command>-<task>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_model_args(p)


def _prepare(args, command_name: str):
    """Checks that need no model: the task, limits, generation settings and a free --out folder."""
    from ..evaluation.report import check_free
    from ..evaluation.run import generation_task
    from ..evaluation.tasks import get_task
    from ..generation import GenerationConfig

    check_at_least(args.limit, 1, "--limit")
    check_at_least(args.train_limit, 2, "--train-limit")
    task = get_task(args.task, args.data_dir)
    if not (command_name == "eval" and task.kind == "reasoning"):
        task = generation_task(task)
    try:
        generation = GenerationConfig(
            max_new_tokens=args.max_new_tokens,
            do_sample=args.sample,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed if args.sample else None,
        )
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    name = task.name.replace("/", "-").replace(".", "-")
    out = Path(args.out) if args.out else Path("steerlab-out") / f"{command_name}-{name}-{datetime.now():%Y%m%d-%H%M%S}"
    check_free(out, args.overwrite)
    check_writable(out)
    return task, generation, out


def cmd_eval(args) -> int:
    from ..config import read_config_values
    from ..evaluation.report import summary_markdown, write_report
    from ..evaluation.run import evaluate
    from ..methods import get_method
    from ..steers import load_steer
    from ..vector import SteeringVector
    from .common import check_vector_layers

    if bool(args.vector) == bool(args.method):
        raise CLIError("give one steer: --vector FILE or --method NAME")
    task, generation, out = _prepare(args, "eval")
    if task.kind == "reasoning":
        return _eval_reasoning(args, task, generation, out)
    if args.positions != "all" or args.reasoning_budget is not None or args.budget_ramp is not None:
        raise CLIError(
            f"--positions, --reasoning-budget and --budget-ramp apply to reasoning tasks; task '{task.name}' is a "
            f"{task.kind} task (steer positions there with `steerlab generate --positions`)"
        )
    layers = parse_layers(args.layers)
    multipliers = parse_numbers(args.multipliers, "--multipliers")
    strengths = parse_numbers(args.strengths, "--strengths")
    values = read_config_values(args.config, args.set)[0] if args.method else None
    if args.method:
        method = get_method(args.method)
        if layers is not None and "layers" not in {f.name for f in dataclasses.fields(method.config_cls)}:
            raise CLIError(
                f"--layers does not apply to --method {args.method}: it has no layers to choose; drop --layers"
            )
        if args.operator and method.kind != "vector":
            raise CLIError(
                f"--operator applies to vectors; --method {args.method} makes a steer of kind '{method.kind}': "
                "drop --operator"
            )
    steer = load_steer(args.vector) if args.vector else None
    if steer is not None and steer.kind == "condition":
        raise CLIError(
            f"--vector {args.vector} is a condition file: it decides where a vector applies and steers nothing "
            "itself; give the vector to evaluate (conditions apply in generate --condition and serve)"
        )
    if steer is not None and args.operator and not isinstance(steer, SteeringVector):
        raise CLIError(
            f"--operator applies to vectors; {args.vector} is a steer of kind '{steer.kind}': drop --operator"
        )
    if isinstance(steer, SteeringVector):
        check_vector_layers([steer], layers)
    lm = load_cli_model(args)
    with StageBars() as bars:
        report = evaluate(
            lm,
            task,
            steer,
            method=args.method,
            config=values,
            layers=layers,
            multipliers=multipliers,
            strengths=strengths,
            instruction=args.instruction,
            split=args.split,
            limit=args.limit,
            train_limit=args.train_limit,
            data_dir=args.data_dir,
            generation=generation,
            batch_size=args.batch_size,
            source=args.vector or "",
            operator=args.operator,
            progress=bars,
        )
    write_report(out, report, overwrite=args.overwrite)
    print(summary_markdown(report).split("\n## Samples")[0].rstrip())
    print(f"\nreport -> {out}")
    return 0


def _eval_reasoning(args, task, generation, out) -> int:
    """A vector on a reasoning task: unsteered, each strength, and the two prompt baselines, scored for accuracy
    and tokens (evaluation.reasoning)."""
    from ..evaluation.reasoning import ReasoningReport, evaluate_reasoning, strength_arms
    from ..positions import check_positions
    from ..steering import LengthBudget, SteeringError
    from ..steers import load_steer
    from ..vector import SteeringVector

    if args.method:
        raise CLIError(
            f"task '{task.name}' evaluates a vector file: build it first (`steerlab vector build --task {task.name}`) "
            "and give it as --vector"
        )
    if args.multipliers is None and args.strengths is None:
        raise CLIError("give the settings to compare: --strengths=-0.1,0.1 (or --multipliers)")
    if args.budget_ramp is not None and args.reasoning_budget is None:
        raise CLIError("--budget-ramp shapes a --reasoning-budget; give --reasoning-budget N too")
    check_positions(args.positions)
    vector = load_steer(args.vector)
    if not isinstance(vector, SteeringVector):
        raise CLIError(f"{args.vector} is a steer of kind '{vector.kind}'; reasoning tasks evaluate vector files")
    layers = parse_layers(args.layers)
    ramp = [args.budget_ramp] if args.budget_ramp is not None else []
    try:
        budget = LengthBudget(args.reasoning_budget, *ramp) if args.reasoning_budget is not None else None
        values = parse_numbers(
            args.multipliers or args.strengths, "--multipliers" if args.multipliers else "--strengths"
        )
        arms = strength_arms(
            vector,
            values or [],
            raw=args.multipliers is not None,
            layers=layers,
            positions=args.positions,
            budget=budget,
        )
    except SteeringError as exc:
        raise CLIError(str(exc)) from None
    items = task.eval_items(args.split, args.data_dir, args.limit)
    lm = load_cli_model(args)
    with StageBars() as bars:
        results = evaluate_reasoning(
            lm,
            items,
            arms,
            config=generation,
            budget=args.reasoning_budget,
            batch_size=args.batch_size,
            progress=bars,
        )
    settings = {
        "task": task.name,
        "split": args.split,
        "items": len(items),
        "max_new_tokens": generation.max_new_tokens,
        "vector": args.vector,
        "positions": args.positions,
        "budget": None if budget is None else {"tokens": budget.tokens, "ramp": budget.ramp},
        "model": lm.name,
    }
    report = ReasoningReport(settings, results, list(items))
    report.save(out, overwrite=args.overwrite)
    print(report.markdown().rstrip())
    print(f"\nreport -> {out}")
    return 0


def cmd_compare(args) -> int:
    from ..evaluation.run import compare
    from ..methods import METHODS

    task, generation, out = _prepare(args, "compare")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    if args.methods is not None and not methods:
        raise CLIError("--methods names no method; e.g. --methods caa,prompt")
    overrides: dict[str, list[str]] = {}
    for item in args.set:
        name, dot, rest = item.partition(".")
        compared = methods or list(METHODS)
        if not dot or "=" not in rest or name not in compared:
            raise CLIError(
                f"--set {item}: expected METHOD.KEY=VALUE for one of the compared methods "
                f"({', '.join(compared)}), e.g. --set lm_steer.steps=200"
            )
        overrides.setdefault(name, []).append(rest)
    strengths = parse_numbers(args.strengths, "--strengths")
    if args.calibrated and strengths:
        raise CLIError("--calibrated applies each vector at its calibrated strength; drop --strengths")
    calibration = None
    if args.calibrated:
        from ..errors import UsageError
        from ..evaluation.calibrate import CalibrationConfig

        try:
            calibration = CalibrationConfig(kl_budget=args.kl_budget, fluency_bound=args.fluency_bound)
        except UsageError as exc:
            raise CLIError(f"--calibrated: {exc}") from None
    lm = load_cli_model(args)
    with StageBars() as bars:
        result = compare(
            lm,
            task,
            methods=methods,
            layer=args.layer,
            strengths=strengths,
            calibration=calibration,
            instruction=args.instruction,
            overrides=overrides,
            split=args.split,
            limit=args.limit,
            train_limit=args.train_limit,
            data_dir=args.data_dir,
            generation=generation,
            batch_size=args.batch_size,
            progress=bars,
            report=lambda line: print(line, file=sys.stderr),
        )
    result.save(out, overwrite=args.overwrite)
    print(result.markdown())
    print(f"\nreport -> {out}")
    return 0
