"""Commands `steerlab eval`, `steerlab compare` and `steerlab vector diagnose` (registered by steerlab.cli)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

EXAMPLES = {
    "diagnose": "steerlab vector diagnose --data pairs.jsonl\n"
                "  steerlab vector diagnose --data pairs.jsonl --layers 8,12,15,18 --out sentiment.safetensors",
    "eval": "steerlab eval --task sentiment --vector sentiment.safetensors --multipliers=-4,4 --limit 50\n"
            "  steerlab eval --task toxicity --method caa --layers 15 --multipliers 6 --out reports/tox-caa",
    "compare": "steerlab compare --task sentiment --limit 50 --out reports/sentiment-compare",
}


def register(sub, vsub) -> None:
    """Add `eval` and `compare` to the top-level commands and `diagnose` to `vector`."""
    _add_diagnose(vsub)
    _add_eval(sub)
    _add_compare(sub)


def _parser(sub, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_text, description=description, epilog=f"example:\n  {EXAMPLES[name]}",
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_generation_args(p: argparse.ArgumentParser, limit: int | None) -> None:
    p.add_argument("--task", required=True, help="a built-in task (sentiment, toxicity, harmful-refusal) or a task file")
    p.add_argument("--data-dir", help="the shared data folder (default: $STEERLAB_DATA or ../shared/data)")
    p.add_argument("--split", default="test", choices=["test", "val"], help="which held-out prompts to use")
    p.add_argument("--limit", type=int, default=limit, help=f"first N prompts (default: {limit or 'all'})")
    p.add_argument("--train-limit", type=int, default=200, help="first N train pairs for fitting a method (default 200)")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="sampling seed (prompt i uses seed + i in every setting)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per generation call (all settings of a prompt share one)")
    p.add_argument("--out", help="report folder to create (default: steerlab-out/<command>-<task>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def _add_diagnose(vsub) -> None:
    p = _parser(vsub, "diagnose", "check whether pairs isolate a direction (held-out AUROC per layer)",
                "Check whether contrastive pairs isolate a direction: held-out AUROC, consistency and norm per "
                "layer, with a verdict and the layers worth trying.")
    from steerlab.cli import add_model_args, add_pair_args

    add_pair_args(p)
    p.add_argument("--layers", help="layers to check, e.g. 8,12,15 (default: all; one forward pass either way)")
    p.add_argument("--holdout", type=float, default=0.25, help="share of pairs held out (default 0.25)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/held-out split")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", help="also save a CAA vector from all pairs at the suggested layers, with the diagnosis in its metadata")
    p.add_argument("--task", default="", help="what the --out vector is for (e.g. sentiment)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--json", action="store_true", help="print the diagnosis as JSON")
    add_model_args(p)
    p.set_defaults(func=cmd_diagnose)


def _add_eval(sub) -> None:
    p = _parser(sub, "eval", "evaluate a steer on a task and write a report folder",
                "Evaluate a steer on a task: steered beside original, scored for effect and fluency, written as a "
                "report folder (report.json, summary.md, samples.jsonl).")
    steer = p.add_argument_group("steer (one of)")
    steer.add_argument("--vector", help="a vector file")
    steer.add_argument("--method", help="fit this method on the task's train pairs (e.g. caa, pca, vector_prompt, prompt)")
    p.add_argument("--config", help="YAML config for --method")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a --method config key")
    p.add_argument("--layers", help="layers to steer (default: the vector's recommended or all its layers; "
                                    "with --method: the model's middle layer)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--multipliers", help="comma-separated multipliers; write negatives as --multipliers=-4,4 "
                                            "(default: the vector's recommended multiplier, else strength 0.2)")
    size.add_argument("--strengths", help="comma-separated norm-relative strengths (added norm / the first steered "
                                          "layer's residual norm on neutral text, as in `steerlab sweep`)")
    p.add_argument("--instruction", help="instruction for --method prompt / vector_prompt (default: one toward the task's goal)")
    _add_generation_args(p, limit=None)
    from steerlab.cli import add_model_args

    add_model_args(p)
    p.set_defaults(func=cmd_eval)


def _add_compare(sub) -> None:
    p = _parser(sub, "compare", "compare steering methods on one task and budget",
                "Compare steering methods on one task and budget (same pairs, prompts, tokens, strength): one table "
                "of effect and fluency, to see when prompting is enough.")
    p.add_argument("--methods", help="comma-separated methods (default: every registered method)")
    p.add_argument("--layer", type=int, help="layer for vector methods (default: the model's middle layer)")
    p.add_argument("--strengths", help="comma-separated strengths for vector methods: the added norm as a fraction "
                                       "of the layer's residual norm (default 0.2)")
    p.add_argument("--instruction", help="instruction for prompt steering and vector-prompt (default: one toward the task's goal)")
    p.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="override one method's config key, e.g. --set lm_steer.steps=200")
    _add_generation_args(p, limit=50)
    from steerlab.cli import add_model_args

    add_model_args(p)
    p.set_defaults(func=cmd_compare)


# ---- shared helpers --------------------------------------------------------------------------------

def _generation_task(args):
    """The task, checked to be a generation task (A/B tasks are scored by `steerlab sweep`)."""
    from steerlab.cli import CLIError
    from steerlab.tasks import get_task

    task = get_task(args.task, args.data_dir)
    if task.kind != "generation":
        raise CLIError(f"task '{task.name}' is an A/B task, scored by answer probabilities rather than generated text; "
                       f"use `steerlab sweep --task {task.name}` for it")
    return task


def _config(args):
    from steerlab.cli import CLIError
    from steerlab.generation import GenerationConfig

    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be at least 1, got {args.limit}")
    if args.train_limit < 2:
        raise CLIError(f"--train-limit must be at least 2, got {args.train_limit}")
    return GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=args.sample, temperature=args.temperature,
                            top_p=args.top_p, seed=args.seed if args.sample else None)


def _out_folder(args, command: str, task_name: str) -> Path:
    from .report import check_free

    name = task_name.replace("/", "-").replace(".", "-")
    out = Path(args.out) if args.out else Path("steerlab-out") / f"{command}-{name}-{datetime.now():%Y%m%d-%H%M%S}"
    check_free(out, args.overwrite)
    return out


def _task_settings(task, args, n_prompts: int) -> dict[str, Any]:
    from .report import METRIC_NOTES

    return {"name": task.name, "description": task.description, "metric": task.metric,
            "metric_note": METRIC_NOTES.get(task.metric, task.metric), "direction": task.direction,
            "split": args.split, "prompts": n_prompts, "limit": args.limit, "chat": bool(task.chat)}


def _task_chat(lm, task) -> bool:
    """Generate through the chat template only when both the task and the model use one (fitting follows the model)."""
    return bool(task.chat and lm.use_chat_template)


def _model_settings(lm) -> dict[str, Any]:
    return {"name": lm.name, "fingerprint": lm.fingerprint, "layers": lm.num_layers, "hidden_size": lm.hidden_size}


def _numbers(text: str | None, option: str) -> list[float] | None:
    from steerlab.cli import CLIError

    if not text:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CLIError(f"{option} {text}: expected numbers like 4 or -4,4 (write {option}=-4,4)") from None


# ---- commands --------------------------------------------------------------------------------------

def cmd_diagnose(args) -> int:
    from steerlab.cli import CLIError, load_cli_model, pairs_from_args, parse_layers, progress_bar
    from steerlab.methods.caa import vector_from_activations

    from .diagnose import check_sizes, diagnose, format_diagnosis

    data = pairs_from_args(args)
    layers = parse_layers(args.layers)
    if isinstance(layers, dict):
        raise CLIError("--layers takes layer numbers here (e.g. 8,12,15), not layer:weight")
    check_sizes(len(data), args.holdout)
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.overwrite:
        raise CLIError(f"{out} already exists; choose another --out or pass --overwrite")
    lm = load_cli_model(args)
    with progress_bar(len(data), f"recording {data.name}") as bar:
        diagnosis, acts = diagnose(lm, data, layers, holdout=args.holdout, seed=args.seed,
                                   batch_size=args.batch_size, progress=bar.update)
    print(json.dumps(diagnosis.to_dict(), indent=2) if args.json else format_diagnosis(diagnosis))
    if out is None:
        return 0
    if not diagnosis.suggested_layers:
        raise CLIError(f"no layer separates the pairs, so no vector was written to {out} (see the verdict above)")
    keep = [acts.layers.index(layer) for layer in diagnosis.suggested_layers]
    from steerlab.activations import PairActivations

    chosen = PairActivations(diagnosis.suggested_layers, acts.positive[:, keep], acts.negative[:, keep])
    vector = vector_from_activations(lm, chosen, data, task=args.task,
                                     params={"layers": chosen.layers, "batch_size": args.batch_size})
    vector.meta.diagnostics = diagnosis.to_dict()
    top = max(diagnosis.suggested_layers, key=lambda layer: diagnosis.layer(layer).consistency)
    vector.meta.recommended = {"layer": top}
    vector.save(out, overwrite=args.overwrite)
    print(f"\nCAA vector at layers {chosen.layers} (recommended layer {top}) with this diagnosis -> {out}", file=sys.stderr)
    return 0


def cmd_eval(args) -> int:
    from steerlab.cli import CLIError, load_cli_model, parse_layers, progress_bar
    from steerlab.steering import SteeringSpec, VectorSteering
    from steerlab.vector import SteeringVector

    from .compare import GOAL_INSTRUCTIONS
    from .report import Report, generate_arms, multiplier_arms, prompt_arm, score_run, write_report

    if bool(args.vector) == bool(args.method):
        raise CLIError("give one steer: --vector FILE or --method NAME")
    task = _generation_task(args)
    config = _config(args)
    out = _out_folder(args, "eval", task.name)
    layers = parse_layers(args.layers)
    multipliers = _numbers(args.multipliers, "--multipliers")
    prompts = task.eval_items(args.split, args.data_dir, args.limit)
    vector = SteeringVector.load(args.vector) if args.vector else None
    lm = load_cli_model(args)
    chat = _task_chat(lm, task)
    steer, steer_info = vector, {}
    if vector is None:
        steer, steer_info = _fit_for_eval(lm, task, args, layers, GOAL_INSTRUCTIONS.get(task.metric))
    if isinstance(steer, SteeringVector):
        vector = steer
        spec = SteeringSpec(vector, 1.0, layers)
        multipliers = _vector_multipliers(lm, spec, multipliers, _numbers(args.strengths, "--strengths"), steer_info)
        arms = multiplier_arms(VectorSteering(spec), multipliers)
        steer_info.update(method=vector.meta.method, source=args.vector or f"fitted ({args.method})",
                          layers=spec.layer_weights(), multipliers=multipliers, task=vector.meta.task,
                          dataset=vector.meta.dataset, params=vector.meta.params)
        steer_info["description"] = (f"{vector.meta.method} vector ({steer_info['source']}) at layers "
                                     f"{list(spec.layer_weights())}, multipliers {', '.join(f'{m:g}' for m in multipliers)}")
    elif hasattr(steer, "prompt_text"):
        if multipliers or args.strengths:
            raise CLIError("prompt steering has no strength; drop --multipliers/--strengths")
        arms = [prompt_arm(lm, steer, prompts, use_chat_template=chat)]
        steer_info["description"] = f'prompt steering: "{steer.instruction}" ({steer.placement})'
    else:
        arms = multiplier_arms(steer, multipliers or [1.0])
        steer_info["description"] = f"{args.method} at scales {', '.join(f'{m:g}' for m in (multipliers or [1.0]))}"
    with progress_bar(len(prompts), f"generating {len(arms)} steered + original per prompt") as bar:
        run = generate_arms(lm, prompts, arms, config=config, batch_size=args.batch_size, use_chat_template=chat,
                            task=task.name, progress=bar.update)
    print("scoring ...", file=sys.stderr)
    scores = score_run(lm, run, task.metric, task.direction, use_chat_template=chat, batch_size=args.batch_size)
    settings = {"command": "eval", "task": _task_settings(task, args, len(prompts)), "model": _model_settings(lm),
                "steer": _jsonable(steer_info), "generation": asdict(config), "batch_size": args.batch_size}
    report = Report(settings, scores, run)
    write_report(out, report, overwrite=args.overwrite)
    _print_table(report)
    print(f"\nreport -> {out}")
    return 0


def _vector_multipliers(lm, spec, multipliers, strengths, info: dict[str, Any]) -> list[float]:
    """--multipliers as given; else --strengths (or 0.2 when the vector recommends no multiplier) converted at
    the first steered layer with residual norms measured on neutral text, as `steerlab sweep` does."""
    from steerlab.strength import multiplier_for, with_neutral_norms

    from .compare import DEFAULT_STRENGTH

    recommended = spec.vector.meta.recommended.get("multiplier")
    if multipliers:
        return multipliers
    if recommended is not None and not strengths:
        return [float(recommended)]
    strengths = strengths or [DEFAULT_STRENGTH]
    layer = next(iter(spec.layer_weights()))
    measured = with_neutral_norms(lm, spec.vector)
    info["strengths"] = {"values": strengths, "layer": layer, "residual_norm": measured.meta.residual_norms[str(layer)]}
    return [round(multiplier_for(measured, layer, s), 4) for s in strengths]


def _fit_for_eval(lm, task, args, layers, default_instruction):
    """Fit --method on the task's train pairs; the instruction defaults to one toward the task's goal."""
    from steerlab.cli import CLIError, fit_progress_bar
    from steerlab.config import load_config
    from steerlab.methods import get_method

    method = get_method(args.method)
    overrides = list(args.set)
    fields = getattr(method.config_cls, "__dataclass_fields__", {})
    if "instruction" in fields and not any(o.startswith("instruction=") for o in overrides):
        instruction = args.instruction or default_instruction
        if not instruction:
            raise CLIError(f"--method {args.method} needs an instruction: pass --instruction TEXT")
        overrides.append(f"instruction={json.dumps(instruction)}")
    if layers is not None:
        if "layers" not in fields:
            raise CLIError(f"--method {args.method} takes no layers; drop --layers")
        overrides.append(f"layers={json.dumps(list(layers))}")
    config = load_config(method.config_cls, args.config, overrides)
    data = task.train_data(args.data_dir, args.train_limit)
    start = time.perf_counter()
    with fit_progress_bar(method, data, config, f"fitting {args.method} on {data.name}") as bar:
        steer = method.fit(lm, data, config, task=task.name, progress=bar.update)
    info = {"method": args.method, "config": asdict(config), "train": data.describe(),
            "fit_seconds": round(time.perf_counter() - start, 2)}
    return steer, info


def cmd_compare(args) -> int:
    from steerlab.cli import CLIError, load_cli_model, progress_bar
    from steerlab.methods import METHODS

    from .compare import DEFAULT_STRENGTH, GOAL_INSTRUCTIONS, compare_markdown, fit_methods
    from .report import Report, generate_arms, score_run, write_folder_atomic

    task = _generation_task(args)
    config = _config(args)
    out = _out_folder(args, "compare", task.name)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else list(METHODS)
    if not methods:
        raise CLIError("--methods names no method; e.g. --methods caa,prompt")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise CLIError(f"unknown method '{unknown[0]}'; available: {', '.join(METHODS)}")
    overrides: dict[str, list[str]] = {}
    for item in args.set:
        name, dot, rest = item.partition(".")
        if not dot or "=" not in rest or name not in methods:
            raise CLIError(f"--set {item}: expected METHOD.KEY=VALUE for one of the compared methods "
                           f"({', '.join(methods)}), e.g. --set lm_steer.steps=200")
        overrides.setdefault(name, []).append(rest)
    instruction = args.instruction or GOAL_INSTRUCTIONS.get(task.metric)
    if instruction is None and any(m in ("prompt", "vector_prompt") for m in methods):
        raise CLIError(f"no default instruction for metric '{task.metric}'; pass --instruction TEXT")
    strengths = _numbers(args.strengths, "--strengths") or [DEFAULT_STRENGTH]
    prompts = task.eval_items(args.split, args.data_dir, args.limit)
    data = task.train_data(args.data_dir, args.train_limit)
    lm = load_cli_model(args)
    layer = lm.default_layer() if args.layer is None else args.layer
    chat = _task_chat(lm, task)
    fitted = fit_methods(lm, methods, data, prompts, task=task.name, instruction=instruction or "", layer=layer,
                         strengths=strengths, use_chat_template=chat, overrides=overrides,
                         report=lambda line: print(line, file=sys.stderr))
    with progress_bar(len(prompts), f"generating {len(fitted)} methods + original per prompt") as bar:
        run = generate_arms(lm, prompts, [f.arm for f in fitted], config=config, batch_size=args.batch_size,
                            use_chat_template=chat, task=task.name, progress=bar.update)
    print("scoring ...", file=sys.stderr)
    scores = score_run(lm, run, task.metric, task.direction, use_chat_template=chat, batch_size=args.batch_size)
    settings = {"command": "compare", "task": _task_settings(task, args, len(prompts)), "model": _model_settings(lm),
                "train": data.describe(), "layer": layer, "strengths": strengths, "instruction": instruction,
                "methods": {f.label: {"setting": f.setting, "fit_seconds": round(f.seconds, 2), "params": f.params}
                            for f in fitted},
                "generation": asdict(config), "batch_size": args.batch_size}
    report = Report(_jsonable(settings), scores, run)
    table = compare_markdown(report.settings, scores, fitted, run)
    write_folder_atomic(out, {"report.json": json.dumps(report.to_json(), indent=2) + "\n",
                              "summary.md": table + "\n",
                              "samples.jsonl": "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in report.samples())},
                        overwrite=args.overwrite)
    print(table)
    print(f"\nreport -> {out}")
    return 0


def _print_table(report) -> None:
    from .report import summary_markdown

    text = summary_markdown(report)
    print(text.split("\n## Samples")[0].rstrip())


def _jsonable(value: Any) -> Any:
    """Settings as JSON can hold them: int keys become strings."""
    return json.loads(json.dumps(value, default=str))
