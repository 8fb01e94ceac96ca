"""Steering methods side by side on sentiment and toxicity on SmolLM2 (docs/results.md section 2).

Runs the library's `steerlab.compare` (what `steerlab compare` prints) for each task (same train pairs, prompts,
tokens and strengths for every method; all methods and the unsteered original in the same batches), keeps the
report folders under experiments/methods/out/ (not committed), distils their report.json files into
results.json beside this script (committed), and renders the section from it.

    python experiments/methods/run.py measure   # run both tasks (~1 h on 2 busy CPU cores), then render
    python experiments/methods/run.py render    # re-render the section from results.json (no model)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from common import save_json, write_results_section  # noqa: E402

import steerlab  # noqa: E402
from steerlab.evaluation.compare import prompting_verdict  # noqa: E402
from steerlab.generation import GenerationConfig  # noqa: E402

OUT = HERE / "out"
RESULTS = HERE / "results.json"
TASKS = ("sentiment", "toxicity")
# LM-Steer trains, so it runs on its own with a CPU-sized budget (the settings its SmolLM2 test uses).
RUNS = {
    "main": {"methods": ["caa", "pca", "prompt", "vector_prompt"]},
    "lm_steer": {"methods": ["lm_steer"], "overrides": {"lm_steer": ["steps=200", "batch_size=4", "max_length=96"]}},
}
SETTINGS = {"limit": 40, "max_new_tokens": 40, "train_limit": 200, "strengths": "0.2,0.4", "threads": 2, "seed": 0}


def folder(task: str, run: str) -> Path:
    return OUT / (task if run == "main" else f"{task}-{run}")


def measure(tasks: list[str], runs: list[str]) -> None:
    s = SETTINGS
    torch.set_num_threads(s["threads"])
    lm = steerlab.load_model()
    generation = GenerationConfig(max_new_tokens=s["max_new_tokens"], do_sample=True, top_p=0.9, seed=s["seed"])
    for task in tasks:
        for name in runs:
            out = folder(task, name)
            start = time.perf_counter()
            result = steerlab.compare(
                lm,
                task,
                **RUNS[name],
                limit=s["limit"],
                train_limit=s["train_limit"],
                strengths=[float(x) for x in s["strengths"].split(",")],
                generation=generation,
                batch_size=32,
                report=lambda line: print(line, file=sys.stderr),
            )
            result.save(out, overwrite=True)
            (out / "wall_seconds.txt").write_text(f"{time.perf_counter() - start:.0f}\n")


def distil_task(task: str) -> dict:
    """One task's report folders as the section shows them: the main run's settings and original, every
    condition with its setting (the LM-Steer run's against its own original), fit and wall times."""
    report = json.loads((folder(task, "main") / "report.json").read_text())
    s = report["settings"]
    settings = {label: info["setting"] for label, info in s["methods"].items()}
    fits = {label.split("@")[0]: info["fit_seconds"] for label, info in s["methods"].items()}
    conditions = list(report["conditions"])
    walls = {}
    for name in RUNS:
        path = folder(task, name)
        walls[name] = (path / "wall_seconds.txt").read_text().strip() if (path / "wall_seconds.txt").exists() else None
        if name == "main" or not (path / "report.json").exists():
            continue
        extra = json.loads((path / "report.json").read_text())
        for label, info in extra["settings"]["methods"].items():
            settings[label] = f"{info['setting']} (own run; its original {extra['original']['behaviour']:+.3f})"
            fits[label.split("@")[0]] = info["fit_seconds"]
        conditions += extra["conditions"]
    return {
        "task": {k: s["task"][k] for k in ("name", "metric_note", "direction", "prompts", "split")},
        "train": {k: s["train"][k] for k in ("name", "pairs")},
        "layer": s["layer"],
        "instruction": s["instruction"],
        "fit_seconds": fits,
        "wall_seconds": walls,
        "original": report["original"],
        "conditions": [
            {"label": c["label"], "setting": settings[c["label"]], "effect": c["effect"], "scores": c["scores"]}
            for c in conditions
        ],
    }


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def task_table(t: dict) -> list[str]:
    o, conditions = t["original"], t["conditions"]
    rows = [
        f"| original | unsteered | {o['behaviour']:+.3f} | | {o['fluency_entropy']:.2f} | {o['distinct_2']:.2f} | "
        f"{o['repetition']:.2f} | {_num(o['perplexity'])} |"
    ]
    for c in conditions:
        x = c["scores"]
        rows.append(
            f"| {c['label']} | {c['setting']} | {x['behaviour']:+.3f} | {c['effect']:+.3f} | "
            f"{x['fluency_entropy']:.2f} | {x['distinct_2']:.2f} | {x['repetition']:.2f} | {_num(x['perplexity'])} |"
        )
    extra = ""
    if "toxic_share" in o:
        shares = ", ".join(f"{c['label']} {c['scores']['toxic_share']:.0%}" for c in conditions)
        extra = f"\nShare of continuations scored toxic (P >= 0.5): original {o['toxic_share']:.0%}; {shares}.\n"
    wall = ", ".join(f"{name} {sec} s" if sec else f"{name} ?" for name, sec in t["wall_seconds"].items())
    fits = ", ".join(f"{name} {sec:.0f} s" for name, sec in t["fit_seconds"].items())
    task = t["task"]
    head = [
        f"### {task['name']}: {task['metric_note']}, the task wants it {'up' if task['direction'] > 0 else 'down'}\n",
        f"{task['prompts']} {task['split']} prompts, train pairs: {t['train']['name']} ({t['train']['pairs']}); "
        f'vectors at layer {t["layer"]}; instruction: "{t["instruction"]}". Fit times: {fits}; whole runs: {wall}.\n',
        "| method | setting | behaviour | effect | entropy | distinct-2 | repetition | perplexity |",
        "|---|---|---|---|---|---|---|---|",
    ]
    return head + rows + [extra, prompting_verdict(conditions), ""]


def section(results: dict) -> str:
    s = results["settings"]
    lines = [
        "## 2. Steering methods side by side: sentiment and toxicity on SmolLM2-135M-Instruct\n",
        "Every method is fitted on the same train pairs and evaluated on the same held-out prompts, with the "
        "unsteered original generated in the same batches (row-seeded top-p 0.9 sampling, so each prompt's "
        "rows share their random draws and differ only by steering). Vector methods (CAA, PCA, vector-prompt) "
        "steer layer 15 at the same norm-relative strengths (added norm / the layer's mean residual norm on "
        "neutral text, as `steerlab sweep` defines strength); "
        "prompt steering adds one instruction toward the task's goal (before the text, as the task uses no "
        "chat template). Effect = behaviour change x the task's direction, so higher is better for both "
        "tasks. Fluency: weighted bigram/trigram entropy (bits), distinct-2 and repetition (share of tokens "
        "in repeated trigrams) of each continuation, and perplexity of the continuations under the unsteered "
        "model given their prompts (low perplexity alone can mean repetition; read it with the others).\n",
        f"Sizes: {s['limit']} prompts, {s['max_new_tokens']} new tokens, up to {s['train_limit']} train pairs, "
        f"strengths {s['strengths']}, {s['threads']} CPU threads on a shared 2-core machine (timings are "
        "inflated by other jobs). LM-Steer trains, so it ran on its own (same prompts, seeds and train pairs; "
        "200 steps of 4 texts cut to 96 tokens, rank 1000, epsilon 1e-3, applied at steer value 1); its effect "
        "is against the original of its own run.\n",
    ]
    for task in TASKS:
        lines += task_table(results["tasks"][task])
    lines.append(
        "Commands: `python experiments/methods/run.py measure` (runs `steerlab compare --task T --methods "
        f"caa,pca,prompt,vector_prompt --limit {s['limit']} --max-new-tokens {s['max_new_tokens']} "
        f"--train-limit {s['train_limit']} --strengths {s['strengths']} --sample --top-p 0.9 --seed {s['seed']}` "
        "and the same with `--methods lm_steer --set lm_steer.steps=200 --set lm_steer.batch_size=4 "
        "--set lm_steer.max_length=96`, for T = sentiment, toxicity, then writes this section); "
        "`python experiments/methods/run.py render` re-renders it from experiments/methods/results.json.\n"
    )
    return "\n".join(lines)


def render(doc: Path) -> None:
    write_results_section("methods", section(json.loads(RESULTS.read_text())), doc)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["measure", "render"])
    parser.add_argument("--tasks", default=",".join(TASKS), help="tasks to run (default: both)")
    parser.add_argument("--runs", default=",".join(RUNS), help="which runs (default: main,lm_steer)")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "results.md", help="where the section is written")
    args = parser.parse_args(argv)
    if args.action == "measure":
        measure([t for t in args.tasks.split(",") if t], [r for r in args.runs.split(",") if r])
        save_json(RESULTS, {"settings": SETTINGS, "tasks": {task: distil_task(task) for task in TASKS}})
    render(args.doc)


if __name__ == "__main__":
    main()
